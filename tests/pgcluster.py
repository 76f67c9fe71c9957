"""A throwaway PostgreSQL cluster for the tests: ``initdb`` in a temporary folder, ``postgres`` on a
free loopback port (and a unix socket in that folder), stopped and removed at the end.

Debian's ``postgresql`` package provides the binaries (``make pytest`` installs it where it is
missing); they are found in ``/usr/lib/postgresql/*/bin`` or on ``PATH``. PostgreSQL refuses to run
as root: under root the cluster runs as the ``postgres`` system user (``setpriv``).
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from app.sandbox.serve import free_port


def pg_bin(name: str) -> str | None:
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.access(os.path.join(folder, name), os.X_OK):
            return os.path.join(folder, name)
    return shutil.which(name)


def available() -> bool:
    return pg_bin("initdb") is not None and pg_bin("postgres") is not None


def _as_owner(argv: list[str]) -> list[str]:
    """Under root, the same command as the ``postgres`` user (setpriv execs it: no process between)."""
    if os.geteuid() != 0:
        return argv
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--clear-groups", "--reset-env", *argv]


@dataclass
class Cluster:
    folder: Path
    port: int
    process: subprocess.Popen[bytes]
    user: str = "lp"
    _names: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        psql = pg_bin("psql")
        assert psql is not None
        done = subprocess.run(  # noqa: S603 - fixed binary, test-only SQL
            [psql, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql, self.url(database)],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        return done.stdout

    def new_database(self) -> str:
        """A fresh, empty database of this cluster; its URL."""
        name = f"lp_{os.getpid()}_{next(self._names)}"
        self.psql(f"CREATE DATABASE {name} TEMPLATE template0")
        return self.url(name)

    def copy_database(self, url: str) -> str:
        """A new database of this cluster made from ``url``'s as its template; its URL."""
        name = f"lp_{os.getpid()}_{next(self._names)}"
        deadline = time.monotonic() + 10
        while True:  # the template must have no session left (a closed pool's may linger a moment)
            try:
                self.psql(f"CREATE DATABASE {name} TEMPLATE {url.rsplit('/', 1)[-1]}")
                return self.url(name)
            except subprocess.CalledProcessError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[-1]
        with contextlib.suppress(subprocess.CalledProcessError):
            self.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@contextlib.contextmanager
def running_cluster() -> Iterator[Cluster]:
    initdb, postgres = pg_bin("initdb"), pg_bin("postgres")
    if initdb is None or postgres is None:
        raise RuntimeError("PostgreSQL is not installed (make pytest installs Debian's postgresql)")
    folder = Path(tempfile.mkdtemp(prefix="lp-pg-"))
    data = folder / "data"
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    subprocess.run(  # noqa: S603 - fixed binary
        _as_owner([initdb, "-D", str(data), "-U", "lp", "--auth=trust", "-E", "UTF8", "--no-sync", "--locale=C"]),
        check=True,
        capture_output=True,
        timeout=120,
    )
    port = free_port()
    options = [
        "-c", f"port={port}", "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={folder}",
        "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
        "-c", "max_connections=300", "-c", "shared_buffers=32MB",
    ]  # fmt: skip
    log = (folder / "postgres.log").open("wb")
    process = subprocess.Popen(  # noqa: S603 - fixed binary
        _as_owner([postgres, "-D", str(data), *options]), stdout=log, stderr=subprocess.STDOUT
    )
    cluster = Cluster(folder, port, process)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                cluster.psql("SELECT 1")
                break
            except subprocess.CalledProcessError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "the test PostgreSQL did not start: " + (folder / "postgres.log").read_text()[-2000:]
                    ) from None
                time.sleep(0.1)
        yield cluster
    finally:
        process.send_signal(signal.SIGINT)  # "fast" shutdown (SIGTERM's "smart" one waits for clients)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        log.close()
        shutil.rmtree(folder, ignore_errors=True)


# -- the store under test: SQLite by default, PostgreSQL for the tests parametrized on it -----
_active: Cluster | None = None
_made: dict[str, str] = {}


def activate(cluster: Cluster | None) -> None:
    """Make ``database_for`` hand out databases of ``cluster`` (None: SQLite files again)."""
    global _active
    if cluster is None and _active is not None:
        for url in _made.values():
            _active.drop_database(url)
    _made.clear()
    _active = cluster


def active() -> Cluster | None:
    return _active


def database_for(path: Path) -> Path | str:
    """The database a test uses where it would use the SQLite file ``path``: that file, or, while a
    PostgreSQL test runs, a fresh database of the test cluster (the same one for the same path)."""
    if _active is None:
        return path
    key = str(path)
    if key not in _made:
        _made[key] = _active.new_database()
    return _made[key]


def fetch(url: str, sql: str, *args: object) -> list[dict[str, object]]:
    """Rows of a PostgreSQL database through a separate connection (what is committed), from sync
    test code: asyncpg on a loop of its own thread."""
    import asyncio
    import concurrent.futures

    import asyncpg

    async def run() -> list[dict[str, object]]:
        conn = await asyncpg.connect(url)
        try:
            return [dict(r) for r in await conn.fetch(sql, *args)]
        finally:
            await conn.close()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, run()).result(60)


# -- the test's database, whichever store it is on (sync test code, e.g. beside a subprocess) -----
def rows(database: Path | str, sql: str, *args: object) -> list[dict[str, object]]:
    """Committed rows of ``database`` (an SQLite file or a PostgreSQL URL); ``sql`` in the store's
    own dialect (SQLite's, translated for PostgreSQL as the product does)."""
    if isinstance(database, str):
        from app.store.pg import translate

        return fetch(database, translate(sql), *args)
    import sqlite3

    conn = sqlite3.connect(database, timeout=30)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql, args)]
    finally:
        conn.close()


def execute(database: Path | str, sql: str) -> None:
    """One statement, committed, through a connection of its own (a fault planted under a product)."""
    if isinstance(database, str):
        _run(database, lambda conn: conn.execute(sql))
        return
    import sqlite3

    conn = sqlite3.connect(database, timeout=10)
    try:
        conn.execute(sql)
        conn.commit()
    finally:
        conn.close()


def _run(url: str, work: object) -> object:
    import asyncio
    import concurrent.futures

    import asyncpg

    async def run() -> object:
        conn = await asyncpg.connect(url)
        try:
            return await work(conn)  # type: ignore[operator]
        finally:
            await conn.close()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, run()).result(60)


def created(database: Path | str) -> bool:
    """Whether anything made the product's database: the SQLite file exists, or the PostgreSQL
    database (which the test made empty) has the product's schema."""
    if isinstance(database, str):
        return bool(fetch(database, "SELECT to_regclass('schema_version') IS NOT NULL AS made")[0]["made"])
    return database.exists()


def fingerprint(database: Path | str) -> object:
    """Something that changes whenever anything is written to ``database``: the SQLite file's bytes;
    on PostgreSQL the row versions (xmin) of every table, function and schema row the product has."""
    if isinstance(database, str):
        return fetch(
            database,
            "SELECT 'class:' || relname AS what, xmin::text AS version FROM pg_class"
            " WHERE relnamespace = 'public'::regnamespace"
            " UNION ALL SELECT 'proc:' || proname, xmin::text FROM pg_proc"
            " WHERE pronamespace = 'public'::regnamespace"
            " UNION ALL SELECT 'meta:' || key, xmin::text FROM meta"
            " UNION ALL SELECT 'version:' || version, xmin::text FROM schema_version ORDER BY 1",
        )
    return database.read_bytes()


def copy(source: Path, target: Path) -> None:
    """Copy the database of ``source`` to that of ``target`` (paths as given to ``database_for``): the
    SQLite file, or a new PostgreSQL database made from the first as its template."""
    if _active is None:
        shutil.copy2(source, target)
        return
    origin = database_for(source)
    assert isinstance(origin, str)
    _made[str(target)] = _active.copy_database(origin)

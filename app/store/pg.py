"""PostgreSQL through asyncpg: the twin of :class:`app.store.db.Database` for several instances.

The store's SQL is written once, for SQLite; :func:`translate` turns a statement into PostgreSQL's
dialect (``?`` → ``$n``, ``INSERT OR IGNORE`` → ``ON CONFLICT DO NOTHING``, ``json_extract`` →
``#>>``, ``REAL``/``BLOB``/``INTEGER PRIMARY KEY`` in the migrations), once per statement text
(cached). The few statements whose meaning differs (the queue's claim with ``FOR UPDATE SKIP
LOCKED``) are written per dialect where they are used (``db.dialect``). SQLite's own path is
untouched: nothing here runs for an SQLite database.

Migrations are the same numbered list as SQLite's (``app.store.schema.MIGRATIONS``), translated,
recorded in ``schema_version``; concurrent instances starting together take an advisory lock.
The URL's password is never logged nor put in an error message (:func:`redact`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from app.errors import ConfigError
from app.logs import get_logger
from app.store.db import Database
from app.store.schema import MIGRATIONS

log = get_logger("store.pg")

MIGRATE_LOCK = 0x4C50_0001  # pg_advisory_xact_lock key: one instance migrates at a time
# Tables whose ``id`` the database assigns: an INSERT into one reports it (lastrowid).
SERIAL_TABLES = frozenset(
    m.group(1) for script in MIGRATIONS for m in re.finditer(r"CREATE TABLE (\w+) \(\s*id INTEGER PRIMARY KEY", script)
)


def _without_backfill(script: str) -> str:
    """A migration's schema statements, each expression of an expression index in parentheses (as
    PostgreSQL requires), and none of its backfill from SQLite's json_each (:func:`_fill_members`
    does it on PostgreSQL)."""
    schema = script.split("INSERT OR REPLACE")[0]
    return re.sub(r"^(\s*)(CASE .*? END),$", r"\1(\2),", schema, flags=re.MULTILINE)


# Migrations whose SQLite text PostgreSQL cannot take as translated, derived from it (6: the members
# table, rebuilt whenever a member list is stored, and the expression index of the Findings' order).
PG_MIGRATIONS = {6: _without_backfill(MIGRATIONS[5])}


async def _fill_members(conn: PgConnection) -> None:
    """Migration 6's backfill on PostgreSQL: the members table of every workspace with a stored
    member list or email lookup, written by the code that rebuilds it when either is stored (SQLite's
    text reads them with json_each). Without it a database of an older schema showed no members
    until its member list changed."""
    from app.store.snapshots import MEMBER_KINDS, rebuild_members

    async with conn.execute(
        "SELECT DISTINCT workspace FROM snapshots WHERE kind IN (?, ?) ORDER BY 1", MEMBER_KINDS
    ) as cur:
        workspaces = [str(r[0]) for r in await cur.fetchall()]
    for workspace in workspaces:
        await rebuild_members(conn, workspace)


_TOKEN = re.compile(r"'(?:[^']|'')*'|\?")
_JSON_EXTRACT = re.compile(r"json_extract\(([\w.]+),\s*'\$\.([\w.]+)'\)")
_INSERT_INTO = re.compile(r"^\s*INSERT\s+INTO\s+(\w+)", re.IGNORECASE)
_RETURNING = re.compile(r"\bRETURNING\b", re.IGNORECASE)


# What app/store/views.py registers on an SQLite connection as Python functions, in SQL, and the
# trigger that tells every instance listening (LISTEN lp_events) that the event log changed. It is
# a row trigger: a statement that changes no row (an idle worker's empty claim) tells no one, or
# each empty claim would wake the worker for the next. PostgreSQL folds a transaction's identical
# notifications into one, so a batch is one NOTIFY.
FUNCTIONS = r"""
CREATE OR REPLACE FUNCTION lp_regexp(pattern text, value text) RETURNS boolean
    LANGUAGE sql IMMUTABLE AS $$ SELECT value IS NOT NULL AND value ~ pattern $$;
CREATE OR REPLACE FUNCTION lp_natkey(value text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce((SELECT string_agg(CASE WHEN m[1] ~ '^[0-9]' THEN lpad(ltrim(m[1], '0'), 12, '0')
                                            ELSE m[1] END, '' ORDER BY n)
                     FROM regexp_matches(lower(value), '([0-9]+|[^0-9]+)', 'g') WITH ORDINALITY AS x(m, n)), '')
$$;
CREATE OR REPLACE FUNCTION lp_events_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('lp_events', '');
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER lp_events_changed AFTER INSERT OR UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION lp_events_changed();
"""


def is_url(database: object) -> bool:
    return isinstance(database, str) and database.startswith(("postgresql://", "postgres://"))


def redact(url: str) -> str:
    """The URL without its password (for messages and logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


@functools.lru_cache(maxsize=2048)
def translate(sql: str) -> str:
    """One SQLite statement in PostgreSQL's dialect (see the module's docstring)."""
    out = sql.replace("INSERT OR IGNORE INTO", "INSERT INTO")
    ignore = out != sql
    out = _JSON_EXTRACT.sub(lambda m: f"(({m.group(1)})::jsonb #>> '{{{','.join(m.group(2).split('.'))}}}')", out)
    out = re.sub(r"\bmax\(tries - 1, 0\)", "greatest(tries - 1, 0)", out)
    out = re.sub(r"\bAS REAL\)", "AS DOUBLE PRECISION)", out)
    out = re.sub(r"\binstr\(", "strpos(", out)
    out = re.sub(r"\s+NOT INDEXED\b", "", out)  # SQLite's planner hint (a text search scans the table)
    if ignore:
        found = _RETURNING.search(out)
        if found:
            out = out[: found.start()] + "ON CONFLICT DO NOTHING " + out[found.start() :]
        else:
            out = out.rstrip() + " ON CONFLICT DO NOTHING"
    counter = 0

    def number(m: re.Match[str]) -> str:
        nonlocal counter
        if m.group(0) != "?":
            return m.group(0)
        counter += 1
        return f"${counter}"

    return _TOKEN.sub(number, out)


def translate_ddl(script: str) -> str:
    """A migration script in PostgreSQL's types; its statements are then translated one by one."""
    out = re.sub(r"\bid INTEGER PRIMARY KEY\b", "id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY", script)
    out = re.sub(r"\bREAL\b", "DOUBLE PRECISION", out)
    out = re.sub(r"\bBLOB\b", "BYTEA", out)
    out = re.sub(r"^(\s*)user TEXT", r'\1"user" TEXT', out, flags=re.MULTILINE)
    return out


def _with_id(sql: str) -> tuple[str, bool]:
    """An INSERT into a table with a generated id returns it (SQLite's lastrowid)."""
    m = _INSERT_INTO.match(sql)
    if m and m.group(1) in SERIAL_TABLES and not _RETURNING.search(sql):
        return sql.rstrip() + " RETURNING id", True
    return sql, False


def _count(status: str) -> int:
    """Rows affected, from asyncpg's command tag (``UPDATE 3``, ``INSERT 0 1``)."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


class PgCursor:
    """What the store reads of an aiosqlite cursor: rows, rowcount, lastrowid."""

    def __init__(self, rows: list[asyncpg.Record], rowcount: int, lastrowid: int | None) -> None:
        self._rows = rows
        self.rowcount = rowcount
        self.lastrowid = lastrowid

    async def fetchall(self) -> list[asyncpg.Record]:
        return self._rows

    async def fetchone(self) -> asyncpg.Record | None:
        return self._rows[0] if self._rows else None

    async def __aenter__(self) -> PgCursor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


class _Pending:
    """``await conn.execute(…)`` and ``async with conn.execute(…) as cur`` both work, as with aiosqlite."""

    def __init__(self, run: Callable[[], Any]) -> None:
        self._run = run

    def __await__(self) -> Generator[Any, None, PgCursor]:
        cursor: PgCursor = yield from self._run().__await__()
        return cursor

    async def __aenter__(self) -> PgCursor:
        cursor: PgCursor = await self._run()
        return cursor

    async def __aexit__(self, *exc: object) -> None:
        return None


class PgConnection:
    """One pooled connection in a transaction, with aiosqlite's ``execute``/``executemany`` shape."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.raw = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> _Pending:
        return _Pending(lambda: run(self.raw, sql, params))

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        await self.raw.executemany(translate(sql), [tuple(r) for r in rows])

    async def execute_fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[asyncpg.Record]:
        return list(await self.raw.fetch(translate(sql), *params))


async def run(conn: asyncpg.Connection, sql: str, params: Sequence[Any]) -> PgCursor:
    query, with_id = _with_id(translate(sql))
    head = query.lstrip()[:6].upper()
    if with_id or head in ("SELECT", "WITH (", "VALUES") or head.startswith("WITH") or _RETURNING.search(query):
        rows = list(await conn.fetch(query, *params))
        lastrowid = int(rows[0][0]) if with_id and rows else None
        return PgCursor([] if with_id else rows, len(rows), lastrowid)
    status = await conn.execute(query, *params)
    return PgCursor([], _count(status), None)


class PgDatabase(Database):
    """A pool of asyncpg connections with the surface of :class:`app.store.db.Database` (every
    method is its own; the subclass only lets the store's tables take either)."""

    dialect = "postgresql"

    def __init__(self, pool: asyncpg.Pool, url: str) -> None:
        self.pool = pool
        self.url = url
        self.path = Path("data") / "postgresql"  # no file: the evidence folder defaults beside it
        self._write = asyncio.Lock()  # write transactions of one process stay serialized, as on SQLite
        self._listener: asyncpg.Connection | None = None
        self._callbacks: dict[str, list[Callable[[], None]]] = {}
        self._lost = asyncio.Event()  # set when the LISTEN connection ends (terminated, server restarted)
        self._keeper: asyncio.Task[None] | None = None
        self.listen_reconnects = 0  # times the LISTEN connection was lost and made again (/metrics)
        self.listen_check_every = 5.0  # seconds between checks of an idle LISTEN connection
        self.listen_backoff = (0.1, 10.0)  # first and longest wait between reconnection attempts

    @classmethod
    async def open(cls, url: str, *, max_size: int = 10) -> PgDatabase:  # type: ignore[override]
        try:
            pool = await asyncpg.create_pool(url, min_size=1, max_size=max_size, command_timeout=60)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            reason = str(exc) or exc.__class__.__name__
            password = urlsplit(url).password
            if password:
                reason = reason.replace(password, "***")
            raise ConnectionError(f"cannot use {redact(url)}: {reason}") from None
        db = cls(pool, url)
        try:
            await db.migrate()
        except BaseException:
            await pool.close()
            raise
        return db

    async def migrate(self) -> int:
        async with self.pool.acquire() as conn:
            async with conn.transaction():  # instances starting together: one creates the table
                await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATE_LOCK)
                await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
                version = int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version"))
            if version > len(MIGRATIONS):
                # As on SQLite: a later version's schema is not ours to write (exit 2 in every command).
                raise ConnectionError(
                    f"cannot use {redact(self.url)}: written by a newer version of lowerplane-bitbucket "
                    f"(schema {version}; this version knows up to {len(MIGRATIONS)}): upgrade, or restore "
                    "a dump made by this version"
                )
            for number, script in enumerate(MIGRATIONS, 1):
                async with conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATE_LOCK)
                    version = int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version"))
                    if number <= version:
                        continue
                    for statement in _statements(translate_ddl(PG_MIGRATIONS.get(number, script))):
                        await conn.execute(translate(statement))
                    if number == 6:
                        await _fill_members(PgConnection(conn))
                    await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", number)
                    version = number
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATE_LOCK)
                await conn.execute(FUNCTIONS)
            return version

    async def listen(self, channel: str, callback: Callable[[], None]) -> None:
        """Call ``callback`` on every NOTIFY of ``channel`` (from any instance), over a connection
        of its own; it is closed with the database.

        The connection is kept: when it ends (``pg_terminate_backend``, PostgreSQL restarted, a
        dropped network) it is made again with a growing backoff (0.1 s up to 10 s), logged
        (``pg.listen_lost``, ``pg.listen_reconnected``) and counted (``listen_reconnects``,
        ``lp_pg_listen_reconnects_total`` in /metrics); every callback is then called once, since
        notifications sent while it was down are lost. Without it the callers would fall back to
        polling for good."""
        new = channel not in self._callbacks
        self._callbacks.setdefault(channel, []).append(callback)
        if self._listener is not None and not self._listener.is_closed():
            if new:
                await self._listener.add_listener(channel, self._notified)
        elif self._keeper is None:
            try:
                await self._connect_listener()
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("pg.listen_failed", error=f"{type(exc).__name__}: {exc}")
                self._lost.set()  # the keeper tries again
        if self._keeper is None:
            self._keeper = asyncio.create_task(self._keep_listening())

    def _notified(self, _conn: object, _pid: int, channel: str, _payload: str) -> None:
        for callback in self._callbacks.get(channel, ()):
            callback()

    async def _connect_listener(self) -> None:
        conn = await asyncpg.connect(self.url)
        try:
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _conn: lost.set())
            for channel in self._callbacks:
                await conn.add_listener(channel, self._notified)
        except BaseException:
            conn.terminate()
            raise
        self._listener, self._lost = conn, lost

    async def _alive(self) -> bool:
        """Whether the LISTEN connection still answers (checked while no notification comes)."""
        conn = self._listener
        if conn is None or conn.is_closed() or self._lost.is_set():
            return False
        try:
            await asyncio.wait_for(conn.fetchval("SELECT 1"), self.listen_check_every)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return False
        return True

    async def _keep_listening(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), self.listen_check_every)
            if await self._alive():
                continue
            log.warning("pg.listen_lost", channels=sorted(self._callbacks))
            old, self._listener = self._listener, None
            if old is not None:
                old.terminate()
            wait, longest = self.listen_backoff
            attempts = 0
            while True:
                attempts += 1
                try:
                    await self._connect_listener()
                    break
                except Exception as exc:  # noqa: BLE001 - keep trying, whatever the failure
                    log.warning("pg.listen_reconnect_failed", attempt=attempts, error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(wait)
                wait = min(wait * 2, longest)
            for callbacks in self._callbacks.values():  # what was sent meanwhile is lost: look again
                for callback in callbacks:
                    callback()
            self.listen_reconnects += 1
            log.info("pg.listen_reconnected", attempts=attempts, reconnects=self.listen_reconnects)

    async def ping(self) -> None:
        await self.fetchone("SELECT 1")

    async def close(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
            self._keeper = None
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close()
            self._listener = None
        await self.pool.close()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        async with self._write, self.pool.acquire() as conn, conn.transaction():
            yield PgConnection(conn)

    async def write_returning(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        async with self._write:
            return list(await self.pool.fetch(translate(sql), *params))

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return list(await self.pool.fetch(translate(sql), *params))

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return await self.pool.fetchrow(translate(sql), *params)

    async def backup(self, target: Path) -> None:
        # The backup command refuses a PostgreSQL database before it opens one; this is the store's
        # own answer should any other caller ask.
        raise ConfigError("backup copies an SQLite database: back up PostgreSQL with pg_dump")


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";\n") if s.strip()]

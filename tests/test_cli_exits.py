"""Every command ends, with one line on stderr and the documented exit status, on its error paths.

These run the installed console script as a real process with a timeout: a command that leaves the
database's thread, a task or the HTTP session open never exits, and the timeout catches it.
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from app import errors
from app.findings import Change, Delta
from app.models import Result
from app.store import Store
from tests import pgcluster

SCRIPT = Path(sys.executable).with_name("lowerplane-bitbucket")
GOOD_KEY = "a-good-secret-key-for-tests-0123"
ADMIN = "an-admin-token-for-tests-0123456"


def run_cli(argv: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 20) -> tuple[int, str]:
    """Run the console script; returns (exit status, stderr). Fails the test if it does not exit in time."""
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cwd), **(env or {})}
    try:
        proc = subprocess.run(  # noqa: S603 - the project's own console script
            [str(SCRIPT), *argv], cwd=cwd, env=clean, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"`lowerplane-bitbucket {' '.join(argv)}` did not exit within {timeout} s")
    return proc.returncode, proc.stderr


def assert_one_line(stderr: str, needle: str) -> None:
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ") and needle in lines[0], stderr


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.mark.parametrize(
    "argv",
    [["reconcile"], ["classify", "acme/api", "production"], ["webhooks", "register"]],
    ids=["reconcile", "classify", "webhooks-register"],
)
def test_a_bad_secret_key_is_one_line_and_exit_2(argv: list[str], tmp_path: Path) -> None:
    env = {"LP_SECRET_KEY": "short", "LP_BITBUCKET_TOKEN": "some-token", "LP_WORKSPACES": "acme"}
    status, err = run_cli(argv, tmp_path, env)
    assert status == 2
    assert_one_line(err, "LP_SECRET_KEY")
    assert not (tmp_path / "data").exists()  # refused before the database was created


def test_a_file_that_is_not_a_database_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """SQLite's by nature (a file); PostgreSQL's counterpart is the next test but one."""
    bogus = tmp_path / "passwd"
    bogus.write_text("root:x:0:0:root:/root:/bin/bash\n" * 50)
    before = bogus.read_bytes()
    for argv in (["findings"], ["reconcile"], ["classify-rules", "add", "production", "--project", "CORE"]):
        status, err = run_cli(argv, tmp_path, {"LP_DATABASE": str(bogus), "LP_BITBUCKET_TOKEN": "t"})
        assert status == 2, argv
        assert_one_line(err, f"LP_DATABASE: cannot use {bogus}")
    assert bogus.read_bytes() == before  # left untouched


def test_a_database_path_that_cannot_be_opened_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """SQLite's by nature (a path); PostgreSQL's counterpart is the next test."""
    folder = tmp_path / "a-folder"
    folder.mkdir()
    for _ in range(3):  # the failure raced with the end of the event loop: repeat to catch it
        for argv in (["reconcile"], ["classify-rules", "add", "production", "--project", "CORE"]):
            status, err = run_cli(argv, tmp_path, {"LP_DATABASE": str(folder), "LP_BITBUCKET_TOKEN": "t"})
            assert status == 2, argv
            assert_one_line(err, f"LP_DATABASE: cannot use {folder}: unable to open database file")


def test_a_postgresql_database_that_cannot_be_used_is_one_line_and_exit_2(
    pg_cluster: pgcluster.Cluster, tmp_path: Path
) -> None:
    """A PostgreSQL URL naming a database that does not exist: every command, serve included, says
    so in one line without the password, and exits 2."""
    url = f"postgresql://lp:s3cret-pw@127.0.0.1:{pg_cluster.port}/no_such_database"
    env = {"LP_DATABASE": url, "LP_SECRET_KEY": GOOD_KEY, "LP_ADMIN_TOKEN": ADMIN, "LP_BITBUCKET_TOKEN": "t"}
    for argv in (["findings"], ["reconcile"], ["classify", "acme/api", "production"], ["serve", "--port", "0"]):
        status, err = run_cli(argv, tmp_path, env)
        assert status == 2, argv
        assert_one_line(err, "LP_DATABASE: cannot use postgresql://")
        assert f"127.0.0.1:{pg_cluster.port}/no_such_database" in err and "s3cret-pw" not in err


def test_a_database_from_a_newer_version_is_refused_untouched(database: Path | str, tmp_path: Path) -> None:
    """A rollback after an upgrade that migrated the database: this version must not write into a
    schema it does not know (nor half-work on it); every command says so and exits 2."""

    async def made_by_a_later_version() -> None:
        store = await Store.open(database)
        await store.meta.set("made-by", "a later version")
        if isinstance(database, str):  # PostgreSQL records its migrations in a table
            await store.db.execute("INSERT INTO schema_version (version) VALUES (999)")
        else:
            await store.db.execute("PRAGMA user_version=999")
        await store.close()

    asyncio.run(made_by_a_later_version())
    before = pgcluster.fingerprint(database)
    env = {"LP_DATABASE": str(database), "LP_SECRET_KEY": GOOD_KEY, "LP_ADMIN_TOKEN": ADMIN, "LP_BITBUCKET_TOKEN": "t"}
    for argv in (["findings"], ["classify", "acme/api", "production"], ["serve", "--port", "0"]):
        status, err = run_cli(argv, tmp_path, env)
        assert status == 2, argv
        assert_one_line(err, "written by a newer version of lowerplane-bitbucket (schema 999")
    assert pgcluster.fingerprint(database) == before


@pytest.mark.parametrize("argv", [["demo", "--once", "--port"], ["sandbox", "--port"]], ids=["demo", "sandbox"])
def test_a_busy_port_is_one_line_and_exit_2(argv: list[str], busy_port: int, tmp_path: Path) -> None:
    status, err = run_cli([*argv, str(busy_port)], tmp_path, {"LP_DATABASE": str(tmp_path / "lp.sqlite3")})
    assert status == 2
    assert_one_line(err, f"port {busy_port} on 127.0.0.1 is in use")
    assert not (tmp_path / "lp.sqlite3").exists() and not (tmp_path / "data").exists()


def test_a_busy_port_stops_serve_before_the_database_is_touched(
    database: Path | str, busy_port: int, tmp_path: Path
) -> None:
    env = {"LP_DATABASE": str(database), "LP_SECRET_KEY": GOOD_KEY, "LP_ADMIN_TOKEN": ADMIN}
    status, err = run_cli(["serve", "--port", str(busy_port)], tmp_path, env)
    assert status == 2
    assert_one_line(err, f"port {busy_port} on 127.0.0.1 is in use")
    assert not pgcluster.created(database) and not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    "argv",
    [["events"], ["findings"], ["webhooks", "status"], ["classify-rules", "list"]],
    ids=["events", "findings", "webhooks-status", "rules-list"],
)
def test_read_only_commands_refuse_a_missing_database(argv: list[str], tmp_path: Path) -> None:
    """SQLite's by nature (the default is a file): a PostgreSQL database is named by a URL, and one
    that does not exist is refused by test_a_postgresql_database_that_cannot_be_used_…"""
    env = {"LP_SECRET_KEY": GOOD_KEY, "LP_BITBUCKET_TOKEN": "t", "LP_WORKSPACES": "acme"}
    status, err = run_cli(argv, tmp_path, env)
    assert status == 2
    assert_one_line(err, "no database at data/lowerplane.sqlite3 (set LP_DATABASE")
    assert not (tmp_path / "data").exists()  # nothing created


def test_bitbucket_unreachable_is_exit_1_and_the_process_ends(database: Path | str, tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    env = {
        "LP_BITBUCKET_API_URL": f"http://127.0.0.1:{dead}/2.0",
        "LP_BITBUCKET_TOKEN": "some-token",
        "LP_LOG_LEVEL": "error",
        "LP_DATABASE": str(database),
    }
    status, err = run_cli(["reconcile"], tmp_path, env, timeout=60)
    assert status == 1
    assert_one_line(err, "could not finish")


def test_opening_a_bad_database_leaves_no_thread_behind(tmp_path: Path) -> None:
    """The root cause of the hangs: aiosqlite's worker thread is not a daemon (SQLite's alone)."""
    bogus = tmp_path / "not-a-db"
    bogus.write_bytes(b"x" * 4096)
    before = set(threading.enumerate())

    async def attempt() -> None:
        with pytest.raises(Exception, match="not a database"):
            await Store.open(bogus)

    asyncio.run(attempt())
    left = [t for t in set(threading.enumerate()) - before if t.is_alive() and not t.daemon]
    for t in left:
        t.join(timeout=2)
    assert not [t for t in left if t.is_alive()]


def test_build_services_refuses_a_bad_key_before_opening_the_store(database: Path | str) -> None:
    import aiohttp

    from app.services import build_services
    from app.settings import Settings

    async def attempt() -> None:
        async with aiohttp.ClientSession() as session:
            with pytest.raises(errors.ConfigError):  # from the settings or from build_services
                env = {"LP_DATABASE": str(database), "LP_SECRET_KEY": "short"}
                await build_services(Settings.from_env(env, env_file=None), session)

    asyncio.run(attempt())
    assert not pgcluster.created(database)


def _seed_rules(database: Path | str, count: int) -> None:
    async def seed() -> None:
        store = await Store.open(database)
        try:
            for i in range(count):
                await store.records.add_rule("non-production", "2026-01-01T00:00:00Z", project_key=f"P{i}")
        finally:
            await store.close()

    asyncio.run(seed())


@pytest.mark.parametrize("count", [1, 3000], ids=["small-output", "more-than-a-pipe-buffer"])
def test_a_reader_that_leaves_early_ends_the_command_quietly(count: int, database: Path | str, tmp_path: Path) -> None:
    """`… | head`: a closed pipe is exit 0 with nothing on stderr (README, "Exit status")."""
    _seed_rules(database, count)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LP_DATABASE": str(database)}
    for argv in (["classify-rules", "list"], ["findings"], ["events", "--limit", "5"]):
        read, write = os.pipe()
        os.close(read)  # the reader is gone before the first write
        try:
            proc = subprocess.run(  # noqa: S603 - the project's own console script
                [str(SCRIPT), *argv], cwd=tmp_path, env=env, stdout=write, stderr=subprocess.PIPE, timeout=20
            )
        finally:
            os.close(write)
        assert proc.returncode == 0, (argv, proc.stderr)
        assert proc.stderr == b"", (argv, proc.stderr)
    # and with a real reader that stops after one line
    with subprocess.Popen(  # noqa: S603
        [str(SCRIPT), "classify-rules", "list"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline().startswith(b"1. project P0")
        proc.stdout.close()
        assert proc.wait(timeout=20) == 0
        assert proc.stderr.read() == b""


def test_findings_for_a_misspelt_workspace_is_refused_not_an_empty_report(database: Path | str, tmp_path: Path) -> None:
    """`findings --workspace acm --format json` printed `[]` and exit 0: to a script, a clean report."""
    failing = Result(
        check="repo-classified",
        severity="critical",
        workspace="acme",
        subject_type="repository",
        subject_key="{api}",
        subject="acme/api",
        subject_name="api",
        status="fail",
        message="acme/api is not classified",
    )

    async def seed() -> None:
        store = await Store.open(database)
        await store.results.apply(Delta(opened=[Change(failing, None)]), "2026-11-28T12:00:00+00:00")
        await store.close()

    asyncio.run(seed())
    env = {"LP_DATABASE": str(database)}
    for fmt in ("json", "csv", "table"):
        status, err = run_cli(["findings", "--workspace", "acm", "--format", fmt], tmp_path, env)
        assert status == 2, fmt
        assert_one_line(err, "--workspace: 'acm' is not a workspace the product knows (acme)")
    out = subprocess.run(  # noqa: S603 - the project's own console script
        [str(SCRIPT), "findings", "--workspace", "acme", "--status", "pass"],
        cwd=tmp_path,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert out.returncode == 0 and out.stdout.strip() == "No results match --workspace, --check and --status."


def _a_database_of_some_size(database: Path) -> None:
    async def seed() -> None:
        store = await Store.open(database)
        for i in range(40):
            await store.meta.set(f"filler-{i}", "x" * 8000)
        await store.close()

    asyncio.run(seed())


def test_a_backup_that_fails_half_way_leaves_no_file_that_looks_like_one(tmp_path: Path) -> None:
    """The disk fills up during the copy (a file size limit makes it so): one line, exit 1, and no
    file at the target (an empty or partial file there looked like a backup, and blocked a rerun).
    The backup command is SQLite's (PostgreSQL is backed up with pg_dump: see the test after next)."""
    database = tmp_path / "lp.sqlite3"
    _a_database_of_some_size(database)
    assert database.stat().st_size > 200_000
    target = tmp_path / "backups" / "lp-2026-11-28.sqlite3"

    def small_disk() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails instead

    proc = subprocess.run(  # noqa: S603 - the project's own console script
        [str(SCRIPT), "backup", str(target)],
        cwd=tmp_path,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LP_DATABASE": str(database)},
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
        preexec_fn=small_disk,  # only resource limits, before exec
    )
    assert proc.returncode == 1
    assert_one_line(proc.stderr, f"backup to {target} could not finish")
    assert list(target.parent.iterdir()) == []
    status, err = run_cli(["backup", str(target)], tmp_path, {"LP_DATABASE": str(database)})
    assert status == 0, err  # the same name works once there is room
    assert target.stat().st_size >= database.stat().st_size


def test_a_backup_target_that_cannot_be_written_is_one_line_and_exit_2(tmp_path: Path) -> None:
    database = tmp_path / "lp.sqlite3"
    _a_database_of_some_size(database)
    status, err = run_cli(["backup", "/proc/lp-backup.sqlite3"], tmp_path, {"LP_DATABASE": str(database)})
    assert status == 2
    assert_one_line(err, "/proc/lp-backup.sqlite3: cannot write a backup there")


def test_a_backup_of_a_postgresql_database_is_one_line_naming_pg_dump_and_exit_2(
    pg_cluster: pgcluster.Cluster, tmp_path: Path
) -> None:
    target = tmp_path / "lp-backup.sqlite3"
    status, err = run_cli(["backup", str(target)], tmp_path, {"LP_DATABASE": pg_cluster.url()})
    assert status == 2
    assert_one_line(err, "LP_DATABASE is a PostgreSQL database: back it up with pg_dump")
    assert not target.exists() and not (tmp_path / "data").exists()
    assert not pgcluster.created(pg_cluster.url())  # nothing opened nor migrated


@pytest.mark.parametrize("text", ['{"workspaces": 5}', '["a list"]', '{"workspaces": {"acme": {"repos": 3}}}'])
def test_a_sandbox_scenario_of_the_wrong_shape_is_one_line_and_exit_2(text: str, tmp_path: Path) -> None:
    scenario = tmp_path / "scenario.json"
    scenario.write_text(text)
    status, err = run_cli(["sandbox", "--scenario", str(scenario), "--port", "0"], tmp_path)
    assert status == 2
    assert_one_line(err, f"--scenario: cannot load {scenario}")

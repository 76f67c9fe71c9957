"""Token mode switched off: the database still holds the `token` connection an earlier run stored
(``LP_BITBUCKET_TOKEN`` was set then), but the variable is gone now, e.g. after moving to OAuth.

`reconcile` already skips that connection. `serve` crashed at start-up with a traceback
(``ConfigError: LP_BITBUCKET_TOKEN is not set`` raised while registering its webhook), the scheduler
queued passes for it that could only fail, and `webhooks register` refused to run at all.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp

from app.sandbox.serve import free_port
from app.services import build_services
from app.settings import Settings
from app.store import Store
from tests.pgcluster import database_for

SCRIPT = Path(sys.executable).with_name("lowerplane-bitbucket")
KEY = "a-good-secret-key-for-tests-0123"
ADMIN = "an-admin-token-for-tests-0123456"


def _dead_port() -> int:
    with socket.socket() as s:  # nobody listens here: any Bitbucket call would fail
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _database_from_token_mode(database: Path | str) -> None:
    store = await Store.open(database)
    try:
        await store.connections.upsert("token", "token", ("acme",))
    finally:
        await store.close()


def _env(database: Path) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LP_DATABASE": str(database),
        "LP_SECRET_KEY": KEY,
        "LP_ADMIN_TOKEN": ADMIN,
        "LP_BITBUCKET_API_URL": f"http://127.0.0.1:{_dead_port()}/2.0",
        "LP_LOG_LEVEL": "warning",
    }  # no LP_BITBUCKET_TOKEN


def _healthz(port: int) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def test_serve_starts_with_a_token_connection_whose_token_is_gone(tmp_path: Path) -> None:
    database = tmp_path / "lp.sqlite3"
    asyncio.run(_database_from_token_mode(database))
    port = free_port()
    proc = subprocess.Popen(  # noqa: S603 - the project's own console script
        [str(SCRIPT), "serve", "--port", str(port)],
        cwd=tmp_path,
        env=_env(database),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        status = None
        while time.monotonic() < deadline and proc.poll() is None:
            status = _healthz(port)
            if status is not None:
                break
            time.sleep(0.2)
        assert proc.poll() is None, f"serve exited {proc.returncode}"
        assert status == 200
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert "Traceback" not in out, out[-3000:]
    assert "LP_BITBUCKET_TOKEN is not set" not in out, out[-3000:]


async def test_scheduler_queues_no_pass_for_a_token_connection_whose_token_is_gone(tmp_path: Path) -> None:
    database = database_for(tmp_path / "lp.sqlite3")  # or the PostgreSQL run's database
    await _database_from_token_mode(database)
    settings = Settings.from_env({"LP_DATABASE": str(database), "LP_SECRET_KEY": KEY}, env_file=None)
    async with aiohttp.ClientSession() as session:
        services = await build_services(settings, session)
        try:
            await services.scheduler.tick()
            passes = await services.service.store.events.list(event_key="lp:reconcile", limit=10)
        finally:
            await services.service.store.close()
    assert passes == []  # a pass for it could only fail, then retry and end dead


def test_webhooks_register_leaves_a_token_connection_whose_token_is_gone_alone(tmp_path: Path) -> None:
    database = tmp_path / "lp.sqlite3"
    asyncio.run(_database_from_token_mode(database))
    proc = subprocess.run(  # noqa: S603 - the project's own console script
        [str(SCRIPT), "webhooks", "register"],
        cwd=tmp_path,
        env=_env(database),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    # Nothing usable is connected: the same one line `reconcile` gives, not the internal error.
    assert proc.returncode == 2, proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("error: no connection: set LP_BITBUCKET_TOKEN"), line

"""Kill the serving process with SIGKILL under load: every delivery answered 202 was stored, and
after a restart every stored event is processed exactly once. On SQLite; on PostgreSQL,
tests/test_scaleout.py SIGKILLs one of three instances under load and asserts the same."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
import uuid
from pathlib import Path

import aiohttp

from app.bitbucket.sansio import sign
from app.crypto import Crypto
from app.sandbox.serve import RunningSandbox, free_port
from app.store.events import LEASE_SECONDS
from tests.helpers import ADMIN, SECRET_KEY
from tests.pgcluster import database_for, rows


def env_for(sandbox: RunningSandbox, tmp: Path, port: int) -> dict[str, str]:
    """``serve``'s environment; its database is ``database_for(tmp / "lp.sqlite3")`` (that SQLite file,
    or the PostgreSQL database of a test on that store)."""
    return dict(
        os.environ,
        LP_DATABASE=str(database_for(tmp / "lp.sqlite3")),
        LP_BITBUCKET_API_URL=sandbox.api,
        LP_BITBUCKET_TOKEN="sandbox-acme-token",
        LP_WORKSPACES="acme",
        LP_SECRET_KEY=SECRET_KEY,
        LP_ADMIN_TOKEN=ADMIN,
        LP_PUBLIC_URL=f"http://127.0.0.1:{port}",
        LP_LOG_LEVEL="warning",
    )


async def start(env: dict[str, str], port: int, session: aiohttp.ClientSession) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app",
        "serve",
        "--port",
        str(port),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    for _ in range(300):
        try:
            async with session.get(f"http://127.0.0.1:{port}/healthz") as resp:
                if resp.status == 200:
                    return proc
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError("serve did not start")


def db_rows(database: Path | str) -> list[dict[str, object]]:
    return rows(database, "SELECT * FROM events WHERE source = 'webhook'")


def webhook_secret(database: Path | str) -> str:
    """The stored webhook secret (encrypted at rest), as the product decrypts it."""
    [row] = rows(database, "SELECT webhook_secret FROM connections")
    return Crypto(SECRET_KEY).decrypt(row["webhook_secret"])  # type: ignore[arg-type]


async def test_sigkill_under_load_loses_nothing(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    port = free_port()
    env = env_for(sandbox, tmp_path, port)
    reg = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app",
        "webhooks",
        "register",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await reg.communicate()
    assert reg.returncode == 0, err.decode()
    database = database_for(tmp_path / "lp.sqlite3")
    secret = webhook_secret(database)
    api = sandbox.sandbox.state.workspaces["acme"].repos["api"]

    proc = await start(env, port, session)
    accepted: list[str] = []
    errors = 0

    async def sender(n: int) -> None:
        nonlocal errors
        for i in range(10_000):
            request_uuid = str(uuid.uuid4())
            key = "pullrequest:created" if i % 5 == 0 else "repo:push"
            body = json.dumps(
                {
                    "repository": {"uuid": api.uuid, "full_name": "acme/api"},
                    "actor": {"account_id": "557058:alice"},
                    "push": {
                        "changes": [
                            {
                                "new": {"type": "branch", "name": f"feature/{n}-{i}"},
                                "old": None,
                                "created": True,
                                "closed": False,
                            }
                        ]
                    },
                    "pullrequest": {"id": i},
                }
            ).encode()
            headers = {
                "X-Event-Key": key,
                "X-Request-UUID": request_uuid,
                "X-Hook-UUID": "{h}",
                "X-Attempt-Number": "1",
                "X-Hub-Signature": sign(secret, body),
                "Content-Type": "application/json",
            }
            try:
                async with session.post(
                    f"http://127.0.0.1:{port}/hooks/bitbucket/token", data=body, headers=headers
                ) as resp:
                    if resp.status == 202:
                        accepted.append(request_uuid)
            except (TimeoutError, aiohttp.ClientError):
                errors += 1
                return  # the server is gone

    senders = [asyncio.create_task(sender(n)) for n in range(32)]
    while len(accepted) < 400:  # noqa: ASYNC110 - polling a counter the senders fill  # noqa: ASYNC110 - polling a counter the senders fill
        await asyncio.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    await proc.wait()
    await asyncio.gather(*senders)
    assert errors > 0  # the kill really cut requests off mid-flight

    stored = db_rows(database)
    by_uuid: dict[str, int] = {}
    for row in stored:
        by_uuid[row["request_uuid"]] = by_uuid.get(row["request_uuid"], 0) + 1
    missing = [u for u in accepted if u not in by_uuid]
    assert not missing, f"{len(missing)} deliveries answered 202 were not stored"
    assert all(n == 1 for n in by_uuid.values())
    unfinished_before = sum(1 for r in stored if r["state"] != "done")
    assert unfinished_before > 0  # the kill left work behind

    proc = await start(env, port, session)
    # On PostgreSQL another instance could still hold the killed one's leases: they are taken over
    # once they expire (LEASE_SECONDS after the last renewal), then the work goes on.
    deadline = time.monotonic() + 60 + (LEASE_SECONDS if isinstance(database, str) else 0)
    try:
        while time.monotonic() < deadline:
            rows = db_rows(database)
            if all(r["state"] == "done" for r in rows):
                break
            await asyncio.sleep(0.1)
        rows = db_rows(database)
        assert len(rows) == len(stored)  # nothing added, nothing lost
        assert all(r["state"] == "done" and r["caused"] for r in rows)
        assert {r["request_uuid"] for r in rows} >= set(accepted)
    finally:
        proc.send_signal(signal.SIGTERM)
        await proc.wait()

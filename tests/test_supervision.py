"""Supervision and honest health: a crashed background task is restarted (logged, counted on
/metrics) while /healthz names it; a task that cannot be kept alive makes ``serve`` exit 1; a
stuck worker fails /healthz; SIGTERM drains within 10 s, exits 0 and loses no acknowledged
delivery."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from app import main
from app.bitbucket.sansio import sign
from app.crypto import Crypto
from app.sandbox.serve import RunningSandbox, free_port
from tests.helpers import SECRET_KEY, RunningApp, product_settings, running_app, wait_for
from tests.test_crash import db_rows, env_for, start


def rename_table(path: Path, old: str, new: str) -> None:
    """A real database fault: the events table disappears (and comes back) under the service.
    The SQLite file's; tests/test_postgresql_storage.py does the same to a PostgreSQL database."""
    conn = sqlite3.connect(path, timeout=10)
    try:
        conn.execute(f"ALTER TABLE {old} RENAME TO {new}")
        conn.commit()
    finally:
        conn.close()


async def health(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(f"{url}/healthz") as resp:
        return resp.status, await resp.json()


@pytest.fixture
async def product(sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path) -> AsyncIterator[RunningApp]:
    port = free_port()
    settings = product_settings(sandbox.api, tmp_path, port)
    async with running_app(settings, port, session) as app:
        store = app.services.service.store

        async def settled() -> bool:
            counts = await store.events.counts()
            return counts.get("done", 0) > 0 and counts.get("queued", 0) + counts.get("running", 0) == 0

        await wait_for(settled, within=20)
        yield app


async def test_a_crashed_worker_is_restarted_counted_and_reported(
    product: RunningApp, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    supervisor = product.services.supervisor
    assert supervisor is not None
    supervisor.backoff_initial = supervisor.backoff_max = 0.3
    supervisor.max_restarts = 1000
    assert await health(session, product.url) == (200, {"status": "ok"})
    db = tmp_path / "lp.sqlite3"
    await asyncio.to_thread(rename_table, db, "events", "events_away")
    try:

        async def reported() -> bool:
            status, body = await health(session, product.url)
            return status == 503 and "worker" in body["tasks"]

        await wait_for(reported, within=10, interval=0.02)
        _, body = await health(session, product.url)
        assert body["status"] == "failing" and "no such table" in body["tasks"]["worker"]
        assert supervisor.tasks["worker"].restarts >= 1 or not supervisor.tasks["worker"].running
    finally:
        await asyncio.to_thread(rename_table, db, "events_away", "events")

    async def healthy() -> bool:
        status, _ = await health(session, product.url)
        return status == 200 and supervisor.tasks["worker"].running and supervisor.tasks["worker"].restarts >= 1

    await wait_for(healthy, within=10)
    async with session.get(f"{product.url}/metrics") as resp:
        text = await resp.text()
    [line] = [x for x in text.splitlines() if x.startswith('lp_task_restarts_total{task="worker"}')]
    assert float(line.split()[-1]) >= 1
    # And it works again: a new event is processed.
    ids = await product.services.service.internal_event("lp:reconcile", {"tier": "members"})
    store = product.services.service.store

    async def processed() -> bool:
        row = await store.events.get(ids[0])
        return row is not None and row.state == "done"

    await wait_for(processed, within=10)


async def test_a_stuck_worker_fails_liveness(
    product: RunningApp, sandbox: RunningSandbox, session: aiohttp.ClientSession
) -> None:
    """The worker hangs on a read that never answers while events wait: /healthz says so."""
    product.services.stall_after = 1.0
    sandbox.sandbox.faults.latency_ms = 6_000  # every Bitbucket read hangs for a while
    try:
        async with session.post(
            f"{sandbox.url}/_sandbox/repos/acme/api/update", json={"mainbranch": "develop"}
        ) as resp:
            assert resp.status == 200
        store = product.services.service.store

        async def claimed() -> bool:
            return (await store.events.counts()).get("running", 0) > 0

        await wait_for(claimed, within=5, interval=0.02)
        assert await health(session, product.url) == (200, {"status": "ok"})  # busy, not stuck yet
        await product.services.service.internal_event("lp:evidence", {})  # more work arrives

        async def stuck() -> bool:
            status, body = await health(session, product.url)
            return status == 503 and "no progress" in body["tasks"].get("worker", "")

        await wait_for(stuck, within=4, interval=0.1)
    finally:
        sandbox.sandbox.faults.latency_ms = 0

    async def recovered() -> bool:
        return (await health(session, product.url))[0] == 200

    await wait_for(recovered, within=10)


async def test_a_task_that_cannot_be_kept_alive_ends_the_process_non_zero(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    port = free_port()
    env = env_for(sandbox, tmp_path, port)
    proc = await start(env, port, session)
    try:
        await asyncio.to_thread(rename_table, tmp_path / "lp.sqlite3", "events", "events_away")
        started = time.monotonic()
        code = await asyncio.wait_for(proc.wait(), timeout=40)
        assert code == 1
        assert time.monotonic() - started < 40
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_sigterm_drains_within_ten_seconds_and_loses_nothing(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    port = free_port()
    env = env_for(sandbox, tmp_path, port)
    reg = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "app", "webhooks", "register", env=env, stderr=asyncio.subprocess.PIPE
    )
    _, err = await reg.communicate()
    assert reg.returncode == 0, err.decode()
    conn = sqlite3.connect(tmp_path / "lp.sqlite3", timeout=30)
    secret = Crypto(SECRET_KEY).decrypt(conn.execute("SELECT webhook_secret FROM connections").fetchone()[0])
    conn.close()
    api = sandbox.sandbox.state.workspaces["acme"].repos["api"]
    sandbox.sandbox.faults.latency_ms = 1000  # Bitbucket is slow: work is in flight at SIGTERM

    proc = await start(env, port, session)
    accepted: list[str] = []
    stop = False

    async def sender(n: int) -> None:
        for i in range(10_000):
            if stop:
                return
            request_uuid = str(uuid.uuid4())
            body = json.dumps(
                {
                    "repository": {"uuid": api.uuid, "full_name": "acme/api"},
                    "actor": {"account_id": "557058:alice"},
                    "push": {"changes": [{"new": {"type": "branch", "name": f"f/{n}-{i}"}, "old": None}]},
                }
            ).encode()
            headers = {
                "X-Event-Key": "repo:push",
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
                return  # the server is gone

    senders = [asyncio.create_task(sender(n)) for n in range(8)]
    while len(accepted) < 200:  # noqa: ASYNC110 - polling a counter the senders fill
        await asyncio.sleep(0.01)
    started = time.monotonic()
    os.kill(proc.pid, signal.SIGTERM)
    code = await asyncio.wait_for(proc.wait(), timeout=15)
    took = time.monotonic() - started
    stop = True
    await asyncio.gather(*senders)
    assert code == 0
    assert took < 10, f"shutdown took {took:.1f} s"

    stored = db_rows(tmp_path / "lp.sqlite3")
    assert {u for u in accepted} <= {r["request_uuid"] for r in stored}  # every 202 is a stored row
    assert not [r for r in stored if r["state"] == "running"]  # leases were given back
    assert any(r["state"] != "done" for r in stored)  # work was left queued

    sandbox.sandbox.faults.latency_ms = 0
    proc = await start(env, port, session)
    try:
        for _ in range(300):
            if all(r["state"] == "done" for r in db_rows(tmp_path / "lp.sqlite3")):
                break
            await asyncio.sleep(0.1)
        rows = db_rows(tmp_path / "lp.sqlite3")
        assert len(rows) == len(stored)
        assert all(r["state"] == "done" for r in rows)
    finally:
        proc.send_signal(signal.SIGTERM)
        await proc.wait()


async def test_a_slow_bitbucket_does_not_hold_the_server_closed_at_start(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Start-up registers the webhooks, one request after another to Bitbucket; with a Bitbucket
    that answers slowly this took minutes before ``serve`` answered anything (probes failed,
    deliveries were refused). It now holds the server for ``STARTUP_WAIT`` at most and goes on in
    the background."""
    monkeypatch.setattr(main, "STARTUP_WAIT", 0.3, raising=False)
    sandbox.sandbox.faults.latency_ms = 1500  # every Bitbucket answer
    port = free_port()
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with running_app(product_settings(sandbox.api, tmp_path, port), port, session) as app:
        assert loop.time() - started < 1.4  # served before Bitbucket's first answer came back
        status, _ = await health(session, app.url)
        assert status == 200
        assert sandbox.sandbox.state.workspaces["acme"].hooks == {}

        async def registered() -> bool:
            return len(sandbox.sandbox.state.workspaces["acme"].hooks) == 1

        await wait_for(registered, within=30)  # start-up went on and finished

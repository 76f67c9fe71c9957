"""The event log for ops: /api/events (auth, filters, paging), the SSE stream, `events --follow`."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from app.sandbox.serve import RunningSandbox, free_port
from tests.helpers import ADMIN, RunningApp, product_settings, running_app, wait_for

AUTH = {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture
async def product(sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path) -> AsyncIterator[RunningApp]:
    port = free_port()
    async with running_app(product_settings(sandbox.api, tmp_path, port), port, session) as app:
        store = app.services.service.store

        async def first_pass_done() -> bool:  # an event done, and the first pass's results written
            return (await store.events.counts()).get("done", 0) >= 1 and await store.results.exist("acme")

        await wait_for(first_pass_done, within=20)
        yield app


@pytest.mark.parametrize(
    ("headers", "status"),
    [({}, 401), ({"Authorization": "Bearer wrong"}, 401), ({"Authorization": "Basic YTpi"}, 401), (AUTH, 200)],
)
async def test_api_authentication(
    product: RunningApp, session: aiohttp.ClientSession, headers: dict[str, str], status: int
) -> None:
    async with session.get(product.url + "/api/events", headers=headers) as resp:
        assert resp.status == status
        if status == 401:
            assert resp.content_type == "application/problem+json"
            assert "WWW-Authenticate" in resp.headers
            assert ADMIN not in await resp.text()


async def test_events_filters_and_paging(
    product: RunningApp, session: aiohttp.ClientSession, sandbox: RunningSandbox
) -> None:
    for branch in ("a", "b", "c"):
        async with session.post(f"{sandbox.url}/_sandbox/repos/acme/api/create-branch", json={"name": branch}):
            pass
    async with session.get(product.url + "/api/events?event_key=repo:push&limit=2", headers=AUTH) as resp:
        page = await resp.json()
    assert [e["event_key"] for e in page["items"]] == ["repo:push", "repo:push"] and page["next"]
    item = page["items"][0]
    assert {"request_uuid", "hook_uuid", "attempt", "state", "caused"} <= set(item)
    async with session.get(product.url + page["next"], headers=AUTH) as resp:
        rest = await resp.json()
    assert len(rest["items"]) == 1 and rest["items"][0]["id"] < page["items"][-1]["id"]
    async with session.get(product.url + "/api/events?state=bogus", headers=AUTH) as resp:
        assert resp.status == 400 and (await resp.json())["title"] == "Bad parameter"


async def test_sse_stream_shows_an_event_live(
    product: RunningApp, session: aiohttp.ClientSession, sandbox: RunningSandbox
) -> None:
    seen: list[dict[str, object]] = []

    async def listen() -> None:
        async with session.get(product.url + "/api/events/stream", headers=AUTH) as resp:
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            async for line in resp.content:
                if line.startswith(b"data: "):
                    seen.append(json.loads(line[6:]))
                    if any(e["event_key"] == "repo:updated" and e["state"] == "done" for e in seen):
                        return

    listener = asyncio.create_task(listen())
    await asyncio.sleep(0.3)
    async with session.post(f"{sandbox.url}/_sandbox/repos/acme/web/update", json={"is_private": False}):
        pass
    await asyncio.wait_for(listener, timeout=10)
    states = [e["state"] for e in seen if e["event_key"] == "repo:updated"]
    assert states[-1] == "done" and ("queued" in states or "running" in states)


async def test_events_follow_prints_new_events(
    product: RunningApp, sandbox: RunningSandbox, session: aiohttp.ClientSession
) -> None:
    env = dict(os.environ, LP_DATABASE=str(product.settings.database), LP_LOG_LEVEL="warning")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "app", "events", "--follow", "--limit", "1", env=env, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    try:
        await asyncio.wait_for(proc.stdout.readline(), timeout=10)  # the newest existing event
        async with session.post(f"{sandbox.url}/_sandbox/repos/acme/api/create-branch", json={"name": "live"}):
            pass
        while True:
            line = (await asyncio.wait_for(proc.stdout.readline(), timeout=10)).decode()
            if "repo:push" in line and "done" in line:
                assert "req=" in line and "hook=" in line and "branches live" in line
                break
    finally:
        proc.terminate()
        await proc.wait()


async def test_probes_and_metrics(product: RunningApp, session: aiohttp.ClientSession) -> None:
    async with session.get(product.url + "/healthz") as r:
        assert r.status == 200
    async with session.get(product.url + "/readyz") as r:
        assert r.status == 200 and (await r.json())["worker"] == "alive"
    async with session.get(product.url + "/metrics") as r:
        text = await r.text()
    for name in (
        "lp_webhook_time_to_202_seconds_bucket",
        'lp_events{state="done"}',
        "lp_queue_depth",
        "lp_oldest_queued_seconds",
        "lp_bitbucket_api_calls{",
        "lp_bitbucket_budget_remaining",
        "lp_results{",
        "lp_alerts",
    ):
        assert name in text, name

"""A first pass's progress, as the operator and the compliance lead see it while it runs: a real
full pass against the sandbox, in chunks of 2 repositories, on an API budget that runs out
midway. While the pass waits for budget, the Operations page (in headless Chromium too), the
Overview, ``GET /api/operations`` and ``/readyz`` (still ready) say how far it got and until when
and why it waits; then the budget frees up, the pass completes and every one of them says so.
With UPDATE_SCREENSHOTS=1 (make screenshots) the README's operations-progress.png is retaken."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Browser

from app.bitbucket.client import Budget
from app.sandbox.serve import RunningSandbox, free_port
from tests.helpers import ADMIN, RunningApp, product_settings, running_app, wait_for
from tests.web.test_dashboard import DOCS_SHOTS, browser, login, open_page  # noqa: F401 - the browser fixture

LIMIT = 7  # requests an hour: spent once the first chunks are read
BEARER = {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture
async def idle(sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path) -> AsyncIterator[RunningApp]:
    """The product with no worker or scheduler running: the test drives the worker itself."""
    port = free_port()
    async with running_app(product_settings(sandbox.api, tmp_path, port), port, session, background=False) as app:
        yield app


async def _page(app: RunningApp, cookie: str, path: str) -> str:
    async with (
        aiohttp.ClientSession() as s,
        s.get(app.url + path, headers={"Cookie": f"lp_session={cookie}"}, allow_redirects=False) as r,
    ):
        assert r.status == 200, (path, r.status)
        return await r.text()


async def _json(app: RunningApp, path: str, headers: dict[str, str] | None = None) -> Any:
    async with aiohttp.ClientSession() as s, s.get(app.url + path, headers=headers or {}) as r:
        assert r.status == 200, (path, r.status, await r.text())
        return await r.json()


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


async def test_a_first_pass_shows_its_progress_and_its_wait_for_budget_then_completes(
    idle: RunningApp,
    sandbox: RunningSandbox,
    browser: Browser,  # noqa: F811
    tmp_path: Path,
) -> None:
    services = idle.services
    store = services.service.store
    async with (
        aiohttp.ClientSession() as s,
        s.post(idle.url + "/login", data={"token": ADMIN, "next": "/"}, allow_redirects=False) as r,
    ):
        cookie = r.cookies["lp_session"].value

    # Bitbucket allows LIMIT requests an hour (X-RateLimit-Limit, learnt by the client's budget),
    # on a clock the test moves: the pass waits once they are spent
    state = sandbox.sandbox.state
    allowed, state.rate_limit_per_hour = state.rate_limit_per_hour, LIMIT
    now = [1000.0]
    waiting, release = asyncio.Event(), asyncio.Event()

    async def sleep(seconds: float) -> None:
        if not release.is_set():
            waiting.set()
            await release.wait()
        now[0] += seconds

    budget = Budget(LIMIT, window=3600.0, clock=lambda: now[0], sleep=sleep)
    conn = (await services.service.connections())[0]
    client = await services.service.client(conn.id)
    client.budget = budget
    services.worker.pass_chunk = 2
    await services.service.internal_event("lp:reconcile", {"tier": "full", "workspace": "acme"})
    drained = asyncio.create_task(services.worker.drain())
    try:
        await asyncio.wait_for(waiting.wait(), 30)

        async def recorded() -> bool:
            html = await _page(idle, cookie, "/operations")
            return "Waiting for API budget until" in html

        await wait_for(recorded, within=10)
        [running] = await store.events.list(event_key="lp:reconcile", state="running")
        progress = (running.caused or {})["progress"]
        total = progress["total"]
        assert total >= 4 and 0 < progress["done"] < total, progress  # chunks of 2, part-way
        assert progress["done"] % 2 == 0, progress

        # Operations: the running pass, repositories done of those listed, until when and why it waits
        ops = _text(await _page(idle, cookie, "/operations"))
        assert f"{progress['done']} of {total} repositories done" in ops, ops
        assert f"Waiting for API budget until {progress['waiting_until']}" in ops, ops
        assert f"share of the hourly API budget is spent ({LIMIT} of {LIMIT} requests in the last hour" in ops, ops

        # as the operator sees it in the browser
        page, problems = await open_page(browser)
        await login(page, idle)
        await page.goto(idle.url + "/operations")
        now_cell = await page.inner_text("article.panel[data-workspace='acme'] tr[data-tier='full'] td:nth-child(3)")
        assert f"{progress['done']} of {total} repositories done" in now_cell, now_cell
        assert "Waiting for API budget until" in now_cell, now_cell
        shots = DOCS_SHOTS if os.environ.get("UPDATE_SCREENSHOTS") == "1" else tmp_path
        await page.screenshot(path=str(shots / "operations-progress.png"), full_page=True)
        await page.goto(idle.url + "/")
        assert f"{progress['done']} of {total} repositories" in await page.inner_text("#assessing")
        assert problems == [], problems

        # the Overview says plainly that the first assessment is running, and how far it got
        overview = _text(await _page(idle, cookie, "/"))
        assert "The first assessment is still running for acme" in overview, overview
        assert f"{progress['done']} of {total} repositories, waiting for API budget until" in overview, overview
        assert "No results yet" not in overview

        # the JSON API serves the same operations data
        data = await _json(idle, "/api/operations", BEARER)
        [panel] = data["panels"]
        full = next(t for t in panel["tiers"] if t["tier"] == "full")
        assert panel["workspace"] == "acme" and panel["assessed"] is False
        assert full["current"]["state"] == "running"
        assert full["current"]["progress"]["done"] == progress["done"]
        assert full["current"]["progress"]["total"] == total
        assert "hourly API budget is spent" in full["current"]["progress"]["why"]

        # /readyz stays ready (webhooks must keep being stored) and says the assessment runs
        ready = await _json(idle, "/readyz")
        assert ready["status"] == "ready" and ready["first_assessment"] == "running", ready
        [acme] = ready["assessing"]
        assert acme["workspace"] == "acme" and acme["pass"] == "running"
        assert acme["done"] == progress["done"] and acme["total"] == total and acme["waiting_until"]

        # the budget frees up (an hour later, and a larger one): the pass goes on and completes
        state.rate_limit_per_hour = allowed
        sandbox.sandbox.windows.clear()
        release.set()
        await asyncio.wait_for(drained, 60)
    finally:
        state.rate_limit_per_hour = allowed
        release.set()
        if not drained.done():
            drained.cancel()
    [done] = await store.events.list(event_key="lp:reconcile", state="done")
    assert "progress" not in (done.caused or {}) and (done.caused or {})["api_calls"] > LIMIT
    assert "Waiting for API budget" not in await _page(idle, cookie, "/operations")
    assert "first assessment is still running" not in await _page(idle, cookie, "/")
    ready = await _json(idle, "/readyz")
    assert ready["first_assessment"] == "done" and "assessing" not in ready
    data = await _json(idle, "/api/operations", BEARER)
    assert data["panels"][0]["assessed"] is True

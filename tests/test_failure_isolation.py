"""One resource that cannot be read affects only the results that need it; an event whose
processing fails is retried and ends ``dead``; nothing stops the worker, the writer or the
scheduler (issue "One pipeline that cannot die")."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from app.reconcile import reconcile_workspace
from app.sandbox.serve import RunningSandbox, free_port
from tests.helpers import RunningApp, product_settings, running_app, wait_for


async def _no_sleep(_: float) -> None:
    return None


@pytest.fixture
async def product(sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path) -> AsyncIterator[RunningApp]:
    port = free_port()
    settings = product_settings(sandbox.api, tmp_path, port)
    # Retries shortened: two attempts, no waiting between them; event retries after 0.2 s.
    async with running_app(settings, port, session, max_attempts=2, sleep=_no_sleep) as app:
        app.services.worker.retry_base = 0.2
        app.services.worker.coalesce_window = 0.0
        await settle(app)
        yield app


async def settle(app: RunningApp, within: float = 20) -> None:
    store = app.services.service.store

    async def idle() -> bool:
        counts = await store.events.counts()
        busy = counts.get("queued", 0) + counts.get("running", 0) + counts.get("failed", 0)
        return busy == 0 and counts.get("done", 0) > 0

    await wait_for(idle, within=within)


async def act(session: aiohttp.ClientSession, sb: RunningSandbox, path: str, body: dict[str, Any]) -> Any:
    async with session.post(f"{sb.url}/_sandbox/{path}", json=body) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def faults(session: aiohttp.ClientSession, sb: RunningSandbox, **values: Any) -> None:
    if not values:
        async with session.delete(f"{sb.url}/_sandbox/faults") as resp:
            assert resp.status == 200
        return
    async with session.post(f"{sb.url}/_sandbox/faults", json=values) as resp:
        assert resp.status == 200, await resp.text()


def repo_path(sb: RunningSandbox, slug: str) -> str:
    """The sandbox's path (after /2.0/) of one repository read by uuid, as a regex."""
    return "^/repositories/acme/" + re.escape(sb.sandbox.state.workspaces["acme"].repos[slug].uuid) + "$"


async def result(app: RunningApp, check: str, subject: str) -> Any:
    rows = await app.services.service.store.results.query(check=check, subject=subject)
    return rows[0] if rows else None


async def events(app: RunningApp, key: str) -> list[Any]:
    return await app.services.service.store.events.list(event_key=key, limit=50)


async def test_503_on_one_repository_leaves_the_service_healthy_and_results_right(
    product: RunningApp, sandbox: RunningSandbox, session: aiohttp.ClientSession
) -> None:
    """The operator's scenario: Bitbucket answers 503 on one repository endpoint for a while,
    one ``repo:updated`` arrives, the client's retries run out."""
    assert (await result(product, "branch-protection-enforced", "acme/api")).result.status == "pass"
    await faults(session, sandbox, force_status={repo_path(sandbox, "api"): 503})
    await act(session, sandbox, "repos/acme/api/update", {"mainbranch": "develop"})

    async def failed_once() -> bool:
        rows = await events(product, "repo:updated")
        return bool(rows) and rows[0].tries >= 1 and rows[0].state in ("failed", "dead") and rows[0].error is not None

    await wait_for(failed_once, within=10)
    [event] = await events(product, "repo:updated")
    assert "ServerError" in (event.error or "")
    # The last known result stands, marked stale (checks.md "A fetch that fails").
    stale = await result(product, "branch-protection-enforced", "acme/api")
    assert stale.result.status == "pass" and stale.stale_since is not None

    # The service is alive: liveness says so, and another event is processed at once.
    async with session.get(f"{product.url}/healthz") as resp:
        assert resp.status == 200, await resp.text()
    async with session.get(f"{product.url}/readyz") as resp:
        assert resp.status == 200, await resp.text()
    await act(session, sandbox, "repos/acme/docs/update", {"mainbranch": "production"})

    async def docs_done() -> bool:
        rows = [r for r in await events(product, "repo:updated") if "acme/docs" in str(r.payload)]
        return bool(rows) and rows[0].state == "done"

    await wait_for(docs_done, within=10)
    docs = await result(product, "branch-protection-enforced", "acme/docs")
    assert docs.stale_since is None

    # The fault ends: the failed event's retry reads the repository and the result is right.
    await faults(session, sandbox)
    await settle(product)
    [api_event] = [r for r in await events(product, "repo:updated") if "acme/api" in str(r.payload)]
    assert api_event.state == "done" and api_event.tries >= 2
    fixed = await result(product, "branch-protection-enforced", "acme/api")
    assert fixed.result.status == "fail" and fixed.stale_since is None
    # Right means: what a fault-free full pass over the final state would record changes nothing.
    client = await product.services.service.client("token")
    report = await reconcile_workspace(client, product.services.service.store, product.settings, "acme")
    assert [(c.result.check, c.result.subject) for c in report.delta.writes] == []
    assert report.delta.stale == [] and report.delta.retired == []

"""End to end with the sandbox: each action → webhook → the exact API calls → the result change;
drift no webhook reports (members, restrictions) caught by the next scheduler tier."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from app.sandbox.serve import RunningSandbox, free_port
from tests.helpers import RunningApp, product_settings, running_app, wait_for


@pytest.fixture
async def product(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[RunningApp]:
    port = free_port()
    extra = getattr(request, "param", {})
    settings = product_settings(sandbox.api, tmp_path, port, **extra)
    async with running_app(settings, port, session) as app:
        await settle(app)
        yield app


async def settle(app: RunningApp) -> None:
    """Wait until nothing is queued or running."""
    store = app.services.service.store

    async def idle() -> bool:
        counts = await store.events.counts()
        return counts.get("queued", 0) + counts.get("running", 0) == 0 and counts.get("done", 0) > 0

    await wait_for(idle, within=20)


async def act(
    session: aiohttp.ClientSession, sb: RunningSandbox, path: str, body: dict[str, Any] | None = None, wait: bool = True
) -> Any:
    url = f"{sb.url}/_sandbox/{path}" + ("" if wait else "?wait=false")
    async with session.post(url, json=body or {}) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


def calls(sb: RunningSandbox) -> list[str]:
    return [f"{r['method']} {r['path']}" for r in sb.sandbox.requests]


async def result(app: RunningApp, check: str, subject: str) -> str | None:
    rows = await app.services.service.store.results.query(check=check, subject=subject)
    return rows[0].result.status if rows else None


async def last_event(app: RunningApp, key: str) -> Any:
    rows = await app.services.service.store.events.list(event_key=key, limit=1)
    return rows[0]


def uuid_path(sb: RunningSandbox, slug: str) -> str:
    """Repositories are read by ``{uuid}`` (the request log shows the decoded path)."""
    return str(sb.sandbox.state.workspaces["acme"].repos[slug].uuid)


async def test_webhook_registered_and_first_pass(product: RunningApp, sandbox: RunningSandbox) -> None:
    hooks = sandbox.sandbox.state.workspaces["acme"].hooks
    [hook] = hooks.values()
    assert hook.url == f"{product.url}/hooks/bitbucket/token" and hook.secret and hook.active
    assert "repo:push" in hook.events and "pullrequest:approved" not in hook.events
    assert await result(product, "branch-protection-enforced", "acme/api") == "pass"


async def test_main_branch_moved(product: RunningApp, sandbox: RunningSandbox, session: aiohttp.ClientSession) -> None:
    sandbox.sandbox.requests.clear()
    await act(session, sandbox, "repos/acme/api/update", {"mainbranch": "develop"})
    await settle(product)
    assert calls(sandbox) == [f"GET /2.0/repositories/acme/{uuid_path(sandbox, 'api')}"]
    assert await result(product, "branch-protection-enforced", "acme/api") == "fail"
    event = await last_event(product, "repo:updated")
    assert event.state == "done" and event.request_uuid and event.hook_uuid and event.attempt == 1
    assert "branch-protection-enforced acme/api: pass → fail" in event.caused["changes"]


async def test_new_repository(product: RunningApp, sandbox: RunningSandbox, session: aiohttp.ClientSession) -> None:
    sandbox.sandbox.requests.clear()
    created = await act(session, sandbox, "workspaces/acme/create-repo", {"slug": "new-svc", "project": "CORE"})
    await settle(product)
    by_uuid = f"/2.0/repositories/acme/{uuid_path(sandbox, 'new-svc')}"
    by_slug = "/2.0/repositories/acme/new-svc"
    assert calls(sandbox) == [f"GET {by_uuid}", f"GET {by_slug}/branch-restrictions"]  # no pull-request count
    assert await result(product, "repo-classified", "acme/new-svc") == "fail"
    assert await result(product, "branch-protection-enforced", "acme/new-svc") == "fail"
    listed = await product.services.service.store.snapshots.get("repos:acme")
    assert listed is not None and created["repository"]["uuid"] in listed.content


async def test_calls_only_where_needed(
    product: RunningApp, sandbox: RunningSandbox, session: aiohttp.ClientSession
) -> None:
    sandbox.sandbox.requests.clear()
    await act(session, sandbox, "repos/acme/api/push", {"branch": "feature/login"})
    await settle(product)
    assert calls(sandbox) == []  # a push to another branch changes nothing we read
    await act(session, sandbox, "repos/acme/api/open-pr", {"source": "feature/login"})
    await settle(product)
    assert calls(sandbox) == [f"GET /2.0/repositories/acme/{uuid_path(sandbox, 'api')}/pullrequests"]
    snap = await product.services.service.store.snapshots.get(
        "repo:" + sandbox.sandbox.state.workspaces["acme"].repos["api"].uuid + ":prs"
    )
    assert snap is not None and snap.content == 3


async def test_deleted_repository_is_retired(
    product: RunningApp, sandbox: RunningSandbox, session: aiohttp.ClientSession
) -> None:
    assert await result(product, "repo-classified", "acme/playground") == "fail"
    sandbox.sandbox.requests.clear()
    await act(session, sandbox, "repos/acme/playground/delete-repo")
    await settle(product)
    assert calls(sandbox) == []
    assert await result(product, "repo-classified", "acme/playground") is None
    history = await product.services.service.store.results.history("repo-classified", "acme/playground")
    assert history[-1]["new_status"] == "retired"


async def test_drift_without_webhooks_caught_by_next_tier(
    product: RunningApp, sandbox: RunningSandbox, session: aiohttp.ClientSession
) -> None:
    scheduler = product.services.scheduler
    assert await result(product, "offboarded-access-removed", "557058:carol") == "unknown"
    sandbox.sandbox.requests.clear()
    await act(session, sandbox, "workspaces/acme/remove-member", {"account_id": "557058:carol"})
    await act(session, sandbox, "repos/acme/docs/remove-restriction", {"kind": "delete"})
    await settle(product)
    assert calls(sandbox) == []  # Bitbucket sent nothing
    assert await result(product, "offboarded-access-removed", "557058:carol") == "unknown"
    # 16 minutes later: the members tier, a few calls.
    scheduler.clock = lambda: time.time() + 16 * 60
    await scheduler.tick()
    await settle(product)
    assert {"GET /2.0/workspaces/acme/members", "GET /2.0/workspaces/acme/permissions"} <= set(calls(sandbox))
    assert await result(product, "offboarded-access-removed", "557058:carol") is None
    # The restrictions tier re-reads restrictions with the spare budget: the removed one is caught
    # without waiting for the full pass.

    async def caught() -> bool:
        return await result(product, "branch-protection-enforced", "acme/docs") == "fail"

    await wait_for(caught)
    # A full interval later: the full pass agrees.
    scheduler.clock = lambda: time.time() + 7 * 3600
    await scheduler.tick()
    await settle(product)
    assert await result(product, "branch-protection-enforced", "acme/docs") == "fail"


@pytest.mark.parametrize("product", [{"LP_CHECKS_ENABLED": "pipelines-enabled"}], indirect=True)
async def test_a_burst_collapses_into_few_fetches(
    product: RunningApp, sandbox: RunningSandbox, session: aiohttp.ClientSession
) -> None:
    sandbox.sandbox.requests.clear()
    for _ in range(100):
        await act(session, sandbox, "repos/acme/api/push", {"branch": "main"}, wait=False)

    async def all_done() -> bool:
        rows = await product.services.service.store.events.list(event_key="repo:push", limit=500)
        return len(rows) == 100 and all(r.state == "done" for r in rows)

    await wait_for(all_done, within=30)
    fetched = [c for c in calls(sandbox) if c.endswith("/pipelines")]
    assert 1 <= len(fetched) <= 2, calls(sandbox)
    assert len(calls(sandbox)) == len(fetched)

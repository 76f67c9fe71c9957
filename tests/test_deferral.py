"""Waiting never blocks unrelated work: a 429 with a long Retry-After, or an exhausted budget,
re-queues only the event that needs that resource (with its ``next_attempt_at``, the try not
counted); an event for another repository proceeds at once."""

from __future__ import annotations

import asyncio
import contextvars
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from app import errors
from app.bitbucket.client import DEFER_AFTER, BitbucketClient, Budget, StaticToken
from app.sandbox.serve import RunningSandbox, free_port
from tests.conftest import TOKEN
from tests.helpers import ADMIN, RunningApp, product_settings, running_app


async def act(session: aiohttp.ClientSession, sb: RunningSandbox, path: str, body: dict[str, Any]) -> None:
    async with session.post(f"{sb.url}/_sandbox/{path}", json=body) as resp:
        assert resp.status == 200, await resp.text()


async def status(app: RunningApp, subject: str) -> tuple[str, str | None]:
    [row] = await app.services.service.store.results.query(check="branch-protection-enforced", subject=subject)
    return row.result.status, row.stale_since


async def test_a_long_retry_after_requeues_that_event_and_the_next_goes_on(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    port = free_port()
    settings = product_settings(sandbox.api, tmp_path, port)
    async with running_app(settings, port, session, background=False) as app:
        service, worker = app.services.service, app.services.worker
        store = service.store
        worker.coalesce_window = 0.0
        await service.internal_event("lp:reconcile", {"tier": "full"})
        await worker.drain()
        assert await status(app, "acme/api") == ("pass", None)

        async with session.post(f"{sandbox.url}/_sandbox/faults", json={"force_429": 1, "retry_after": 60}) as r:
            assert r.status == 200
        await act(session, sandbox, "repos/acme/api/update", {"mainbranch": "develop"})
        assert await asyncio.wait_for(worker.step(), timeout=10) == 1  # not 60 s inside the worker
        [deferred] = await store.events.list(event_key="repo:updated")
        row = await store.db.fetchone("SELECT next_attempt_at FROM events WHERE id = ?", (deferred.id,))
        assert row is not None and row[0] > time.time() + 50  # back when Bitbucket allows it
        assert deferred.state == "queued" and deferred.tries == 0 and deferred.error is None
        assert await status(app, "acme/api") == ("pass", None)  # a wait is not a failed read

        # The 429 paused the whole credential (Bitbucket counts its requests together): the next
        # event on it waits too, without a request sent and without blocking the worker.
        sent = len(sandbox.sandbox.requests)
        await act(session, sandbox, "repos/acme/docs/update", {"mainbranch": "production"})
        assert await asyncio.wait_for(worker.step(), timeout=10) == 1  # only the docs event is runnable
        docs = [e for e in await store.events.list(event_key="repo:updated") if e.id != deferred.id]
        assert [(e.state, e.tries, e.error) for e in docs] == [("queued", 0, None)]
        assert len(sandbox.sandbox.requests) == sent

        client = await service.client("token")
        client.budget.paused_until = 0.0  # the pause is over
        await store.db.execute("UPDATE events SET next_attempt_at = 0")
        await worker.drain()
        assert [e.state for e in await store.events.list(event_key="repo:updated")] == ["done", "done"]
        assert (await store.events.get(deferred.id)).state == "done"  # type: ignore[union-attr]
        assert await status(app, "acme/api") == ("fail", None)


async def test_an_exhausted_budget_defers_without_sending(
    sandbox: RunningSandbox, session: aiohttp.ClientSession
) -> None:
    sandbox.sandbox.state.rate_limit_per_hour = 1  # what X-RateLimit-Limit says, and the budget learns
    client = BitbucketClient(session, StaticToken(TOKEN), api_url=sandbox.api, budget=Budget(1))
    await client.repositories("acme")  # the one request of the hour
    sent = len(sandbox.sandbox.requests)

    async def deferring() -> None:
        DEFER_AFTER.set(5.0)
        await client.repositories("acme")

    with pytest.raises(errors.Deferred) as caught:
        await asyncio.wait_for(asyncio.create_task(deferring(), context=contextvars.copy_context()), timeout=5)
    assert caught.value.retry_after is not None and caught.value.retry_after > 3000
    assert len(sandbox.sandbox.requests) == sent


async def test_requested_and_scheduled_passes_coalesce_into_one_pending_pass(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    port = free_port()
    settings = product_settings(sandbox.api, tmp_path, port)
    async with running_app(settings, port, session, background=False) as app:
        store = app.services.service.store
        scheduled = await app.services.scheduler.tick()  # a full pass is due at start
        async with session.post(
            f"{app.url}/api/reconcile", json={"tier": "full"}, headers={"Authorization": f"Bearer {ADMIN}"}
        ) as resp:
            assert resp.status == 202, await resp.text()
            requested = (await resp.json())["queued"]
        passes = await store.events.list(event_key="lp:reconcile")
        full = [e for e in passes if e.payload.get("tier") == "full"]
        assert len(full) == 1 and requested == [full[0].id] and full[0].id in scheduled
        await app.services.worker.drain()  # once it has run, a new request is a new pass
        again = await app.services.service.internal_event("lp:reconcile", {"tier": "full"})
        assert again and again[0] != full[0].id

"""``Worker.drain`` is what the CLI and the tests use to say "everything queued has been handled".
With the service's own loop running beside it, an event that loop claimed a moment earlier is
still being processed when ``drain`` finds nothing left to claim; ``drain`` must wait for it
(CI once read the audit pack before the evidence upload's re-evaluation had been written)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

from app.sandbox.serve import RunningSandbox, free_port
from tests.helpers import product_settings, running_app, wait_for


async def test_drain_waits_for_the_event_the_running_loop_is_processing(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    port = free_port()
    async with running_app(product_settings(sandbox.api, tmp_path, port), port, session) as app:
        service, worker = app.services.service, app.services.worker
        store = service.store

        async def reconciled() -> bool:
            return len(await store.results.query(check="repo-classified")) == 6

        await wait_for(reconciled, within=30)
        worker.coalesce_window = 0.0
        # Every Bitbucket answer now takes 0.5 s, so the loop's handling of the next event is slow.
        async with session.post(f"{sandbox.url}/_sandbox/faults", json={"latency_ms": 500}) as r:
            assert r.status == 200
        async with session.post(f"{sandbox.url}/_sandbox/repos/acme/api/update", json={"mainbranch": "develop"}) as r:
            assert r.status == 200

        async def claimed_by_the_loop() -> bool:
            return any(e.state == "running" for e in await store.events.list(event_key="repo:updated"))

        await wait_for(claimed_by_the_loop, within=10, interval=0.005)
        await worker.drain()
        [event] = await store.events.list(event_key="repo:updated")
        assert event.state == "done"
        [row] = await store.results.query(check="branch-protection-enforced", subject="acme/api")
        assert row.result.status == "fail"  # develop carries no restriction in the scenario


async def test_a_delivery_stored_between_the_workers_claim_and_its_wait_is_processed_at_once(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """The worker found nothing to claim, then a delivery was stored before it began to wait:
    it must not sleep through it (here the idle wait is an hour, so a missed wake-up hangs).
    The stream and ``events --follow`` take their wake-up the same way (``EventLog.watch``)."""
    port = free_port()
    async with running_app(product_settings(sandbox.api, tmp_path, port), port, session) as app:
        store = app.services.service.store
        events = store.events

        async def reconciled() -> bool:
            return len(await store.results.query(check="repo-classified")) == 6

        await wait_for(reconciled, within=30)
        await app.services.worker.drain()
        wait_changed, requeue = events.wait_changed, events.requeue_expired_leases
        armed = True

        async def long_wait(seconds: float, *args: Any) -> None:
            await wait_changed(3600.0, *args)

        async def requeue_then_deliver() -> int:
            nonlocal armed
            n = await requeue()
            if armed:  # a delivery lands after the claim found nothing, before the wait
                armed = False
                async with session.post(
                    f"{sandbox.url}/_sandbox/repos/acme/api/update", json={"mainbranch": "develop"}
                ) as r:
                    assert r.status == 200

                async def stored() -> bool:
                    return bool(await events.list(event_key="repo:updated"))

                await wait_for(stored, within=10, interval=0.005)
                await asyncio.sleep(0.3)  # the writer's wake-up after its commit has been given
            return n

        events.wait_changed = long_wait  # type: ignore[method-assign]
        events.requeue_expired_leases = requeue_then_deliver  # type: ignore[method-assign]
        events._notify()  # wake the idle loop: its next round goes through the patched calls

        async def processed() -> bool:
            return [e.state for e in await events.list(event_key="repo:updated")] == ["done"]

        await wait_for(processed, within=15)


async def test_a_pass_drained_inline_gives_back_the_callers_budget_priority(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """``drain`` (the CLI, the tests) runs passes in its own task. A pass sets low budget priority
    for its requests; once it ends, the webhook work drained after it must be high priority again
    (it was left low: events after an inline pass waited behind the pass's share)."""
    from app.bitbucket.client import PRIORITY

    port = free_port()
    async with running_app(product_settings(sandbox.api, tmp_path, port), port, session, background=False) as app:
        service, worker = app.services.service, app.services.worker
        await service.internal_event("lp:reconcile", {"workspace": "acme", "tier": "full"})
        assert PRIORITY.get() is True
        await worker.drain()
        assert len(await service.store.results.query(check="repo-classified")) == 6  # the pass ran here
        assert PRIORITY.get() is True

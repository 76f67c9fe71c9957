"""Webhook registration, repair, fallback to repository hooks, health; locks; the scheduler."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest

from app.bitbucket import oauth
from app.planner import USED_EVENTS
from app.sandbox.serve import RunningSandbox
from app.services import Services, build_services
from app.webhook_registration import ensure_hooks, health
from tests.helpers import product_settings


@pytest.fixture
async def services(sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path) -> AsyncIterator[Services]:
    settings = product_settings(
        sandbox.api,
        tmp_path,
        8999,
        LP_OAUTH_CLIENT_ID="sandbox-member-client",
        LP_OAUTH_CLIENT_SECRET="sandbox-member-secret",
    )
    s = await build_services(settings, session)
    try:
        yield s
    finally:
        await s.service.store.close()


async def test_workspace_hook_created_then_repaired(services: Services, sandbox: RunningSandbox) -> None:
    service = services.service
    conn = await service.ensure_token_connection()
    assert conn is not None
    [entry] = await ensure_hooks(service, conn)
    assert entry["action"] == "created" and entry["level"] == "workspace"
    [hook] = sandbox.sandbox.state.workspaces["acme"].hooks.values()
    assert set(hook.events) == set(USED_EVENTS) and hook.secret and hook.url.endswith("/hooks/bitbucket/token")
    stored = await service.store.connections.get("token")
    assert stored is not None and stored.webhook_secret is not None
    assert hook.secret.encode() not in stored.webhook_secret  # encrypted at rest
    assert await service.webhook_secrets("token") == [hook.secret]
    # nothing to do the second time
    conn = await service.store.connections.get("token")
    assert conn is not None
    assert [e["action"] for e in await ensure_hooks(service, conn)] == ["ok"]
    # someone deactivates it and trims its events: the next check repairs it, keeping the secret
    hook.active = False
    hook.events = ["repo:push"]
    secret = hook.secret
    assert [e["action"] for e in await ensure_hooks(service, conn)] == ["repaired"]
    assert hook.active and set(hook.events) == set(USED_EVENTS) and hook.secret == secret
    # someone deletes it: recreated
    sandbox.sandbox.state.workspaces["acme"].hooks.clear()
    assert [e["action"] for e in await ensure_hooks(service, conn)] == ["created"]


async def _oauth_connection(services: Services, sandbox: RunningSandbox, session: aiohttp.ClientSession) -> str:
    settings = services.service.settings
    url = oauth.authorize_url(settings.bitbucket_url, "sandbox-member-client", "st", "http://127.0.0.1:9/cb")
    async with session.get(url, allow_redirects=False) as resp:
        code = parse_qs(urlsplit(resp.headers["Location"]).query)["code"][0]
    tokens = await oauth.exchange_code(
        session, settings.bitbucket_url, "sandbox-member-client", "sandbox-member-secret", code, "http://127.0.0.1:9/cb"
    )
    await services.service.store.connections.upsert("bob", "oauth", ("acme",))
    await oauth.store_tokens(services.service, "bob", tokens)
    return "bob"


async def test_non_owner_falls_back_to_repository_hooks(
    services: Services, sandbox: RunningSandbox, session: aiohttp.ClientSession
) -> None:
    cid = await _oauth_connection(services, sandbox, session)
    conn = await services.service.store.connections.get(cid)
    assert conn is not None
    state = await ensure_hooks(services.service, conn)
    repos = sandbox.sandbox.state.workspaces["acme"].repos
    assert {e["level"] for e in state} == {"repository"} and len(state) == len(repos)
    assert not sandbox.sandbox.state.workspaces["acme"].hooks
    for repo in repos.values():
        [hook] = repo.hooks.values()
        assert "repo:created" not in hook.events and "repo:push" in hook.events


async def test_oauth_refresh_rotates_and_a_revoked_token_breaks_the_connection(
    services: Services, sandbox: RunningSandbox, session: aiohttp.ClientSession
) -> None:
    cid = await _oauth_connection(services, sandbox, session)
    service = services.service
    before = await service.store.connections.get(cid)
    await (await service.client(cid)).current_user()
    await session.post(sandbox.url + "/_sandbox/tokens/expire")
    user = await (await service.client(cid)).current_user()  # 401 → refresh → retried
    assert user.account_id == "557058:bob"
    after = await service.store.connections.get(cid)
    assert before is not None and after is not None and after.tokens != before.tokens  # rotated pair persisted
    broken: list[str] = []

    async def on_broken(conn_id: str, reason: str) -> None:
        broken.append(conn_id)

    service.on_broken = on_broken
    await session.post(sandbox.url + "/_sandbox/tokens/revoke")
    from app import errors

    with pytest.raises(errors.AuthError):
        await (await service.client(cid)).current_user()
    final = await service.store.connections.get(cid)
    assert final is not None and final.status == "broken" and broken == [cid]


async def test_health_reports_a_silent_hook(services: Services, sandbox: RunningSandbox) -> None:
    service = services.service
    conn = await service.ensure_token_connection()
    assert conn is not None
    assert (await health(service, conn))["status"] == "missing"
    await ensure_hooks(service, conn)
    await service.internal_event("lp:reconcile", {"workspace": "acme", "tier": "full"})
    await services.worker.drain()
    conn = await service.store.connections.get("token")
    assert conn is not None
    later = datetime.now(UTC) + timedelta(hours=1)
    # every repository changed before the hook was registered: no delivery was due
    assert (await health(service, conn, now=later))["status"] == "ok"
    # a repository changes after registration; an hour later with no delivery since → silent
    sandbox.sandbox.state.workspaces["acme"].repos["docs"].updated_on = datetime.now(UTC).isoformat()
    await service.internal_event("lp:reconcile", {"workspace": "acme", "tier": "full"})
    await services.worker.drain()
    h = await health(service, conn, now=later)
    assert h["status"] == "silent" and "View requests" in h["message"]
    await service.store.connections.touch_delivery("token", later.isoformat())
    conn = await service.store.connections.get("token")
    assert conn is not None
    assert (await health(service, conn, now=later))["status"] == "ok"


async def test_locks_are_exclusive_until_released_or_expired(services: Services) -> None:
    locks = services.service.store.locks
    assert await locks.acquire("pass:x", "a", ttl=60)
    assert not await locks.acquire("pass:x", "b", ttl=60)
    assert await locks.acquire("pass:x", "a", ttl=60)  # re-entrant for the owner
    await locks.release("pass:x", "a")
    assert await locks.acquire("pass:x", "b", ttl=0.01)
    await asyncio.sleep(0.02)
    assert await locks.acquire("pass:x", "c", ttl=60)  # b's lease expired


async def test_a_pass_held_elsewhere_is_skipped(services: Services) -> None:
    service = services.service
    await service.ensure_token_connection()
    assert await service.store.locks.acquire("pass:token:acme:full", "another-process", ttl=60)
    [eid] = await service.internal_event("lp:reconcile", {"workspace": "acme", "tier": "full"})
    await services.worker.drain()
    row = await service.store.events.get(eid)
    assert row is not None and row.state == "done" and "skipped" in (row.caused or {})


async def test_scheduler_tiers_with_jitter(services: Services) -> None:
    service = services.service
    await service.ensure_token_connection()
    scheduler = services.scheduler
    scheduler.rng = random.Random(7)
    now = [1_000_000.0]
    scheduler.clock = lambda: now[0]

    async def tiers() -> list[str]:
        ids = await scheduler.tick()
        out = []
        for eid in ids:
            row = await service.store.events.get(eid)
            assert row is not None
            out.append(f"{row.event_key}:{row.payload.get('tier', row.payload.get('check'))}")
            await service.store.events.finish({eid: {}})  # pretend it ran
        return sorted(out)

    # first tick: a full pass (it covers the members), and the repositories and restrictions tiers
    assert await tiers() == ["lp:reconcile:full", "lp:reconcile:repos", "lp:reconcile:restrictions"]
    now[0] += 30
    assert await tiers() == []
    now[0] += 30
    assert await tiers() == ["lp:reconcile:restrictions"]  # every minute, within the spare budget
    now[0] += 15 * 60
    assert await tiers() == ["lp:reconcile:members", "lp:reconcile:repos", "lp:reconcile:restrictions"]
    # the full pass comes back after LP_RECONCILE_INTERVAL (6 h) ± 10 %
    full_at = []
    for minute in range(1, 8 * 60):
        now[0] += 60
        if "lp:reconcile:full" in await tiers():
            full_at.append(minute)
    interval_minutes = 6 * 60
    assert full_at and 0.9 * interval_minutes - 17 <= full_at[0] <= 1.1 * interval_minutes


async def test_every_full_pass_checks_and_repairs_the_hook(services: Services, sandbox: RunningSandbox) -> None:
    service = services.service
    conn = await service.ensure_token_connection()
    assert conn is not None
    await ensure_hooks(service, conn)
    sandbox.sandbox.state.workspaces["acme"].hooks.clear()  # someone deleted it in Bitbucket
    [eid] = await service.internal_event("lp:reconcile", {"workspace": "acme", "tier": "full"})
    await services.worker.drain()
    row = await service.store.events.get(eid)
    assert row is not None and row.caused is not None and row.caused["webhooks"]["actions"] == ["created"]
    assert len(sandbox.sandbox.state.workspaces["acme"].hooks) == 1


async def test_failing_events_back_off_then_die_and_old_ones_are_purged(
    services: Services, sandbox: RunningSandbox
) -> None:
    from app.store.events import MAX_TRIES

    service = services.service
    await service.ensure_token_connection()
    sandbox.sandbox.faults.error_rate = 1.0  # Bitbucket is down
    [eid] = await service.internal_event("lp:reconcile", {"workspace": "acme", "tier": "full"})
    client = await service.client("token")
    client._max_attempts = 1  # keep the test quick: one try per attempt
    for attempt in range(1, MAX_TRIES + 1):
        await service.store.db.execute("UPDATE events SET next_attempt_at = 0 WHERE id = ?", (eid,))
        await services.worker.drain()
        row = await service.store.events.get(eid)
        assert row is not None and row.tries == attempt
        assert row.state == ("dead" if attempt == MAX_TRIES else "failed") and "ServerError" in (row.error or "")
    # An outage never decides a result: with no earlier data, only `unknown` naming the failed fetch
    # (checks.md), never a fail or a pass.
    during = await service.store.results.query()
    assert all(r.result.status == "unknown" and r.result.details["reason"] == "fetch_failed" for r in during)
    await service.store.db.execute("UPDATE events SET changed_at = changed_at - 40 * 86400")
    assert await service.store.events.purge(30) == 1
    assert await service.store.events.get(eid) is None


async def test_a_scope_change_is_recorded_and_alerted(services: Services) -> None:
    service = services.service
    await service.ensure_token_connection()
    ops: list[tuple[str, str]] = []

    async def on_ops(title: str, message: str) -> None:
        ops.append((title, message))

    services.worker.on_ops = on_ops
    await service.internal_event("lp:reconcile", {"workspace": "acme", "tier": "full"})
    await services.worker.drain()
    conn = await service.store.connections.get("token")
    assert conn is not None and conn.scopes is not None and "repository:admin" in conn.scopes
    assert ops == []  # the first report is only recorded
    await service.store.connections.set_scopes("token", (*conn.scopes, "project:admin"))
    await service.internal_event("lp:reconcile", {"workspace": "acme", "tier": "full"})
    await services.worker.drain()
    assert len(ops) == 1 and "lost project:admin" in ops[0][1]

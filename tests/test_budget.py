"""One budget per credential, with headroom (issue 13, item 2).

Bitbucket counts an OAuth consumer's or an access token's requests together, across every
connection that uses it (bitbucket-facts.md "Rate limits"). The sandbox does the same; the product
shares one budget per credential, keeps headroom, learns ``X-RateLimit-Limit``, slows down on
``X-RateLimit-NearLimit`` and, after a 429, pauses that credential only, then resumes.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aioresponses import aioresponses

from app import errors
from app.bitbucket.client import DEFER_AFTER, BitbucketClient, Budget, ClientPool, StaticToken
from app.sandbox.serve import RunningSandbox, free_port
from app.services import build_services
from tests.conftest import READONLY_TOKEN, TOKEN
from tests.helpers import product_settings, wait_for

AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def _no_sleep(_: float) -> None:
    return None


def pool(session: aiohttp.ClientSession, sandbox: RunningSandbox, **kw: Any) -> ClientPool:
    kw.setdefault("sleep", _no_sleep)
    kw.setdefault("max_attempts", 1)
    return ClientPool(
        session, api_url=sandbox.api, budget_per_hour=1000, concurrency=4, reserve=0.3, headroom=0.1, **kw
    )


async def deferring(call: Callable[[], Awaitable[Any]], defer_after: float = 0.5) -> Any:
    """Run ``call`` as webhook-driven work does: a long wait raises Deferred instead of blocking."""

    async def run() -> Any:
        DEFER_AFTER.set(defer_after)
        return await call()

    return await asyncio.create_task(run(), context=contextvars.copy_context())


def statuses(sandbox: RunningSandbox) -> list[int]:
    return [r["status"] for r in sandbox.sandbox.requests]


# -- the sandbox counts like Bitbucket --------------------------------------------------------------
async def test_sandbox_counts_one_consumer_across_its_tokens(
    sandbox: RunningSandbox, session: aiohttp.ClientSession
) -> None:
    sandbox.sandbox.state.rate_limit_per_hour = 2
    tokens = []
    for _ in range(2):  # two grants of one consumer (two connections using it)
        async with session.post(
            f"{sandbox.url}/site/oauth2/access_token",
            data={"grant_type": "client_credentials"},
            auth=aiohttp.BasicAuth("sandbox-client-id", "sandbox-client-secret"),
        ) as resp:
            tokens.append((await resp.json())["access_token"])
    got = []
    for token in (*tokens, tokens[0]):
        async with session.get(f"{sandbox.api}/repositories/acme", headers={"Authorization": f"Bearer {token}"}) as r:
            got.append(r.status)
    assert got == [200, 200, 429]


async def test_sandbox_scaled_limit_and_retry_after_switch(
    sandbox: RunningSandbox, session: aiohttp.ClientSession
) -> None:
    sb = sandbox.sandbox
    token = next(c for c in sb.state.credentials if c.token == TOKEN)
    token.rate_limit = 3
    async with session.post(f"{sandbox.url}/_sandbox/settings", json={"rate_limit_retry_after": True}) as resp:
        assert (await resp.json())["rate_limit_retry_after"] is True
    seen = []
    for _ in range(4):
        async with session.get(f"{sandbox.api}/repositories/acme", headers=AUTH) as resp:
            seen.append((resp.status, resp.headers.get("X-RateLimit-Limit"), resp.headers.get("Retry-After")))
    assert [s[:2] for s in seen] == [(200, "3"), (200, "3"), (200, "3"), (429, "3")]
    assert seen[0][2] is None and 3590 <= int(seen[3][2] or 0) <= 3600  # until the first request leaves the hour
    async with session.get(
        f"{sandbox.api}/repositories/acme", headers={"Authorization": f"Bearer {READONLY_TOKEN}"}
    ) as resp:
        assert resp.status == 200  # another token has its own allowance


# -- the product --------------------------------------------------------------------------------
async def test_two_connections_on_one_token_share_one_budget_and_meet_no_429(
    sandbox: RunningSandbox, session: aiohttp.ClientSession
) -> None:
    sandbox.sandbox.state.rate_limit_per_hour = 20
    clients = pool(session, sandbox)
    a = clients.get("conn-a", StaticToken(TOKEN))
    b = clients.get("conn-b", StaticToken(TOKEN))
    assert a.budget is b.budget
    sent, deferred = 0, 0
    for _ in range(15):
        for client in (a, b):
            try:
                await deferring(lambda c=client: c.repository("acme", "api"))  # type: ignore[misc]
                sent += 1
            except errors.Deferred:
                deferred += 1
    assert 429 not in statuses(sandbox)
    assert sent == 18 and deferred == 12  # the learnt limit of 20 less 10 % headroom, shared


async def test_oauth_connections_of_one_consumer_share_one_budget(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    settings = product_settings(
        sandbox.api,
        tmp_path,
        free_port(),
        LP_OAUTH_CLIENT_ID="sandbox-client-id",
        LP_OAUTH_CLIENT_SECRET="sandbox-client-secret",
        LP_BUDGET_HEADROOM="25%",
    )
    services = await build_services(settings, session)
    try:
        service = services.service
        first, second = await service.client("oauth-alice"), await service.client("oauth-bob")
        token = await service.client("token")
        assert first.budget is second.budget
        assert token.budget is not first.budget  # an access token has its own allowance
        assert first.budget.cap() == 750  # LP_BUDGET_PER_HOUR 1000 less LP_BUDGET_HEADROOM 25 %
        assert first.budget.cap(priority=False) == 450  # less LP_WEBHOOK_BUDGET_SHARE 30 % for webhooks
    finally:
        await services.service.store.close()


async def test_the_limit_is_learnt_from_x_ratelimit_limit(
    sandbox: RunningSandbox, session: aiohttp.ClientSession
) -> None:
    token = next(c for c in sandbox.sandbox.state.credentials if c.token == TOKEN)
    token.rate_limit = 5000  # a scaled limit
    client = pool(session, sandbox).get("conn", StaticToken(TOKEN))
    assert client.budget.cap() == 900
    await client.repository("acme", "api")
    assert client.budget.limit == 5000 and client.budget.cap() == 4500


async def test_a_learnt_limit_is_capped_at_ten_thousand() -> None:
    api = "https://api.bitbucket.org/2.0"
    with aioresponses() as mocked:
        mocked.get(f"{api}/user", payload={"account_id": "a"}, headers={"X-RateLimit-Limit": "20000"})
        async with aiohttp.ClientSession() as session:
            client = BitbucketClient(session, StaticToken("t"), api_url=api, budget=Budget(1000))
            await client.current_user()
    assert client.budget.limit == 10_000


async def test_near_limit_slows_passes_down(sandbox: RunningSandbox, session: aiohttp.ClientSession) -> None:
    sandbox.sandbox.state.rate_limit_per_hour = 20
    for _ in range(16):  # another process spends the same token
        async with session.get(f"{sandbox.api}/repositories/acme", headers=AUTH) as resp:
            assert resp.status == 200
    client = pool(session, sandbox).get("conn", StaticToken(TOKEN))
    await client.repository("acme", "api")
    assert client.rate_limit is not None and client.rate_limit.near_limit
    assert client.budget.used >= 16  # at least the 80 % Bitbucket counts
    assert client.budget.spare() == 0 and client.budget.delay(priority=False) > 0  # passes wait
    assert client.budget.delay(priority=True) == 0  # webhook-driven work may still go
    with pytest.raises(errors.Deferred):
        await _low(client)  # a pass's read is deferred, not sent
    assert 429 not in statuses(sandbox)


async def _low(client: BitbucketClient) -> None:
    from app.bitbucket.client import PRIORITY

    async def run() -> None:
        PRIORITY.set(False)
        DEFER_AFTER.set(0.5)
        await client.repository("acme", "api")

    await asyncio.create_task(run(), context=contextvars.copy_context())


async def test_a_429_pauses_that_credential_not_the_process(
    sandbox: RunningSandbox, session: aiohttp.ClientSession
) -> None:
    sb = sandbox.sandbox
    sb.state.rate_limit_per_hour = 5
    sb.state.rate_limit_retry_after = True
    for _ in range(5):  # another process spends the token's hour
        async with session.get(f"{sandbox.api}/repositories/acme", headers=AUTH):
            pass
    clients = pool(session, sandbox)
    spent = clients.get("conn-a", StaticToken(TOKEN))
    other = clients.get("conn-b", StaticToken(READONLY_TOKEN))
    with pytest.raises(errors.Deferred) as caught:
        await deferring(lambda: spent.repository("acme", "api"))
    assert caught.value.retry_after is not None and caught.value.retry_after > 3000
    assert spent.budget.pauses == 1 and spent.budget.delay() > 3000
    sent = len(sb.requests)
    with pytest.raises(errors.Deferred):  # the paused credential sends nothing more
        await deferring(lambda: clients.get("conn-c", StaticToken(TOKEN)).repository("acme", "api"))
    assert len(sb.requests) == sent
    assert (await other.repository("acme", "api")).slug == "api"  # another credential goes on
    assert statuses(sandbox).count(429) == 1


async def test_after_the_pause_the_credential_resumes(sandbox: RunningSandbox, session: aiohttp.ClientSession) -> None:
    sb = sandbox.sandbox
    sb.faults.force_429 = 1
    sb.faults.retry_after = 1
    clients = pool(session, sandbox, sleep=asyncio.sleep, max_attempts=3)
    first = clients.get("conn-a", StaticToken(TOKEN))
    second = clients.get("conn-b", StaticToken(TOKEN))
    task = asyncio.create_task(first.repository("acme", "api"))

    async def paused() -> bool:
        return first.budget.pauses > 0

    await wait_for(paused)
    await second.repository("acme", "docs")  # waits out the pause instead of meeting a 429
    assert (await task).slug == "api"
    log = sb.requests
    assert [r["status"] for r in log] == [429, 200, 200]
    assert all(r["time"] >= log[0]["time"] + 0.9 for r in log[1:])


async def test_passes_past_half_their_share_are_paced_evenly() -> None:
    now = [0.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    budget = Budget(1000, reserve=0.3, headroom=0.1, pace=True, clock=lambda: now[0], sleep=sleep)
    for _ in range(300):  # half the passes' share (600) goes at once
        await budget.acquire(priority=False)
    assert now[0] == 0.0
    for _ in range(300):
        await budget.acquire(priority=False)
    # then 10 a minute (600 / 60), so the second half takes about half an hour, not a burst
    assert 29 * 60 <= now[0] <= 31 * 60
    assert budget.delay(priority=True) == 0  # webhook-driven work is never paced


# -- a run of 429s without Retry-After (the state machine's soak hung here, seed 707) -----------------
class VirtualTime:
    """The budget's clock and sleep, and the client's retry sleep: waits pass at once, time moves on."""

    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


def restriction_reads(sandbox: RunningSandbox, copies: int) -> list[Any]:
    from app.planner import Fetch

    repos = sorted(sandbox.sandbox.state.workspaces["acme"].repos.values(), key=lambda r: r.slug)
    return [Fetch("restrictions", "acme", r.uuid, ref=r.slug) for r in repos] * copies


async def test_a_pass_meeting_only_429s_gives_up_in_bounded_time_then_reads_again(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, database: Path | str
) -> None:
    """Every read answered 429 without Retry-After: the reads of one round wait the pauses out
    together and, after GIVE_UP_AFTER of nothing but 429s, fail (stale, as checks.md says for a
    failed fetch) however many there are. Before the fix each waiter, once the pause ended, met a
    429 of its own and extended the pause for all the others: 60 reads took 19 hours (virtual).
    Once Bitbucket answers again, the next round waits the last pause out and reads everything."""
    from app.bitbucket.client import PAUSE_MAX, PRIORITY
    from app.fetch import fetch_all
    from app.store import Store
    from app.store.snapshots import k_restrictions

    sb = sandbox.sandbox
    sb.faults.force_status = {r"/branch-restrictions": 429}
    time = VirtualTime()
    budget = Budget(1000, reserve=0.3, headroom=0.1, pace=True, clock=time.clock, sleep=time.sleep)
    client = BitbucketClient(
        session, StaticToken(TOKEN), api_url=sandbox.api, budget=budget, max_attempts=5, sleep=time.sleep
    )
    reads = restriction_reads(sandbox, 10)
    store = await Store.open(database)
    try:

        async def round_of_reads() -> Any:
            PRIORITY.set(False)  # as a pass does
            return await fetch_all(client, store, reads, enabled=(), now="2026-01-01T00:00:00+00:00", concurrency=4)

        out = await asyncio.create_task(round_of_reads(), context=contextvars.copy_context())
        # README: a pass stops waiting after 15 minutes of nothing but 429s (then one last pause)
        assert time.now <= 15 * 60 + PAUSE_MAX, f"the round waited {time.now:.0f} s for 429s"
        assert out.failures == len(reads) and not out.rows
        assert all("429" in e or "RateLimited" in e for e in out.failed.values()), out.failed
        met = sum(1 for r in sb.requests if r["status"] == 429)
        assert met <= 40, f"{met} requests met a 429"
        snap = await store.snapshots.get(k_restrictions(reads[0].repo_uuid))
        assert snap is not None and snap.stale_since is not None  # marked failed, nothing invented

        sb.faults.force_status = {}  # Bitbucket answers again
        paused_left = budget.paused_until - time.now
        before = time.now
        out = await asyncio.create_task(round_of_reads(), context=contextvars.copy_context())
        assert out.failures == 0 and not out.failed
        assert time.now - before <= max(paused_left, 0.0) + 1.0  # the pause ends; nothing waits longer
        snap = await store.snapshots.get(k_restrictions(reads[0].repo_uuid))
        assert snap is not None and snap.stale_since is None
    finally:
        await store.close()


async def test_429s_to_requests_already_sent_belong_to_the_same_pause(
    sandbox: RunningSandbox, session: aiohttp.ClientSession
) -> None:
    """Four reads on their way together all meet a 429: that is one pause of 10 s, not four
    doublings to 80 s (each 429 of a burst counted as another strike)."""
    from app.bitbucket.client import PAUSE_INITIAL

    sandbox.sandbox.faults.force_status = {r"/branch-restrictions": 429}
    time = VirtualTime()
    budget = Budget(1000, clock=time.clock, sleep=time.sleep)
    client = BitbucketClient(
        session, StaticToken(TOKEN), api_url=sandbox.api, budget=budget, max_attempts=1, sleep=time.sleep
    )
    slugs = ["api", "web", "billing", "docs"]
    got = await asyncio.gather(*(client.branch_restrictions("acme", s) for s in slugs), return_exceptions=True)
    assert all(isinstance(g, errors.RateLimitedError) for g in got), got
    assert budget.pauses == 4
    assert budget.paused_until - time.now == PAUSE_INITIAL


async def test_webhook_work_is_not_held_behind_a_pass_waiting_for_its_pace() -> None:
    """A pass past half its share waits for its next paced slot; webhook-driven work, which has
    its own share, goes at once instead of queueing behind that wait (the budget's lock was held
    while sleeping)."""
    now = [0.0]
    woken = asyncio.Event()

    async def sleep(seconds: float) -> None:
        await woken.wait()
        now[0] += seconds

    budget = Budget(1000, reserve=0.3, headroom=0.1, pace=True, clock=lambda: now[0], sleep=sleep)
    for _ in range(300):  # half the passes' share: the next pass request waits for the pace
        await budget.acquire(priority=False)
    paced = asyncio.create_task(budget.acquire(priority=False))
    await asyncio.sleep(0.05)
    assert not paced.done() and budget.delay(priority=False) > 0
    await asyncio.wait_for(budget.acquire(priority=True), 2.0)  # hung behind the pass before the fix
    woken.set()
    await asyncio.wait_for(paced, 2.0)


async def test_a_full_pass_meeting_only_429s_ends_once_with_stale_results_then_the_next_pass_reads(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """The product's pass (the worker, chunk by chunk) under nothing but 429s on one endpoint:
    it gives up once for the whole pass, not once per chunk (or per read), and ends; the results
    that need the endpoint stand as they were, marked stale; every other result is written. When
    Bitbucket answers again, the next pass waits the last pause out and reads everything."""
    from app.bitbucket.client import PAUSE_MAX
    from tests.helpers import running_app

    port = free_port()
    settings = product_settings(sandbox.api, tmp_path, port)
    time = VirtualTime()
    async with running_app(settings, port, session, background=False, sleep=time.sleep, max_attempts=5) as product:
        services = product.services
        # The credential's budget on the test's clock (the pool keeps one budget per credential;
        # its clients are made again to use it).
        pool = services.service.pool
        pool.budgets[StaticToken(TOKEN).credential_id] = Budget(
            1000, reserve=0.3, headroom=0.1, pace=True, clock=time.clock, sleep=time.sleep
        )
        pool.clients.clear()
        services.worker.pass_chunk = 2  # six repositories: three chunks
        store = services.service.store

        async def full_pass() -> Any:
            [eid] = await services.service.internal_event("lp:reconcile", {"workspace": "acme", "tier": "full"})
            await asyncio.wait_for(services.worker.drain(), 60)
            return await store.events.get(eid)

        async def result(check: str, subject: str) -> Any:
            [row] = await store.results.query(check=check, subject=subject)
            return row

        assert (await full_pass()).state == "done"
        before = await result("branch-protection-enforced", "acme/api")
        assert before.result.status == "pass" and before.stale_since is None

        sandbox.sandbox.faults.force_status = {r"/branch-restrictions": 429}
        start = time.now
        event = await full_pass()
        assert time.now - start <= 15 * 60 + PAUSE_MAX, f"the pass waited {time.now - start:.0f} s for 429s"
        assert event.state == "done"
        stale = await result("branch-protection-enforced", "acme/api")
        assert stale.result.status == "pass" and stale.stale_since is not None
        classified = await result("repo-classified", "acme/api")  # needs no restriction: read and written
        assert classified.stale_since is None

        sandbox.sandbox.faults.force_status = {}
        assert (await full_pass()).state == "done"
        fresh = await result("branch-protection-enforced", "acme/api")
        assert fresh.result.status == "pass" and fresh.stale_since is None

"""Spend the budget where drift hides (issue 13, item 3): the repositories tier, the restrictions
tier, restriction freshness in the API and /metrics, and no open pull-request count in the pass."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from app import tiers
from app.sandbox.serve import RunningSandbox, free_port
from app.tiers import Reading, restriction_order
from tests.conftest import TOKEN
from tests.helpers import ADMIN, RunningApp, product_settings, running_app

API_AUTH = {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture
async def app(sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path) -> AsyncIterator[RunningApp]:
    port = free_port()
    settings = product_settings(sandbox.api, tmp_path, port)
    async with running_app(settings, port, session, background=False) as running:
        running.services.worker.coalesce_window = 0.0
        yield running


async def act(session: aiohttp.ClientSession, sb: RunningSandbox, path: str, body: dict[str, Any]) -> Any:
    async with session.post(f"{sb.url}/_sandbox/{path}", json=body) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def status(app: RunningApp, check: str, subject: str) -> str | None:
    rows = await app.services.service.store.results.query(check=check, subject=subject)
    return rows[0].result.status if rows else None


def paths_sent(sb: RunningSandbox) -> list[str]:
    return [r["path"] for r in sb.sandbox.requests]


async def full_pass(app: RunningApp) -> None:
    await app.services.service.internal_event("lp:reconcile", {"tier": "full"})
    await app.services.worker.drain()


# -- pure parts -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("readings", "expected"),
    [
        # never read first (production first among them), then the oldest reading
        ([Reading("a", False, "T2"), Reading("b", False, None), Reading("c", True, None)], ["c", "b", "a"]),
        # one full pass stamps all alike: production first
        ([Reading("a", False, "T1"), Reading("b", True, "T1"), Reading("c", False, "T0")], ["c", "b", "a"]),
        # the oldest reading wins over the class: nothing starves
        ([Reading("p", True, "T5"), Reading("o", False, "T1")], ["o", "p"]),
    ],
)
def test_restriction_order(readings: list[Reading], expected: list[str]) -> None:
    assert restriction_order(readings) == expected


def test_tier_keep_leaves_the_repositories_and_members_tiers_their_calls() -> None:
    # 2,000 repositories: 20 pages every 5 min; 50 members: 1 page of members + 1 of permissions every 15 min
    assert tiers.tier_keep(2000, 50) == 20 + 2  # one run of each stays free
    assert tiers.tier_calls_per_hour(2000, 50, 300) == 20 * 12 + 2 * 4


# -- the sandbox's partial responses -------------------------------------------------------------
async def test_sandbox_fields_trims_and_drops_next_unless_named(
    sandbox: RunningSandbox, session: aiohttp.ClientSession
) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    url = f"{sandbox.api}/repositories/acme?pagelen=2&fields=values.uuid,values.mainbranch.name"
    async with session.get(url, headers=auth) as resp:
        body = await resp.json()
    assert set(body) == {"values"} and set(body["values"][0]) <= {"uuid", "mainbranch"}
    async with session.get(url + ",next", headers=auth) as resp:
        assert "next" in await resp.json()


# -- the repositories tier ---------------------------------------------------------------------------
async def test_a_main_branch_move_without_webhook_is_caught_within_the_repositories_tier_period(
    app: RunningApp, sandbox: RunningSandbox, session: aiohttp.ClientSession
) -> None:
    services = app.services
    scheduler, worker = services.scheduler, services.worker
    start = time.time()
    scheduler.clock = lambda: start
    await scheduler.tick()
    await worker.drain()
    assert await status(app, "branch-protection-enforced", "acme/api") == "pass"

    async with session.post(f"{sandbox.url}/_sandbox/settings", json={"repo_updated_for_moves": False}) as resp:
        assert (await resp.json())["repo_updated_for_moves"] is False
    moved = await act(session, sandbox, "repos/acme/api/update", {"mainbranch": "develop"})
    assert moved["deliveries"] == []  # Bitbucket sent no repo:updated
    await worker.drain()
    interval = app.settings.repos_tier_interval
    scheduler.clock = lambda: start + interval - 1
    await scheduler.tick()
    await worker.drain()
    assert await status(app, "branch-protection-enforced", "acme/api") == "pass"  # not seen yet

    sandbox.sandbox.requests.clear()
    scheduler.clock = lambda: start + interval + 1
    await scheduler.tick()
    await worker.drain()
    assert await status(app, "branch-protection-enforced", "acme/api") == "fail"  # caught within the period
    listing = [r for r in sandbox.sandbox.requests if r["path"] == "/2.0/repositories/acme"]
    assert listing and all("fields=" in r["query"] for r in listing)  # pages only, trimmed
    assert not [p for p in paths_sent(sandbox) if p.startswith("/2.0/repositories/acme/docs")]  # targeted
    passes = await services.service.store.events.list(event_key="lp:reconcile")
    assert [e.state for e in passes if e.payload["tier"] == "repos"][:1] == ["done"]


# -- the restrictions tier ---------------------------------------------------------------------------
async def test_restrictions_tier_reads_production_first_then_the_oldest(
    app: RunningApp, sandbox: RunningSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    await full_pass(app)
    store = app.services.service.store
    found, names = await tiers.readings(store, "acme")
    api = next(u for u, n in names.items() if n == "acme/api")
    await store.records.set_class(api, "acme", "acme/api", "production", "test", "2026-01-01T00:00:00Z")
    monkeypatch.setattr(tiers, "RESTRICTIONS_MAX_PER_RUN", 2)
    client = await app.services.service.client("token")
    read: list[list[str]] = []
    for minute in range(1, (len(found) + 1) // 2 + 1):  # one run a minute, two readings each
        later = datetime.now(UTC) + timedelta(minutes=minute)
        monkeypatch.setattr(tiers, "utcnow", lambda later=later: later)
        sandbox.sandbox.requests.clear()
        await tiers.restrictions_tier(client, store, app.settings, "acme")
        read.append(sorted(p.split("/")[4] for p in paths_sent(sandbox) if p.endswith("/branch-restrictions")))
    assert api in read[0]  # every reading is as old (one full pass): production first
    everyone = [u for batch in read for u in batch]
    assert len(set(everyone)) == len(found)  # each once before any twice: oldest reading first
    assert len(everyone) == len(found) + len(found) % 2
    assert api in read[-1]  # then round again, from the oldest reading (production first among equals)


async def test_restrictions_tier_waits_when_no_budget_is_spare(app: RunningApp, sandbox: RunningSandbox) -> None:
    await full_pass(app)
    client = await app.services.service.client("token")
    budget = client.budget
    while budget.spare() > 0:  # the passes' share of this hour is spent
        await budget.acquire(priority=False)
    sandbox.sandbox.requests.clear()
    _, written = await tiers.restrictions_tier(client, app.services.service.store, app.settings, "acme")
    assert sandbox.sandbox.requests == [] and written == 0
    assert budget.delay(priority=True) == 0  # the webhook share is untouched


async def test_a_tier_dates_what_it_records_to_when_it_read_it_not_to_its_start(
    app: RunningApp, sandbox: RunningSandbox, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both tiers record after their reads, at that moment: a tier whose reads are slow (or wait out
    a 429) never dates a change to before it read it (a full pass did: CI's chaos seed 2264293176)."""
    await full_pass(app)
    store = app.services.service.store
    client = await app.services.service.client("token")
    _, names = await tiers.readings(store, "acme")
    docs = next(u for u, n in names.items() if n == "acme/docs")
    await store.records.set_class(docs, "acme", "acme/docs", "production", "test", "2026-01-01T00:00:00Z")
    monkeypatch.setattr(tiers, "RESTRICTIONS_MAX_PER_RUN", 2)  # docs (production) first, then one more
    await act(session, sandbox, "repos/acme/docs/remove-restriction", {"kind": "delete"})
    async with session.post(f"{sandbox.url}/_sandbox/settings", json={"repo_updated_for_moves": False}) as resp:
        assert resp.status == 200
    await act(session, sandbox, "repos/acme/api/update", {"mainbranch": "develop"})
    async with session.post(f"{sandbox.url}/_sandbox/faults", json={"latency_ms": 1000}) as resp:
        assert resp.status == 200  # every read takes a second: each tier below reads at least twice

    def at(check: str, subject: str) -> float:
        [row] = [h for h in history if h["check_id"] == check and h["subject"] == subject][-1:]
        return datetime.fromisoformat(row["at"].replace("Z", "+00:00")).timestamp()  # to the second

    for run, check, subject in (
        (tiers.restrictions_tier, "branch-protection-enforced", "acme/docs"),
        (tiers.repositories_tier, "branch-protection-enforced", "acme/api"),
    ):
        started = time.time()
        delta, _ = await run(client, store, app.settings, "acme")
        returned = time.time()
        assert returned - started >= 2.0 and (delta.opened or delta.changed), (run.__name__, delta)
        history = await store.results.history(check=check, subject=subject)
        assert history[-1]["new_status"] == "fail", history[-1]
        assert at(check, subject) >= int(returned - 0.5), f"{run.__name__} recorded at its start"


async def test_freshness_in_the_api_and_metrics(app: RunningApp, session: aiohttp.ClientSession) -> None:
    await full_pass(app)
    async with session.get(f"{app.url}/api/repositories", headers=API_AUTH) as resp:
        repos = {r["full_name"]: r for r in await resp.json()}
    api = repos["acme/api"]
    assert api["restrictions_read_at"] and 0 <= api["restrictions_age_seconds"] < 60
    async with session.get(f"{app.url}/metrics") as resp:
        text = await resp.text()
    assert 'lp_restrictions_age_seconds{class="other",stat="max",workspace="acme"}' in text
    assert 'lp_restrictions_never_read{workspace="acme"} 0.0' in text


# -- no pull-request count in the pass ----------------------------------------------------------------
async def test_the_full_pass_reads_no_pull_request_count_and_webhooks_keep_it(
    app: RunningApp, sandbox: RunningSandbox, session: aiohttp.ClientSession
) -> None:
    await full_pass(app)
    assert not [p for p in paths_sent(sandbox) if p.endswith("/pullrequests")]
    await act(session, sandbox, "repos/acme/api/open-pr", {"title": "x"})
    await app.services.worker.drain()
    async with session.get(f"{app.url}/api/repositories", headers=API_AUTH) as resp:
        repos = {r["full_name"]: r for r in await resp.json()}
    opened = [r for r in sandbox.sandbox.state.workspaces["acme"].repos["api"].pullrequests if r.state == "OPEN"]
    assert repos["acme/api"]["open_pullrequests"] == len(opened)

"""Benchmark: the API budget on a generated workspace of 2,000 repositories (10 % production).

Two parts (issue 13, item 8):

1. **Calls per full pass against the lower bound**, measured: the product's full pass
   (``reconcile_workspace``) against the sandbox in its own process over loopback HTTP, counted by
   the client. The lower bound, re-derived from checks.md with Pipelines off (the default): the
   repository list (``ceil(N / 100)`` pages), one branch-restrictions read per repository with a
   main branch (an empty repository is not applicable to the branch tests, so it needs none), one
   effective-branching-model read per repository whose restrictions use the branching model (the
   only way to resolve ``branch_match_kind: branching_model``), and the member tests' pages
   (members and permissions, ``ceil(M / 100)`` each). No test needs the open pull-request count.

2. **Freshness and shares under a 1,000/hour budget with a simulated clock**: the product's own
   :class:`app.bitbucket.client.Budget` (LP_BUDGET_HEADROOM 10 %, LP_WEBHOOK_BUDGET_SHARE 30 %) and
   the restrictions tier's order and reserve (:func:`app.tiers.restriction_order`,
   :func:`app.tiers.tier_keep`) drive a simulation of 48 hours, second by second: webhook-driven
   fetches at high priority, the repositories tier (every 5 min), the members tier (every 15 min),
   full passes (every 6 h, as LP_RECONCILE_INTERVAL), the restrictions tier (every minute, within
   the spare budget). Bitbucket's side is the sandbox's own rolling-hour counter
   (:meth:`app.sandbox.api.Sandbox.rate_limited`) on the same clock, which counts the 429s.
   Restriction freshness (age of the last reading) is sampled every minute from hour 12 on and
   compared per class with the physical bound ``calls for every repository / spare calls per
   hour``; the share of the budget left for webhook-driven fetches is the limit less the
   low-priority calls of the busiest rolling hour.

Targets: calls per pass equal to the lower bound; freshness within 10 % of the physical bound for
each class; never less than 30 % of the budget left for webhooks; zero 429s.

Run: ``.venv/bin/python bench/budget.py [--repos N] [--members M] [--webhooks-per-hour W]``
"""

from __future__ import annotations

import argparse
import asyncio
import math
import tempfile
from collections import deque
from pathlib import Path
from typing import Any

import aiohttp
from common import sandbox_process, table

from app.bitbucket.client import Budget, ClientPool, StaticToken
from app.logs import configure
from app.reconcile import reconcile_workspace
from app.sandbox.api import Sandbox
from app.sandbox.scenario import generate, load
from app.settings import Settings
from app.store import Store
from app.tiers import RESTRICTIONS_EVERY, Reading, restriction_order, tier_calls_per_hour, tier_keep

HOUR = 3600.0
LIMIT = 1000


def scenario(repos: int, members: int) -> dict[str, Any]:
    return generate(repos=repos, members=members, rate_limit=1_000_000)


def production(i: int) -> bool:
    return i % 10 == 3  # 10 % production


def calls_per_repo(raw: dict[str, Any]) -> int:
    """Reads one repository's branch tests need (0 for an empty repository)."""
    if not raw.get("mainbranch"):
        return 0
    uses_model = any(r.get("branch_match_kind") == "branching_model" for r in raw.get("branch_restrictions", []))
    return 1 + int(uses_model)


def lower_bound(data: dict[str, Any], members: int) -> tuple[int, dict[str, int]]:
    repos = data["workspaces"][0]["repositories"]
    parts = {
        "repository pages": math.ceil(len(repos) / 100),
        "branch restrictions (repositories with a main branch)": sum(1 for r in repos if r.get("mainbranch")),
        "effective branching model (restrictions that use it)": sum(
            calls_per_repo(r) - 1 for r in repos if r.get("mainbranch")
        ),
        "members + permissions pages": 2 * math.ceil(members / 100),
    }
    return sum(parts.values()), parts


async def measure_pass(data: dict[str, Any], repos: int) -> int:
    """One full pass of the product against the sandbox; returns its API calls."""
    with sandbox_process(data) as url, tempfile.TemporaryDirectory() as tmp:
        settings = Settings.from_env(
            {
                "LP_DATABASE": str(Path(tmp) / "bench.sqlite3"),
                "LP_BITBUCKET_API_URL": url + "/2.0",
                "LP_BITBUCKET_TOKEN": "bench-token",
                "LP_WORKSPACES": "bench",
                "LP_LOG_LEVEL": "warning",
                "LP_BUDGET_PER_HOUR": "100000",
            },
            env_file=None,
        )
        store = await Store.open(settings.database)
        async with aiohttp.ClientSession() as session:
            pool = ClientPool(session, api_url=settings.bitbucket_api_url, budget_per_hour=100_000, concurrency=8)
            client = pool.get("token", StaticToken("bench-token"))
            report = await reconcile_workspace(client, store, settings, "bench")
        await store.close()
    return report.api_calls


class Sim:
    """A simulated clock, the product's budget, and Bitbucket's counter (the sandbox's)."""

    def __init__(self, data: dict[str, Any], members: int, webhooks_per_hour: float) -> None:
        self.now = 0.0
        self.budget = Budget(LIMIT, reserve=0.3, headroom=0.1, pace=True, clock=lambda: self.now)  # as ClientPool
        self.bitbucket = Sandbox(load({**data, "rate_limit_per_hour": LIMIT}))
        self.bitbucket.clock = lambda: self.now
        self.cred = self.bitbucket.state.credentials[0]
        repos = data["workspaces"][0]["repositories"]
        self.cost = {f"r{i}": calls_per_repo(r) for i, r in enumerate(repos) if calls_per_repo(r)}
        self.prod = {u: production(int(u[1:])) for u in self.cost}
        self.read_at: dict[str, float | None] = dict.fromkeys(self.cost)
        self.pages = math.ceil(len(repos) / 100)
        self.member_pages = 2 * math.ceil(members / 100)
        self.keep = tier_keep(len(self.cost), members)
        self.tiers_per_hour = tier_calls_per_hour(len(repos), members, 300)
        self.webhook_every = HOUR / webhooks_per_hour if webhooks_per_hour else 0.0
        self.low_stamps: deque[float] = deque()
        self.sent = self.r429 = self.webhooks = self.deferred = 0
        self.low_max_hour = 0
        self.pass_queue: deque[tuple[str, int]] = deque()  # (repo or "page", calls)
        self.tier_queue: deque[int] = deque()  # pages of the repositories / members tiers

    def send(self, priority: bool) -> None:
        assert self.budget.take(priority=priority)  # the caller checked that a slot is free
        limited, _, _ = self.bitbucket.rate_limited(self.cred)
        self.sent += 1
        self.r429 += limited
        if not priority:
            self.low_stamps.append(self.now)
            while self.low_stamps and self.low_stamps[0] <= self.now - HOUR:
                self.low_stamps.popleft()
            self.low_max_hour = max(self.low_max_hour, len(self.low_stamps))

    def can(self, priority: bool, keep: int = 0, calls: int = 1) -> bool:
        if priority:
            return self.budget.delay(priority=True) == 0
        return self.budget.spare(keep) >= calls

    def order(self) -> list[str]:
        """The restrictions tier's order (the product's function) on the simulated readings."""
        return restriction_order(
            [Reading(u, self.prod[u], None if r is None else f"{r:012.0f}") for u, r in self.read_at.items()]
        )

    def step(self) -> None:
        t = self.now
        if self.webhook_every and t % self.webhook_every < 1:
            self.webhooks += 1
            if self.can(True):
                self.send(True)
            else:
                self.deferred += 1
        if t % 300 == 0:
            self.tier_queue.extend([1] * self.pages)
        if t % 900 == 0:
            self.tier_queue.extend([1] * self.member_pages)
        if t % (6 * HOUR) == 0 and not self.pass_queue:
            self.pass_queue.extend([("page", 1)] * self.pages)
            self.pass_queue.extend((u, self.cost[u]) for u in self.order())  # as app.tiers.pass_order
            self.pass_queue.extend([("page", 1)] * self.member_pages)
        while self.tier_queue and self.can(False):
            self.tier_queue.popleft()
            self.send(False)
        while self.pass_queue and self.can(False, calls=self.pass_queue[0][1]):
            what, calls = self.pass_queue.popleft()
            for _ in range(calls):
                self.send(False)
            if what != "page":
                self.read_at[what] = self.now
        if t % RESTRICTIONS_EVERY == 0:
            for u in self.order()[:200]:
                if not self.can(False, self.keep, self.cost[u]):
                    break
                for _ in range(self.cost[u]):
                    self.send(False)
                self.read_at[u] = self.now
        self.now += 1


def simulate(data: dict[str, Any], members: int, webhooks_per_hour: float, hours: int = 48) -> dict[str, Any]:
    sim = Sim(data, members, webhooks_per_hour)
    worst = {True: 0.0, False: 0.0}
    total = {True: 0.0, False: 0.0}
    samples = 0
    while sim.now < hours * HOUR:
        sim.step()
        if sim.now >= 12 * HOUR and sim.now % 60 == 0:
            samples += 1
            for cls in (True, False):
                ages = [sim.now - (r if r is not None else 0.0) for u, r in sim.read_at.items() if sim.prod[u] is cls]
                worst[cls] = max(worst[cls], max(ages))
                total[cls] += sum(ages) / len(ages)
    spare = sim.budget.cap(priority=False) - sim.tiers_per_hour  # low-priority calls an hour left to restrictions
    bound = sum(sim.cost.values()) / spare * HOUR
    return {
        "sim": sim,
        "bound": bound,
        "spare": spare,
        "worst": worst,
        "mean": {c: total[c] / samples for c in total},
    }


def hours(seconds: float) -> str:
    return f"{seconds / HOUR:.2f} h"


async def main(repos: int, members: int, webhooks_per_hour: float) -> None:
    data = scenario(repos, members)
    bound, parts = lower_bound(data, members)
    measured = await measure_pass(data, repos)
    rows: list[tuple[str, Any]] = [(f"lower bound: {k}", v) for k, v in parts.items()]
    rows += [
        ("lower bound (sum)", bound),
        ("calls per full pass, measured", f"{measured}  (target = {bound})"),
    ]
    table(f"budget 1/2: a full pass of {repos} repositories, {members} members, Pipelines off", rows)

    out = simulate(data, members, webhooks_per_hour)
    sim: Sim = out["sim"]
    left = 1 - sim.low_max_hour / LIMIT
    rows = [
        ("budget, headroom, webhook share", f"{LIMIT}/h, 10 %, 30 %"),
        ("webhook-driven fetches simulated", f"{sim.webhooks} ({webhooks_per_hour:.0f}/h), deferred {sim.deferred}"),
        ("calls sent in 48 h", sim.sent),
        ("429s", f"{sim.r429}  (target 0)"),
        ("low-priority calls, busiest rolling hour", sim.low_max_hour),
        ("share left for webhook-driven fetches (min)", f"{left:.0%}  (target >= 30 %)"),
        ("spare calls/hour for restrictions", out["spare"]),
        ("physical bound (calls for all / spare per hour)", hours(out["bound"])),
    ]
    for cls, name in ((True, "production"), (False, "non-production")):
        worst = out["worst"][cls]
        rows.append(
            (
                f"freshness {name}: max age / mean age",
                f"{hours(worst)} / {hours(out['mean'][cls])}"
                f"  (max = {worst / out['bound']:.2f} x bound, target <= 1.10)",
            )
        )
    table("budget 2/2: 48 simulated hours under 1,000/hour (steady state from hour 12)", rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repos", type=int, default=2000)
    parser.add_argument("--members", type=int, default=50)
    parser.add_argument("--webhooks-per-hour", type=float, default=250)
    args = parser.parse_args()
    configure("warning")
    asyncio.run(main(args.repos, args.members, args.webhooks_per_hour))

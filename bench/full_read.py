"""Benchmark: the client reads a generated workspace of 1,000 repositories and 2,000 members.

Prints calls made against the minimum possible (collection pages + per-repository calls), wall
time, calls per second and peak RSS. Targets (issue 1/5): no call beyond the minimum, >= 200
calls/s on loopback at concurrency 8, < 150 MB RSS. The sandbox runs in its own process.

Run: ``.venv/bin/python bench/full_read.py [--repos N] [--members N] [--concurrency N]``
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time

import aiohttp
from common import peak_rss_mb, sandbox_process, table

from app.bitbucket.client import BitbucketClient, Budget, StaticToken
from app.sandbox.scenario import generate


async def read_all(client: BitbucketClient, workspace: str, concurrency: int) -> int:
    repos = await client.repositories(workspace)
    sem = asyncio.Semaphore(concurrency)

    async def one(repo_slug: str, main: str | None) -> int:
        async with sem:
            restrictions = await client.branch_restrictions(workspace, repo_slug)
            await client.pipelines_config(workspace, repo_slug)
            await client.open_pullrequest_count(workspace, repo_slug)
            calls = 3
            if main:
                await client.latest_pipeline(workspace, repo_slug, main)
                calls += 1
            if any(r.branch_match_kind == "branching_model" for r in restrictions):
                await client.branching_model(workspace, repo_slug)
                calls += 1
            return calls

    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(one(r.slug, r.mainbranch)) for r in repos]
    await client.members(workspace)
    return sum(t.result() for t in tasks)


class Unmetered(Budget):
    """The sandbox's generous limit, never the 10,000 an hour the client caps what it learns at
    (``MAX_LEARNT_LIMIT``): that cap would hold a read of 10,000 repositories (41,196 calls) for
    hours, and pace even 1,000; this measures the client and the sandbox, not Bitbucket's limit."""

    def learn(self, limit: int | None, near_limit: bool) -> None:
        return None


async def main(repos: int, members: int, concurrency: int) -> None:
    scenario = generate(repos=repos, members=members)
    with sandbox_process(scenario) as url:
        async with aiohttp.ClientSession() as session:
            client = BitbucketClient(
                session,
                StaticToken("bench-token"),
                api_url=url + "/2.0",
                budget=Unmetered(10_000_000),
                concurrency=concurrency,
            )
            start = time.perf_counter()
            per_repo = await read_all(client, "bench", concurrency)
            wall = time.perf_counter() - start
    # The minimum, computed from the scenario itself rather than from what the client did.
    expected_per_repo = sum(
        3
        + (1 if r["mainbranch"] else 0)
        + (1 if any(x.get("branch_match_kind") == "branching_model" for x in r["branch_restrictions"]) else 0)
        for r in scenario["workspaces"][0]["repositories"]
    )
    assert per_repo == expected_per_repo, (per_repo, expected_per_repo)
    minimum = math.ceil(repos / 100) + math.ceil(members / 100) + expected_per_repo
    calls = client.calls()
    table(
        f"full read: {repos} repositories, {members} members, concurrency {concurrency}",
        [
            ("API calls made", calls),
            (
                "minimum possible",
                f"{minimum} (pages {math.ceil(repos / 100)} + {math.ceil(members / 100)}, per-repository {per_repo})",
            ),
            ("calls beyond minimum", calls - minimum),
            ("wall time", f"{wall:.2f} s"),
            ("calls per second", f"{calls / wall:.0f}  (target >= 200)"),
            ("peak RSS (client process)", f"{peak_rss_mb():.0f} MB  (target < 150)"),
        ],
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repos", type=int, default=1000)
    parser.add_argument("--members", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    asyncio.run(main(args.repos, args.members, args.concurrency))

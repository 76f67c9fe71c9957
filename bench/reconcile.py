"""Benchmark: full reconcile of a generated workspace (1,000 repositories, 2,000 members), twice.

Prints, for each pass, wall time, API calls, result rows and snapshots written, and peak RSS; then
the time to evaluate all tests from stored snapshots alone. Targets (issue 2/5): first pass < 30 s
on loopback without injected latency, the second pass writes no result row, evaluation alone
< 1 s, RSS < 200 MB. The sandbox runs in its own process; the database is a real SQLite file.

Run: ``.venv/bin/python bench/reconcile.py [--repos N] [--members N]``
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import aiohttp
from common import peak_rss_mb, sandbox_process, table

from app.bitbucket.client import BitbucketClient, Budget, StaticToken
from app.evaluate import evaluate_workspace
from app.logs import configure
from app.models import utcnow
from app.reconcile import reconcile_workspace
from app.sandbox.scenario import generate
from app.settings import Settings
from app.store import Store


async def main(repos: int, members: int) -> None:
    scenario = generate(repos=repos, members=members)
    with sandbox_process(scenario) as url, tempfile.TemporaryDirectory() as tmp:
        settings = Settings.from_env(
            {
                "LP_DATABASE": str(Path(tmp) / "bench.sqlite3"),
                "LP_BITBUCKET_API_URL": url + "/2.0",
                "LP_BITBUCKET_TOKEN": "bench-token",
                "LP_WORKSPACES": "bench",
                "LP_LOG_LEVEL": "warning",
                "LP_CHECKS_ENABLED": "pipelines-enabled",
            },
            env_file=None,
        )
        store = await Store.open(settings.database)
        async with aiohttp.ClientSession() as session:
            client = BitbucketClient(
                session,
                StaticToken("bench-token"),
                api_url=settings.bitbucket_api_url,
                budget=Budget(1_000_000),
                concurrency=settings.concurrency,
            )
            rows = []
            for label in ("first pass", "second pass (nothing changed)"):
                report = await reconcile_workspace(client, store, settings, "bench")
                rows += [
                    (
                        f"{label}: wall time",
                        f"{report.seconds:.2f} s" + ("  (target < 30 s)" if "first" in label else ""),
                    ),
                    (f"{label}: API calls", report.api_calls),
                    (
                        f"{label}: result rows written",
                        report.rows_written if "first" in label else f"{report.rows_written}  (target 0)",
                    ),
                    (f"{label}: snapshots changed", report.snapshots_changed),
                    (f"{label}: peak RSS so far", f"{peak_rss_mb():.0f} MB"),
                ]
        timings = []
        for _ in range(3):
            start = time.perf_counter()
            results, _ = await evaluate_workspace(store, settings, "bench", utcnow())
            timings.append(time.perf_counter() - start)
        await store.close()
    rows += [
        ("results per pass", len(results)),
        ("evaluate all tests from snapshots (best of 3)", f"{min(timings):.3f} s  (target < 1 s)"),
        ("peak RSS", f"{peak_rss_mb():.0f} MB  (target < 200 MB)"),
    ]
    table(f"reconcile: {repos} repositories, {members} members (8 tests, pipelines on)", rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repos", type=int, default=1000)
    parser.add_argument("--members", type=int, default=2000)
    args = parser.parse_args()
    configure("warning")
    asyncio.run(main(args.repos, args.members))

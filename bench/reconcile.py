"""Benchmark: full reconcile of generated workspaces at two sizes (1,000 and 10,000 repositories
by default, two members per repository), two passes each, in ONE run.

For each size the product runs in its own process (this script re-run with ``--child``) and the
sandbox in another, so the figures are the product's own: CPU seconds (user + system, from
``getrusage``) and peak RSS of each pass on its own (VmHWM, reset before each), wall time, API
calls, result rows and snapshots written, and the time to evaluate all tests from stored
snapshots alone (with its own peak RSS). Between them, what re-evaluates every subject without
a full pass, each with its CPU seconds, peak RSS and rows written: the members tier (member list
read, member tests recorded a chunk of members at a time) and "evaluate all" (a classification
rule added: every test of every subject, a chunk at a time, as a rule or a personnel import does
in ``serve``). Then the ratios of the largest size to the smallest.
Targets (issue 15): CPU ratio 10k/1k <= 12, a pass's peak RSS < 300 MB at 10,000,
the second pass writes 0 rows. The database is a real SQLite file.

Run: ``.venv/bin/python bench/reconcile.py [--sizes 1000,10000] [--members-per-repo 2]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import sandbox_process, table

from app.sandbox.scenario import generate


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb() -> float:
    """This process's peak RSS since the last :func:`reset_peak` (Linux: VmHWM), else since it began."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak() -> None:
    """Start a new peak RSS measurement (Linux: writing 5 to clear_refs resets VmHWM), so each pass
    reports its own peak, not the largest of everything before it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


async def child(url: str, workspace: str) -> None:
    """The product's side: two passes and an evaluation, each measured in this process only."""
    import aiohttp

    from app.bitbucket.client import BitbucketClient, Budget, StaticToken
    from app.evaluate import evaluate_plans, evaluate_workspace
    from app.logs import configure
    from app.models import iso, utcnow
    from app.planner import Plan
    from app.reconcile import reconcile_workspace
    from app.settings import Settings
    from app.store import Store

    class Unmetered(Budget):
        """The sandbox's generous limit, never the 10,000 an hour the client caps what it learns at:
        a first pass at 10,000 repositories makes ~31,000 calls, and this measures the product's work."""

        def learn(self, limit: int | None, near_limit: bool) -> None:
            return None

    configure("warning")
    out: dict[str, Any] = {"passes": []}
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.from_env(
            {
                "LP_DATABASE": str(Path(tmp) / "bench.sqlite3"),
                "LP_BITBUCKET_API_URL": url + "/2.0",
                "LP_BITBUCKET_TOKEN": "bench-token",
                "LP_WORKSPACES": workspace,
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
                budget=Unmetered(10_000_000),
                concurrency=settings.concurrency,
            )
            for _ in range(2):
                reset_peak()
                cpu = cpu_seconds()
                report = await reconcile_workspace(client, store, settings, workspace)
                out["passes"].append(
                    {
                        "wall": report.seconds,
                        "cpu": cpu_seconds() - cpu,
                        "calls": report.api_calls,
                        "rows": report.rows_written,
                        "snapshots": report.snapshots_changed,
                        "rss": peak_rss_mb(),
                    }
                )
            reset_peak()
            cpu = cpu_seconds()
            report = await reconcile_workspace(client, store, settings, workspace, tier="members")
            out["members_tier"] = {"cpu": cpu_seconds() - cpu, "rows": report.rows_written, "rss": peak_rss_mb()}
        # Evaluate all: a classification rule (project P1's repositories are production) re-runs
        # every test of every subject, as the worker does for the rule's event.
        await store.records.add_rule("production", iso(utcnow()), project_key="P1")
        reset_peak()
        cpu = cpu_seconds()
        deltas = await evaluate_plans(store, settings, workspace, [Plan(workspace_checks=True)], "bench")
        out["evaluate_all"] = {
            "cpu": cpu_seconds() - cpu,
            "rows": sum(len(d.writes) + len(d.stale) + len(d.retired) for d in deltas),
            "rss": peak_rss_mb(),
        }
        del deltas
        timings = []
        reset_peak()
        for _ in range(3):
            start = time.perf_counter()
            results, _ = await evaluate_workspace(store, settings, workspace, utcnow())
            timings.append(time.perf_counter() - start)
        out["results"] = len(results)
        del results
        out["evaluate"] = min(timings)
        out["rss"] = peak_rss_mb()
        await store.close()
    print(json.dumps(out))


def measure(repos: int, members: int) -> dict[str, Any]:
    scenario = generate(repos=repos, members=members)
    with sandbox_process(scenario) as url:
        proc = subprocess.run(  # noqa: S603 - our own interpreter and script
            [sys.executable, __file__, "--child", url],
            capture_output=True,
            text=True,
            check=False,
        )
    if proc.returncode != 0:
        raise RuntimeError(f"product process failed:\n{proc.stderr[-3000:]}")
    figures: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return figures


def _pass_rss(m: dict[str, Any]) -> float:
    return max(float(p["rss"]) for p in m["passes"])


def main(sizes: list[int], per_repo: int) -> None:
    measured: dict[int, dict[str, Any]] = {}
    for repos in sizes:
        members = repos * per_repo
        m = measured[repos] = measure(repos, members)
        rows: list[tuple[str, Any]] = []
        for label, p in zip(("first pass", "second pass (nothing changed)"), m["passes"], strict=True):
            rows += [
                (f"{label}: wall time", f"{p['wall']:.2f} s"),
                (f"{label}: product CPU", f"{p['cpu']:.2f} s"),
                (f"{label}: API calls", p["calls"]),
                (f"{label}: result rows written", p["rows"] if "first" in label else f"{p['rows']}  (target 0)"),
                (f"{label}: snapshots changed", p["snapshots"]),
                (
                    f"{label}: product peak RSS",
                    f"{p['rss']:.0f} MB" + ("  (target < 300 MB)" if repos >= 10_000 else ""),
                ),
            ]
        tier, everything = m["members_tier"], m["evaluate_all"]
        rows += [
            ("members tier: product CPU", f"{tier['cpu']:.2f} s"),
            ("members tier: result rows written", f"{tier['rows']}  (nothing changed)"),
            ("members tier: product peak RSS", f"{tier['rss']:.0f} MB"),
            ("evaluate all (a classification rule): product CPU", f"{everything['cpu']:.2f} s"),
            ("evaluate all: result rows written", everything["rows"]),
            ("evaluate all: product peak RSS", f"{everything['rss']:.0f} MB"),
            ("results per pass", m["results"]),
            ("evaluate all tests from snapshots (best of 3)", f"{m['evaluate']:.3f} s"),
            ("evaluate all tests at once: peak RSS", f"{m['rss']:.0f} MB  (not a pass: the whole workspace in memory)"),
        ]
        table(f"reconcile: {repos} repositories, {members} members (8 tests, pipelines on)", rows)
    if len(sizes) > 1:
        small, large = measured[min(sizes)], measured[max(sizes)]
        times = max(sizes) / min(sizes)
        first_s, first_l = small["passes"][0], large["passes"][0]
        second_s, second_l = small["passes"][1], large["passes"][1]
        table(
            f"ratio {max(sizes)}/{min(sizes)} ({times:.0f}x the repositories)",
            [
                ("first pass CPU", f"{first_l['cpu'] / first_s['cpu']:.1f}x  (target <= {1.2 * times:.0f})"),
                ("second pass CPU", f"{second_l['cpu'] / second_s['cpu']:.1f}x  (target <= {1.2 * times:.0f})"),
                ("first pass wall time", f"{first_l['wall'] / first_s['wall']:.1f}x"),
                ("evaluate all", f"{large['evaluate'] / small['evaluate']:.1f}x"),
                (
                    "pass peak RSS",
                    f"{_pass_rss(large) / _pass_rss(small):.1f}x ({_pass_rss(large):.0f} MB; target < 300 MB)",
                ),
                ("second pass rows written", f"{second_s['rows']} / {second_l['rows']}  (target 0)"),
                (
                    "members tier / evaluate all peak RSS",
                    f"{large['members_tier']['rss']:.0f} MB / {large['evaluate_all']['rss']:.0f} MB"
                    f" (at {min(sizes)}: {small['members_tier']['rss']:.0f} MB"
                    f" / {small['evaluate_all']['rss']:.0f} MB)",
                ),
                (
                    "members tier / evaluate all CPU",
                    f"{large['members_tier']['cpu'] / small['members_tier']['cpu']:.1f}x"
                    f" / {large['evaluate_all']['cpu'] / small['evaluate_all']['cpu']:.1f}x",
                ),
            ],
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1000,10000", help="repository counts, comma-separated")
    parser.add_argument("--members-per-repo", type=int, default=2)
    parser.add_argument("--child", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--workspace", default="bench", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        asyncio.run(child(args.child, args.workspace))
    else:
        main([int(s) for s in args.sizes.split(",")], args.members_per_repo)

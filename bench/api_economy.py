"""Benchmark: API economy. Bitbucket calls per webhook event kind, against a naive full re-read of
a 200-repository workspace, and the ratio; then 100 pushes to one repository within 2 s.

The events are real sandbox deliveries (captured from the sandbox's delivery log) fed to the
product's worker exactly as the receiver stores them; calls are counted by the client. Targets
(issue 3/5): >= 100x on the common events; 100 pushes within 2 s cost <= 2 fetches.

Run: ``.venv/bin/python bench/api_economy.py [--repos N]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
from common import sandbox_process, table

from app.bitbucket import sansio
from app.logs import configure
from app.sandbox.scenario import generate
from app.services import build_services
from app.settings import Settings
from app.web.webhooks import event_from_delivery

ACTIONS: list[tuple[str, str, dict[str, Any]]] = [
    ("repo:push, another branch", "repos/bench/repo-0001/push", {"branch": "feature/x"}),
    ("repo:push, the main branch", "repos/bench/repo-0002/push", {"branch": "main"}),
    ("repo:push, branch created", "repos/bench/repo-0003/create-branch", {"name": "feature/new"}),
    ("pullrequest:created", "repos/bench/repo-0004/open-pr", {"source": "feature/x"}),
    ("repo:updated", "repos/bench/repo-0005/update", {"is_private": False}),
    ("repo:commit_status_created + _updated", "repos/bench/repo-0006/run-pipeline", {"branch": "main"}),
    ("repo:created", "workspaces/bench/create-repo", {"slug": "brand-new"}),
    ("repo:deleted", "repos/bench/repo-0007/delete-repo", {}),
]


def post(url: str, body: dict[str, Any]) -> Any:
    req = urllib.request.Request(  # noqa: S310 - the loopback sandbox
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": "Bearer bench-token"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310
        return json.loads(resp.read() or b"null")


def deliveries(base: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(base + "/_sandbox/deliveries?bodies=1", timeout=30) as resp:  # noqa: S310
        found: list[dict[str, Any]] = json.loads(resp.read())["deliveries"]
    req = urllib.request.Request(base + "/_sandbox/deliveries", method="DELETE")  # noqa: S310
    urllib.request.urlopen(req, timeout=30).read()  # noqa: S310
    return found


async def main(repos: int) -> None:
    scenario = generate(repos=repos, members=100)
    # repo-0006 gets a pipeline history; pipelines on so pushes to main matter
    with sandbox_process(scenario) as base, tempfile.TemporaryDirectory() as tmp:
        api = base + "/2.0"
        settings = Settings.from_env(
            {
                "LP_DATABASE": str(Path(tmp) / "e.sqlite3"),
                "LP_BITBUCKET_API_URL": api,
                "LP_BITBUCKET_TOKEN": "bench-token",
                "LP_WORKSPACES": "bench",
                "LP_CHECKS_ENABLED": "pipelines-enabled",
                "LP_BUDGET_PER_HOUR": "100000",
            },
            env_file=None,
        )
        post(
            api + "/workspaces/bench/hooks",
            {
                "url": "http://127.0.0.1:9/unreachable",
                "secret": "s",
                "events": [
                    "repo:push",
                    "repo:updated",
                    "repo:created",
                    "repo:deleted",
                    "pullrequest:created",
                    "repo:commit_status_updated",
                ],
            },
        )
        async with aiohttp.ClientSession() as session:
            services = await build_services(settings, session)
            service = services.service
            await service.ensure_token_connection()
            client = await service.client("token")
            before = client.calls()
            await service.internal_event("lp:reconcile", {"workspace": "bench", "tier": "full"})
            await services.worker.drain()
            naive = client.calls() - before
            rows = []
            for label, path, body in ACTIONS:
                post(f"{base}/_sandbox/{path}", body)
                found = deliveries(base)
                before = client.calls()
                for d in found:
                    raw = d["body"].encode()
                    event = event_from_delivery("token", sansio.parse_delivery(d["headers"], raw), raw)
                    await service.store.events.append(event)
                services.worker.coalesce_window = 0.0
                await services.worker.drain()
                used = client.calls() - before
                ratio = "no API call" if used == 0 else f"{naive / used:.0f}x"
                rows.append((label, f"{used} calls  (naive full re-read {naive}; {ratio})"))
            # 100 pushes to one repository arriving over 1 s, with the worker running (window 2 s)
            for _ in range(100):
                post(f"{base}/_sandbox/repos/bench/repo-0008/push", {"branch": "main"})
            pushes = deliveries(base)
            services.worker.coalesce_window = 2.0
            worker = asyncio.create_task(services.worker.run())
            before = client.calls()
            started = time.monotonic()
            for d in pushes:
                raw = d["body"].encode()
                await service.store.events.append(
                    event_from_delivery("token", sansio.parse_delivery(d["headers"], raw), raw)
                )
                await asyncio.sleep(0.01)
            arrival = time.monotonic() - started
            while True:
                counts = await service.store.events.counts()
                if counts.get("queued", 0) + counts.get("running", 0) == 0:
                    break
                await asyncio.sleep(0.05)
            done_after = time.monotonic() - started
            worker.cancel()
            burst_calls = client.calls() - before
            await service.store.close()
        rows.append(
            (
                f"{len(pushes)} pushes to one repository's main branch",
                f"{burst_calls} fetches  (target <= 2; arrived over {arrival:.2f} s, "
                f"all done after {done_after:.2f} s)",
            )
        )
    table(f"API economy: {repos}-repository workspace, calls per event vs a full re-read", rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repos", type=int, default=200)
    args = parser.parse_args()
    configure("warning")
    asyncio.run(main(args.repos))

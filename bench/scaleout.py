"""Benchmark: events processed per second by 1, 2 and 3 ``serve`` processes on one PostgreSQL, and
by one process on SQLite, against the sandbox (its own process) with latency injected on every
API call, so the work is I/O-bound as it is against real Bitbucket.

Each run: a fresh database; ``reconcile`` reads the generated workspace (no latency); the
processes start and idle; the sandbox's latency is switched on; N ``repo:updated`` events (one
per repository, each one API call and a re-evaluation) are appended at once; the clock runs
until every one is ``done``. The PostgreSQL cluster is a throwaway one (``initdb`` in a temporary
folder, as the tests use: tests/pgcluster.py).

Run: ``.venv/bin/python bench/scaleout.py [--repos 300] [--latency-ms 50] [--workers 1,2,3]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from common import free_port, sandbox_process, table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.sandbox.scenario import generate  # noqa: E402
from app.store import Store  # noqa: E402
from app.store.events import NewEvent  # noqa: E402
from tests.pgcluster import running_cluster  # noqa: E402

SECRET = "bench-secret-key-0123456789"


def control(url: str, method: str, body: dict[str, Any] | None = None) -> None:
    req = urllib.request.Request(  # noqa: S310 - the loopback sandbox
        url + "/_sandbox/faults",
        data=json.dumps(body or {}).encode(),
        method=method,
        headers={"Content-Type": "application/json"},
    )
    urllib.request.urlopen(req, timeout=30).read()  # noqa: S310


def env_for(sandbox: str, database: str) -> dict[str, str]:
    return dict(
        os.environ,
        LP_DATABASE=database,
        LP_BITBUCKET_API_URL=sandbox + "/2.0",
        LP_BITBUCKET_URL=sandbox,
        LP_BITBUCKET_TOKEN="bench-token",
        LP_WORKSPACES="bench",
        LP_SECRET_KEY=SECRET,
        LP_ADMIN_TOKEN="bench-admin-token-0123456789",
        LP_BUDGET_PER_HOUR="100000",
        LP_RECONCILE_INTERVAL="1d",
        LP_REPOS_TIER_INTERVAL="1d",
        LP_LOG_LEVEL="warning",
    )


def serve(env: dict[str, str]) -> subprocess.Popen[bytes]:
    port = free_port()
    proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "app", "serve", "--port", str(port)],
        env=dict(env, LP_PUBLIC_URL=f"http://127.0.0.1:{port}"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).read()
            return proc
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("serve did not start") from None
            time.sleep(0.1)


def measure(database: str, sandbox: str, processes: int, latency_ms: float) -> tuple[int, float]:
    env = env_for(sandbox, database)
    subprocess.run([sys.executable, "-m", "app", "reconcile"], env=env, check=True, capture_output=True)
    procs = [serve(env) for _ in range(processes)]
    try:
        time.sleep(2)  # start-up work (hooks, scheduled tiers) out of the way
        return asyncio.run(drive(database, sandbox, latency_ms))
    finally:
        control(sandbox, "DELETE")
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(30)


async def drive(database: str, sandbox: str, latency_ms: float) -> tuple[int, float]:
    """Append one ``repo:updated`` per repository at once; the time until all are done."""
    store = await Store.open(database)
    try:
        snap = await store.snapshots.get("repos:bench")
        uuids = list(snap.content) if snap and isinstance(snap.content, list) else []
        await asyncio.to_thread(control, sandbox, "POST", {"latency_ms": latency_ms})
        events = [
            NewEvent(
                "token", "webhook", "repo:updated", {"workspace": "bench", "repository_uuid": u}, workspace="bench"
            )
            for u in uuids
        ]
        start = time.monotonic()
        ids = {i for i in await store.events.append_many(events) if i is not None}
        while True:
            rows = await store.db.fetchall(
                "SELECT count(*) FROM events WHERE source = 'webhook' AND state NOT IN ('done', 'dead')"
            )
            if int(rows[0][0]) == 0:
                break
            await asyncio.sleep(0.05)
        return len(ids), time.monotonic() - start
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repos", type=int, default=300)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--workers", default="1,2,3")
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    rows: list[tuple[str, Any]] = []
    with sandbox_process(generate(workspace="bench", repos=args.repos, members=20)) as sandbox:
        with running_cluster() as cluster:
            for n in counts:
                events, secs = measure(cluster.new_database(), sandbox, n, args.latency_ms)
                rows.append(
                    (f"PostgreSQL, {n} process(es)", f"{events / secs:7.1f} events/s ({events} in {secs:.1f} s)")
                )
        with tempfile.TemporaryDirectory() as tmp:
            events, secs = measure(str(Path(tmp) / "lp.sqlite3"), sandbox, 1, args.latency_ms)
            rows.append(("SQLite, 1 process", f"{events / secs:7.1f} events/s ({events} in {secs:.1f} s)"))
    table(f"scale-out: {args.repos} repo:updated events, {args.latency_ms:.0f} ms per API call", rows)


if __name__ == "__main__":
    main()

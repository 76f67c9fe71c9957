"""Benchmark: event-to-result latency. A sandbox action (a repository's main branch moved) →
Bitbucket-style signed webhook → the product (``serve`` in its own process) → re-fetch with 50 ms
of injected sandbox latency → the result changed in the database. Prints p50/p95/max over N
actions. Target (issue 3/5): p95 < 1 s.

Run: ``.venv/bin/python bench/latency.py [--samples N] [--latency-ms MS]``
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from common import free_port, sandbox_process, table

from app.sandbox.scenario import generate


def post(url: str, body: dict[str, Any]) -> Any:
    req = urllib.request.Request(  # noqa: S310 - the loopback sandbox
        url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310
        return json.loads(resp.read() or b"null")


def status(db: Path, uuid: str) -> tuple[str, str] | None:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        row = conn.execute(
            "SELECT status, last_changed FROM results WHERE check_id = 'branch-protection-enforced' "
            "AND subject_key = ?",
            (uuid,),
        ).fetchone()
    finally:
        conn.close()
    return (row[0], row[1]) if row else None


def main(samples: int, latency_ms: int) -> None:
    scenario = generate(repos=30, members=20)
    repos = scenario["workspaces"][0]["repositories"]
    for r in repos:
        r["branches"] = ["main", "dev"]
    protected = [r["slug"] for i, r in enumerate(repos) if i % 3 != 0 and r["mainbranch"]]
    with sandbox_process(scenario) as base, tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "lat.sqlite3"
        port = free_port()
        env = dict(
            os.environ,
            LP_DATABASE=str(db),
            LP_BITBUCKET_API_URL=base + "/2.0",
            LP_BITBUCKET_TOKEN="bench-token",
            LP_WORKSPACES="bench",
            LP_SECRET_KEY="latency-bench-key-0123",
            LP_ADMIN_TOKEN="latency-admin-token",
            LP_PUBLIC_URL=f"http://127.0.0.1:{port}",
            LP_LOG_LEVEL="warning",
        )
        proc = subprocess.Popen([sys.executable, "-m", "app", "serve", "--port", str(port)], env=env)  # noqa: S603
        try:
            uuids: dict[str, str] = {}
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # the first full pass
                try:
                    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
                    rows = conn.execute(
                        "SELECT subject, subject_key FROM results WHERE check_id = 'branch-protection-enforced'"
                    ).fetchall()
                    conn.close()
                    uuids = {s.split("/")[1]: k for s, k in rows}
                    if len(uuids) == len(repos):
                        break
                except sqlite3.Error:
                    pass
                time.sleep(0.2)
            post(base + "/_sandbox/faults", {"latency_ms": latency_ms})
            lat: list[float] = []
            main_of = dict.fromkeys(protected, "main")
            for i in range(samples):
                slug = protected[i % len(protected)]
                uuid = uuids[slug]
                before = status(db, uuid)
                target = "dev" if main_of[slug] == "main" else "main"
                t0 = time.perf_counter()
                post(f"{base}/_sandbox/repos/bench/{slug}/update", {"mainbranch": target})
                main_of[slug] = target
                while True:
                    now = status(db, uuid)
                    if now != before:
                        lat.append(time.perf_counter() - t0)
                        break
                    if time.perf_counter() - t0 > 10:
                        raise RuntimeError(f"no result change for {slug}")
                    time.sleep(0.005)
                time.sleep(0.1)
        finally:
            proc.terminate()
            proc.wait(10)
    lat.sort()
    table(
        f"event to result: {samples} main-branch moves, {latency_ms} ms sandbox latency per API call",
        [
            ("p50", f"{statistics.median(lat) * 1000:.0f} ms"),
            ("p95", f"{lat[int(len(lat) * 0.95) - 1] * 1000:.0f} ms  (target < 1000 ms)"),
            ("max", f"{lat[-1] * 1000:.0f} ms"),
        ],
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=60)
    parser.add_argument("--latency-ms", type=int, default=50)
    args = parser.parse_args()
    main(args.samples, args.latency_ms)

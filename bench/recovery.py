"""Benchmark: recovery time after a fault burst. ``serve`` (its own process, token mode, webhooks
registered) watches a sandbox (its own process) of 30 repositories. For ``--burst`` seconds every
Bitbucket read answers 503 while users keep acting (``--rate`` actions a second, each a signed
webhook the product must process); then the faults stop and the actions with them. Measured: the
time from the end of the burst until the event queue is empty (``lp_queue_depth`` 0 and nothing
``running`` on ``/metrics``), and every acknowledged delivery ``done``. Target (issue 2/7 of
wave 2): < 30 s.

Run: ``.venv/bin/python bench/recovery.py [--burst S] [--rate N]``
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from common import free_port, sandbox_process, table

from app.sandbox.scenario import generate


def post(url: str, body: dict[str, Any] | None = None, method: str = "POST") -> Any:
    req = urllib.request.Request(  # noqa: S310 - the loopback sandbox
        url, data=json.dumps(body or {}).encode(), method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310
        return json.loads(resp.read() or b"null")


def metrics(base: str) -> dict[str, float]:
    """The product's gauges that say whether work is left: queue depth, events by state."""
    with urllib.request.urlopen(base + "/metrics", timeout=10) as resp:  # noqa: S310 - loopback
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r'^(lp_queue_depth|lp_events\{state="(\w+)"\})\s+([0-9.e+-]+)$', line)
        if m:
            out[m.group(2) or "queue_depth"] = float(m.group(3))
    return out


def busy(base: str) -> float:
    m = metrics(base)
    return m.get("queue_depth", 0) + m.get("running", 0) + m.get("queued", 0) + m.get("failed", 0)


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - the loopback sandbox
        return json.loads(resp.read())


def events(db: Path) -> dict[str, str]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        rows = conn.execute("SELECT request_uuid, state FROM events WHERE source = 'webhook'").fetchall()
    finally:
        conn.close()
    return {str(u): str(s) for u, s in rows}


def pending(db: Path) -> int:
    """Events not finished: queued, running, or failed awaiting their retry."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        row = conn.execute("SELECT count(*) FROM events WHERE state IN ('queued', 'running', 'failed')").fetchone()
    finally:
        conn.close()
    return int(row[0])


def wait_idle(base: str, db: Path, within: float) -> float:
    """Until both the database and ``/metrics`` say nothing is left to do."""
    t0 = time.monotonic()
    while pending(db) > 0 or busy(base) > 0:
        if time.monotonic() - t0 > within:
            raise RuntimeError(f"queue not empty after {within} s: {metrics(base)}")
        time.sleep(0.1)
    return time.monotonic() - t0


def main(burst: float, rate: float, seed: int) -> None:
    rng = random.Random(seed)
    scenario = generate(repos=30, members=20)
    repos = scenario["workspaces"][0]["repositories"]
    for r in repos:
        r["branches"] = ["main", "dev"]
    slugs = [r["slug"] for r in repos if r["mainbranch"]]
    with sandbox_process(scenario) as sb, tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "recovery.sqlite3"
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("LP_")} | dict(
            LP_DATABASE=str(db),
            LP_BITBUCKET_API_URL=sb + "/2.0",
            LP_BITBUCKET_TOKEN="bench-token",
            LP_WORKSPACES="bench",
            LP_SECRET_KEY="recovery-bench-key-0123",
            LP_ADMIN_TOKEN="recovery-admin-token",
            LP_PUBLIC_URL=base,
            LP_BUDGET_PER_HOUR="100000",  # the budget is not what this measures
            LP_LOG_LEVEL="error",
        )
        proc = subprocess.Popen([sys.executable, "-m", "app", "serve", "--port", str(port)], env=env)  # noqa: S603
        try:
            deadline = time.monotonic() + 60
            while True:  # up, hook registered, first pass done
                try:
                    hooks = get(sb + "/_sandbox/hooks")["hooks"]
                    if hooks and metrics(base).get("done", 0) >= 1 and busy(base) == 0:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("serve did not start")
                time.sleep(0.2)
            post(sb + "/_sandbox/deliveries", method="DELETE")

            post(sb + "/_sandbox/faults", {"error_rate": 1.0, "error_status": 503})
            t0 = time.monotonic()
            actions = 0
            main_of = dict.fromkeys(slugs, "main")
            while time.monotonic() - t0 < burst:
                slug = rng.choice(slugs)
                if rng.random() < 0.5:
                    main_of[slug] = "dev" if main_of[slug] == "main" else "main"
                    post(f"{sb}/_sandbox/repos/bench/{slug}/update", {"mainbranch": main_of[slug]})
                else:
                    post(f"{sb}/_sandbox/repos/bench/{slug}/push", {"branch": "main"})
                actions += 1
                time.sleep(max(0.0, t0 + actions / rate - time.monotonic()))
            depth_at_end = metrics(base)
            post(sb + "/_sandbox/faults", method="DELETE")
            burst_end = time.monotonic()
            recovery = wait_idle(base, db, 600)
            log = get(sb + "/_sandbox/deliveries?bodies=1")["deliveries"]
            acked = [d["request_uuid"] for d in log if d["attempts"] and d["attempts"][-1] == "202"]
            states = events(db)
            # The same hook and body is one event (README): a repeated body counts as its first.
            first: dict[str, str] = {}
            for d in log:
                if d["request_uuid"] in states:
                    first.setdefault(d["body"], d["request_uuid"])
            repeated = 0
            for d in log:
                if d["request_uuid"] not in states and d["body"] in first:
                    states[d["request_uuid"]] = states[first[d["body"]]]
                    repeated += 1
            done = sum(1 for u in acked if states.get(u) in ("done", "ignored"))
            dead = sum(1 for s in states.values() if s == "dead")
            requests = get(sb + "/_sandbox/requests")["requests"]
            failed_reads = sum(1 for r in requests if r["status"] == 503)
        finally:
            proc.terminate()
            proc.wait(10)
    table(
        f"recovery after a {burst:.0f} s burst of 503 on every read, {rate:g} actions/s during it",
        [
            ("actions (webhooks) in the burst", actions),
            ("deliveries acknowledged", len(acked)),
            ("reads answered 503", failed_reads),
            (
                "queue at the end of the burst",
                f"depth {depth_at_end.get('queue_depth', 0):.0f}, failed {depth_at_end.get('failed', 0):.0f}, "
                f"running {depth_at_end.get('running', 0):.0f}",
            ),
            ("recovery: burst end → empty queue", f"{recovery:.1f} s  (target < 30 s)"),
            ("acknowledged deliveries done", f"{done}/{len(acked)} ({repeated} repeated bodies); dead events {dead}"),
            ("wall time from burst end", f"{time.monotonic() - burst_end:.1f} s"),
        ],
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--burst", type=float, default=30.0, help="seconds of faults")
    parser.add_argument("--rate", type=float, default=5.0, help="user actions a second during the burst")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    main(args.burst, args.rate, args.seed)

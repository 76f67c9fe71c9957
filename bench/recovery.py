"""Benchmark: recovery after a fault burst. The product (``serve`` in its own process) watches a
sandbox workspace; once its first full pass is done, every sandbox REST call answers 503 for
``--burst`` seconds while sandbox actions keep producing signed webhooks (each acknowledged with
a 202 and stored). Then the faults stop, and the clock runs until the event queue is empty (no
event queued, running or failed). Prints that recovery time (target < 30 s, issue 10 item 8),
how many events the burst left ``dead``, and whether the service is still alive.

Run: ``.venv/bin/python bench/recovery.py [--burst S] [--actions N]``
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from common import free_port, sandbox_process, table

from app.sandbox.scenario import generate


def call(url: str, body: dict[str, Any] | None = None, method: str = "POST") -> Any:
    req = urllib.request.Request(  # noqa: S310 - the loopback sandbox
        url, data=json.dumps(body or {}).encode(), method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310
        return json.loads(resp.read() or b"null")


def query(db: Path, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return []
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.Error:
        return []
    finally:
        conn.close()


def pending(db: Path) -> int:
    rows = query(db, "SELECT count(*) FROM events WHERE state IN ('queued', 'running', 'failed')")
    return int(rows[0][0]) if rows else -1


def states(db: Path) -> dict[str, int]:
    return {s: n for s, n in query(db, "SELECT state, count(*) FROM events GROUP BY state")}


def protection(db: Path) -> dict[str, str]:
    rows = query(db, "SELECT subject, status FROM results WHERE check_id = 'branch-protection-enforced'")
    return {subject: status for subject, status in rows}


T0 = time.monotonic()


def say(text: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f} s] {text}", file=sys.stderr, flush=True)


def main(burst: float, actions: int) -> None:
    scenario = generate(repos=30, members=20)
    repos = scenario["workspaces"][0]["repositories"]
    for r in repos:
        r["branches"] = ["main", "dev"]
    movable = [r["slug"] for r in repos if r["mainbranch"]]
    with sandbox_process(scenario) as base, tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "recovery.sqlite3"
        port = free_port()
        env = dict(
            os.environ,
            LP_DATABASE=str(db),
            LP_BITBUCKET_API_URL=base + "/2.0",
            LP_BITBUCKET_TOKEN="bench-token",
            LP_WORKSPACES="bench",
            LP_SECRET_KEY="recovery-bench-key-0123",
            LP_ADMIN_TOKEN="recovery-admin-token",
            LP_PUBLIC_URL=f"http://127.0.0.1:{port}",
            LP_LOG_LEVEL="warning",
        )
        proc = subprocess.Popen([sys.executable, "-m", "app", "serve", "--port", str(port)], env=env)  # noqa: S603
        try:
            deadline = time.monotonic() + 90
            while len(protection(db)) < len(repos) or pending(db) != 0:  # the first full pass, settled
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the first full pass did not finish")
                time.sleep(0.2)
            before = states(db)
            say(f"first pass done: {before}")
            call(base + "/_sandbox/faults", {"error_rate": 1.0, "error_status": 503})
            burst_start = time.monotonic()
            main_of = dict.fromkeys(movable, "main")
            done_actions = slow_actions = 0
            while time.monotonic() - burst_start < burst:
                if done_actions < actions:
                    slug = movable[done_actions % len(movable)]
                    main_of[slug] = "dev" if main_of[slug] == "main" else "main"
                    try:  # the sandbox answers once it has delivered (retrying a 5xx twice)
                        call(f"{base}/_sandbox/repos/bench/{slug}/update", {"mainbranch": main_of[slug]})
                    except OSError as exc:
                        slow_actions += 1
                        say(f"action {done_actions + 1} did not answer: {exc}")
                    done_actions += 1
                    say(f"action {done_actions}: {states(db)}")
                time.sleep(burst / max(actions, 1))
            during = states(db)
            call(base + "/_sandbox/faults", method="DELETE")
            burst_end = time.monotonic()
            say(f"burst ended: {during}")
            recovered: float | None = None
            while time.monotonic() - burst_end < 180:
                if proc.poll() is not None:
                    break
                if pending(db) == 0:
                    recovered = time.monotonic() - burst_end
                    break
                time.sleep(0.1)
            say(f"recovered after {recovered} s")
            after = states(db)
            alive = proc.poll() is None
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as resp:
                    ready = f"{resp.status}"
            except urllib.error.HTTPError as exc:
                ready = f"{exc.code}"
            except OSError as exc:
                ready = type(exc).__name__
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                say("serve did not stop within 15 s of SIGTERM: killed")
                proc.kill()
                proc.wait()
    new = {s: after.get(s, 0) - before.get(s, 0) for s in ("done", "dead", "ignored")}
    table(
        f"recovery: {burst:g} s of 503 on every sandbox REST call, {done_actions} main-branch moves during it",
        [
            ("events at the end of the burst", json.dumps(during)),
            ("actions whose delivery did not finish within 30 s", slow_actions),
            (
                "queue empty after the burst ended",
                f"{recovered:.1f} s  (target < 30 s)" if recovered is not None else "NOT within 180 s",
            ),
            ("events since the burst: done / dead / ignored", f"{new['done']} / {new['dead']} / {new['ignored']}"),
            ("process alive / GET /readyz at the end", f"{alive} / {ready}"),
        ],
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--burst", type=float, default=20.0, help="seconds of 503s")
    parser.add_argument("--actions", type=int, default=20, help="sandbox actions during the burst")
    args = parser.parse_args()
    main(args.burst, args.actions)

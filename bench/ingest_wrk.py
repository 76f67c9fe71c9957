"""Benchmark: webhook ingest under ``wrk``. Requests/s and time to 202 (p50/p99) at 64 connections
against the product's receiver (verify, parse, durable group-commit insert) and, in the same run
with the same load generator, a bare Starlette handler answering 202; rounds alternate product
and bare so both see the same machine. Targets (issue 10, item 8): product/bare >= 0.5 and
p99 < 50 ms, every 202 a stored row.

Every request is a distinct delivery: N bodies (each naming its own branch and repository, with
its own ``X-Request-UUID``) are signed here in Python and written one per line
to a file that the Lua script loads into a table (``init``); wrk's threads take interleaved lines.
A product round is valid only if no thread ran out of lines (a reused line would be a duplicate
delivery: 202 but no new row). After each product round the server stops and the events table is
counted: every 202 must be a row (rows may exceed the 202s by requests still in flight when wrk
stopped, at most one per connection).

The dedup keys are Bitbucket's shape by default (``--keys bitbucket``: a random X-Request-UUID per
delivery, one X-Hook-UUID); ``--keys sequential`` (ids in arrival order, a hook per delivery) is
what earlier runs used and costs the insert about half as much (bench/ingest_indexes.py).

The server is ``bench/ingest_server.py`` (uvicorn + uvloop + httptools, one process, writer only),
so the figures include the HTTP stack ``serve`` uses. For each server the CPU seconds it used
during the measured run (utime + stime from ``/proc/PID/stat``) and its peak RSS (``VmHWM``) are
reported.

Needs ``wrk`` (Debian: ``apt-get install wrk``; installed automatically when running as root).
Run: ``.venv/bin/python bench/ingest_wrk.py [--seconds S] [--rounds R] [--deliveries N]``
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

from common import free_port, table

SECRET = "bench-webhook-secret-0123456789"
KEY = "bench-secret-key-0123456789abcdef"
SERVER = str(Path(__file__).with_name("ingest_server.py"))
PATH = "/hooks/bitbucket/bench"
CONNECTIONS = 64

LUA = r"""
-- One distinct, pre-signed delivery per request. Lines: request-uuid \t hook-uuid \t signature \t body
-- Globals "id" (set by setup) and "wrapped" (read by done) live in each thread's own Lua state.
local lines, n, i = {}, 0, 0
wrapped = 0
local threads, next_id = {}, 0

function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

function init(args)
  local total = tonumber(args[2])
  local k = 0
  for line in io.lines(args[1]) do
    if k % total == id then
      local r, h, s, b = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
      n = n + 1
      lines[n] = wrk.format("POST", args[3], {
        ["Content-Type"] = "application/json",
        ["X-Event-Key"] = "repo:push",
        ["X-Request-UUID"] = r,
        ["X-Hook-UUID"] = h,
        ["X-Attempt-Number"] = "1",
        ["X-Hub-Signature"] = s,
      }, b)
    end
    k = k + 1
  end
end

function request()
  i = i + 1
  if i > n then
    i, wrapped = 1, wrapped + 1
  end
  return lines[i]
end

function done(summary, latency, requests)
  local w = 0
  for _, t in ipairs(threads) do
    w = w + (t:get("wrapped") or 0)
  end
  io.write(string.format(
    'RESULT {"requests": %d, "duration_us": %d, "status_errors": %d, "connect": %d, "read": %d, ' ..
    '"write": %d, "timeout": %d, "p50_us": %d, "p99_us": %d, "wrapped": %d}\n',
    summary.requests, summary.duration, summary.errors.status, summary.errors.connect,
    summary.errors.read, summary.errors.write, summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), w))
end
"""


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("wrk not found: installing the Debian package (apt-get install wrk)", file=sys.stderr)
        subprocess.run(["apt-get", "update", "-qq"], check=True)  # noqa: S607 - the system's apt
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True)  # noqa: S607
        found = shutil.which("wrk")
    if not found:
        sys.exit("wrk is needed: install it with `sudo apt-get install wrk` (Debian/Ubuntu)")
    return found


def write_deliveries(path: Path, count: int, prefix: str, keys: str = "bitbucket") -> None:
    """``count`` distinct signed deliveries, one per line (tab-separated, body last).

    ``keys`` shapes the dedup keys: ``bitbucket`` as Bitbucket sends them (a random X-Request-UUID
    per delivery, one X-Hook-UUID: the workspace's hook), so each stored row lands on a random
    page of both dedup indexes; ``sequential`` (request ids ``run-0``, ``run-1``…, a hook per
    delivery) sorts nearly in arrival order and flatters the insert (bench/ingest_indexes.py)."""
    key = SECRET.encode()
    hook = f"{{{uuid.uuid4()}}}"
    with path.open("w") as out:
        for i in range(count):
            branch = f"feature/{prefix}-{i}"
            body = json.dumps(
                {
                    "actor": {"account_id": "557058:bench", "display_name": "Bench", "type": "user"},
                    "repository": {
                        "type": "repository",
                        "full_name": f"bench/repo-{i % 500}",
                        "name": f"repo-{i % 500}",
                        "uuid": f"{{bench-repo-{i % 500}}}",
                        "workspace": {"slug": "bench", "type": "workspace"},
                    },
                    "push": {
                        "changes": [
                            {
                                "new": {"type": "branch", "name": branch, "target": {"hash": f"{i:040x}"}},
                                "old": {"type": "branch", "name": branch, "target": {"hash": f"{i + 1:040x}"}},
                                "created": False,
                                "closed": False,
                            }
                        ]
                    },
                },
                separators=(",", ":"),
            ).encode()
            sig = "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()
            if keys == "bitbucket":
                out.write(f"{prefix}-{uuid.uuid4()}\t{hook}\t{sig}\t{body.decode()}\n")
            else:
                out.write(f"{prefix}-{i}\t{{hook-{prefix}-{i}}}\t{sig}\t{body.decode()}\n")


def start(mode: str, port: int, db: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(  # noqa: S603 - our own interpreter and script
        [sys.executable, SERVER, mode, str(port), str(db), SECRET, KEY],
        env=dict(os.environ, LP_LOG_LEVEL="warning"),
    )
    for _ in range(400):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/nothing", timeout=1)
        except urllib.error.HTTPError:
            return proc
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{mode} server did not start")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Round:
    rps: float
    p50_ms: float
    p99_ms: float
    accepted: int
    errors: int
    wrapped: int
    cpu_s: float
    rss_mb: float
    rows: int | None = None


def run_wrk(wrk: str, script: Path, data: Path, threads: int, port: int, seconds: float) -> dict[str, int]:
    out = subprocess.run(  # noqa: S603 - wrk from PATH, our arguments
        [
            wrk,
            f"-t{threads}",
            f"-c{CONNECTIONS}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}{PATH}",
            "--",
            str(data),
            str(threads),
            PATH,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed: {out.stderr.strip() or out.stdout.strip()}")
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
    result: dict[str, int] = json.loads(line.removeprefix("RESULT "))
    return result


def measure(mode: str, wrk: str, script: Path, data: Path, warm: Path, args: argparse.Namespace, db: Path) -> Round:
    port = free_port()
    proc = start(mode, port, db)
    try:
        run_wrk(wrk, script, warm, args.threads, port, args.warmup)
        cpu0 = cpu_seconds(proc.pid)
        r = run_wrk(wrk, script, data, args.threads, port, args.seconds)
        cpu = cpu_seconds(proc.pid) - cpu0
        rss = peak_rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(20)
    errors = r["status_errors"] + r["connect"] + r["read"] + r["write"] + r["timeout"]
    accepted = r["requests"] - r["status_errors"]
    result = Round(
        rps=r["requests"] / (r["duration_us"] / 1e6),
        p50_ms=r["p50_us"] / 1000,
        p99_ms=r["p99_us"] / 1000,
        accepted=accepted,
        errors=errors,
        wrapped=r["wrapped"],
        cpu_s=cpu,
        rss_mb=rss,
    )
    if mode == "product":
        conn = sqlite3.connect(db)
        try:
            result.rows = conn.execute("SELECT count(*) FROM events WHERE request_uuid LIKE 'run-%'").fetchone()[0]
        finally:
            conn.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per round")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per round (other deliveries)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--deliveries", type=int, default=200_000, help="distinct signed deliveries per round")
    parser.add_argument(
        "--keys",
        choices=("bitbucket", "sequential"),
        default="bitbucket",
        help="dedup keys as Bitbucket sends them (random request ids, one hook) or in arrival order",
    )
    args = parser.parse_args()
    wrk = ensure_wrk()
    results: dict[str, list[Round]] = {"product": [], "bare": []}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        script = tmp / "deliveries.lua"
        script.write_text(LUA)
        data, warm = tmp / "run.tsv", tmp / "warm.tsv"
        write_deliveries(data, args.deliveries, "run", args.keys)
        write_deliveries(warm, 30_000, "warm", args.keys)
        for r in range(args.rounds):
            for mode in ("product", "bare"):
                got = measure(mode, wrk, script, data, warm, args, tmp / f"{mode}-{r}.sqlite3")
                results[mode].append(got)
                print(f"round {r + 1} {mode}: {got}", file=sys.stderr)

    product, bare = results["product"], results["bare"]

    def med(rounds: list[Round], attr: str) -> float:
        return statistics.median(float(getattr(x, attr)) for x in rounds)

    def cpu_per_request(rounds: list[Round]) -> float:
        return statistics.median(x.cpu_s / (x.rps * args.seconds) * 1e6 for x in rounds)

    ratios = [p.rps / b.rps for p, b in zip(product, bare, strict=True)]
    lost = [(p.accepted, p.rows) for p in product if p.rows is None or p.rows < p.accepted]
    wrapped = sum(p.wrapped for p in product)
    table(
        f"webhook ingest under wrk: {args.rounds} rounds of {args.seconds:g} s, {CONNECTIONS} connections, "
        f"{args.threads} wrk threads, {args.deliveries} distinct signed deliveries, {args.keys} keys (medians)",
        [
            ("product: requests/s", f"{med(product, 'rps'):.0f}"),
            ("product: p50 / p99", f"{med(product, 'p50_ms'):.1f} ms / {med(product, 'p99_ms'):.1f} ms  (target < 50)"),
            ("product: CPU s per round / peak RSS", f"{med(product, 'cpu_s'):.1f} s / {med(product, 'rss_mb'):.0f} MB"),
            ("product: server CPU per request", f"{cpu_per_request(product):.0f} us"),
            ("product: errors (non-2xx, socket)", sum(p.errors for p in product)),
            (
                "product: 202 answers -> stored rows",
                ", ".join(f"{p.accepted} -> {p.rows}" for p in product)
                + ("  (every 202 stored)" if not lost else "  LOST DELIVERIES"),
            ),
            ("bare Starlette 202: requests/s", f"{med(bare, 'rps'):.0f}"),
            ("bare: p50 / p99", f"{med(bare, 'p50_ms'):.1f} ms / {med(bare, 'p99_ms'):.1f} ms"),
            ("bare: CPU s per round / peak RSS", f"{med(bare, 'cpu_s'):.1f} s / {med(bare, 'rss_mb'):.0f} MB"),
            ("bare: server CPU per request", f"{cpu_per_request(bare):.0f} us"),
            ("CPU per request bare / product", f"{cpu_per_request(bare) / cpu_per_request(product):.2f}"),
            ("ratio product / bare per round", ", ".join(f"{x:.2f}" for x in ratios)),
            ("ratio product / bare (median)", f"{statistics.median(ratios):.2f}  (target >= 0.5)"),
        ],
    )
    if wrapped:
        print(f"\nwarning: product rounds reused deliveries {wrapped} times: raise --deliveries", file=sys.stderr)
    if lost:
        sys.exit(1)


if __name__ == "__main__":
    main()

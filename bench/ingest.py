"""Benchmark: webhook ingest. Signed deliveries per second and time to 202 (p50/p99) at 64
concurrent connections, against the product's receiver (verify, parse, durable group-commit
insert) and, in the same run with the same load generator, a bare Starlette handler that answers
202. Prints both and the ratio. Targets (issue 3/5): >= 1,500 deliveries/s, p99 < 50 ms on 2 cores,
ratio to bare >= 0.5. Each server runs in its own process (uvicorn, one worker); the load
generator is this process.

Run: ``.venv/bin/python bench/ingest.py [--requests N] [--concurrency C]``
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp
from common import free_port, table

SECRET = "bench-webhook-secret-0123456789"
KEY = "bench-secret-key-0123456789abcdef"

SERVER = str(Path(__file__).with_name("ingest_server.py"))


def start(mode: str, port: int, db: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(  # noqa: S603 - our own interpreter and script
        [sys.executable, SERVER, mode, str(port), db, SECRET, KEY],
        env=dict(os.environ, LP_LOG_LEVEL="warning"),
    )
    for _ in range(200):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/nothing", timeout=1)
        except urllib.error.HTTPError:
            return proc
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not start")


async def load(port: int, total: int, concurrency: int, first: int = 0) -> tuple[float, list[float], int]:
    url = f"http://127.0.0.1:{port}/hooks/bitbucket/bench"
    latencies: list[float] = []
    failures = 0
    counter = iter(range(first, first + total))
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal failures
            for i in counter:
                body = json.dumps(
                    {
                        "repository": {"uuid": "{bench-repo}", "full_name": "bench/repo"},
                        "push": {"changes": [{"new": {"type": "branch", "name": f"b{i}"}}]},
                    }
                ).encode()
                sig = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
                headers = {
                    "X-Event-Key": "repo:push",
                    "X-Request-UUID": f"req-{i}",
                    "X-Hook-UUID": "{h}",
                    "X-Attempt-Number": "1",
                    "X-Hub-Signature": sig,
                    "Content-Type": "application/json",
                }
                t0 = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    if resp.status != 202:
                        failures += 1
                latencies.append(time.perf_counter() - t0)

        start_t = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start_t
    return wall, sorted(latencies), failures


def pct(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, int(len(values) * p))] * 1000


async def measure(mode: str, total: int, concurrency: int, tmp: Path) -> tuple[float, float, float, int]:
    port = free_port()
    tmp.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - set-up before the clock starts
    proc = start(mode, port, str(tmp / f"{mode}.sqlite3"))
    try:
        await load(port, min(2000, total // 5), concurrency, first=10**9)  # warm-up, other request ids
        wall, lat, failures = await load(port, total, concurrency)
    finally:
        proc.terminate()
        proc.wait(10)
    return total / wall, pct(lat, 0.5), pct(lat, 0.99), failures


async def main(total: int, concurrency: int, rounds: int) -> None:
    """Rounds alternate product and bare, so both see the same machine; medians are reported."""
    import sqlite3
    import statistics

    results: dict[str, list[tuple[float, float, float, int]]] = {"product": [], "bare": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for mode in ("product", "bare"):
                results[mode].append(await measure(mode, total, concurrency, Path(tmp) / f"r{r}"))
        stored = sqlite3.connect(Path(tmp) / "r0" / "product.sqlite3").execute("SELECT count(*) FROM events")
        count = stored.fetchone()[0]

    def med(mode: str, i: int) -> float:
        return statistics.median(x[i] for x in results[mode])

    ratios = [p[0] / b[0] for p, b in zip(results["product"], results["bare"], strict=True)]
    table(
        f"webhook ingest: {total} signed deliveries x {rounds} rounds, {concurrency} concurrent connections (medians)",
        [
            ("product: deliveries/s", f"{med('product', 0):.0f}  (target >= 1500)"),
            (
                "product: time to 202 p50 / p99",
                f"{med('product', 1):.1f} ms / {med('product', 2):.1f} ms  (target p99 < 50 ms)",
            ),
            ("product: non-202 answers", sum(x[3] for x in results["product"])),
            ("product: events stored in round 1 (with warm-up)", count),
            ("bare Starlette 202: requests/s", f"{med('bare', 0):.0f}"),
            ("bare: p50 / p99", f"{med('bare', 1):.1f} ms / {med('bare', 2):.1f} ms"),
            ("ratio product / bare per round", ", ".join(f"{r:.2f}" for r in ratios)),
            ("ratio product / bare (median)", f"{statistics.median(ratios):.2f}  (target >= 0.5)"),
        ],
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.requests, args.concurrency, args.rounds))

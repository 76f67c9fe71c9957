"""Benchmark: every dashboard page's render time in headless Chromium (Debian's package, driven by
Playwright) on a generated workspace of 10,000 repositories and 20,000 members, written straight
into the store (a reconcile through the sandbox at that size takes minutes; the pages read the
same rows). Prints, per page, the server time (request sent → last byte) and the page load (navigation
start → load event), the median of ``--runs`` loads after one warm-up, and the HTML size.
Target (issue 14): every page under 300 ms.

Run: ``.venv/bin/python bench/dashboard.py [--repos N] [--members N] [--runs N]``
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from common import table
from playwright.async_api import async_playwright

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.sandbox.serve import free_port, running_sandbox  # noqa: E402
from tests.helpers import ADMIN, product_settings, running_app  # noqa: E402
from tests.web.bigworkspace import PAGES, measure, seed  # noqa: E402

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
TARGET_MS = 300.0


async def main(repos: int, members: int, runs: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        async with running_sandbox() as sandbox, aiohttp.ClientSession() as session:
            port = free_port()
            settings = product_settings(sandbox.api, Path(tmp), port, LP_WORKSPACES="big")
            async with running_app(settings, port, session, background=False) as app:
                store = app.services.service.store
                await store.connections.upsert("token", "token", ["big"])
                t0 = time.perf_counter()
                await seed(store, "big", repos, members)
                print(f"generated {repos} repositories / {members} members in {time.perf_counter() - t0:.1f} s")
                async with async_playwright() as pw:
                    chromium = shutil.which("chromium") or "/usr/bin/chromium"
                    browser = await pw.chromium.launch(executable_path=chromium, args=ARGS, headless=True)
                    page = await browser.new_page(viewport={"width": 1280, "height": 900})
                    await page.goto(app.url + "/login")
                    await page.fill("#token", ADMIN)
                    await page.press("#token", "Enter")
                    await page.wait_for_url(app.url + "/")
                    rows, worst = [], 0.0
                    for path in PAGES:
                        await measure(page, app.url + path)
                        samples = [await measure(page, app.url + path) for _ in range(runs)]
                        server = statistics.median(s["server"] for s in samples)
                        total = statistics.median(s["total"] for s in samples)
                        size = samples[0]["bytes"] / 1024
                        worst = max(worst, total)
                        rows.append((path, f"server {server:6.1f} ms · page {total:6.1f} ms · {size:6.1f} KiB"))
                    await browser.close()
    table(f"dashboard at {repos} repositories / {members} members (median of {runs})", rows)
    verdict = "OK" if worst < TARGET_MS else "OVER"
    print(f"\nslowest page load {worst:.1f} ms (target < {TARGET_MS:.0f} ms): {verdict}")
    return 0 if worst < TARGET_MS else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repos", type=int, default=10_000)
    parser.add_argument("--members", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=5)
    a = parser.parse_args()
    sys.exit(asyncio.run(main(a.repos, a.members, a.runs)))

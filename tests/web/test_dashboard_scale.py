"""The dashboard on a generated workspace (written straight into the store): every page is paged
in SQL, so its HTML stays small and its render time flat; members sort naturally and one linked by
email reads linked. Each page's render time is printed (``-s``); ``bench/dashboard.py`` runs the
same at 10,000 repositories / 20,000 members. Size here: LP_SCALE_REPOS / LP_SCALE_MEMBERS."""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import Browser

from app.sandbox.serve import RunningSandbox, free_port
from tests.helpers import RunningApp, product_settings, running_app
from tests.web.bigworkspace import PAGES, measure, seed
from tests.web.test_dashboard import browser, login, open_page  # noqa: F401 - the browser fixture

REPOS = int(os.environ.get("LP_SCALE_REPOS", "2000"))
MEMBERS = int(os.environ.get("LP_SCALE_MEMBERS", "4000"))


@pytest.fixture
async def big(sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path) -> AsyncIterator[RunningApp]:
    port = free_port()
    settings = product_settings(sandbox.api, tmp_path, port, LP_WORKSPACES="big")
    async with running_app(settings, port, session, background=False) as app:
        store = app.services.service.store
        await store.connections.upsert("token", "token", ["big"])
        await seed(store, "big", REPOS, MEMBERS)
        yield app


async def test_every_page_is_paged_and_quick_on_a_large_workspace(big: RunningApp, browser: Browser) -> None:  # noqa: F811
    page, problems = await open_page(browser)
    await login(page, big)
    timings = {}
    for path in PAGES:
        await measure(page, big.url + path)  # warm (templates compiled, SQLite pages cached)
        t = await measure(page, big.url + path)
        timings[path] = t
        assert await page.locator("h1").count() == 1, path
        # paged: at most 50 rows of a list, whatever the workspace's size
        assert await page.locator("main table tbody tr, #events > li").count() <= 60, path
        assert t["bytes"] < 250_000, (path, t)
    print(f"\nrender times at {REPOS} repositories / {MEMBERS} members (ms, server / page load):")
    for path, t in timings.items():
        print(f"  {path:70s} {t['server']:7.1f} {t['total']:7.1f}  {t['bytes'] / 1024:6.1f} KiB")
    # a coarse bound against a regression to whole-table pages (37 s before); the 300 ms target at
    # 10,000/20,000 is measured by bench/dashboard.py
    assert max(t["total"] for t in timings.values()) < 3000, timings
    assert problems == [], problems

    # counts and paging
    await page.goto(big.url + "/repositories")
    assert f"1\u201350 of {REPOS}" in await page.inner_text(".pager")
    await page.get_by_role("link", name="Next →").first.click()
    assert f"51\u2013100 of {REPOS}" in await page.inner_text(".pager")
    unclassified = REPOS - len(range(0, REPOS, 3))
    await page.goto(big.url + "/repositories?class=unclassified")
    assert f"of {unclassified}" in await page.inner_text(".pager")
    assert await page.locator("tbody strong", has_text="unclassified").count() == 50

    # members: natural order, and a member linked by email is linked
    await page.goto(big.url + "/members")
    names = [n.split("\n")[0] for n in await page.locator("tbody tr td:first-child").all_inner_texts()]
    assert names[:12] == [f"User {i}" for i in range(12)]
    assert "linked by email" in await page.inner_text("tr[data-account='acct-000001'] .person")
    assert "not linked" not in await page.inner_text("tr[data-account='acct-000001']")
    assert "not linked" in await page.inner_text("tr[data-account='acct-000003']")
    await page.goto(big.url + "/members?sort=name&dir=desc")
    first = (await page.locator("tbody tr td:first-child").first.inner_text()).split("\n")[0]
    assert first == f"User {MEMBERS - 1}"
    await page.goto(big.url + "/members?q=acct-000777")
    assert await page.locator("tbody tr").count() == 1

    # findings: filters combine and counts follow them
    await page.goto(big.url + "/findings?check=offboarded-access-removed&status=fail")
    offboarded = len(range(0, MEMBERS, 97))
    assert f"of {offboarded}" in await page.inner_text(".pager")
    rows = page.locator("tbody tr[data-check='offboarded-access-removed']")
    assert await rows.count() == min(50, offboarded)
    assert "critical" in (await rows.first.inner_text()).lower()
    await page.goto(big.url + "/findings?severity=low&q=repo-1")
    texts = await page.locator("tbody tr .title").all_inner_texts()
    assert texts and set(texts) == {"Bitbucket Pipelines should be enabled for vulnerability scanning"}
    assert re.search(r"of \d+", await page.inner_text(".pager"))

"""The dashboard in headless Chromium (Debian's package, driven by Playwright): log in, classify a
repository, upload evidence and see the test turn green, watch an event appear live; no console
errors on any page. Screenshots land in the test's tmp_path; with UPDATE_SCREENSHOTS=1 (make
screenshots) they replace the README's in docs/screenshots."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright

from app.sandbox.serve import RunningSandbox, free_port
from app.web.dashboard import NAV
from tests.conftest import ROOT
from tests.helpers import ADMIN, RunningApp, product_settings, running_app, wait_for

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DOCS_SHOTS = ROOT / "docs" / "screenshots"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
async def product(sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path) -> AsyncIterator[RunningApp]:
    port = free_port()
    async with running_app(product_settings(sandbox.api, tmp_path, port), port, session) as app:
        store = app.services.service.store

        async def reconciled() -> bool:
            return len(await store.results.query(check="repo-classified")) == 6

        await wait_for(reconciled, within=30)
        yield app


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield b
        finally:
            await b.close()


async def open_page(browser: Browser, width: int = 1280) -> tuple[Page, list[str]]:
    page = await browser.new_page(viewport={"width": width, "height": 900})
    problems: list[str] = []

    def on_console(msg: ConsoleMessage) -> None:
        if msg.type == "error":
            problems.append(msg.text)

    page.on("console", on_console)
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    return page, problems


async def login(page: Page, app: RunningApp) -> None:
    await page.goto(app.url + "/findings")
    assert "/login" in page.url  # a page needs a session
    await page.fill("#token", ADMIN)
    await page.press("#token", "Enter")  # keyboard only
    await page.wait_for_url(app.url + "/findings")


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.glob("*")) if p.is_file()}


async def test_dashboard_end_to_end(
    product: RunningApp, browser: Browser, sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    updating = os.environ.get("UPDATE_SCREENSHOTS") == "1"
    shots = DOCS_SHOTS if updating else tmp_path / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    tracked_before = _files(DOCS_SHOTS) if DOCS_SHOTS.is_dir() else {}
    page, problems = await open_page(browser)
    await login(page, product)
    store = product.services.service.store

    await page.goto(product.url + "/")
    assert await page.locator("article.card").count() >= 7
    assert await page.locator("svg.trend").count() == 1
    await page.screenshot(path=str(shots / "overview.png"), full_page=True)

    # classify a repository in place
    await page.goto(product.url + "/repositories")
    row = page.locator("tr[data-repo='acme/web']")
    await row.get_by_role("button", name="production", exact=True).click()
    await page.wait_for_url(lambda url: "/repositories?notice=" in url)
    assert "Classified acme/web as production" in await page.inner_text("[role=status]")
    await product.services.worker.drain()

    async def classified() -> bool:
        rows = await store.results.query(check="repo-classified", subject="acme/web")
        return bool(rows) and rows[0].result.status == "pass"

    await wait_for(classified)
    await page.screenshot(path=str(shots / "repositories.png"), full_page=True)

    # upload evidence, then see the workspace MFA test turn green
    await page.goto(product.url + "/findings?check=workspace-mfa-enforced")
    assert "FAIL" in (await page.inner_text("tr[data-check='workspace-mfa-enforced'] .status")).upper()
    policy = tmp_path / "auth-policy.pdf"
    policy.write_bytes(b"%PDF-1.4 authentication policy requiring 2SV")
    await page.goto(product.url + "/evidence")
    await page.select_option("#ev-check", "workspace-mfa-enforced")
    await page.set_input_files("#ev-file", str(policy))
    await page.get_by_role("button", name="Upload").click()
    await page.wait_for_url(lambda url: "/evidence?notice=" in url)
    assert "auth-policy.pdf" in await page.inner_text("table")

    async def green() -> bool:
        await page.goto(product.url + "/findings?check=workspace-mfa-enforced")
        text = await page.inner_text("tr[data-check='workspace-mfa-enforced'] .status")
        return text.strip().upper() == "PASS"

    await wait_for(green, within=15, interval=0.3)
    await page.screenshot(path=str(shots / "findings.png"), full_page=True)

    # the event log, live
    await page.goto(product.url + "/events")
    await page.wait_for_timeout(300)
    async with session.post(sandbox.url + "/_sandbox/repos/acme/api/update", json={"mainbranch": "develop"}):
        pass
    await page.wait_for_selector("li[data-key='repo:updated'][data-state='done']", timeout=10_000)
    assert "branch-protection-enforced acme/api: pass → fail" in await page.inner_text("#events")
    await page.screenshot(path=str(shots / "events.png"), full_page=True)

    for path in (
        "/members",
        "/exceptions",
        "/connections",
        "/alerts",
        "/findings",
        "/operations",
        "/personnel",
        "/rules",
        "/settings",
        "/audit-pack",
    ):
        await page.goto(product.url + path)
        assert await page.locator("h1").count() == 1
        if path in ("/members", "/operations"):
            await page.screenshot(path=str(shots / f"{path[1:]}.png"), full_page=True)
    await page.goto(product.url + "/connections")
    await page.screenshot(path=str(shots / "connections.png"), full_page=True)
    assert problems == [], problems

    # a phone-sized window still shows the navigation and the findings
    phone, phone_problems = await open_page(browser, width=390)
    await login(phone, product)
    assert await phone.locator("header nav a").count() == len(NAV)
    await phone.screenshot(path=str(shots / "phone-findings.png"), full_page=False)
    assert phone_problems == []

    taken = ["overview", "repositories", "findings", "events", "connections", "members", "operations", "phone-findings"]
    assert all((shots / f"{name}.png").read_bytes().startswith(b"\x89PNG") for name in taken)
    if not updating:  # a plain test run leaves the tracked screenshots alone
        assert (_files(DOCS_SHOTS) if DOCS_SHOTS.is_dir() else {}) == tracked_before


async def test_forms_need_the_csrf_token(product: RunningApp, browser: Browser) -> None:
    page, _ = await open_page(browser)
    await login(page, product)
    response = await page.request.post(
        product.url + "/repositories/classify", form={"one": "x|production", "csrf": "forged"}
    )
    assert response.status == 400 and "CSRF" in await response.text()

"""The dashboard's operator and to-do views in headless Chromium: the Overview says when the first
assessment still runs; the Operations panel queues a reconcile and retries a dead event; the
Events page shows times, errors, API calls, filters and folds long change lists; Disconnect asks
first; findings read as a to-do list with actions in place (classify, exception add and revoke);
the first steps disappear once done. Real servers on loopback, a real SQLite file."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import Browser

from app.sandbox.serve import RunningSandbox, free_port
from tests.helpers import RunningApp, product_settings, running_app, wait_for
from tests.web.test_dashboard import browser, login, open_page, product  # noqa: F401 - fixtures


@pytest.fixture
async def idle(sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path) -> AsyncIterator[RunningApp]:
    """The product with no worker or scheduler running: a first pass never finishes."""
    port = free_port()
    async with running_app(product_settings(sandbox.api, tmp_path, port), port, session, background=False) as app:
        yield app


async def _event(app: RunningApp, state: str, key: str, error: str | None = None, caused: object = None) -> int:
    now = datetime.now(UTC).isoformat()
    return await app.services.service.store.db.execute(
        """INSERT INTO events (connection_id, source, event_key, workspace, payload, state, tries, received_at,
           finished_at, error, caused, changed_at)
           VALUES ('token', 'internal', ?, 'acme', '{}', ?, 3, ?, ?, ?, ?, ?)""",
        (key, state, now, now, error, json.dumps(caused) if caused is not None else None, time.time()),
    )


async def test_operator_views(idle: RunningApp, browser: Browser) -> None:  # noqa: F811
    page, problems = await open_page(browser)
    await login(page, idle)
    store = idle.services.service.store

    # the Overview says plainly that the first assessment is still running
    await page.goto(idle.url + "/")
    assert "first assessment is still running" in await page.inner_text("#assessing")
    assert "No results yet" not in await page.inner_text("main")

    # Reconcile now, from the Operations panel
    await page.goto(idle.url + "/operations")
    panel = page.locator("article.panel[data-workspace='acme']")
    assert "API budget" in await panel.inner_text() or "No API client" in await panel.inner_text()
    await panel.get_by_role("button", name="Reconcile now").click()
    await page.wait_for_url(lambda url: "/operations?notice=" in url)
    assert "Reconcile (full) of acme queued" in await page.inner_text("[role=status]")
    queued = await store.events.list(event_key="lp:reconcile", state="queued")
    assert [r.payload.get("tier") for r in queued] == ["full"]
    assert "queued" in await page.inner_text("article.panel[data-workspace='acme'] tr[data-tier='full']")
    assert await page.inner_text("#queue-depth") == "1"

    # a dead event, its error, and Retry
    dead = await _event(idle, "dead", "repo:push", error="BitbucketError: 500 after 5 tries")
    await page.goto(idle.url + "/operations")
    row = page.locator(f"tr[data-event='{dead}']")
    assert "500 after 5 tries" in await row.inner_text()
    await row.get_by_role("button", name="Retry").click()
    await page.wait_for_url(lambda url: "/operations?notice=" in url)
    assert f"Event {dead} queued again" in await page.inner_text("[role=status]")
    again = await store.events.get(dead)
    assert again is not None and again.state == "queued" and again.tries == 0

    # Events: times, errors, API calls, folded long change lists, filters
    changes = [f"branch-protection-enforced acme/r{i}: pass → fail" for i in range(40)]
    big = await _event(idle, "done", "lp:reconcile", caused={"api_calls": 17, "changes": changes})
    small = await _event(idle, "done", "repo:updated", caused={"api_calls": 2, "changes": changes[:2]})
    failed = await _event(idle, "dead", "pullrequest:created", error="TokenError: token refused")
    await page.goto(idle.url + "/events")
    item = page.locator(f"#event-{big}")
    assert "17 API calls" in await item.inner_text() and "received " in await item.inner_text()
    assert await item.locator("details").count() == 1
    assert "40 changes" in await item.locator("summary").inner_text()
    assert not await item.locator(".ev-changes").is_visible()  # folded
    await item.locator("summary").click()
    assert await item.locator(".ev-changes").is_visible()
    assert await page.locator(f"#event-{small} details").count() == 0
    assert "token refused" in await page.inner_text(f"#event-{failed} .ev-error")
    await page.goto(idle.url + "/events?state=dead")
    ids = {await li.get_attribute("id") for li in await page.locator("#events > li").all()}
    assert ids == {f"event-{failed}"}
    await page.goto(idle.url + "/events?q=token+refused")
    assert await page.locator("#events > li").count() == 1

    # Disconnect asks first; Cancel keeps the connection
    await page.goto(idle.url + "/connections")
    await page.get_by_role("link", name="Disconnect…").click()
    assert "Disconnect token?" in await page.inner_text("h1")
    await page.get_by_role("link", name="Cancel").click()
    conn = await store.connections.get("token")
    assert conn is not None and conn.status == "active"
    await page.goto(idle.url + "/connections/token/disconnect")
    await page.get_by_role("button", name="Yes, disconnect").click()
    await page.wait_for_url(lambda url: "/connections?notice=" in url)
    conn = await store.connections.get("token")
    assert conn is not None and conn.status == "disconnected"
    assert problems == [], problems


async def test_findings_are_a_to_do_list_with_actions(
    product: RunningApp,  # noqa: F811
    browser: Browser,  # noqa: F811
    sandbox: RunningSandbox,
    tmp_path: Path,
) -> None:
    page, problems = await open_page(browser)
    await login(page, product)
    store = product.services.service.store
    worker = product.services.worker

    # first steps on a first visit
    await page.goto(product.url + "/")
    steps = page.locator("#first-steps li")
    assert await steps.count() == 4

    # an unclassified repository: title, severity, what, how, classify in place
    await page.goto(product.url + "/findings?check=repo-classified&status=fail")
    row = page.locator("tr[data-check='repo-classified']").first
    subject = await row.get_attribute("data-subject")
    text = await row.inner_text()
    assert "Fix:" in text and "Classify the repository" in text and "critical" in text.lower()
    assert "repo-classified" not in text  # the title, not the id
    await row.get_by_role("button", name="production", exact=True).click()
    await page.wait_for_url(lambda url: "/repositories?notice=" in url)
    await worker.drain()

    async def classified() -> bool:
        rows = await store.results.query(check="repo-classified", subject=subject)
        return rows[0].result.status == "pass"

    await wait_for(classified)

    # a branch protection failure links to the repository's settings page
    fails = await store.results.query(check="branch-protection-enforced", status="fail")
    assert fails
    name = fails[0].result.subject
    await page.goto(product.url + f"/findings?check=branch-protection-enforced&status=fail&q={name}")
    link = page.locator(f"tr[data-subject='{name}']").get_by_role("link", name="Open settings")
    web = product.settings.bitbucket_url.rstrip("/")
    assert await link.get_attribute("href") == f"{web}/{name}/admin/branch-restrictions"

    # add an exception from the finding, see it excepted, revoke it, see it fail again
    await page.locator(f"tr[data-subject='{name}']").get_by_role("link", name="Add exception").click()
    assert await page.input_value("#x-subject") == name
    assert await page.input_value("#x-check") == "branch-protection-enforced"
    await page.fill("#x-owner", "cto@example.com")
    await page.fill("#x-reason", "legacy repository, archived next quarter")
    await page.fill("#x-expires", (datetime.now(UTC) + timedelta(days=30)).date().isoformat())
    await page.get_by_role("button", name="Accept risk").click()
    await page.wait_for_url(lambda url: "/exceptions?notice=" in url)
    await worker.drain()

    async def status_is(want: str) -> bool:
        rows = await store.results.query(check="branch-protection-enforced", subject=name)
        return rows[0].result.status == want

    await wait_for(lambda: status_is("excepted"))
    await page.goto(product.url + f"/findings/subject?check=branch-protection-enforced&subject={name}")
    assert name in await page.inner_text("h1")
    await page.get_by_role("button", name="Revoke exception").click()
    await page.wait_for_url(lambda url: "/exceptions?notice=" in url)
    assert await store.records.exceptions() == []
    await worker.drain()
    await wait_for(lambda: status_is("fail"))

    # the first steps: a rule classifies the rest, personnel imported, the two 2SV documents
    await page.goto(product.url + "/rules")
    await page.select_option("#rule-class", "non-production")
    await page.fill("#rule-glob", "*")
    await page.get_by_role("button", name="Add rule").click()
    await page.wait_for_url(lambda url: "/rules?notice=" in url)
    people = tmp_path / "people.csv"
    people.write_text("email,name,kind,status\nalice@example.com,Alice,employee,active\n")
    await page.goto(product.url + "/personnel")
    await page.set_input_files("#p-file", str(people))
    await page.get_by_role("button", name="Import").click()
    await page.wait_for_url(lambda url: "/personnel?notice=" in url)
    assert "Imported 1" in await page.inner_text("[role=status]")
    assert "alice@example.com" in await page.inner_text("table")
    for check in ("workspace-mfa-enforced", "member-mfa-enabled"):
        doc = tmp_path / f"{check}.pdf"
        doc.write_bytes(b"%PDF-1.4 " + check.encode())
        await page.goto(product.url + f"/evidence?check={check}")
        await page.set_input_files("#ev-file", str(doc))
        await page.get_by_role("button", name="Upload").click()
        await page.wait_for_url(lambda url: "/evidence?notice=" in url)
    await worker.drain()

    async def no_steps() -> bool:
        await page.goto(product.url + "/")
        return await page.locator("#first-steps").count() == 0

    await wait_for(no_steps, within=15, interval=0.3)
    await page.goto(product.url + "/settings")
    assert "SOC 2 CC8.1" in await page.inner_text("table")
    assert problems == [], problems

"""Connecting with OAuth through the sandbox, the JSON API, exports, and secrets at rest and in logs."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from starlette.routing import Route

from app.main import create_app, routes
from app.sandbox.serve import RunningSandbox, free_port
from app.web.openapi import API_ROUTES, document
from tests.helpers import ADMIN, Receiver, RunningApp, product_settings, running_app, wait_for

AUTH = {"Authorization": f"Bearer {ADMIN}"}
OAUTH = {
    "LP_OAUTH_CLIENT_ID": "sandbox-client-id",
    "LP_OAUTH_CLIENT_SECRET": "sandbox-client-secret",
    "LP_BITBUCKET_TOKEN": "",
    "LP_WORKSPACES": "",
}


@pytest.fixture
async def slack() -> AsyncIterator[Receiver]:
    async with Receiver() as rx:
        yield rx


@pytest.fixture
async def product(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path, slack: Receiver
) -> AsyncIterator[RunningApp]:
    port = free_port()
    settings = product_settings(
        sandbox.api,
        tmp_path,
        port,
        **OAUTH,
        LP_SLACK_WEBHOOK_URL=slack.url + "/services/x",
        LP_SLACK_ALLOW_INSECURE_URL="true",
        LP_ALERT_GROUP_WAIT="0",
    )
    async with running_app(settings, port, session) as app:
        yield app


def browser_session() -> aiohttp.ClientSession:
    """A client that keeps cookies from 127.0.0.1 (aiohttp refuses IP-address cookies by default)."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def login(session: aiohttp.ClientSession, app: RunningApp, jar_session: bool = True) -> None:
    async with session.post(app.url + "/login", data={"token": ADMIN, "next": "/"}, allow_redirects=False) as r:
        assert r.status == 303 and "lp_session" in r.cookies


async def authorize(session: aiohttp.ClientSession, app: RunningApp) -> str:
    """Start the flow and let the sandbox approve: returns the callback URL Bitbucket redirects to."""
    async with session.get(app.url + "/connect/bitbucket", allow_redirects=False) as r:
        assert r.status == 302
        target = r.headers["Location"]
    assert "/site/oauth2/authorize" in target and "state=" in target
    async with session.get(target, allow_redirects=False) as r:
        assert r.status == 302
        return r.headers["Location"]


async def connect(session: aiohttp.ClientSession, app: RunningApp) -> str:
    await login(session, app)
    callback = await authorize(session, app)
    async with session.get(callback, allow_redirects=False) as r:
        assert r.status == 303, await r.text()
        return r.headers["Location"]


async def test_connect_end_to_end(product: RunningApp, sandbox: RunningSandbox) -> None:
    async with browser_session() as browser:
        where = await connect(browser, product)
    assert where == "/connections?connected=oauth-alice"
    conn = await product.services.service.store.connections.get("oauth-alice")
    assert conn is not None and conn.kind == "oauth" and conn.workspaces == ("acme",)
    assert conn.user is not None and conn.user["account_id"] == "557058:alice"
    assert conn.scopes is not None and "repository:admin" in conn.scopes
    [hook] = sandbox.sandbox.state.workspaces["acme"].hooks.values()
    assert hook.url.endswith("/hooks/bitbucket/oauth-alice")
    store = product.services.service.store

    async def reconciled() -> bool:
        return bool(await store.results.query(check="branch-protection-enforced"))

    await wait_for(reconciled, within=20)
    async with aiohttp.ClientSession() as s, s.get(product.url + "/api/connections", headers=AUTH) as r:
        [c] = await r.json()
    assert c["id"] == "oauth-alice" and c["webhook"]["status"] in ("ok", "silent")
    assert all(item["granted"] for item in c["scope_report"])


async def test_state_mismatch_reuse_and_expiry_are_refused(product: RunningApp) -> None:
    async with browser_session() as alice, browser_session() as mallory:
        await login(alice, product)
        await login(mallory, product)
        callback = await authorize(alice, product)
        async with mallory.get(callback, allow_redirects=False) as r:  # another browser session
            assert r.status == 400 and "another browser session" in await r.text()
        async with alice.get(callback, allow_redirects=False) as r:  # the state was claimed: single use
            assert r.status == 400 and "already used" in await r.text()
        callback = await authorize(alice, product)
        await product.services.service.store.db.execute("UPDATE oauth_states SET created_at = created_at - 700")
        async with alice.get(callback, allow_redirects=False) as r:
            assert r.status == 400 and "10 minutes" in await r.text()
        query = parse_qs(urlsplit(callback).query)
        bogus = callback.replace(query["state"][0], "forged-state")
        async with alice.get(bogus, allow_redirects=False) as r:
            assert r.status == 400
    assert await product.services.service.store.connections.all() == []


async def test_reused_code_is_refused_by_bitbucket(product: RunningApp, sandbox: RunningSandbox) -> None:
    async with browser_session() as browser:
        await login(browser, product)
        callback = await authorize(browser, product)
        code = parse_qs(urlsplit(callback).query)["code"][0]
        async with browser.get(callback, allow_redirects=False) as r:
            assert r.status == 303
        # A second flow replaying the first code with a fresh state: Bitbucket refuses the code.
        fresh = await authorize(browser, product)
        replay = fresh.replace(parse_qs(urlsplit(fresh).query)["code"][0], code)
        async with browser.get(replay, allow_redirects=False) as r:
            assert r.status == 400 and "refused the code" in await r.text()


async def test_connect_needs_a_login(product: RunningApp) -> None:
    async with aiohttp.ClientSession() as s, s.get(product.url + "/connect/bitbucket", allow_redirects=False) as r:
        assert r.status == 303 and r.headers["Location"].startswith("/login")
    async with (
        aiohttp.ClientSession() as s,
        s.post(product.url + "/login", data={"token": "wrong"}, allow_redirects=False) as r,
    ):
        assert r.status == 303 and "error=1" in r.headers["Location"] and "lp_session" not in r.cookies


async def test_revoked_refresh_breaks_the_connection_and_alerts(
    product: RunningApp, sandbox: RunningSandbox, slack: Receiver
) -> None:
    async with browser_session() as browser:
        await connect(browser, product)
        await browser.post(sandbox.url + "/_sandbox/tokens/revoke")
        await browser.post(sandbox.url + "/_sandbox/tokens/expire")
    service = product.services.service
    client = await service.client("oauth-alice")
    from app import errors

    with pytest.raises(errors.AuthError):
        await client.current_user()
    conn = await service.store.connections.get("oauth-alice")
    assert conn is not None and conn.status == "broken"

    async def alerted() -> bool:
        return any(b"is broken" in r.body for r in slack.received)

    await wait_for(alerted, within=10)


async def test_secrets_never_at_rest_in_plain_text(
    product: RunningApp, sandbox: RunningSandbox, capfd: pytest.CaptureFixture[str]
) -> None:
    async with browser_session() as browser:
        await connect(browser, product)
        # planted: a bad admin token and a forged signature in requests that get logged as refused
        await browser.get(product.url + "/api/events", headers={"Authorization": "Bearer planted-admin-guess-77"})
    sb = sandbox.sandbox
    secrets = [ADMIN, "sandbox-client-secret", "planted-admin-guess-77", "test-secret-key-0123456789"]
    secrets += list(sb.issued) + list(sb.refresh_tokens)
    secrets += [h.secret for h in sb.state.workspaces["acme"].hooks.values() if h.secret]
    store = product.services.service.store

    async def reconciled() -> bool:
        return bool(await store.results.query())

    await wait_for(reconciled, within=20)
    # The main file and its WAL are read together, so no checkpoint is needed (one raced the
    # worker's writes: "database table is locked").
    raw = b"".join(p.read_bytes() for p in Path(product.settings.database).parent.glob("lp.sqlite3*"))
    for secret in secrets:
        assert secret.encode() not in raw, "a secret is stored in plain text"
    logged = capfd.readouterr()
    for secret in secrets:
        assert secret not in logged.out + logged.err, "a secret reached the logs"


async def test_api_resources(product: RunningApp, sandbox: RunningSandbox) -> None:
    async with browser_session() as browser:
        await connect(browser, product)
    store = product.services.service.store

    async def reconciled() -> bool:
        return len(await store.results.query(check="offboarded-access-removed")) == 6

    await wait_for(reconciled, within=20)
    async with aiohttp.ClientSession(headers=AUTH) as api:
        base = product.url + "/api"
        async with api.post(
            base + "/personnel",
            json={
                "email": "carol@acme.example",
                "name": "Carol",
                "status": "active",
                "bitbucket_account_id": "557058:carol",
            },
        ) as r:
            assert r.status == 201
        await product.services.worker.drain()
        async with api.post(base + "/personnel/carol@acme.example/offboard", json={"offboarded_on": "2026-11-01"}) as r:
            assert r.status == 200
        await product.services.worker.drain()
        [carol] = [
            i
            for i in await (await api.get(base + "/findings?check=offboarded-access-removed")).json()
            if i["subject"] == "557058:carol"
        ]
        assert carol["status"] == "fail"  # offboarding re-evaluates at once
        async with api.put(
            base + "/members/acme/557058:cibot/mark", json={"mark": "service-account", "owner": "platform"}
        ) as r:
            assert r.status == 200
        await product.services.worker.drain()
        history = await (await api.get(base + "/findings/history?subject=557058:carol")).json()
        assert [h["new_status"] for h in history if h["check_id"] == "offboarded-access-removed"][-1] == "fail"
        repos = await (await api.get(base + "/repositories")).json()
        api_repo = next(r for r in repos if r["full_name"] == "acme/api")
        async with api.put(base + f"/repositories/{api_repo['uuid']}/class", json={"class": "production"}) as r:
            assert r.status == 200
        form = aiohttp.FormData()
        form.add_field("check", "workspace-mfa-enforced")
        form.add_field("workspace", "acme")
        form.add_field("file", b"%PDF-1.4 policy", filename="policy.pdf", content_type="application/pdf")
        async with api.post(base + "/evidence", data=form) as r:
            assert r.status == 201
            ev = await r.json()
        async with api.get(base + f"/evidence/{ev['id']}/file") as r:
            assert r.status == 200 and await r.read() == b"%PDF-1.4 policy"
        async with api.post(
            base + "/exceptions",
            json={
                "check": "repo-classified",
                "subject": "acme/web",
                "owner": "cto",
                "reason": "legacy",
                "expires": "2027-03-01",
            },
        ) as r:
            assert r.status == 201
            web_uuid = next(x["uuid"] for x in repos if x["full_name"] == "acme/web")
            assert (await r.json())["subject_key"] == web_uuid
        never = {
            "check": "repo-classified",
            "subject": "acme/nope",
            "owner": "o",
            "reason": "r",
            "expires": "2027-03-01",
        }
        async with api.post(base + "/exceptions", json=never) as r:
            assert r.status == 422 and "acme/nope" in (await r.json())["detail"]
        await product.services.worker.drain()

        async def settled() -> bool:  # drain() does not wait for a batch the background worker holds
            return not [e for e in await store.events.list(limit=20) if e.state in ("queued", "running")]

        await wait_for(settled)
        findings = {(i["check"], i["subject"]): i["status"] for i in await (await api.get(base + "/findings")).json()}
        assert findings[("offboarded-access-removed", "557058:cibot")] == "pass"
        assert findings[("repo-classified", "acme/api")] == "pass"
        assert findings[("workspace-mfa-enforced", "acme")] == "pass"
        assert findings[("repo-classified", "acme/web")] == "excepted"
        settings = await (await api.get(base + "/settings")).json()
        assert settings["admin_token"] == "set" and ADMIN not in json.dumps(settings)
        csv_text = await (await api.get(base + "/exports/findings.csv")).text()
        assert csv_text.splitlines()[0].startswith("workspace,check,severity")
        lines = (await (await api.get(base + "/exports/transitions.ocsf.jsonl")).text()).splitlines()
        first = json.loads(lines[0])
        assert first["class_uid"] == 2003 and first["type_uid"] == 200301 and first["compliance"]["control"]
        async with api.post(base + "/alerts/test") as r:
            assert (await r.json()) == {"slack": "sent"}
        async with api.post(base + "/connections/oauth-alice/disconnect") as r:
            assert (await r.json())["hooks_removed"] == 1
    assert not sandbox.sandbox.state.workspaces["acme"].hooks
    conn = await store.connections.get("oauth-alice")
    assert conn is not None and conn.tokens is None and conn.status == "disconnected"


def test_every_api_route_is_in_the_openapi_document() -> None:
    doc = document()
    app_routes = {
        (m, r.path)
        for r in routes()
        if isinstance(r, Route) and r.path.startswith("/api/") and r.path != "/api/openapi.json"
        for m in (r.methods or set()) - {"HEAD"}
    }
    documented = {(m.upper(), path) for path, ops in doc["paths"].items() for m in ops}
    assert app_routes == documented
    assert len(API_ROUTES) == len(documented)


def test_create_app_builds() -> None:
    from app.settings import Settings

    assert create_app(Settings.from_env({}, env_file=None)) is not None

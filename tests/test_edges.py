"""The product against Bitbucket's real edges (issue 13), each driven by the sandbox behaving as
Bitbucket does: permission is not scope, scopes as reported, the branching model as applied."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest

from app import errors
from app.bitbucket import oauth, sansio
from app.checks import scope_report
from app.notify.rules import how_to_fix
from app.queries import connections_data
from app.reconcile import reconcile_workspace
from app.sandbox.scenario import SAMPLE
from app.sandbox.serve import RunningSandbox, running_sandbox
from app.services import Services, build_services
from app.webhook_registration import ensure_hooks, health
from tests.helpers import product_settings

CHECKS = ("branch-protection-enforced", "merge-requires-peer-review", "merge-requires-passing-builds")


@pytest.fixture
async def services(sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path) -> AsyncIterator[Services]:
    settings = product_settings(
        sandbox.api,
        tmp_path,
        8999,
        LP_OAUTH_CLIENT_ID="sandbox-member-client",
        LP_OAUTH_CLIENT_SECRET="sandbox-member-secret",
    )
    s = await build_services(settings, session)
    try:
        yield s
    finally:
        await s.service.store.close()


async def _bob(services: Services, session: aiohttp.ClientSession) -> str:
    """An OAuth connection as bob: a workspace member whose consumer has repository:admin."""
    settings = services.service.settings
    url = oauth.authorize_url(settings.bitbucket_url, "sandbox-member-client", "st", "http://127.0.0.1:9/cb")
    async with session.get(url, allow_redirects=False) as resp:
        code = parse_qs(urlsplit(resp.headers["Location"]).query)["code"][0]
    tokens = await oauth.exchange_code(
        session, settings.bitbucket_url, "sandbox-member-client", "sandbox-member-secret", code, "http://127.0.0.1:9/cb"
    )
    await services.service.store.connections.upsert(
        "bob", "oauth", ("acme",), scopes=tokens.scopes, user={"display_name": "Bob Builder"}
    )
    await oauth.store_tokens(services.service, "bob", tokens)
    return "bob"


async def _not_admin_of_billing(session: aiohttp.ClientSession, sandbox: RunningSandbox) -> None:
    body = {"account_id": "557058:bob", "permission": "write"}
    async with session.post(sandbox.url + "/_sandbox/repos/acme/billing/set-repository-permission", json=body) as r:
        assert r.status == 200


# -- 1. permission is not scope -----------------------------------------------------------------
async def test_not_a_repository_admin_is_unknown_for_want_of_permission_not_scope(
    services: Services, sandbox: RunningSandbox, session: aiohttp.ClientSession
) -> None:
    await _not_admin_of_billing(session, sandbox)
    cid = await _bob(services, session)
    service = services.service
    client = await service.client(cid)
    with pytest.raises(errors.ForbiddenError) as info:
        await client.branch_restrictions("acme", "billing")
    assert info.value.kind == "permission" and info.value.required_scope is None

    await reconcile_workspace(client, service.store, service.settings, "acme")
    for check in CHECKS:
        by_repo = {r.result.subject: r.result for r in await service.store.results.query(check=check)}
        billing = by_repo["acme/billing"]
        assert billing.status == "unknown", check
        assert billing.details["reason"] == "permission_missing"
        assert "missing_scope" not in billing.details or billing.details["missing_scope"] is None
        assert "not an admin of this repository" in billing.message and "lacks the" not in billing.message
        assert by_repo["acme/api"].status in ("pass", "fail")  # bob administers the others
        assert "admin of the repository" in how_to_fix(billing)  # what an alert tells to do
    pipelines = {r.result.subject: r.result for r in await service.store.results.query(check="pipelines-enabled")}
    if pipelines:
        assert pipelines["acme/billing"].details["reason"] == "permission_missing"

    [conn] = await connections_data(services)
    admin = next(s for s in conn["scope_report"] if s["scope"] == "repository:admin")
    assert admin["granted"] is True and admin["tests_left_unknown"] == []  # the scope is there...
    assert admin["not_admin_of"] == ["acme/billing"]  # ...the permission is not
    assert set(CHECKS) <= set(admin["tests_left_unknown_for_permission"])


async def test_the_connections_page_tells_permission_from_scope(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    from app.sandbox.serve import free_port
    from tests.helpers import ADMIN, running_app

    port = free_port()
    settings = product_settings(
        sandbox.api,
        tmp_path,
        port,
        LP_OAUTH_CLIENT_ID="sandbox-member-client",
        LP_OAUTH_CLIENT_SECRET="sandbox-member-secret",
        LP_BITBUCKET_TOKEN="",
        LP_WORKSPACES="",
    )
    await _not_admin_of_billing(session, sandbox)
    async with running_app(settings, port, session, background=False) as app:
        service = app.services.service
        cid = await _bob(app.services, session)
        await reconcile_workspace(await service.client(cid), service.store, service.settings, "acme")
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
            await browser.post(app.url + "/login", data={"token": ADMIN, "next": "/connections"})
            async with browser.get(app.url + "/connections") as resp:
                page = await resp.text()
    assert "Permission missing, not a scope" in page and "acme/billing" in page
    assert "Bob Builder is not an admin of 1 repository" in page


async def test_repository_hook_fallback_skips_repositories_it_cannot_administer(
    services: Services, sandbox: RunningSandbox, session: aiohttp.ClientSession
) -> None:
    await _not_admin_of_billing(session, sandbox)
    cid = await _bob(services, session)
    conn = await services.service.store.connections.get(cid)
    assert conn is not None
    state = await ensure_hooks(services.service, conn)  # bob is no owner: repository hooks
    by_repo = {e["repository"]: e for e in state}
    assert by_repo["acme/billing"]["action"] == "skipped"
    assert by_repo["acme/billing"]["reason"] == "not an admin of this repository"
    assert {e["action"] for r, e in by_repo.items() if r != "acme/billing"} == {"created"}
    repos = sandbox.sandbox.state.workspaces["acme"].repos
    assert not repos["billing"].hooks and all(r.hooks for s, r in repos.items() if s != "billing")
    conn = await services.service.store.connections.get(cid)
    assert conn is not None
    status = await health(services.service, conn)
    assert status["status"] == "partial" and status["skipped"] == ["acme/billing"]
    assert status["hooks"] == len(repos) - 1
    # the next check changes nothing and still does not crash
    assert {e["action"] for e in await ensure_hooks(services.service, conn)} == {"ok", "skipped"}


# -- 5. scopes as Bitbucket reports them ----------------------------------------------------------
@pytest.mark.parametrize(
    ("headers", "body", "kind", "scope"),
    [
        # scope headers missing: detail.required says what was wanted
        (
            {},
            {
                "message": "Your credentials lack one or more required privilege scopes.",
                "detail": {"required": ["repository:admin"], "granted": ["repository"]},
            },
            "scope",
            "repository:admin",
        ),
        # the scope is granted: a 403 about the user's permission, no scope guessed
        (
            {"X-Accepted-OAuth-Scopes": "repository:admin", "X-OAuth-Scopes": "account, repository:admin"},
            {"message": "Bob Builder does not have admin access to the repository."},
            "permission",
            None,
        ),
        ({}, {"message": "Bob Builder does not have admin access to the repository."}, "permission", None),
        # pullrequest implies repository, so a 403 on a repository endpoint is not about that scope
        (
            {"X-Accepted-OAuth-Scopes": "repository", "X-OAuth-Scopes": "pullrequest"},
            {"message": "Access denied"},
            "permission",
            None,
        ),
        (
            {"X-Accepted-OAuth-Scopes": "repository:admin", "X-OAuth-Scopes": "pullrequest"},
            {"message": "Your credentials lack one or more required privilege scopes."},
            "scope",
            "repository:admin",
        ),
        # a scope 403 with nothing naming the scope: never guessed
        ({}, {"message": "Your credentials lack one or more required privilege scopes."}, "scope", None),
    ],
)
def test_a_403_tells_scope_from_permission(
    headers: dict[str, str], body: dict[str, Any], kind: str, scope: str | None
) -> None:
    data = json.dumps({"type": "error", "error": body}).encode()
    with pytest.raises(errors.ForbiddenError) as info:
        sansio.raise_for_status(403, headers, data, "branch_restrictions")
    assert (info.value.kind, info.value.required_scope) == (kind, scope)


def test_scope_implications_are_applied() -> None:
    assert sansio.expand_scopes(["pullrequest:write"]) >= {"pullrequest", "repository", "repository:write"}
    assert sansio.expand_scopes(["repository:admin"]) == {"repository:admin"}  # implies nothing
    report = {r["scope"]: r for r in scope_report(["pullrequest", "repository:admin", "account"], CHECKS)}
    assert report["repository"]["granted"] is True and report["repository"]["tests_left_unknown"] == []


async def test_client_reads_scopes_unexpanded_and_names_the_missing_one() -> None:
    data = json.loads(SAMPLE.read_text())
    data["credentials"].append(
        {"type": "access_token", "name": "pr", "token": "pr-token", "workspace": "acme", "scopes": ["pullrequest"]}
    )
    async with running_sandbox(data) as sb, aiohttp.ClientSession() as session:
        from app.bitbucket.client import BitbucketClient, Budget, StaticToken

        client = BitbucketClient(session, StaticToken("pr-token"), api_url=sb.api, budget=Budget(1000))
        assert {r.slug for r in await client.repositories("acme")} >= {"api", "billing"}
        assert client.granted_scopes == {"pullrequest"}
        with pytest.raises(errors.ForbiddenError) as info:
            await client.branch_restrictions("acme", "api")
        assert (info.value.kind, info.value.required_scope) == ("scope", "repository:admin")
        report = {r["scope"]: r for r in scope_report(client.granted_scopes, CHECKS)}
        assert report["repository"]["granted"] is True
        assert report["repository:admin"]["granted"] is False


# -- 4. branching model as applied ------------------------------------------------------------------
async def test_a_branching_model_inherited_from_the_project_is_used(tmp_path: Path) -> None:
    data = json.loads(SAMPLE.read_text())
    ws = data["workspaces"][0]
    # CORE's model makes the main branch the production branch; billing has no model of its own and
    # protects "the production branch" only through the branching model.
    ws["projects"][0]["branching_model"] = {
        "development": {"use_mainbranch": True},
        "production": {"use_mainbranch": True, "enabled": True},
    }
    billing = next(r for r in ws["repositories"] if r["slug"] == "billing")
    billing["branch_restrictions"] = [
        {"kind": kind, "branch_match_kind": "branching_model", "branch_type": "production", "value": value}
        for kind, value in (
            ("force", None),
            ("delete", None),
            ("push", None),
            ("require_approvals_to_merge", 2),
            ("require_passing_builds_to_merge", 1),
        )
    ]
    async with running_sandbox(data) as sb, aiohttp.ClientSession() as session:
        settings = product_settings(sb.api, tmp_path, 8999)
        services = await build_services(settings, session)
        try:
            service = services.service
            conn = await service.ensure_token_connection()
            assert conn is not None
            client = await service.client(conn.id)
            model = await client.branching_model("acme", "billing")
            assert model.production_enabled and model.production_use_mainbranch
            await reconcile_workspace(client, service.store, settings, "acme")
            for check in CHECKS:
                [result] = [
                    r.result
                    for r in await service.store.results.query(check=check)
                    if r.result.subject == "acme/billing"
                ]
                assert result.status == "pass", (check, result.message)
            assert any("effective-branching-model" in r["path"] for r in sb.sandbox.requests)
        finally:
            await services.service.store.close()


# -- 7. token endpoint faults ------------------------------------------------------------------------
async def _no_sleep(_: float) -> None:
    return None


@pytest.fixture
async def quick(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Services, list[str]]]:
    """Services whose retries do not wait, with the 'broken' alerts they raise."""
    monkeypatch.setattr(oauth, "REFRESH_RETRY_DELAYS", (0.0, 0.0), raising=False)
    settings = product_settings(
        sandbox.api,
        tmp_path,
        8999,
        LP_OAUTH_CLIENT_ID="sandbox-member-client",
        LP_OAUTH_CLIENT_SECRET="sandbox-member-secret",
    )
    s = await build_services(settings, session, sleep=_no_sleep, max_attempts=3)
    alerts: list[str] = []

    async def on_broken(conn_id: str, reason: str) -> None:
        alerts.append(f"{conn_id}: {reason}")

    s.service.on_broken = on_broken
    try:
        yield s, alerts
    finally:
        await s.service.store.close()


def _token_calls(sandbox: RunningSandbox) -> list[int]:
    return [r["status"] for r in sandbox.sandbox.requests if r["path"] == "/site/oauth2/access_token"]


async def test_a_transient_token_endpoint_failure_is_retried_and_breaks_nothing(
    quick: tuple[Services, list[str]], sandbox: RunningSandbox, session: aiohttp.ClientSession
) -> None:
    services, alerts = quick
    cid = await _bob(services, session)
    service = services.service
    client = await service.client(cid)
    await session.post(sandbox.url + "/_sandbox/tokens/expire")
    sandbox.sandbox.requests.clear()
    for status in (503, 504, 429):  # 504: the gateway timed out
        sandbox.sandbox.faults.force_status = {"access_token": status}
        with pytest.raises(errors.TransientError):
            await client.current_user()
        calls = _token_calls(sandbox)
        assert len(calls) >= 3 and set(calls) == {status}  # retried
        conn = await service.store.connections.get(cid)
        assert conn is not None and conn.status == "active" and conn.status_reason is None
        assert alerts == []
        sandbox.sandbox.requests.clear()
    sandbox.sandbox.faults.force_status = {}
    # Bitbucket is back: the same refresh token still works
    assert (await client.current_user()).account_id == "557058:bob"
    assert _token_calls(sandbox) == [200]


async def test_a_token_endpoint_that_times_out_or_is_down_is_transient(
    session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from app.sandbox.serve import free_port

    monkeypatch.setattr(oauth, "TOKEN_TIMEOUT", 0.2)

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        await asyncio.sleep(5)  # never answers within the timeout
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(oauth.TokenEndpointUnavailable, match="TimeoutError"):
            await oauth.refresh(session, f"http://127.0.0.1:{port}", "id", "secret", "r")
    finally:
        server.close()
    with pytest.raises(oauth.TokenEndpointUnavailable):  # nothing listens there
        await oauth.refresh(session, f"http://127.0.0.1:{free_port()}", "id", "secret", "r")


async def test_only_invalid_grant_breaks_and_a_later_refresh_clears_it(
    quick: tuple[Services, list[str]], sandbox: RunningSandbox, session: aiohttp.ClientSession
) -> None:
    services, alerts = quick
    cid = await _bob(services, session)
    service = services.service
    client = await service.client(cid)
    # a refused grant other than invalid_grant/invalid_client does not break the connection
    sandbox.sandbox.faults.force_status = {"access_token": 400}
    await session.post(sandbox.url + "/_sandbox/tokens/expire")
    with pytest.raises(errors.AuthError):
        await client.current_user()
    conn = await service.store.connections.get(cid)
    assert conn is not None and conn.status == "active" and alerts == []
    sandbox.sandbox.faults.force_status = {}
    # a connection marked broken earlier is active again after a successful refresh
    await service.store.connections.set_status(cid, "broken", "token refresh failed: earlier")
    assert (await client.current_user()).account_id == "557058:bob"
    conn = await service.store.connections.get(cid)
    assert conn is not None and conn.status == "active" and conn.status_reason is None
    # invalid_grant: broken, alerted
    await session.post(sandbox.url + "/_sandbox/tokens/revoke")
    with pytest.raises(errors.AuthError):
        await client.current_user()
    conn = await service.store.connections.get(cid)
    assert conn is not None and conn.status == "broken" and "invalid_grant" in (conn.status_reason or "")
    assert len(alerts) == 1 and "invalid_grant" in alerts[0]


# -- 6. payloads and headers as recorded ---------------------------------------------------------------
async def test_a_delivery_names_the_hook_as_the_rest_api_does(
    sandbox: RunningSandbox, session: aiohttp.ClientSession
) -> None:
    from tests.helpers import Receiver
    from tests.sandbox.test_actions import SECRET, _hook

    async with Receiver() as rx:
        registered = await _hook(session, sandbox, rx.url + "/h", ["repo:push"])
        async with session.post(sandbox.url + "/_sandbox/repos/acme/api/delete-branch", json={"name": "develop"}) as r:
            assert r.status == 200
    [delivered] = rx.received
    assert delivered.headers["X-Hook-UUID"] == registered.strip("{}")  # bare on the wire
    sansio.verify_signature([SECRET], delivered.body, delivered.headers["X-Hub-Signature"])
    d = sansio.parse_delivery(delivered.headers, delivered.body)
    assert d.hook_uuid == registered  # braced, as the hook list and our records have it
    assert d.branches_deleted == ("develop",) and d.workspace == "acme"  # condensed repository, no commits
    assert "commits" not in json.loads(delivered.body)["push"]["changes"][0]


async def test_a_token_still_valid_is_used_while_the_token_endpoint_is_down(
    quick: tuple[Services, list[str]], sandbox: RunningSandbox, session: aiohttp.ClientSession
) -> None:
    import dataclasses
    from datetime import UTC, datetime, timedelta

    services, alerts = quick
    cid = await _bob(services, session)
    service = services.service
    source = service.token_source(cid)
    assert isinstance(source, oauth.StoredOAuthTokens)
    tokens = await source._load()
    soon = dataclasses.replace(tokens, expires_at=datetime.now(UTC) + timedelta(seconds=120))  # inside the margin
    await oauth.store_tokens(service, cid, soon)
    source._cached = None
    sandbox.sandbox.requests.clear()
    sandbox.sandbox.faults.force_status = {"access_token": 503}
    user = await (await service.client(cid)).current_user()
    assert user.account_id == "557058:bob"  # the current token still works
    assert _token_calls(sandbox) == [503, 503, 503]  # a refresh was tried, and failed transiently
    conn = await service.store.connections.get(cid)
    assert conn is not None and conn.status == "active" and alerts == []


async def test_connecting_while_the_token_endpoint_is_down_says_so(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    from app.sandbox.serve import free_port
    from tests.helpers import running_app
    from tests.web.test_connect_api import OAUTH, authorize, browser_session, login

    port = free_port()
    settings = product_settings(sandbox.api, tmp_path, port, **OAUTH)
    async with running_app(settings, port, session, background=False) as app, browser_session() as browser:
        await login(browser, app)
        callback = await authorize(browser, app)
        sandbox.sandbox.faults.force_status = {"access_token": 503}
        async with browser.get(callback, allow_redirects=False) as r:
            assert r.status == 502 and "Bitbucket is unavailable" in await r.text()
        assert await app.services.service.store.connections.all() == []


async def test_without_scope_headers_the_403_detail_names_the_scope(
    sandbox: RunningSandbox, session: aiohttp.ClientSession
) -> None:
    from app.bitbucket.client import BitbucketClient, Budget, StaticToken
    from tests.conftest import READONLY_TOKEN

    async with session.post(sandbox.url + "/_sandbox/settings", json={"scope_headers": False}) as r:
        assert (await r.json())["scope_headers"] is False
    client = BitbucketClient(session, StaticToken(READONLY_TOKEN), api_url=sandbox.api, budget=Budget(1000))
    await client.repositories("acme")
    assert client.granted_scopes is None  # Bitbucket did not say
    with pytest.raises(errors.ForbiddenError) as info:
        await client.branch_restrictions("acme", "api")
    assert (info.value.kind, info.value.required_scope) == ("scope", "repository:admin")

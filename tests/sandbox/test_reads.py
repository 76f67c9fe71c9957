"""The client against the running sandbox over loopback, for every read; SPEC conformance."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from app import errors
from app.sandbox.serve import RunningSandbox
from tests.conftest import READONLY_TOKEN, TOKEN
from tests.helpers import response_schema, validate

AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def test_every_read(client_for: Any) -> None:
    client = client_for()
    workspaces = await client.workspaces()
    assert [w.slug for w in workspaces] == ["acme"]
    user = await client.current_user()
    assert user.uuid
    repos = {r.slug: r for r in await client.repositories("acme")}
    assert set(repos) == {"api", "web", "billing", "docs", "playground", "empty-repo"}
    assert repos["api"].mainbranch == "main" and repos["api"].project_key == "CORE"
    assert repos["empty-repo"].mainbranch is None
    assert repos["docs"].is_private is False and repos["billing"].mainbranch == "master"
    one = await client.repository("acme", "api")
    assert one.uuid == repos["api"].uuid
    by_uuid = await client.repository("acme", repos["api"].uuid)
    assert by_uuid.full_name == "acme/api"

    restrictions = await client.branch_restrictions("acme", "api")
    kinds = {r.kind for r in restrictions}
    assert {"force", "delete", "push", "require_approvals_to_merge", "enforce_merge_checks"} <= kinds
    push = next(r for r in restrictions if r.kind == "push")
    assert push.users == ("ci-bot",) and push.groups == ("release-managers",)
    approvals = next(r for r in restrictions if r.kind == "require_approvals_to_merge")
    assert approvals.value == 2 and approvals.pattern == "main"

    model = await client.branching_model("acme", "web")
    assert model.development_use_mainbranch and model.development_name == "main"
    assert not model.production_enabled
    docs_model = await client.branching_model("acme", "docs")
    assert docs_model.production_name == "main"

    assert (await client.pipelines_config("acme", "api")).enabled is True
    assert (await client.pipelines_config("acme", "web")).enabled is False
    never = await client.pipelines_config("acme", "billing")
    assert never.configured is False and never.enabled is False

    last = await client.latest_pipeline("acme", "api", "main")
    assert last is not None and last.build_number == 42 and last.result == "FAILED"
    assert await client.latest_pipeline("acme", "web", "main") is None

    assert await client.open_pullrequest_count("acme", "api") == 2
    assert await client.open_pullrequest_count("acme", "web") == 0

    members = await client.members("acme")
    assert len(members) == 6 and all(m.email is None for m in members)
    by_email = await client.members_by_email("acme", ["Carol@acme.example", "nobody@x.example"])
    assert set(by_email) == {"carol@acme.example"}
    assert by_email["carol@acme.example"].account_id == "557058:carol"

    events = await client.hook_events("workspace")
    assert "repo:push" in events and "repo:created" in events
    assert "repo:created" not in await client.hook_events("repository")
    assert client.granted_scopes is not None and "repository:admin" in client.granted_scopes
    assert client.rate_limit is not None and client.rate_limit.limit == 1000


async def test_access_tokens_cannot_read_permissions(client_for: Any) -> None:
    with pytest.raises(errors.ForbiddenError):
        await client_for().permissions("acme")


async def test_missing_admin_scope_is_403_naming_it(client_for: Any) -> None:
    client = client_for(READONLY_TOKEN)
    with pytest.raises(errors.ForbiddenError) as info:
        await client.branch_restrictions("acme", "api")
    assert info.value.required_scope == "repository:admin"
    with pytest.raises(errors.ForbiddenError) as info:
        await client.pipelines_config("acme", "api")
    assert info.value.required_scope == "repository:admin"
    assert len(await client.repositories("acme")) == 6  # what the scopes do allow still works


async def test_full_read_costs_the_minimum(client_for: Any, sandbox: RunningSandbox) -> None:
    client = client_for()
    repos = await client.repositories("acme")
    for r in repos:
        await client.branch_restrictions("acme", r.slug)
    assert client.calls() == 1 + len(repos)
    assert len(sandbox.sandbox.requests) == client.calls()


async def test_webhooks_crud(client_for: Any) -> None:
    client = client_for()
    hook = await client.create_workspace_hook("acme", "https://example.com/h", ["repo:push"], "s3cret")
    assert hook.secret_set is True and hook.events == ("repo:push",) and hook.subject_type == "workspace"
    listed = await client.workspace_hooks("acme")
    assert [h.uuid for h in listed] == [hook.uuid]
    updated = await client.update_workspace_hook(
        "acme", hook.uuid, "https://example.com/h2", ["repo:push", "repo:updated"], None, active=False
    )
    assert updated.url.endswith("/h2") and not updated.active and updated.secret_set is True
    await client.delete_workspace_hook("acme", hook.uuid)
    assert await client.workspace_hooks("acme") == []
    rhook = await client.create_repository_hook("acme", "api", "https://example.com/r", ["repo:push"], "x")
    assert [h.uuid for h in await client.repository_hooks("acme", "api")] == [rhook.uuid]
    await client.update_repository_hook("acme", "api", rhook.uuid, "https://example.com/r", ["repo:updated"], "y")
    await client.delete_repository_hook("acme", "api", rhook.uuid)
    with pytest.raises(errors.NotFoundError):
        await client.delete_repository_hook("acme", "api", rhook.uuid)


# -- SPEC conformance: every response the client uses, validated against openapi.json ---------
CASES = [
    ("/user/workspaces", "/user/workspaces", "200"),
    ("/user", "/user", "200"),
    ("/repositories/acme?pagelen=2", "/repositories/{workspace}", "200"),
    ("/repositories/acme/api", "/repositories/{workspace}/{repo_slug}", "200"),
    ("/repositories/acme/empty-repo", "/repositories/{workspace}/{repo_slug}", "200"),
    ("/repositories/acme/api/branch-restrictions", "/repositories/{workspace}/{repo_slug}/branch-restrictions", "200"),
    ("/repositories/acme/docs/branching-model", "/repositories/{workspace}/{repo_slug}/branching-model", "200"),
    ("/repositories/acme/web/branching-model", "/repositories/{workspace}/{repo_slug}/branching-model", "200"),
    ("/repositories/acme/api/pipelines_config", "/repositories/{workspace}/{repo_slug}/pipelines_config", "200"),
    (
        "/repositories/acme/api/pipelines?target.branch=main&sort=-created_on&pagelen=1",
        "/repositories/{workspace}/{repo_slug}/pipelines",
        "200",
    ),
    (
        "/repositories/acme/api/pullrequests?state=OPEN&pagelen=50",
        "/repositories/{workspace}/{repo_slug}/pullrequests",
        "200",
    ),
    ("/workspaces/acme/members", "/workspaces/{workspace}/members", "200"),
    (
        '/workspaces/acme/members?q=user.email IN ("bob@acme.example")&fields=%2Bvalues.user.email',
        "/workspaces/{workspace}/members",
        "200",
    ),
    ("/hook_events/workspace", "/hook_events/{subject_type}", "200"),
    ("/workspaces/acme/hooks", "/workspaces/{workspace}/hooks", "200"),
    ("/repositories/acme/api/hooks", "/repositories/{workspace}/{repo_slug}/hooks", "200"),
    ("/repositories/acme/nope", "/repositories/{workspace}/{repo_slug}", "404"),
    ("/workspaces/acme/hooks/%7Bnope%7D", "/workspaces/{workspace}/hooks/{uid}", "404"),
]


@pytest.mark.parametrize(("url", "spec_path", "status"), CASES)
async def test_responses_match_the_openapi_document(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, url: str, spec_path: str, status: str
) -> None:
    async with session.get(sandbox.api + url, headers=AUTH) as resp:
        assert resp.status == int(status)
        body = await resp.json()
    validate(body, response_schema(spec_path, "get", status))


async def test_created_hook_matches_the_openapi_document(
    sandbox: RunningSandbox, session: aiohttp.ClientSession
) -> None:
    body = {"description": "d", "url": "https://example.com/x", "active": True, "events": ["repo:push"], "secret": "s"}
    async with session.post(sandbox.api + "/workspaces/acme/hooks", json=body, headers=AUTH) as resp:
        assert resp.status == 201
        created = await resp.json()
    validate(created, response_schema("/workspaces/{workspace}/hooks", "post", "201"))
    assert "secret" not in created and created["secret_set"] is True


# -- bad input answered like Bitbucket ---------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "url", "headers", "body", "status", "content_type"),
    [
        ("GET", "/repositories/acme", {}, None, 401, "application/json"),
        ("GET", "/repositories/acme", {"Authorization": "Bearer wrong"}, None, 401, "application/json"),
        ("GET", "/repositories/acme?pagelen=101", AUTH, None, 400, "application/json"),
        ("GET", "/repositories/acme/api/pullrequests?pagelen=51", AUTH, None, 400, "application/json"),
        ("GET", "/repositories/acme/api/pullrequests?pagelen=abc", AUTH, None, 400, "application/json"),
        ("GET", "/repositories/nope", AUTH, None, 404, "application/json"),
        ("GET", "/repositories/acme/api/src", AUTH, None, 404, "application/json"),
        (
            "POST",
            "/workspaces/acme/hooks",
            AUTH,
            {"url": "not a url", "events": ["repo:push"]},
            400,
            "application/json",
        ),
        (
            "POST",
            "/workspaces/acme/hooks",
            AUTH,
            {"url": "https://x.example", "events": ["nope"]},
            400,
            "application/json",
        ),
        ("POST", "/workspaces/acme/hooks", AUTH, {"url": "https://x.example", "events": []}, 400, "application/json"),
        (
            "POST",
            "/repositories/acme/api/hooks",
            AUTH,
            {"url": "https://x.example", "events": ["repo:created"]},
            400,
            "application/json",
        ),
        (
            "GET",
            "/workspaces/acme/members?q=" + "user.email IN (" + ",".join(f'"u{i}@x"' for i in range(91)) + ")",
            AUTH,
            None,
            400,
            "application/json",
        ),
    ],
)
async def test_bad_input_answered_like_bitbucket(
    sandbox: RunningSandbox,
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    headers: dict[str, str],
    body: Any,
    status: int,
    content_type: str,
) -> None:
    async with session.request(method, sandbox.api + url, headers=headers, json=body) as resp:
        assert resp.status == status
        assert resp.content_type == content_type
        data = await resp.json()
    assert data["type"] == "error" and data["error"]["message"]
    validate(data, {"$ref": "#/components/schemas/error"})


async def test_rate_limit_is_a_plain_text_429(sandbox: RunningSandbox, session: aiohttp.ClientSession) -> None:
    sandbox.sandbox.state.rate_limit_per_hour = 3
    statuses = []
    for _ in range(4):
        async with session.get(sandbox.api + "/repositories/acme", headers=AUTH) as resp:
            statuses.append(resp.status)
            last_headers, last_body, ctype = resp.headers, await resp.text(), resp.content_type
    assert statuses == [200, 200, 200, 429]
    assert ctype == "text/plain" and last_body == "Rate limit for this resource has been exceeded"
    assert last_headers["X-RateLimit-Limit"] == "3" and last_headers["X-RateLimit-NearLimit"] == "true"
    assert "Retry-After" not in last_headers


async def test_client_rides_out_injected_faults(client_for: Any, sandbox: RunningSandbox) -> None:
    sandbox.sandbox.faults.force_429 = 2
    sandbox.sandbox.faults.retry_after = 0
    client = client_for()
    assert len(await client.repositories("acme")) == 6
    assert client.counters[("repositories", "429")] == 2
    sandbox.sandbox.faults.force_429 = 0
    sandbox.sandbox.faults.error_rate = 1.0
    with pytest.raises(errors.ServerError):
        await client_for(max_attempts=2).repository("acme", "api")
    sandbox.sandbox.faults.error_rate = 0.0
    sandbox.sandbox.faults.timeout_rate = 1.0
    sandbox.sandbox.faults.timeout_seconds = 1.0
    with pytest.raises(errors.TransportError):
        await client_for(max_attempts=1, timeout=0.2).repository("acme", "api")

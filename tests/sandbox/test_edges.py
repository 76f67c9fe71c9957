"""The sandbox behaves like real Bitbucket where it used to be kinder (issue 13): repository
permissions apart from scopes, scopes as reported, effective branching models, recorded webhook
shapes and headers, small pages, faults on the token endpoint."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from app.sandbox.scenario import SAMPLE
from app.sandbox.serve import RunningSandbox, running_sandbox
from tests.conftest import TOKEN, fixture
from tests.helpers import Receiver, response_schema, validate
from tests.sandbox.test_actions import SECRET, _hook, _oauth_token

AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def _act(session: aiohttp.ClientSession, sb: RunningSandbox, path: str, body: dict[str, Any]) -> Any:
    async with session.post(f"{sb.url}/_sandbox/{path}", json=body) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def _bob(session: aiohttp.ClientSession, sb: RunningSandbox) -> dict[str, str]:
    token = await _oauth_token(session, sb, "sandbox-member-client", "sandbox-member-secret")
    return {"Authorization": f"Bearer {token['access_token']}"}


# -- 1. permission is not scope ---------------------------------------------------------------
async def test_repository_admin_scope_without_admin_permission_is_403(
    sandbox: RunningSandbox, session: aiohttp.ClientSession
) -> None:
    headers = await _bob(session, sandbox)  # bob's consumer has repository:admin
    await _act(
        session,
        sandbox,
        "repos/acme/billing/set-repository-permission",
        {"account_id": "557058:bob", "permission": "write"},
    )
    for path in ("branch-restrictions", "pipelines_config", "hooks"):
        async with session.get(f"{sandbox.api}/repositories/acme/billing/{path}", headers=headers) as resp:
            body = await resp.json()
            assert resp.status == 403, path
            assert body["type"] == "error"
            assert body["error"]["message"].endswith("does not have admin access to the repository.")
            assert "detail" not in body["error"]  # not a scope 403: nothing is required or granted
            assert "repository:admin" in resp.headers["X-OAuth-Scopes"]
    async with session.get(f"{sandbox.api}/repositories/acme/billing", headers=headers) as resp:
        assert resp.status == 200  # write (and read) still see the repository
    async with session.get(f"{sandbox.api}/repositories/acme/api/branch-restrictions", headers=headers) as resp:
        assert resp.status == 200  # admin of the others by the workspace default
    await _act(
        session,
        sandbox,
        "repos/acme/billing/set-repository-permission",
        {"account_id": "557058:bob", "permission": "admin"},
    )
    async with session.get(f"{sandbox.api}/repositories/acme/billing/branch-restrictions", headers=headers) as resp:
        assert resp.status == 200


async def test_scenario_permissions_and_workspace_default() -> None:
    data = json.loads(SAMPLE.read_text())
    ws = data["workspaces"][0]
    ws["default_repository_permission"] = "read"
    ws["repositories"][0]["permissions"] = {"557058:bob": "admin"}  # api
    async with running_sandbox(data) as sb, aiohttp.ClientSession() as session:
        headers = await _bob(session, sb)
        statuses = {}
        for slug in ("api", "web"):
            async with session.get(f"{sb.api}/repositories/acme/{slug}/branch-restrictions", headers=headers) as resp:
                statuses[slug] = resp.status
        assert statuses == {"api": 200, "web": 403}


# -- 5. scopes as Bitbucket reports them ------------------------------------------------------
async def test_scopes_header_is_unexpanded_and_a_scope_403_names_required_and_granted() -> None:
    data = json.loads(SAMPLE.read_text())
    data["credentials"].append(
        {
            "type": "access_token",
            "name": "pr-only",
            "token": "pr-only-token",
            "workspace": "acme",
            "scopes": ["pullrequest"],
        }
    )
    async with running_sandbox(data) as sb, aiohttp.ClientSession() as session:
        headers = {"Authorization": "Bearer pr-only-token"}
        async with session.get(f"{sb.api}/repositories/acme", headers=headers) as resp:
            assert resp.status == 200  # pullrequest implies repository...
            assert resp.headers["X-OAuth-Scopes"] == "pullrequest"  # ...but the header does not say so
        async with session.get(f"{sb.api}/repositories/acme/api/branch-restrictions", headers=headers) as resp:
            body = await resp.json()
        assert resp.status == 403
        assert body["error"]["detail"] == {"required": ["repository:admin"], "granted": ["pullrequest"]}
        assert body["error"]["message"] == "Your credentials lack one or more required privilege scopes."


# -- 4. branching model as applied -----------------------------------------------------------
async def test_effective_branching_model_inherits_the_project_model() -> None:
    data = json.loads(SAMPLE.read_text())
    project = data["workspaces"][0]["projects"][0]  # CORE: api, web, billing, empty-repo
    project["branching_model"] = {
        "development": {"use_mainbranch": True},
        "production": {"name": "release/1.0", "enabled": True},
    }
    async with running_sandbox(data) as sb, aiohttp.ClientSession() as session:

        async def get(path: str) -> Any:
            async with session.get(f"{sb.api}/repositories/acme/{path}", headers=AUTH) as resp:
                assert resp.status == 200, await resp.text()
                return await resp.json()

        billing = await get("billing/effective-branching-model")
        validate(billing, response_schema("/repositories/{workspace}/{repo_slug}/effective-branching-model"))
        assert billing["production"]["name"] == "release/1.0"
        assert billing["production"]["branch"]["name"] == "release/1.0"
        assert billing["development"]["name"] == "master"  # the project's use_mainbranch, resolved per repository
        assert "production" not in await get("billing/branching-model")  # the repository's own settings
        web = await get("web/effective-branching-model")
        assert "production" not in web  # web has a model of its own: it wins
        assert "production" not in await get("playground/effective-branching-model")  # SAND has none
        await _act(session, sb, "workspaces/acme/set-project-branching-model", {"key": "CORE", "model": None})
        assert "production" not in await get("billing/effective-branching-model")


# -- 6. payloads and headers as recorded -----------------------------------------------------
def _keys(d: dict[str, Any]) -> set[str]:
    return set(d)


async def test_webhook_payloads_have_the_recorded_shapes(
    sandbox: RunningSandbox, session: aiohttp.ClientSession
) -> None:
    bodies: dict[str, dict[str, Any]] = {}
    async with Receiver() as rx:
        await _hook(session, sandbox, rx.url + "/h", ["repo:push", "pullrequest:created", "pullrequest:fulfilled"])
        steps = [
            ("push", "repos/acme/api/push", {}),
            ("create", "repos/acme/api/create-branch", {"name": "feature/shape"}),
            ("delete", "repos/acme/api/delete-branch", {"name": "feature/shape"}),
            ("tag", "repos/acme/api/push-tag", {"name": "v1.0"}),
            ("pr_created", "repos/acme/api/open-pr", {"source": "develop"}),
        ]
        for name, path, body in steps:
            before = len(rx.received)
            result = await _act(session, sandbox, path, body)
            bodies[name] = json.loads(rx.received[before].body)
            if name == "pr_created":
                await _act(session, sandbox, "repos/acme/api/merge-pr", {"id": result["pullrequest"]})
                bodies["pr_fulfilled"] = json.loads(rx.received[before + 1].body)
        for r in rx.received:
            assert "{" not in r.headers["X-Hook-UUID"] and len(r.headers["X-Hook-UUID"]) == 36
            assert r.headers["X-Event-Time"].endswith("GMT")

    recorded = {
        "push": "push_drone-go-scm_testdata.json",
        "create": "push_branch_create_drone-go-scm_testdata.json",
        "delete": "push_branch_delete_drone-go-scm_testdata.json",
        "tag": "push_tag_create_drone-go-scm_testdata.json",
        "pr_created": "pr_created_drone-go-scm_testdata.json",
        "pr_fulfilled": "pr_fulfilled_drone-go-scm_testdata.json",
    }
    for name, file in recorded.items():
        ours, theirs = bodies[name], fixture("webhooks/" + file)
        assert _keys(ours) == _keys(theirs), name
        assert _keys(ours["repository"]) == _keys(theirs["repository"]), name  # condensed, not the REST object
        assert _keys(ours["actor"]) - {"nickname"} <= _keys(theirs["actor"]) | {"nickname"}, name
        if "push" in theirs:
            mine, real = ours["push"]["changes"][0], theirs["push"]["changes"][0]
            assert _keys(mine) == _keys(real), name
            for side in ("new", "old"):
                if real[side] is None:
                    assert mine[side] is None, (name, side)
                else:
                    assert _keys(mine[side]) == _keys(real[side]), (name, side)
                    assert _keys(mine[side]["target"]) == _keys(real[side]["target"]), (name, side)
            if "commits" in real:
                assert _keys(mine["commits"][0]) == _keys(real["commits"][0]), name
        else:
            mine_pr, real_pr = ours["pullrequest"], theirs["pullrequest"]
            assert _keys(mine_pr) == _keys(real_pr), name
            for side in ("source", "destination"):
                assert _keys(mine_pr[side]) == _keys(real_pr[side])
                assert _keys(mine_pr[side]["repository"]) == _keys(real_pr[side]["repository"])
    assert "commits" not in bodies["delete"]["push"]["changes"][0]
    assert bodies["tag"]["push"]["changes"][0]["new"]["type"] == "tag"


async def test_listed_pull_requests_have_the_recorded_shape(
    sandbox: RunningSandbox, session: aiohttp.ClientSession
) -> None:
    async with session.get(f"{sandbox.api}/repositories/acme/api/pullrequests", headers=AUTH) as resp:
        ours = (await resp.json())["values"][0]
    theirs = fixture("api/list-pullrequests_atlassian-python-api_tests.json")["values"][0]
    assert _keys(ours) == _keys(theirs)


async def test_tag_push_is_a_push_of_a_tag_the_product_ignores(
    sandbox: RunningSandbox, session: aiohttp.ClientSession
) -> None:
    from app.bitbucket import sansio

    async with Receiver() as rx:
        await _hook(session, sandbox, rx.url + "/h", ["repo:push"])
        await _act(session, sandbox, "repos/acme/api/push-tag", {"name": "v2"})
        await _act(session, sandbox, "repos/acme/api/delete-tag", {"name": "v2"})
    assert len(rx.received) == 2
    for r in rx.received:
        sansio.verify_signature([SECRET], r.body, r.headers["X-Hub-Signature"])
        d = sansio.parse_delivery(r.headers, r.body)
        assert d.event_key == "repo:push" and d.branches == () and d.repository_full_name == "acme/api"


async def test_transfer_between_two_workspaces() -> None:
    data = json.loads(SAMPLE.read_text())
    data["workspaces"].append(
        {"slug": "other", "name": "Other", "members": [{"account_id": "557058:alice", "permission": "owner"}]}
    )
    data["credentials"].append(
        {
            "type": "access_token",
            "name": "other",
            "token": "other-token",
            "workspace": "other",
            "scopes": ["repository", "webhook"],
        }
    )
    other_auth = {"Authorization": "Bearer other-token"}
    async with running_sandbox(data) as sb, aiohttp.ClientSession() as session, Receiver() as old, Receiver() as new:
        await _hook(session, sb, old.url + "/h", ["repo:transfer"])
        body = {"url": new.url + "/h", "events": ["repo:transfer"], "secret": SECRET}
        async with session.post(f"{sb.api}/workspaces/other/hooks", json=body, headers=other_auth) as resp:
            assert resp.status == 201
        await _act(session, sb, "repos/acme/playground/transfer", {"to": "other"})
        [to_old], [to_new] = old.received, new.received
        for delivered in (to_old, to_new):
            payload = json.loads(delivered.body)
            assert delivered.headers["X-Event-Key"] == "repo:transfer"
            assert payload["repository"]["full_name"] == "other/playground"
            assert payload["previous_workspace"]["slug"] == "acme"
        async with session.get(f"{sb.api}/repositories/acme/playground", headers=AUTH) as resp:
            assert resp.status == 404
        async with session.get(f"{sb.api}/repositories/other/playground", headers=other_auth) as resp:
            assert resp.status == 200


async def test_pagelen_below_ten_is_honoured(sandbox: RunningSandbox, session: aiohttp.ClientSession) -> None:
    async with session.get(f"{sandbox.api}/repositories/acme?pagelen=2", headers=AUTH) as resp:
        body = await resp.json()
    assert body["pagelen"] == 2 and len(body["values"]) == 2 and "next" in body
    seen = [v["slug"] for v in body["values"]]
    url = body["next"]
    while url:
        async with session.get(url, headers=AUTH) as resp:
            page = await resp.json()
        seen += [v["slug"] for v in page["values"]]
        url = page.get("next")
    assert len(seen) == len(set(seen)) == 6


# -- 7. token endpoint faults ----------------------------------------------------------------
async def test_token_endpoint_takes_injected_faults(sandbox: RunningSandbox, session: aiohttp.ClientSession) -> None:
    sandbox.sandbox.faults.force_status = {"/site/oauth2/access_token": 503}
    form = {"grant_type": "client_credentials"}
    auth = aiohttp.BasicAuth("sandbox-client-id", "sandbox-client-secret")
    async with session.post(sandbox.url + "/site/oauth2/access_token", data=form, auth=auth) as resp:
        assert resp.status == 503
    sandbox.sandbox.faults.force_status = {}
    sandbox.sandbox.faults.error_rate = 1.0
    async with session.post(sandbox.url + "/site/oauth2/access_token", data=form, auth=auth) as resp:
        assert resp.status == 503
    sandbox.sandbox.faults.error_rate = 0.0
    async with session.post(sandbox.url + "/site/oauth2/access_token", data=form, auth=auth) as resp:
        assert resp.status == 200 and "access_token" in await resp.json()

"""Sandbox control actions deliver exactly the webhooks Bitbucket sends, signed; OAuth flow."""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest

from app.bitbucket import sansio
from app.sandbox.serve import RunningSandbox
from tests.conftest import TOKEN
from tests.helpers import Receiver

AUTH = {"Authorization": f"Bearer {TOKEN}"}
SECRET = "hook-secret-123"


async def _hook(session: aiohttp.ClientSession, sb: RunningSandbox, url: str, events: list[str]) -> str:
    body = {"description": "t", "url": url, "active": True, "events": events, "secret": SECRET}
    async with session.post(sb.api + "/workspaces/acme/hooks", json=body, headers=AUTH) as resp:
        assert resp.status == 201
        return str((await resp.json())["uuid"])


async def _act(session: aiohttp.ClientSession, sb: RunningSandbox, path: str, body: dict[str, Any]) -> Any:
    async with session.post(sb.url + "/_sandbox/" + path, json=body) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


ALL = [
    "repo:push",
    "repo:updated",
    "repo:created",
    "repo:deleted",
    "repo:transfer",
    "repo:fork",
    "pullrequest:created",
    "pullrequest:approved",
    "pullrequest:fulfilled",
    "pullrequest:rejected",
    "repo:commit_status_created",
    "repo:commit_status_updated",
    "project:updated",
]


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        ("repos/acme/api/push", {"branch": "main"}, ["repo:push"]),
        ("repos/acme/api/create-branch", {"name": "feature/new"}, ["repo:push"]),
        ("repos/acme/api/delete-branch", {"name": "develop"}, ["repo:push"]),
        ("repos/acme/api/open-pr", {"source": "develop"}, ["pullrequest:created"]),
        ("repos/acme/api/approve-pr", {"id": 7}, ["pullrequest:approved"]),
        ("repos/acme/api/merge-pr", {"id": 7}, ["pullrequest:fulfilled", "repo:push"]),
        ("repos/acme/api/decline-pr", {"id": 8}, ["pullrequest:rejected"]),
        ("workspaces/acme/create-repo", {"slug": "new-svc"}, ["repo:created"]),
        ("repos/acme/playground/delete-repo", {}, ["repo:deleted"]),
        ("repos/acme/web/update", {"name": "website"}, ["repo:updated"]),
        ("repos/acme/web/update", {"is_private": False}, ["repo:updated"]),
        ("repos/acme/api/update", {"mainbranch": "develop"}, ["repo:updated"]),
        ("repos/acme/api/fork", {"slug": "api-fork"}, ["repo:fork"]),
        (
            "repos/acme/api/run-pipeline",
            {"branch": "main", "result": "FAILED"},
            ["repo:commit_status_created", "repo:commit_status_updated"],
        ),
        ("workspaces/acme/update-project", {"key": "CORE", "name": "Core"}, ["project:updated"]),
        # Bitbucket sends nothing for these (bitbucket-facts.md):
        ("workspaces/acme/add-member", {"account_id": "557058:new", "email": "new@acme.example"}, []),
        ("workspaces/acme/remove-member", {"account_id": "557058:carol"}, []),
        ("workspaces/acme/set-permission", {"account_id": "557058:bob", "permission": "owner"}, []),
        ("repos/acme/api/add-restriction", {"kind": "force", "pattern": "develop"}, []),
        ("repos/acme/api/remove-restriction", {"kind": "force", "pattern": "main"}, []),
        ("repos/acme/api/set-pipelines", {"enabled": False}, []),
    ],
)
async def test_each_action_delivers_what_bitbucket_sends(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, path: str, body: dict[str, Any], expected: list[str]
) -> None:
    async with Receiver() as rx:
        hook_uuid = await _hook(session, sandbox, rx.url + "/hooks/bitbucket/1", ALL)
        result = await _act(session, sandbox, path, body)
        assert [r.headers["X-Event-Key"] for r in rx.received] == expected
        assert [d["event_key"] for d in result["deliveries"]] == expected
        for r in rx.received:
            assert r.headers["X-Hook-UUID"] == hook_uuid.strip("{}")  # bare in deliveries, braced in REST
            assert r.headers["X-Event-Time"]
            assert r.headers["User-Agent"] == "Bitbucket-Webhooks/2.0"
            assert r.headers["X-Attempt-Number"] == "1"
            sansio.verify_signature([SECRET], r.body, r.headers["X-Hub-Signature"])
            delivery = sansio.parse_delivery(r.headers, r.body)  # our parser reads the sandbox's payloads
            if r.headers["X-Event-Key"] != "project:updated":
                assert delivery.workspace == "acme" and delivery.repository_uuid


async def test_push_payload_branch_details(sandbox: RunningSandbox, session: aiohttp.ClientSession) -> None:
    async with Receiver() as rx:
        await _hook(session, sandbox, rx.url, ["repo:push"])
        await _act(session, sandbox, "repos/acme/api/create-branch", {"name": "feature/x"})
        await _act(session, sandbox, "repos/acme/api/delete-branch", {"name": "feature/x"})
        created, deleted = (sansio.parse_delivery(r.headers, r.body) for r in rx.received)
    assert created.branches_created == ("feature/x",) and not created.branches_deleted
    assert deleted.branches_deleted == ("feature/x",)
    raw = json.loads(rx.received[0].body)
    assert raw["push"]["changes"][0]["new"]["target"]["message"]  # real payloads carry messages...
    assert "message" not in created.model_dump_json()  # ...which we do not keep


async def test_retries_twice_on_5xx_only(sandbox: RunningSandbox, session: aiohttp.ClientSession) -> None:
    sandbox.sandbox.deliverer.retry_delay = 0.0
    async with Receiver(statuses=[500, 503, 500, 400]) as rx:
        await _hook(session, sandbox, rx.url, ["repo:push"])
        first = await _act(session, sandbox, "repos/acme/api/push", {})
        second = await _act(session, sandbox, "repos/acme/api/push", {})
    assert first["deliveries"][0]["attempts"] == ["500", "503", "500"]
    assert second["deliveries"][0]["attempts"] == ["400"]
    attempts = [r.headers["X-Attempt-Number"] for r in rx.received]
    assert attempts == ["1", "2", "3", "1"]
    assert len({r.headers["X-Request-UUID"] for r in rx.received[:3]}) == 1


async def test_repository_hook_for_non_owner(sandbox: RunningSandbox, session: aiohttp.ClientSession) -> None:
    token = await _oauth_token(session, sandbox, "sandbox-member-client", "sandbox-member-secret")
    headers = {"Authorization": f"Bearer {token['access_token']}"}
    body = {"url": "https://x.example/h", "events": ["repo:push"], "secret": "s"}
    async with session.post(sandbox.api + "/workspaces/acme/hooks", json=body, headers=headers) as resp:
        assert resp.status == 403
    async with session.post(sandbox.api + "/repositories/acme/api/hooks", json=body, headers=headers) as resp:
        assert resp.status == 201


async def _oauth_token(session: aiohttp.ClientSession, sb: RunningSandbox, cid: str, secret: str) -> dict[str, Any]:
    redirect = "http://127.0.0.1:9/cb"
    async with session.get(
        sb.url + "/site/oauth2/authorize",
        params={"client_id": cid, "response_type": "code", "state": "st-1", "redirect_uri": redirect},
        allow_redirects=False,
    ) as resp:
        assert resp.status == 302
        location = resp.headers["Location"]
    query = parse_qs(urlsplit(location).query)
    assert location.startswith(redirect) and query["state"] == ["st-1"]
    basic = base64.b64encode(f"{cid}:{secret}".encode()).decode()
    async with session.post(
        sb.url + "/site/oauth2/access_token",
        data={"grant_type": "authorization_code", "code": query["code"][0], "redirect_uri": redirect},
        headers={"Authorization": f"Basic {basic}"},
    ) as resp:
        assert resp.status == 200
        data: dict[str, Any] = await resp.json()
    return data


async def test_oauth_code_refresh_rotation_and_reuse(sandbox: RunningSandbox, session: aiohttp.ClientSession) -> None:
    cid, secret = "sandbox-client-id", "sandbox-client-secret"
    tokens = await _oauth_token(session, sandbox, cid, secret)
    assert tokens["token_type"] == "bearer" and tokens["expires_in"] == 7200
    assert "repository:admin" in tokens["scopes"].split()
    auth = aiohttp.BasicAuth(cid, secret)
    async with session.get(sandbox.api + "/user", headers={"Authorization": f"Bearer {tokens['access_token']}"}) as r:
        assert (await r.json())["account_id"] == "557058:alice"
    async with session.post(
        sandbox.url + "/site/oauth2/access_token",
        auth=auth,
        data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
    ) as r:
        assert r.status == 200
        rotated = await r.json()
    assert rotated["refresh_token"] != tokens["refresh_token"]
    async with session.post(
        sandbox.url + "/site/oauth2/access_token",
        auth=auth,
        data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
    ) as r:
        assert r.status == 400 and (await r.json())["error"] == "invalid_grant"  # the old one is spent
    async with session.post(
        sandbox.url + "/site/oauth2/access_token",
        auth=aiohttp.BasicAuth(cid, "wrong"),
        data={"grant_type": "client_credentials"},
    ) as r:
        assert r.status == 401
    async with session.post(
        sandbox.url + "/site/oauth2/access_token", auth=auth, data={"grant_type": "client_credentials"}
    ) as r:
        assert r.status == 200
    # token expiry on demand: the access token now answers 401
    async with session.post(sandbox.url + "/_sandbox/tokens/expire") as r:
        assert r.status == 200
    async with session.get(sandbox.api + "/user", headers={"Authorization": f"Bearer {rotated['access_token']}"}) as r:
        assert r.status == 401


async def test_reused_code_is_refused(sandbox: RunningSandbox, session: aiohttp.ClientSession) -> None:
    async with session.get(
        sandbox.url + "/site/oauth2/authorize",
        params={"client_id": "sandbox-client-id", "response_type": "code", "redirect_uri": "http://127.0.0.1:9/cb"},
        allow_redirects=False,
    ) as resp:
        code = parse_qs(urlsplit(resp.headers["Location"]).query)["code"][0]
    auth = aiohttp.BasicAuth("sandbox-client-id", "sandbox-client-secret")
    statuses = []
    for _ in range(2):
        async with session.post(
            sandbox.url + "/site/oauth2/access_token",
            auth=auth,
            data={"grant_type": "authorization_code", "code": code},
        ) as r:
            statuses.append(r.status)
    assert statuses == [200, 400]


async def test_request_log_records_calls(sandbox: RunningSandbox, session: aiohttp.ClientSession) -> None:
    async with session.get(sandbox.api + "/repositories/acme/api", headers=AUTH):
        pass
    async with session.get(sandbox.url + "/_sandbox/requests") as r:
        log = (await r.json())["requests"]
    assert [(e["method"], e["path"], e["status"]) for e in log] == [("GET", "/2.0/repositories/acme/api", 200)]

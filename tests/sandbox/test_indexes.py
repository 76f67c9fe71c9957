"""The sandbox's indexes (repositories by uuid, the listing order, the member list) follow every
change the control API makes: a lookup or a page never serves a stale or missing entry."""

from __future__ import annotations

from typing import Any

import aiohttp

from app.sandbox.scenario import generate
from app.sandbox.serve import running_sandbox

AUTH = {"Authorization": "Bearer bench-token"}


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url, headers=AUTH) as resp:
        return resp.status, await resp.json()


async def _all(session: aiohttp.ClientSession, url: str) -> list[Any]:
    out: list[Any] = []
    next_url: str | None = url
    while next_url:
        status, body = await _get(session, next_url)
        assert status == 200, body
        out += body["values"]
        next_url = body.get("next")
    return out


async def _act(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> Any:
    async with session.post(url, json=body) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def test_indexes_follow_changes() -> None:
    async with running_sandbox(generate(repos=250, members=230)) as sb, aiohttp.ClientSession() as session:
        api, ctl = sb.api, sb.url + "/_sandbox"
        listed = await _all(session, f"{api}/repositories/bench?pagelen=100")
        assert [r["slug"] for r in listed] == [f"repo-{i:04d}" for i in range(250)]
        uuid = listed[7]["uuid"]
        status, body = await _get(session, f"{api}/repositories/bench/{uuid}")
        assert (status, body["slug"]) == (200, "repo-0007")

        # A rename moves the slug; the uuid still finds it, the old slug does not.
        await _act(session, f"{ctl}/repos/bench/repo-0007/update", {"name": "Renamed Seven"})
        status, body = await _get(session, f"{api}/repositories/bench/{uuid}")
        assert (status, body["slug"]) == (200, "renamed-seven")
        assert (await _get(session, f"{api}/repositories/bench/repo-0007"))[0] == 404

        # A fork joins the listing (last, by creation) and the uuid index; a deleted one leaves both.
        fork = await _act(session, f"{ctl}/repos/bench/repo-0001/fork", {"slug": "the-fork"})
        gone = listed[3]["uuid"]
        await _act(session, f"{ctl}/repos/bench/repo-0003/delete-repo", {})
        listed = await _all(session, f"{api}/repositories/bench?pagelen=100")
        assert len(listed) == 250 and listed[-1]["slug"] == "the-fork"
        assert "repo-0003" not in {r["slug"] for r in listed}
        assert (await _get(session, f"{api}/repositories/bench/{fork['repository']['uuid']}"))[0] == 200
        assert (await _get(session, f"{api}/repositories/bench/{gone}"))[0] == 404

        # Members: a page shows the current list after an addition and a removal.
        members = await _all(session, f"{api}/workspaces/bench/members?pagelen=100")
        assert len(members) == 230
        await _act(session, f"{ctl}/workspaces/bench/remove-member", {"account_id": members[5]["user"]["account_id"]})
        members = await _all(session, f"{api}/workspaces/bench/members?pagelen=100")
        assert len(members) == 229

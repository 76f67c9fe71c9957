"""One resource that cannot be read affects only the results that need it; an event whose
processing fails is retried and ends ``dead``; nothing stops the worker, the writer or the
scheduler (issue "One pipeline that cannot die")."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from app import errors
from app.bitbucket.client import BitbucketClient, StaticToken
from app.reconcile import reconcile_workspace
from app.sandbox.serve import RunningSandbox, free_port
from app.store import Store
from app.store.events import MAX_TRIES, NewEvent
from tests.conftest import TOKEN
from tests.helpers import RunningApp, product_settings, running_app, wait_for


async def _no_sleep(_: float) -> None:
    return None


@pytest.fixture
async def product(sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path) -> AsyncIterator[RunningApp]:
    port = free_port()
    settings = product_settings(sandbox.api, tmp_path, port)
    # Retries shortened: two attempts, no waiting between them; event retries after 0.2 s.
    async with running_app(settings, port, session, max_attempts=2, sleep=_no_sleep) as app:
        app.services.worker.retry_base = 0.2
        app.services.worker.coalesce_window = 0.0
        await settle(app)
        yield app


async def settle(app: RunningApp, within: float = 20) -> None:
    store = app.services.service.store

    async def idle() -> bool:
        counts = await store.events.counts()
        busy = counts.get("queued", 0) + counts.get("running", 0) + counts.get("failed", 0)
        return busy == 0 and counts.get("done", 0) > 0

    await wait_for(idle, within=within)


async def act(session: aiohttp.ClientSession, sb: RunningSandbox, path: str, body: dict[str, Any]) -> Any:
    async with session.post(f"{sb.url}/_sandbox/{path}", json=body) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def faults(session: aiohttp.ClientSession, sb: RunningSandbox, **values: Any) -> None:
    if not values:
        async with session.delete(f"{sb.url}/_sandbox/faults") as resp:
            assert resp.status == 200
        return
    async with session.post(f"{sb.url}/_sandbox/faults", json=values) as resp:
        assert resp.status == 200, await resp.text()


def repo_path(sb: RunningSandbox, slug: str) -> str:
    """The sandbox's path (after /2.0/) of one repository read by uuid, as a regex."""
    return "^/repositories/acme/" + re.escape(sb.sandbox.state.workspaces["acme"].repos[slug].uuid) + "$"


async def result(app: RunningApp, check: str, subject: str) -> Any:
    rows = await app.services.service.store.results.query(check=check, subject=subject)
    return rows[0] if rows else None


async def events(app: RunningApp, key: str) -> list[Any]:
    return await app.services.service.store.events.list(event_key=key, limit=50)


async def test_503_on_one_repository_leaves_the_service_healthy_and_results_right(
    product: RunningApp, sandbox: RunningSandbox, session: aiohttp.ClientSession
) -> None:
    """The operator's scenario: Bitbucket answers 503 on one repository endpoint for a while,
    one ``repo:updated`` arrives, the client's retries run out."""
    assert (await result(product, "branch-protection-enforced", "acme/api")).result.status == "pass"
    await faults(session, sandbox, force_status={repo_path(sandbox, "api"): 503})
    await act(session, sandbox, "repos/acme/api/update", {"mainbranch": "develop"})

    async def failed_once() -> bool:
        rows = await events(product, "repo:updated")
        return bool(rows) and rows[0].tries >= 1 and rows[0].state in ("failed", "dead") and rows[0].error is not None

    await wait_for(failed_once, within=10)
    [event] = await events(product, "repo:updated")
    assert "ServerError" in (event.error or "")
    # The last known result stands, marked stale (checks.md "A fetch that fails").
    stale = await result(product, "branch-protection-enforced", "acme/api")
    assert stale.result.status == "pass" and stale.stale_since is not None

    # The service is alive: liveness says so, and another event is processed at once.
    async with session.get(f"{product.url}/healthz") as resp:
        assert resp.status == 200, await resp.text()
    async with session.get(f"{product.url}/readyz") as resp:
        assert resp.status == 200, await resp.text()
    await act(session, sandbox, "repos/acme/docs/update", {"mainbranch": "production"})

    async def docs_done() -> bool:
        rows = [r for r in await events(product, "repo:updated") if "acme/docs" in str(r.payload)]
        return bool(rows) and rows[0].state == "done"

    await wait_for(docs_done, within=10)
    docs = await result(product, "branch-protection-enforced", "acme/docs")
    assert docs.stale_since is None

    # The fault ends: the failed event's retry reads the repository and the result is right.
    await faults(session, sandbox)
    await settle(product)
    [api_event] = [r for r in await events(product, "repo:updated") if "acme/api" in str(r.payload)]
    assert api_event.state == "done" and api_event.tries >= 2
    fixed = await result(product, "branch-protection-enforced", "acme/api")
    assert fixed.result.status == "fail" and fixed.stale_since is None
    # Right means: what a fault-free full pass over the final state would record changes nothing.
    client = await product.services.service.client("token")
    report = await reconcile_workspace(client, product.services.service.store, product.settings, "acme")
    assert [(c.result.check, c.result.subject) for c in report.delta.writes] == []
    assert report.delta.stale == [] and report.delta.retired == []


# -- each kind of unreadable resource, beside resources that read fine ------------------------
@dataclass
class FaultyProxy:
    """A loopback HTTP proxy in front of the sandbox that spoils the answers for one path regex:
    ``status`` (503), ``timeout`` (answers too late), ``malformed`` (200 with a body that is not
    JSON) or ``foreign_next`` (a ``next`` link to another host)."""

    upstream: str
    session: aiohttp.ClientSession
    pattern: str | None = None
    kind: str = "status"
    url: str = ""
    _runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        spoil = self.pattern is not None and re.search(self.pattern, request.path) is not None
        if spoil and self.kind == "status":
            return web.json_response({"type": "error", "error": {"message": "Injected"}}, status=503)
        if spoil and self.kind == "timeout":
            await asyncio.sleep(2.0)
        if spoil and self.kind == "malformed":
            return web.Response(status=200, body=b'{"values": [', content_type="application/json")
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "accept", "content-type")}
        async with self.session.request(
            request.method, self.upstream + request.path_qs, headers=headers, data=await request.read()
        ) as resp:
            body = await resp.read()
            status = resp.status
            out_headers = {k: v for k, v in resp.headers.items() if k.lower().startswith("x-")}
        if spoil and self.kind == "foreign_next":
            data = json.loads(body)
            data["next"] = "https://evil.example" + request.path + "?page=2"
            body = json.dumps(data).encode()
        return web.Response(status=status, body=body, headers=out_headers, content_type="application/json")

    async def __aenter__(self) -> FaultyProxy:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


KINDS = ("status", "timeout", "malformed", "foreign_next")
CLIENT = {"max_attempts": 2, "sleep": _no_sleep, "timeout": 0.5}


async def _clear_restrictions(session: aiohttp.ClientSession, sb: RunningSandbox, slug: str) -> None:
    repo = sb.sandbox.state.workspaces["acme"].repos[slug]
    for r in list(repo.restrictions):
        await act(session, sb, f"repos/acme/{slug}/remove-restriction", {"id": r["id"]})
    assert repo.restrictions == []


@pytest.mark.parametrize("kind", KINDS)
async def test_a_pass_writes_every_result_but_those_of_the_unreadable_resource(
    kind: str, sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    async with FaultyProxy(sandbox.url, session) as proxy:
        settings = product_settings(proxy.url + "/2.0", tmp_path, free_port())
        store = await Store.open(settings.database)
        try:
            client = BitbucketClient(session, StaticToken(TOKEN), api_url=settings.bitbucket_api_url, **CLIENT)  # type: ignore[arg-type]
            await reconcile_workspace(client, store, settings, "acme")

            async def status(subject: str) -> tuple[str, str | None]:
                [row] = await store.results.query(check="branch-protection-enforced", subject=subject)
                return row.result.status, row.stale_since

            assert await status("acme/api") == ("pass", None)
            assert await status("acme/docs") == ("pass", None)
            # Both lose their restrictions; only the api's can no longer be read.
            await _clear_restrictions(session, sandbox, "api")
            await _clear_restrictions(session, sandbox, "docs")
            proxy.pattern, proxy.kind = "^/2.0/repositories/acme/api/branch-restrictions", kind
            report = await reconcile_workspace(client, store, settings, "acme")
            assert report.fetch_failures == 1
            api_status, api_stale = await status("acme/api")
            assert api_status == "pass" and api_stale is not None  # last known result, marked stale
            assert await status("acme/docs") == ("fail", None)  # the rest of the pass is written
            snap = await store.snapshots.get(
                "restrictions:" + sandbox.sandbox.state.workspaces["acme"].repos["api"].uuid
            )
            assert snap is not None and snap.stale_since is not None
        finally:
            await store.close()


@pytest.mark.parametrize("kind", KINDS)
async def test_a_batch_writes_every_result_but_those_of_the_unreadable_resource(
    kind: str, sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    async with FaultyProxy(sandbox.url, session) as proxy:
        port = free_port()
        settings = product_settings(proxy.url + "/2.0", tmp_path, port)
        async with running_app(settings, port, session, background=False, **CLIENT) as app:
            worker = app.services.worker
            worker.coalesce_window = 0.0
            proxy.pattern, proxy.kind = "^/2.0/repositories/acme/svc-a/branch-restrictions", kind
            await act(session, sandbox, "workspaces/acme/create-repo", {"slug": "svc-a", "project": "CORE"})
            await act(session, sandbox, "workspaces/acme/create-repo", {"slug": "svc-b", "project": "CORE"})
            assert await worker.step() == 2  # both events in one batch
            [b] = [e for e in await events(app, "repo:created") if "svc-b" in str(e.payload)]
            [a] = [e for e in await events(app, "repo:created") if "svc-a" in str(e.payload)]
            assert b.state == "done"
            assert a.state == "failed" and a.error is not None
            assert (await result(app, "branch-protection-enforced", "acme/svc-b")).result.status == "fail"
            # svc-a: what did not need the restrictions is written; what did is not a fail.
            assert (await result(app, "repo-classified", "acme/svc-a")).result.status == "fail"
            protection = await result(app, "branch-protection-enforced", "acme/svc-a")
            assert protection is None or protection.result.status == "unknown"
            # Once the resource reads again, the retry completes the event.
            proxy.pattern = None
            await app.services.service.store.db.execute("UPDATE events SET next_attempt_at = 0 WHERE id = ?", (a.id,))
            await worker.drain()
            assert (await app.services.service.store.events.get(a.id)).state == "done"  # type: ignore[union-attr]
            assert (await result(app, "branch-protection-enforced", "acme/svc-a")).result.status == "fail"


async def test_an_event_that_raises_is_retried_then_dead_and_others_go_on(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    port = free_port()
    settings = product_settings(sandbox.api, tmp_path, port)
    async with running_app(settings, port, session, background=False, **CLIENT) as app:
        service, worker = app.services.service, app.services.worker
        store = service.store
        worker.coalesce_window = 0.0
        await service.internal_event("lp:reconcile", {"tier": "full"})
        await worker.drain()
        api = sandbox.sandbox.state.workspaces["acme"].repos["api"].uuid
        # A stored event the planner cannot digest (``branches`` is not a list).
        bad = await store.events.append(
            NewEvent("token", "webhook", "repo:push", {"workspace": "acme", "repository_uuid": api, "branches": 5})
        )
        assert bad is not None
        await act(session, sandbox, "repos/acme/api/update", {"mainbranch": "develop"})
        assert await worker.step() == 2
        [good] = await events(app, "repo:updated")
        assert good.state == "done"
        assert (await result(app, "branch-protection-enforced", "acme/api")).result.status == "fail"
        for _ in range(MAX_TRIES):
            row = await store.events.get(bad)
            assert row is not None and row.error is not None and "TypeError" in row.error
            if row.state == "dead":
                break
            assert row.state == "failed"
            await store.db.execute("UPDATE events SET next_attempt_at = 0 WHERE id = ?", (bad,))
            await worker.step()
        row = await store.events.get(bad)
        assert row is not None and row.state == "dead" and row.tries == MAX_TRIES


async def test_an_unreadable_repository_list_keeps_repository_results_and_writes_member_results(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    settings = product_settings(sandbox.api, tmp_path, free_port())
    store = await Store.open(settings.database)
    try:
        client = BitbucketClient(session, StaticToken(TOKEN), api_url=settings.bitbucket_api_url, **CLIENT)  # type: ignore[arg-type]
        await reconcile_workspace(client, store, settings, "acme")
        before = {(r.result.check, r.result.subject): r.result.status for r in await store.results.query()}
        # Bitbucket cannot list the repositories; a member meanwhile left.
        await faults(session, sandbox, force_status={"^/repositories/acme$": 503})
        await act(session, sandbox, "workspaces/acme/remove-member", {"account_id": "557058:frank"})
        with pytest.raises(errors.ServerError):
            await reconcile_workspace(client, store, settings, "acme")
        after = await store.results.query()
        repo_rows = [r for r in after if r.result.subject_type == "repository"]
        assert repo_rows and all(r.stale_since is not None for r in repo_rows)
        assert all(before[(r.result.check, r.result.subject)] == r.result.status for r in repo_rows)
        member_rows = [r for r in after if r.result.subject_type == "member"]
        assert member_rows and all(r.stale_since is None for r in member_rows)
        members = await store.snapshots.get("members:acme")
        assert members is not None and members.stale_since is None
        assert "557058:frank" not in str(members.content)  # the member list was read in the same pass
        assert not [r for r in member_rows if r.result.subject_key == "557058:frank"]  # and evaluated
    finally:
        await store.close()


async def test_a_pass_dates_what_it_records_to_when_it_read_it_not_to_its_start(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A pass that waits (a 429's pause, a slow workspace) before it reads the member list dates the
    member results to that read, not to the pass's start: a history row never says a member left
    before they did (chaos seed 2264293176: a pass paused 7 s by a 429, read a member list without
    dave, and recorded him retired at a second when he was still a member)."""
    settings = product_settings(sandbox.api, tmp_path, free_port())
    store = await Store.open(settings.database)
    try:
        client = BitbucketClient(session, StaticToken(TOKEN), api_url=settings.bitbucket_api_url, **CLIENT)  # type: ignore[arg-type]
        await reconcile_workspace(client, store, settings, "acme")
        left_at: list[float] = []

        async def progress(step: dict[str, object]) -> None:
            if step.get("step") == "members and workspace":  # the pass waits, and meanwhile frank leaves
                await asyncio.sleep(1.2)
                await act(session, sandbox, "workspaces/acme/remove-member", {"account_id": "557058:frank"})
                left_at.append(time.time())

        started = time.time()
        await reconcile_workspace(client, store, settings, "acme", progress=progress)
        assert left_at and left_at[0] - started >= 1.2
        history = [h for h in await store.results.history(subject="557058:frank") if h["new_status"] == "retired"]
        assert history, "frank's results were not retired"
        for h in history:
            at = datetime.fromisoformat(h["at"].replace("Z", "+00:00")).timestamp()  # to the second
            assert at >= int(left_at[0]), f"{h['check_id']} retired at {h['at']}, before frank left ({left_at[0]:.2f})"
    finally:
        await store.close()

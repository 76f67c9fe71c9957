"""The receiver rejects bad input alone: a bad header value, a body nested too deep or a row the
database refuses fails only its own request; deliveries from other workspaces are recorded
``ignored`` and cost no API call. Real loopback servers and real SQLite files throughout."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from app.sandbox.serve import RunningSandbox, free_port
from app.store import Store
from app.store.events import EventWriter, NewEvent
from tests.helpers import ADMIN, RunningApp, product_settings, running_app, wait_for
from tests.pgcluster import fetch
from tests.web.test_webhooks import VECTOR_SECRET, headers, post, rows


async def _with_secret(app: RunningApp) -> RunningApp:
    service = app.services.service
    await service.store.connections.set_webhook(
        "token", service.encrypt(VECTOR_SECRET), [{"workspace": "acme", "level": "workspace", "uuid": "{h}"}]
    )
    service.forget_secrets("token")
    return app


@pytest.fixture
async def product(sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path) -> AsyncIterator[RunningApp]:
    """The receiver alone (no worker): what is stored is what the request left behind."""
    port = free_port()
    async with running_app(product_settings(sandbox.api, tmp_path, port), port, session, background=False) as app:
        yield await _with_secret(app)


def delivery(n: int, ws: str = "acme", **extra: Any) -> bytes:
    return json.dumps(
        {
            "repository": {"full_name": f"{ws}/repo-{n}", "uuid": f"{{repo-{n}}}", **extra},
            "push": {"changes": [{"new": {"type": "branch", "name": "main"}}]},
        }
    ).encode()


def nested(depth: int) -> bytes:
    """A delivery-shaped object whose ``x`` holds arrays nested so that the whole body is ``depth`` deep."""
    inner = b"[" * (depth - 1) + b"]" * (depth - 1)
    return b'{"repository": {"full_name": "acme/deep", "uuid": "{deep}"}, "x": ' + inner + b"}"


# -- header values ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("X-Attempt-Number", "\u00b2"),  # "²".isdigit() is true, int("²") raises: was a 500
        ("X-Attempt-Number", "9" * 30),  # too large for an SQLite integer: failed the whole batch
        ("X-Attempt-Number", "-1"),
        ("X-Attempt-Number", "1e3"),
        ("X-Attempt-Number", "1000"),
        ("X-Request-UUID", "r" * 5000),
        ("X-Hook-UUID", "{h}" + "x" * 200),
        ("X-Event-Key", "repo:" + "p" * 200),
        ("X-Request-UUID", "r-\u00e9"),  # not ASCII: arrives as Latin-1 mojibake
        ("X-Hook-UUID", "{h}\tx"),  # a control character
    ],
)
async def test_bad_header_values_are_400_and_store_nothing(
    product: RunningApp, session: aiohttp.ClientSession, name: str, value: str
) -> None:
    body = delivery(1)
    status, answer = await post(session, product, body, headers(body) | {name: value})
    assert status == 400, answer
    assert answer["title"] == "Malformed delivery" and name.split("-")[-1].lower() in answer["detail"].lower()
    assert rows(product) == []
    # that request only: the same delivery with sound headers is taken
    assert (await post(session, product, body, headers(body)))[0] == 202
    assert len(rows(product)) == 1


async def test_small_attempt_numbers_are_kept(product: RunningApp, session: aiohttp.ClientSession) -> None:
    body = delivery(1)
    assert (await post(session, product, body, headers(body) | {"X-Attempt-Number": " 3 "}))[0] == 202
    [row] = rows(product)
    assert row["attempt"] == 3


@pytest.mark.parametrize(
    "bad",
    [
        {"X-Attempt-Number": "9" * 30},  # used to reach the insert and fail every delivery batched with it
        {"workspace-slug": "\ud800"},  # a lone surrogate cannot be stored in the workspace column
    ],
)
async def test_one_bad_delivery_among_concurrent_good_ones(
    product: RunningApp, session: aiohttp.ClientSession, bad: dict[str, str]
) -> None:
    async def good(n: int) -> int:
        body = delivery(n)
        return (await post(session, product, body, headers(body, request=f"good-{n}")))[0]

    async def bad_one() -> int:
        extra = {"workspace": {"slug": bad["workspace-slug"]}} if "workspace-slug" in bad else {}
        body = delivery(999, **extra)
        hdrs = headers(body, request="bad") | {k: v for k, v in bad.items() if k.startswith("X-")}
        return (await post(session, product, body, hdrs))[0]

    results = await asyncio.gather(*(good(n) for n in range(20)), bad_one(), *(good(n) for n in range(20, 40)))
    assert results[20] == 400
    assert results[:20] + results[21:] == [202] * 40
    stored = rows(product)
    assert sorted(r["request_uuid"] for r in stored) == sorted(f"good-{n}" for n in range(40))


# -- a batch the database refuses is retried row by row ----------------------------------------------
def _event(n: int, workspace: str = "acme") -> NewEvent:
    return NewEvent(
        connection_id="token",
        source="webhook",
        event_key="repo:push",
        payload={"n": n},
        request_uuid=f"req-{n}",
        hook_uuid="{h}",
        attempt=1,
        body_hash=f"hash-{n}",
        workspace=workspace,
    )


async def test_writer_splits_a_failed_batch(database: Path | str) -> None:
    store = await Store.open(database)
    try:
        writer = EventWriter(store.events)
        events = [_event(n) for n in range(5)] + [_event(5, workspace="\ud800")] + [_event(n) for n in range(6, 10)]
        # queued before the writer runs, so all ten are one batch (one multi-row INSERT)
        submitted = [asyncio.create_task(writer.submit(e)) for e in events]
        await asyncio.sleep(0)
        assert writer._queue.qsize() == 10
        runner = asyncio.create_task(writer.run())
        outcomes = await asyncio.gather(*submitted, return_exceptions=True)
        runner.cancel()
        # the row cannot be encoded: UnicodeEncodeError from sqlite3, asyncpg's DataError naming it
        assert isinstance(outcomes[5], Exception) and "surrogates not allowed" in str(outcomes[5]), outcomes[5]
        ids = [o for i, o in enumerate(outcomes) if i != 5]
        assert all(isinstance(i, int) for i in ids) and len(set(ids)) == 9
    finally:
        await store.close()
    query = "SELECT request_uuid FROM events ORDER BY id"
    if isinstance(database, str):  # what is committed, through a connection of its own
        stored = [r["request_uuid"] for r in fetch(database, query)]
    else:
        conn = sqlite3.connect(database, timeout=30)
        try:
            stored = [r[0] for r in conn.execute(query)]
        finally:
            conn.close()
    assert sorted(stored) == sorted(f"req-{n}" for n in range(10) if n != 5)


async def test_writer_still_fails_every_request_when_nothing_can_be_stored(database: Path | str) -> None:
    store = await Store.open(database)
    try:
        await store.db.execute("DROP TABLE events")
        writer = EventWriter(store.events)
        submitted = [asyncio.create_task(writer.submit(_event(n))) for n in range(3)]
        await asyncio.sleep(0)
        runner = asyncio.create_task(writer.run())
        outcomes = await asyncio.gather(*submitted, return_exceptions=True)
        runner.cancel()
        # the driver's error: sqlite3's "no such table: events", asyncpg's 'relation "events" does not exist'
        assert all(isinstance(o, Exception) and "events" in str(o) for o in outcomes), outcomes
    finally:
        await store.close()


# -- JSON nested too deep ------------------------------------------------------------------------------
@pytest.mark.parametrize("depth", [513, 1000, 100_000])
async def test_webhook_body_nested_too_deep_is_400(
    product: RunningApp, session: aiohttp.ClientSession, depth: int
) -> None:
    body = nested(depth)
    status, answer = await post(session, product, body, headers(body))
    assert status == 400, answer
    assert "deep" in answer["detail"]
    assert rows(product) == []


async def test_webhook_body_at_the_depth_limit_is_taken(product: RunningApp, session: aiohttp.ClientSession) -> None:
    body = nested(512)
    assert (await post(session, product, body, headers(body)))[0] == 202
    assert len(rows(product)) == 1


def _deep_object(depth: int) -> bytes:
    return b'{"a":' * (depth - 1) + b"{}" + b"}" * (depth - 1)


@pytest.mark.parametrize(
    ("method", "path", "content_type"),
    [
        ("POST", "/api/reconcile", "application/json"),
        ("POST", "/api/personnel", "application/json"),
        ("PUT", "/api/repositories/{x}/class", "application/json"),
        ("POST", "/api/personnel/import", "application/json"),
        ("POST", "/api/personnel/import", "text/csv"),  # JSON is recognised by its first character too
    ],
)
@pytest.mark.parametrize("depth", [513, 100_000])
async def test_api_body_nested_too_deep_is_400(
    product: RunningApp, session: aiohttp.ClientSession, method: str, path: str, content_type: str, depth: int
) -> None:
    body = _deep_object(depth) if "import" not in path else b"[" + _deep_object(depth) + b"]"
    hdrs = {"Authorization": f"Bearer {ADMIN}", "Content-Type": content_type}
    async with session.request(method, product.url + path, data=body, headers=hdrs) as resp:
        answer = await resp.json(content_type=None)
        assert resp.status == 400, answer
    assert "512" in answer["detail"]


async def test_api_body_within_the_limit_still_works(product: RunningApp, session: aiohttp.ClientSession) -> None:
    hdrs = {"Authorization": f"Bearer {ADMIN}"}
    async with session.post(product.url + "/api/reconcile", json={"tier": "members"}, headers=hdrs) as resp:
        assert resp.status == 202
        assert (await resp.json())["queued"]
    async with session.post(product.url + "/api/reconcile", data=b"[1]", headers=hdrs) as resp:
        assert resp.status == 400


# -- deliveries from a workspace the connection does not monitor ---------------------------------------
async def test_foreign_workspace_is_ignored_and_costs_no_api_call(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    port = free_port()
    async with running_app(product_settings(sandbox.api, tmp_path, port), port, session) as app:
        await _with_secret(app)
        events = app.services.service.store.events
        await wait_for(lambda: _idle(events), within=30)  # the start-up pass is done
        sandbox.sandbox.requests.clear()
        foreign = delivery(1, ws="elsewhere")
        status, answer = await post(session, app, foreign, headers(foreign, request="foreign"))
        assert status == 202 and answer["event_id"]
        repo = sandbox.sandbox.state.workspaces["acme"].repos["api"]
        ours = json.dumps(
            {
                "repository": {"full_name": "acme/api", "uuid": repo.uuid, "workspace": {"slug": "acme"}},
                "push": {"changes": [{"new": {"type": "branch", "name": "main"}}]},
            }
        ).encode()
        status, mine = await post(session, app, ours, headers(ours, request="ours"))
        assert status == 202

        async def ours_done() -> bool:
            row = await events.get(mine["event_id"])
            return row is not None and row.state == "done"

        await wait_for(ours_done, within=30)  # the worker claims in id order: the foreign one came first
        row = await events.get(answer["event_id"])
        assert row is not None and row.state == "ignored" and row.workspace == "elsewhere"
        assert row.tries == 0
        paths = [r.get("path", "") for r in sandbox.sandbox.requests]
        assert not [p for p in paths if "elsewhere" in p], paths


async def _idle(events: Any) -> bool:
    counts = await events.counts()
    return not any(counts.get(s) for s in ("queued", "running", "failed"))


async def test_workspace_match_ignores_case(product: RunningApp, session: aiohttp.ClientSession) -> None:
    body = delivery(1, ws="ACME")
    assert (await post(session, product, body, headers(body)))[0] == 202
    assert rows(product)[0]["state"] == "queued"


async def test_foreign_workspace_from_the_slug_not_only_the_full_name(
    product: RunningApp, session: aiohttp.ClientSession
) -> None:
    body = delivery(1, workspace={"slug": "other"})  # full name acme/repo-1, but the slug says otherwise
    assert (await post(session, product, body, headers(body)))[0] == 202
    [row] = rows(product)
    assert row["state"] == "ignored" and row["workspace"] == "other"


# -- 503, never 500, when the delivery cannot be stored ---------------------------------------------
async def test_database_failure_while_looking_up_the_connection_is_503(
    product: RunningApp, session: aiohttp.ClientSession
) -> None:
    service = product.services.service
    service.forget_secrets("token")  # the next delivery reads the connection from the database
    await service.store.db.execute("DROP TABLE connections")
    body = delivery(1)
    status, answer = await post(session, product, body, headers(body))
    assert status == 503 and "Retry" in answer["detail"]


async def test_a_stalled_writer_answers_503_in_bounded_time(
    product: RunningApp, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.web import webhooks

    monkeypatch.setattr(webhooks, "STORE_TIMEOUT", 0.5, raising=False)
    stalled = EventWriter(product.services.service.store.events)
    real, product.services.writer = product.services.writer, stalled  # not run: inserts stall
    body = delivery(1)
    try:
        async with asyncio.timeout(5):  # without the bound, the request waits for ever
            status, answer = await post(session, product, body, headers(body))
        assert status == 503 and "Retry" in answer["detail"]
        assert rows(product) == []
    finally:
        product.services.writer = real
        late = asyncio.create_task(stalled.run())  # drains what waited, so the server can stop
        await asyncio.sleep(0.2)
        late.cancel()

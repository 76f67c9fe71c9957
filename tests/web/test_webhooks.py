"""The webhook receiver over real loopback HTTP: verify, store durably, answer."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from app.bitbucket.sansio import sign
from app.sandbox.serve import RunningSandbox, free_port
from app.settings import PostgresURL
from tests.conftest import FIXTURES
from tests.helpers import RunningApp, product_settings, running_app
from tests.pgcluster import fetch

VECTOR_SECRET = "It's a Secret to Everybody"
OLD_SECRET = "the previous secret, still accepted"
PUSH = (FIXTURES / "webhooks" / "push_drone-go-scm_testdata.json").read_bytes()


@pytest.fixture
async def product(sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path) -> AsyncIterator[RunningApp]:
    port = free_port()
    settings = product_settings(sandbox.api, tmp_path, port)
    async with running_app(settings, port, session, background=False) as app:
        service = app.services.service
        # the recorded fixture PUSH comes from the workspace "brydzewski": monitored here too
        await service.store.connections.upsert("token", "token", ("acme", "brydzewski"))
        await service.store.connections.set_webhook(
            "token",
            service.encrypt(VECTOR_SECRET),
            [{"workspace": "acme", "level": "workspace", "uuid": "{h}"}],
            previous=service.encrypt(OLD_SECRET),
        )
        service.forget_secrets("token")
        yield app


def headers(
    body: bytes, secret: str = VECTOR_SECRET, key: str = "repo:push", request: str = "r-1", **extra: str
) -> dict[str, str]:
    h = {
        "X-Event-Key": key,
        "X-Request-UUID": request,
        "X-Hook-UUID": "{h}",
        "X-Attempt-Number": "1",
        "Content-Type": "application/json",
        "X-Hub-Signature": sign(secret, body),
    }
    h.update(extra)
    return h


async def post(
    session: aiohttp.ClientSession,
    app: RunningApp,
    body: bytes,
    hdrs: dict[str, str],
    path: str = "/hooks/bitbucket/token",
) -> tuple[int, Any]:
    async with session.post(app.url + path, data=body, headers=hdrs) as resp:
        return resp.status, await resp.json(content_type=None)


def rows(app: RunningApp) -> list[Any]:
    """Read the events table through a separate connection: what is on disk."""
    if isinstance(app.settings.database, PostgresURL):
        return fetch(app.settings.database, "SELECT * FROM events WHERE source = 'webhook' ORDER BY id")
    conn = sqlite3.connect(app.settings.database, timeout=30)
    conn.row_factory = sqlite3.Row
    try:
        return list(conn.execute("SELECT * FROM events WHERE source = 'webhook' ORDER BY id"))
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("body", "hdrs", "status"),
    [
        # the published vector verifies; "Hello World!" is then refused as a body, not as a signature
        (b"Hello World!", headers(b"Hello World!"), 400),
        (PUSH, headers(PUSH), 202),
        (PUSH + b" ", headers(PUSH), 401),  # tampered body
        (PUSH, {k: v for k, v in headers(PUSH).items() if k != "X-Hub-Signature"}, 401),  # missing header
        (PUSH, headers(PUSH) | {"X-Hub-Signature": sign(VECTOR_SECRET, PUSH).replace("sha256=", "sha1=")}, 401),
        (PUSH, headers(PUSH, secret="wrong secret"), 401),
        (PUSH, headers(PUSH, secret=OLD_SECRET), 202),  # rotation: the previous secret still verifies
        (PUSH, headers(PUSH) | {"X-Event-Key": ""}, 400),
        (PUSH, headers(PUSH) | {"X-Attempt-Number": "first"}, 400),
        (b"[]", headers(b"[]"), 400),
    ],
)
async def test_signature_and_shape(
    product: RunningApp, session: aiohttp.ClientSession, body: bytes, hdrs: dict[str, str], status: int
) -> None:
    got, answer = await post(session, product, body, hdrs)
    assert got == status, answer
    stored = rows(product)
    assert len(stored) == (1 if status == 202 else 0)
    if status != 202:
        assert answer["status"] == status and answer["title"]


async def test_stored_before_the_answer_and_without_commit_messages(
    product: RunningApp, session: aiohttp.ClientSession
) -> None:
    status, answer = await post(session, product, PUSH, headers(PUSH))
    assert status == 202 and answer["event_id"]
    [row] = rows(product)  # already on disk when the 202 arrived
    assert row["state"] == "queued" and row["request_uuid"] == "r-1" and row["hook_uuid"] == "{h}"
    payload = json.loads(row["payload"])
    assert payload["branches"] == ["master"] and payload["repository_full_name"] == "brydzewski/foo"
    for change in json.loads(PUSH)["push"]["changes"]:
        for commit in change["commits"]:
            assert commit["message"].strip() not in row["payload"]


async def test_duplicates_add_nothing(product: RunningApp, session: aiohttp.ClientSession) -> None:
    assert (await post(session, product, PUSH, headers(PUSH, request="dup")))[0] == 202
    status, answer = await post(session, product, PUSH, headers(PUSH, request="dup", **{"X-Attempt-Number": "2"}))
    assert status == 202 and answer["duplicate"] is True
    assert len(rows(product)) == 1


async def test_the_same_body_under_another_request_uuid_is_another_event(
    product: RunningApp, session: aiohttp.ClientSession
) -> None:
    """Two real events can carry byte-identical bodies (a repository transferred in a second time,
    a main branch moved back): only a repeated X-Request-UUID is a duplicate (it was dropped when
    the hook and body repeated, however long after)."""
    first = await post(session, product, PUSH, headers(PUSH, request="first"))
    again = await post(session, product, PUSH, headers(PUSH, request="again"))
    assert first[0] == again[0] == 202 and not again[1].get("duplicate")
    assert again[1]["event_id"] != first[1]["event_id"]
    assert [r["request_uuid"] for r in rows(product)] == ["first", "again"]


async def test_unused_event_keys_are_recorded_as_ignored(product: RunningApp, session: aiohttp.ClientSession) -> None:
    body = json.dumps({"repository": {"full_name": "acme/api", "uuid": "{x}"}}).encode()
    status, _ = await post(session, product, body, headers(body, key="issue:created"))
    assert status == 202
    [row] = rows(product)
    assert row["state"] == "ignored" and row["event_key"] == "issue:created"


async def test_size_cap(product: RunningApp, session: aiohttp.ClientSession) -> None:
    big = b'{"x": "' + b"a" * (512 * 1024) + b'"}'
    assert (await post(session, product, big, headers(big)))[0] == 413

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the cap applies while reading
        for _ in range(600):
            yield b"a" * 1024

    async with session.post(product.url + "/hooks/bitbucket/token", data=chunks(), headers=headers(b"")) as resp:
        assert resp.status == 413
    assert rows(product) == []


async def test_unknown_connection_is_404(product: RunningApp, session: aiohttp.ClientSession) -> None:
    assert (await post(session, product, PUSH, headers(PUSH), path="/hooks/bitbucket/nope"))[0] == 404


async def test_503_only_when_storing_fails(product: RunningApp, session: aiohttp.ClientSession) -> None:
    await product.services.service.store.db.execute("DROP TABLE events")  # a real storage failure
    status, answer = await post(session, product, PUSH, headers(PUSH))
    assert status == 503 and "Retry" in answer["detail"]

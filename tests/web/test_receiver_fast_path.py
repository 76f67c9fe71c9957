"""The webhook receiver's fast path (issue 10, ingest throughput): ``POST /hooks/bitbucket/{id}``
goes to the receiver ahead of Starlette's middleware and router, and the group commit gives every
202 the id of its own stored row. Served as ``serve`` serves it
(uvicorn, httptools under :class:`app.main.BoundedHead`), on loopback, with real SQLite files."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import uvicorn

from app.main import SERVER_OPTIONS, SWITCH_INTERVAL, BoundedHead, build_services, create_app
from app.sandbox.serve import RunningSandbox, free_port
from app.store import Store
from app.store.events import NewEvent
from tests.helpers import RunningApp, product_settings
from tests.web.test_webhooks import VECTOR_SECRET, headers, post, rows


@contextlib.asynccontextmanager
async def served(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path, **options: Any
) -> AsyncIterator[RunningApp]:
    """The product (receiver and writer only) under uvicorn with ``options`` (``serve``'s by default)."""
    port = free_port()
    settings = product_settings(sandbox.api, tmp_path, port)
    services = await build_services(settings, session)
    app = create_app(settings, services, background=False)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", **options)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        service = services.service
        await service.store.connections.set_webhook(
            "token", service.encrypt(VECTOR_SECRET), [{"workspace": "acme", "level": "workspace", "uuid": "{h}"}]
        )
        service.forget_secrets("token")
        yield RunningApp(f"http://127.0.0.1:{port}", services, settings)
    finally:
        server.should_exit = True
        await task
        await services.service.store.close()


@pytest.fixture
async def product(sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path) -> AsyncIterator[RunningApp]:
    async with served(sandbox, session, tmp_path, **SERVER_OPTIONS) as app:
        yield app


def delivery(n: int) -> bytes:
    return json.dumps(
        {
            "repository": {"full_name": f"acme/repo-{n}", "uuid": f"{{repo-{n}}}", "workspace": {"slug": "acme"}},
            "push": {"changes": [{"new": {"type": "branch", "name": f"b-{n}"}}]},
        }
    ).encode()


def raw_request(body: bytes, *, request: str, close: bool = False, **extra: str) -> bytes:
    head = "POST /hooks/bitbucket/token HTTP/1.1\r\nHost: x\r\n"
    for name, value in (headers(body, request=request) | extra).items():
        head += f"{name}: {value}\r\n"
    head += f"Content-Length: {len(body)}\r\n" + ("Connection: close\r\n" if close else "") + "\r\n"
    return head.encode() + body


def responses(stream: bytes) -> list[tuple[int, dict[str, Any]]]:
    """Split a byte stream of HTTP/1.1 responses (each with a Content-Length) into (status, JSON body)."""
    out = []
    while stream:
        head, _, rest = stream.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        fields = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(fields["content-length"])
        out.append((int(lines[0].split()[1]), json.loads(rest[:length])))
        stream = rest[length:]
    return out


async def exchange(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)  # the last request says Connection: close
    finally:
        writer.close()


# -- group commit: every answer is its own row ------------------------------------------------------
async def test_concurrent_deliveries_each_get_the_id_of_their_own_row(
    product: RunningApp, session: aiohttp.ClientSession
) -> None:
    """Many deliveries at once (so they share commits), some of them sent twice at the same time:
    every 202 names the stored row of its own request, and each repeat is answered as a duplicate."""
    sends = [(n, f"r-{n}") for n in range(120)] + [(n, f"r-{n}") for n in range(0, 120, 12)]

    async def one(n: int, request: str) -> tuple[str, dict[str, Any]]:
        body = delivery(n)
        status, answer = await post(session, product, body, headers(body, request=request))
        assert status == 202, answer
        return request, answer

    answers = await asyncio.gather(*(one(n, r) for n, r in sends))
    stored = {row["request_uuid"]: row for row in rows(product)}
    assert len(stored) == 120
    named: dict[str, int] = {}
    for request, answer in answers:
        if answer["duplicate"]:
            assert answer["event_id"] is None
            continue
        assert request not in named, "two answers stored the same request"
        named[request] = answer["event_id"]
    assert named == {request: row["id"] for request, row in stored.items()}
    for request, eid in named.items():  # the row behind each id is that request's delivery
        n = int(request.split("-")[1])
        assert json.loads(stored[request]["payload"])["repository_full_name"] == f"acme/repo-{n}"
        assert stored[request]["id"] == eid


async def test_a_batch_with_duplicates_inside_and_outside_it(tmp_path: Path) -> None:
    """The ids of one multi-row insert when some of its rows are ignored: read back by their keys."""
    store = await Store.open(tmp_path / "lp.sqlite3")

    def event(n: int, request: str | None = None) -> NewEvent:
        return NewEvent(
            connection_id="token",
            source="webhook",
            event_key="repo:push",
            payload={"n": n},
            request_uuid=request if request is not None else f"req-{n}",
            hook_uuid="{h}",
            attempt=1,
            body_hash=f"hash-{n}",
            workspace="acme",
        )

    try:
        [first] = await store.events.append_many([event(1)])
        batch = [event(2), event(1), event(3), event(3), event(4, request="")]
        ids = await store.events.append_many(batch)
        rows_by_hash = {
            r["body_hash"]: r["id"] for r in await store.db.fetchall("SELECT id, body_hash FROM events ORDER BY id")
        }
    finally:
        await store.close()
    assert first == rows_by_hash["hash-1"]
    assert ids == [rows_by_hash["hash-2"], None, rows_by_hash["hash-3"], None, rows_by_hash["hash-4"]]


# -- HTTP framing over serve's stack ------------------------------------------------------------
async def test_pipelined_deliveries_get_whole_answers_in_order(product: RunningApp) -> None:
    port = int(product.url.rsplit(":", 1)[1])
    stream = (
        raw_request(delivery(1), request="p-1")
        + raw_request(delivery(1), request="p-1")  # the same delivery again: a duplicate
        + raw_request(delivery(2), request="p-2", **{"X-Hub-Signature": "sha256=" + "0" * 64})
        + raw_request(delivery(3), request="p-3", close=True)
    )
    got = responses(await exchange(port, stream))
    assert [status for status, _ in got] == [202, 202, 401, 202]
    assert got[0][1]["event_id"] and got[1][1]["duplicate"] and got[2][1]["title"] == "Bad signature"
    assert sorted(r["request_uuid"] for r in rows(product)) == ["p-1", "p-3"]


async def test_expect_100_continue_is_answered_before_the_body(product: RunningApp) -> None:
    """curl sends ``Expect: 100-continue`` for larger bodies and waits for the interim answer."""
    port = int(product.url.rsplit(":", 1)[1])
    body = delivery(7)
    request = raw_request(body, request="c-7", close=True, Expect="100-continue")
    head = request[: len(request) - len(body)]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        await writer.drain()
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim.startswith(b"HTTP/1.1 100 Continue")
        writer.write(body)
        await writer.drain()
        [(status, answer)] = responses(await asyncio.wait_for(reader.read(), 10))
    finally:
        writer.close()
    assert status == 202 and answer["event_id"]


# -- what the fast path leaves to the router, and what it checks itself ----------------------------
async def test_other_methods_and_paths_are_routed_as_before(
    product: RunningApp, session: aiohttp.ClientSession
) -> None:
    async with session.get(product.url + "/hooks/bitbucket/token") as resp:
        assert resp.status == 405
    body = delivery(1)
    for path in ("/hooks/bitbucket/token/more", "/hooks/bitbucket/"):
        async with session.post(product.url + path, data=body, headers=headers(body)) as resp:
            assert resp.status == 404, path
    status, answer = await post(session, product, body, headers(body), path="/hooks/bitbucket/nobody")
    assert status == 404 and answer["title"] == "Unknown connection"
    assert rows(product) == []


async def test_an_oversized_head_on_the_webhook_route_is_431(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Plain httptools (no head bound while it arrives): a complete head over the limit reaches the
    app, and the fast path refuses it as HeaderLimit does for every other route."""
    async with served(sandbox, session, tmp_path, http="httptools") as app:
        body = delivery(1)
        big = headers(body) | {"X-Padding": "p" * (20 * 1024)}
        async with session.post(app.url + "/hooks/bitbucket/token", data=body, headers=big) as resp:
            assert resp.status == 431
        assert rows(app) == []
        assert (await post(session, app, body, headers(body)))[0] == 202


async def test_an_unexpected_error_is_a_500_and_the_next_delivery_is_taken(
    product: RunningApp, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ahead of Starlette's ServerErrorMiddleware the receiver answers a bug itself (never a hang)."""
    from app.web import webhooks

    def broken(*args: object, **kwargs: object) -> str | None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(webhooks, "body_problem", broken)
    body = delivery(1)
    status, answer = await post(session, product, body, headers(body))
    assert status == 500 and answer["status"] == 500
    monkeypatch.undo()
    assert (await post(session, product, body, headers(body)))[0] == 202
    assert len(rows(product)) == 1


async def test_the_gil_switch_interval_is_short_while_serving(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """The writer's SQLite thread gets the GIL back within SWITCH_INTERVAL while the app runs (not
    the default 5 ms a group commit would wait on a busy loop); the setting is restored after."""
    before = sys.getswitchinterval()
    assert before > SWITCH_INTERVAL  # Python's default
    async with served(sandbox, session, tmp_path):
        assert sys.getswitchinterval() == SWITCH_INTERVAL
    assert sys.getswitchinterval() == before


# -- one write per answer -----------------------------------------------------------------------
class _Writes:
    """The connection's real transport, recording what each ``write`` call carries."""

    def __init__(self, transport: asyncio.Transport, log: list[bytes]) -> None:
        self._transport, self._log = transport, log

    def write(self, data: bytes) -> None:
        self._log.append(bytes(data))
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


async def test_an_answer_with_a_body_leaves_in_one_write(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """serve's protocol writes a response's head together with its body (one send(2), not two);
    a HEAD answer, an interim 100 Continue and an error before the body still leave whole."""
    writes: list[bytes] = []

    class Recording(BoundedHead):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(_Writes(transport, writes))  # type: ignore[arg-type]

    async with served(sandbox, session, tmp_path, http=Recording) as app:
        port = int(app.url.rsplit(":", 1)[1])
        got = await exchange(port, raw_request(delivery(1), request="w-1", close=True))
        [(status, answer)] = responses(got)
        assert status == 202 and answer["event_id"]
        assert writes == [got]  # head and body in one write
        assert got.startswith(b"HTTP/1.1 202 ") and got.endswith(b'"duplicate":false}')

        writes.clear()
        body = delivery(2)
        request = raw_request(body, request="w-2", close=True, Expect="100-continue")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(request[: len(request) - len(body)])
            await writer.drain()
            interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            writer.write(body)
            await writer.drain()
            final = await asyncio.wait_for(reader.read(), 10)
        finally:
            writer.close()
        assert writes == [interim, final] and responses(final)[0][0] == 202

        writes.clear()
        async with session.head(app.url + "/healthz") as resp:
            assert resp.status == 200 and int(resp.headers["content-length"]) > 0
        assert len(writes) == 1 and writes[0].endswith(b"\r\n\r\n")  # the head alone, not held back
        assert rows(app) and len(rows(app)) == 2


async def test_an_answered_request_leaves_no_reference_cycle_behind(
    product: RunningApp, session: aiohttp.ClientSession
) -> None:
    """Refcounting frees each answered request (its uvicorn cycle, scope, headers): none waits for
    the garbage collector, which would otherwise run every few dozen deliveries under load."""
    import gc

    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

    gc.collect()
    gc.disable()
    try:
        for n in range(20):
            body = delivery(n)
            assert (await post(session, product, body, headers(body, request=f"g-{n}")))[0] == 202
        alive = [o for o in gc.get_objects() if isinstance(o, RequestResponseCycle)]
    finally:
        gc.enable()
    # at most the last request's cycle of each open keep-alive connection (its protocol holds it)
    assert len(alive) <= 2, f"{len(alive)} request cycles left for the garbage collector"


# -- orjson on the hot path, json for what it refuses ---------------------------------------------
@pytest.mark.parametrize(
    ("body", "branch"),
    [
        (
            b'{"repository":{"full_name":"acme/a","workspace":{"slug":"acme"}},"push":{"changes":[{"new":'
            b'{"type":"branch","name":"b-\\ud800"}}]}}',
            "b-\ud800",
        ),  # a lone surrogate: orjson refuses it
        (
            b'{"n":NaN,"repository":{"full_name":"acme/a"},"push":{"changes":[{"new":{"type":"branch",'
            b'"name":"main"}}]}}',
            "main",
        ),  # NaN: json's extension
        (
            '{"repository":{"full_name":"acme/a"},"push":{"changes":[{"new":{"type":"branch","name":"é"}}]}}'.encode(
                "utf-16"
            ),
            "é",
        ),  # UTF-16 with a BOM: json detects it
    ],
)
async def test_bodies_orjson_refuses_are_decided_by_json_as_before(
    product: RunningApp, session: aiohttp.ClientSession, body: bytes, branch: str
) -> None:
    status, answer = await post(session, product, body, headers(body))
    assert status == 202 and answer["event_id"], answer
    [row] = rows(product)
    payload = json.loads(row["payload"])
    assert payload["branches"] == [branch] and payload["workspace"] == "acme"


# -- the time-to-202 histogram ----------------------------------------------------------------------
def test_the_loop_histogram_exposes_what_prometheus_histogram_does() -> None:
    """Same buckets (bounds inclusive), count and sum as prometheus_client's Histogram."""
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from app.metrics import Metrics

    metrics, registry = Metrics(), CollectorRegistry()
    reference = Histogram(
        "lp_webhook_time_to_202_seconds",
        "Time from request to the 202 answer",
        buckets=metrics.ingest.bounds,
        registry=registry,
    )
    samples = [0.0005, 0.001, 0.0011, 0.002, 0.012, 0.05, 0.3, 1.0, 7.5]
    for value in samples:
        metrics.observe_ingest(value)
        reference.observe(value)

    def lines(text: bytes) -> list[str]:
        return [x for x in text.decode().splitlines() if x.startswith("lp_webhook_time_to_202_seconds_")]

    assert lines(metrics.render()) == [x for x in lines(generate_latest(registry)) if "_created" not in x]
    assert f"lp_webhook_time_to_202_seconds_count {float(len(samples))}" in lines(metrics.render())


async def test_every_202_is_observed_in_the_time_to_202_histogram(
    product: RunningApp, session: aiohttp.ClientSession
) -> None:
    for n in range(3):
        body = delivery(n)
        assert (await post(session, product, body, headers(body, request=f"m-{n}")))[0] == 202
    async with session.get(product.url + "/metrics") as resp:
        text = await resp.text()
    assert "lp_webhook_time_to_202_seconds_count 3.0" in text
    assert 'lp_webhook_time_to_202_seconds_bucket{le="+Inf"} 3.0' in text


# -- WAL checkpoints off the commit path ----------------------------------------------------------
async def test_the_wal_is_checkpointed_beside_the_writer_not_by_its_commits(
    product: RunningApp, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """While the writer runs, its connection leaves checkpoints to the checkpointer's own connection
    (SQLite's page mark is raised), which copies committed deliveries into the database file
    within a fraction of a second: the file alone, without its WAL, holds them."""
    import shutil
    import sqlite3

    from app.store.events import SAFETY_PAGES

    db = product.services.service.store.db
    assert (await db.fetchone("PRAGMA wal_autocheckpoint"))[0] == SAFETY_PAGES
    for n in range(5):
        body = delivery(n)
        assert (await post(session, product, body, headers(body, request=f"k-{n}")))[0] == 202
    main_file = Path(product.settings.database)
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        copy = tmp_path / f"copy-{asyncio.get_running_loop().time()}.sqlite3"
        shutil.copyfile(main_file, copy)  # the database file alone: what was checkpointed
        conn = sqlite3.connect(copy)
        try:
            found = conn.execute("SELECT count(*) FROM events WHERE request_uuid LIKE 'k-%'").fetchone()[0]
        except sqlite3.OperationalError:  # not even the schema copied back yet
            found = 0
        finally:
            conn.close()
        if found == 5:
            break
        assert asyncio.get_running_loop().time() < deadline, f"{found} of 5 checkpointed"
        await asyncio.sleep(0.05)
    assert product.services.writer.checkpointer is not None
    assert product.services.writer.checkpointer.checkpoints > 0

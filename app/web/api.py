"""``/api``: the JSON API (Bearer ``LP_ADMIN_TOKEN``); errors as problem details."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from app import actions, errors
from app.findings import to_json
from app.models import STATUSES
from app.settings import CHECK_IDS
from app.store.events import EventRow
from app.web.auth import require_admin
from app.web.jsonbody import json_object
from app.web.problems import Problem
from app.web.state import services_of

EVENT_STATES = ("queued", "running", "done", "failed", "dead", "ignored")


def _int(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise Problem(400, "Bad parameter", f"{name} must be a whole number") from None
    if not lo <= value <= hi:
        raise Problem(400, "Bad parameter", f"{name} must be between {lo} and {hi}")
    return value


def _choice(request: Request, name: str, choices: tuple[str, ...]) -> str | None:
    value = request.query_params.get(name)
    if value is not None and value not in choices:
        raise Problem(400, "Bad parameter", f"{name} must be one of {', '.join(choices)}")
    return value


async def events(request: Request) -> Response:
    require_admin(request)
    store = request.app.state.services.service.store
    limit = _int(request, "limit", 50, 1, 500)
    before = request.query_params.get("before")
    rows = await store.events.list(
        state=_choice(request, "state", EVENT_STATES),
        event_key=request.query_params.get("event_key"),
        workspace=request.query_params.get("workspace"),
        limit=limit,
        before_id=_int(request, "before", 0, 0, 2**62) if before else None,
    )
    items = [r.as_json() for r in rows]
    nxt = None
    if len(rows) == limit:
        params = dict(request.query_params) | {"before": str(rows[-1].id), "limit": str(limit)}
        nxt = "/api/events?" + urlencode(params)
    return JSONResponse({"items": items, "next": nxt})


def _sse(row: EventRow) -> bytes:
    return f"id: {row.id}\nevent: event\ndata: {json.dumps(row.as_json(), default=str)}\n\n".encode()


async def event_stream(request: Request) -> Response:
    """Server-sent events: every change of the event log, live (this process wakes at once,
    other processes' writes are seen within a second)."""
    require_admin(request)
    return stream_response(request)


def stream_response(request: Request) -> StreamingResponse:
    """The event stream itself; the caller has checked who is asking."""
    store = request.app.state.services.service.store

    async def gen() -> AsyncIterator[bytes]:
        since = time.time() - 1.0
        last_beat = time.monotonic()
        yield b": connected\n\n"
        while True:
            watched = await store.events.watch()  # before the read: a change after it wakes us
            rows = await store.events.list(changed_after=since, limit=200)
            for row in rows:
                yield _sse(row)
            if rows:
                since = max(since, max(r.changed_at for r in rows))
            if time.monotonic() - last_beat > 15:
                last_beat = time.monotonic()
                yield b": keep-alive\n\n"
            if await request.is_disconnected():
                return
            await store.events.wait_changed(1.0, watched)

    return StreamingResponse(gen(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})


async def findings(request: Request) -> Response:
    require_admin(request)
    store = request.app.state.services.service.store
    limit = _int(request, "limit", 500, 1, 5000)
    offset = _int(request, "offset", 0, 0, 10**9)
    rows = await store.results.query(
        workspace=request.query_params.get("workspace"),
        check=_choice(request, "check", CHECK_IDS),
        status=_choice(request, "status", STATUSES),
        subject=request.query_params.get("subject"),
        limit=limit,
        offset=offset,
    )
    return JSONResponse([to_json(r) for r in rows])


async def reconcile_now(request: Request) -> Response:
    require_admin(request)
    body: dict[str, Any] = await json_object(request) if await request.body() else {}
    tier = body.get("tier", "full")
    if not isinstance(tier, str):
        raise Problem(400, "Bad body", "tier must be full or members")
    workspace = body.get("workspace")
    if workspace is not None and not isinstance(workspace, str):
        raise Problem(400, "Bad body", "workspace must be a string")
    try:
        done = await actions.reconcile_now(services_of(request), tier=tier, workspace=workspace)
    except errors.RecordError as exc:
        raise Problem(400, "Bad body", str(exc)) from None
    await asyncio.sleep(0)
    return JSONResponse({"queued": done.events}, status_code=202)

"""``POST /hooks/bitbucket/{connection}``: verify, store, answer 202 — nothing more.

Order (gidgethub's rule, not Sentry's): read at most 512 KiB of raw body (413 beyond, without
buffering more), verify ``X-Hub-Signature`` in constant time before parsing (401), check the
header values we keep (printable ASCII, short; ``X-Attempt-Number`` a small integer) and the body
(JSON object nested at most 512 deep) (400), then store the event durably before answering 202
(503 only when storing failed or did not finish within STORE_TIMEOUT, so Bitbucket retries). A
repeated ``X-Request-UUID`` answers 202 and adds nothing (a body equal to an earlier one's is a
new event: two real events can carry byte-identical bodies; processing is idempotent). An event
key the planner does not use, or a repository in a workspace the connection does not monitor,
answers 202 and is recorded ``ignored``: the worker never claims it, so it costs no API call.
The work happens later, in the worker.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from app import errors
from app.bitbucket import sansio
from app.logs import get_logger
from app.models import Delivery
from app.planner import USED_EVENTS
from app.store.events import NewEvent
from app.web.jsonbody import too_deep
from app.web.problems import problem_response

log = get_logger("web.webhooks")
MAX_BODY = 512 * 1024
# How long a delivery waits for its insert before answering 503 (a stalled writer must not hold
# Bitbucket's connection until it gives up; a late insert is harmless: the retry is a duplicate).
STORE_TIMEOUT = 10.0
# The headers kept in the event log, and the longest value accepted for each (Bitbucket sends
# UUIDs in braces, event keys like "pullrequest:changes_request_created", attempts 1 to 3).
KEPT_HEADERS = {"X-Event-Key": 100, "X-Request-UUID": 100, "X-Hook-UUID": 100, "X-Attempt-Number": 3}


def header_problem(headers: Mapping[str, str]) -> str | None:
    """Why the kept header values cannot be stored as they are, or None when they can."""
    for name, longest in KEPT_HEADERS.items():
        value = headers.get(name)
        if value is None:
            continue
        if len(value) > longest:
            return f"{name} is longer than {longest} characters"
        if not (value.isascii() and value.isprintable()):
            return f"{name} must be printable ASCII"
    attempt = headers.get("X-Attempt-Number", "").strip()
    if attempt and not all("0" <= c <= "9" for c in attempt):
        return "X-Attempt-Number must be a small integer"
    return None


def body_problem(delivery: Delivery | Mapping[str, Any]) -> str | None:
    """Why a parsed delivery cannot be stored (the workspace is a column of its own)."""
    ws = delivery.workspace if isinstance(delivery, Delivery) else delivery["workspace"]
    if ws is not None and (len(ws) > 200 or not ws.isprintable() or not _encodable(ws)):
        return "repository workspace is not a valid slug"
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:  # a lone surrogate, which JSON's \uD800 escapes can carry
        return False
    return True


def event_from_delivery(
    connection_id: str, delivery: Delivery, raw: bytes, workspaces: frozenset[str] | None = None
) -> NewEvent:
    """The event-log row for a verified delivery: only what the planner needs. ``ignored`` when
    the planner does not use its key, or when its repository is in none of ``workspaces``."""
    return event_from_fields(connection_id, delivery.model_dump(mode="json"), raw, workspaces)


def event_from_fields(
    connection_id: str, fields: dict[str, Any], raw: bytes, workspaces: frozenset[str] | None = None
) -> NewEvent:
    """:func:`event_from_delivery` from :func:`sansio.delivery_fields` (the receiver's hot path)."""
    key: str = fields["event_key"]
    ws: str | None = fields["workspace"]
    foreign = workspaces is not None and ws is not None and ws.lower() not in workspaces
    # The delivery's content hash (event key and body: repo:created and repo:deleted of one
    # repository by one actor carry byte-identical bodies), kept with the row; it matches a batch's
    # rows to their deliveries, and deduplicates nothing (migration 7).
    digest = hashlib.sha256(key.encode())
    digest.update(b"\n")
    digest.update(raw)
    return NewEvent(
        connection_id=connection_id,
        source="webhook",
        event_key=key,
        payload=fields,
        state="queued" if key in USED_EVENTS and not foreign else "ignored",
        request_uuid=fields["request_uuid"] or None,
        hook_uuid=fields["hook_uuid"],
        attempt=fields["attempt"],
        body_hash=digest.hexdigest(),
        workspace=ws,
    )


class Receiver:
    """The route's ASGI app. Raw ASGI rather than a Starlette endpoint: this is the one hot path
    (every delivery). :class:`app.main.HookRoute` calls it ahead of Starlette's middleware and
    router (with ``path_params`` set), so it answers every outcome itself, an unexpected error
    included (500, logged). Each step was measured with py-spy under bench/ingest_wrk.py."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        services = scope["app"].state.services
        cid = scope["path_params"]["connection"]
        try:
            answer = await self._answer(services, cid, scope, receive)
        except _Gone:
            return  # the client went away before its body arrived: nothing stored, no one to answer
        except Exception:  # a bug must still answer (and be logged), never hang
            log.exception("webhook.unexpected_error", connection=cid)
            answer = _INTERNAL
        if isinstance(answer, int | None):
            services.metrics.observe_ingest(time.perf_counter() - started)
            body = b'{"accepted":true,"event_id":%d,"duplicate":false}' % answer if answer is not None else _DUPLICATE
            await send({"type": "http.response.start", "status": 202, "headers": _json_headers(len(body))})
            await send({"type": "http.response.body", "body": body})
            return
        await answer(scope, receive, send)

    async def _answer(self, services: Any, cid: str, scope: Scope, receive: Receive) -> int | Response | None:
        """The stored event's id (None for a duplicate) or the problem to answer."""
        headers = _kept_headers(scope["headers"])
        try:
            target = await services.service.webhook_target(cid)
        except Exception as exc:  # noqa: BLE001 - the database cannot answer: nothing can be stored either
            log.error("webhook.lookup_failed", connection=cid, error=type(exc).__name__)
            return _UNAVAILABLE
        if target is None:
            return problem_response(404, "Unknown connection", "No webhook is registered for this URL.")
        raw = await _read_body(receive, headers.get("content-length"))
        if raw is None:
            return _TOO_LARGE
        try:
            sansio.verify_signature(target.secrets, raw, headers.get("X-Hub-Signature"))
        except errors.SignatureError as exc:
            return problem_response(401, "Bad signature", str(exc))
        problem = header_problem(headers)
        if problem is None and too_deep(raw):
            problem = "body is JSON nested too deeply"
        if problem is None:
            try:
                fields = sansio.delivery_fields(headers, raw)
                problem = body_problem(fields)
            except errors.PayloadError as exc:
                problem = str(exc)
            except RecursionError:  # too_deep should have caught it; never a 500
                problem = "body is JSON nested too deeply"
        if problem is not None:
            return problem_response(400, "Malformed delivery", problem)
        try:
            event = event_from_fields(cid, fields, raw, target.workspaces)
            stored: int | None = await services.writer.enqueue(event, STORE_TIMEOUT)
            return stored
        except Exception as exc:  # noqa: BLE001 - any storage failure must become 503 so Bitbucket retries
            log.error("webhook.store_failed", connection=cid, error=type(exc).__name__)
            return _UNAVAILABLE


receive = Receiver()

_DUPLICATE = b'{"accepted":true,"event_id":null,"duplicate":true}'
_TOO_LARGE = problem_response(413, "Payload too large", f"At most {MAX_BODY} bytes.")
_UNAVAILABLE = problem_response(503, "Could not store the event", "Retry later.")
_INTERNAL = problem_response(500, "Internal error", "The delivery could not be handled; it was not stored.")
_WANTED = {name.lower().encode(): name for name in (*KEPT_HEADERS, "X-Hub-Signature")} | {
    b"content-length": "content-length"
}


def _kept_headers(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """The headers the receiver reads, under their canonical names (ASGI gives them lower-cased)."""
    found: dict[str, str] = {}
    for key, value in raw:
        name = _WANTED.get(key.lower())
        if name is not None and name not in found:  # the first of repeated headers, as Starlette reads
            found[name] = value.decode("latin-1")
    return found


class _Gone(Exception):
    """The client disconnected before its body arrived: nothing to store, no one to answer."""


async def _read_body(receive: Receive, length: str | None) -> bytes | None:
    """The raw body, or None when it is (or announces itself) over MAX_BODY; never buffers more."""
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
        return None
    parts: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            raise _Gone
        part = message.get("body", b"")
        size += len(part)
        if size > MAX_BODY:
            return None
        parts.append(part)
        more = message.get("more_body", False)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _json_headers(length: int) -> list[tuple[bytes, bytes]]:
    return [(b"content-type", b"application/json"), (b"content-length", b"%d" % length)]

"""``POST /hooks/bitbucket/{connection}``: verify, store, answer 202 — nothing more.

Order (gidgethub's rule, not Sentry's): read at most 512 KiB of raw body (413 beyond, without
buffering more), verify ``X-Hub-Signature`` in constant time before parsing (401), check the
header values we keep (printable ASCII, short; ``X-Attempt-Number`` a small integer) and the body
(JSON object nested at most 512 deep) (400), then store the event durably before answering 202
(503 only when storing failed, so Bitbucket retries). A repeated ``X-Request-UUID``, or the same
hook and body, answers 202 and adds nothing. An event key the planner does not use, or a
repository in a workspace the connection does not monitor, answers 202 and is recorded
``ignored``: the worker never claims it, so it costs no API call. The work happens later, in the
worker.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping

from starlette.requests import Request
from starlette.responses import Response

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


def body_problem(delivery: Delivery) -> str | None:
    """Why a parsed delivery cannot be stored (the workspace is a column of its own)."""
    ws = delivery.workspace
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
    foreign = workspaces is not None and delivery.workspace is not None and delivery.workspace.lower() not in workspaces
    return NewEvent(
        connection_id=connection_id,
        source="webhook",
        event_key=delivery.event_key,
        payload=delivery.model_dump(mode="json"),
        state="queued" if delivery.event_key in USED_EVENTS and not foreign else "ignored",
        request_uuid=delivery.request_uuid or None,
        hook_uuid=delivery.hook_uuid,
        attempt=delivery.attempt,
        body_hash=hashlib.sha256(raw).hexdigest(),
        workspace=delivery.workspace,
    )


async def receive(request: Request) -> Response:
    started = time.perf_counter()
    services = request.app.state.services
    cid = request.path_params["connection"]
    target = await services.service.webhook_target(cid)
    if target is None:
        return problem_response(404, "Unknown connection", "No webhook is registered for this URL.")
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
        return problem_response(413, "Payload too large", f"At most {MAX_BODY} bytes.")
    if length is not None:
        raw = await request.body()  # bounded by the Content-Length checked above
        if len(raw) > MAX_BODY:
            return problem_response(413, "Payload too large", f"At most {MAX_BODY} bytes.")
    else:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                return problem_response(413, "Payload too large", f"At most {MAX_BODY} bytes.")
        raw = bytes(body)
    try:
        sansio.verify_signature(target.secrets, raw, request.headers.get("X-Hub-Signature"))
    except errors.SignatureError as exc:
        return problem_response(401, "Bad signature", str(exc))
    problem = header_problem(request.headers)
    if problem is None and too_deep(raw):
        problem = "body is JSON nested too deeply"
    if problem is None:
        try:
            delivery = sansio.parse_delivery(request.headers, raw)
            problem = body_problem(delivery)
        except errors.PayloadError as exc:
            problem = str(exc)
        except RecursionError:  # too_deep should have caught it; never a 500
            problem = "body is JSON nested too deeply"
    if problem is not None:
        return problem_response(400, "Malformed delivery", problem)
    try:
        eid = await services.writer.submit(event_from_delivery(cid, delivery, raw, target.workspaces))
    except Exception as exc:  # noqa: BLE001 - any storage failure must become 503 so Bitbucket retries
        log.error("webhook.store_failed", connection=cid, error=type(exc).__name__)
        return problem_response(503, "Could not store the event", "Retry later.")
    services.metrics.observe_ingest(time.perf_counter() - started)
    answer = b'{"accepted":true,"event_id":%d,"duplicate":false}' % eid if eid is not None else _DUPLICATE
    return Response(answer, status_code=202, media_type="application/json")


_DUPLICATE = b'{"accepted":true,"event_id":null,"duplicate":true}'

"""``POST /hooks/bitbucket/{connection}``: verify, store, answer 202 — nothing more.

Order (gidgethub's rule, not Sentry's): read at most 512 KiB of raw body (413 beyond, without
buffering more), verify ``X-Hub-Signature`` in constant time before parsing (401), parse headers
and body (400), then store the event durably before answering 202 (503 only when storing
failed, so Bitbucket retries). A repeated ``X-Request-UUID``, or the same hook and body, answers
202 and adds nothing; an event key the planner does not use answers 202 and is recorded
``ignored``. The work happens later, in the worker.
"""

from __future__ import annotations

import hashlib
import time

from starlette.requests import Request
from starlette.responses import Response

from app import errors
from app.bitbucket import sansio
from app.logs import get_logger
from app.models import Delivery
from app.planner import USED_EVENTS
from app.store.events import NewEvent
from app.web.problems import problem_response

log = get_logger("web.webhooks")
MAX_BODY = 512 * 1024


def event_from_delivery(connection_id: str, delivery: Delivery, raw: bytes) -> NewEvent:
    """The event-log row for a verified delivery: only what the planner needs."""
    return NewEvent(
        connection_id=connection_id,
        source="webhook",
        event_key=delivery.event_key,
        payload=delivery.model_dump(mode="json"),
        state="queued" if delivery.event_key in USED_EVENTS else "ignored",
        request_uuid=delivery.request_uuid or None,
        hook_uuid=delivery.hook_uuid,
        attempt=delivery.attempt,
        # The event key is part of what makes a delivery unique: repo:created and repo:deleted of one
        # repository by one actor carry byte-identical bodies (the key is only in X-Event-Key).
        body_hash=hashlib.sha256(delivery.event_key.encode() + b"\n" + raw).hexdigest(),
        workspace=delivery.workspace,
    )


async def receive(request: Request) -> Response:
    started = time.perf_counter()
    services = request.app.state.services
    cid = request.path_params["connection"]
    secrets = await services.service.webhook_secrets(cid)
    if secrets is None:
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
        sansio.verify_signature(secrets, raw, request.headers.get("X-Hub-Signature"))
    except errors.SignatureError as exc:
        return problem_response(401, "Bad signature", str(exc))
    try:
        delivery = sansio.parse_delivery(request.headers, raw)
    except errors.PayloadError as exc:
        return problem_response(400, "Malformed delivery", str(exc))
    try:
        eid = await services.writer.submit(event_from_delivery(cid, delivery, raw))
    except Exception as exc:  # noqa: BLE001 - any storage failure must become 503 so Bitbucket retries
        log.error("webhook.store_failed", connection=cid, error=type(exc).__name__)
        return problem_response(503, "Could not store the event", "Retry later.")
    services.metrics.observe_ingest(time.perf_counter() - started)
    answer = b'{"accepted":true,"event_id":%d,"duplicate":false}' % eid if eid is not None else _DUPLICATE
    return Response(answer, status_code=202, media_type="application/json")


_DUPLICATE = b'{"accepted":true,"event_id":null,"duplicate":true}'

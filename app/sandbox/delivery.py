"""Sandbox: webhook payloads and signed delivery, as Bitbucket Cloud sends them.

Delivery (support.atlassian.com "Troubleshoot webhooks"): a POST with ``X-Event-Key``,
``X-Hook-UUID`` (a bare uuid, no braces), ``X-Event-Time``, ``X-Request-UUID``,
``X-Attempt-Number``, ``User-Agent: Bitbucket-Webhooks/2.0``
and, when the hook has a secret, ``X-Hub-Signature: sha256=<hex HMAC-SHA256 of the raw body>``;
10 s timeout; only a 5xx answer is retried, at most twice. The request uuid stays the same across
the retries of one delivery (Bitbucket does not document it either way).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import uuid as uuidlib
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any

import aiohttp

from app.sandbox.scenario import SHook, now_iso

TIMEOUT = 10.0
MAX_ATTEMPTS = 3  # the first try and two retries on 5xx

WORKSPACE_EVENTS = sorted(
    [
        "repo:push",
        "repo:fork",
        "repo:updated",
        "repo:imported",
        "repo:created",
        "repo:deleted",
        "repo:transfer",
        "repo:commit_comment_created",
        "repo:commit_status_created",
        "repo:commit_status_updated",
        "project:updated",
        "pipeline:span_created",
        "pullrequest:created",
        "pullrequest:updated",
        "pullrequest:push",
        "pullrequest:approved",
        "pullrequest:unapproved",
        "pullrequest:changes_request_created",
        "pullrequest:changes_request_removed",
        "pullrequest:fulfilled",
        "pullrequest:rejected",
        "pullrequest:comment_created",
        "pullrequest:comment_updated",
        "pullrequest:comment_deleted",
        "pullrequest:comment_resolved",
        "pullrequest:comment_reopened",
    ]
)
# A repository hook cannot hear about its repository's creation or its project.
REPOSITORY_EVENTS = sorted(set(WORKSPACE_EVENTS) - {"repo:created", "project:updated"})


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass
class DeliveryRecord:
    hook_uuid: str
    event_key: str
    request_uuid: str
    url: str
    attempts: list[str] = field(default_factory=list)  # status code, TIMEOUT or NETWORK ERROR
    delivered_at: str = field(default_factory=now_iso)
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""

    def as_dict(self, bodies: bool = False) -> dict[str, Any]:
        extra = {"headers": self.headers, "body": self.body} if bodies else {}
        return extra | {
            "hook_uuid": self.hook_uuid,
            "event_key": self.event_key,
            "request_uuid": self.request_uuid,
            "url": self.url,
            "attempts": self.attempts,
            "delivered_at": self.delivered_at,
        }


class Deliverer:
    """Sends deliveries over one aiohttp session and keeps their log."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self.log: list[DeliveryRecord] = []
        self.retry_delay = 0.2  # Bitbucket documents no spacing; keep tests quick

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def deliver(self, hook: SHook, event_key: str, payload: dict[str, Any]) -> DeliveryRecord:
        await self.start()
        assert self._session is not None
        body = json.dumps(payload).encode()
        record = DeliveryRecord(hook.uuid, event_key, str(uuidlib.uuid4()), hook.url)
        event_time = formatdate(usegmt=True)  # when the event happened: the same on every retry
        self.log.append(record)
        for attempt in range(1, MAX_ATTEMPTS + 1):
            headers = {
                "Content-Type": "application/json",
                "User-Agent": "Bitbucket-Webhooks/2.0",
                "X-Event-Key": event_key,
                "X-Hook-UUID": hook.uuid.strip("{}"),  # a bare uuid, unlike the REST object's
                "X-Event-Time": event_time,
                "X-Request-UUID": record.request_uuid,
                "X-Attempt-Number": str(attempt),
            }
            if hook.secret is not None:
                headers["X-Hub-Signature"] = signature(hook.secret, body)
            record.headers, record.body = headers, body.decode()
            try:
                async with self._session.post(hook.url, data=body, headers=headers) as resp:
                    await resp.read()
                    record.attempts.append(str(resp.status))
                    if resp.status < 500:
                        return record
            except TimeoutError:
                record.attempts.append("TIMEOUT")
            except aiohttp.ClientError:
                record.attempts.append("NETWORK ERROR")
                return record  # Bitbucket retries only a 5xx answer
            if attempt < MAX_ATTEMPTS:
                await asyncio.sleep(self.retry_delay)
        return record

"""Alert rules and rendering (pure), the outbox dispatcher (real SQLite), Slack through a local
HTTP receiver, email through a real local SMTP server (aiosmtpd)."""

from __future__ import annotations

import asyncio
import email
import itertools
import json
from email.message import Message
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiosmtpd.controller import Controller

from app.errors import ConfigError
from app.findings import Change, Delta, fingerprint
from app.models import Result, StoredResult
from app.notify.dispatcher import Dispatcher
from app.notify.render import MAX_BLOCKS, MAX_SECTION, slack_message, validate_slack_url
from app.notify.rules import alerts_for
from app.notify.senders import DeliveryError, EmailSender, SlackSender
from app.sandbox.serve import free_port
from app.store import Store
from tests.helpers import Receiver


def res(
    status: str, subject: str = "acme/api", check: str = "branch-protection-enforced", message: str = "m"
) -> Result:
    return Result(
        check=check,
        severity="high",
        workspace="acme",
        subject_type="repository",
        subject_key=subject,
        subject=subject,
        subject_name=subject.split("/")[-1],
        status=status,
        message=message,
    )


def prev(status: str, subject: str = "acme/api") -> StoredResult:
    r = res(status, subject)
    return StoredResult(result=r, fingerprint=fingerprint(r), first_seen="t0", last_changed="t1")


@pytest.mark.parametrize(
    ("delta", "kinds"),
    [
        (Delta(opened=[Change(res("fail"), prev("pass"))]), ["opened"]),
        (Delta(opened=[Change(res("unknown"), prev("not_applicable"))]), ["opened"]),
        (Delta(opened=[Change(res("fail"), prev("excepted"))]), ["opened"]),  # exception expired
        (Delta(resolved=[Change(res("pass"), prev("fail"))]), ["resolved"]),
        (Delta(opened=[Change(res("fail"), None)], unchanged=[res("pass", "acme/x")]), ["opened"]),  # new, failing
        (Delta(changed=[Change(res("unknown"), prev("fail"))]), []),  # still failing: nothing
        (Delta(changed=[Change(res("fail"), prev("unknown"))]), ["opened"]),  # an unknown confirmed as a fail
        (Delta(changed=[Change(res("pass", message="x"), prev("pass"))]), []),
        (Delta(opened=[Change(res("fail", f"acme/r{i}"), None) for i in range(8)]), ["baseline"]),
    ],
)
def test_rules(delta: Delta, kinds: list[str]) -> None:
    alerts = alerts_for(delta)
    assert [a["kind"] for a in alerts] == kinds
    for a in alerts:
        if a["kind"] == "opened":
            assert a["url"].endswith("/admin/branch-restrictions") and a["fix"]


def unread(subject: str = "acme/new") -> Result:
    r = res("unknown", subject)
    return r.model_copy(update={"details": {"reason": "fetch_failed", "error": "ServerError"}})


def prev_unread(subject: str = "acme/new") -> StoredResult:
    r = unread(subject)
    return StoredResult(result=r, fingerprint=fingerprint(r), first_seen="t0", last_changed="t1")


def test_a_fault_alone_never_alerts() -> None:
    """A new subject whose data could not be read is recorded ``unknown`` (fetch_failed) without an
    alert (found by the chaos test); its first good reading is no "resolution"; a fail read later
    is a new repository appearing failing, and alerts."""
    assert alerts_for(Delta(opened=[Change(unread(), None)])) == []
    assert alerts_for(Delta(resolved=[Change(res("pass", "acme/new"), prev_unread())])) == []
    assert [a["kind"] for a in alerts_for(Delta(changed=[Change(res("fail", "acme/new"), prev_unread())]))] == [
        "opened"
    ]
    many = Delta(opened=[Change(unread(f"acme/r{i}"), None) for i in range(8)])
    assert alerts_for(many) == []  # not even a baseline made of unread subjects


@pytest.mark.parametrize(
    "details",
    [
        {"reason": "permission_missing", "missing_permission": "repository admin", "fix": "Make them an admin."},
        {"reason": "scope_missing", "missing_scope": "repository:admin", "fix": "Reconnect with the scope."},
    ],
)
def test_a_new_subject_read_after_a_fault_alerts_as_it_would_have_without_the_fault(details: dict[str, str]) -> None:
    """A new repository first seen while its data could not be read (no alert), then read as
    ``unknown`` for a reason the user can fix: that is a new repository appearing failing, which
    would have alerted had the first reading worked; the fault must not swallow the alert."""
    assert [a["kind"] for a in alerts_for(Delta(opened=[Change(res("unknown", "acme/new"), None)]))] == ["opened"]
    read = res("unknown", "acme/new").model_copy(update={"details": details})
    [alert] = alerts_for(Delta(changed=[Change(read, prev_unread())]))
    assert alert["kind"] == "opened" and alert["subject"] == "acme/new" and alert["new_status"] == "unknown"
    assert alert["reason"] == details["reason"] and alert["fix"]


def test_expired_exception_is_said() -> None:
    [a] = alerts_for(Delta(opened=[Change(res("fail"), prev("excepted"))]))
    assert a["expired_exception"] and "exception expired" in slack_message([a])["blocks"][2]["text"]["text"]


@pytest.mark.parametrize(
    "url",
    [
        "http://hooks.slack.com/services/T/B/X",  # not https
        "https://hooks.slack.com.evil.example/services/T/B/X",  # look-alike host
        "https://evil.example/hooks.slack.com/services/T/B/X",
        "https://hooks-slack.com/services/T/B/X",
        "https://hooks.slack.co/services/T/B/X",
        "https://user:pw@hooks.slack.com/services/T/B/X",  # userinfo
        "https://hooks.slack.com@evil.example/services/T/B/X",
        "https://10.0.0.1/services/T/B/X",  # IP literals
        "https://[::1]/services/T/B/X",
        "https://hooks.slack.com:8443/services/T/B/X",
        "https://hooks.slack.com/api/other",
        "https://hooks.slack.com/services/",
        "https://hooks.sIack.com/services/T/B/X",  # capital i for l
        "file:///etc/passwd",
    ],
)
def test_slack_urls_refused(url: str) -> None:
    with pytest.raises(ConfigError):
        validate_slack_url(url)


def test_slack_url_accepted() -> None:
    assert validate_slack_url("https://hooks.slack.com/services/T000/B000/abcd1234")


def test_slack_limits() -> None:
    many = [
        {
            "kind": "opened",
            "workspace": "acme",
            "check": "c",
            "title": "T",
            "severity": "high",
            "subject": f"acme/r{i}",
            "subject_name": f"r{i}",
            "new_status": "fail",
            "old_status": "pass",
            "message": "x" * 5000,
            "fix": "do it",
            "url": "https://bitbucket.org/acme/r",
        }
        for i in range(80)
    ]
    msg = slack_message(many)
    assert len(msg["blocks"]) == MAX_BLOCKS
    assert msg["blocks"][-1]["text"]["text"] == f"…and {80 - (MAX_BLOCKS - 3)} more."
    assert all(len(b["text"]["text"]) <= MAX_SECTION for b in msg["blocks"] if b["type"] == "section")


async def test_slack_one_per_second_and_retry_after(session: aiohttp.ClientSession) -> None:
    async with Receiver(statuses=[200, 429, 200, 200]) as rx:
        sender = SlackSender(session, rx.url + "/services/T/B/X", validate=False)
        rx_received = rx.received
        alert = {
            "kind": "opened",
            "workspace": "acme",
            "check": "c",
            "title": "T",
            "subject": "acme/api",
            "new_status": "fail",
            "message": "m",
        }
        await asyncio.gather(*(sender.send([alert]) for _ in range(3)))
        assert len(rx_received) == 4  # one 429 retried
        times = rx.times
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(g >= 0.95 for g in gaps)  # at most one message per second
    body = json.loads(rx_received[0].body)
    assert body["blocks"][0]["type"] == "header"


async def test_slack_retry_after_is_honoured(session: aiohttp.ClientSession) -> None:
    async with Receiver(statuses=[429, 200], headers={"Retry-After": "2"}) as rx:
        sender = SlackSender(session, rx.url + "/services/T/B/X", validate=False)
        await sender.send([{"kind": "test", "workspace": "w", "title": "T", "subject": "s", "message": "m"}])
        assert rx.times[1] - rx.times[0] >= 1.95


async def test_slack_redirect_refused(session: aiohttp.ClientSession) -> None:
    async with Receiver(statuses=[302]) as rx:
        sender = SlackSender(session, rx.url + "/services/T/B/X", validate=False)
        with pytest.raises(DeliveryError, match="redirect refused"):
            await sender.send([{"kind": "test", "workspace": "w", "title": "T", "subject": "s", "message": "m"}])
        assert len(rx.received) == 1


class Inbox:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(email.message_from_bytes(envelope.content))
        return "250 OK"


async def test_email_through_a_real_smtp_server() -> None:
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        sender = EmailSender(f"smtp://127.0.0.1:{port}", "lp@acme.example", ("sec@acme.example",))
        await sender.send(
            [
                {
                    "kind": "opened",
                    "workspace": "acme",
                    "check": "c",
                    "title": "Branch Protection",
                    "subject": "acme/api",
                    "new_status": "fail",
                    "old_status": "pass",
                    "message": "main lacks delete",
                    "fix": "Add it",
                    "url": "https://bitbucket.org/acme/api",
                }
            ]
        )
    finally:
        controller.stop()
    [msg] = inbox.messages
    assert msg["To"] == "sec@acme.example" and "now failing" in msg["Subject"]
    parts = {p.get_content_type(): p.get_payload(decode=True).decode() for p in msg.walk() if not p.is_multipart()}
    assert "main lacks delete" in parts["text/plain"] and "<a href=" in parts["text/html"]


async def test_email_failure_is_a_delivery_error() -> None:
    sender = EmailSender(f"smtp://127.0.0.1:{free_port()}", "a@b.example", ("c@d.example",), timeout=2)
    with pytest.raises(DeliveryError):
        await sender.send([{"kind": "test", "workspace": "w", "title": "T", "subject": "s", "message": "m"}])


class Recorder:
    name = "slack"

    def __init__(self, fail: int = 0) -> None:
        self.sent: list[list[dict[str, Any]]] = []
        self.fail = fail

    async def send(self, alerts: list[dict[str, Any]]) -> None:
        if self.fail:
            self.fail -= 1
            raise DeliveryError("down")
        self.sent.append(alerts)


async def test_grouping_idempotency_and_restart(database: Path | str) -> None:
    store = await Store.open(database)
    now = [1000.0]
    rec = Recorder()
    d = Dispatcher(store, [rec], clock=lambda: now[0])
    first = Delta(opened=[Change(res("fail", "acme/a"), prev("pass", "acme/a"))])
    second = Delta(opened=[Change(res("fail", "acme/b"), prev("pass", "acme/b"))])
    await d.on_delta("acme", first)
    now[0] += 10
    await d.on_delta("acme", second)
    await d.on_delta("acme", first)  # the same transition again: nothing new
    assert await d.tick() == 0  # group wait (30 s) not over
    now[0] += 25
    assert await d.tick() == 1
    assert [a["subject"] for a in rec.sent[0]] == ["acme/a", "acme/b"]  # one message for the burst
    third = Delta(opened=[Change(res("fail", "acme/c"), prev("pass", "acme/c"))])
    await d.on_delta("acme", third)
    now[0] += 60
    assert await d.tick() == 0  # group interval (5 min) not over
    await store.close()
    # restart: a new dispatcher on the same database sends nothing twice
    store = await Store.open(database)
    d2 = Dispatcher(store, [rec], clock=lambda: now[0])
    await d2.on_delta("acme", first)
    now[0] += 300
    assert await d2.tick() == 1
    assert [a["subject"] for a in rec.sent[1]] == ["acme/c"]
    assert await d2.tick() == 0
    await store.close()


async def test_failures_back_off_die_and_warn_ops(database: Path | str) -> None:
    store = await Store.open(database)
    now = [1000.0]
    slack = Recorder(fail=100)

    class Mail(Recorder):
        name = "email"

    mail = Mail()
    d = Dispatcher(store, [slack, mail], clock=lambda: now[0], group_wait=0)
    await d.on_delta("acme", Delta(opened=[Change(res("fail"), prev("pass"))]))
    for _ in range(8):
        await d.tick()
        now[0] += 3600
    counts = await d.outbox.counts()
    assert counts.get("dead") == 1
    ops = [a for batch in mail.sent for a in batch if a["kind"] == "ops"]
    assert ops and "slack" in ops[0]["title"]
    await store.close()

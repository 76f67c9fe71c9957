"""User-controlled text in alerts (repository names, member display names, messages, reasons,
owners) never becomes a Slack mention, link or markup, and is HTML-escaped in email."""

from __future__ import annotations

import email
import json
import re
from typing import Any

import aiohttp
from aiosmtpd.controller import Controller

from app.findings import Change, Delta
from app.models import Result
from app.notify.render import email_message
from app.notify.rules import alerts_for
from app.notify.senders import EmailSender, SlackSender
from app.sandbox.serve import free_port
from tests.helpers import Receiver
from tests.notify.test_notify import Inbox

EVIL_REPO = "<!channel> <https://evil.example|click> @here"
EVIL_MEMBER = "@everyone <@U024BE7LH> & <!here>"
WEB = "https://bitbucket.org"


def _alerts() -> list[dict[str, Any]]:
    repo = Result(
        check="repo-classified",
        severity="medium",
        workspace="acme",
        subject_type="repository",
        subject_key="{r1}",
        subject=f"acme/{EVIL_REPO}",
        subject_name=EVIL_REPO,
        status="fail",
        message=f"{EVIL_REPO} has no class",
    )
    member = Result(
        check="member-mfa-enabled",
        severity="high",
        workspace="acme",
        subject_type="member",
        subject_key="{m1}",
        subject=EVIL_MEMBER,
        subject_name=EVIL_MEMBER,
        status="fail",
        message=f"{EVIL_MEMBER} (carol@acme.example) has no 2SV; owner @channel's exception expired (<!everyone>)",
    )
    return alerts_for(Delta(opened=[Change(repo, None), Change(member, None)]), WEB)


def _mrkdwn_texts(payload: dict[str, Any]) -> list[str]:
    texts = [payload["text"]]
    for block in payload["blocks"]:
        if block["type"] == "section":
            texts.append(block["text"]["text"])
        elif block["type"] == "context":
            texts += [e["text"] for e in block["elements"]]
    return texts


MENTION_WORD = re.compile(r"(?<![\w@])@(here|channel|everyone|U[A-Z0-9]+)\b")


async def test_slack_message_has_no_mention_or_foreign_link(session: aiohttp.ClientSession) -> None:
    async with Receiver() as rx:
        sender = SlackSender(session, rx.url + "/services/T/B/X", validate=False, min_interval=0)
        await sender.send(_alerts())
        [got] = rx.received
    payload = json.loads(got.body)
    texts = _mrkdwn_texts(payload)
    assert len(texts) >= 3
    for text in texts:
        # Every <…> left is one of the product's own links to Bitbucket or Atlassian admin.
        for token in re.findall(r"<([^>]*)>", text):
            assert token.startswith((WEB + "/", "https://admin.atlassian.com")), token
            url = token.split("|", 1)[0]
            assert "evil.example|" not in url and " " not in url and "<" not in url
        assert "<!" not in text and "<@" not in text
        assert not MENTION_WORD.search(text), text
    header = payload["blocks"][0]["text"]
    assert header["type"] == "plain_text" and not MENTION_WORD.search(header["text"])
    # The names are still there for people to read, escaped as Slack's mrkdwn requires.
    body = "\n".join(texts)
    assert "&lt;!channel&gt; &lt;https://evil.example|click&gt;" in body
    assert "&amp; &lt;!here&gt;" in body
    assert "@\u200bhere" in body and "@\u200beveryone" in body
    assert "(carol@acme.example)" in body  # an email address is not a mention: left as it is


async def test_email_html_part_escapes_names() -> None:
    _, text, html = email_message(_alerts())
    assert "<!channel>" in text  # the text part is plain text: shown as written
    assert "<!channel>" not in html and "<https://evil.example" not in html and "<@U024BE7LH>" not in html
    assert "&lt;!channel&gt; &lt;https://evil.example|click&gt;" in html
    assert [m for m in re.findall(r'<a href="([^"]*)"', html) if not m.startswith((WEB, "https://admin"))] == []

    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        await EmailSender(f"smtp://127.0.0.1:{port}", "lp@acme.example", ("sec@acme.example",)).send(_alerts())
    finally:
        controller.stop()
    [msg] = inbox.messages
    parts = {p.get_content_type(): p.get_payload(decode=True).decode() for p in msg.walk() if not p.is_multipart()}
    assert "&lt;!channel&gt;" in parts["text/html"] and "<!channel>" not in parts["text/html"]
    assert isinstance(msg, email.message.Message)

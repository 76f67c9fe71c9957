"""Pure: alert messages for Slack (Block Kit) and email (text and HTML), and the Slack URL rule.

Slack limits (api.slack.com Block Kit reference): at most 50 blocks a message, 3,000 characters
in a section's text; longer lists end with "and N more".
"""

from __future__ import annotations

import html
import ipaddress
import re
from typing import Any
from urllib.parse import quote, urlsplit

from app.errors import ConfigError

SEVERITY_RANK = {"critical": 0, "high": 1, "medium": 2, "low": 3}
MAX_BLOCKS = 50
MAX_SECTION = 3000
ICON = {
    "fail": ":red_circle:",
    "unknown": ":large_orange_circle:",
    "pass": ":large_green_circle:",
    "not_applicable": ":white_circle:",
    "excepted": ":large_blue_circle:",
}


def validate_slack_url(url: str) -> str:
    """Only ``https://hooks.slack.com/services/...``: no other host, port, credentials or scheme."""
    parts = urlsplit(url)
    if parts.scheme != "https":
        raise ConfigError("Slack webhook URL must use https")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise ConfigError("Slack webhook URL must not carry credentials")
    host = parts.hostname or ""
    try:
        ipaddress.ip_address(host)
        raise ConfigError("Slack webhook URL must name hooks.slack.com, not an IP address")
    except ValueError:
        pass
    if (
        host != "hooks.slack.com"
        or parts.port not in (None, 443)
        or parts.netloc.lower() not in ("hooks.slack.com", "hooks.slack.com:443")
    ):
        raise ConfigError("Slack webhook URL must be on hooks.slack.com")
    if not parts.path.startswith("/services/") or len(parts.path) <= len("/services/"):
        raise ConfigError("Slack webhook URL must look like https://hooks.slack.com/services/...")
    return url


_MENTION = re.compile(r"(?<![\w.+-])(@)(?=[\w.-])")  # at a word start: emails stay as they are
ZWSP = "\u200b"  # zero-width space: keeps ``@here`` readable but never a mention


def slack_text(value: object) -> str:
    """User-controlled text made inert for Slack mrkdwn: ``&``, ``<``, ``>`` escaped (so no
    ``<!channel>``, ``<@U…>`` or ``<https://…|…>`` survives) and ``@here``-style words broken up."""
    text = str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MENTION.sub(lambda m: m.group(1) + ZWSP, text)


def slack_plain(value: object) -> str:
    """For ``plain_text`` objects (no markup parsed): only the mention words are broken up."""
    return _MENTION.sub(lambda m: m.group(1) + ZWSP, str(value))


def slack_url(url: str) -> str:
    """A URL for ``<url|label>``: ``|``, ``<``, ``>``, ``@``, spaces and the like percent-encoded."""
    return quote(url, safe=":/?#[]!$&'()*+,;=%~").replace("&", "&amp;")


def _clip(text: str, limit: int = MAX_SECTION) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _line(a: dict[str, Any]) -> str:
    if a["kind"] == "baseline":
        return str(a["message"])
    was = f" (was {a['old_status']})" if a.get("old_status") else " (new)"
    verb = "resolved" if a["kind"] == "resolved" else str(a.get("new_status", "update")).upper()
    extra = " — exception expired" if a.get("expired_exception") else ""
    return f"{verb}{was}{extra}: {a['message']}"


def summary(alerts: list[dict[str, Any]]) -> str:
    failing = sum(1 for a in alerts if a["kind"] == "opened")
    resolved = sum(1 for a in alerts if a["kind"] == "resolved")
    first = alerts[0]
    parts = []
    if failing:
        parts.append(f"{failing} now failing")
    if resolved:
        parts.append(f"{resolved} resolved")
    what = ", ".join(parts) or first.get("title", "update")
    if first["kind"] in ("ops", "digest", "baseline", "test"):
        return f"[{first['workspace']}] {first['title']}"
    titles = sorted({str(a.get("title")) for a in alerts})
    topic = titles[0] if len(titles) == 1 else f"{len(titles)} tests"
    return f"[{first['workspace']}] {topic}: {what}"


def slack_message(alerts: list[dict[str, Any]]) -> dict[str, Any]:
    """Block Kit; every user-controlled value (names, messages, reasons, owners) goes through
    :func:`slack_text` so nothing in it becomes a mention, a link or markup."""
    head = summary(alerts)
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _clip(slack_plain(head), 150)}},
    ]
    first = alerts[0]
    if first.get("severity"):
        checks = sorted({str(a.get("check", "")) for a in alerts})
        worst = min((str(a.get("severity", "")) for a in alerts), key=lambda s: SEVERITY_RANK.get(s, 9))
        text = f"severity *{slack_text(worst)}* · " + ", ".join(f"`{slack_text(c)}`" for c in checks)
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": text}]})
    room = MAX_BLOCKS - len(blocks) - 1  # keep one for "and N more"
    shown = alerts[:room] if len(alerts) > room else alerts
    for a in shown:
        icon = ICON.get(a.get("new_status", ""), ":information_source:")
        label = slack_text(a["subject_name"] if a.get("subject_name") else a["subject"])
        subject = f"<{slack_url(str(a['url']))}|{label}>" if a.get("url") else slack_text(a["subject"])
        text = f"{icon} *{subject}* — {slack_text(_line(a))}"
        if a.get("fix"):
            text += f"\n*How to fix:* {slack_text(a['fix'])}"
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": _clip(text)}})
    if len(alerts) > len(shown):
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f"…and {len(alerts) - len(shown)} more."}})
    return {"text": _clip(slack_text(head), 3000), "blocks": blocks}


def email_message(alerts: list[dict[str, Any]]) -> tuple[str, str, str]:
    """Subject, text part, HTML part."""
    subject = summary(alerts)
    text_lines, html_items = [], []
    for a in alerts:
        text_lines.append(f"- {a['subject']}: {_line(a)}")
        if a.get("fix"):
            text_lines.append(f"  How to fix: {a['fix']}")
        if a.get("url"):
            text_lines.append(f"  {a['url']}")
        link = (
            f'<a href="{html.escape(a["url"])}">{html.escape(str(a["subject"]))}</a>'
            if a.get("url")
            else html.escape(str(a["subject"]))
        )
        fix = f"<br><b>How to fix:</b> {html.escape(a['fix'])}" if a.get("fix") else ""
        html_items.append(f"<li>{link}: {html.escape(_line(a))}{fix}</li>")
    text = subject + "\n\n" + "\n".join(text_lines) + "\n"
    body = f"<h2>{html.escape(subject)}</h2><ul>{''.join(html_items)}</ul>"
    return subject, text, f"<!doctype html><html><body>{body}</body></html>"

"""Delivery of rendered messages: a Slack incoming webhook and SMTP (aiosmtplib).

Slack: at most one message per second per URL, ``Retry-After`` honoured on 429, redirects refused,
the URL restricted to ``https://hooks.slack.com/services/...``. Email: text and HTML parts, STARTTLS
(``smtp://``, when offered) or TLS (``smtps://``), 15 s timeout. Credentials are only ever sent over
TLS: with ``smtp://user:pass@…`` STARTTLS is required unless ``LP_SMTP_ALLOW_PLAINTEXT=true``.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from email.message import EmailMessage
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import aiohttp
import aiosmtplib

from app.errors import DeliveryError as DeliveryError
from app.errors import LowerplaneError
from app.logs import get_logger
from app.notify.render import email_message, slack_message, validate_slack_url

log = get_logger("notify")


class Sender(Protocol):
    name: str

    async def send(self, alerts: list[dict[str, Any]]) -> None: ...


class SlackSender:
    name = "slack"

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        *,
        min_interval: float = 1.0,
        max_retry_after: float = 60.0,
        validate: bool = True,
    ) -> None:
        self.session = session
        self.url = validate_slack_url(url) if validate else url
        self.min_interval = min_interval
        self.max_retry_after = max_retry_after
        self._lock = asyncio.Lock()
        self._last = 0.0

    async def send(self, alerts: list[dict[str, Any]]) -> None:
        payload = slack_message(alerts)
        async with self._lock:  # one message per second per URL
            for _ in range(3):
                wait = self._last + self.min_interval - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                self._last = time.monotonic()
                try:
                    async with self.session.post(
                        self.url, json=payload, allow_redirects=False, timeout=aiohttp.ClientTimeout(total=15)
                    ) as resp:
                        status = resp.status
                        retry_after = resp.headers.get("Retry-After")
                        await resp.read()
                except (aiohttp.ClientError, TimeoutError) as exc:
                    raise DeliveryError(f"slack: {type(exc).__name__}") from None
                if 200 <= status < 300:
                    return
                if status == 429:
                    seconds = float(retry_after) if retry_after and retry_after.isdigit() else 1.0
                    self._last = time.monotonic() + min(seconds, self.max_retry_after) - self.min_interval
                    continue
                if 300 <= status < 400:
                    raise DeliveryError(f"slack: redirect refused (HTTP {status})")
                raise DeliveryError(f"slack: HTTP {status}")
            raise DeliveryError("slack: still rate limited after 3 tries")


class EmailSender:
    name = "email"

    def __init__(
        self,
        smtp_url: str,
        sender: str,
        recipients: tuple[str, ...],
        timeout: float = 15.0,
        *,
        allow_plaintext: bool = False,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(smtp_url)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise LowerplaneError("LP_SMTP_URL must be smtp://[user:pass@]host[:port] or smtps://…")
        self.host = parts.hostname
        self.tls = parts.scheme == "smtps"
        self.port = parts.port or (465 if self.tls else 587)
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        self.sender = sender
        self.recipients = recipients
        self.timeout = timeout
        self.allow_plaintext = allow_plaintext
        self.tls_context = tls_context  # None: the system's trusted CAs
        # smtp://: STARTTLS when offered; required when there are credentials to protect.
        self.start_tls: bool | None = True if self.username is not None and not allow_plaintext else None

    async def send(self, alerts: list[dict[str, Any]]) -> None:
        subject, text, html = email_message(alerts)
        msg = EmailMessage()
        msg["From"] = self.sender
        msg["To"] = ", ".join(self.recipients)
        msg["Subject"] = subject
        msg.set_content(text)
        msg.add_alternative(html, subtype="html")
        try:
            await aiosmtplib.send(
                msg,
                hostname=self.host,
                port=self.port,
                username=self.username,
                password=self.password,
                use_tls=self.tls,
                start_tls=False if self.tls else self.start_tls,
                tls_context=self.tls_context,
                timeout=self.timeout,
            )
        except aiosmtplib.SMTPException as exc:
            if self.start_tls is True and "STARTTLS extension not supported" in str(exc):
                raise DeliveryError(
                    "email: the SMTP server offers no STARTTLS, so the credentials were not sent "
                    "(use smtps://, or LP_SMTP_ALLOW_PLAINTEXT=true for a local relay)"
                ) from None
            raise DeliveryError(f"email: {type(exc).__name__}") from None
        except (OSError, TimeoutError) as exc:
            raise DeliveryError(f"email: {type(exc).__name__}") from None

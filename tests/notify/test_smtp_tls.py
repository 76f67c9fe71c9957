"""SMTP credentials only travel over TLS: a real local aiosmtpd server without STARTTLS never sees
AUTH (the delivery fails, recorded without the password) unless LP_SMTP_ALLOW_PLAINTEXT is set;
with STARTTLS (a certificate made here) the login and the message go through."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from app.notify.dispatcher import Dispatcher
from app.notify.senders import EmailSender
from app.sandbox.serve import free_port
from app.services import senders
from app.settings import Settings
from app.store import Store
from tests.notify.test_notify import Inbox

PASSWORD = "s3cret-smtp-pass"
ALERT = {"kind": "test", "workspace": "acme", "title": "Test message", "subject": "acme", "message": "hello"}


class Auth:
    """Records every AUTH the server receives."""

    def __init__(self) -> None:
        self.attempts: list[tuple[str, str]] = []

    def __call__(self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        assert isinstance(data, LoginPassword)
        self.attempts.append((data.login.decode(), data.password.decode()))
        return AuthResult(success=True)


def _server(inbox: Inbox, auth: Auth, **kw: Any) -> Iterator[int]:
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port, authenticator=auth, **kw)
    controller.start()
    try:
        yield port
    finally:
        controller.stop()


@pytest.fixture
def plain_server() -> Iterator[tuple[int, Inbox, Auth]]:
    inbox, auth = Inbox(), Auth()
    # No STARTTLS offered, and AUTH accepted in clear: the worst case the client must guard against.
    for port in _server(inbox, auth, auth_require_tls=False):
        yield port, inbox, auth


def _settings(tmp_path: Path, port: int, **extra: str) -> Settings:
    env = {
        "LP_DATABASE": str(tmp_path / "lp.sqlite3"),
        "LP_SMTP_URL": f"smtp://alerts%40acme.example:{PASSWORD}@127.0.0.1:{port}",
        "LP_ALERT_EMAIL_FROM": "lp@acme.example",
        "LP_ALERT_EMAIL_TO": "sec@acme.example",
        **extra,
    }
    return Settings.from_env(env, env_file=None)


async def _deliver(settings: Settings) -> Any:
    """One alert through the dispatcher and the outbox in a real SQLite file; the outbox row after."""
    store = await Store.open(settings.database)
    try:
        [sender] = senders(settings, None)  # type: ignore[arg-type]  # email only: no HTTP session needed
        dispatcher = Dispatcher(store, [sender], group_wait=0, group_interval=0)
        await dispatcher.enqueue([ALERT])
        await dispatcher.tick()
        [row] = await dispatcher.outbox.history()
        return row
    finally:
        await store.close()


async def test_credentials_are_not_sent_without_tls(
    plain_server: tuple[int, Inbox, Auth], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port, inbox, auth = plain_server
    with structlog.testing.capture_logs() as logged:
        row = await _deliver(_settings(tmp_path, port))
    assert auth.attempts == [] and inbox.messages == []  # AUTH never happened, nothing sent
    assert row.state != "sent" and "STARTTLS" in (row.error or "")
    assert PASSWORD not in (row.error or "")
    [failure] = [e for e in logged if e["event"] == "alert.delivery_failed"]
    assert "STARTTLS" in failure["error"] and PASSWORD not in repr(logged)
    captured = capsys.readouterr()
    assert PASSWORD not in captured.out + captured.err


async def test_plaintext_allowed_for_a_local_relay(plain_server: tuple[int, Inbox, Auth], tmp_path: Path) -> None:
    port, inbox, auth = plain_server
    row = await _deliver(_settings(tmp_path, port, LP_SMTP_ALLOW_PLAINTEXT="true"))
    assert row.state == "sent"
    assert auth.attempts == [("alerts@acme.example", PASSWORD)]
    [msg] = inbox.messages
    assert msg["To"] == "sec@acme.example"


def _self_signed(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(cafile=str(cert_file))
    return server, client


async def test_starttls_then_login(tmp_path: Path) -> None:
    server_ctx, client_ctx = _self_signed(tmp_path)
    inbox, auth = Inbox(), Auth()
    for port in _server(inbox, auth, tls_context=server_ctx, require_starttls=True, auth_require_tls=True):
        sender = EmailSender(
            f"smtp://alerts%40acme.example:{PASSWORD}@127.0.0.1:{port}",
            "lp@acme.example",
            ("sec@acme.example",),
            tls_context=client_ctx,
        )
        await sender.send([ALERT])
    assert auth.attempts == [("alerts@acme.example", PASSWORD)]
    assert len(inbox.messages) == 1

"""The product's parts, built once per process: the service, the webhook writer, the worker, the
scheduler and the alert dispatcher (``build_services``). Front ends (the ASGI app in ``main.py``, the
CLI's one-shots in ``runtime.py``) and the use cases take a ``Services``; nothing here knows the web."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import aiohttp

from app.bitbucket.client import ClientPool
from app.crypto import Crypto
from app.metrics import Metrics
from app.notify.dispatcher import Dispatcher
from app.notify.senders import EmailSender, Sender, SlackSender
from app.scheduler import Scheduler
from app.service import Service
from app.settings import Settings
from app.store import Store
from app.store.events import EventWriter
from app.supervise import Supervisor
from app.worker import Worker


@dataclass
class Services:
    service: Service
    writer: EventWriter
    worker: Worker
    scheduler: Scheduler
    dispatcher: Dispatcher
    metrics: Metrics = field(default_factory=Metrics)
    started_at: float = field(default_factory=time.time)
    supervisor: Supervisor | None = None  # made from ``metrics`` when not given
    stall_after: float = 300.0  # seconds without progress, while there is work, that fail /healthz

    def __post_init__(self) -> None:
        if self.supervisor is None:
            self.supervisor = Supervisor(self.metrics)


def senders(settings: Settings, session: aiohttp.ClientSession) -> list[Sender]:
    out: list[Sender] = []
    if settings.slack_webhook_url is not None:
        out.append(
            SlackSender(
                session, settings.slack_webhook_url.get_secret_value(), validate=not settings.slack_allow_insecure_url
            )
        )
    if settings.smtp_url is not None and settings.alert_email_from and settings.alert_email_to:
        out.append(
            EmailSender(
                settings.smtp_url.get_secret_value(),
                settings.alert_email_from,
                settings.alert_email_to,
                allow_plaintext=settings.smtp_allow_plaintext,
            )
        )
    return out


async def build_services(
    settings: Settings, session: aiohttp.ClientSession, *, store: Store | None = None, **client_options: object
) -> Services:
    """The product's parts. With ``store`` given the caller owns (and closes) it; otherwise it is opened
    here, after everything that can refuse the settings, so a refusal leaves nothing open."""
    crypto = Crypto(settings.secret_key.get_secret_value()) if settings.secret_key else None
    outputs = senders(settings, session)
    store = store or await Store.open(settings.database, settings.files_dir)
    pool = ClientPool(
        session,
        api_url=settings.bitbucket_api_url,
        budget_per_hour=settings.budget_per_hour,
        reserve=settings.webhook_budget_share,
        headroom=settings.budget_headroom,
        concurrency=settings.concurrency,
        **client_options,
    )
    service = Service(settings, store, pool, crypto)
    metrics = Metrics()
    dispatcher = Dispatcher(
        store,
        outputs,
        web_url=settings.bitbucket_url,
        group_wait=settings.alert_group_wait,
        group_interval=settings.alert_group_interval,
        digest_every=settings.alert_digest_interval,
        metrics=metrics,
    )
    worker = Worker(store, settings, service.client, service=service, alerts=dispatcher.rows_for, on_ops=dispatcher.ops)

    async def broken(conn_id: str, reason: str) -> None:
        await dispatcher.ops(f"Connection {conn_id} is broken", f"Token refresh failed: {reason}. Reconnect it.")

    service.on_broken = broken
    return Services(service, EventWriter(store.events), worker, Scheduler(service), dispatcher, metrics)

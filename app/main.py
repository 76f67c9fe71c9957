"""``create_app(settings, services=None)`` and its lifespan: the only place that wires things.

The lifespan opens the store, the one aiohttp session, the encryption keys and the client pool;
makes sure the token-mode connection exists; registers or repairs webhooks; and runs the event
writer (group commit), the worker, the scheduler and the alert dispatcher in one task group, each
under the :class:`~app.supervise.Supervisor` (restarted with backoff; the process gives up and
exits 1 when one cannot be kept alive). ``/healthz`` fails when a task is not running or makes no
progress while it has work. On shutdown (SIGTERM) the server stops accepting, finishes the
requests in flight (every acknowledged delivery is already committed), the worker gives back its
leases, and the process exits 0 within ``SHUTDOWN_SECONDS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app import errors
from app.bitbucket.client import ClientPool
from app.crypto import Crypto
from app.logs import get_logger
from app.metrics import Metrics
from app.notify.dispatcher import Dispatcher
from app.notify.senders import EmailSender, Sender, SlackSender
from app.scheduler import Scheduler
from app.service import Service
from app.settings import Settings
from app.store import Store
from app.store.events import EventWriter
from app.supervise import Supervisor
from app.web import api, connect, dashboard, webhooks
from app.web.openapi import API_ROUTES, serve_document
from app.web.problems import handle_error
from app.worker import Worker

log = get_logger("main")

# Request head limits. The server (``serve``) runs httptools (uvicorn's fast parser, several times
# cheaper per request than h11 on the webhook path) under :class:`BoundedHead`, which counts the
# bytes of a request head while it arrives and answers 431 once an incomplete head passes the limit
# (httptools itself has no such limit: it would buffer one endless header); :class:`HeaderLimit`
# then answers 431 to any complete head over the limit, however it arrived, before routing.
MAX_HEADER_BYTES = 16 * 1024


class BoundedHead(HttpToolsProtocol):
    """uvicorn's httptools protocol with the request head bounded while it arrives.

    Bytes are counted only while a head is incomplete: a chunk that completes the head (and carries
    body bytes) resets the count, so a body never counts, and memory for a head stays below the
    limit plus one read chunk."""

    max_head = MAX_HEADER_BYTES

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._head_bytes = 0

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and self._head_bytes > self.max_head and not self.transport.is_closing():
            body = f"Request header fields too large (over {self.max_head} bytes).".encode()
            self.transport.write(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
            )
            self.transport.close()

    def on_headers_complete(self) -> None:
        self._in_head, self._head_bytes = False, 0
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_head = True  # the next request's head may follow on this connection
        super().on_message_complete()


SERVER_OPTIONS: dict[str, Any] = {"http": BoundedHead}


class HeaderLimit:
    """ASGI middleware: 431 for a request line and headers over ``max_bytes`` (never routed)."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_HEADER_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            size = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
            size += sum(len(k) + len(v) + 4 for k, v in scope["headers"])
            if size > self.max_bytes:
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1009})
                    return
                response = PlainTextResponse(
                    f"Request header fields too large (over {self.max_bytes} bytes).",
                    status_code=431,
                    headers={"Connection": "close"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


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


SHUTDOWN_SECONDS = 10  # SIGTERM: in-flight requests get this long, then the process exits


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
    settings: Settings, session: aiohttp.ClientSession, *, store: Store | None = None, **client_options: Any
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


async def start_up(services: Services) -> None:
    """Token connection and webhooks; failures are logged, never fatal (the reconcile still runs)."""
    from app.webhook_registration import ensure_hooks

    service = services.service
    try:
        await service.ensure_token_connection()
    except (errors.BitbucketError, errors.TokenError) as exc:
        log.error("startup.token_connection_failed", error=f"{type(exc).__name__}: {exc}")
    for conn in await service.usable_connections():
        if service.crypto is None:
            continue
        try:
            await ensure_hooks(service, conn)
        except (errors.BitbucketError, errors.TokenError) as exc:
            log.error("startup.webhook_registration_failed", connection=conn.id, error=f"{type(exc).__name__}: {exc}")


def _watch(services: Services, supervisor: Supervisor) -> None:
    """Progress probes: a task with work that has not moved for ``stall_after`` seconds is stuck."""
    store = services.service.store

    async def worker() -> str | None:
        silent = time.time() - services.worker.alive_at
        if silent > services.stall_after:
            waiting = await store.events.runnable()
            if waiting:
                return f"no progress for {silent:.0f} s with {waiting} events runnable"
        return None

    async def writer() -> str | None:
        silent = time.time() - services.writer.alive_at
        if services.writer.backlog and silent > services.stall_after:
            return f"no commit for {silent:.0f} s with {services.writer.backlog} deliveries waiting"
        return None

    async def scheduler() -> str | None:
        silent = time.time() - services.scheduler.alive_at
        if silent > services.stall_after + 30:
            return f"no scheduling round for {silent:.0f} s"
        return None

    supervisor.watch("worker", worker)
    supervisor.watch("writer", writer)
    supervisor.watch("scheduler", scheduler)


async def healthz(request: Request) -> Response:
    """Liveness: every background task runs and progresses (else 503 naming the tasks)."""
    services: Services = request.app.state.services
    assert services.supervisor is not None
    problems = await services.supervisor.problems()
    if problems:
        return JSONResponse({"status": "failing", "tasks": problems}, status_code=503)
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    services: Services = request.app.state.services
    try:
        await services.service.store.db.ping()
    except Exception as exc:  # noqa: BLE001 - any database failure means not ready
        return JSONResponse({"status": "unavailable", "database": type(exc).__name__}, status_code=503)
    lag = time.time() - services.worker.alive_at
    if lag > 30:
        return JSONResponse({"status": "unavailable", "worker": f"silent for {lag:.0f} s"}, status_code=503)
    return JSONResponse({"status": "ready", "database": "ok", "worker": "alive"})


async def metrics(request: Request) -> Response:
    services: Services = request.app.state.services
    m = services.metrics
    store = services.service.store
    counts = await store.events.counts()
    for state in api.EVENT_STATES:
        m.events.labels(state).set(counts.get(state, 0))
    m.queue_depth.set(counts.get("queued", 0) + counts.get("failed", 0))
    m.oldest_queued.set(await store.events.oldest_queued_age())
    for cid, client in services.service.pool.clients.items():
        m.budget_left.labels(cid).set(client.budget.remaining)
        for (endpoint, status), n in client.counters.items():
            m.api_calls.labels(cid, endpoint, status).set(n)
    await _freshness_metrics(services, m)
    for check, status, count in await store.results.counts():
        m.results.labels(check, status).set(count)
    return PlainTextResponse(m.render().decode(), media_type="text/plain; version=0.0.4")


async def _freshness_metrics(services: Services, m: Metrics) -> None:
    """issue 13: restriction freshness per workspace and class (app/tiers.py)."""
    from app import tiers

    for conn in await services.service.connections():
        for ws in conn.workspaces:
            ages: dict[str, list[float]] = {"production": [], "other": []}
            unread = 0
            for row in (await tiers.freshness(services.service.store, ws)).values():
                if row["age_seconds"] is None:
                    unread += 1
                else:
                    ages[row["class"]].append(row["age_seconds"])
            m.restrictions_unread.labels(ws).set(unread)
            for cls, values in ages.items():
                m.restrictions_age.labels(ws, cls, "max").set(max(values, default=0.0))
                m.restrictions_age.labels(ws, cls, "mean").set(sum(values) / len(values) if values else 0.0)


def routes() -> list[Route | Mount]:
    by_path: dict[str, dict[str, Any]] = {}
    for r in API_ROUTES:
        by_path.setdefault(r.path, {})[r.method] = r.handler
    api_routes = [Route(path, _dispatch(handlers), methods=list(handlers)) for path, handlers in by_path.items()]
    return [
        Route("/hooks/bitbucket/{connection}", webhooks.receive, methods=["POST"]),
        *api_routes,
        Route("/api/openapi.json", serve_document, methods=["GET"]),
        Route("/login", connect.login, methods=["POST"]),
        Route("/login", dashboard.login_page, methods=["GET"]),
        Route("/", dashboard.overview, methods=["GET"]),
        Route("/findings", dashboard.findings, methods=["GET"]),
        Route("/findings/subject", dashboard.subject, methods=["GET"]),
        Route("/repositories", dashboard.repositories, methods=["GET"]),
        Route("/repositories/classify", dashboard.classify, methods=["POST"]),
        Route("/members", dashboard.members, methods=["GET"]),
        Route("/members/link", dashboard.member_link, methods=["POST"]),
        Route("/members/mark", dashboard.member_mark, methods=["POST"]),
        Route("/evidence", dashboard.evidence, methods=["GET", "POST"]),
        Route("/exceptions", dashboard.exceptions, methods=["GET", "POST"]),
        Route("/events", dashboard.events, methods=["GET"]),
        Route("/events/stream", dashboard.event_stream, methods=["GET"]),
        Route("/connections", dashboard.connections, methods=["GET"]),
        Route("/connections/{id}/disconnect", dashboard.disconnect, methods=["GET", "POST"]),
        Route("/operations", dashboard.operations, methods=["GET"]),
        Route("/audit-pack", dashboard.audit_pack_page, methods=["GET"]),
        Route("/operations/reconcile", dashboard.reconcile, methods=["POST"]),
        Route("/events/{id}/retry", dashboard.event_retry, methods=["POST"]),
        Route("/exceptions/{id}/revoke", dashboard.exception_revoke, methods=["POST"]),
        Route("/settings", dashboard.settings_page, methods=["GET"]),
        Route("/personnel", dashboard.personnel_page, methods=["GET", "POST"]),
        Route("/rules", dashboard.rules_page, methods=["GET", "POST"]),
        Route("/alerts", dashboard.alerts, methods=["GET"]),
        Route("/alerts/test", dashboard.alert_test, methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(Path(dashboard.__file__).with_name("static"))), name="static"),
        Route("/logout", connect.logout, methods=["POST"]),
        Route("/connect/bitbucket", connect.start, methods=["GET"]),
        Route("/connect/bitbucket/callback", connect.callback, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]


async def _to_login(request: Request, exc: Exception) -> Response:
    return RedirectResponse("/login?next=" + quote(request.url.path), status_code=303)


def _dispatch(handlers: dict[str, Any]) -> Any:
    async def endpoint(request: Request) -> Response:
        response: Response = await handlers[request.method](request)
        return response

    return endpoint


def create_app(settings: Settings, services: Services | None = None, *, background: bool = True) -> Starlette:
    """The ASGI app. With ``services`` given (tests), the caller owns them; ``background`` runs the
    writer, worker and scheduler in the lifespan's task group."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            nonlocal services
            if services is None:
                session = await stack.enter_async_context(aiohttp.ClientSession())
                services = await build_services(settings, session)
                stack.push_async_callback(services.service.store.close)
            app.state.services = services
            supervisor = services.supervisor
            assert supervisor is not None
            if supervisor.on_fatal is None:
                supervisor.on_fatal = app.state.on_fatal
            _watch(services, supervisor)
            await start_up(services)
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(supervisor.run("writer", services.writer.run))]
                if background:
                    tasks += [
                        tg.create_task(supervisor.run("worker", services.worker.run)),
                        tg.create_task(supervisor.run("scheduler", services.scheduler.run)),
                        tg.create_task(supervisor.run("dispatcher", services.dispatcher.run)),
                    ]
                yield
                for task in tasks:
                    task.cancel()
            log.info("shutdown.done")

    app = Starlette(
        routes=routes(),
        lifespan=lifespan,
        middleware=[Middleware(HeaderLimit)],
        exception_handlers={
            errors.LowerplaneError: handle_error,
            dashboard.LoginRequired: _to_login,
        },
    )
    app.state.settings = settings
    app.state.fatal = None

    def on_fatal(reason: str) -> None:
        """A background task cannot be kept alive: stop serving (``serve`` then exits 1)."""
        app.state.fatal = reason
        stop = getattr(app.state, "stop", None)
        if stop is not None:
            stop()

    app.state.on_fatal = on_fatal
    return app

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
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypedDict
from urllib.parse import quote

import aiohttp
import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from app import errors, queries
from app.logs import get_logger
from app.metrics import Metrics
from app.services import Services, build_services
from app.settings import Settings
from app.supervise import Supervisor
from app.web import api, connect, dashboard, webhooks
from app.web.openapi import API_ROUTES, Handler, serve_document
from app.web.problems import handle_error

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
    # Per connection (each has its own protocol instance); these are the values a new one starts with.
    _in_head = True
    _head_bytes = 0

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
        before = self.cycle
        super().on_headers_complete()
        if self.cycle is not before:  # a new request's cycle (not an upgrade): its writes coalesced
            self.cycle.transport = HeadWithBody(self.transport, self.cycle)

    def on_message_complete(self) -> None:
        self._in_head = True  # the next request's head may follow on this connection
        super().on_message_complete()


class HeadWithBody(asyncio.Transport):
    """A response's view of its connection's transport: the head of a response that announces its
    length (``content-length`` > 0, not HEAD) is held and written with the first body bytes, in one
    write, so one ``send(2)`` instead of two. On loopback or a LAN a send costs about as much as
    the rest of a delivery's answer (py-spy under bench/ingest_wrk.py). Anything else (an interim
    ``100 Continue``, a chunked or empty response) is written at once, as uvicorn writes it; a
    response closed before its body (an error) drops its held head with the connection.

    The cycle and this view refer to each other (``cycle.transport``) only until the head is
    written: a reference cycle would outlive its request until the garbage collector finds it,
    with the request's scope, headers and events (about 15 objects a request, which made the
    collector run every 45 deliveries under bench/ingest_wrk.py); refcounting frees them at once."""

    __slots__ = ("_cycle", "_held", "_transport")

    def __init__(self, transport: asyncio.Transport, cycle: RequestResponseCycle) -> None:
        super().__init__()
        self._transport = transport
        self._cycle: RequestResponseCycle | None = cycle  # None once the response head is written
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._held is not None:
            data, self._held = self._held + data, None
        elif self._cycle is not None and self._cycle.response_started:
            # this write is the response head (uvicorn writes it whole, once): the cycle is not
            # needed after it, and holding it would keep cycle and view in a reference cycle
            cycle, self._cycle = self._cycle, None
            if cycle.chunked_encoding is False and cycle.expected_content_length > 0:
                if cycle.scope["method"] != "HEAD":
                    self._held = bytes(data)
                    return
        self._transport.write(data)

    def close(self) -> None:
        self._held = self._cycle = None
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self._transport.get_extra_info(name, default)


class ServerOptions(TypedDict):
    """What ``serve`` passes to uvicorn besides host, port and app."""

    http: type[HttpToolsProtocol]


SERVER_OPTIONS: ServerOptions = {"http": BoundedHead}


def make_server(app: ASGIApp, host: str, port: int) -> uvicorn.Server:
    """The one server construction ``serve`` and ``demo`` share: httptools under :class:`BoundedHead`
    (the request head bounded while it arrives), no access log, a bounded graceful shutdown."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        loop="auto",
        **SERVER_OPTIONS,
        lifespan="on",
        timeout_graceful_shutdown=SHUTDOWN_SECONDS,
    )
    return uvicorn.Server(config)


class HeaderLimit:
    """ASGI middleware: 431 for a request line and headers over ``max_bytes`` (never routed)."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_HEADER_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and head_size(scope) > self.max_bytes:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1009})
                return
            await head_too_large(self.max_bytes)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def head_size(scope: Scope) -> int:
    """The bytes of a request's target and headers, as :class:`HeaderLimit` counts them."""
    size = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
    for k, v in scope["headers"]:
        size += len(k) + len(v) + 4
    return size


def head_too_large(max_bytes: int) -> Response:
    return PlainTextResponse(
        f"Request header fields too large (over {max_bytes} bytes).", status_code=431, headers={"Connection": "close"}
    )


HOOK_PREFIX = "/hooks/bitbucket/"


def _is_hook(method: str, path: str, root_path: str | None) -> bool:
    """Whether a request is for the webhook receiver: ``POST /hooks/bitbucket/{connection}``."""
    if method != "POST":
        return False
    if root_path:  # mounted under a prefix: the route's path is what follows it
        path = path.removeprefix(root_path)
    return len(path) > len(HOOK_PREFIX) and path.startswith(HOOK_PREFIX) and "/" not in path[len(HOOK_PREFIX) :]


class HookRoute:
    """ASGI: ``POST /hooks/bitbucket/{connection}`` straight to the receiver, ahead of Starlette's
    middleware stack and router, which cost a delivery more than verifying and storing it
    (bench/ingest_wrk.py). The same checks as that stack: a head over ``max_bytes`` is 431 (as
    :class:`HeaderLimit`); the receiver answers every outcome itself, an unexpected error as a
    logged 500 (as ``ServerErrorMiddleware``). Every other request (another method, a deeper path)
    goes through the stack unchanged, so routing answers it as before (404, 405)."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_HEADER_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _is_hook(scope["method"], scope["path"], scope.get("root_path")):
            if head_size(scope) > self.max_bytes:
                await head_too_large(self.max_bytes)(scope, receive, send)
                return
            scope["path_params"] = {"connection": scope["path"].rpartition("/")[2]}
            await webhooks.receive(scope, receive, send)
            return
        await self.app(scope, receive, send)


class App(Starlette):
    """The product's Starlette app with :class:`HookRoute` in front of its middleware stack."""

    def build_middleware_stack(self) -> ASGIApp:
        return HookRoute(super().build_middleware_stack())


SWITCH_INTERVAL = 0.0005  # seconds a thread waiting for the GIL waits before asking for it (see lifespan)
SHUTDOWN_SECONDS = 10  # SIGTERM: in-flight requests get this long, then the process exits
# Start-up (token connection, webhook registration) holds the first answer this long at most; when
# Bitbucket is slower it goes on in the background, so probes answer and webhooks are stored meanwhile.
STARTUP_WAIT = 5.0


async def start_up_background(services: Services) -> None:
    """``start_up`` run beside the server: whatever it raises is logged, never fatal."""
    try:
        await start_up(services)
    except Exception as exc:  # noqa: BLE001 - the reconcile and the repairs on each pass still run
        log.error("startup.failed", error=f"{type(exc).__name__}: {exc}")
    else:
        log.info("startup.done")


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
    # Ready during a first assessment too (README "Operations"): the webhooks a load balancer
    # routes to us meanwhile must be stored; the body says the assessment is still running.
    body: dict[str, Any] = {"status": "ready", "database": "ok", "worker": "alive"}
    workspaces = await queries.assessment(services)
    running = [a for a in workspaces if not a["assessed"]]
    body["first_assessment"] = "running" if running else "done" if workspaces else "not connected"
    if running:
        body["assessing"] = [_assessing(a) for a in running]
    return JSONResponse(body)


def _assessing(a: dict[str, Any]) -> dict[str, Any]:
    """One workspace whose first full pass has not finished: the pass's state and progress."""
    current = a["current"] or {}
    progress = current.get("progress") or {}
    return {
        "connection": a["connection"],
        "workspace": a["workspace"],
        "pass": current.get("state", "not queued"),
        **{k: progress[k] for k in ("done", "total", "waiting_until", "why") if progress.get(k) is not None},
    }


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
    m.observe_store(store.db)
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
    by_path: dict[str, dict[str, Handler]] = {}
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


def _dispatch(handlers: dict[str, Handler]) -> Handler:
    async def endpoint(request: Request) -> Response:
        response: Response = await handlers[request.method](request)
        return response

    return endpoint


def create_app(settings: Settings, services: Services | None = None, *, background: bool = True) -> App:
    """The ASGI app. With ``services`` given (tests), the caller owns them; ``background`` runs the
    writer, worker and scheduler in the lifespan's task group."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            nonlocal services
            # The event writer's SQLite thread needs the GIL back after each statement; while the
            # loop is busy it waits the switch interval for it (5 ms by default), once or twice a
            # group commit, and every delivery of the batch waits with it.
            previous = sys.getswitchinterval()
            sys.setswitchinterval(min(previous, SWITCH_INTERVAL))
            stack.callback(sys.setswitchinterval, previous)
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
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(supervisor.run("writer", services.writer.run))]
                starting = tg.create_task(start_up_background(services))
                tasks.append(starting)
                _, pending = await asyncio.wait({starting}, timeout=STARTUP_WAIT)
                if pending:
                    log.warning("startup.continues_in_background", waited_seconds=STARTUP_WAIT)
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

    app = App(
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

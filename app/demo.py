"""The ``demo`` command: the whole product end to end on the built-in Bitbucket sandbox.

It starts the sandbox (sample workspace ``acme``) and the service pointed at it, signs in and
connects through the real OAuth flow, which registers the webhook and runs the first reconcile;
prints a summary of the findings; then plays scripted drift and prints each alert as it reaches a
local Slack receiver: a new unclassified repository (webhook), a protection rule removed (no
webhook: found by the next reconcile tier), an offboarded person still a member, and evidence
uploaded that turns a test green. The dashboard stays up until Ctrl-C (``--once``: exit 0 after
the script).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from app.checks.workspace_mfa_enforced import CHECK as WORKSPACE_MFA
from app.logs import configure
from app.main import create_app, make_server
from app.ports import listen
from app.sandbox.serve import free_port, running_sandbox
from app.services import build_services
from app.settings import Settings

PEOPLE = b"""email,name,kind,status,offboarded_on,bitbucket_account_id
alice@acme.example,Alice Admin,employee,active,,557058:alice
bob@acme.example,Bob Builder,employee,active,,
carol@acme.example,Carol Gone,employee,offboarded,2026-10-31,557058:carol
ci-bot@acme.example,CI Bot,service-account,active,,557058:cibot
"""
PDF = b"%PDF-1.4\n% Atlassian authentication policy: two-step verification required for all members\n"


def say(text: str = "") -> None:
    print(text, flush=True)


class SlackPrinter:
    """A local Slack incoming-webhook stand-in that prints each message as Slack would show it."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.arrived = asyncio.Event()
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.messages.append(body)
        self.arrived.set()
        say("")
        say("  ┌─ Slack ─────────────────────────────────────────────")
        for block in body.get("blocks", []):
            text = block.get("text", {}).get("text") or " ".join(e.get("text", "") for e in block.get("elements", []))
            for line in text.splitlines():
                say(f"  │ {line[:150]}")
        say("  └─────────────────────────────────────────────────────")
        return web.Response(text="ok")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/services/demo", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}/services/demo"

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()

    async def wait(self, count: int, seconds: float = 60.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while len(self.messages) < count and loop.time() < deadline:
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), max(0.1, deadline - loop.time()))


async def run_demo(base: Settings, *, port: int, once: bool, data_dir: Path = Path("data")) -> int:
    configure("warning")
    sock = listen("127.0.0.1", port)  # a busy port: one line, exit 2, before anything starts
    try:
        return await _run_demo(sock, port=sock.getsockname()[1], once=once, data_dir=data_dir)
    finally:
        sock.close()


async def _run_demo(sock: socket.socket, *, port: int, once: bool, data_dir: Path) -> int:
    slack = SlackPrinter()
    await slack.start()
    admin = secrets.token_urlsafe(12)
    db = data_dir / "demo.sqlite3"
    await asyncio.to_thread(_fresh, data_dir)
    try:
        async with running_sandbox() as sb, aiohttp.ClientSession() as session:
            settings = Settings.from_env(
                {
                    "LP_DATABASE": str(db),
                    "LP_BITBUCKET_API_URL": sb.api,
                    "LP_BITBUCKET_URL": sb.url,
                    "LP_OAUTH_CLIENT_ID": "sandbox-client-id",
                    "LP_OAUTH_CLIENT_SECRET": "sandbox-client-secret",
                    "LP_SECRET_KEY": secrets.token_urlsafe(24),
                    "LP_ADMIN_TOKEN": admin,
                    "LP_PUBLIC_URL": f"http://127.0.0.1:{port}",
                    "LP_SLACK_WEBHOOK_URL": slack.url,
                    "LP_SLACK_ALLOW_INSECURE_URL": "true",
                    "LP_ALERT_GROUP_WAIT": "2s",
                    "LP_ALERT_GROUP_INTERVAL": "2s",
                    "LP_LOG_LEVEL": "warning",
                },
                env_file=None,
            )
            services = await build_services(settings, session)
            app = create_app(settings, services)
            server = make_server(app, "127.0.0.1", port)  # as serve builds it (request head bounded)
            task = asyncio.create_task(server.serve(sockets=[sock]))
            try:
                while not server.started:
                    if task.done():
                        task.result()
                        return 1
                    await asyncio.sleep(0.05)
                await script(settings, services, sb, slack, port, admin)
                if not once:
                    say(f"\nDashboard: http://127.0.0.1:{port}/  (sign in with the admin token {admin})")
                    say("Press Ctrl-C to stop.")
                    await asyncio.Event().wait()
            finally:
                server.should_exit = True
                await task
                await services.service.store.close()
    except asyncio.CancelledError:
        print("stopped", file=sys.stderr)
    finally:
        await slack.stop()
    return 0


def _fresh(data_dir: Path) -> None:
    """The demo starts from an empty database each time."""
    data_dir.mkdir(parents=True, exist_ok=True)
    for old in data_dir.glob("demo.sqlite3*"):
        old.unlink()


async def script(settings: Settings, services: Any, sb: Any, slack: SlackPrinter, port: int, admin: str) -> None:
    base = f"http://127.0.0.1:{port}"
    store = services.service.store
    api = {"Authorization": f"Bearer {admin}"}
    say(f"Bitbucket sandbox at {sb.url}; the product at {base}")
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        say("\n1. Connecting the workspace through the OAuth flow (sign in, authorize, callback)…")
        await browser.post(base + "/login", data={"token": admin, "next": "/"})
        async with browser.get(base + "/connect/bitbucket") as r:
            say(f"   landed on {r.url.path}?{r.url.query_string} (HTTP {r.status})")
        conn = (await store.connections.all())[0]
        say(f"   connection {conn.id}: workspaces {', '.join(conn.workspaces)}; scopes {', '.join(conn.scopes or ())}")
        hooks = sb.sandbox.state.workspaces["acme"].hooks
        say(f"   webhook registered: {len(hooks)} workspace hook with a secret → {next(iter(hooks.values())).url}")
        await idle(store)
        await slack.wait(1, 20)
        await summary(store)

        say("\n2. Drift: someone creates a repository and does not classify it (webhook repo:created)…")
        seen = len(slack.messages)
        await browser.post(
            sb.url + "/_sandbox/workspaces/acme/create-repo", json={"slug": "payments", "project": "CORE"}
        )
        await idle(store)
        await slack.wait(seen + 1, 30)

        say("\n3. Drift: the 'delete' branch restriction on acme/docs is removed (Bitbucket sends no webhook)…")
        seen = len(slack.messages)
        await browser.post(sb.url + "/_sandbox/repos/acme/docs/remove-restriction", json={"kind": "delete"})
        say("   … the next reconcile tier finds it (queued now instead of waiting for the schedule)")
        await browser.post(base + "/api/reconcile", json={"workspace": "acme", "tier": "full"}, headers=api)
        await idle(store)
        await slack.wait(seen + 1, 30)

        say("\n4. Drift: the personnel directory says Carol left on 2026-10-31, but she is still a member…")
        seen = len(slack.messages)
        await browser.post(base + "/api/personnel/import", data=PEOPLE, headers=api | {"Content-Type": "text/csv"})
        await idle(store)
        await slack.wait(seen + 1, 30)

        say("\n5. Evidence: the authentication policy requiring 2SV is uploaded; the workspace test turns green…")
        seen = len(slack.messages)
        form = aiohttp.FormData()
        form.add_field("check", WORKSPACE_MFA.id)
        form.add_field("workspace", "acme")
        form.add_field("file", PDF, filename="auth-policy.pdf", content_type="application/pdf")
        await browser.post(base + "/api/evidence", data=form, headers=api)
        await idle(store)
        await slack.wait(seen + 1, 30)
        ws = await store.results.query(check=WORKSPACE_MFA.id)
        say(f"   {WORKSPACE_MFA.id} for acme: {ws[0].result.status if ws else 'unknown'}")
    say(f"\nDone: {len(slack.messages)} Slack messages; {len(await store.events.list(limit=1000))} events in the log.")


async def idle(store: Any, seconds: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    await asyncio.sleep(0.3)
    while loop.time() < deadline:
        counts = await store.events.counts()
        if counts.get("queued", 0) + counts.get("running", 0) == 0:
            return
        await asyncio.sleep(0.1)


async def summary(store: Any) -> None:
    rows = await store.results.query()
    by_check: dict[str, Counter[str]] = {}
    for r in rows:
        by_check.setdefault(r.result.check, Counter())[r.result.status] += 1
    say("\n   Findings after the first reconcile:")
    for check, counts in sorted(by_check.items()):
        parts = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        say(f"   - {check}: {parts}")
    failing = [r for r in rows if r.result.status == "fail" and r.result.severity in ("critical", "high")][:4]
    for r in failing:
        say(f"     ✗ {r.result.message[:140]}")

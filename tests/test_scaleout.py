"""Three ``serve`` processes (the console script's code, real subprocesses) on one PostgreSQL behind
a round-robin balancer; the sandbox's webhooks spread over them; one instance SIGKILLed mid-run.
Every acknowledged delivery is processed once, every alert is sent once, and the results equal
those of a single-instance run (``reconcile`` on an SQLite file against the same sandbox)."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from app.sandbox.serve import RunningSandbox, free_port
from tests.helpers import ADMIN, SECRET_KEY, Receiver
from tests.pgcluster import Cluster, fetch
from tests.test_crash import start

NEW_REPOS = 24


class Balancer:
    """A load balancer on loopback: each request to the next live instance (round robin); an
    instance that refuses the connection is skipped, as a health-checked balancer would."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.turn = itertools.cycle(range(len(ports)))
        self.acknowledged: list[tuple[str, int]] = []  # (X-Request-UUID, instance) answered 202
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def _forward(self, request: web.Request) -> web.Response:
        assert self._session is not None
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        for _ in range(len(self.ports)):
            i = next(self.turn)
            try:
                async with self._session.post(
                    f"http://127.0.0.1:{self.ports[i]}{request.path_qs}", data=body, headers=headers
                ) as resp:
                    text = await resp.read()
                    if resp.status == 202:
                        self.acknowledged.append((request.headers.get("X-Request-UUID", ""), i))
                    return web.Response(status=resp.status, body=text)
            except aiohttp.ClientConnectionError:
                continue
        return web.Response(status=502)

    async def __aenter__(self) -> Balancer:
        self._session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None and self._session is not None
        await self._runner.cleanup()
        await self._session.close()


def _env(sandbox: RunningSandbox, database: str, public_url: str, slack: str) -> dict[str, str]:
    return dict(
        os.environ,
        LP_DATABASE=database,
        LP_BITBUCKET_API_URL=sandbox.api,
        LP_BITBUCKET_URL=sandbox.url,
        LP_BITBUCKET_TOKEN="sandbox-acme-token",
        LP_WORKSPACES="acme",
        LP_SECRET_KEY=SECRET_KEY,
        LP_ADMIN_TOKEN=ADMIN,
        LP_PUBLIC_URL=public_url,
        LP_SLACK_WEBHOOK_URL=slack,
        LP_SLACK_ALLOW_INSECURE_URL="true",
        LP_ALERT_GROUP_WAIT="0",
        LP_ALERT_GROUP_INTERVAL="0",
        LP_LOG_LEVEL="warning",
    )


async def _run(env: dict[str, str], *argv: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "app", *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()


async def _until(predicate: Any, within: float) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await asyncio.to_thread(predicate):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("not reached in time")
        await asyncio.sleep(0.2)


async def test_three_instances_one_killed_process_everything_once(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path, pg_cluster: Cluster
) -> None:
    url = pg_cluster.new_database()
    ports = [free_port() for _ in range(3)]
    async with Receiver() as slack, Balancer(ports) as balancer:
        env = _env(sandbox, url, balancer.url, slack.url + "/slack")
        await _run(env, "webhooks", "register")  # the workspace hook points at the balancer
        procs = [await start(env, port, session) for port in ports]
        try:

            def settled() -> bool:
                rows = fetch(url, "SELECT state FROM events")
                pending = fetch(url, "SELECT count(*) AS n FROM outbox WHERE state <> 'sent'")
                return bool(rows) and all(r["state"] in ("done", "ignored") for r in rows) and not pending[0]["n"]

            await _until(settled, 120)  # the first assessment, by one instance
            for n in range(NEW_REPOS):
                async with session.post(
                    f"{sandbox.url}/_sandbox/workspaces/acme/create-repo", json={"slug": f"svc-{n}"}
                ) as resp:
                    assert resp.status == 200, await resp.text()
                if n == NEW_REPOS // 3:  # mid-run: one instance dies without a word
                    os.kill(procs[2].pid, signal.SIGKILL)
                    await procs[2].wait()
            await _until(settled, 150)  # the dead instance's leases expire and are taken over
        finally:
            for proc in procs:
                if proc.returncode is None:
                    proc.send_signal(signal.SIGTERM)
                    await proc.wait()

        assert {i for _, i in balancer.acknowledged} == {0, 1, 2}  # the deliveries really were spread
        webhooks = fetch(url, "SELECT request_uuid, state, caused FROM events WHERE source = 'webhook'")
        stored = [r["request_uuid"] for r in webhooks]
        acknowledged = [u for u, _ in balancer.acknowledged]
        assert len(acknowledged) >= NEW_REPOS and set(acknowledged) <= set(stored)
        assert len(stored) == len(set(stored))  # each delivery stored once
        assert all(r["state"] == "done" and r["caused"] for r in webhooks)  # and processed
        # every alert sent once: one Slack message per recorded send, none sent twice
        sends = fetch(url, "SELECT DISTINCT group_key, sent_at FROM outbox WHERE state = 'sent'")
        assert sends and len(slack.received) == len(sends)
        mentioned = [
            sum(bool(re.search(rf"svc-{n}(?!\d)".encode(), r.body)) for r in slack.received) for n in range(NEW_REPOS)
        ]
        assert max(mentioned) == 1  # no new repository's alert went out twice

    # the same workspace, one instance, SQLite: the same results
    reference = tmp_path / "single.sqlite3"
    await _run(_env(sandbox, str(reference), "http://127.0.0.1:9", slack.url + "/slack"), "reconcile")
    conn = sqlite3.connect(reference)
    try:
        single = set(conn.execute("SELECT check_id, subject_key, status FROM results"))
    finally:
        conn.close()
    multi = {(r["check_id"], r["subject_key"], r["status"]) for r in fetch(url, "SELECT * FROM results")}
    assert len(single) > NEW_REPOS and multi == single

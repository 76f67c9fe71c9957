"""Property: any order of a set of webhook events, processed one by one, gives the same results as
a fresh full reconcile of the final state (events are hints; the state is re-read)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.bitbucket import sansio
from app.sandbox.serve import free_port
from app.services import build_services
from app.settings import Settings
from app.web.webhooks import event_from_delivery

ACTIONS = [
    ("repos/acme/api/update", {"mainbranch": "develop"}),
    ("workspaces/acme/create-repo", {"slug": "new-svc", "project": "CORE"}),
    ("repos/acme/playground/delete-repo", {}),
    ("repos/acme/web/open-pr", {"source": "feature/y"}),
    ("repos/acme/web/update", {"name": "website"}),
    ("repos/acme/empty-repo/push", {"branch": "main"}),
    ("repos/acme/api/push", {"branch": "main"}),
    ("repos/acme/billing/update", {"is_private": False}),
]


def _post(url: str, body: dict[str, Any]) -> Any:
    req = urllib.request.Request(  # noqa: S310 - the loopback sandbox
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": "Bearer sandbox-acme-token"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback
        return json.loads(resp.read() or b"null")


def _settings(db: Path, api: str) -> Settings:
    return Settings.from_env(
        {
            "LP_DATABASE": str(db),
            "LP_BITBUCKET_API_URL": api,
            "LP_BITBUCKET_TOKEN": "sandbox-acme-token",
            "LP_WORKSPACES": "acme",
        },
        env_file=None,
    )


async def _full_pass(db: Path, api: str) -> None:
    async with aiohttp.ClientSession() as session:
        services = await build_services(_settings(db, api), session)
        try:
            await services.service.ensure_token_connection()
            await services.service.internal_event("lp:reconcile", {"workspace": "acme", "tier": "full"})
            await services.worker.drain()
        finally:
            await services.service.store.close()


async def _results(db: Path, api: str) -> dict[tuple[str, str], tuple[str, str, str]]:
    async with aiohttp.ClientSession() as session:
        services = await build_services(_settings(db, api), session)
        try:
            rows = await services.service.store.results.query()
        finally:
            await services.service.store.close()
    return {
        (r.result.check, r.result.subject_key): (
            r.result.status,
            r.result.message,
            json.dumps(r.result.details, sort_keys=True),
        )
        for r in rows
    }


async def _replay(db: Path, api: str, deliveries: list[dict[str, Any]]) -> None:
    async with aiohttp.ClientSession() as session:
        services = await build_services(_settings(db, api), session)
        services.worker.coalesce_window = 0.0
        try:
            for d in deliveries:
                raw = d["body"].encode()
                delivery = sansio.parse_delivery(d["headers"], raw)
                await services.service.store.events.append(event_from_delivery("token", delivery, raw))
                await services.worker.drain()
        finally:
            await services.service.store.close()


@pytest.fixture(scope="module")
def world() -> Iterator[dict[str, Any]]:
    port = free_port()
    proc = subprocess.Popen(  # noqa: S603 - our own module
        [sys.executable, "-m", "app", "sandbox", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ, LP_LOG_LEVEL="warning"),
    )
    base = f"http://127.0.0.1:{port}"
    api = base + "/2.0"
    tmp = Path(tempfile.mkdtemp())
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(api + "/hook_events/workspace", timeout=1).read()  # noqa: S310
                break
            except OSError:
                time.sleep(0.1)
        asyncio.run(_full_pass(tmp / "before.sqlite3", api))
        _post(
            api + "/workspaces/acme/hooks",
            {
                "url": "http://127.0.0.1:9/unreachable",
                "events": ["repo:push", "repo:updated", "repo:created", "repo:deleted", "pullrequest:created"],
                "secret": "s",
            },
        )
        for path, body in ACTIONS:
            _post(f"{base}/_sandbox/{path}", body)
        with urllib.request.urlopen(base + "/_sandbox/deliveries?bodies=1", timeout=10) as resp:  # noqa: S310
            deliveries = json.loads(resp.read())["deliveries"]
        asyncio.run(_full_pass(tmp / "fresh.sqlite3", api))
        expected = asyncio.run(_results(tmp / "fresh.sqlite3", api))
        yield {"api": api, "tmp": tmp, "deliveries": deliveries, "expected": expected}
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def test_the_actions_produced_events(world: dict[str, Any]) -> None:
    keys = sorted(d["headers"]["X-Event-Key"] for d in world["deliveries"])
    assert keys == sorted(
        [
            "repo:updated",
            "repo:created",
            "repo:deleted",
            "pullrequest:created",
            "repo:updated",
            "repo:push",
            "repo:push",
            "repo:updated",
        ]
    )


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(order=st.permutations(list(range(len(ACTIONS)))))
def test_any_order_equals_a_fresh_reconcile(world: dict[str, Any], order: list[int]) -> None:
    tmp: Path = world["tmp"]
    run = Path(tempfile.mkdtemp(dir=tmp))
    db = run / "replay.sqlite3"
    shutil.copy(tmp / "before.sqlite3", db)  # SQLite only: every example starts from a copy of the file
    for suffix in ("-wal", "-shm"):
        if (tmp / f"before.sqlite3{suffix}").exists():
            shutil.copy(tmp / f"before.sqlite3{suffix}", run / f"replay.sqlite3{suffix}")
    deliveries = [world["deliveries"][i] for i in order]
    asyncio.run(_replay(db, world["api"], deliveries))
    got = asyncio.run(_results(db, world["api"]))
    assert got == world["expected"]

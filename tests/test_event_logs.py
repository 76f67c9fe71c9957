"""Every log line written while the worker processes an event carries that event's id, its
connection and its workspace (structlog contextvars), so one event's lines can be found by its id."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import structlog

from app.sandbox.serve import RunningSandbox, free_port
from tests.helpers import RunningApp, product_settings, running_app, wait_for
from tests.test_failure_isolation import act, events, faults, repo_path, settle


async def _no_sleep(_: float) -> None:
    return None


@pytest.fixture
async def product(sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path) -> AsyncIterator[RunningApp]:
    port = free_port()
    settings = product_settings(sandbox.api, tmp_path, port)
    async with running_app(settings, port, session, max_attempts=1, sleep=_no_sleep) as app:
        app.services.worker.retry_base = 30.0  # one try inside the test
        app.services.worker.coalesce_window = 0.0
        await settle(app)
        yield app


async def test_log_lines_of_one_event_carry_its_id_connection_and_workspace(
    product: RunningApp, sandbox: RunningSandbox, session: aiohttp.ClientSession
) -> None:
    await faults(session, sandbox, force_status={repo_path(sandbox, "api"): 503})
    with structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logged:
        await act(session, sandbox, "repos/acme/api/update", {"mainbranch": "develop"})

        async def failed() -> bool:
            rows = await events(product, "repo:updated")
            return bool(rows) and rows[0].tries >= 1 and rows[0].error is not None

        await wait_for(failed, within=10)
    [event] = await events(product, "repo:updated")
    # A line written deep in the pipeline (the fetch layer), which names no event itself.
    fetch_failed = [e for e in logged if e["event"] == "fetch.failed"]
    assert fetch_failed, [e["event"] for e in logged]
    for line in fetch_failed:
        assert line["event_id"] == event.id
        assert event.id in line["event_ids"]
        assert line["connection"] == event.connection_id
        assert line["workspace"] == "acme"
    # The worker's own line about the failure too; and nothing stays bound after the event.
    [failed_line] = [e for e in logged if e["event"] == "worker.event_failed"]
    assert failed_line["event_id"] == event.id
    assert structlog.contextvars.get_contextvars() == {}

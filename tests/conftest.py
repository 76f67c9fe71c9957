"""Shared fixtures: the shared reference data, a running sandbox, an aiohttp session."""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from app.bitbucket.client import BitbucketClient, Budget, StaticToken
from app.sandbox.serve import RunningSandbox, running_sandbox
from tests import pgcluster

ROOT = Path(__file__).resolve().parents[1]


def _shared() -> Path:
    env = os.environ.get("LP_SHARED_DIR")
    candidates = [Path(env)] if env else []
    candidates += [ROOT.parent / "shared", ROOT.parent.parent / "shared"]
    for c in candidates:
        if (c / "bitbucket" / "openapi.json").is_file():
            return c
    raise RuntimeError("../shared/bitbucket not found beside the checkout (set LP_SHARED_DIR)")


SHARED = _shared()

# The slow tier (``make test`` runs it too; ``make test-fast`` leaves it out with ``-m "not slow"``):
# whole files whose tests drive a browser, build a wheel, run the demo, start the real console
# script in subprocesses, or explore many examples (schemathesis, the state machine, chaos).
SLOW_FILES = {
    "test_state_machine.py": "differential state machine",
    "test_chaos.py": "chaos runs",
    "test_dashboard.py": "browser (Playwright + chromium)",
    "test_schemathesis.py": "schemathesis against the OpenAPI document",
    "test_demo.py": "the demo end to end",
    "test_wheel.py": "builds and installs the wheel",
    "test_packaging.py": "packaging and make targets",
    "test_supervision.py": "subprocesses: signals, liveness",
    "test_crash.py": "subprocesses: SIGKILL under load",
    "test_cli_exits.py": "subprocesses: the console script's exit statuses",
    "test_reconcile_command.py": "subprocesses: the reconcile command and its CronJob",
    "test_deploy_serve.py": "subprocesses: serve as the systemd unit, the image and the Deployment run it",
    "test_scaleout.py": "subprocesses: three instances on one PostgreSQL, one SIGKILLed",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in SLOW_FILES:
            item.add_marker(pytest.mark.slow)


# -- both stores -----------------------------------------------------------------------------------
# The tests of these files run twice: on SQLite and on PostgreSQL (a throwaway cluster, see
# tests/pgcluster.py): their async tests and those that take the ``database`` fixture (sync tests
# too, such as those handing it to a subprocess), but for those marked ``sqlite_only(reason)``.
# Each gets its database from ``product_settings``, the ``database`` fixture or
# ``pgcluster.database_for``, and reads or changes it through ``pgcluster.rows``/``execute``.
BOTH_STORES: set[str] = {
    # subprocess tests: the console script, serve, the installed wheel, the deploy files
    "test_cli_exits.py",
    "test_crash.py",
    "test_supervision.py",
    "test_reconcile_command.py",
    "test_hooks_identity.py",
    "test_deploy_serve.py",
    "test_settings_validation.py",
    "test_wheel.py",
    "test_budget.py",
    "test_deferral.py",
    "test_drain.py",
    "test_edges.py",
    "test_event_logs.py",
    "test_failure_isolation.py",
    "test_findings_store.py",
    "test_hooks.py",
    "test_incremental.py",
    "test_order_property.py",
    "test_personnel_import.py",
    "test_reconcile_e2e.py",
    "test_records.py",
    "test_records_dates.py",
    "test_right_or_unknown_e2e.py",
    "test_tiers.py",
    "test_token_mode_switched_off.py",
    "test_wrong_secret_key.py",
    "web/test_webhooks.py",
    "web/test_events_api.py",
    "web/test_sessions.py",
    "web/test_receiver_validation.py",
    "web/test_connect_api.py",
    "web/test_downloads.py",
    "web/test_dashboard_views.py",
    "test_store_views.py",
    "web/test_problems.py",
    "notify/test_notify.py",
    "test_security.py",
    "test_actions.py",
    "web/test_pass_progress.py",
    "test_scale.py",
    "test_state_machine_regressions.py",
    "web/test_dashboard.py",
    "test_overview_queries.py",
    "test_chaos.py",
    "test_atomic_alerts.py",
    "test_members_table.py",
}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "sqlite_only(reason): a test of a BOTH_STORES file that runs on SQLite alone (the reason says why)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A BOTH_STORES file's async tests (those that can reach a store) and its tests that take the
    ``database`` fixture (sync ones too: a subprocess given that database) run on each store, but
    for those marked ``sqlite_only``."""
    if (
        metafunc.definition.path.relative_to(ROOT / "tests").as_posix() in BOTH_STORES
        and "store_kind" in metafunc.fixturenames
        and (inspect.iscoroutinefunction(metafunc.function) or "database" in metafunc.fixturenames)
        and metafunc.definition.get_closest_marker("sqlite_only") is None
    ):
        metafunc.parametrize("store_kind", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[pgcluster.Cluster]:
    with pgcluster.running_cluster() as cluster:
        yield cluster


@pytest.fixture(autouse=True)
def store_kind(request: pytest.FixtureRequest) -> Iterator[str]:
    """``sqlite`` (every test), or ``postgresql`` for the BOTH_STORES tests' second run."""
    kind = str(getattr(request, "param", "sqlite"))
    if kind != "postgresql":
        yield kind
        return
    pgcluster.activate(request.getfixturevalue("pg_cluster"))
    try:
        yield kind
    finally:
        pgcluster.activate(None)


@pytest.fixture
def database(tmp_path: Path, store_kind: str) -> Path | str:
    """The test's database: an SQLite file in tmp_path, or a fresh PostgreSQL database."""
    return pgcluster.database_for(tmp_path / "db.sqlite3")


FIXTURES = SHARED / "bitbucket" / "fixtures"
TOKEN = "sandbox-acme-token"
READONLY_TOKEN = "sandbox-acme-readonly"


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


@pytest.fixture
async def sandbox() -> AsyncIterator[RunningSandbox]:
    async with running_sandbox() as sb:
        yield sb


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def _no_sleep(_: float) -> None:
    return None


@pytest.fixture
def client_for(session: aiohttp.ClientSession, sandbox: RunningSandbox) -> Any:
    def make(token: str = TOKEN, **kw: Any) -> BitbucketClient:
        kw.setdefault("sleep", _no_sleep)
        return BitbucketClient(session, StaticToken(token), api_url=sandbox.api, budget=Budget(100_000), **kw)

    return make

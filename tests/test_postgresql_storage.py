"""PostgreSQL counterparts of the tests that act on the SQLite file itself: a database a newer
version migrated, one created at an older schema version, a table gone under the running service,
the server's connections lost (a restart, a failover). Each acts on the test cluster's database
from outside the product, through psql or asyncpg, as the SQLite tests act on the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from app.sandbox.serve import RunningSandbox, free_port
from app.services import Services, build_services
from app.store import Store, pg
from app.store.schema import MIGRATIONS
from app.store.snapshots import k_emails, k_members
from app.webhook_registration import description, ensure_hooks, installation_id
from tests.helpers import RunningApp, product_settings, running_app, wait_for
from tests.pgcluster import Cluster, fetch
from tests.test_cli_exits import ADMIN, GOOD_KEY, assert_one_line, run_cli
from tests.test_crash import env_for, start
from tests.test_hooks_identity import MEMBER
from tests.test_members_table import NOW, member
from tests.test_supervision import health


def test_a_database_from_a_newer_version_is_refused_untouched(pg_cluster: Cluster, tmp_path: Path) -> None:
    """tests/test_cli_exits.py's test on PostgreSQL: a rollback after an upgrade that migrated the
    database. This version must not write into a schema it does not know: every command exits 2
    with one line saying so, and the database is left as it was."""
    url = pg_cluster.new_database()

    async def made_by_a_later_version() -> None:
        store = await Store.open(url)
        await store.meta.set("made-by", "a later version")
        await store.db.execute("INSERT INTO schema_version (version) VALUES (999)")
        await store.close()

    asyncio.run(made_by_a_later_version())
    before = fetch(url, "SELECT version FROM schema_version ORDER BY version")
    env = {"LP_DATABASE": url, "LP_SECRET_KEY": GOOD_KEY, "LP_ADMIN_TOKEN": ADMIN, "LP_BITBUCKET_TOKEN": "t"}
    for argv in (["findings"], ["serve", "--port", "0"]):
        status, err = run_cli(argv, tmp_path, env)
        assert status == 2, (argv, err)
        assert_one_line(err, "written by a newer version of lowerplane-bitbucket (schema 999")
    assert fetch(url, "SELECT version FROM schema_version ORDER BY version") == before
    assert fetch(url, "SELECT value FROM meta WHERE key = 'made-by'") == [{"value": "a later version"}]
    pg_cluster.drop_database(url)


async def test_a_database_of_an_older_schema_migrates_to_the_current_one(
    pg_cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tests/test_members_table.py's upgrade on PostgreSQL, from schema 3: the results are rebuilt
    keyed by workspace (4), an exception recorded by name is keyed by the repository's uuid (5),
    and the members table is filled from the stored member list and email lookup (6)."""
    url = pg_cluster.new_database()
    monkeypatch.setattr(pg, "MIGRATIONS", MIGRATIONS[:3])  # what a release of schema 3 applied
    old = await Store.open(url)
    assert [r[0] for r in await old.db.fetchall("SELECT version FROM schema_version ORDER BY 1")] == [1, 2, 3]
    await old.db.executemany(
        "INSERT INTO snapshots (key, workspace, kind, content, hash, fetched_at) VALUES (?,?,?,?,?,?)",
        [
            ("repo:{u1}", "acme", "repo", json.dumps({"uuid": "{u1}", "full_name": "acme/api"}), "h1", NOW),
            (
                k_members("acme"),
                "acme",
                "members",
                json.dumps([member("a-9", "User 9"), member("a-1", "Ann")]),
                "h",
                NOW,
            ),
            (
                k_emails("acme"),
                "acme",
                "email_links",
                '{"available": true, "links": {"n@example.com": "a-9"}}',
                "h",
                NOW,
            ),
        ],
    )
    await old.db.execute(
        "INSERT INTO results (check_id, subject_key, workspace, subject_type, subject, subject_uuid, severity, status, "
        "message, details, fingerprint, first_seen, last_changed) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
        ("branch-protection-enforced", "{u1}", "acme", "repository", "acme/api", "{u1}", "high", "fail", "m", "{}",
         "f", NOW, NOW),
    )  # fmt: skip
    await old.db.execute(
        "INSERT INTO exceptions (check_id, subject, owner, reason, created_by, created_at, expires_at) "
        "VALUES (?,?,?,?,?,?,?)",
        ("branch-protection-enforced", "acme/api", "cto", "r", "admin", NOW, "2027-01-01T00:00:00+00:00"),
    )
    await old.close()
    monkeypatch.undo()

    store = await Store.open(url)
    try:
        versions = await store.db.fetchall("SELECT version FROM schema_version ORDER BY 1")
        assert [r[0] for r in versions] == list(range(1, len(MIGRATIONS) + 1))
        [result] = await store.db.fetchall("SELECT workspace, check_id, subject_key, status FROM results")
        assert tuple(result) == ("acme", "branch-protection-enforced", "{u1}", "fail")
        [exception] = await store.db.fetchall("SELECT subject_key, inactive_reason FROM exceptions")
        assert tuple(exception) == ("{u1}", None)
        members = await store.db.fetchall("SELECT workspace, account_id, display_name, email FROM members ORDER BY 2")
        assert [tuple(r) for r in members] == [("acme", "a-1", "Ann", None), ("acme", "a-9", "User 9", "n@example.com")]
    finally:
        await store.close()
        pg_cluster.drop_database(url)


# -- the service running while its database fails ---------------------------------------------------
@contextlib.asynccontextmanager
async def settled_app(
    pg_cluster: Cluster, sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path
) -> AsyncIterator[tuple[RunningApp, str]]:
    """The product in-process on a fresh database of the cluster, its first pass done; and the
    database's name (for psql)."""
    url = pg_cluster.new_database()
    port = free_port()
    settings = product_settings(sandbox.api, tmp_path, port, LP_DATABASE=url)
    try:
        async with running_app(settings, port, session) as app:
            store = app.services.service.store
            assert store.db.dialect == "postgresql"

            async def settled() -> bool:
                counts = await store.events.counts()
                return counts.get("done", 0) > 0 and counts.get("queued", 0) + counts.get("running", 0) == 0

            await wait_for(settled, within=20)
            yield app, url.rsplit("/", 1)[-1]
    finally:
        pg_cluster.drop_database(url)


async def test_a_crashed_worker_is_restarted_counted_and_reported(
    pg_cluster: Cluster, sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """tests/test_supervision.py's test on PostgreSQL: the events table disappears under the
    service (renamed by another client) and comes back."""
    async with settled_app(pg_cluster, sandbox, session, tmp_path) as (product, name):
        supervisor = product.services.supervisor
        assert supervisor is not None
        supervisor.backoff_initial = supervisor.backoff_max = 0.3
        supervisor.max_restarts = 1000
        assert await health(session, product.url) == (200, {"status": "ok"})
        await asyncio.to_thread(pg_cluster.psql, "ALTER TABLE events RENAME TO events_away", name)
        try:

            async def reported() -> bool:
                status, body = await health(session, product.url)
                return status == 503 and "worker" in body["tasks"]

            await wait_for(reported, within=10, interval=0.02)
            _, body = await health(session, product.url)
            assert body["status"] == "failing" and 'relation "events" does not exist' in body["tasks"]["worker"]
        finally:
            await asyncio.to_thread(pg_cluster.psql, "ALTER TABLE events_away RENAME TO events", name)

        async def healthy() -> bool:
            status, _ = await health(session, product.url)
            return status == 200 and supervisor.tasks["worker"].running and supervisor.tasks["worker"].restarts >= 1

        await wait_for(healthy, within=10)
        store = product.services.service.store
        [eid] = await product.services.service.internal_event("lp:reconcile", {"tier": "members"})

        async def processed() -> bool:
            row = await store.events.get(eid)
            return row is not None and row.state == "done"

        await wait_for(processed, within=10)


async def test_connections_the_server_drops_are_replaced(
    pg_cluster: Cluster, sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """What a PostgreSQL restart or failover does to a running service: every connection it holds
    is closed by the server. The service opens new ones: it is ready again, and a webhook delivered
    after it is stored and processed."""
    async with settled_app(pg_cluster, sandbox, session, tmp_path) as (product, name):
        store = product.services.service.store
        await store.events.wait_changed(0.01)  # the event stream's listening connection too
        terminate = f"SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '{name}'"  # noqa: S608
        dropped = await asyncio.to_thread(pg_cluster.psql, terminate)
        assert int(dropped) >= 2, dropped  # the pool's and the listener's

        async def ready() -> bool:
            async with session.get(product.url + "/readyz") as resp:
                return resp.status == 200

        await wait_for(ready, within=15)
        async with session.post(f"{sandbox.url}/_sandbox/repos/acme/api/update", json={"mainbranch": "develop"}) as r:
            assert r.status == 200

        async def processed() -> bool:
            rows = await store.events.list(event_key="repo:updated")
            return bool(rows) and rows[0].state == "done"

        await wait_for(processed, within=20)
        deliveries = (await (await session.get(sandbox.url + "/_sandbox/deliveries")).json())["deliveries"]
        assert [d["attempts"][-1] for d in deliveries if d["event_key"] == "repo:updated"] == ["202"]
        assert await health(session, product.url) == (200, {"status": "ok"})


@pytest.mark.slow
async def test_a_task_that_cannot_be_kept_alive_ends_the_process_non_zero(
    pg_cluster: Cluster, sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """tests/test_supervision.py's test on PostgreSQL: ``serve`` whose events table is gone for good
    gives up and exits 1 (so systemd or Kubernetes restarts it)."""
    url = pg_cluster.new_database()
    port = free_port()
    env = env_for(sandbox, tmp_path, port) | {"LP_DATABASE": url, "LP_DATA_DIR": str(tmp_path)}
    proc = await start(env, port, session)
    try:
        await asyncio.to_thread(pg_cluster.psql, "ALTER TABLE events RENAME TO events_away", url.rsplit("/", 1)[-1])
        started = time.monotonic()
        code = await asyncio.wait_for(proc.wait(), timeout=40)
        assert code == 1
        assert time.monotonic() - started < 40
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        pg_cluster.drop_database(url)


async def test_a_copied_database_given_its_own_id_leaves_the_originals_hook_alone(
    pg_cluster: Cluster, sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """tests/test_hooks_identity.py's copy on PostgreSQL: production's database restored into
    staging (here a copy made with CREATE DATABASE … TEMPLATE, as pg_dump and pg_restore would),
    given its own installation id with psql (README), does not take production's hook over."""
    hooks = sandbox.sandbox.state.workspaces["acme"].hooks
    production = pg_cluster.new_database()
    staging = production + "_staging"

    @contextlib.asynccontextmanager
    async def product(url: str, port: int) -> AsyncIterator[Services]:
        settings = product_settings(sandbox.api, tmp_path, port, LP_DATABASE=url, **MEMBER)
        services = await build_services(settings, session)
        try:
            yield services
        finally:
            await services.service.store.close()

    try:
        async with product(production, 8001) as services:
            conn = await services.service.ensure_token_connection()
            assert conn is not None
            [made] = await ensure_hooks(services.service, conn)
            prod_id = await installation_id(services.service)
        prod_hook = hooks[made["uuid"]]
        source, copy = production.rsplit("/", 1)[-1], staging.rsplit("/", 1)[-1]
        await asyncio.to_thread(pg_cluster.psql, f"CREATE DATABASE {copy} TEMPLATE {source}")
        await asyncio.to_thread(pg_cluster.psql, "DELETE FROM meta WHERE key = 'installation_id'", copy)
        async with product(staging, 8002) as services:
            conn = await services.service.store.connections.get("token")
            assert conn is not None and [e["uuid"] for e in conn.hooks] == [prod_hook.uuid]  # copied
            [entry] = await ensure_hooks(services.service, conn)
            staging_id = await installation_id(services.service)
        assert staging_id != prod_id and entry["action"] == "created" and entry["uuid"] != prod_hook.uuid
        assert prod_hook.url == "http://127.0.0.1:8001/hooks/bitbucket/token"
        assert prod_hook.description == description("token", prod_id)
    finally:
        pg_cluster.drop_database(staging)
        pg_cluster.drop_database(production)

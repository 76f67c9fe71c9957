"""PostgreSQL counterparts of tests that act on the SQLite file itself: a database created at an
older schema version, the server's connections lost (a restart, a failover). Each acts on the test
cluster's database from outside the product, as the SQLite tests act on the file. (A database a
newer version migrated, a table renamed under the running service and a copied database run on
both stores in tests/test_cli_exits.py, tests/test_supervision.py and tests/test_hooks_identity.py.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from app.sandbox.serve import RunningSandbox, free_port
from app.store import Store, pg
from app.store.schema import MIGRATIONS
from app.store.snapshots import k_emails, k_members
from tests.helpers import RunningApp, product_settings, running_app, wait_for
from tests.pgcluster import Cluster
from tests.test_members_table import NOW, member
from tests.test_supervision import health


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

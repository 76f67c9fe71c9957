"""PostgreSQL counterparts of the tests that act on the SQLite file itself: a database a newer
version migrated, one created at an older schema version, a table gone under the running service,
the server's connections lost (a restart, a failover). Each acts on the test cluster's database
from outside the product, through psql or asyncpg, as the SQLite tests act on the file.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from app.store import Store, pg
from app.store.schema import MIGRATIONS
from app.store.snapshots import k_emails, k_members
from tests.pgcluster import Cluster, fetch
from tests.test_cli_exits import ADMIN, GOOD_KEY, assert_one_line, run_cli
from tests.test_members_table import NOW, member


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

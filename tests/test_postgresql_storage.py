"""PostgreSQL counterparts of the tests that act on the SQLite file itself: a database a newer
version migrated, one created at an older schema version, a table gone under the running service,
the server's connections lost (a restart, a failover). Each acts on the test cluster's database
from outside the product, through psql or asyncpg, as the SQLite tests act on the file.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from app.store import Store
from tests.pgcluster import Cluster, fetch
from tests.test_cli_exits import ADMIN, GOOD_KEY, assert_one_line, run_cli


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

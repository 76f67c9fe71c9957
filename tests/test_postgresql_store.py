"""PostgreSQL as the second store: the dialect seam (app/store/pg.py), its migrations, settings."""

from __future__ import annotations

import asyncio

import pytest

from app.errors import ConfigError
from app.settings import PostgresURL, Settings
from app.store import Store
from app.store.pg import PgDatabase, translate
from app.store.schema import MIGRATIONS
from tests.pgcluster import Cluster


def test_translate_placeholders_and_dialect() -> None:
    assert translate("SELECT * FROM t WHERE a = ? AND b = '?' AND c IN (?,?)") == (
        "SELECT * FROM t WHERE a = $1 AND b = '?' AND c IN ($2,$3)"
    )
    assert translate("INSERT OR IGNORE INTO t (a) VALUES (?) RETURNING id") == (
        "INSERT INTO t (a) VALUES ($1) ON CONFLICT DO NOTHING RETURNING id"
    )
    assert translate("SELECT json_extract(s.content, '$.user.uuid') FROM s") == (
        "SELECT ((s.content)::jsonb #>> '{user,uuid}') FROM s"
    )


def test_a_postgresql_url_is_accepted_and_its_password_never_shown() -> None:
    url = "postgresql://lp:s3cret-pw@db.example:5432/lp"
    settings = Settings.from_env({"LP_DATABASE": url}, env_file=None)
    assert isinstance(settings.database, PostgresURL) and str(settings.database) == url
    assert "s3cret-pw" not in repr(settings.database) and "s3cret-pw" not in repr(settings)
    assert "s3cret-pw" in settings.secret_values()  # redacted from every log line
    for bad in ("mysql://h/db", "postgresql://h:99999/db", "postgresql://lp:pw@host"):
        with pytest.raises(ConfigError) as caught:
            Settings.from_env({"LP_DATABASE": bad}, env_file=None)
        assert str(caught.value).startswith("LP_DATABASE: ") and "pw" not in str(caught.value)


async def test_an_unreachable_postgresql_is_named_without_its_password(pg_cluster: Cluster) -> None:
    url = f"postgresql://lp:s3cret-pw@127.0.0.1:{pg_cluster.port}/no_such_database"
    with pytest.raises(ConnectionError) as caught:
        await Store.open(url)
    assert "no_such_database" in str(caught.value) and "s3cret-pw" not in str(caught.value)


async def test_postgresql_migrations_are_versioned_and_idempotent(pg_cluster: Cluster) -> None:
    url = pg_cluster.new_database()
    # Three instances starting together: one applies the migrations, the others wait for it.
    stores = await asyncio.gather(*(Store.open(url) for _ in range(3)))
    try:
        for store in stores:
            assert isinstance(store.db, PgDatabase)
            assert await store.db.migrate() == len(MIGRATIONS)
        rows = await stores[0].db.fetchall("SELECT version FROM schema_version ORDER BY version")
        assert [r[0] for r in rows] == list(range(1, len(MIGRATIONS) + 1))  # each applied once
        rid = await stores[0].db.execute(
            "INSERT INTO audit (at, actor, action, object_type, object_id, details) VALUES (?,?,?,?,?,?)",
            ("t", "a", "x", "y", "z", "{}"),
        )
        assert rid == 1  # lastrowid, as on SQLite
    finally:
        for store in stores:
            await store.close()

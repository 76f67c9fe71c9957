"""The members table (schema 6): one row per workspace member, written when the member list or
the email lookup is stored, read by the Members page through an index. On both stores; the tests
of SQLite's own machinery (its query plans, its connection's functions) on SQLite only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from app.store import Store, db
from app.store.snapshots import k_emails, k_members
from app.store.views import Views

NOW = "2026-05-01T00:00:00+00:00"


def member(account: str, name: str, permission: str = "member") -> dict[str, Any]:
    return {"user": {"account_id": account, "display_name": name}, "permission": permission}


async def people(store: Store, *rows: tuple[str, str, str | None, str]) -> None:
    """(email, name, account id, status) rows of the personnel directory."""
    await store.db.executemany(
        "INSERT INTO personnel (email, name, kind, status, bitbucket_account_id, updated_at) VALUES (?,?,?,?,?,?)",
        [(email, name, "employee", status, account, NOW) for email, name, account, status in rows],
    )


async def page(store: Store, **kw: Any) -> tuple[list[tuple[str, str, str | None]], dict[str, int]]:
    found = await Views(store.db).members(["acme"], **kw)
    return [(m["display_name"], m["link"], m["linked_by"]) for m in found.items], found.counts


async def test_the_member_list_and_email_lookup_write_the_members_table(database: Path | str) -> None:
    store = await Store.open(database)
    try:
        await people(
            store,
            ("ann@example.com", "Ann", "a-1", "active"),
            ("bob@example.com", "Bob", None, "offboarded"),
        )
        listed = [member("a-10", "User 10"), member("a-1", "User 1"), member("a-2", "User 2", "owner")]
        lookup = {"available": True, "links": {"bob@example.com": "a-2"}}
        await store.snapshots.put_many(
            [(k_members("acme"), "acme", "members", listed), (k_emails("acme"), "acme", "email_links", lookup)], NOW
        )
        rows = await store.db.fetchall("SELECT account_id, display_name, permission, email FROM members ORDER BY 1")
        assert [tuple(r) for r in rows] == [
            ("a-1", "User 1", "member", None),
            ("a-10", "User 10", "member", None),
            ("a-2", "User 2", "owner", "bob@example.com"),
        ]
        # natural order; linked by account id, and by the email the lookup matched
        assert await page(store) == (
            [("User 1", "linked", "account_id"), ("User 2", "offboarded", "email"), ("User 10", "unlinked", None)],
            {"linked": 1, "offboarded": 1, "unlinked": 1},
        )
        assert (await page(store, sort="name", desc=True))[0][0][0] == "User 10"
        assert (await page(store, link="offboarded"))[0] == [("User 2", "offboarded", "email")]

        # an email lookup that cannot be read links no one by email (its content is kept, stale)
        await store.snapshots.mark_failed(k_emails("acme"), "acme", "email_links", "HTTP 500", NOW)
        assert (await page(store))[1] == {"linked": 1, "unlinked": 2}
        await store.snapshots.put_many([(k_emails("acme"), "acme", "email_links", lookup)], NOW)
        assert (await page(store))[1] == {"linked": 1, "offboarded": 1, "unlinked": 1}

        # a member who left the list leaves the table; a renamed one is renamed
        await store.snapshots.put_many(
            [(k_members("acme"), "acme", "members", [member("a-1", "Ann B"), member("a-2", "User 2", "owner")])], NOW
        )
        assert (await page(store))[0] == [("Ann B", "linked", "account_id"), ("User 2", "offboarded", "email")]
    finally:
        await store.close()


@pytest.mark.sqlite_only("SQLite's upgrade; PostgreSQL's: tests/test_postgresql_storage.py (schema 3 to now)")
async def test_upgrading_fills_the_members_table_from_stored_member_lists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "lp.sqlite"
    monkeypatch.setattr(db, "MIGRATIONS", db.MIGRATIONS[:5])  # a database of schema 5
    old = await Store.open(path)
    await old.db.executemany(
        "INSERT INTO snapshots (key, workspace, kind, content, hash, fetched_at) VALUES (?,?,?,?,?,?)",
        [
            (
                k_members("acme"),
                "acme",
                "members",
                '[{"user": {"account_id": "a-9", "display_name": "User 9"}}]',
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
    await old.close()
    monkeypatch.undo()
    store = await Store.open(path)
    try:
        rows = await store.db.fetchall("SELECT workspace, account_id, display_name, email FROM members")
        assert [tuple(r) for r in rows] == [("acme", "a-9", "User 9", "n@example.com")]
    finally:
        await store.close()


@pytest.mark.sqlite_only("SQLite's query plans (EXPLAIN QUERY PLAN); PostgreSQL's planner chooses by its statistics")
async def test_a_page_of_members_by_name_or_role_walks_an_index(tmp_path: Path) -> None:
    """The page reads its 50 rows in index order (no sort of every member, no JSON unpacked per
    request): what keeps /members under 300 ms at 20,000 members (bench/dashboard.py)."""
    store = await Store.open(tmp_path / "lp.sqlite")
    plans: list[str] = []
    real = store.db.fetchall

    async def explained(sql: str, params: Any = ()) -> Any:
        if "FROM members" in sql and "LIMIT" in sql:
            plans.append(" | ".join(str(r[3]) for r in await real("EXPLAIN QUERY PLAN " + sql, params)))
        return await real(sql, params)

    store.db.fetchall = explained  # type: ignore[method-assign]
    try:
        for sort in ("name", "permission"):
            plans.clear()
            await Views(store.db).members(["acme"], sort=sort, desc=True, limit=50, offset=100)
            [plan] = plans
            assert f"SCAN m USING INDEX members_{sort}" in plan, plan
            assert "TEMP B-TREE FOR ORDER BY" not in plan and "json_each" not in plan.lower(), plan
    finally:
        await store.close()


@pytest.mark.sqlite_only("SQLite's one shared connection (PostgreSQL's functions are SQL, created by the migration)")
async def test_a_page_is_served_while_another_statement_is_active_on_the_connection(
    tmp_path: Path,
) -> None:
    """The views registered their SQL functions on the shared connection at first use; SQLite refuses
    that while a statement is active there ("Error creating function": the Repositories page failed
    when a concurrent request was reading). The functions are registered when the connection opens."""
    store = await Store.open(tmp_path / "lp.sqlite3")
    try:
        await store.db.executemany(
            "INSERT INTO snapshots (key, workspace, kind, content, hash, fetched_at) VALUES (?,?,?,?,?,?)",
            [(f"k{n}", "acme", "x", "{}", "h", NOW) for n in range(3)],
        )
        cursor = await store.db.conn.execute("SELECT key FROM snapshots")
        assert await cursor.fetchone() is not None  # the statement stays active, rows left to read
        rules = [{"pattern": "web*", "project_key": None, "classification": "internal"}]
        listed = await Views(store.db).repositories(["acme"], rules, q="web")
        assert listed.total == 0
        await cursor.close()
    finally:
        await store.close()

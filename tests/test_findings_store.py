"""findings.diff (pure) and the store on a real SQLite file."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from app.findings import diff, fingerprint, key
from app.models import Result, StoredResult
from app.store import Store


def res(status: str, subject: str = "s1", message: str = "m", fetch_failed: bool = False) -> Result:
    return Result(
        check="c",
        severity="high",
        workspace="acme",
        subject_type="repository",
        subject_key=subject,
        subject=subject,
        status=status,
        message=message,
        fetch_failed=fetch_failed,
    )


def stored(r: Result, stale: str | None = None) -> StoredResult:
    return StoredResult(result=r, fingerprint=fingerprint(r), first_seen="t0", last_changed="t0", stale_since=stale)


@pytest.mark.parametrize(
    ("before", "after", "bucket"),
    [
        (None, "fail", "opened"),
        (None, "unknown", "opened"),
        (None, "pass", "changed"),
        ("pass", "fail", "opened"),
        ("not_applicable", "unknown", "opened"),
        ("excepted", "fail", "opened"),  # an exception expired: alerts like a new failure
        ("fail", "pass", "resolved"),
        ("unknown", "not_applicable", "resolved"),
        ("fail", "excepted", "resolved"),
        ("fail", "unknown", "changed"),
        ("pass", "pass", "unchanged"),
    ],
)
def test_diff_buckets(before: str | None, after: str, bucket: str) -> None:
    previous = {key(res(before)): stored(res(before))} if before else {}
    d = diff(previous, [res(after)])
    counts = {
        "opened": len(d.opened),
        "resolved": len(d.resolved),
        "changed": len(d.changed),
        "unchanged": len(d.unchanged),
    }
    assert counts[bucket] == 1 and sum(counts.values()) == 1


def test_message_change_is_a_change_without_status_change() -> None:
    d = diff({key(res("fail")): stored(res("fail"))}, [res("fail", message="other")])
    assert len(d.changed) == 1 and not d.changed[0].status_changed


def test_fetch_failure_keeps_previous_as_stale() -> None:
    prev = stored(res("pass"))
    d = diff({key(prev.result): prev}, [res("unknown", fetch_failed=True)])
    assert d.stale == [prev] and not d.writes
    again = diff({key(prev.result): stored(res("pass"), stale="t1")}, [res("unknown", fetch_failed=True)])
    assert again.is_empty()
    first = diff({}, [res("unknown", fetch_failed=True)])
    assert len(first.opened) == 1  # no earlier data: unknown, never fail


def test_retired_only_in_scope() -> None:
    prev = {
        key(res("fail", "gone")): stored(res("fail", "gone")),
        key(res("fail", "other")): stored(res("fail", "other")),
    }
    d = diff(prev, [], in_scope=lambda k: k[1] == "gone")
    assert [s.result.subject for s in d.retired] == ["gone"]


async def test_store_writes_history_only_on_transitions(database: Path | str) -> None:
    store = await Store.open(database)
    try:
        d1 = diff({}, [res("fail")])
        assert await store.results.apply(d1, "t1") == 1
        loaded = await store.results.load("acme")
        assert loaded[("c", "s1")].first_seen == "t1"
        assert await store.results.apply(diff(loaded, [res("fail")]), "t2") == 0  # unchanged: nothing written
        await store.results.apply(diff(loaded, [res("fail", message="new text")]), "t3")
        loaded = await store.results.load("acme")
        assert loaded[("c", "s1")].last_changed == "t1"  # message only: not a transition
        await store.results.apply(diff(loaded, [res("pass")]), "t4")
        loaded = await store.results.load("acme")
        assert loaded[("c", "s1")].last_changed == "t4" and loaded[("c", "s1")].first_seen == "t1"
        history = await store.results.history("c", "s1")
        assert [(h["old_status"], h["new_status"]) for h in history] == [(None, "fail"), ("fail", "pass")]
        await store.results.apply(diff(loaded, [], lambda k: True), "t5")
        assert await store.results.load("acme") == {}
        assert (await store.results.history("c", "s1"))[-1]["new_status"] == "retired"
    finally:
        await store.close()


@pytest.mark.sqlite_only("SQLite's pragmas (PostgreSQL: test_postgresql_migrations_are_versioned_and_idempotent)")
async def test_migrations_are_versioned_and_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    store = await Store.open(path)
    version = await store.db.migrate()
    mode = await store.db.fetchone("PRAGMA journal_mode")
    sync = await store.db.fetchone("PRAGMA synchronous")
    await store.close()
    store = await Store.open(path)
    assert await store.db.migrate() == version >= 1
    assert mode is not None and mode[0] == "wal" and sync is not None and sync[0] == 2  # FULL
    await store.close()


@pytest.mark.sqlite_only("the backup command is SQLite's (PostgreSQL is backed up with pg_dump; its refusal is tested)")
async def test_backup_is_a_consistent_copy(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "db.sqlite3")
    await store.results.apply(diff({}, [res("fail")]), "t1")
    await store.db.backup(tmp_path / "backup.sqlite3")
    await store.close()
    copy = await Store.open(tmp_path / "backup.sqlite3")
    assert len(await copy.results.load()) == 1
    await copy.close()


async def test_a_member_of_two_workspaces_has_two_results(database: Path | str) -> None:
    store = await Store.open(database)
    try:
        for ws, status in (("a", "fail"), ("b", "pass")):
            r = res(status).model_copy(update={"workspace": ws, "subject_key": "557058:x"})
            await store.results.apply(diff(await store.results.load(ws), [r]), "t1")
        assert {(s.result.workspace, s.result.status) for s in await store.results.query()} == {
            ("a", "fail"),
            ("b", "pass"),
        }
        again = res("fail").model_copy(update={"workspace": "a", "subject_key": "557058:x"})
        assert diff(await store.results.load("a"), [again]).is_empty()  # stable, no flip-flop between workspaces
    finally:
        await store.close()


class _Slack:
    """A channel name for the dispatcher's outbox rows (nothing is sent here)."""

    name = "slack"

    async def send(self, alerts: list[dict[str, object]]) -> None:  # pragma: no cover - never called
        raise AssertionError("not sent in this test")


@pytest.mark.parametrize("order", ["a-then-b", "b-then-a", "at-once"])
async def test_two_recorders_of_the_same_change_record_it_once(database: Path | str, order: str) -> None:
    """A webhook batch on one instance and a pass on another (or a cron ``reconcile`` beside
    ``serve`` on one SQLite file) both read the stored result, both see the same change and both
    record it: one history row and one alert, whichever writes first or when they write together."""
    from app.notify.dispatcher import Dispatcher

    a, b = await Store.open(database), await Store.open(database)
    try:
        await a.results.apply(diff({}, [res("pass")]), "t0")
        # Both read what is stored (pass) before either records the failure they then both see.
        deltas = {
            "a": diff(await a.results.load("acme"), [res("fail")]),
            "b": diff(await b.results.load("acme"), [res("fail")]),
        }
        stores = {"a": a, "b": b}
        assert len(deltas["a"].opened) == len(deltas["b"].opened) == 1

        async def record(name: str, stamp: str) -> int:
            rows = Dispatcher(stores[name], [_Slack()]).rows_for
            return await stores[name].results.apply(deltas[name], stamp, "webhook", alerts=rows)

        if order == "at-once":
            written = await asyncio.gather(record("a", "t1"), record("b", "t2"))
        else:
            first, second = order.split("-then-")
            written = [await record(first, "t1"), await record(second, "t2")]
        assert sorted(written) == [0, 1]
        assert sorted(len(d.opened) for d in deltas.values()) == [0, 1]  # the later one saw it recorded
        history = await a.results.history("c", "s1")
        assert [(h["old_status"], h["new_status"]) for h in history] == [(None, "pass"), ("pass", "fail")]
        outbox = await a.db.fetchall("SELECT kind, payload FROM outbox")
        assert [r["kind"] for r in outbox] == ["opened"]
        [stored_now] = (await b.results.load("acme")).values()
        assert stored_now.result.status == "fail" and stored_now.first_seen == "t0"
        assert stored_now.last_changed == history[-1]["at"]
    finally:
        await a.close()
        await b.close()


async def test_a_recorder_behind_another_diffs_against_what_is_stored_now(database: Path | str) -> None:
    """The later recorder's delta was diffed against an older result: it is diffed again against
    the stored one, so its history row names the true earlier status, and a retirement or a stale
    mark of a result already retired is dropped."""
    a, b = await Store.open(database), await Store.open(database)
    try:
        await a.results.apply(diff({}, [res("pass"), res("fail", "gone")]), "t0")
        late = diff(await b.results.load("acme"), [res("unknown", fetch_failed=False)], lambda k: k[1] == "gone")
        await a.results.apply(diff(await a.results.load("acme"), [res("fail")], lambda k: k[1] == "gone"), "t1")
        # b read pass; it is fail now: fail -> unknown is a change, not an opening (no second alert)
        assert await b.results.apply(late, "t2") == 1
        assert [len(late.opened), len(late.changed), len(late.retired)] == [0, 1, 0]
        history = await a.results.history("c", "s1")
        assert [(h["old_status"], h["new_status"]) for h in history][-1] == ("fail", "unknown")
        assert [h["new_status"] for h in await a.results.history("c", "gone")] == ["fail", "retired"]
    finally:
        await a.close()
        await b.close()

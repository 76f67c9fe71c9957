"""PostgreSQL as the second store: the dialect seam (app/store/pg.py), its migrations, settings."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from app.errors import ConfigError
from app.metrics import Metrics
from app.notify.dispatcher import Dispatcher
from app.notify.senders import SlackSender
from app.settings import PostgresURL, Settings
from app.store import Store
from app.store.events import NewEvent
from app.store.outbox import Outbox
from app.store.pg import PG_MIGRATIONS, PgDatabase, translate
from app.store.schema import MIGRATIONS
from tests.helpers import Receiver, wait_for
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


def test_sqlite_planner_hints_are_dropped() -> None:
    """A text search reads ``results NOT INDEXED`` on SQLite; PostgreSQL knows no such clause."""
    assert translate("SELECT count(*) FROM results NOT INDEXED WHERE subject LIKE ?") == (
        "SELECT count(*) FROM results WHERE subject LIKE $1"
    )


def test_the_postgresql_text_of_a_migration_keeps_its_sqlite_schema() -> None:
    """PostgreSQL's own text of a migration differs only where its dialect needs it: the expression
    index's parentheses, and no backfill (from SQLite's json_each) of data PostgreSQL never held."""
    for number, text in PG_MIGRATIONS.items():
        sqlite_schema = MIGRATIONS[number - 1].split("INSERT OR REPLACE")[0]
        same = text.replace("(CASE", "CASE").replace("END),", "END,")
        assert " ".join(same.split()) == " ".join(sqlite_schema.split())


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


# -- several instances on one database -------------------------------------------------------------
def _event(n: int) -> NewEvent:
    return NewEvent("token", "webhook", "repo:push", {"n": n}, request_uuid=f"r-{n}", workspace="acme")


async def _two_instances(pg_cluster: Cluster) -> tuple[Store, Store]:
    url = pg_cluster.new_database()
    return await Store.open(url), await Store.open(url)


async def test_instances_claim_disjoint_events(pg_cluster: Cluster) -> None:
    a, b = await _two_instances(pg_cluster)
    try:
        await a.events.append_many([_event(n) for n in range(200)])
        claimed: list[int] = []
        for _ in range(10):  # both claim at once, round after round, until the queue is empty
            got = await asyncio.gather(a.events.claim(7), b.events.claim(7))
            claimed += [r.id for rows in got for r in rows]
        assert len(claimed) == len(set(claimed)) == 140  # each event leased by one instance only
    finally:
        await a.close()
        await b.close()


async def test_a_dead_instances_leases_are_taken_over_and_a_live_ones_are_not(pg_cluster: Cluster) -> None:
    a, b = await _two_instances(pg_cluster)
    try:
        await a.events.append_many([_event(n) for n in range(2)])
        held = await a.events.claim(1, lease_seconds=0.2)
        lost = await a.events.claim(1, lease_seconds=0.2)
        await asyncio.sleep(0.1)
        await a.events.renew([held[0].id], lease_seconds=60)  # a's heartbeat keeps the first
        await asyncio.sleep(0.3)
        assert await b.events.requeue_running() == 1  # b starting: only the expired lease
        [taken] = await b.events.claim(10)
        assert taken.id == lost[0].id and (await b.events.get(held[0].id)).state == "running"  # type: ignore[union-attr]
    finally:
        await a.close()
        await b.close()


async def test_one_leader_at_a_time_and_a_successor_after_it_stops(pg_cluster: Cluster) -> None:
    a, b = await _two_instances(pg_cluster)
    try:
        assert await a.locks.leader("dispatcher", "host-a:1", ttl=0.5)
        assert not await b.locks.leader("dispatcher", "host-b:2", ttl=0.5)
        assert await a.locks.leader("dispatcher", "host-a:1", ttl=0.5)  # renewed
        await asyncio.sleep(0.6)  # a stops renewing (killed)
        assert await b.locks.leader("dispatcher", "host-b:2", ttl=0.5)
        assert not await a.locks.leader("dispatcher", "host-a:1", ttl=0.5)
    finally:
        await a.close()
        await b.close()


async def test_a_held_lock_is_renewed_while_its_holder_lives(pg_cluster: Cluster) -> None:
    a, b = await _two_instances(pg_cluster)
    try:
        async with a.locks.held("pass:token:acme:full", "host-a:1", ttl=0.6) as got:
            assert got
            await asyncio.sleep(1.5)  # longer than the ttl: the renewal keeps it
            assert not await b.locks.acquire("pass:token:acme:full", "host-b:2", ttl=0.6)
        assert await b.locks.acquire("pass:token:acme:full", "host-b:2", ttl=0.6)  # released at the end
    finally:
        await a.close()
        await b.close()


async def test_the_event_stream_wakes_on_another_instances_write(pg_cluster: Cluster) -> None:
    a, b = await _two_instances(pg_cluster)
    try:
        await b.events.wait_changed(0.01)  # b listens from now on
        waiting = asyncio.create_task(b.events.wait_changed(30.0))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        await a.events.append(_event(1))  # another instance's write (NOTIFY lp_events)
        await asyncio.wait_for(waiting, 10.0)  # woken by it, not by the 30 s timeout
    finally:
        await a.close()
        await b.close()


async def test_a_statement_that_changes_no_event_wakes_no_one(pg_cluster: Cluster) -> None:
    """An idle worker's empty claim and lease sweep must not wake the waiters: with a NOTIFY per
    statement each empty claim woke the worker for the next one, and an idle instance spun (CI
    held a run for minutes). A statement that changes a row still wakes every instance."""
    a, b = await _two_instances(pg_cluster)
    try:
        watched = await b.events.watch()  # b listens from now on
        for _ in range(3):
            assert await a.events.claim(10) == []
            assert await a.events.requeue_expired_leases() == 0
        await asyncio.sleep(0.5)  # NOTIFY is delivered at commit: it would have arrived by now
        assert not watched.is_set()
        await a.events.append(_event(1))
        await asyncio.wait_for(watched.wait(), 10.0)  # a row changed: b is woken
    finally:
        await a.close()
        await b.close()


async def test_a_held_lock_is_renewed_on_sqlite_too(tmp_path: Path) -> None:
    """The pass lock is short and renewed on SQLite as well (it used to hold an hour after its
    holder died on another host sharing the file)."""
    a, b = await Store.open(tmp_path / "db.sqlite3"), await Store.open(tmp_path / "db.sqlite3")
    try:
        async with a.locks.held("pass:token:acme:full", "host-a:1", ttl=0.6) as got:
            assert got
            await asyncio.sleep(1.5)
            assert not await b.locks.acquire("pass:token:acme:full", "host-b:2", ttl=0.6)
        assert await b.locks.acquire("pass:token:acme:full", "host-b:2", ttl=0.6)
    finally:
        await a.close()
        await b.close()


async def test_instances_adding_repositories_at_once_lose_none(pg_cluster: Cluster) -> None:
    a, b = await _two_instances(pg_cluster)
    try:
        await a.snapshots.put_many([("repos:acme", "acme", "repos", ["{r0}"])], "t0")
        for store, uuid in ((a, "{r1}"), (b, "{r2}")):
            await store.snapshots.put_many([(f"repo:{uuid}", "acme", "repo", {"uuid": uuid})], "t0")
        for _ in range(5):
            await asyncio.gather(
                a.snapshots.update_repo_list("acme", {"{r1}"}, set(), "t1"),
                b.snapshots.update_repo_list("acme", {"{r2}"}, set(), "t1"),
            )
            listed = await a.snapshots.get("repos:acme")
            assert listed is not None and sorted(listed.content) == ["{r0}", "{r1}", "{r2}"]
            await a.snapshots.put_many([("repos:acme", "acme", "repos", ["{r0}"])], "t0")  # again
    finally:
        await a.close()
        await b.close()


async def test_commands_on_postgresql_refuse_clearly(pg_cluster: Cluster, tmp_path: Path) -> None:
    from app.commands import cmd_backup, open_store

    url = pg_cluster.new_database()
    settings = Settings.from_env({"LP_DATABASE": url}, env_file=None)
    with pytest.raises(ConfigError, match="pg_dump"):
        await cmd_backup(settings, tmp_path / "copy.sqlite3")
    wrong = url.replace("lp@", "lp:s3cret-pw@").rsplit("/", 1)[0] + "/missing"
    with pytest.raises(ConfigError) as caught:
        async with open_store(Settings.from_env({"LP_DATABASE": wrong}, env_file=None)):
            pass
    assert str(caught.value).startswith("LP_DATABASE: cannot use") and "s3cret-pw" not in str(caught.value)
    async with open_store(settings, existing=True) as store:  # a server database always "exists"
        assert await store.results.exist("acme") is False


class _SlowSlack(Receiver):
    """A Slack receiver that takes ``delay`` seconds to answer each message (recorded on arrival)."""

    delay: float = 2.0

    async def _handle(self, request: web.Request) -> web.Response:
        answer = await super()._handle(request)
        await asyncio.sleep(self.delay)
        return answer


async def test_a_send_slower_than_the_dispatcher_lease_is_not_sent_again(pg_cluster: Cluster) -> None:
    """The leader's lease (shortened to 0.6 s here, 30 s in production) is renewed while a send is
    in flight: the other instance's dispatcher never takes over and sends the alert a second time."""
    a, b = await _two_instances(pg_cluster)
    tasks: list[asyncio.Task[None]] = []
    try:
        async with _SlowSlack() as rx, aiohttp.ClientSession() as session:

            def dispatcher(store: Store, owner: str) -> Dispatcher:
                slack = SlackSender(session, rx.url + "/services/T/B/X", validate=False, min_interval=0)
                return Dispatcher(store, [slack], group_wait=0, lease_seconds=0.6, owner=owner)

            first, second = dispatcher(a, "host-a:1"), dispatcher(b, "host-b:2")
            alert = {"kind": "ops", "workspace": "acme", "check": "ops", "title": "T", "subject": "acme",
                     "subject_key": "k", "new_status": "ops", "message": "m", "severity": "ops", "fix": ""}  # fmt: skip
            assert await first.enqueue([alert]) == 1
            tasks = [asyncio.create_task(d.run(every=0.05)) for d in (first, second)]

            async def sent() -> bool:
                return (await Outbox(a.db).counts()).get("sent", 0) == 1

            await wait_for(sent, within=20)  # marked sent after the 2 s answer
            await asyncio.sleep(0.7)  # a lease's time more: nothing else goes out
            assert len(rx.received) == 1
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await a.close()
        await b.close()


async def test_the_event_stream_listener_reconnects_after_its_connection_is_killed(pg_cluster: Cluster) -> None:
    """The LISTEN connection terminated by the server (``pg_terminate_backend``, as on a restart):
    it is made again, counted in /metrics, and another instance's next write wakes the stream by
    NOTIFY again (well within the 30 s a waiter would otherwise sleep)."""
    a, b = await _two_instances(pg_cluster)
    try:
        await b.events.wait_changed(0.01)  # b listens from now on
        assert isinstance(b.db, PgDatabase) and b.db._listener is not None
        pid = b.db._listener.get_server_pid()
        row = await a.db.fetchone("SELECT pg_terminate_backend(?)", (pid,))
        assert row is not None and row[0] is True

        async def reconnected() -> bool:
            return b.db.listen_reconnects == 1  # type: ignore[attr-defined]

        await wait_for(reconnected, within=20)
        assert b.db._listener is not None and b.db._listener.get_server_pid() != pid
        waiting = asyncio.create_task(b.events.wait_changed(30.0))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        await a.events.append(_event(1))  # another instance's write (NOTIFY lp_events)
        await asyncio.wait_for(waiting, 10.0)  # woken by it, not by the 30 s timeout
        metrics = Metrics()
        metrics.observe_store(b.db)
        assert b"lp_pg_listen_reconnects_total 1.0" in metrics.render()
    finally:
        await a.close()
        await b.close()

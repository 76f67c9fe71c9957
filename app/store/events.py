"""The event log: every trigger (webhook, reconcile, CLI/API change) is a row here.

States: ``queued`` → ``running`` (leased) → ``done``; a failed attempt goes to ``failed`` with a
backoff and is claimed again, until ``dead`` after a bounded number of tries. ``ignored`` records
a delivery whose event key the planner does not use. A crashed worker's ``running`` events return
to the queue at start-up (``requeue_running``).

Webhook inserts go through :class:`EventWriter`, a group commit: concurrent deliveries are written
in one transaction and each answer waits for that commit (``synchronous=FULL``), so every 202 is
durable while one fsync serves many deliveries. A batch the database refuses is retried row by
row, so one bad row fails only its own delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sqlite3
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from app.logs import get_logger
from app.store.db import Database

log = get_logger("store.events")

MAX_TRIES = 5
# A claimed event's lease: short, and renewed by the worker holding it (``renew``) while it works,
# so an instance that dies (SIGKILL, a lost machine) gives its events back within this time.
LEASE_SECONDS = 30.0


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs 3x (one per delivery)
class NewEvent:
    connection_id: str
    source: str  # webhook | internal | reconcile
    event_key: str
    payload: dict[str, Any]
    state: str = "queued"
    request_uuid: str | None = None
    hook_uuid: str | None = None
    attempt: int | None = None
    body_hash: str | None = None
    workspace: str | None = None


@dataclass(frozen=True)
class EventRow:
    id: int
    connection_id: str
    source: str
    event_key: str
    request_uuid: str | None
    hook_uuid: str | None
    attempt: int | None
    workspace: str | None
    payload: dict[str, Any]
    state: str
    tries: int
    received_at: str
    started_at: str | None
    finished_at: str | None
    error: str | None
    caused: dict[str, Any] | None
    changed_at: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "connection": self.connection_id,
            "source": self.source,
            "event_key": self.event_key,
            "request_uuid": self.request_uuid,
            "hook_uuid": self.hook_uuid,
            "attempt": self.attempt,
            "workspace": self.workspace,
            "state": self.state,
            "tries": self.tries,
            "received_at": self.received_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "error": self.error,
            "caused": self.caused,
            "summary": summary(self.payload),
        }


def summary(payload: dict[str, Any]) -> str:
    parts = [str(payload[k]) for k in ("repository_full_name", "workspace", "tier", "subject") if payload.get(k)]
    if payload.get("branches"):
        parts.append("branches " + ",".join(payload["branches"]))
    return " ".join(parts)


def _row(r: Any) -> EventRow:
    return EventRow(
        id=r["id"],
        connection_id=r["connection_id"],
        source=r["source"],
        event_key=r["event_key"],
        request_uuid=r["request_uuid"],
        hook_uuid=r["hook_uuid"],
        attempt=r["attempt"],
        workspace=r["workspace"],
        payload=json.loads(r["payload"]),
        state=r["state"],
        tries=r["tries"],
        received_at=r["received_at"],
        started_at=r["started_at"],
        finished_at=r["finished_at"],
        error=r["error"],
        caused=json.loads(r["caused"]) if r["caused"] else None,
        changed_at=float(r["changed_at"]),
    )


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}Z"


def _payload_text(payload: dict[str, Any]) -> str:
    """An event's payload as stored: orjson (a tenth of json's time on the receiver's group commit),
    or json for what orjson refuses (a lone surrogate, which a delivery's branch name can carry)."""
    try:
        return orjson.dumps(payload).decode()
    except TypeError:
        return json.dumps(payload)


_INSERT_MANY = """INSERT OR IGNORE INTO events (connection_id, source, event_key, request_uuid, hook_uuid, attempt,
    body_hash, workspace, payload, state, received_at, changed_at) VALUES """


def _place(ids: list[int | None], start: int, chunk: Sequence[NewEvent], rows: Sequence[Any]) -> None:
    """Give each event of ``chunk`` (at ``start`` in ``ids``) the id of its inserted row, matched by
    (request uuid, body hash); rows are (id, request_uuid, body_hash). A duplicate stays None."""
    slots: dict[tuple[str | None, str | None], list[int]] = {}
    for offset, e in enumerate(chunk):
        slots.setdefault((e.request_uuid or None, e.body_hash), []).append(start + offset)
    for row in rows:
        waiting = slots.get((row[1], row[2]))
        if waiting:
            ids[waiting.pop(0)] = int(row[0])


class Events:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._changed = asyncio.Event()  # replaced on every write this process makes
        self._listening = False

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def watch(self) -> asyncio.Event:
        """The event the log's next change sets, from this call on. Take it before reading the log
        and wait on it after (``wait_changed(seconds, watched)``): a change made between the read
        and the wait then wakes the waiter at once instead of after its timeout. On PostgreSQL
        the first call starts listening (LISTEN/NOTIFY) for other instances' writes; on SQLite
        other processes are seen by polling."""
        if not self._listening and self.db.dialect == "postgresql":
            self._listening = True
            await self.db.listen("lp_events", self._notify)  # type: ignore[attr-defined]
        return self._changed

    async def wait_changed(self, seconds: float, watched: asyncio.Event | None = None) -> None:
        """Until the log changes after ``watched`` was taken (by default: from now on), or
        ``seconds`` pass."""
        changed = watched if watched is not None else await self.watch()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), seconds)

    async def append_many(self, events: Sequence[NewEvent]) -> list[int | None]:
        """Insert events durably: one multi-row statement per 200 events, each its own atomic
        commit (a batch costs one thread hop and one fsync); a duplicate delivery yields None."""
        at, stamp = now_iso(), time.time()
        ids: list[int | None] = [None] * len(events)
        for start in range(0, len(events), 200):
            chunk = events[start : start + 200]
            params: list[Any] = []
            for e in chunk:
                params += [
                    e.connection_id,
                    e.source,
                    e.event_key,
                    e.request_uuid or None,
                    e.hook_uuid,
                    e.attempt,
                    e.body_hash,
                    e.workspace,
                    _payload_text(e.payload),
                    e.state,
                    at,
                    stamp,
                ]
            values = ",".join(["(?,?,?,?,?,?,?,?,?,?,?,?)"] * len(chunk))
            if self.db.dialect == "postgresql":
                # Several instances insert at once, so ids are not consecutive: RETURNING says which.
                returned = await self.db.write_returning(
                    _INSERT_MANY + values + " RETURNING id, request_uuid, body_hash", params
                )
                _place(ids, start, chunk, returned)
                continue
            last, inserted = await self.db.insert_counted(_INSERT_MANY + values, params)
            if inserted == len(chunk):
                # No row ignored: SQLite gave each row in VALUES order the table's largest rowid plus
                # one (the statement is one write transaction), so the ids are the last ones counted.
                ids[start : start + len(chunk)] = range(last - len(chunk) + 1, last + 1)
            elif inserted:  # some were duplicates: which rows went in is read back by their keys
                rows = await self.db.fetchall(
                    "SELECT id, request_uuid, body_hash FROM events WHERE id BETWEEN ? AND ? ORDER BY id",
                    (last - inserted + 1, last),
                )
                _place(ids, start, chunk, rows)
        self._notify()
        return ids

    async def append(self, event: NewEvent) -> int | None:
        return (await self.append_many([event]))[0]

    async def claim(self, limit: int, lease_seconds: float = LEASE_SECONDS) -> list[EventRow]:
        """Lease up to ``limit`` runnable events. On PostgreSQL several instances claim at once:
        ``FOR UPDATE SKIP LOCKED`` gives each its own rows (SQLite's writer lock serializes claims)."""
        now = time.time()
        skip_locked = " FOR UPDATE SKIP LOCKED" if self.db.dialect == "postgresql" else ""
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                f"""UPDATE events SET state = 'running', tries = tries + 1, lease_until = ?, started_at = ?,
                   changed_at = ? WHERE id IN (SELECT id FROM events WHERE state IN ('queued', 'failed')
                   AND next_attempt_at <= ? ORDER BY id LIMIT ?{skip_locked}) RETURNING *""",
                (now + lease_seconds, now_iso(), now, now, limit),
            )
            rows = [_row(r) for r in await cur.fetchall()]
        rows.sort(key=lambda r: r.id)
        if rows:
            self._notify()
        return rows

    async def progress(self, eid: int, progress: dict[str, Any]) -> None:
        """A running pass's progress, kept in its ``caused`` until it finishes (the operator's
        panel reads it); not a change of the event's state, so nothing is woken."""
        await self.db.write_returning(
            "UPDATE events SET caused = ? WHERE id = ? AND state = 'running'",
            (json.dumps({"progress": progress}, default=str), eid),
        )

    async def finish(self, done: dict[int, dict[str, Any]]) -> None:
        if not done:
            return
        at, stamp = now_iso(), time.time()
        await self.db.executemany(
            "UPDATE events SET state = 'done', finished_at = ?, lease_until = NULL, error = NULL, caused = ?, "
            "changed_at = ? WHERE id = ?",
            [(at, json.dumps(caused, default=str), stamp, eid) for eid, caused in done.items()],
        )
        self._notify()

    async def fail(self, rows: Sequence[EventRow], error: str, backoff_base: float = 5.0) -> list[int]:
        """Record a failed attempt; back off exponentially, or mark dead after MAX_TRIES. Returns dead ids."""
        now, dead = time.time(), []
        params: list[tuple[str, float, str, str | None, float, int]] = []
        for r in rows:
            if r.tries >= MAX_TRIES:
                dead.append(r.id)
                params.append(("dead", now, error[:500], now_iso(), now, r.id))
            else:
                params.append(("failed", now + backoff_base * 2 ** (r.tries - 1), error[:500], None, now, r.id))
        await self.db.executemany(
            "UPDATE events SET state = ?, next_attempt_at = ?, error = ?, finished_at = ?, lease_until = NULL, "
            "changed_at = ? WHERE id = ?",
            params,
        )
        self._notify()
        return dead

    async def defer(self, ids: Sequence[int], until: float) -> None:
        """Put claimed events back to wait for ``until`` (coalescing window); the claim does not count."""
        if not ids:
            return
        await self.db.executemany(
            "UPDATE events SET state = 'queued', tries = tries - 1, lease_until = NULL, next_attempt_at = ?, "
            "changed_at = ? WHERE id = ?",
            [(until, time.time(), i) for i in ids],
        )
        self._notify()

    async def release(self, ids: Sequence[int]) -> None:
        """Give back leases (shutdown): the events are runnable again at once and the interrupted
        try does not count."""
        if not ids:
            return
        now = time.time()
        await self.db.executemany(
            "UPDATE events SET state = 'queued', tries = max(tries - 1, 0), lease_until = NULL, next_attempt_at = ?, "
            "changed_at = ? WHERE id = ? AND state = 'running'",
            [(now, now, i) for i in ids],
        )
        self._notify()

    async def renew(self, ids: Sequence[int], lease_seconds: float = LEASE_SECONDS) -> None:
        """Extend the leases a live worker holds (its heartbeat)."""
        if ids:
            await self.db.executemany(
                "UPDATE events SET lease_until = ? WHERE id = ? AND state = 'running'",
                [(time.time() + lease_seconds, i) for i in ids],
            )

    async def requeue_running(self) -> int:
        """At start-up: events a crashed worker left running go back to the queue. On PostgreSQL
        other live instances hold running events too: only expired leases are taken over."""
        if self.db.dialect == "postgresql":
            return await self.requeue_expired_leases()
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                "UPDATE events SET state = 'queued', lease_until = NULL, changed_at = ? WHERE state = 'running'",
                (time.time(),),
            )
            return int(cur.rowcount)

    async def requeue_expired_leases(self) -> int:
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                "UPDATE events SET state = 'queued', lease_until = NULL, changed_at = ? WHERE state = 'running' "
                "AND lease_until < ?",
                (time.time(), time.time()),
            )
            return int(cur.rowcount)

    async def get(self, eid: int) -> EventRow | None:
        r = await self.db.fetchone("SELECT * FROM events WHERE id = ?", (eid,))
        return _row(r) if r else None

    async def list(
        self,
        *,
        state: str | None = None,
        event_key: str | None = None,
        workspace: str | None = None,
        connection: str | None = None,
        limit: int = 50,
        before_id: int | None = None,
        changed_after: float | None = None,
    ) -> list[EventRow]:
        where: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("state", state),
            ("event_key", event_key),
            ("workspace", workspace),
            ("connection_id", connection),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if before_id is not None:
            where.append("id < ?")
            params.append(before_id)
        if changed_after is not None:
            where.append("changed_at > ?")
            params.append(changed_after)
        order = "changed_at, id" if changed_after is not None else "id DESC"
        sql = "SELECT * FROM events" + (" WHERE " + " AND ".join(where) if where else "") + f" ORDER BY {order} LIMIT ?"
        return [_row(r) for r in await self.db.fetchall(sql, [*params, limit])]

    async def counts(self) -> dict[str, int]:
        return {r[0]: r[1] for r in await self.db.fetchall("SELECT state, count(*) FROM events GROUP BY state")}

    async def pending_pass(self, connection_id: str, workspace: str, tier: str) -> int | None:
        """A queued (not yet started) pass of this workspace and tier, which a new request joins."""
        r = await self.db.fetchone(
            "SELECT id FROM events WHERE event_key = 'lp:reconcile' AND state = 'queued' AND connection_id = ? "
            "AND workspace = ? AND json_extract(payload, '$.tier') = ? ORDER BY id LIMIT 1",
            (connection_id, workspace, tier),
        )
        return int(r[0]) if r else None

    async def runnable(self) -> int:
        """Events a worker could claim now (queued, or failed and due for a retry)."""
        r = await self.db.fetchone(
            "SELECT count(*) FROM events WHERE state IN ('queued', 'failed') AND next_attempt_at <= ?", (time.time(),)
        )
        return int(r[0]) if r else 0

    async def oldest_queued_age(self) -> float:
        r = await self.db.fetchone("SELECT min(changed_at) FROM events WHERE state = 'queued'")
        return max(0.0, time.time() - r[0]) if r and r[0] else 0.0

    async def purge(self, older_than_days: int) -> int:
        cutoff = time.time() - older_than_days * 86400
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                "DELETE FROM events WHERE state IN ('done', 'dead', 'ignored') AND changed_at < ?", (cutoff,)
            )
            return int(cur.rowcount)


# SQLite: while the writer runs, the WAL is copied back into the database file by a connection of its
# own every CHECKPOINT_SECONDS (a passive checkpoint, which never blocks a writer), not by the commit
# that happens to pass SQLite's 1,000-page mark, which then holds every 202 of its batch while it
# copies and fsyncs (bench/ingest_wrk.py: one batch in eight, the p99). The process's connection
# still checkpoints by itself past SAFETY_PAGES, should the checkpointer fall behind.
CHECKPOINT_SECONDS = 0.25
SAFETY_PAGES = 20_000


class Checkpointer:
    """A thread with its own SQLite connection running ``PRAGMA wal_checkpoint(PASSIVE)`` every
    ``seconds`` until stopped. A failed checkpoint is logged and tried again next time."""

    def __init__(self, path: Path, seconds: float = CHECKPOINT_SECONDS) -> None:
        self.path, self.seconds = path, seconds
        self.checkpoints = 0  # how many ran (tests, diagnostics)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lp-wal-checkpoint", daemon=True)

    def start(self) -> None:
        self._thread.start()

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.to_thread(self._thread.join, 10)

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while not self._stop.wait(self.seconds):
                try:
                    if conn is None:
                        # mode=rw: never create a database where the file went away
                        uri = self.path.resolve().as_uri() + "?mode=rw"
                        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.checkpoints += 1
                except sqlite3.Error as exc:
                    log.warning("events.checkpoint_failed", error=f"{type(exc).__name__}: {exc}")
        finally:
            if conn is not None:
                conn.close()


class Deadlines:
    """Futures failed with TimeoutError once their deadline passes, under one timer for them all:
    a timer per delivery (``call_later`` and its ``cancel``) cost about 2 µs of the receiver's
    loop time, a tenth of its own work (bench/ingest_wrk.py). Kept in arrival order; finished
    ones leave from the front as new ones come, so the queue holds about the deliveries in flight."""

    def __init__(self) -> None:
        self._pending: deque[tuple[float, asyncio.Future[int | None]]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def watch(self, future: asyncio.Future[int | None], seconds: float) -> asyncio.Future[int | None]:
        loop = future.get_loop()
        if loop is not self._loop:  # a new event loop (a new server in this process): start afresh
            self._pending.clear()
            self._timer, self._loop = None, loop
        pending = self._pending
        while pending and pending[0][1].done():
            pending.popleft()
        deadline = loop.time() + seconds
        pending.append((deadline, future))
        if self._timer is None or deadline < self._timer.when():  # the first, or sooner than the timer
            if self._timer is not None:
                self._timer.cancel()
            self._timer = loop.call_at(deadline, self._expire)
        return future

    def _expire(self) -> None:
        assert self._loop is not None
        now, kept = self._loop.time(), deque[tuple[float, asyncio.Future[int | None]]]()
        for deadline, future in self._pending:
            if future.done():
                continue
            if deadline <= now:
                future.set_exception(TimeoutError("the event writer did not answer in time"))
            else:
                kept.append((deadline, future))
        self._pending, self._timer = kept, None
        if kept:
            self._timer = self._loop.call_at(min(deadline for deadline, _ in kept), self._expire)


class EventWriter:
    """Group commit for webhook deliveries: many concurrent inserts, one durable transaction."""

    def __init__(self, events: Events, max_batch: int = 200) -> None:  # one statement a batch
        self.events = events
        self.max_batch = max_batch
        self._queue: asyncio.Queue[tuple[NewEvent, asyncio.Future[int | None]]] = asyncio.Queue()
        self.alive_at = time.time()  # the last batch written (a liveness heartbeat)
        self.checkpointer: Checkpointer | None = None  # SQLite, while run() runs
        self._deadlines = Deadlines()

    @property
    def backlog(self) -> int:
        return self._queue.qsize()

    def enqueue(self, event: NewEvent, timeout: float | None = None) -> asyncio.Future[int | None]:
        """A future of the event id (None for a duplicate), set once the insert is committed; it
        fails when the insert does, or with TimeoutError after ``timeout`` seconds (the insert
        may still land later: harmless, Bitbucket's retry is then a duplicate). Plain call (the
        queue is unbounded): no coroutine per delivery."""
        future: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((event, future))
        return future if timeout is None else self._deadlines.watch(future, timeout)

    async def submit(self, event: NewEvent) -> int | None:
        """Returns the event id (None for a duplicate) once the insert is committed; raises on failure."""
        return await self.enqueue(event)

    async def run(self) -> None:
        db = self.events.db
        if db.dialect != "sqlite":
            await self._commits()
            return
        await db.conn.execute(f"PRAGMA wal_autocheckpoint={SAFETY_PAGES}")
        self.checkpointer = Checkpointer(db.path)
        self.checkpointer.start()
        try:
            await self._commits()
        finally:
            await asyncio.shield(self.checkpointer.stop())
            with contextlib.suppress(Exception):  # the connection may be closing: it checkpoints then
                await db.conn.execute("PRAGMA wal_autocheckpoint=1000")

    async def _commits(self) -> None:
        while True:
            batch = [await self._queue.get()]
            self.alive_at = time.time()
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                ids = await self.events.append_many([e for e, _ in batch])
            except Exception as exc:  # noqa: BLE001 - every waiting request must learn of the failure
                if len(batch) == 1:
                    _settle(batch[0][1], exc)
                else:
                    await self._one_by_one(batch)
                continue
            for (_, fut), eid in zip(batch, ids, strict=True):
                _settle(fut, eid)
            self.alive_at = time.time()

    async def _one_by_one(self, batch: list[tuple[NewEvent, asyncio.Future[int | None]]]) -> None:
        """A batch failed to insert (one bad row fails the whole statement): insert each row alone,
        so only the deliveries that really cannot be stored are refused."""
        failed = 0
        for event, fut in batch:
            try:
                _settle(fut, await self.events.append(event))
            except Exception as exc:  # noqa: BLE001 - this row's request answers 503, the others go on
                failed += 1
                _settle(fut, exc)
        log.warning("events.batch_split", rows=len(batch), failed=failed)


def _settle(fut: asyncio.Future[int | None], outcome: int | BaseException | None) -> None:
    if fut.done():  # the request went away (client disconnected); the row is stored or not all the same
        return
    if isinstance(outcome, BaseException):
        fut.set_exception(outcome)
    else:
        fut.set_result(outcome)


def _gone(owner: str) -> bool:
    """Whether a lock's owner (``host:pid``) is a process of this host that no longer exists."""
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # it exists (another user's process, say)
    return False


class Locks:
    """Named leases in SQLite, so two processes never run the same pass. A lock is free once it
    expires, or at once when its owner (``host:pid``) is a process of this host that is gone: a
    process killed mid-pass (SIGKILL, OOM) never keeps its successor from running passes."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def acquire(self, name: str, owner: str, ttl: float) -> bool:
        now = time.time()
        async with self.db.transaction() as conn:
            async with conn.execute("SELECT owner FROM locks WHERE name = ?", (name,)) as cur:
                row = await cur.fetchone()
            dead = str(row[0]) if row is not None and row[0] != owner and _gone(str(row[0])) else None
            cur = await conn.execute(
                """INSERT INTO locks (name, owner, expires_at) VALUES (?,?,?) ON CONFLICT (name) DO UPDATE SET
                   owner = excluded.owner, expires_at = excluded.expires_at
                   WHERE locks.expires_at < ? OR locks.owner = excluded.owner OR locks.owner = ?""",
                (name, owner, now + ttl, now, dead),
            )
            return int(cur.rowcount) == 1

    async def release(self, name: str, owner: str) -> None:
        await self.db.execute("DELETE FROM locks WHERE name = ? AND owner = ?", (name, owner))

    @contextlib.asynccontextmanager
    async def held(self, name: str, owner: str, ttl: float) -> AsyncIterator[bool]:
        """The lock for as long as the block runs: a short ``ttl``, renewed every third of it, so
        a holder that dies (SIGKILL, on any machine) frees it within ``ttl``."""
        got = await self.acquire(name, owner, ttl)
        renewer = asyncio.create_task(self._renew(name, owner, ttl)) if got else None
        try:
            yield got
        finally:
            if renewer is not None:
                renewer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await renewer
            if got:
                await self.release(name, owner)

    async def _renew(self, name: str, owner: str, ttl: float) -> None:
        while True:
            await asyncio.sleep(ttl / 3)
            try:
                if not await self.acquire(name, owner, ttl):
                    log.error("lock.lost", lock=name, owner=owner)
                    return
            except Exception as exc:  # noqa: BLE001 - the next renewal tries again
                log.warning("lock.renew_failed", lock=name, error=f"{type(exc).__name__}: {exc}")

    async def leader(self, name: str, owner: str, ttl: float) -> bool:
        """Whether ``owner`` holds (or now takes, or renews) the single-instance role ``name``:
        call it every round; another instance takes over within ``ttl`` after the holder stops."""
        return await self.acquire(name, owner, ttl)

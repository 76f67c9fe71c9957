"""Drains the event log: claim (lease) → plan → fetch → evaluate → record → done.

One code path for every trigger. A batch claims every runnable event, plans each
(:mod:`app.planner`), fetches each resource once however many events asked for it
(:mod:`app.fetch`; at most one batch runs at a time, and the events arriving meanwhile form the
next batch: at most one queued and one running fetch per resource) and re-evaluates only the
affected (test, subject) pairs (:mod:`app.evaluate`). Passes (``lp:reconcile``) run beside the
batches, under a lock, with low budget priority: :mod:`app.reconcile` plans them, and the same
fetch and evaluate steps do the rest.

Failure stays where it happened (docs/checks.md "A fetch that fails"):

- a resource that cannot be read (any status, timeout, unreadable body, a ``next`` link to
  another host, a token failure) only turns its own snapshot stale; the rest of the batch is
  fetched, evaluated and written, and the events that needed it are retried with backoff
  (``retry_base`` doubling) until ``dead``;
- a wait longer than ``defer_after`` (a 429's Retry-After, a spent budget) re-queues only the
  events that need that resource, for when it may be read (the try does not count);
- a batch that raises is split and each event tried alone, so only the event whose processing
  raises is retried and ends ``dead`` with its error; a pass that raises is retried the same way;
- on shutdown or a crash the worker gives its leases back; its supervisor
  (:mod:`app.supervise`) restarts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from datetime import timedelta
from typing import Any

from structlog.contextvars import bound_contextvars

from app import errors, tiers
from app.bitbucket.client import BUDGET_WAIT, PATIENCE, PRIORITY, BitbucketClient, Patience
from app.evaluate import Alerts, evaluate_plans
from app.fetch import Outcome, fetch_all
from app.findings import Delta
from app.logs import get_logger
from app.models import iso, utcnow
from app.planner import Plan, coalesce, plan
from app.reconcile import CHUNK, reconcile_workspace
from app.service import Service
from app.settings import Settings
from app.store import Store
from app.store.events import LEASE_SECONDS, EventRow
from app.store.facts import known_repos
from app.supervise import describe

log = get_logger("worker")
# The pass lock (one pass of a workspace and tier at a time, across instances): renewed while the
# pass runs, so a process killed mid-pass frees it within this time on any machine.
PASS_LOCK_SECONDS = 60.0

ClientFor = Callable[[str], Awaitable[BitbucketClient]]


def owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _changes(delta: Delta) -> list[str]:
    out = []
    for c in delta.writes:
        if c.status_changed:
            old = c.previous.result.status if c.previous else "new"
            out.append(f"{c.result.check} {c.result.subject}: {old} → {c.result.status}")
    out += [f"{s.result.check} {s.result.subject}: {s.result.status} → retired" for s in delta.retired]
    out += [f"{s.result.check} {s.result.subject}: stale" for s in delta.stale]
    return out


class Worker:
    def __init__(
        self,
        store: Store,
        settings: Settings,
        clients: ClientFor,
        *,
        batch: int = 500,
        on_delta: Callable[[str, Delta], Awaitable[None]] | None = None,
        coalesce_window: float = 2.0,
        service: Service | None = None,
        on_ops: Callable[[str, str], Awaitable[object]] | None = None,
        alerts: Alerts | None = None,
    ) -> None:
        self.alerts = alerts  # delta -> outbox rows, written with the results in one transaction
        self.on_ops = on_ops  # operational warnings (scope changes) to the alert channels
        self.service = service  # for webhook checks during full passes
        self._pass_slots = asyncio.Semaphore(2)
        self.store = store
        self.settings = settings
        self.clients = clients
        self.batch = batch
        self.owner = owner_id()
        self.on_delta = on_delta
        self._passes: set[asyncio.Task[None]] = set()
        self._tg: asyncio.TaskGroup | None = None
        self.alive_at = time.time()
        # A resource fetched less than this long ago is not fetched again yet: the events asking
        # for it wait and are served together by one fetch (a burst of pushes costs two fetches).
        self.coalesce_window = coalesce_window
        self._fetched_at: dict[str, float] = {}
        self.retry_base = 5.0  # seconds before an event's first retry (doubling each try)
        self.defer_after = 5.0  # a longer wait for Bitbucket (Retry-After, budget) re-queues the event
        self.pass_retry_base = 60.0
        self.pass_chunk = CHUNK  # repositories a full pass fetches, evaluates and records together
        self._claimed: dict[int, EventRow] = {}  # events this worker holds a lease on

    async def run(self) -> None:
        """Forever: process batches; sleep until the log changes (or a second passes)."""
        await self.store.events.requeue_running()
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                heartbeat = tg.create_task(self._renew_leases())
                try:
                    while True:
                        self.alive_at = time.time()
                        watched = await self.store.events.watch()  # before the claim: none missed
                        if await self.step():
                            continue
                        await self.store.events.requeue_expired_leases()
                        await self.store.events.wait_changed(1.0, watched)
                finally:
                    heartbeat.cancel()
                    self._tg = None
        finally:
            await self.release()

    async def _renew_leases(self) -> None:
        """Renew the leases of the events this worker holds, every third of a lease: a live worker
        keeps them however long a pass runs; a dead one loses them within ``LEASE_SECONDS``."""
        while True:
            await asyncio.sleep(LEASE_SECONDS / 3)
            try:
                await self.store.events.renew(sorted(self._claimed))
            except Exception as exc:  # noqa: BLE001 - the next heartbeat tries again
                log.warning("worker.lease_renewal_failed", error=describe(exc))

    async def release(self) -> None:
        """Give back the leases this worker holds (shutdown, crash): the events are queued again
        at once, without counting the interrupted try."""
        held, self._claimed = sorted(self._claimed), {}
        if held:
            with contextlib.suppress(Exception):  # the database may be what failed
                await asyncio.shield(self.store.events.release(held))
            log.info("worker.leases_released", events=len(held))

    async def drain(self) -> None:
        """Process until nothing is runnable (used by the CLI and the tests); passes run inline.
        Events this worker's own loop (``run``) has claimed and is still processing are waited
        for too: when ``drain`` returns, every event queued before it was called has been handled
        (or deferred), whichever of the two claimed it. The leases it holds are renewed meanwhile."""
        heartbeat = asyncio.create_task(self._renew_leases())
        try:
            while True:
                if await self.step():
                    continue
                if not any(r.event_key != "lp:reconcile" for r in self._claimed.values()):
                    return
                await asyncio.sleep(0.01)
        finally:
            heartbeat.cancel()

    async def step(self) -> int:
        rows = await self.store.events.claim(self.batch)
        if not rows:
            return 0
        self._claimed.update((r.id, r) for r in rows)
        count = await self._step(rows)  # when cancelled or crashed, ``run`` gives the leases back
        for r in rows:
            if r.event_key != "lp:reconcile":
                self._claimed.pop(r.id, None)
        return count

    async def _step(self, rows: list[EventRow]) -> int:
        passes = [r for r in rows if r.event_key == "lp:reconcile"]
        others = [r for r in rows if r.event_key != "lp:reconcile"]
        for row in passes:
            if self._tg is not None:
                self._tg.create_task(self._pass(row))
            else:
                await self._pass(row)
        by_conn: dict[str, list[EventRow]] = defaultdict(list)
        for r in others:
            by_conn[r.connection_id].append(r)
        for cid, group in by_conn.items():
            await self._isolated(cid, group)
        return len(rows)

    async def _isolated(self, cid: str, group: list[EventRow]) -> None:
        """A batch that raises is split: each event is tried alone, so only the event whose
        processing raises is retried (and ends ``dead``); the others go on."""
        with event_context(cid, group):
            try:
                await self._batch(cid, group)
                return
            except Exception as exc:  # noqa: BLE001 - one event must never stop the worker
                if len(group) == 1:
                    await self._failed(cid, group, exc)
                    return
                log.warning("worker.batch_split", connection=cid, events=len(group), error=describe(exc))
        for row in group:
            with event_context(cid, [row]):
                try:
                    await self._batch(cid, [row])
                except Exception as exc:  # noqa: BLE001 - see above
                    await self._failed(cid, [row], exc)

    async def _failed(self, cid: str, rows: list[EventRow], exc: BaseException) -> None:
        dead = await self.store.events.fail(rows, describe(exc), backoff_base=self.retry_base)
        log.warning(
            "worker.event_failed",
            connection=cid,
            events=[r.id for r in rows],
            dead=dead,
            error=describe(exc),
        )

    # -- reconcile passes -----------------------------------------------------------------------
    async def _pass(self, row: EventRow) -> None:
        with event_context(row.connection_id, [row]):
            try:
                async with self._pass_slots:  # a few passes at a time; webhook batches go on beside them
                    await self._run_pass(row)
            except Exception as exc:  # noqa: BLE001 - a failing pass never stops the worker or other passes
                await self.store.events.fail([row], describe(exc), backoff_base=self.pass_retry_base)
                log.warning("worker.pass_failed", error=describe(exc))
        self._claimed.pop(row.id, None)  # not when cancelled: ``run`` gives that lease back

    async def _run_pass(self, row: EventRow) -> None:
        # The pass's requests leave the reserved share of the budget to events; given back after
        # (``drain`` runs passes in its own task, then webhook work).
        low = PRIORITY.set(False)
        try:
            await self._run_pass_at_low_priority(row)
        finally:
            PRIORITY.reset(low)

    async def _run_pass_at_low_priority(self, row: EventRow) -> None:
        ws = str(row.payload.get("workspace"))
        tier = str(row.payload.get("tier", "full"))
        lock = f"pass:{row.connection_id}:{ws}:{tier}"
        try:
            async with self.store.locks.held(lock, self.owner, ttl=PASS_LOCK_SECONDS) as got:
                if not got:
                    await self.store.events.finish({row.id: {"skipped": "the same pass is running elsewhere"}})
                    return
                client = await self.clients(row.connection_id)
                calls = client.calls()
                recorder = PassProgress(self.store, row.id)
                waits = BUDGET_WAIT.set(recorder.waiting)
                patience = PATIENCE.set(Patience())  # the pass's reads give up together on a run of 429s
                try:
                    if tier in tiers.TIERS:  # issue 13: the repositories and restrictions tiers (app/tiers.py)
                        delta, written = await tiers.run(tier, client, self.store, self.settings, ws, self.alerts)
                    else:
                        report = await reconcile_workspace(
                            client,
                            self.store,
                            self.settings,
                            ws,
                            alerts=self.alerts,
                            tier=tier,
                            chunk=self.pass_chunk,
                            progress=recorder.step,
                        )
                        delta, written = report.delta, report.rows_written
                finally:
                    PATIENCE.reset(patience)
                    BUDGET_WAIT.reset(waits)
                hooks = await self._check_hooks(row.connection_id) if tier == "full" else None
                caused = {"api_calls": client.calls() - calls, "rows_written": written, "changes": _changes(delta)}
                if hooks:
                    caused["webhooks"] = hooks
                scopes = await self._check_scopes(row.connection_id, client.granted_scopes)
                if scopes:
                    caused["scopes"] = scopes
                await self.store.events.finish({row.id: caused})
                if self.on_delta:
                    await self.on_delta(ws, delta)
        except (errors.BitbucketError, errors.TokenError) as exc:
            await self.store.events.fail([row], describe(exc), backoff_base=self.pass_retry_base)
            log.warning("worker.pass_failed", workspace=ws, tier=tier, error=type(exc).__name__)

    async def _check_scopes(self, conn_id: str, granted: frozenset[str] | None) -> dict[str, Any] | None:
        """When Bitbucket reports other scopes than recorded (a consumer edited, a token replaced),
        record them and raise an ops alert naming the tests each missing scope leaves unknown."""
        if granted is None:
            return None
        conn = await self.store.connections.get(conn_id)
        if conn is None or (conn.scopes is not None and set(conn.scopes) == set(granted)):
            return None
        await self.store.connections.set_scopes(conn_id, tuple(granted))
        if conn.scopes is None:
            return {"recorded": sorted(granted)}
        from app.checks import scope_report

        lost = sorted(set(conn.scopes) - granted)
        gained = sorted(granted - set(conn.scopes))
        unknown = sorted(
            {
                str(t)
                for r in scope_report(granted, self.settings.enabled_checks)
                for t in _strings(r["tests_left_unknown"])
            }
        )
        message = (
            f"Scopes of {conn_id} changed: lost {', '.join(lost) or 'none'}, gained {', '.join(gained) or 'none'}. "
            f"Tests now unknown for want of a scope: {', '.join(unknown) or 'none'}."
        )
        log.warning("connection.scopes_changed", connection=conn_id, lost=lost, gained=gained)
        if self.on_ops is not None:
            await self.on_ops(f"Scopes of {conn_id} changed", message)
        return {"lost": lost, "gained": gained, "tests_left_unknown": unknown}

    async def _check_hooks(self, conn_id: str) -> dict[str, Any] | None:
        """Every full pass checks the connection's webhooks (when it has registered any) and
        repairs them; a silent hook is logged as a health warning."""
        if self.service is None:
            return None
        from app.webhook_registration import ensure_hooks, health  # local import: hooks imports this module's siblings

        conn = await self.store.connections.get(conn_id)
        if conn is None or not conn.hooks or self.service.crypto is None:
            return None
        try:
            state = await ensure_hooks(self.service, conn)
        except (errors.BitbucketError, errors.TokenError) as exc:
            log.warning("webhook.check_failed", connection=conn_id, error=f"{type(exc).__name__}: {exc}")
            return {"error": type(exc).__name__}
        fresh = await self.store.connections.get(conn_id)
        status = await health(self.service, fresh) if fresh else {"status": "missing"}
        if status["status"] != "ok":
            log.warning("webhook.unhealthy", connection=conn_id, status=status["status"], message=status.get("message"))
        return {"actions": [e["action"] for e in state], "health": status["status"]}

    # -- event batches ---------------------------------------------------------------------------
    async def _batch(self, cid: str, rows: list[EventRow]) -> None:
        enabled = frozenset(self.settings.enabled_checks)
        workspaces = {str(r.payload.get("workspace") or r.workspace or "") for r in rows}
        # plan: each event -> the resources to read again and the (test, subject) pairs to re-run
        asked: dict[str, set[str]] = defaultdict(set)  # the repositories the events name, by workspace
        for r in rows:
            if r.payload.get("repository_uuid"):
                asked[str(r.payload.get("workspace") or r.workspace or "")].add(str(r.payload["repository_uuid"]))
        known = {ws: await known_repos(self.store, ws, asked[ws]) for ws in workspaces if ws}
        plans: dict[int, Plan] = {}
        for r in rows:
            ws = str(r.payload.get("workspace") or r.workspace or "")
            plans[r.id] = plan(r.event_key, r.payload, known.get(ws, {}), enabled)
        # Coalescing window: events whose resources were fetched very recently wait for the window.
        clock = time.monotonic()
        wait_until: dict[int, float] = {}
        for r in rows:
            for f in plans[r.id].fetches:
                last = self._fetched_at.get(f.key)
                if last is not None and clock - last < self.coalesce_window:
                    wait_until[r.id] = max(wait_until.get(r.id, 0.0), last + self.coalesce_window - clock)
        if wait_until:
            later = max(wait_until.values())
            await self.store.events.defer(sorted(wait_until), time.time() + later)
            rows = [r for r in rows if r.id not in wait_until]
            if not rows:
                return
        # fetch: each resource once however many events asked for it
        fetches, _ = coalesce([plans[r.id] for r in rows])
        if len(self._fetched_at) > 10_000:
            self._fetched_at = {k: v for k, v in self._fetched_at.items() if clock - v < self.coalesce_window}
        for f in fetches:
            self._fetched_at[f.key] = clock
        now = utcnow()
        calls = 0
        outcome = Outcome()
        if fetches:
            client = await self.clients(cid)
            before = client.calls()
            outcome = await fetch_all(
                client,
                self.store,
                fetches,
                enabled=enabled,
                now=iso(now),
                concurrency=self.settings.concurrency,
                defer_after=self.defer_after,
            )
            for key in (*outcome.failed, *outcome.deferred):
                self._fetched_at.pop(key, None)  # the retry reads it again at once
            calls = client.calls() - before
        failed, deferred, tainted, waiting = outcome.failed, outcome.deferred, outcome.tainted, outcome.waiting
        # Repositories that arrived or left.
        for ws in workspaces:
            adds = {u for r in rows for u in plans[r.id].repos if str(r.payload.get("workspace")) == ws}
            gone = {u for r in rows for u in plans[r.id].retire if str(r.payload.get("workspace")) == ws}
            await self.store.snapshots.update_repo_list(ws, adds, gone, iso(now))
        # evaluate and record (results, history and outbox in one transaction), then notify
        changes: dict[str, list[str]] = {}
        for ws in workspaces:
            if not ws:
                continue
            ws_plans = [plans[r.id] for r in rows if str(r.payload.get("workspace") or r.workspace or "") == ws]
            deltas = await evaluate_plans(
                self.store,
                self.settings,
                ws,
                ws_plans,
                f"event:{rows[0].source}",
                tainted.get(ws, set()),
                skip=waiting.get(ws, set()),
                alerts=self.alerts,
            )
            await self._notify(ws, deltas)
            changes[ws] = [line for d in deltas for line in _changes(d)]
        # done: each event records what it caused; one that lacks a resource is retried or deferred
        done: dict[int, dict[str, Any]] = {}
        retry: list[EventRow] = []
        deferred_rows: dict[int, float] = {}
        for r in rows:
            p = plans[r.id]
            ws = str(r.payload.get("workspace") or r.workspace or "")
            mine = {f.key for f in p.fetches}
            if mine & set(failed):
                retry.append(r)  # its other results are written; it comes back for what failed
                continue
            if mine & set(deferred):
                deferred_rows[r.id] = max(deferred[k] for k in mine & set(deferred))
                continue
            done[r.id] = {
                "fetches": [f.key for f in fetches if f.key in mine],
                "batch_api_calls": calls,
                "batch_events": len(rows),
                "changes": [c for c in changes.get(ws, []) if _concerns(p)],
            }
        ignored = [r.id for r in rows if plans[r.id].ignored]
        await self.store.events.finish({k: v for k, v in done.items() if k not in ignored})
        if ignored:
            await self.store.events.finish({k: {"ignored": True} for k in ignored})
        for eid, seconds in deferred_rows.items():  # a wait is not a failed try
            await self.store.events.defer([eid], time.time() + seconds)
        for r in retry:
            why = "; ".join(f"{k}: {failed[k]}" for f in plans[r.id].fetches if (k := f.key) in failed)
            await self._failed(cid, [r], errors.ResourcesUnreadable(why))
        received = max((r.received_at for r in rows if r.source == "webhook"), default=None)
        if received:
            await self.store.connections.touch_delivery(cid, received)

    async def _notify(self, ws: str, deltas: list[Delta]) -> None:
        if self.on_delta:
            for d in deltas:
                await self.on_delta(ws, d)


class PassProgress:
    """A running pass's progress, written to its event as it advances (each chunk of
    repositories, each wait for API budget: until when and why), for the operator's panel, the
    Overview and ``/readyz``."""

    def __init__(self, store: Store, event_id: int) -> None:
        self.store = store
        self.event_id = event_id
        self.state: dict[str, object] = {}

    async def step(self, progress: dict[str, object]) -> None:
        self.state.update(progress)
        await self._write()

    async def waiting(self, seconds: float, why: str) -> None:
        """Told by the API client before and after a wait for budget (``seconds`` 0: over)."""
        if seconds > 0:
            until = iso(utcnow() + timedelta(seconds=seconds))
            self.state.update(waiting_until=until, why=why)
        elif "waiting_until" in self.state:
            self.state.pop("waiting_until", None)
            self.state.pop("why", None)
        else:
            return
        await self._write()

    async def _write(self) -> None:
        try:
            await self.store.events.progress(self.event_id, dict(self.state))
        except Exception as exc:  # noqa: BLE001 - progress is for show: a failed write never stops the pass
            log.warning("worker.progress_not_recorded", error=describe(exc))


def event_context(cid: str, rows: list[EventRow]) -> AbstractContextManager[None]:
    """Bind the event id(s), connection and workspace to every log line written while these events
    are processed (structlog contextvars), so one event's lines can be found by its id: a batch of
    one binds ``event_id``; every batch binds ``event_ids``."""
    ids = [r.id for r in rows]
    workspaces = sorted({str(r.payload.get("workspace") or r.workspace or "") for r in rows} - {""})
    bound: dict[str, Any] = {"connection": cid, "event_ids": ids}
    if len(ids) == 1:
        bound["event_id"] = ids[0]
    if len(workspaces) == 1:
        bound["workspace"] = workspaces[0]
    elif workspaces:
        bound["workspaces"] = workspaces
    return bound_contextvars(**bound)


def _strings(value: object) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


def _concerns(p: Plan) -> bool:
    """Whether a batch's result changes concern this event (it asked for some re-evaluation)."""
    return p.workspace_checks or p.members or bool(p.repos or p.retire)

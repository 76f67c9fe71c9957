"""Drains the event log: claim (lease) → plan → coalesced fetches → snapshots → re-evaluate → done.

One code path for every trigger. A batch claims every runnable event, plans each, fetches each
resource once however many events asked for it (at most one batch runs at a time, and the events
arriving meanwhile form the next batch: at most one queued and one running fetch per resource),
stores the snapshots and re-evaluates only the affected (test, subject) pairs. Reconcile passes
(``lp:reconcile``) run beside the batches, under a lock, with low budget priority.

Failure stays where it happened (checks.md "A fetch that fails"):

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
from datetime import datetime
from typing import Any

from app import errors, tiers
from app.bitbucket.client import DEFER_AFTER, PRIORITY, BitbucketClient
from app.findings import Delta
from app.logs import get_logger
from app.planner import MEMBER_CHECKS, REPO_CHECKS, Fetch, KnownRepo, Plan, coalesce, plan
from app.reconcile import (
    Alerts,
    Fetcher,
    fetch_members,
    fetch_repository,
    fetch_restrictions,
    iso,
    k_build,
    k_emails,
    k_model,
    k_pipelines,
    k_prs,
    k_repo,
    k_repos,
    k_restrictions,
    reconcile_workspace,
    record,
    utcnow,
)
from app.settings import Settings
from app.store import Store
from app.store.events import EventRow
from app.supervise import describe

log = get_logger("worker")

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
        service: Any = None,
        on_ops: Callable[[str, str], Awaitable[Any]] | None = None,
        alerts: Alerts | None = None,
    ) -> None:
        self.alerts = alerts  # delta -> outbox rows, written with the results in one transaction
        self.on_ops = on_ops  # operational warnings (scope changes) to the alert channels
        self.service = service  # app.service.Service, for webhook checks during full passes
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
        self._claimed: dict[int, EventRow] = {}  # events this worker holds a lease on

    async def run(self) -> None:
        """Forever: process batches; sleep until the log changes (or a second passes)."""
        await self.store.events.requeue_running()
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                try:
                    while True:
                        self.alive_at = time.time()
                        if await self.step():
                            continue
                        await self.store.events.requeue_expired_leases()
                        await self.store.events.wait_changed(1.0)
                finally:
                    self._tg = None
        finally:
            await self.release()

    async def release(self) -> None:
        """Give back the leases this worker holds (shutdown, crash): the events are queued again
        at once, without counting the interrupted try."""
        held, self._claimed = sorted(self._claimed), {}
        if held:
            with contextlib.suppress(Exception):  # the database may be what failed
                await asyncio.shield(self.store.events.release(held))
            log.info("worker.leases_released", events=len(held))

    async def drain(self) -> None:
        """Process until nothing is runnable (used by the CLI and the tests); passes run inline."""
        while await self.step():
            pass

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
        try:
            await self._batch(cid, group)
            return
        except Exception as exc:  # noqa: BLE001 - one event must never stop the worker
            if len(group) == 1:
                await self._failed(cid, group, exc)
                return
            log.warning("worker.batch_split", connection=cid, events=len(group), error=describe(exc))
        for row in group:
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
        try:
            async with self._pass_slots:  # a few passes at a time; webhook batches go on beside them
                await self._run_pass(row)
        except Exception as exc:  # noqa: BLE001 - a failing pass never stops the worker or other passes
            await self.store.events.fail([row], describe(exc), backoff_base=self.pass_retry_base)
            log.warning(
                "worker.pass_failed", event_id=row.id, workspace=row.payload.get("workspace"), error=describe(exc)
            )
        self._claimed.pop(row.id, None)  # not when cancelled: ``run`` gives that lease back

    async def _run_pass(self, row: EventRow) -> None:
        PRIORITY.set(False)  # this task's requests leave the reserved share of the budget to events
        ws = str(row.payload.get("workspace"))
        tier = str(row.payload.get("tier", "full"))
        lock = f"pass:{row.connection_id}:{ws}:{tier}"
        try:
            async with self.store.locks.held(lock, self.owner, ttl=3600) as got:
                if not got:
                    await self.store.events.finish({row.id: {"skipped": "the same pass is running elsewhere"}})
                    return
                client = await self.clients(row.connection_id)
                calls = client.calls()
                if tier == "members":
                    fetcher = Fetcher(client, self.store, iso(utcnow()))
                    await fetch_members(fetcher, ws, await self.store.records.people())
                    await self.store.snapshots.put_many(fetcher.rows, fetcher.now)
                    delta, written = await record(
                        self.store,
                        self.settings,
                        ws,
                        utcnow(),
                        "reconcile:members",
                        only_checks=MEMBER_CHECKS,
                        alerts=self.alerts,
                    )
                elif tier in tiers.TIERS:  # issue 13: the repositories and restrictions tiers (app/tiers.py)
                    delta, written = await tiers.run(tier, client, self.store, self.settings, ws, self.alerts)
                else:
                    report = await reconcile_workspace(client, self.store, self.settings, ws, alerts=self.alerts)
                    delta, written = report.delta, report.rows_written
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
        from app.hooks import ensure_hooks, health  # local import: hooks imports this module's siblings

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
    async def _known(self, ws: str) -> dict[str, KnownRepo]:
        snaps = await self.store.snapshots.load(ws, kinds=("repos", "repo", "branching_model"))
        listed = snaps.get(k_repos(ws))
        out: dict[str, KnownRepo] = {}
        for uuid in listed.content if listed and listed.content else []:
            snap = snaps.get(k_repo(uuid))
            if snap is None or snap.content is None:
                continue
            main = snap.content.get("mainbranch")
            branches: set[str] = set()
            model = snaps.get(k_model(uuid))
            if model is not None and isinstance(model.content, dict):
                for part in ("development_name", "production_name"):
                    if model.content.get(part):
                        branches.add(model.content[part])
            out[uuid] = KnownRepo(uuid=uuid, mainbranch=main, model_branches=frozenset(branches))
        return out

    async def _batch(self, cid: str, rows: list[EventRow]) -> None:
        enabled = frozenset(self.settings.enabled_checks)
        workspaces = {str(r.payload.get("workspace") or r.workspace or "") for r in rows}
        known = {ws: await self._known(ws) for ws in workspaces if ws}
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
        fetches, _ = coalesce([plans[r.id] for r in rows])
        if len(self._fetched_at) > 10_000:
            self._fetched_at = {k: v for k, v in self._fetched_at.items() if clock - v < self.coalesce_window}
        for f in fetches:
            self._fetched_at[f.key] = clock
        now = utcnow()
        calls = 0
        failed: dict[str, str] = {}  # fetch key -> why it could not be read
        tainted: dict[str, set[str]] = defaultdict(set)  # workspace -> repositories whose metadata failed
        deferred: dict[str, float] = {}  # fetch key -> seconds Bitbucket (or the budget) asks us to wait
        waiting: dict[str, set[str]] = defaultdict(set)  # workspace -> repositories with a deferred fetch
        if fetches:
            client = await self.clients(cid)
            before = client.calls()
            rows_read: list[tuple[str, str, str, Any]] = []
            sem = asyncio.Semaphore(self.settings.concurrency)

            async def one(f: Fetch) -> None:
                # Each fetch has its own Fetcher: a failure is attributed to this fetch alone.
                DEFER_AFTER.set(self.defer_after)  # this task only: a long wait re-queues, never blocks
                fetcher = Fetcher(client, self.store, iso(now))
                async with sem:
                    try:
                        await self._fetch(fetcher, f, enabled)
                    except errors.Deferred as exc:
                        deferred[f.key] = exc.retry_after or self.defer_after
                        if f.repo_uuid:
                            waiting[f.workspace].add(f.repo_uuid)
                        self._fetched_at.pop(f.key, None)
                        log.info("fetch.deferred", key=f.key, seconds=round(deferred[f.key], 1))
                        return  # what it read so far is read again with the rest
                    except Exception as exc:  # noqa: BLE001 - one resource never fails the others
                        key, kind = _snapshot_of(f)
                        await fetcher.failed(key, f.workspace, kind, exc)
                        if f.repo_uuid and f.kind in ("repo", "repo_full"):
                            tainted[f.workspace].add(f.repo_uuid)
                rows_read.extend(fetcher.rows)
                if fetcher.errors:
                    failed[f.key] = next(iter(fetcher.errors.values()))
                    self._fetched_at.pop(f.key, None)  # the retry reads it again at once

            async with asyncio.TaskGroup() as tg:
                for f in fetches:
                    tg.create_task(one(f))
            await self.store.snapshots.put_many(rows_read, iso(now))
            calls = client.calls() - before
        # Repositories that arrived or left.
        for ws in workspaces:
            adds = {u for r in rows for u in plans[r.id].repos if str(r.payload.get("workspace")) == ws}
            gone = {u for r in rows for u in plans[r.id].retire if str(r.payload.get("workspace")) == ws}
            await self._update_repo_list(ws, adds, gone, iso(now))
        changes: dict[str, list[str]] = {}
        for ws in workspaces:
            if not ws:
                continue
            ws_plans = [plans[r.id] for r in rows if str(r.payload.get("workspace") or r.workspace or "") == ws]
            deltas = await self._evaluate(
                ws, ws_plans, rows[0].source, tainted.get(ws, set()), skip=waiting.get(ws, set())
            )
            changes[ws] = [line for d in deltas for line in _changes(d)]
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
            await self._failed(cid, [r], ResourcesUnreadable(why))
        received = max((r.received_at for r in rows if r.source == "webhook"), default=None)
        if received:
            await self.store.connections.touch_delivery(cid, received)

    async def _update_repo_list(self, ws: str, adds: set[str], gone: set[str], now: str) -> None:
        if not adds and not gone:
            return
        snap = await self.store.snapshots.get(k_repos(ws))
        current = list(snap.content) if snap and snap.content else []
        have_meta = {u for u in adds if await self.store.snapshots.get(k_repo(u)) is not None}
        new = [u for u in current if u not in gone] + [u for u in sorted(have_meta) if u not in current]
        if new != current:
            await self.store.snapshots.put_many([(k_repos(ws), ws, "repos", new)], now)
        if gone:
            keys = [k(u) for u in gone for k in (k_repo, k_restrictions, k_model, k_pipelines, k_build)]
            await self.store.snapshots.delete(keys + [k_prs(u) for u in gone])

    async def _evaluate(
        self,
        ws: str,
        plans: list[Plan],
        source: str,
        tainted: set[str] | None = None,
        skip: set[str] | None = None,
    ) -> list[Delta]:
        """Re-run the affected tests. Repositories in ``tainted`` could not be read: their
        results are not re-evaluated but kept and marked stale (checks.md "A fetch that fails").
        Repositories in ``skip`` wait for a deferred read: they are evaluated when it is done."""
        now = utcnow()
        cause = f"event:{source}"
        deltas: list[Delta] = []
        if tainted:
            await self._mark_stale(ws, tainted, now)
        if any(p.workspace_checks for p in plans):
            checks = frozenset().union(*(p.checks for p in plans if p.workspace_checks))
            all_checks = any(not p.checks for p in plans if p.workspace_checks)
            delta, _ = await record(
                self.store,
                self.settings,
                ws,
                now,
                cause,
                only_checks=None if all_checks else checks,
                alerts=self.alerts,
            )
            deltas.append(delta)
            if all_checks:
                return await self._notify(ws, deltas)
        repos = {u for p in plans for u in (*p.repos, *p.retire)} - (tainted or set()) - (skip or set())
        if repos:
            checks = frozenset().union(*(p.checks for p in plans if p.repos or p.retire))
            all_repo = any(not p.checks for p in plans if p.repos or p.retire)
            delta, _ = await record(
                self.store,
                self.settings,
                ws,
                now,
                cause,
                subjects=repos,
                only_checks=REPO_CHECKS if all_repo else checks,
                alerts=self.alerts,
            )
            deltas.append(delta)
        if any(p.members for p in plans):
            checks = frozenset().union(*(p.checks for p in plans if p.members)) & MEMBER_CHECKS
            delta, _ = await record(
                self.store, self.settings, ws, now, cause, only_checks=checks or MEMBER_CHECKS, alerts=self.alerts
            )
            deltas.append(delta)
        return await self._notify(ws, deltas)

    async def _mark_stale(self, ws: str, subjects: set[str], now: datetime) -> None:
        stored = await self.store.results.load(ws)
        stale = [s for (_, subject), s in stored.items() if subject in subjects and s.stale_since is None]
        if stale:
            await self.store.results.apply(Delta(stale=stale), iso(now), "fetch_failed")

    async def _notify(self, ws: str, deltas: list[Delta]) -> list[Delta]:
        if self.on_delta:
            for d in deltas:
                await self.on_delta(ws, d)
        return deltas

    async def _fetch(self, fetcher: Fetcher, f: Fetch, enabled: frozenset[str]) -> None:
        client, ws, uuid = fetcher.client, f.workspace, f.repo_uuid or ""
        if f.kind == "repo_full":
            try:
                repo = await client.repository(ws, uuid)
            except errors.NotFoundError:
                return  # gone again before we read it
            await fetch_repository(fetcher, ws, repo, sorted(enabled))
        elif f.kind == "repo":
            try:
                repo = await client.repository(ws, uuid)
            except errors.NotFoundError:
                return
            fetcher.rows.append((k_repo(uuid), ws, "repo", repo.model_dump(mode="json")))
        elif f.kind == "restrictions":
            await fetch_restrictions(fetcher, ws, uuid, uuid)
        elif f.kind == "branching_model":
            await fetcher.get(k_model(uuid), ws, "branching_model", lambda: _dumped(client.branching_model(ws, uuid)))
        elif f.kind == "last_build":
            branch = f.branch or ""
            await fetcher.get(
                k_build(uuid), ws, "last_build", lambda: _dumped(client.latest_pipeline(ws, uuid, branch))
            )
        elif f.kind == "pr_count":
            await fetcher.get(k_prs(uuid), ws, "pr_count", lambda: client.open_pullrequest_count(ws, uuid))
        elif f.kind == "repos":
            for repo in await client.repositories(ws):
                fetcher.rows.append((k_repo(repo.uuid), ws, "repo", repo.model_dump(mode="json")))
        elif f.kind == "emails":
            await fetch_members(fetcher, ws, await self.store.records.people())
        else:  # pragma: no cover - the planner emits only the kinds above
            raise ValueError(f"unknown fetch kind {f.kind}")


async def _dumped(aw: Awaitable[Any]) -> Any:
    value = await aw
    return value.model_dump(mode="json") if hasattr(value, "model_dump") else value


def _snapshot_of(f: Fetch) -> tuple[str, str]:
    """The snapshot (key, kind) a fetch writes, which turns stale when the fetch fails."""
    uuid = f.repo_uuid or ""
    by_kind = {
        "repo": (k_repo(uuid), "repo"),
        "repo_full": (k_repo(uuid), "repo"),
        "restrictions": (k_restrictions(uuid), "restrictions"),
        "branching_model": (k_model(uuid), "branching_model"),
        "last_build": (k_build(uuid), "last_build"),
        "pr_count": (k_prs(uuid), "pr_count"),
        "emails": (k_emails(f.workspace), "email_links"),
    }
    return by_kind.get(f.kind, (k_repos(f.workspace), "repos"))


class ResourcesUnreadable(Exception):
    """Some resources an event needs could not be read (the rest of its batch was written)."""


def _strings(value: object) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


def _concerns(p: Plan) -> bool:
    """Whether a batch's result changes concern this event (it asked for some re-evaluation)."""
    return p.workspace_checks or p.members or bool(p.repos or p.retire)

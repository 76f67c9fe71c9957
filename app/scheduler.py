"""Appends pass events for each tier within the API budget, sweeps expiries, purges old events.

A scheduled pass is only an event (``lp:reconcile`` with its tier): the worker plans, fetches and
evaluates it like any other. An expired exception or evidence becomes an ``lp:expiry`` event.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime

from app.logs import get_logger
from app.models import iso
from app.service import Service
from app.settings import Settings
from app.store import Store
from app.tiers import schedule as scheduled_tiers  # issue 13

log = get_logger("scheduler")

MEMBERS_EVERY = 15 * 60.0
EXPIRY_EVERY = 60.0
RETENTION_EVERY = 6 * 3600.0


class Scheduler:
    """Appends ``lp:reconcile`` events within the budget: members and permissions every 15 minutes
    (a few calls), the full repository pass every ``LP_RECONCILE_INTERVAL`` with ±10 % jitter;
    sweeps expiries of evidence and exceptions; purges old events. Passes run at low budget
    priority, so a share of the hourly budget always stays free for webhook-driven fetches."""

    def __init__(self, service: Service, *, rng: random.Random | None = None, clock: Callable[[], float] = time.time):
        self.service = service
        self.store: Store = service.store
        self.settings: Settings = service.settings
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not security
        self.clock = clock
        self.alive_at = time.time()  # the start of the last round (a liveness heartbeat)

    async def _due(self, name: str, period: float, jitter: float = 0.0) -> bool:
        due_at = await self.store.meta.get(f"next:{name}")
        now = self.clock()
        if due_at is not None and float(due_at) > now:
            return False
        spread = period * jitter
        nxt = now + period + (self.rng.uniform(-spread, spread) if spread else 0.0)
        await self.store.meta.set(f"next:{name}", repr(nxt))
        return True

    async def tick(self) -> list[int]:
        """One scheduling round; returns the ids of the events it appended."""
        appended: list[int] = []
        for conn in await self.service.usable_connections():
            for ws in conn.workspaces:
                tiers = [
                    *scheduled_tiers(self.settings),  # issue 13: repositories and restrictions tiers (app/tiers.py)
                    ("members", MEMBERS_EVERY, 0.0),
                    ("full", self.settings.reconcile_interval, 0.1),
                ]
                for tier, period, jitter in reversed(tiers):  # a due full pass covers the members
                    if await self._due(f"{tier}:{conn.id}:{ws}", period, jitter):
                        if tier == "members" and appended and await self._full_pending(conn.id, ws):
                            continue
                        appended += await self.service.internal_event(
                            "lp:reconcile", {"workspace": ws, "tier": tier}, conn.id
                        )
        if await self._due("expiry", EXPIRY_EVERY):
            appended += await self._sweep_expiries()
        if await self._due("retention", RETENTION_EVERY):
            await self.store.events.purge(self.settings.event_retention_days)
        return appended

    async def _full_pending(self, conn_id: str, ws: str) -> bool:
        rows = await self.store.events.list(event_key="lp:reconcile", workspace=ws, connection=conn_id, limit=5)
        return any(r.payload.get("tier") == "full" and r.state in ("queued", "running") for r in rows)

    async def _sweep_expiries(self) -> list[int]:
        now = datetime.fromtimestamp(self.clock(), UTC)
        since = await self.store.meta.get("last_expiry_sweep") or iso(now)
        await self.store.meta.set("last_expiry_sweep", now.isoformat())
        expired: set[tuple[str, str]] = set()
        for e in await self.store.records.evidence():
            if since < e.expires_at.isoformat() <= now.isoformat():
                expired.add((e.workspace, e.check))
        for x in await self.store.records.exceptions():
            if since < x.expires_at.isoformat() <= now.isoformat():
                expired.add(("", x.check))
        ids: list[int] = []
        for ws, check in sorted(expired):
            payload: dict[str, object] = {"check": check}
            if ws:
                payload["workspace"] = ws
            ids += await self.service.internal_event("lp:expiry", payload)
        return ids

    async def _leads(self, owner: str, every: float) -> bool:
        """PostgreSQL (several instances): whether this one holds the lease. SQLite has one
        process: no lease (and no write when idle)."""
        store = self.service.store
        return store.db.dialect != "postgresql" or bool(await store.locks.leader("scheduler", owner, ttl=3 * every))

    async def run(self, every: float = 30.0) -> None:
        """A round every ``every`` seconds, by one instance only: on PostgreSQL the one holding the
        ``scheduler`` lease (renewed each round; another takes over within three rounds of its end)."""
        owner = f"{socket.gethostname()}:{os.getpid()}"
        while True:
            self.alive_at = time.time()
            try:
                if await self._leads(owner, every):
                    await self.tick()
            except Exception as exc:  # noqa: BLE001 - the scheduler must outlive one bad round
                log.error("scheduler.tick_failed", error=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(every)

"""The alert dispatcher: outbox in, grouped messages out, with retries and a digest.

Grouping follows Alertmanager: alerts of one group (channel, workspace) wait ``group_wait``
(30 s) after the first so a burst goes out as one message; later alerts of the group go out at
most every ``group_interval`` (5 minutes). Each (transition, channel) has an idempotency key, so a
restart never sends a duplicate. Failures back off and end ``dead``; a channel that keeps failing
raises an ops warning on the other channels. A digest of still-open failures goes out daily.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

from app.checks import REGISTRY
from app.findings import Delta
from app.logs import get_logger
from app.models import FAILING
from app.notify.rules import alerts_for
from app.notify.senders import DeliveryError, Sender
from app.store import Store
from app.store.outbox import Entry, Outbox

log = get_logger("notify.dispatcher")


class Dispatcher:
    def __init__(
        self,
        store: Store,
        senders: list[Sender],
        *,
        web_url: str = "https://bitbucket.org",
        group_wait: float = 30.0,
        group_interval: float = 300.0,
        digest_every: float = 86400.0,
        clock: Callable[[], float] = time.time,
        metrics: Any = None,
        lease_seconds: float = 30.0,
        owner: str | None = None,
    ) -> None:
        self.store = store
        self.outbox = Outbox(store.db)
        self.senders = {s.name: s for s in senders}
        self.web_url = web_url
        self.group_wait = group_wait
        self.group_interval = group_interval
        self.digest_every = digest_every
        self.clock = clock
        self.metrics = metrics
        self.lease_seconds = lease_seconds  # the ``dispatcher`` leader lease (PostgreSQL), renewed while it works
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}"  # who holds the lease (``host:pid``)
        self._failures: Counter[str] = Counter()

    async def on_delta(self, workspace: str, delta: Delta) -> None:
        await self.enqueue(alerts_for(delta, self.web_url))

    def rows_for(self, delta: Delta) -> list[Entry]:
        """The outbox rows a delta causes, for the caller to write with the results themselves."""
        return self.rows(alerts_for(delta, self.web_url))

    async def enqueue(self, alerts: list[dict[str, Any]], channels: list[str] | None = None) -> int:
        return await self.outbox.add(self.rows(alerts, channels), self.clock())

    def rows(self, alerts: list[dict[str, Any]], channels: list[str] | None = None) -> list[Entry]:
        rows: list[Entry] = []
        for a in alerts:
            # One key per transition: what changed, from which earlier state (its last_changed).
            key = (
                f"{a['kind']}:{a.get('workspace')}:{a.get('check')}:{a.get('subject_key')}:"
                f"{a.get('old_status')}@{a.get('since', '')}->{a.get('new_status')}:{a.get('stamp', '')}"
            )
            # One group per workspace for changes (a burst touching several tests is one message).
            group = f"{a.get('workspace')}:{'changes' if a['kind'] in ('opened', 'resolved') else a['kind']}"
            for channel in channels or list(self.senders):
                rows.append((channel, f"{channel}:{group}", f"{channel}:{key}", a["kind"], a))
        return rows

    async def ops(self, title: str, message: str, workspace: str = "ops", exclude: str | None = None) -> int:
        """An operational warning (broken connection, failing channel, scope change)."""
        alert = {
            "kind": "ops",
            "workspace": workspace,
            "check": "ops",
            "title": title,
            "severity": "ops",
            "subject": workspace,
            "subject_key": title,
            "new_status": "ops",
            "message": message,
            "fix": "",
            "stamp": int(self.clock() // 3600),
        }
        channels = [c for c in self.senders if c != exclude]
        return await self.enqueue([alert], channels)

    async def tick(self, leading: Callable[[], bool] = lambda: True) -> int:
        """Send every group that is due; returns the number of messages sent. ``leading`` is asked
        before each send: once it says False (the leader lease was lost) nothing more is sent."""
        now = self.clock()
        sent = 0
        for group, oldest, last in await self.outbox.due_groups(now):
            if not leading():
                break
            if oldest + self.group_wait > now:
                continue
            if last is not None and last + self.group_interval > now:
                continue
            rows = await self.outbox.pending(group, now)
            if not rows:
                continue
            channel = rows[0].channel
            sender = self.senders.get(channel)
            if sender is None:
                continue
            try:
                await sender.send([r.payload for r in rows])
            except DeliveryError as exc:
                dead = await self.outbox.failed(rows, str(exc), now)
                self._failures[channel] += 1
                if self.metrics:
                    self.metrics.alerts.labels(channel, "failed").inc()
                log.warning("alert.delivery_failed", channel=channel, group=group, error=str(exc), dead=dead)
                if dead or self._failures[channel] == 3:
                    await self.ops(
                        f"Alert channel {channel} keeps failing",
                        f"{channel} failed {self._failures[channel]} times: {exc}",
                        exclude=channel,
                    )
                continue
            self._failures[channel] = 0
            await self.outbox.sent([r.id for r in rows], group, now)
            if self.metrics:
                self.metrics.alerts.labels(channel, "sent").inc(len(rows))
            sent += 1
        return sent

    async def digest(self) -> int:
        """Still-open failures, per workspace and test (once per ``digest_every``)."""
        rows = await self.store.results.query()
        failing = [r for r in rows if r.result.status in FAILING]
        if not failing:
            return 0
        stamp = datetime.fromtimestamp(self.clock(), UTC).strftime("%Y-%m-%d")
        by_ws: dict[str, Counter[str]] = {}
        for r in failing:
            by_ws.setdefault(r.result.workspace, Counter())[r.result.check] += 1
        alerts = []
        for ws, counts in sorted(by_ws.items()):
            lines = [f"{REGISTRY[c].title if c in REGISTRY else c}: {n}" for c, n in counts.most_common()]
            alerts.append(
                {
                    "kind": "digest",
                    "workspace": ws,
                    "check": "digest",
                    "title": "Daily digest",
                    "severity": "digest",
                    "subject": ws,
                    "subject_key": ws,
                    "new_status": "fail",
                    "stamp": stamp,
                    "fix": "",
                    "url": f"{self.web_url}/{ws}",
                    "message": f"{sum(counts.values())} results still failing:\n" + "\n".join(lines),
                }
            )
        return await self.enqueue(alerts)

    async def run(self, every: float = 1.0) -> None:
        """Deliver every ``every`` seconds, by one instance only (on PostgreSQL the ``dispatcher``
        lease), so an alert is sent once however many instances run. The lease is renewed while a
        round runs, every third of its time, so a send slower than the lease (a slow SMTP relay or
        Slack) never lets another instance take over and send the same alert again."""
        owner = self.owner
        next_digest = self.clock() + self.digest_every
        ttl = max(self.lease_seconds, 3 * every)
        while True:
            try:
                several = self.store.db.dialect == "postgresql"  # SQLite: one process, no lease to write
                asked = time.monotonic()
                if several and not await self.store.locks.leader("dispatcher", owner, ttl=ttl):
                    await asyncio.sleep(every)
                    continue
                async with self._leading(owner, ttl, several, asked) as leading:
                    await self.tick(leading)
                    if self.clock() >= next_digest and leading():
                        next_digest = self.clock() + self.digest_every
                        await self.digest()
            except Exception as exc:  # noqa: BLE001 - the dispatcher must outlive one bad round
                log.error("dispatcher.tick_failed", error=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(every)

    @contextlib.asynccontextmanager
    async def _leading(
        self, owner: str, ttl: float, several: bool, renewed: float
    ) -> AsyncIterator[Callable[[], bool]]:
        """While the block runs, renew the leader lease (taken at ``renewed``, monotonic) every third
        of ``ttl`` (its heartbeat); yields whether the lease is still held (False once a renewal
        found another holder, or when none has succeeded for ``ttl``)."""
        if not several:
            yield lambda: True
            return
        lost = asyncio.Event()  # the lease runs until ``renewed`` + ttl (a failed renewal extends nothing)

        async def heartbeat() -> None:
            nonlocal renewed
            while True:
                await asyncio.sleep(ttl / 3)
                try:
                    started = time.monotonic()
                    if not await self.store.locks.leader("dispatcher", owner, ttl=ttl):
                        log.error("dispatcher.lease_lost", owner=owner)
                        lost.set()
                        return
                    renewed = started
                except Exception as exc:  # noqa: BLE001 - the next beat tries again
                    log.warning("dispatcher.lease_renew_failed", error=f"{type(exc).__name__}: {exc}")

        beating = asyncio.create_task(heartbeat())
        try:
            yield lambda: not lost.is_set() and time.monotonic() - renewed < ttl
        finally:
            beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beating

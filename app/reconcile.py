"""The pass: read a workspace's repository list, then plan, fetch and evaluate like any event.

A pass (``lp:reconcile``, tier ``full`` or ``members``) is the backstop that keeps results right:
Bitbucket sends no event for member, permission or branch-restriction changes. All it needs of
its own is what the planner cannot know: the repository list (tier ``full``). From it
:func:`app.planner.full_pass` plans every fetch an enabled test needs; :mod:`app.fetch` performs
them (at low budget priority, set by the worker) and :mod:`app.evaluate` records every test. A
fetch that fails marks its snapshot stale and never produces a ``fail`` (checks.md).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime

from app import errors
from app.bitbucket.client import BitbucketClient
from app.evaluate import Alerts, record
from app.fetch import Fetcher, Row, fetch_all
from app.findings import Delta
from app.logs import get_logger
from app.models import iso, utcnow
from app.planner import MEMBER_CHECKS, REPO_CHECKS, KnownRepo, full_pass
from app.settings import Settings
from app.store import Store
from app.store.snapshots import k_repo, k_repos

log = get_logger("reconcile")


@dataclass
class PassReport:
    workspace: str
    api_calls: int = 0
    snapshots_changed: int = 0
    rows_written: int = 0
    fetch_failures: int = 0
    seconds: float = 0.0
    delta: Delta = field(default_factory=Delta)


async def reconcile_workspace(
    client: BitbucketClient,
    store: Store,
    settings: Settings,
    ws: str,
    now: datetime | None = None,
    alerts: Alerts | None = None,
    tier: str = "full",
) -> PassReport:
    """One pass over a workspace: list its repositories (tier ``full``), plan every fetch
    (:func:`app.planner.full_pass`), then the same fetch and evaluate steps as any event.

    When the repository list is unreadable, the repository results stand and are marked stale,
    the member tests are still read and written, and then the error is raised (the pass is
    retried)."""
    started = time.perf_counter()
    now = now or utcnow()
    stamp = iso(now)
    calls_before = client.calls()
    enabled = frozenset(settings.enabled_checks)
    report = PassReport(workspace=ws)
    listed: list[KnownRepo] = []
    if tier == "full":
        try:
            repos = await client.repositories(ws)
        except errors.BitbucketError as exc:
            await Fetcher(client, store, stamp).failed(k_repos(ws), ws, "repos", exc)
            await _members_only(client, store, settings, ws, now, alerts)
            raise
        rows: list[Row] = [(k_repos(ws), ws, "repos", [r.uuid for r in repos])]
        rows += [(k_repo(r.uuid), ws, "repo", r.model_dump(mode="json")) for r in repos]
        report.snapshots_changed = await store.snapshots.put_many(rows, stamp)
        listed = [KnownRepo(uuid=r.uuid, mainbranch=r.mainbranch, slug=r.slug) for r in repos]
        from app.tiers import pass_order  # issue 13 hook: oldest restrictions reading first (tiers imports us)

        listed = await pass_order(store, ws, listed)
    plan = full_pass(ws, tier, listed, enabled)
    outcome = await fetch_all(client, store, plan.fetches, enabled=enabled, now=stamp, concurrency=settings.concurrency)
    report.snapshots_changed += outcome.changed
    report.fetch_failures = outcome.failures
    if tier == "full":
        # Repositories that left the workspace: drop their snapshots (their results retire below).
        await store.snapshots.keep_repos(ws, {r.uuid for r in listed})
    cause = "reconcile" if tier == "full" else f"reconcile:{tier}"
    report.delta, report.rows_written = await record(
        store, settings, ws, now, cause, only_checks=plan.checks or None, alerts=alerts
    )
    report.api_calls = client.calls() - calls_before
    report.seconds = time.perf_counter() - started
    log.info(
        "reconcile.done",
        workspace=ws,
        tier=tier,
        calls=report.api_calls,
        written=report.rows_written,
        opened=len(report.delta.opened),
        resolved=len(report.delta.resolved),
        failures=report.fetch_failures,
        seconds=round(report.seconds, 2),
    )
    return report


async def _members_only(
    client: BitbucketClient, store: Store, settings: Settings, ws: str, now: datetime, alerts: Alerts | None
) -> None:
    """The pass without the repository list: repository results stale, member tests as usual."""
    stale = [
        r for (check, _), r in (await store.results.load(ws)).items() if check in REPO_CHECKS and r.stale_since is None
    ]
    if stale:
        await store.results.apply(Delta(stale=stale), iso(now), "reconcile")
    if MEMBER_CHECKS & set(settings.enabled_checks):
        enabled = frozenset(settings.enabled_checks)
        plan = full_pass(ws, "members", (), enabled)
        await fetch_all(client, store, plan.fetches, enabled=enabled, now=iso(now), concurrency=settings.concurrency)
        await record(store, settings, ws, now, "reconcile", only_checks=MEMBER_CHECKS, alerts=alerts)

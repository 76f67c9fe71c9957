"""The pass: read a workspace's repository list, then plan, fetch and evaluate like any event.

A pass (``lp:reconcile``, tier ``full`` or ``members``) is the backstop that keeps results right:
Bitbucket sends no event for member, permission or branch-restriction changes. All it needs of
its own is what the planner cannot know: the repository list (tier ``full``). From it
:func:`app.planner.full_pass` plans every fetch an enabled test needs; :mod:`app.fetch` performs
them (at low budget priority, set by the worker) and :mod:`app.evaluate` records every test. A
fetch that fails marks its snapshot stale and never produces a ``fail`` (docs/checks.md).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from app import errors
from app.bitbucket.client import BitbucketClient
from app.bitbucket.models import Repository
from app.evaluate import CHUNK as CHUNK
from app.evaluate import Alerts, Opened, chunk_alerts, known_checks, record, record_all, record_members
from app.fetch import Fetcher, Row, fetch_all
from app.findings import Delta
from app.logs import get_logger
from app.models import iso, utcnow
from app.planner import MEMBER_CHECKS, REPO_CHECKS, Fetch, KnownRepo, full_pass, repo_fetches
from app.settings import Settings
from app.store import Store
from app.store.outbox import Entry
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
    # The pass's changes, each list cut at REPORT_CAP entries (memory stays bounded however
    # many results a pass writes); ``counts`` has the whole numbers, per list.
    delta: Delta = field(default_factory=Delta)
    counts: Counter[str] = field(default_factory=Counter)


# Told how a pass advances: {"step": "repositories" | "members" | ..., "done": n, "total": m}
# (repositories done of those listed), as each chunk is recorded (the operator's panel).
Progress = Callable[[dict[str, object]], Awaitable[None]]
REPORT_CAP = 1000  # changes of each kind a pass keeps to report


async def reconcile_workspace(
    client: BitbucketClient,
    store: Store,
    settings: Settings,
    ws: str,
    now: datetime | None = None,
    alerts: Alerts | None = None,
    tier: str = "full",
    chunk: int = CHUNK,
    progress: Progress | None = None,
) -> PassReport:
    """One pass over a workspace: list its repositories (tier ``full``), plan every fetch
    (:func:`app.planner.full_pass`), then the same fetch and evaluate steps as any event.

    Tier ``full`` streams the listed repositories through fetch → evaluate → record ``chunk`` at
    a time, so memory stays bounded however large the workspace; the results of repositories
    that left are retired once at the end, from the listed set; then the member list is read
    and the member tests recorded ``chunk`` members at a time
    (:func:`app.evaluate.record_members`); the workspace tests come last. ``progress`` is told
    each step (repositories done of those listed). When the repository
    list is unreadable, the repository results stand and are marked stale, the member tests are
    still read and written, and then the error is raised (the pass is retried)."""
    started = time.perf_counter()
    fixed = now

    def clock() -> datetime:
        """The moment of a step: each step of a pass is stamped when it records, after its reads
        (a pass waiting out a 429 does not date what it then reads to its start), unless the
        caller fixed the time."""
        return fixed or utcnow()

    stamp = iso(clock())
    calls_before = client.calls()
    enabled = frozenset(settings.enabled_checks)
    report = PassReport(workspace=ws)
    cause = "reconcile" if tier == "full" else f"reconcile:{tier}"
    told = progress or _untold
    if tier != "full":
        await told({"step": tier})
        plan = full_pass(ws, tier, (), enabled)
        outcome = await fetch_all(
            client, store, plan.fetches, enabled=enabled, now=stamp, concurrency=settings.concurrency
        )
        report.snapshots_changed, report.fetch_failures = outcome.changed, outcome.failures
        # The member tests, ``chunk`` members at a time (20,000 members are never evaluated at once).
        async for delta, written in record_all(
            store, settings, ws, clock(), cause, plan.checks or None, alerts, chunk=max(1, chunk)
        ):
            _merge(report, delta)
            report.rows_written += written
    else:
        await told({"step": "listing repositories"})
        try:
            repos = await client.repositories(ws)
        except errors.BitbucketError as exc:
            await Fetcher(client, store, stamp).failed(k_repos(ws), ws, "repos", exc)
            await _members_only(client, store, settings, ws, clock, alerts)
            raise
        from app.tiers import pass_order  # issue 13 hook: oldest restrictions reading first (tiers imports us)

        order = await pass_order(
            store, ws, [KnownRepo(uuid=r.uuid, mainbranch=r.mainbranch, slug=r.slug) for r in repos]
        )
        by_uuid = {r.uuid: r for r in repos}
        repos = [by_uuid[k.uuid] for k in order]
        await _full(client, store, settings, ws, clock, repos, report, alerts, max(1, chunk), told)
    report.api_calls = client.calls() - calls_before
    report.seconds = time.perf_counter() - started
    log.info(
        "reconcile.done",
        workspace=ws,
        tier=tier,
        calls=report.api_calls,
        written=report.rows_written,
        opened=report.counts["opened"],
        resolved=report.counts["resolved"],
        failures=report.fetch_failures,
        seconds=round(report.seconds, 2),
    )
    return report


async def _full(
    client: BitbucketClient,
    store: Store,
    settings: Settings,
    ws: str,
    clock: Callable[[], datetime],
    repos: list[Repository],
    report: PassReport,
    alerts: Alerts | None,
    chunk: int,
    told: Progress,
) -> None:
    """The full pass, ``chunk`` repositories at a time, then retirement, then the rest; each step
    reads, then records at ``clock()``."""
    stamp = iso(clock())
    enabled = frozenset(settings.enabled_checks)
    listed = {r.uuid for r in repos}
    report.snapshots_changed = await store.snapshots.put_many(
        [(k_repos(ws), ws, "repos", [r.uuid for r in repos])], stamp
    )
    # Repositories that left the workspace: drop their snapshots (their results retire below).
    await store.snapshots.keep_repos(ws, listed)
    # The "first assessment" summary alert is a decision about the whole pass: a workspace's
    # first pass writes its chunks without alerts and the summary with the last step (a marker
    # keeps that decision across a crash and retry); any later pass alerts chunk by chunk.
    marker = f"baseline_pending:{ws}"
    first = alerts is not None and (bool(await store.meta.get(marker)) or not await store.results.exist(ws))
    if first:
        await store.meta.set(marker, stamp)
    step_alerts = None if first or alerts is None else chunk_alerts(alerts)
    opened = Opened() if first else None
    total = len(repos)
    await told({"step": "repositories", "done": 0, "total": total})
    for start in range(0, len(repos), chunk):
        part = repos[start : start + chunk]
        rows: list[Row] = [(k_repo(r.uuid), ws, "repo", r.model_dump(mode="json")) for r in part]
        report.snapshots_changed += await store.snapshots.put_many(rows, stamp)
        known = [KnownRepo(uuid=r.uuid, mainbranch=r.mainbranch, slug=r.slug) for r in part]
        fetches = [f for r in known for f in repo_fetches(ws, r, enabled)]
        outcome = await fetch_all(
            client, store, fetches, enabled=enabled, now=iso(clock()), concurrency=settings.concurrency
        )
        report.snapshots_changed += outcome.changed
        report.fetch_failures += outcome.failures
        delta, written = await record(
            store,
            settings,
            ws,
            clock(),
            "reconcile",
            subjects={r.uuid for r in part},
            alerts=step_alerts,
            members=False,
            listed=[r.uuid for r in part],  # all listed (the list was stored above), in its order
        )
        _merge(report, delta)
        if opened is not None:
            opened.add(delta)
        report.rows_written += written
        await told({"step": "repositories", "done": start + len(part), "total": total})
    del repos
    # Results of repositories that are no longer listed: retired once, against the listed set.
    gone = await store.results.subject_keys(ws, "repository") - listed
    if gone:
        delta, written = await record(
            store, settings, ws, clock(), "reconcile", subjects=gone, alerts=step_alerts, members=False
        )
        _merge(report, delta)
        report.rows_written += written
    await told({"step": "members and workspace", "done": total, "total": total})
    # The member list (a member test on): read whole, written in one place (app.fetch.fetch_members).
    if MEMBER_CHECKS & enabled:
        outcome = await fetch_all(
            client, store, [Fetch("members", ws)], enabled=enabled, now=iso(clock()), concurrency=settings.concurrency
        )
        report.snapshots_changed += outcome.changed
        report.fetch_failures += outcome.failures
    # The member tests, ``chunk`` members at a time (20,000 members are never evaluated at once).
    async for delta, written in record_members(store, settings, ws, clock(), "reconcile", step_alerts, chunk=chunk):
        _merge(report, delta)
        if opened is not None:
            opened.add(delta)
        report.rows_written += written
    final: Alerts | None = step_alerts
    if opened is not None and alerts is not None:
        first_pass, send = opened, alerts

        def final(delta: Delta) -> list[Entry]:
            return send(first_pass.whole(delta))

    # Last, every other test of a subject other than a repository (the workspace's; and what a
    # test no longer known left behind, retired), with the first pass's summary alert.
    rest = (known_checks(settings) | {c for c, _, _ in await store.results.counts()}) - MEMBER_CHECKS
    delta, written = await record(
        store, settings, ws, clock(), "reconcile", only_checks=rest, alerts=final, repositories=False, members=False
    )
    _merge(report, delta)
    report.rows_written += written
    if first:
        await store.meta.set(marker, "")


async def _untold(_: dict[str, object]) -> None:
    return None


def _merge(report: PassReport, delta: Delta) -> None:
    """Add one step's delta to the pass's report: whole counts, lists cut at ``REPORT_CAP``
    (what was unchanged is only counted)."""
    report.counts["unchanged"] += len(delta.unchanged)
    for name in ("opened", "resolved", "changed", "stale", "retired"):
        kept: list[Any] = getattr(report.delta, name)
        new: list[Any] = getattr(delta, name)
        report.counts[name] += len(new)
        kept += new[: max(0, REPORT_CAP - len(kept))]


async def _members_only(
    client: BitbucketClient,
    store: Store,
    settings: Settings,
    ws: str,
    clock: Callable[[], datetime],
    alerts: Alerts | None,
) -> None:
    """The pass without the repository list: repository results stale, member tests as usual."""
    stale = [
        r
        for (check, _), r in (await store.results.load(ws, checks=REPO_CHECKS)).items()
        if check in REPO_CHECKS and r.stale_since is None
    ]
    if stale:
        await store.results.apply(Delta(stale=stale), iso(clock()), "reconcile")
    if MEMBER_CHECKS & set(settings.enabled_checks):
        enabled = frozenset(settings.enabled_checks)
        plan = full_pass(ws, "members", (), enabled)
        await fetch_all(
            client, store, plan.fetches, enabled=enabled, now=iso(clock()), concurrency=settings.concurrency
        )
        async for _ in record_all(store, settings, ws, clock(), "reconcile", MEMBER_CHECKS, alerts):
            pass

"""Evaluate: stored snapshots → facts → checks (pure) → diff (pure) → record.

One evaluation step for every trigger. :func:`record` builds the facts of a workspace from its
snapshots (:mod:`app.store.facts`), runs the enabled tests, diffs against the stored results
(:func:`app.findings.diff`) and writes the results, their history and the outbox rows the delta
causes in ONE transaction (``store.results.apply``). :func:`evaluate_plans` turns the plans of a
batch of events into the narrowest such records: the affected (test, subject) pairs only. What
concerns a whole workspace (a classification rule, personnel, evidence, the members tier) is
recorded in bounded steps by :func:`record_all`, never with every subject in memory at once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from app import checks
from app.checks import EVIDENCE_CHECKS
from app.checks.base import Context, Unreadable, WorkspaceFacts
from app.findings import Change, Delta, Key, diff
from app.models import Result, StoredResult, iso, utcnow
from app.planner import MEMBER_CHECKS, REPO_CHECKS, Plan
from app.settings import Settings
from app.store import Store
from app.store.facts import MemberReader, build_facts, member_reader, member_snapshots, members_read
from app.store.outbox import Entry
from app.store.snapshots import k_repos

Alerts = Callable[[Delta], list[Entry]]  # a delta -> the outbox rows it causes (notify.Dispatcher)
CHUNK = 200  # subjects (repositories, members) evaluated and recorded together over a whole workspace
FEW = 100  # a first assessment's openings kept whole (each may be an alert); beyond, a summary alert


@dataclass
class Opened:
    """What a workspace's first assessment opened, compactly: every change while they are few
    (each may become an alert of its own), else per test a count and one example, all the
    "first assessment" summary alert needs."""

    few: list[Change] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    example: dict[str, Change] = field(default_factory=dict)

    def add(self, delta: Delta) -> None:
        for c in delta.opened:
            self.counts[c.result.check] += 1
            self.example.setdefault(c.result.check, c)
            if len(self.few) < FEW:
                self.few.append(c)

    def whole(self, last: Delta) -> Delta:
        """The delta of the whole assessment, as the alerts see it."""
        self.add(last)
        if sum(self.counts.values()) <= len(self.few):
            return replace(last, opened=list(self.few))
        opened = [self.example[k] for k, n in sorted(self.counts.items()) for _ in range(n)]
        return replace(last, opened=opened, unchanged=[], stale=[])


def chunk_alerts(alerts: Alerts) -> Alerts:
    """Alerts for one step of an evaluation in chunks whose subjects had stored results: one
    alert per change. The "first assessment" summary is a decision about a whole first
    assessment, never one chunk's (a chunk of only new repositories is not a first assessment),
    so a chunk's delta is shown to ``alerts`` as part of an evaluation that kept earlier results."""

    def rows(delta: Delta) -> list[Entry]:
        if delta.unchanged or not delta.writes:
            return alerts(delta)
        return alerts(replace(delta, unchanged=[delta.writes[0].result]))

    return rows


async def evaluate_workspace(
    store: Store,
    settings: Settings,
    ws: str,
    now: datetime,
    repo_uuids: set[str] | None = None,
    only_checks: frozenset[str] | None = None,
    members: bool = True,
    listed: Sequence[str] | None = None,
) -> tuple[list[Result], bool]:
    """The enabled tests (or those of ``only_checks``) for one workspace, from stored snapshots alone.

    ``repo_uuids`` narrows the repositories read (by key) to those; an empty set reads none.
    ``members=False`` reads no member (the subjects are repositories only). ``listed``: see
    :func:`app.store.facts.build_facts`."""
    enabled = [c for c in settings.enabled_checks if not only_checks or c in only_checks]
    facts, members_read = await build_facts(
        store,
        ws,
        repo_uuids,
        with_repos=bool(REPO_CHECKS & set(enabled)) and repo_uuids != set(),
        with_members=members and bool(MEMBER_CHECKS & set(enabled)),
        listed=listed,
    )
    ctx = await _context(store, settings, ws, now, enabled)
    return checks.evaluate(facts, ctx, enabled), members_read


async def _context(store: Store, settings: Settings, ws: str, now: datetime, enabled: Sequence[str]) -> Context:
    """What the tests ``enabled`` read besides facts; the workspace's evidence (one upload per
    member, possibly) only when one of them accepts evidence (a repository's re-check reads none)."""
    return Context(
        workspace=ws,
        now=now,
        min_approvals=settings.min_approvals,
        strict_merge_checks=settings.strict_merge_checks,
        evidence=tuple(await store.records.evidence(ws)) if set(enabled) & set(EVIDENCE_CHECKS) else (),
        web_url=settings.bitbucket_url,
    )


def known_checks(settings: Settings) -> frozenset[str]:
    """Every test a stored result may belong to: the registry's and the enabled ones."""
    return frozenset(checks.REGISTRY) | frozenset(settings.enabled_checks)


async def record(
    store: Store,
    settings: Settings,
    ws: str,
    now: datetime,
    cause: str = "reconcile",
    subjects: set[str] | None = None,
    only_checks: frozenset[str] | None = None,
    alerts: Alerts | None = None,
    *,
    repositories: bool = True,
    members: bool = True,
    listed: Sequence[str] | None = None,
) -> tuple[Delta, int]:
    """Evaluate from snapshots, diff against stored results, write the delta.

    ``subjects`` and ``only_checks`` narrow the evaluation and the diff (and so what may be
    retired) to those subject keys and tests: only those subjects' snapshots and stored results
    are read. ``repositories=False`` leaves every repository subject out (the workspace and
    member subjects of a pass whose repositories were recorded chunk by chunk); ``members=False``
    reads no member (``subjects`` are repositories: a chunk of a pass). ``listed``: the listed
    repositories among ``subjects`` in list order, when the caller knows them (a pass's chunk: the
    stored list is then not read again). ``alerts`` turns the delta into outbox rows, written in
    the same transaction as the results.
    """
    repo_uuids = subjects if repositories else set()
    results, members_read = await evaluate_workspace(
        store, settings, ws, now, repo_uuids, only_checks, members, listed if repositories else None
    )
    if subjects is not None:
        results = [r for r in results if r.subject_key in subjects]
    if not repositories:
        results = [r for r in results if r.subject_type != "repository"]
    wanted_checks = only_checks or (known_checks(settings) if subjects is not None else None)
    previous = await store.results.load(
        ws, subjects=subjects, checks=wanted_checks, other_than=None if repositories else "repository"
    )

    def in_scope(key: Key) -> bool:
        check, subject = key
        if subjects is not None and subject not in subjects:
            return False
        if only_checks and check not in only_checks:
            return False
        if check not in settings.enabled_checks:
            return True  # a disabled test yields no results: retire what it left
        return not (check in MEMBER_CHECKS and not members_read)

    delta = diff(previous, results, in_scope)
    written = await store.results.apply(delta, iso(now), cause, alerts=alerts)
    return delta, written


async def record_members(
    store: Store,
    settings: Settings,
    ws: str,
    now: datetime,
    cause: str = "reconcile",
    alerts: Alerts | None = None,
    *,
    chunk: int = CHUNK,
    only_checks: frozenset[str] | None = None,
) -> AsyncIterator[tuple[Delta, int]]:
    """The member tests of a workspace recorded ``chunk`` members at a time, so memory stays bounded
    however many members it has: each step builds one slice of member facts, evaluates it, reads
    the stored results of those members only (by key), diffs and writes; one ``(delta, rows
    written)`` per step. The same results, retirements and stale marks as :func:`record` over
    the member tests (or those of them in ``only_checks``), which reads the whole list at once:

    - first the member tests' workspace result (their one ``unknown`` when no member list can
      be read, retired once one can);
    - then the listed members, chunk by chunk (a failed list keeps its last content: every
      member's results stand, marked stale);
    - last the stored member results of anyone no longer listed: retired when the list was read,
      kept otherwise (a disabled test's results are retired either way).

    The member list itself is written in one place, by :func:`app.fetch.fetch_members`; this
    only reads it. Covers every stored result of a member test but a repository's; the rest of
    the workspace is left to :func:`record` (``only_checks`` without the member tests)."""
    scope = MEMBER_CHECKS & only_checks if only_checks else MEMBER_CHECKS
    if not scope:
        return
    enabled = [c for c in settings.enabled_checks if c in scope]
    stamp = iso(now)
    reader: MemberReader | Unreadable = Unreadable("not_fetched")
    if enabled:
        reader = await member_reader(store, ws, await member_snapshots(store, ws), await store.records.people())
    read = members_read(reader)
    ctx = await _context(store, settings, ws, now, enabled)
    exceptions = tuple(await store.records.exceptions())
    size = max(1, chunk)

    def in_scope(key: Key) -> bool:
        # A disabled test yields no results: retire what it left; an enabled member test's results
        # are decided only from a list that was read (a failed or absent one leaves them alone).
        return key[0] not in settings.enabled_checks or read

    async def step(results: list[Result], previous: dict[Key, StoredResult]) -> tuple[Delta, int]:
        delta = diff(previous, results, in_scope)
        written = await store.results.apply(delta, stamp, cause, alerts=alerts)
        return delta, written

    # The workspace subject: what the member tests say when there is no list to evaluate.
    none = WorkspaceFacts(
        workspace=ws, repositories=(), members=reader if isinstance(reader, Unreadable) else (), exceptions=exceptions
    )
    previous = await store.results.load(ws, checks=scope, subject_type="workspace")
    yield await step(checks.evaluate(none, ctx, enabled), previous)
    listed: set[str] = set()
    if isinstance(reader, MemberReader):
        for start in range(0, len(reader.listed), size):
            members = reader.facts(reader.listed[start : start + size])
            keys = {m.user.key for m in members}
            listed |= keys
            results = checks.evaluate(
                WorkspaceFacts(workspace=ws, repositories=(), members=members, exceptions=exceptions), ctx, enabled
            )
            previous = await store.results.load(ws, subjects=keys, checks=scope, subject_type="member")
            yield await step(results, previous)
    # Members no longer listed (keys only, then their results a chunk at a time).
    gone = sorted(await store.results.subject_keys(ws, "member") - listed)
    del listed
    for start in range(0, len(gone), size):
        part = gone[start : start + size]
        previous = await store.results.load(ws, subjects=part, checks=scope, subject_type="member")
        yield await step([], previous)


async def record_all(
    store: Store,
    settings: Settings,
    ws: str,
    now: datetime,
    cause: str,
    only_checks: frozenset[str] | None = None,
    alerts: Alerts | None = None,
    *,
    chunk: int | None = None,
) -> AsyncIterator[tuple[Delta, int]]:
    """What ``record(store, settings, ws, now, cause, only_checks=only_checks, alerts=alerts)``
    records over the whole workspace, in bounded steps, so memory stays bounded however many
    repositories and members it has (a classification rule, a personnel import, evidence, the
    members tier re-evaluate every subject): one ``(delta, rows written)`` per step, each step's
    results written with their outbox rows in one transaction. The steps, as a full pass's:

    - the listed repositories, ``chunk`` at a time: only their snapshots, read by key, and their
      stored results (the stored list is read once);
    - the stored results of repositories no longer listed (retired), ``chunk`` subjects at a time;
    - the member tests, ``chunk`` members at a time (:func:`record_members`);
    - last, the tests of every other subject (the workspace's).

    Alerts are those of one evaluation: when no result of the tests in scope was stored (a first
    assessment), the steps write without alerts and the last one carries the "first assessment"
    summary (on its own when only member tests are in scope); otherwise each step alerts its own
    changes (:func:`chunk_alerts`). ``chunk``: :data:`CHUNK` unless given."""
    size = max(1, chunk or CHUNK)
    scope = frozenset(only_checks) if only_checks else known_checks(settings) | await store.results.checks(ws)
    first = alerts is not None and not await store.results.exist(ws, checks=scope)
    step_alerts = None if first or alerts is None else chunk_alerts(alerts)
    opened = Opened() if first else None
    member_scope = scope & MEMBER_CHECKS
    rest = scope - MEMBER_CHECKS  # every test but the member tests: repository, workspace (and unknown) ones
    # Only tests that may have a repository subject need the repositories read (a repository
    # test, or one no longer known whose results may be a repository's): only they run per chunk.
    on_repos = rest & REPO_CHECKS | (rest - frozenset(checks.REGISTRY))

    def seen(delta: Delta) -> Delta:
        if opened is not None:
            opened.add(delta)
        return delta

    if on_repos:
        snap = await store.snapshots.get(k_repos(ws))
        listed = [str(u) for u in snap.content] if snap is not None and isinstance(snap.content, list) else []
        for start in range(0, len(listed), size):
            part = listed[start : start + size]
            delta, written = await record(
                store, settings, ws, now, cause, set(part), on_repos, step_alerts, members=False, listed=part
            )
            yield seen(delta), written
        # Results of repositories no longer listed: retired (none of them is evaluated).
        gone = sorted(await store.results.subject_keys(ws, "repository") - set(listed))
        del listed
        for start in range(0, len(gone), size):
            part = gone[start : start + size]
            delta, written = await record(
                store, settings, ws, now, cause, set(part), on_repos, step_alerts, members=False, listed=[]
            )
            yield seen(delta), written
    if member_scope:
        async for delta, written in record_members(
            store, settings, ws, now, cause, step_alerts, chunk=size, only_checks=member_scope
        ):
            yield seen(delta), written
    final: Alerts | None = step_alerts
    if opened is not None and alerts is not None:
        first_assessment, send = opened, alerts

        def final(delta: Delta) -> list[Entry]:
            return send(first_assessment.whole(delta))

    if rest:
        yield await record(
            store, settings, ws, now, cause, only_checks=rest, alerts=final, repositories=False, members=False
        )
    elif final is not None and opened is not None:
        rows = final(Delta())
        yield Delta(), await store.results.apply(Delta(), iso(now), cause, outbox=rows)


def fold(into: Delta, delta: Delta) -> Delta:
    """Add one step's delta to ``into``: every change, and at most one unchanged result (whether
    any was unchanged, which is what alerts read of it), so the sum of a workspace's steps stays
    as small as its changes."""
    into.opened += delta.opened
    into.resolved += delta.resolved
    into.changed += delta.changed
    into.stale += delta.stale
    into.retired += delta.retired
    if delta.unchanged and not into.unchanged:
        into.unchanged.append(delta.unchanged[0])
    return into


async def evaluate_plans(
    store: Store,
    settings: Settings,
    ws: str,
    plans: Sequence[Plan],
    cause: str,
    tainted: set[str] | None = None,
    skip: set[str] | None = None,
    alerts: Alerts | None = None,
) -> list[Delta]:
    """Re-run the affected tests. Repositories in ``tainted`` could not be read: their
    results are not re-evaluated but kept and marked stale (docs/checks.md "A fetch that fails").
    Repositories in ``skip`` wait for a deferred read: they are evaluated when it is done."""
    now = utcnow()
    deltas: list[Delta] = []
    if tainted:
        await mark_stale(store, ws, tainted, now)
    if any(p.workspace_checks for p in plans):
        checks = frozenset().union(*(p.checks for p in plans if p.workspace_checks))
        all_checks = any(not p.checks for p in plans if p.workspace_checks)
        whole = Delta()
        async for delta, _ in record_all(store, settings, ws, now, cause, None if all_checks else checks, alerts):
            fold(whole, delta)
        deltas.append(whole)
        if all_checks:
            return deltas
    repos = {u for p in plans for u in (*p.repos, *p.retire)} - (tainted or set()) - (skip or set())
    if repos:
        checks = frozenset().union(*(p.checks for p in plans if p.repos or p.retire))
        all_repo = any(not p.checks for p in plans if p.repos or p.retire)
        delta, _ = await record(
            store,
            settings,
            ws,
            now,
            cause,
            subjects=repos,
            only_checks=REPO_CHECKS if all_repo else checks,
            alerts=alerts,
        )
        deltas.append(delta)
    if any(p.members for p in plans):
        checks = frozenset().union(*(p.checks for p in plans if p.members)) & MEMBER_CHECKS
        whole = Delta()
        async for delta, _ in record_all(store, settings, ws, now, cause, checks or MEMBER_CHECKS, alerts):
            fold(whole, delta)
        deltas.append(whole)
    return deltas


async def mark_stale(store: Store, ws: str, subjects: set[str], now: datetime) -> None:
    """Keep the results of subjects that could not be read, marked stale (none is re-evaluated)."""
    stored = await store.results.load(ws, subjects=subjects, checks=REPO_CHECKS | MEMBER_CHECKS | set(checks.REGISTRY))
    stale = [s for (_, subject), s in stored.items() if subject in subjects and s.stale_since is None]
    if stale:
        await store.results.apply(Delta(stale=stale), iso(now), "fetch_failed")

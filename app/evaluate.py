"""Evaluate: stored snapshots → facts → checks (pure) → diff (pure) → record.

One evaluation step for every trigger. :func:`record` builds the facts of a workspace from its
snapshots (:mod:`app.store.facts`), runs the enabled tests, diffs against the stored results
(:func:`app.findings.diff`) and writes the results, their history and the outbox rows the delta
causes in ONE transaction (``store.results.apply``). :func:`evaluate_plans` turns the plans of a
batch of events into the narrowest such records: the affected (test, subject) pairs only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from app import checks
from app.checks.base import Context
from app.findings import Delta, Key, diff
from app.models import Result, iso, utcnow
from app.planner import MEMBER_CHECKS, REPO_CHECKS, Plan
from app.settings import Settings
from app.store import Store
from app.store.facts import build_facts
from app.store.outbox import Entry

Alerts = Callable[[Delta], list[Entry]]  # a delta -> the outbox rows it causes (notify.Dispatcher)


async def evaluate_workspace(
    store: Store,
    settings: Settings,
    ws: str,
    now: datetime,
    repo_uuids: set[str] | None = None,
    only_checks: frozenset[str] | None = None,
) -> tuple[list[Result], bool]:
    """The enabled tests (or those of ``only_checks``) for one workspace, from stored snapshots alone."""
    enabled = [c for c in settings.enabled_checks if not only_checks or c in only_checks]
    facts, members_read = await build_facts(
        store,
        ws,
        repo_uuids,
        with_repos=bool(REPO_CHECKS & set(enabled)),
        with_members=bool(MEMBER_CHECKS & set(enabled)),
    )
    ctx = Context(
        workspace=ws,
        now=now,
        min_approvals=settings.min_approvals,
        strict_merge_checks=settings.strict_merge_checks,
        evidence=tuple(await store.records.evidence(ws)),
        web_url=settings.bitbucket_url,
    )
    return checks.evaluate(facts, ctx, enabled), members_read


async def record(
    store: Store,
    settings: Settings,
    ws: str,
    now: datetime,
    cause: str = "reconcile",
    subjects: set[str] | None = None,
    only_checks: frozenset[str] | None = None,
    alerts: Alerts | None = None,
) -> tuple[Delta, int]:
    """Evaluate from snapshots, diff against stored results, write the delta.

    ``subjects`` and ``only_checks`` narrow the evaluation and the diff (and so what may be
    retired) to those subject keys and tests. ``alerts`` turns the delta into outbox rows,
    written in the same transaction as the results.
    """
    results, members_read = await evaluate_workspace(store, settings, ws, now, subjects, only_checks)
    if subjects is not None:
        results = [r for r in results if r.subject_key in subjects]
    previous = await store.results.load(ws)

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
    written = await store.results.apply(delta, iso(now), cause, outbox=alerts(delta) if alerts else ())
    return delta, written


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
    results are not re-evaluated but kept and marked stale (checks.md "A fetch that fails").
    Repositories in ``skip`` wait for a deferred read: they are evaluated when it is done."""
    now = utcnow()
    deltas: list[Delta] = []
    if tainted:
        await mark_stale(store, ws, tainted, now)
    if any(p.workspace_checks for p in plans):
        checks = frozenset().union(*(p.checks for p in plans if p.workspace_checks))
        all_checks = any(not p.checks for p in plans if p.workspace_checks)
        delta, _ = await record(
            store,
            settings,
            ws,
            now,
            cause,
            only_checks=None if all_checks else checks,
            alerts=alerts,
        )
        deltas.append(delta)
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
        delta, _ = await record(store, settings, ws, now, cause, only_checks=checks or MEMBER_CHECKS, alerts=alerts)
        deltas.append(delta)
    return deltas


async def mark_stale(store: Store, ws: str, subjects: set[str], now: datetime) -> None:
    """Keep the results of subjects that could not be read, marked stale (none is re-evaluated)."""
    stored = await store.results.load(ws)
    stale = [s for (_, subject), s in stored.items() if subject in subjects and s.stale_since is None]
    if stale:
        await store.results.apply(Delta(stale=stale), iso(now), "fetch_failed")

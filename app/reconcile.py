"""The full pass: read a workspace through the client, store snapshots, evaluate, diff, record.

``reconcile_workspace`` fetches only what an enabled test needs (the branching model only for
repositories with a ``branching_model`` restriction; Pipelines only when ``pipelines-enabled`` is
on), with bounded concurrency and within the client's budget. A fetch that fails marks its
snapshot stale and never produces a ``fail`` (checks.md). ``evaluate_workspace`` decides every
test from stored snapshots alone, so the reconcile, the worker and the benchmarks share one path.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from app import checks, errors
from app.bitbucket.client import BitbucketClient
from app.bitbucket.models import (
    BranchingModel,
    BranchRestriction,
    Member,
    Pipeline,
    PipelinesConfig,
    Repository,
)
from app.checks.base import Context, MemberFacts, Person, RepoFacts, Unreadable, WorkspaceFacts
from app.checks.coverage import glob_matches
from app.fetch import Fetcher, Row, fetch_all
from app.findings import Delta, Key, diff
from app.logs import get_logger
from app.models import Result, iso, utcnow
from app.planner import MEMBER_CHECKS, REPO_CHECKS, KnownRepo, full_pass
from app.settings import Settings
from app.store import Store
from app.store.outbox import Entry
from app.store.snapshots import (
    Snapshot,
    k_build,
    k_emails,
    k_members,
    k_model,
    k_pipelines,
    k_prs,
    k_repo,
    k_repos,
    k_restrictions,
    repo_of,
)

log = get_logger("reconcile")

Alerts = Callable[[Delta], list[Entry]]  # a delta -> the outbox rows it causes (notify.Dispatcher)


@dataclass
class PassReport:
    workspace: str
    api_calls: int = 0
    snapshots_changed: int = 0
    rows_written: int = 0
    fetch_failures: int = 0
    seconds: float = 0.0
    delta: Delta = field(default_factory=Delta)


def _unreadable(snap: Snapshot | None) -> Unreadable | None:
    if snap is None:
        return Unreadable("not_fetched")
    if snap.stale_since is not None:
        return Unreadable("fetch_failed", detail=snap.error or "fetch failed")
    if isinstance(snap.content, dict) and "unreadable" in snap.content:
        u = snap.content["unreadable"]
        return Unreadable(u.get("reason", "missing_scope"), scope=u.get("scope"))
    return None


def _count(snap: Snapshot | None) -> int | None:
    return snap.content if snap is not None and isinstance(snap.content, int) else None


def classify(
    repo: Repository, explicit: dict[str, str], rules: Sequence[dict[str, Any]]
) -> tuple[str | None, str | None]:
    """The explicit class wins; otherwise the first matching rule (project key or name glob)."""
    if repo.uuid in explicit:
        return explicit[repo.uuid], "explicit"
    for rule in rules:
        if rule.get("workspace") and rule["workspace"] != repo.workspace:
            continue
        if rule.get("project_key") and rule["project_key"] == repo.project_key:
            return rule["class"], f"rule:{rule['id']}"
        if rule.get("name_glob") and (
            glob_matches(rule["name_glob"], repo.slug) or glob_matches(rule["name_glob"], repo.name)
        ):
            return rule["class"], f"rule:{rule['id']}"
    return None, None


async def build_facts(
    store: Store, ws: str, repo_uuids: set[str] | None = None, with_repos: bool = True, with_members: bool = True
) -> tuple[WorkspaceFacts, bool]:
    """Facts for one workspace from stored snapshots; the flag says whether members were read.

    ``repo_uuids`` limits the repositories read; ``with_repos``/``with_members`` skip whole parts.
    """
    snaps = await store.snapshots.load(ws)
    explicit = await store.records.classes(ws)
    rules = await store.records.rules()
    people = await store.records.people()
    exceptions = await store.records.exceptions()
    repo_list = snaps.get(k_repos(ws))
    repos: list[RepoFacts] = []
    for uuid in repo_list.content if repo_list and repo_list.content and with_repos else []:
        if repo_uuids is not None and uuid not in repo_uuids:
            continue
        snap = snaps.get(k_repo(uuid))
        if snap is None or snap.content is None:
            continue
        repo = Repository.model_validate(snap.content)
        cls, source = classify(repo, explicit, rules)
        r_snap = snaps.get(k_restrictions(uuid))
        restrictions: tuple[BranchRestriction, ...] | Unreadable = _unreadable(r_snap) or tuple(
            BranchRestriction.model_validate(v)
            for v in r_snap.content["values"]  # type: ignore[union-attr]
        )
        m_snap = snaps.get(k_model(uuid))
        model: BranchingModel | Unreadable | None = None
        if m_snap is not None:
            model = _unreadable(m_snap) or BranchingModel.model_validate(m_snap.content)
        p_snap = snaps.get(k_pipelines(uuid))
        pipelines: PipelinesConfig | Unreadable = _unreadable(p_snap) or PipelinesConfig.model_validate(
            p_snap.content  # type: ignore[union-attr]
        )
        b_snap = snaps.get(k_build(uuid))
        build = Pipeline.model_validate(b_snap.content) if b_snap and b_snap.content else None
        repos.append(
            RepoFacts(
                repo=repo,
                repo_class=cls,
                class_source=source,
                restrictions=restrictions,
                branching_model=model,
                pipelines=pipelines,
                last_build=build,
                open_pullrequests=_count(snaps.get(k_prs(uuid))),
            )
        )
    members_snap = snaps.get(k_members(ws))
    members: tuple[MemberFacts, ...] | Unreadable
    unreadable = _unreadable(members_snap) if with_members else Unreadable("not_fetched")
    if unreadable is not None:
        members = unreadable
    else:
        assert members_snap is not None
        by_account = {p.bitbucket_account_id: p for p in people if p.bitbucket_account_id}
        by_email = {p.email: p for p in people}
        email_snap = snaps.get(k_emails(ws))
        links = email_snap.content if email_snap and email_snap.content and not email_snap.stale_since else {}
        account_to_email = {acct: email for email, acct in (links.get("links") or {}).items()}
        lookup = {True: "available", False: "unavailable", None: "not_needed"}[links.get("available")]
        marks = await store.records.marks(ws)
        out = []
        for raw in members_snap.content:
            m = Member.model_validate(raw)
            person, how = by_account.get(m.user.key), "account_id"
            if person is None and m.user.key in account_to_email:
                person, how = by_email.get(account_to_email[m.user.key]), "email"
            if person is None and m.user.key in marks:
                kind, owner = marks[m.user.key]
                person, how = (
                    Person(
                        email=f"{m.user.key} ({kind})",
                        name=m.user.display_name or m.user.key,
                        kind=kind,
                        status="active",
                        owner=owner,
                    ),
                    "mark",
                )
            out.append(
                MemberFacts(
                    user=m.user,
                    permission=m.permission,
                    person=person,
                    linked_by=how if person else None,
                    email_lookup=lookup,
                )
            )
        members = tuple(out)
    facts = WorkspaceFacts(workspace=ws, repositories=tuple(repos), members=members, exceptions=tuple(exceptions))
    return facts, not isinstance(members, Unreadable)


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
    plan = full_pass(ws, tier, listed, enabled)
    outcome = await fetch_all(client, store, plan.fetches, enabled=enabled, now=stamp, concurrency=settings.concurrency)
    report.snapshots_changed += outcome.changed
    report.fetch_failures = outcome.failures
    if tier == "full":
        # Repositories that left the workspace: drop their snapshots (their results retire below).
        known = {r.uuid for r in listed}
        snaps = await store.snapshots.load(ws)
        gone = [k for k, s in snaps.items() if s.kind != "repos" and ":" in k and repo_of(k) not in (None, *known)]
        await store.snapshots.delete(gone)
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

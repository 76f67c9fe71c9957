"""The full pass: read a workspace through the client, store snapshots, evaluate, diff, record.

``reconcile_workspace`` fetches only what an enabled test needs (the branching model only for
repositories with a ``branching_model`` restriction; Pipelines only when ``pipelines-enabled`` is
on), with bounded concurrency and within the client's budget. A fetch that fails marks its
snapshot stale and never produces a ``fail`` (checks.md). ``evaluate_workspace`` decides every
test from stored snapshots alone, so the reconcile, the worker and the benchmarks share one path.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
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
from app.findings import Delta, Key, diff
from app.logs import get_logger
from app.models import Result
from app.planner import BRANCH_CHECKS, MEMBER_CHECKS, REPO_CHECKS
from app.settings import Settings
from app.store import Store
from app.store.outbox import Entry
from app.store.snapshots import Snapshot

log = get_logger("reconcile")

Alerts = Callable[[Delta], list[Entry]]  # a delta -> the outbox rows it causes (notify.Dispatcher)


def _wall_clock() -> datetime:
    return datetime.now(UTC)


# The product's one reading of "now" (evaluation, expiries, record stamps). A seam for tests that
# move time forward (tests/test_state_machine.py); nothing in the product assigns it.
clock: Callable[[], datetime] = _wall_clock


def utcnow() -> datetime:
    return clock()


def iso(dt: datetime) -> str:
    return dt.isoformat(timespec="seconds").replace("+00:00", "Z")


# -- snapshot keys ---------------------------------------------------------------------------
def k_repos(ws: str) -> str:
    return f"repos:{ws}"


def k_repo(uuid: str) -> str:
    return f"repo:{uuid}"


def k_prs(uuid: str) -> str:
    return f"repo:{uuid}:prs"


def k_restrictions(uuid: str) -> str:
    return f"restrictions:{uuid}"


def k_model(uuid: str) -> str:
    return f"branching_model:{uuid}"


def k_pipelines(uuid: str) -> str:
    return f"pipelines:{uuid}"


def k_build(uuid: str) -> str:
    return f"last_build:{uuid}"


def k_members(ws: str) -> str:
    return f"members:{ws}"


def k_emails(ws: str) -> str:
    return f"email_links:{ws}"


def k_member_since(ws: str) -> str:
    return f"member_since:{ws}"


@dataclass
class PassReport:
    workspace: str
    api_calls: int = 0
    snapshots_changed: int = 0
    rows_written: int = 0
    fetch_failures: int = 0
    seconds: float = 0.0
    delta: Delta = field(default_factory=Delta)


class Fetcher:
    """Reads resources through the client and turns each outcome into a snapshot row."""

    def __init__(self, client: BitbucketClient, store: Store, now: str) -> None:
        self.client = client
        self.store = store
        self.now = now
        self.rows: list[tuple[str, str, str, Any]] = []
        self.failures = 0
        self.errors: dict[str, str] = {}  # snapshot key -> the error that left it stale

    async def get(self, key: str, ws: str, kind: str, read: Callable[[], Awaitable[Any]], keep: bool = True) -> Any:
        """Run ``read``; store its value (unless ``keep`` is false: the caller folds it into another
        snapshot), or a scope marker on 403; mark the snapshot stale on failure."""
        try:
            value = await read()
        except errors.ForbiddenError as exc:
            # A scope the credential lacks, or a permission its user lacks (not a repository admin).
            reason = "missing_permission" if exc.kind == "permission" else "missing_scope"
            value = {"unreadable": {"reason": reason, "scope": exc.required_scope}}
        except errors.Deferred:
            raise  # not a failure: the caller re-queues the work for when Bitbucket lets us read again
        except Exception as exc:  # noqa: BLE001 - any failure (status, timeout, body, foreign link) stays here
            await self.failed(key, ws, kind, exc)
            return None
        if keep:
            self.rows.append((key, ws, kind, value))
        return value

    async def failed(self, key: str, ws: str, kind: str, exc: BaseException) -> None:
        """Record that one resource could not be read: its snapshot turns stale, nothing else."""
        error = f"{type(exc).__name__}: {exc}"
        self.failures += 1
        self.errors[key] = error
        log.warning("fetch.failed", key=key, error=type(exc).__name__)
        await self.store.snapshots.mark_failed(key, ws, kind, error, self.now)


def _dump(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [_dump(v) for v in value]
    return value


async def fetch_repository(fetcher: Fetcher, ws: str, repo: Repository, enabled: Sequence[str]) -> None:
    """Every per-repository resource the enabled tests need."""
    client = fetcher.client
    slug = repo.slug
    fetcher.rows.append((k_repo(repo.uuid), ws, "repo", repo.model_dump(mode="json")))
    await fetcher.get(k_prs(repo.uuid), ws, "pr_count", lambda: client.open_pullrequest_count(ws, slug))
    if repo.mainbranch and BRANCH_CHECKS & set(enabled):
        await fetch_restrictions(fetcher, ws, repo.uuid, slug)
    if "pipelines-enabled" in enabled:
        await fetch_pipelines(fetcher, ws, repo.uuid, slug, repo.mainbranch)


async def fetch_restrictions(fetcher: Fetcher, ws: str, uuid: str, ref: str) -> None:
    """Branch restrictions, and the branching model when a restriction uses it."""
    client = fetcher.client
    restrictions = await fetcher.get(
        k_restrictions(uuid), ws, "restrictions", lambda: _as_values(client.branch_restrictions(ws, ref))
    )
    if isinstance(restrictions, dict) and any(
        r.get("branch_match_kind") == "branching_model" for r in restrictions.get("values", [])
    ):
        await fetcher.get(k_model(uuid), ws, "branching_model", lambda: _dumped(client.branching_model(ws, ref)))


async def fetch_pipelines(fetcher: Fetcher, ws: str, uuid: str, ref: str, main: str | None) -> None:
    client = fetcher.client
    await fetcher.get(k_pipelines(uuid), ws, "pipelines", lambda: _dumped(client.pipelines_config(ws, ref)))
    if main:
        await fetcher.get(k_build(uuid), ws, "last_build", lambda: _dumped(client.latest_pipeline(ws, ref, main)))


async def _as_values(aw: Awaitable[list[BranchRestriction]]) -> dict[str, Any]:
    return {"values": _dump(await aw)}


async def _dumped(aw: Awaitable[Any]) -> Any:
    return _dump(await aw)


async def fetch_members(fetcher: Fetcher, ws: str, people: Sequence[Person]) -> None:
    client = fetcher.client

    async def members() -> list[Any]:
        found = await client.members(ws)
        try:
            roles = await client.permissions(ws)
        except errors.ForbiddenError:
            roles = {}  # access tokens cannot read permissions (bitbucket-facts.md)
        return [_dump(m.model_copy(update={"permission": roles.get(m.user.key)})) for m in found]

    previous = await fetcher.store.snapshots.get(k_members(ws))
    listed = await fetcher.get(k_members(ws), ws, "members", members)
    if not isinstance(listed, list):
        return  # failed (the snapshot is marked stale) or refused (a scope marker is stored)
    member_keys = {Member.model_validate(m).user.key for m in listed}
    await _track_membership(fetcher, ws, member_keys, previous)
    wanted = [p.email for p in people if not p.bitbucket_account_id or p.bitbucket_account_id not in member_keys]
    if not wanted:
        fetcher.rows.append((k_emails(ws), ws, "email_links", {"available": None, "links": {}}))
        return

    async def emails() -> dict[str, Any]:
        try:
            found = await client.members_by_email(ws, wanted)
        except errors.ForbiddenError:
            return {"available": False, "links": {}}
        return {"available": True, "links": {e: u.key for e, u in sorted(found.items())}}

    await fetcher.get(k_emails(ws), ws, "email_links", emails)


async def _track_membership(fetcher: Fetcher, ws: str, keys: set[str], previous: Snapshot | None) -> None:
    """Keep when each membership began (first seen in the list): someone who leaves and comes back
    starts a new membership, which an earlier workspace-wide 2SV report does not cover. Members
    already listed when tracking began are recorded with no start (``null``)."""
    snap = await fetcher.store.snapshots.get(k_member_since(ws))
    if snap is not None and isinstance(snap.content, dict):
        known: dict[str, str | None] = snap.content
    else:
        before = previous.content if previous is not None and isinstance(previous.content, list) else []
        known = {Member.model_validate(m).user.key: None for m in before}
    seen_at = utcnow().isoformat()  # to the microsecond: compared with evidence upload times
    since = {key: known[key] if key in known else seen_at for key in sorted(keys)}
    fetcher.rows.append((k_member_since(ws), ws, "member_since", since))


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
    members = await _member_facts(store, ws, snaps, people) if with_members else Unreadable("not_fetched")
    facts = WorkspaceFacts(workspace=ws, repositories=tuple(repos), members=members, exceptions=tuple(exceptions))
    # A member list refused for want of a scope or permission is data (its results are `unknown`);
    # a failed or absent one leaves the stored member results alone.
    members_read = not isinstance(members, Unreadable) or members.reason in ("missing_scope", "missing_permission")
    return facts, members_read


async def _member_facts(
    store: Store, ws: str, snaps: dict[str, Snapshot], people: Sequence[Person]
) -> tuple[MemberFacts, ...] | Unreadable:
    """Members linked to people (by account id, else email, else a mark). A member list or email
    lookup that failed leaves its earlier content in place: members whose result rests on it are
    marked ``stale`` so the findings diff keeps their last result (checks.md "A fetch that fails")."""
    members_snap = snaps.get(k_members(ws))
    why = _unreadable(members_snap)
    listed = members_snap.content if members_snap is not None and isinstance(members_snap.content, list) else None
    if listed is None or (why is not None and why.reason != "fetch_failed"):
        if why is not None and why.reason == "missing_scope":
            return Unreadable("missing_scope", scope=why.scope or "account", detail=why.detail)
        return why or Unreadable("not_fetched")
    members_stale = why is not None
    by_account = {p.bitbucket_account_id: p for p in people if p.bitbucket_account_id}
    by_email = {p.email: p for p in people}
    email_snap = snaps.get(k_emails(ws))
    links = email_snap.content if email_snap is not None and isinstance(email_snap.content, dict) else {}
    emails_stale = email_snap is not None and email_snap.stale_since is not None
    account_to_email = {acct: email for email, acct in (links.get("links") or {}).items()}
    lookup = {True: "available", False: "unavailable", None: "not_needed"}[links.get("available")]
    since_snap = snaps.get(k_member_since(ws))
    since: dict[str, Any] = since_snap.content if since_snap and isinstance(since_snap.content, dict) else {}
    marks = await store.records.marks(ws)
    out = []
    for raw in listed:
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
        linked_by = how if person else None
        stale: str | None = None
        if members_stale:
            stale = "members"
        elif emails_stale and linked_by in (None, "email"):
            stale = "email_links"
        began = since.get(m.user.key)
        out.append(
            MemberFacts(
                user=m.user,
                permission=m.permission,
                person=person,
                linked_by=linked_by,
                email_lookup=lookup,
                stale=stale,
                member_since=datetime.fromisoformat(began) if isinstance(began, str) else None,
            )
        )
    return tuple(out)


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
) -> PassReport:
    """One full pass over a workspace.

    When the repository list is unreadable, the repository results stand and are marked stale,
    the member tests are still read and written, and then the error is raised (the pass is
    retried)."""
    started = time.perf_counter()
    now = now or utcnow()
    stamp = iso(now)
    calls_before = client.calls()
    enabled = settings.enabled_checks
    fetcher = Fetcher(client, store, stamp)
    try:
        repos = await client.repositories(ws)
    except errors.BitbucketError as exc:
        await fetcher.failed(k_repos(ws), ws, "repos", exc)
        await _members_only(fetcher, store, settings, ws, now, alerts)
        raise
    fetcher.rows.append((k_repos(ws), ws, "repos", [r.uuid for r in repos]))
    sem = asyncio.Semaphore(settings.concurrency)

    async def one(repo: Repository) -> None:
        async with sem:
            await fetch_repository(fetcher, ws, repo, enabled)

    people = await store.records.people()
    async with asyncio.TaskGroup() as tg:
        for repo in repos:
            tg.create_task(one(repo))
        if MEMBER_CHECKS & set(enabled):
            tg.create_task(fetch_members(fetcher, ws, people))
    report = PassReport(workspace=ws, fetch_failures=fetcher.failures)
    report.snapshots_changed = await store.snapshots.put_many(fetcher.rows, stamp)
    # Repositories that left the workspace: drop their snapshots (their results retire below).
    known = {r.uuid for r in repos}
    snaps = await store.snapshots.load(ws)
    gone = [k for k, s in snaps.items() if s.kind != "repos" and ":" in k and _repo_of(k) not in (None, *known)]
    await store.snapshots.delete(gone)
    report.delta, report.rows_written = await record(store, settings, ws, now, alerts=alerts)
    report.api_calls = client.calls() - calls_before
    report.seconds = time.perf_counter() - started
    log.info(
        "reconcile.done",
        workspace=ws,
        calls=report.api_calls,
        written=report.rows_written,
        opened=len(report.delta.opened),
        resolved=len(report.delta.resolved),
        failures=report.fetch_failures,
        seconds=round(report.seconds, 2),
    )
    return report


async def _members_only(
    fetcher: Fetcher, store: Store, settings: Settings, ws: str, now: datetime, alerts: Alerts | None
) -> None:
    """The pass without the repository list: repository results stale, member tests as usual."""
    stale = [
        r for (check, _), r in (await store.results.load(ws)).items() if check in REPO_CHECKS and r.stale_since is None
    ]
    if stale:
        await store.results.apply(Delta(stale=stale), iso(now), "reconcile")
    if MEMBER_CHECKS & set(settings.enabled_checks):
        await fetch_members(fetcher, ws, await store.records.people())
        await store.snapshots.put_many(fetcher.rows, fetcher.now)
        await record(store, settings, ws, now, "reconcile", only_checks=MEMBER_CHECKS, alerts=alerts)


def _repo_of(key: str) -> str | None:
    kind, _, rest = key.partition(":")
    if kind in ("repo", "restrictions", "branching_model", "pipelines", "last_build"):
        return rest.split(":")[0] if rest.startswith("{") else rest
    return None


# -- the scheduler ------------------------------------------------------------------------------
MEMBERS_EVERY = 15 * 60.0
EXPIRY_EVERY = 60.0
RETENTION_EVERY = 6 * 3600.0


class Scheduler:
    """Appends ``lp:reconcile`` events within the budget: members and permissions every 15 minutes
    (a few calls), the full repository pass every ``LP_RECONCILE_INTERVAL`` with ±10 % jitter;
    sweeps expiries of evidence and exceptions; purges old events. Passes run at low budget
    priority, so a share of the hourly budget always stays free for webhook-driven fetches."""

    def __init__(self, service: Any, *, rng: random.Random | None = None, clock: Callable[[], float] = time.time):
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
        for conn in await self.service.connections():
            if conn.status != "active":
                continue
            for ws in conn.workspaces:
                tiers = [
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
            payload: dict[str, Any] = {"check": check}
            if ws:
                payload["workspace"] = ws
            ids += await self.service.internal_event("lp:expiry", payload)
        return ids

    async def run(self, every: float = 30.0) -> None:
        while True:
            self.alive_at = time.time()
            try:
                await self.tick()
            except Exception as exc:  # noqa: BLE001 - the scheduler must outlive one bad round
                log.error("scheduler.tick_failed", error=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(every)

"""Fetch: performs any ``Fetch`` through the client and stores its snapshot.

One path for every trigger: the worker's batches and the full pass hand their planned fetches
to :func:`fetch_all`, which reads each resource once with bounded concurrency and stores what
it read (``store.snapshots``). Failure stays where it happened (docs/checks.md "A fetch that fails"):

- a resource that cannot be read (any status, timeout, unreadable body, a ``next`` link to
  another host) turns only its own snapshot stale and is reported in ``Outcome.failed``;
- a 403 is no failure: it is stored as an ``unreadable`` marker naming the missing scope or
  permission, which the tests turn into ``unknown`` with the reason;
- a wait longer than the caller's ``defer_after`` (a 429's Retry-After, a spent budget) is no
  failure either: the fetch is reported in ``Outcome.deferred`` for the caller to re-queue.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from app import errors
from app.bitbucket.client import DEFER_AFTER, PATIENCE, BitbucketClient, Patience
from app.bitbucket.models import BranchRestriction, Member
from app.checks.base import Person
from app.logs import get_logger
from app.models import utcnow
from app.planner import Fetch, KnownRepo, repo_fetches
from app.store import Store
from app.store.snapshots import (
    k_build,
    k_emails,
    k_member_since,
    k_members,
    k_model,
    k_pipelines,
    k_prs,
    k_repo,
    k_repos,
    k_restrictions,
)

log = get_logger("fetch")

Row = tuple[str, str, str, object]  # snapshot key, workspace, kind, content (JSON: a model dump, a marker)


class Fetcher:
    """Reads resources through the client and turns each outcome into a snapshot row."""

    def __init__(self, client: BitbucketClient, store: Store, now: str) -> None:
        self.client = client
        self.store = store
        self.now = now
        self.rows: list[Row] = []
        self.failures = 0
        self.errors: dict[str, str] = {}  # snapshot key -> the error that left it stale

    async def get(
        self, key: str, ws: str, kind: str, read: Callable[[], Awaitable[object]], keep: bool = True
    ) -> object:
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
            roles = {}  # access tokens cannot read permissions (docs/bitbucket-facts.md)
        return [_dump(m.model_copy(update={"permission": roles.get(m.user.key)})) for m in found]

    listed = await fetcher.get(k_members(ws), ws, "members", members)
    if not isinstance(listed, list):
        return  # failed (the snapshot is marked stale) or refused (a scope marker is stored)
    member_keys = {Member.model_validate(m).user.key for m in listed}
    await _track_membership(fetcher, ws, member_keys)
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


async def _track_membership(fetcher: Fetcher, ws: str, keys: set[str]) -> None:
    """Keep when each membership began (first seen in the list): someone who leaves and comes back
    starts a new membership, which an earlier workspace-wide 2SV report does not cover. Members
    already listed when tracking began (in the stored list: the new one is stored after this)
    are recorded with no start (``null``)."""
    snap = await fetcher.store.snapshots.get(k_member_since(ws))
    if snap is not None and isinstance(snap.content, dict):
        known: dict[str, str | None] = snap.content
    else:
        previous = await fetcher.store.snapshots.get(k_members(ws))  # read only when tracking begins
        before = previous.content if previous is not None and isinstance(previous.content, list) else []
        known = {Member.model_validate(m).user.key: None for m in before}
    seen_at = utcnow().isoformat()  # to the microsecond: compared with evidence upload times
    since = {key: known[key] if key in known else seen_at for key in sorted(keys)}
    fetcher.rows.append((k_member_since(ws), ws, "member_since", since))


async def perform(fetcher: Fetcher, f: Fetch, enabled: Iterable[str], people: Sequence[Person] = ()) -> None:
    """Read the resources of one ``Fetch`` into ``fetcher.rows`` (its failures into ``fetcher.errors``).

    ``ref`` names the repository in the path: its slug in a pass, its uuid otherwise (``{repo_slug}``
    accepts a slug or a ``{uuid}`` in braces: docs/bitbucket-facts.md, "Conventions")."""
    client, ws, uuid = fetcher.client, f.workspace, f.repo_uuid or ""
    ref = f.ref or uuid
    if f.kind == "repo_full":
        try:
            repo = await client.repository(ws, uuid)
        except errors.NotFoundError:
            return  # gone again before we read it
        fetcher.rows.append((k_repo(repo.uuid), ws, "repo", repo.model_dump(mode="json")))
        listed = KnownRepo(uuid=repo.uuid, mainbranch=repo.mainbranch, slug=repo.slug)
        for part in repo_fetches(ws, listed, frozenset(enabled)):
            await perform(fetcher, part, enabled, people)
    elif f.kind == "repo":
        try:
            repo = await client.repository(ws, uuid)
        except errors.NotFoundError:
            return
        fetcher.rows.append((k_repo(uuid), ws, "repo", repo.model_dump(mode="json")))
    elif f.kind == "restrictions":
        await fetch_restrictions(fetcher, ws, uuid, ref)
    elif f.kind == "branching_model":
        await fetcher.get(k_model(uuid), ws, "branching_model", lambda: _dumped(client.branching_model(ws, ref)))
    elif f.kind == "pipelines":
        await fetch_pipelines(fetcher, ws, uuid, ref, f.branch)
    elif f.kind == "last_build":
        branch = f.branch or ""
        await fetcher.get(k_build(uuid), ws, "last_build", lambda: _dumped(client.latest_pipeline(ws, ref, branch)))
    elif f.kind == "pr_count":
        await fetcher.get(k_prs(uuid), ws, "pr_count", lambda: client.open_pullrequest_count(ws, ref))
    elif f.kind == "repos":
        for repo in await client.repositories(ws):
            fetcher.rows.append((k_repo(repo.uuid), ws, "repo", repo.model_dump(mode="json")))
    elif f.kind in ("members", "emails"):
        await fetch_members(fetcher, ws, people)
    else:  # pragma: no cover - the planner emits only the kinds above
        raise ValueError(f"unknown fetch kind {f.kind}")


def snapshot_of(f: Fetch) -> tuple[str, str]:
    """The snapshot (key, kind) a fetch writes, which turns stale when the fetch fails."""
    uuid = f.repo_uuid or ""
    by_kind = {
        "repo": (k_repo(uuid), "repo"),
        "repo_full": (k_repo(uuid), "repo"),
        "restrictions": (k_restrictions(uuid), "restrictions"),
        "branching_model": (k_model(uuid), "branching_model"),
        "pipelines": (k_pipelines(uuid), "pipelines"),
        "last_build": (k_build(uuid), "last_build"),
        "pr_count": (k_prs(uuid), "pr_count"),
        "members": (k_members(f.workspace), "members"),
        "emails": (k_emails(f.workspace), "email_links"),
    }
    return by_kind.get(f.kind, (k_repos(f.workspace), "repos"))


@dataclass
class Outcome:
    """What a round of fetches read, and what it could not read yet."""

    rows: list[Row] = field(default_factory=list)
    changed: int = 0  # snapshots whose content changed
    failures: int = 0  # resources that could not be read
    failed: dict[str, str] = field(default_factory=dict)  # fetch key -> why it could not be read
    tainted: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))  # ws -> repos whose metadata failed
    deferred: dict[str, float] = field(default_factory=dict)  # fetch key -> seconds Bitbucket asks us to wait
    waiting: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))  # ws -> repos with a deferred fetch


async def fetch_all(
    client: BitbucketClient,
    store: Store,
    fetches: Sequence[Fetch],
    *,
    enabled: Iterable[str],
    now: str,
    concurrency: int,
    defer_after: float | None = None,
) -> Outcome:
    """Perform every fetch (each once, at most ``concurrency`` at a time) and store the snapshots.

    With ``defer_after`` set, a longer wait for Bitbucket re-queues the fetch (``Outcome.deferred``)
    instead of blocking; without it the client waits (the full pass, at low priority)."""
    out = Outcome()
    enabled = frozenset(enabled)
    people: Sequence[Person] = ()
    if any(f.kind in ("members", "emails") for f in fetches):
        people = await store.records.people()
    sem = asyncio.Semaphore(concurrency)

    async def one(f: Fetch) -> None:
        # Each fetch has its own Fetcher: a failure is attributed to this fetch alone.
        if defer_after is not None:
            DEFER_AFTER.set(defer_after)  # this task only: a long wait re-queues, never blocks
        fetcher = Fetcher(client, store, now)
        async with sem:
            try:
                await perform(fetcher, f, enabled, people)
            except errors.Deferred as exc:
                out.deferred[f.key] = exc.retry_after or defer_after or 0.0
                if f.repo_uuid:
                    out.waiting[f.workspace].add(f.repo_uuid)
                log.info("fetch.deferred", key=f.key, seconds=round(out.deferred[f.key], 1))
                return  # what it read so far is read again with the rest
            except Exception as exc:  # noqa: BLE001 - one resource never fails the others
                key, kind = snapshot_of(f)
                await fetcher.failed(key, f.workspace, kind, exc)
                if f.repo_uuid and f.kind in ("repo", "repo_full"):
                    out.tainted[f.workspace].add(f.repo_uuid)
        out.rows.extend(fetcher.rows)
        out.failures += fetcher.failures
        if fetcher.errors:
            out.failed[f.key] = next(iter(fetcher.errors.values()))

    # Reads of one round wait out a run of 429s together, and give up together (a pass sets one
    # Patience for all its rounds: app/worker.py).
    patience = PATIENCE.set(Patience()) if PATIENCE.get() is None else None
    try:
        async with asyncio.TaskGroup() as tg:
            for f in fetches:
                tg.create_task(one(f))
    finally:
        if patience is not None:
            PATIENCE.reset(patience)
    out.changed = await store.snapshots.put_many(out.rows, now)
    return out

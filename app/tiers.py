"""The cheap tiers between full passes: spend the spare budget where drift hides (issue 13, item 3).

Bitbucket sends no webhook for branch-restriction changes, and it is not certain that it sends
``repo:updated`` when a repository's main branch, project or visibility changes (its documented
``changes`` keys are name, full_name, description, language, website, links; bitbucket-facts.md).
Two tiers poll for that drift, as ``lp:reconcile`` events like the full pass (same event log, same
worker, same fetch → evaluate → record road):

- **repositories** (every ``LP_REPOS_TIER_INTERVAL``, default 5 min): re-lists the repositories,
  pages only, trimmed with ``fields=`` (``next`` named, or Bitbucket drops it). A repository whose
  main branch, project or visibility moved, or that is new, gets a targeted re-check: its
  metadata snapshot, its branch restrictions, and its repository tests re-evaluated, whether or not
  a webhook came.
- **restrictions** (every minute): re-reads branch restrictions as long as the budget has spare
  low-priority calls, leaving free what one run of the repositories and members tiers needs
  (``keep``) and the webhook share (LP_WEBHOOK_BUDGET_SHARE) untouched: oldest reading first,
  never-read first, production repositories first among equals. Each repository's restriction
  freshness (the age of its last good reading) then stays near the physical bound
  ``repositories x calls / spare calls per hour``.

:func:`freshness` reads those ages back for the API and ``/metrics``. The order and the ``keep``
are pure functions (:func:`restriction_order`, :func:`tier_keep`) that ``bench/budget.py`` drives
with a simulated clock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TypedDict

from app.bitbucket import paths
from app.bitbucket.client import KEEP, MAX_PAGELEN, BitbucketClient
from app.bitbucket.models import Repository

# -- hooks into the pass code (app/fetch.py, app/evaluate.py) --------------------------------------
from app.evaluate import Alerts, record
from app.fetch import Fetcher, fetch_restrictions, perform
from app.findings import Delta
from app.logs import get_logger
from app.models import iso, utcnow
from app.planner import BRANCH_CHECKS, REPO_CHECKS, KnownRepo, repo_fetches
from app.settings import Settings
from app.store import Store
from app.store.facts import classify
from app.store.snapshots import k_members, k_repo, k_repos, k_restrictions

log = get_logger("tiers")

REPOS = "repos"
RESTRICTIONS = "restrictions"
TIERS = frozenset({REPOS, RESTRICTIONS})
RESTRICTIONS_EVERY = 60.0  # the restrictions tier looks for spare budget every minute
RESTRICTIONS_MAX_PER_RUN = 200  # one run stays short; the next minute goes on
MEMBERS_EVERY = 15 * 60.0  # the members tier's period (app.scheduler.MEMBERS_EVERY)
# SPEC "Partial responses": only what Repository.from_api reads, plus ``next`` (else it is dropped).
REPO_FIELDS = ",".join(
    [
        "next",
        "size",
        *(
            f"values.{f}"
            for f in (
                "uuid",
                "full_name",
                "slug",
                "name",
                "workspace.slug",
                "is_private",
                "language",
                "mainbranch.name",
                "project.key",
                "project.name",
                "updated_on",
            )
        ),
    ]
)
MOVES = ("mainbranch", "project_key", "is_private")  # what the repositories tier watches


def schedule(settings: Settings) -> list[tuple[str, float, float]]:
    """(tier, period, jitter) for the scheduler."""
    return [(REPOS, settings.repos_tier_interval, 0.0), (RESTRICTIONS, RESTRICTIONS_EVERY, 0.0)]


# -- pure parts --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Reading:
    """A repository as the restrictions tier sees it."""

    uuid: str
    production: bool
    read_at: str | None  # ISO time of the last good restrictions reading; None: never read


# One repository's restriction freshness: ``freshness`` always gives every key; ``total=False`` lets a
# reader take ``{}`` for a repository it has none for. "class" is a keyword, hence this spelling.
Freshness = TypedDict("Freshness", {"class": str, "read_at": str | None, "age_seconds": float | None}, total=False)


def restriction_order(readings: Sequence[Reading]) -> list[str]:
    """Which repositories to read next: never read first, then the oldest reading; production
    first among equals (a full pass stamps every reading with one time)."""
    ranked = sorted(readings, key=lambda r: (r.read_at is not None, r.read_at or "", not r.production, r.uuid))
    return [r.uuid for r in ranked]


def _pages(repositories: int, members: int) -> tuple[int, int]:
    repo_pages = max(1, math.ceil(repositories / MAX_PAGELEN))
    member_pages = 2 * max(1, math.ceil(members / MAX_PAGELEN))  # members and permissions
    return repo_pages, member_pages


def tier_keep(repositories: int, members: int) -> int:
    """Slots the restrictions tier leaves free: one run of the repositories and the members tiers
    (their past calls are in the window already; the rolling hour frees slots as it goes)."""
    repo_pages, member_pages = _pages(repositories, members)
    return repo_pages + member_pages


def tier_calls_per_hour(
    repositories: int, members: int, repos_interval: float, members_every: float = MEMBERS_EVERY
) -> float:
    """Calls an hour the repositories and members tiers spend (for the physical bound)."""
    repo_pages, member_pages = _pages(repositories, members)
    return repo_pages * 3600 / repos_interval + member_pages * 3600 / members_every


def moved(old: Mapping[str, object] | None, new: Repository) -> list[str]:
    """The watched fields of a repository that changed since its last snapshot."""
    if old is None:
        return ["new"]
    return [f for f in MOVES if old.get(f) != getattr(new, f)]


# -- the tiers ---------------------------------------------------------------------------------
async def run(
    tier: str, client: BitbucketClient, store: Store, settings: Settings, ws: str, alerts: Alerts | None = None
) -> tuple[Delta, int]:
    """One run of a tier for one workspace (the worker's hook); returns the delta and rows written."""
    if tier == REPOS:
        return await repositories_tier(client, store, settings, ws, alerts)
    return await restrictions_tier(client, store, settings, ws, alerts)


async def repositories_tier(
    client: BitbucketClient, store: Store, settings: Settings, ws: str, alerts: Alerts | None = None
) -> tuple[Delta, int]:
    """Re-list repositories (pages only) and re-check those whose main branch, project or
    visibility moved, or that are new."""
    now = utcnow()
    if not await store.snapshots.exists(k_repos(ws)):
        # No full pass yet: the first one reads everything. Told before listing (at 10,000
        # repositories, a listing held beside the first pass's own made serve's peak RSS).
        return Delta(), 0
    fetcher = Fetcher(client, store, iso(now))
    rows = await client.collect(paths.REPOSITORIES, {"pagelen": MAX_PAGELEN, "fields": REPO_FIELDS}, workspace=ws)
    listed = [Repository.from_api(r) for r in rows]
    snaps = await store.snapshots.load(ws, kinds=("repos", "repo"))
    known = snaps.get(k_repos(ws))
    if known is None:
        return Delta(), 0  # no full pass yet: the first one reads everything
    uuids = list(known.content) if known and known.content else []
    enabled = settings.enabled_checks
    changed: set[str] = set()
    for repo in listed:
        old = snaps.get(k_repo(repo.uuid))
        what = moved(old.content if old else None, repo)
        if not what:
            continue
        changed.add(repo.uuid)
        log.info("tier.repository_moved", workspace=ws, repository=repo.full_name, changed=what)
        fetcher.rows.append(
            (k_repo(repo.uuid), ws, "repo", {**(old.content if old else {}), **repo.model_dump(mode="json")})
        )
        if old is None:
            known_repo = KnownRepo(uuid=repo.uuid, mainbranch=repo.mainbranch, slug=repo.slug)
            for f in repo_fetches(ws, known_repo, frozenset(enabled)):
                await perform(fetcher, f, enabled)
        else:
            if repo.mainbranch and BRANCH_CHECKS & set(enabled):
                await fetch_restrictions(fetcher, ws, repo.uuid, repo.uuid)
        if repo.uuid not in uuids:
            uuids.append(repo.uuid)
    if not changed:
        return Delta(), 0
    fetcher.rows.append((k_repos(ws), ws, "repos", uuids))
    await store.snapshots.put_many(fetcher.rows, fetcher.now)
    return await record(  # at the moment it knows: after its reads (which may have waited)
        store, settings, ws, utcnow(), "tier:repos", subjects=changed, only_checks=REPO_CHECKS, alerts=alerts
    )


async def readings(store: Store, ws: str) -> tuple[list[Reading], dict[str, str]]:
    """Repositories with a main branch, their class and last good restrictions reading; and
    uuid → slug-free reference (the uuid) to read them by."""
    snaps = await store.snapshots.load(ws, kinds=("repos", "repo"))
    read_at = await store.snapshots.fetched(ws, "restrictions")  # when, not what: no content parsed
    explicit = await store.records.classes(ws)
    rules = await store.records.rules()
    listed = snaps.get(k_repos(ws))
    out: list[Reading] = []
    names: dict[str, str] = {}
    for uuid in listed.content if listed and listed.content else []:
        snap = snaps.get(k_repo(uuid))
        if snap is None or snap.content is None:
            continue
        repo = Repository.model_validate(snap.content)
        if not repo.mainbranch:
            continue  # empty: the branch tests are not applicable, nothing to read
        cls, _ = classify(repo, explicit, rules)
        out.append(Reading(uuid, cls == "production", read_at.get(k_restrictions(uuid))))
        names[uuid] = repo.full_name
    return out, names


async def pass_order(store: Store, ws: str, repos: Sequence[KnownRepo]) -> list[KnownRepo]:
    """The full pass reads repositories in the restrictions tier's order (new ones first, then the
    oldest restrictions reading), so a pass and the tier together read each once per round."""
    found, _ = await readings(store, ws)
    rank = {uuid: i for i, uuid in enumerate(restriction_order(found))}
    return sorted(repos, key=lambda r: rank.get(r.uuid, -1))


async def restrictions_tier(
    client: BitbucketClient, store: Store, settings: Settings, ws: str, alerts: Alerts | None = None
) -> tuple[Delta, int]:
    """Re-read branch restrictions while the budget has spare low-priority calls."""
    if not BRANCH_CHECKS & set(settings.enabled_checks):
        return Delta(), 0
    found, _ = await readings(store, ws)
    members = await store.snapshots.get(k_members(ws))
    n_members = len(members.content) if members and isinstance(members.content, list) else 0
    keep = tier_keep(len(found), n_members)
    token = KEEP.set(keep)
    now = utcnow()
    fetcher = Fetcher(client, store, iso(now))
    done: set[str] = set()
    try:
        for uuid in restriction_order(found)[:RESTRICTIONS_MAX_PER_RUN]:
            if client.budget.spare(keep) < 1:  # (a branching-model read after it waits for its slot)
                break
            await fetch_restrictions(fetcher, ws, uuid, uuid)
            done.add(uuid)
    finally:
        KEEP.reset(token)
    if not done:
        return Delta(), 0
    await store.snapshots.put_many(fetcher.rows, fetcher.now)
    log.info("tier.restrictions_read", workspace=ws, repositories=len(done), keep=keep)
    return await record(
        store,
        settings,
        ws,
        utcnow(),  # after its reads, as the repositories tier
        "tier:restrictions",
        subjects=done,
        only_checks=BRANCH_CHECKS & frozenset(settings.enabled_checks),
        alerts=alerts,
    )


# -- freshness -----------------------------------------------------------------------------------
def age_seconds(read_at: str | None, now: datetime) -> float | None:
    if read_at is None:
        return None
    return max(0.0, (now - datetime.fromisoformat(read_at.replace("Z", "+00:00"))).total_seconds())


async def freshness(store: Store, ws: str, now: datetime | None = None) -> dict[str, Freshness]:
    """uuid → {"class": "production" | "other", "read_at", "age_seconds"} for the repositories
    whose restrictions matter (a main branch). ``age_seconds`` is None when never read."""
    now = now or utcnow()
    found, _ = await readings(store, ws)
    return {
        r.uuid: {
            "class": "production" if r.production else "other",
            "read_at": r.read_at,
            "age_seconds": age_seconds(r.read_at, now),
        }
        for r in found
    }

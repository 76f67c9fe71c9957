"""Pure: event → resources to re-fetch → (test, subject) pairs to re-evaluate.

An event is a hint, never the state itself (a captured body can be replayed): the planner only
decides what to read again. Repositories are addressed by uuid, so renames are harmless. Which
tests an event concerns follows from what each test declares it reads (``Check.fetches``):
repository tests, branch tests (branch restrictions), build tests (the newest main-branch
pipeline), member tests (the member list).

| event | re-fetch | re-evaluate |
|---|---|---|
| ``repo:push``, unknown repository | the repository in full | every repository test of it |
| ``repo:push``, branch created/deleted on an empty repository | repository, restrictions | its repository tests |
| ``repo:push`` touching the main branch | newest pipeline on it (a build test on) | the build tests |
| ``repo:push`` touching a branching-model branch | branching model | the three branch tests |
| ``repo:push``, other branches | nothing | nothing |
| ``repo:updated`` | repository metadata (the main branch or project may have moved) | its repository tests |
| ``repo:created``, ``repo:imported``, ``repo:fork`` (the fork) | the new repository in full | its repository tests |
| ``repo:transfer`` | the repository in full (it may have arrived) | its repository tests |
| ``repo:deleted`` | nothing | its results are retired, with a transition |
| ``pullrequest:created/fulfilled/rejected`` | open pull-request count | nothing (metadata only) |
| other ``pullrequest:*`` | nothing | nothing |
| ``repo:commit_status_*`` on the main branch | newest pipeline on it (a build test on) | the build tests |
| ``project:updated`` | the repository list (project keys) | every repository test of the workspace |
| ``lp:reconcile`` (tier ``full``) | the repository list, then everything (:func:`full_pass`) | everything |
| ``lp:reconcile`` (tier ``members``) | members, permissions, email links | the member tests |
| ``lp:classification`` | nothing (restrictions if never read) | the repository's tests |
| ``lp:personnel`` | for new emails to match: email links and the member list | all member tests, else the email tests |
| ``lp:evidence`` | nothing | the tests that accept evidence |
| ``lp:exception``, ``lp:expiry`` | nothing | the named test and subject |
| anything else | nothing (recorded as ignored) | nothing |
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from app.checks import (
    BRANCH_CHECKS as BRANCH_CHECKS,
)
from app.checks import (
    BUILD_CHECKS,
    EMAIL_CHECKS,
    EVIDENCE_CHECKS,
    PIPELINES_CHECKS,
)
from app.checks import MEMBER_CHECKS as MEMBER_CHECKS
from app.checks import REPO_CHECKS as REPO_CHECKS

# The webhook events the product subscribes to (intersected with GET /hook_events/{subject}).
USED_EVENTS = frozenset(
    {
        "repo:push",
        "repo:updated",
        "repo:created",
        "repo:imported",
        "repo:transfer",
        "repo:deleted",
        "repo:fork",
        "pullrequest:created",
        "pullrequest:fulfilled",
        "pullrequest:rejected",
        "repo:commit_status_created",
        "repo:commit_status_updated",
        "project:updated",
    }
)


@dataclass(frozen=True, order=True)
class Fetch:
    """One resource to read again. ``key`` is what coalescing is by."""

    kind: str  # repo_full | repo | restrictions | branching_model | pipelines | last_build | pr_count | repos
    #            | members | emails
    workspace: str
    repo_uuid: str | None = None
    branch: str | None = None
    ref: str | None = field(default=None, compare=False)  # the repository in the path (slug); uuid if None

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.workspace}:{self.repo_uuid or ''}:{self.branch or ''}"


@dataclass(frozen=True)
class KnownRepo:
    """What the planner may know of a repository from the snapshots."""

    uuid: str
    mainbranch: str | None
    model_branches: frozenset[str] = frozenset()
    slug: str | None = None


@dataclass(frozen=True)
class Plan:
    fetches: tuple[Fetch, ...] = ()
    repos: tuple[str, ...] = ()  # repository uuids whose tests to re-run
    members: bool = False  # re-run the member tests of the workspace
    workspace_checks: bool = False  # re-run every test of the workspace
    retire: tuple[str, ...] = ()  # repository uuids that left the workspace
    tier: str | None = None  # full | members: a reconcile pass
    checks: frozenset[str] = field(default_factory=frozenset)  # limit re-evaluation to these tests (empty: all)
    ignored: bool = False


def _full(ws: str, uuid: str) -> tuple[Fetch, ...]:
    return (Fetch("repo_full", ws, uuid),)


def plan(
    event_key: str, payload: Mapping[str, object], known: Mapping[str, KnownRepo], enabled: frozenset[str]
) -> Plan:
    ws = str(payload.get("workspace") or "")
    uuid = payload.get("repository_uuid")
    builds_on = bool(BUILD_CHECKS & enabled)

    if event_key == "lp:reconcile":
        return Plan(tier=str(payload.get("tier", "full")))
    if event_key == "lp:classification":
        repo = known.get(str(uuid)) if uuid else None
        needed: tuple[Fetch, ...] = () if repo is not None or not uuid else (Fetch("repo_full", ws, str(uuid)),)
        return Plan(fetches=needed, repos=(str(uuid),) if uuid else (), workspace_checks=uuid is None)
    if event_key == "lp:personnel":
        # Matching new emails reads the member list again (app.fetch.fetch_members): every member
        # test then follows what was read, as after the members tier (found by the soak, seed 707:
        # a list refused for want of ``account`` left the other member tests' results as they were,
        # neither unknown nor stale, and a later failed read could not mark them stale).
        new_emails = bool(payload.get("new_emails"))
        return Plan(
            fetches=(Fetch("emails", ws),) if new_emails else (),
            members=True,
            checks=MEMBER_CHECKS if new_emails else EMAIL_CHECKS,
        )
    if event_key == "lp:evidence":
        return Plan(members=True, workspace_checks=True, checks=frozenset(EVIDENCE_CHECKS))
    if event_key in ("lp:exception", "lp:expiry"):
        check = payload.get("check")
        return Plan(workspace_checks=True, checks=frozenset({str(check)}) if check else frozenset())
    if not ws or event_key not in USED_EVENTS:
        return Plan(ignored=True)

    if event_key == "project:updated":
        return Plan(fetches=(Fetch("repos", ws),), workspace_checks=True, checks=REPO_CHECKS & enabled)
    if not uuid:
        return Plan(ignored=True)
    uuid = str(uuid)
    repo = known.get(uuid)

    if event_key == "repo:deleted":
        return Plan(retire=(uuid,))
    if event_key in ("repo:created", "repo:imported", "repo:transfer"):
        return Plan(fetches=_full(ws, uuid), repos=(uuid,))
    if event_key == "repo:fork":
        fork = payload.get("fork_uuid")
        return Plan(fetches=_full(ws, str(fork)), repos=(str(fork),)) if fork else Plan()
    if repo is None:
        # A repository we have never read: read it in full (it may be new, or the pass missed it).
        return Plan(fetches=_full(ws, uuid), repos=(uuid,))
    if event_key == "repo:updated":
        return Plan(fetches=(Fetch("repo", ws, uuid),), repos=(uuid,))
    if event_key.startswith("pullrequest:"):
        return Plan(fetches=(Fetch("pr_count", ws, uuid),))
    if event_key.startswith("repo:commit_status_"):
        branches = _names(payload.get("branches"))
        if builds_on and repo.mainbranch in branches:
            return Plan(
                fetches=(Fetch("last_build", ws, uuid, repo.mainbranch),),
                repos=(uuid,),
                checks=BUILD_CHECKS & enabled,
            )
        return Plan()
    # repo:push
    branches = _names(payload.get("branches"))
    created = _names(payload.get("branches_created"))
    deleted = _names(payload.get("branches_deleted"))
    fetches: list[Fetch] = []
    checks: set[str] = set()
    if repo.mainbranch is None and (created or branches):
        # The first push to an empty repository gives it a main branch.
        return Plan(fetches=(Fetch("repo", ws, uuid), Fetch("restrictions", ws, uuid)), repos=(uuid,))
    if repo.mainbranch in deleted:
        return Plan(fetches=(Fetch("repo", ws, uuid),), repos=(uuid,))
    if builds_on and repo.mainbranch in branches:
        fetches.append(Fetch("last_build", ws, uuid, repo.mainbranch))
        checks |= BUILD_CHECKS
    if (created | deleted) & repo.model_branches:
        fetches.append(Fetch("branching_model", ws, uuid))
        checks |= BRANCH_CHECKS
    if not fetches:
        return Plan()
    return Plan(fetches=tuple(fetches), repos=(uuid,), checks=frozenset(checks & enabled))


def _names(value: object) -> set[object]:
    """``set(value or ())`` for a list of names in a payload (``branches``...): a value that is not
    a list raises, so a malformed event fails (retried, then dead) instead of planning nothing."""
    if not value:
        return set()
    if not isinstance(value, Iterable):
        raise TypeError(f"'{type(value).__name__}' object is not iterable")
    return set(value)


def repo_fetches(ws: str, repo: KnownRepo, enabled: frozenset[str]) -> list[Fetch]:
    """What reading one repository in full means, beyond its metadata: its branch restrictions
    (with a main branch and a branch test on) and its Pipelines (a test that reads them on). A pass
    does this for every listed repository; ``repo_full`` for one."""
    # No test needs the open pull-request count: pull-request webhooks keep it current (issue 13).
    fetches: list[Fetch] = []
    if repo.mainbranch and BRANCH_CHECKS & enabled:
        fetches.append(Fetch("restrictions", ws, repo.uuid, ref=repo.slug))
    if PIPELINES_CHECKS & enabled:
        fetches.append(Fetch("pipelines", ws, repo.uuid, repo.mainbranch, ref=repo.slug))
    return fetches


def full_pass(ws: str, tier: str, listed: Sequence[KnownRepo], enabled: frozenset[str]) -> Plan:
    """A pass is just a plan: every fetch an enabled test needs, for the repositories ``listed``.

    Tier ``members`` reads the members, permissions and email links and re-runs the member tests;
    tier ``full`` reads every listed repository in full (:func:`repo_fetches`), then the members
    (a member test on), and re-runs every test."""
    if tier == "members":
        return Plan(fetches=(Fetch("members", ws),), members=True, checks=MEMBER_CHECKS, tier=tier)
    fetches = [f for r in listed for f in repo_fetches(ws, r, enabled)]
    if MEMBER_CHECKS & enabled:
        fetches.append(Fetch("members", ws))
    return Plan(fetches=tuple(fetches), repos=tuple(r.uuid for r in listed), workspace_checks=True, tier=tier)


def coalesce(plans: list[Plan]) -> tuple[list[Fetch], list[Plan]]:
    """Union the fetches of several plans: one fetch per resource however many events asked.

    A full read of a repository subsumes its partial reads.
    """
    full = {(f.workspace, f.repo_uuid) for p in plans for f in p.fetches if f.kind == "repo_full"}
    out: dict[str, Fetch] = {}
    for p in plans:
        for f in p.fetches:
            if f.kind != "repo_full" and (f.workspace, f.repo_uuid) in full:
                continue
            out.setdefault(f.key, f)
    return sorted(out.values()), plans

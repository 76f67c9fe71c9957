"""Pure: the inputs every test reads (facts), its context, and the Check type.

Facts are assembled from stored snapshots by the reconcile and the worker; a test never fetches.
A fact that could not be read carries why: ``missing_scope`` (the credential lacks a scope),
``missing_permission`` (the credential's user lacks a Bitbucket permission) or ``fetch_failed``
(5xx, timeout, 429 after retries), so a test can answer ``unknown`` or let the findings diff keep
the last result as stale, never ``fail``.

Every ``unknown`` says why in ``details.reason``, one of :data:`UNKNOWN_REASONS` (checks.md
"Results"), and, where the user can fix it, how in ``details.fix`` and the message.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from app.bitbucket.models import BranchingModel, BranchRestriction, Pipeline, PipelinesConfig, Repository, User
from app.models import Result

# ``details.reason`` of an ``unknown`` result: a closed set.
SCOPE_MISSING = "scope_missing"  # the credential lacks an OAuth scope (details.missing_scope names it)
PERMISSION_MISSING = "permission_missing"  # the credential's user lacks a Bitbucket permission
NOT_LINKED = "not_linked"  # a member linked to no one in the personnel directory
OWNER_MISSING = "owner_missing"  # a service-account / external entry that names no owner
FETCH_FAILED = "fetch_failed"  # a fetch failed and there is no earlier good data
UNKNOWN_REASONS = frozenset({SCOPE_MISSING, PERMISSION_MISSING, NOT_LINKED, OWNER_MISSING, FETCH_FAILED})


@dataclass(frozen=True)
class Unreadable:
    """Why a fact is missing: a scope the credential lacks, a permission its user lacks, or a
    failed fetch."""

    reason: str  # missing_scope | missing_permission | fetch_failed | not_fetched
    scope: str | None = None
    detail: str = ""


@dataclass(frozen=True)
class RepoFacts:
    repo: Repository
    repo_class: str | None  # production | non-production | None (unclassified)
    class_source: str | None = None  # explicit | rule:<n>
    restrictions: tuple[BranchRestriction, ...] | Unreadable = Unreadable("not_fetched")
    branching_model: BranchingModel | Unreadable | None = None
    pipelines: PipelinesConfig | Unreadable = Unreadable("not_fetched")
    last_build: Pipeline | None = None
    open_pullrequests: int | None = None


@dataclass(frozen=True)
class Person:
    """An entry of the personnel directory."""

    email: str
    name: str
    kind: str  # employee | contractor | service-account | external
    status: str  # active | offboarded
    offboarded_on: str | None = None
    bitbucket_account_id: str | None = None
    owner: str | None = None


@dataclass(frozen=True)
class MemberFacts:
    user: User
    permission: str | None = None
    person: Person | None = None
    linked_by: str | None = None  # account_id | email | mark
    email_lookup: str = "unavailable"  # available | unavailable | not_needed
    # What this member's results rest on that could not be refreshed: ``members`` (the member
    # list failed: every member test keeps its last result, stale) or ``email_links`` (the email
    # lookup failed: the offboarding test keeps its last result for members not linked by id).
    stale: str | None = None
    # When the product first saw this membership begin (None: already a member when tracking began).
    member_since: datetime | None = None


@dataclass(frozen=True)
class Evidence:
    id: int
    check: str
    workspace: str
    member: str | None  # account_id, or None for workspace-wide evidence
    uploaded_at: datetime
    expires_at: datetime
    covered_members: tuple[str, ...] | None = None  # a workspace 2SV report: who was a member then
    filename: str = ""


@dataclass(frozen=True)
class ExceptionGrant:
    """An accepted risk for (test, subject key): a repository uuid, a member account id or a
    workspace slug, never a name (checks.md "Exceptions")."""

    id: int
    check: str
    subject: str  # the key
    owner: str
    reason: str
    expires_at: datetime  # exclusive: 00:00 UTC the day after the "valid through" date


@dataclass(frozen=True)
class Context:
    """Settings and manual records a test may consult; ``now`` makes evaluation deterministic."""

    workspace: str
    now: datetime
    min_approvals: int = 1
    strict_merge_checks: bool = False
    evidence: tuple[Evidence, ...] = ()
    web_url: str = "https://bitbucket.org"


@dataclass(frozen=True)
class WorkspaceFacts:
    workspace: str
    repositories: tuple[RepoFacts, ...] = ()
    members: tuple[MemberFacts, ...] | Unreadable = ()
    exceptions: tuple[ExceptionGrant, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Check:
    """One security test. ``evaluate`` yields its results for a workspace, never raising."""

    id: str
    title: str
    severity: str
    subject_type: str
    default_on: bool
    evaluate: Callable[[WorkspaceFacts, Context], Sequence[Result]]
    doc: str = ""
    # The controls the test supports (a starting mapping: SOC 2 Trust Services Criteria and
    # ISO/IEC 27001:2022 Annex A), shown on the dashboard and in the audit pack.
    controls: tuple[str, ...] = ()


def repo_result(check: Check, facts: RepoFacts, status: str, message: str, **details: Any) -> Result:
    repo = facts.repo
    return Result(
        check=check.id,
        severity=check.severity,
        workspace=repo.workspace,
        subject_type="repository",
        subject_key=repo.uuid,
        subject=repo.full_name,
        subject_uuid=repo.uuid,
        subject_name=repo.name,
        status=status,
        message=message,
        details=details,
        fetch_failed=bool(details.pop("_fetch_failed", False)),
    )


def member_result(check: Check, ws: str, m: MemberFacts, status: str, message: str, **details: Any) -> Result:
    return Result(
        check=check.id,
        severity=check.severity,
        workspace=ws,
        subject_type="member",
        subject_key=m.user.key,
        subject=m.user.key,
        subject_uuid=m.user.uuid,
        subject_name=m.user.display_name or m.user.nickname,
        status=status,
        message=message,
        details=details,
        fetch_failed=bool(details.pop("_fetch_failed", False)),
    )


def out_of_scope(check: Check, facts: RepoFacts) -> Result | None:
    """``not_applicable`` for a repository classified non-production (checks.md repo-classified)."""
    if facts.repo_class == "non-production":
        return repo_result(
            check,
            facts,
            "not_applicable",
            f"{facts.repo.full_name} is classified non-production.",
            repo_class="non-production",
        )
    return None


def settings_url(ctx: Context, facts: RepoFacts, page: str = "branch-restrictions") -> str:
    return f"{ctx.web_url}/{facts.repo.full_name}/admin/{page}"


def valid_through(expires_at: datetime) -> date:
    """The last day an expiry covers: ``expires_at`` is exclusive (00:00 UTC the day after)."""
    return (expires_at - timedelta(microseconds=1)).date()


def scope_fix(scope: str) -> str:
    return f"Reconnect with an OAuth consumer or access token that has the `{scope}` scope."


def unreadable_result(check: Check, facts: RepoFacts, why: Unreadable, what: str) -> Result:
    if why.reason == "missing_scope":
        needs = f"the `{why.scope}` scope" if why.scope else "a scope Bitbucket did not name"
        fix = (
            scope_fix(why.scope)
            if why.scope
            else "Reconnect with an OAuth consumer or access token that has the scopes the Connections page lists."
        )
        return repo_result(
            check,
            facts,
            "unknown",
            f"Cannot read the {what} of {facts.repo.full_name}: the connection lacks {needs}. " + fix,
            reason=SCOPE_MISSING,
            missing_scope=why.scope,
            fix=fix,
        )
    if why.reason == "missing_permission":
        # The scope is granted, but Bitbucket also checks the connecting user's permission.
        fix = (
            f"Make the connected user an admin of the repository {facts.repo.full_name} (Repository settings → "
            "Repository permissions), or connect as a workspace admin or with a workspace access token."
        )
        return repo_result(
            check,
            facts,
            "unknown",
            f"Cannot read the {what} of {facts.repo.full_name}: Bitbucket refused it to the connected user "
            f"(not an admin of this repository: the scope is granted, the administrator permission is not). {fix}",
            reason=PERMISSION_MISSING,
            missing_permission="repository admin",
            fix=fix,
        )
    return repo_result(
        check,
        facts,
        "unknown",
        f"Could not read the {what} of {facts.repo.full_name} ({why.detail or why.reason}); "
        "the last known result stands until the next successful read.",
        _fetch_failed=True,
        reason=FETCH_FAILED,
        error=why.detail or why.reason,
    )


def members_unreadable(check: Check, ws: str, why: Unreadable) -> list[Result]:
    """The member tests when the member list cannot be read: with a missing scope or permission,
    one ``unknown`` for the workspace (no member can be seen); with a failed fetch and no earlier
    list, one ``unknown`` marked as a fetch failure; before the first read, nothing."""
    if why.reason == "not_fetched":
        return []
    if why.reason == "missing_scope":
        scope = why.scope or "account"
        status_details: dict[str, Any] = {
            "reason": SCOPE_MISSING,
            "missing_scope": scope,
            "fix": scope_fix(scope),
        }
        message = f"Cannot list the members of {ws}: the connection lacks the `{scope}` scope. " + scope_fix(scope)
    elif why.reason == "missing_permission":
        fix = f"Connect as a member of {ws} who may list its members, or use a workspace access token."
        status_details = {"reason": PERMISSION_MISSING, "missing_permission": "workspace member", "fix": fix}
        message = f"Cannot list the members of {ws}: Bitbucket refused it to the connected user. {fix}"
    else:
        status_details = {"reason": FETCH_FAILED, "error": why.detail or why.reason, "_fetch_failed": True}
        message = (
            f"Could not list the members of {ws} ({why.detail or why.reason}) and there is no earlier list; "
            "the result follows the next successful read."
        )
    return [
        Result(
            check=check.id,
            severity=check.severity,
            workspace=ws,
            subject_type="workspace",
            subject_key=ws,
            subject=ws,
            subject_name=ws,
            status="unknown",
            message=message,
            details={k: v for k, v in status_details.items() if k != "_fetch_failed"},
            fetch_failed=bool(status_details.get("_fetch_failed")),
        )
    ]


def stale_member_result(check: Check, ws: str, m: MemberFacts) -> Result:
    """A member whose data could not be refreshed: the findings diff keeps the last result, marked
    stale; with no earlier result this ``unknown`` is what is written."""
    what = "member list" if m.stale == "members" else "members' email lookup"
    return member_result(
        check,
        ws,
        m,
        "unknown",
        f"Could not read the {what} of {ws}; the last known result for {m.user.display_name or m.user.key} "
        "stands until the next successful read.",
        _fetch_failed=True,
        reason=FETCH_FAILED,
        error=f"{m.stale} fetch failed",
    )


PROJECT_LEVEL_NOTE = (
    "Project-level branch restrictions are not visible through Bitbucket's API (BCLOUD-22732): "
    "if this repository is protected only at project level, add the rule on the repository."
)


def branch_preamble(
    check: Check, facts: RepoFacts
) -> Result | tuple[tuple[BranchRestriction, ...], BranchingModel | None, str]:
    """What every branch test does first: scope, class, main branch, readable restrictions."""
    if (na := out_of_scope(check, facts)) is not None:
        return na
    main = facts.repo.mainbranch
    if main is None:
        return repo_result(
            check,
            facts,
            "not_applicable",
            f"{facts.repo.full_name} is empty: it has no main branch to protect yet.",
            reason="no_main_branch",
        )
    if isinstance(facts.restrictions, Unreadable):
        return unreadable_result(check, facts, facts.restrictions, "branch restrictions")
    model = facts.branching_model
    if isinstance(model, Unreadable):
        needs_model = any(r.branch_match_kind == "branching_model" for r in facts.restrictions)
        if needs_model:
            return unreadable_result(check, facts, model, "branching model")
        model = None
    return facts.restrictions, model, main

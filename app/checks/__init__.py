"""Pure: the eight security tests of checks.md, one module each, and the registry.

``evaluate(facts, ctx, enabled)`` runs the enabled tests on one workspace and applies exceptions:
a ``fail`` covered by an unexpired exception reads ``excepted``. An exception is matched by the
subject's key (repository uuid, member account id, workspace slug), never by its name, so it
follows a renamed repository and never covers a new one that takes the old name.
"""

from __future__ import annotations

from collections.abc import Iterable

from app.bitbucket.sansio import expand_scopes
from app.checks import (
    branch_protection_enforced,
    member_mfa_enabled,
    merge_requires_passing_builds,
    merge_requires_peer_review,
    offboarded_access_removed,
    pipelines_enabled,
    repo_classified,
    workspace_mfa_enforced,
)
from app.checks.base import Check, Context, ExceptionGrant, WorkspaceFacts, valid_through
from app.models import Result

REGISTRY: dict[str, Check] = {
    c.id: c
    for c in (
        repo_classified.CHECK,
        member_mfa_enabled.CHECK,
        workspace_mfa_enforced.CHECK,
        merge_requires_passing_builds.CHECK,
        merge_requires_peer_review.CHECK,
        branch_protection_enforced.CHECK,
        offboarded_access_removed.CHECK,
        pipelines_enabled.CHECK,
    )
}


def apply_exceptions(result: Result, grants: Iterable[ExceptionGrant], ctx: Context) -> Result:
    if result.status != "fail":
        return result
    for g in grants:
        if g.check == result.check and g.subject == result.subject_key and g.expires_at > ctx.now:
            details = dict(result.details)
            details["exception"] = {
                "id": g.id,
                "owner": g.owner,
                "reason": g.reason,
                "expires_at": g.expires_at.isoformat(),
                "would_be": "fail",
            }
            return result.model_copy(
                update={
                    "status": "excepted",
                    "message": f"Accepted risk, valid through {valid_through(g.expires_at).isoformat()} "
                    f"({g.owner}: {g.reason}). " + result.message,
                    "details": details,
                }
            )
    return result


def evaluate(facts: WorkspaceFacts, ctx: Context, enabled: Iterable[str]) -> list[Result]:
    out: list[Result] = []
    for check_id in enabled:
        for r in REGISTRY[check_id].evaluate(facts, ctx):
            out.append(apply_exceptions(r, facts.exceptions, ctx))
    return out


# What each OAuth scope is needed for (bitbucket-facts.md, SPEC per-operation security).
SCOPE_NEEDS: dict[str, tuple[tuple[str, ...], str]] = {
    "account": (("member-mfa-enabled", "offboarded-access-removed"), "list workspace members"),
    "repository": (
        (
            "repo-classified",
            "merge-requires-passing-builds",
            "merge-requires-peer-review",
            "branch-protection-enforced",
            "pipelines-enabled",
        ),
        "list repositories and their metadata",
    ),
    "repository:admin": (
        (
            "merge-requires-passing-builds",
            "merge-requires-peer-review",
            "branch-protection-enforced",
            "pipelines-enabled",
        ),
        "read branch restrictions and the Pipelines switch (no read-only alternative exists)",
    ),
    "pullrequest": ((), "count open pull requests (repository metadata, no test)"),
    "pipeline": ((), "show the newest build of the main branch (details of pipelines-enabled)"),
    "webhook": ((), "register the webhook: without it results are only as fresh as the last reconcile"),
}


def scope_report(
    granted: Iterable[str] | None, enabled: Iterable[str], not_admin: Iterable[str] = ()
) -> list[dict[str, object]]:
    """For each scope the product uses: granted or not, and which enabled tests its absence leaves
    ``unknown``. ``granted`` None means the credential does not say (access tokens). Bitbucket
    reports scopes unexpanded, so the documented implications are applied here (``pullrequest``
    grants ``repository``). ``not_admin``: repositories whose admin-only reads were refused
    although ``repository:admin`` is granted, because the connecting user is not an admin of
    them: a permission missing, not a scope."""
    on = set(enabled)
    have = set(expand_scopes(granted)) if granted is not None else None
    refused = sorted(set(not_admin))
    report: list[dict[str, object]] = []
    for scope, (tests, purpose) in SCOPE_NEEDS.items():
        missing = have is not None and scope not in have
        entry: dict[str, object] = {
            "scope": scope,
            "granted": None if have is None else not missing,
            "purpose": purpose,
            "tests_left_unknown": sorted(t for t in tests if t in on) if missing else [],
        }
        if scope == "repository:admin":
            entry["not_admin_of"] = [] if missing else refused
            entry["tests_left_unknown_for_permission"] = sorted(t for t in tests if t in on) if refused else []
        report.append(entry)
    return report

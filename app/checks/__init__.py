"""Pure: the eight security tests of checks.md, one module each, and the registry.

``evaluate(facts, ctx, enabled)`` runs the enabled tests on one workspace and applies exceptions:
a ``fail`` covered by an unexpired exception reads ``excepted``.
"""

from __future__ import annotations

from collections.abc import Iterable

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
from app.checks.base import Check, Context, ExceptionGrant, WorkspaceFacts
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
        if g.check == result.check and g.subject in (result.subject, result.subject_key) and g.expires_at > ctx.now:
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
                    "message": f"Accepted risk until {g.expires_at.date().isoformat()} ({g.owner}: {g.reason}). "
                    + result.message,
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

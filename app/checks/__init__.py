"""Pure: the security tests of docs/checks.md, one module each, and the registry found from them.

``evaluate(facts, ctx, enabled)`` runs the enabled tests on one workspace and applies exceptions:
a ``fail`` covered by an unexpired exception reads ``excepted``. An exception is matched by the
subject's key (repository uuid, member account id, workspace slug), never by its name, so it
follows a renamed repository and never covers a new one that takes the old name.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable

from app.bitbucket.sansio import expand_scopes
from app.checks.base import Check, Context, ExceptionGrant, WorkspaceFacts, valid_through
from app.models import Result


def _discover() -> dict[str, Check]:
    """Every module of this package that defines ``CHECK`` is a test: adding a test is adding a
    module, nothing else. Ordered by ``Check.order``."""
    found: list[Check] = []
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        check = getattr(module, "CHECK", None)
        if isinstance(check, Check):
            found.append(check)
    return {c.id: c for c in sorted(found, key=lambda c: (c.order, c.id))}


REGISTRY: dict[str, Check] = _discover()
CHECK_IDS: tuple[str, ...] = tuple(REGISTRY)


def ids(where: Iterable[Check] | None = None) -> frozenset[str]:
    return frozenset(c.id for c in (REGISTRY.values() if where is None else where))


# The sets the planner, the pass and the evaluation work with, from what each test declares.
REPO_CHECKS = ids(c for c in REGISTRY.values() if c.subject_type == "repository")
BRANCH_CHECKS = ids(c for c in REGISTRY.values() if "restrictions" in c.fetches)
MEMBER_CHECKS = ids(c for c in REGISTRY.values() if "members" in c.fetches)
EMAIL_CHECKS = ids(c for c in REGISTRY.values() if "emails" in c.fetches)  # re-run when personnel changes
BUILD_CHECKS = ids(c for c in REGISTRY.values() if "last_build" in c.fetches)  # re-run on a main-branch build
PIPELINES_CHECKS = ids(c for c in REGISTRY.values() if "pipelines" in c.fetches)
EVIDENCE_CHECKS: tuple[str, ...] = tuple(c.id for c in REGISTRY.values() if c.evidence)


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


# What each OAuth scope the product asks for is used for; the tests each one leaves ``unknown``
# when missing are those that declare it (``Check.scopes``).
SCOPE_PURPOSES: dict[str, str] = {
    "account": "list workspace members",
    "repository": "list repositories and their metadata",
    "repository:admin": "read branch restrictions and the Pipelines switch (no read-only alternative exists)",
    "pullrequest": "count open pull requests (repository metadata, no test)",
    "pipeline": "show the newest build of the main branch (details of the Pipelines test)",
    "webhook": "register the webhook: without it results are only as fresh as the last reconcile",
}
SCOPE_NEEDS: dict[str, tuple[tuple[str, ...], str]] = {
    scope: (tuple(c.id for c in REGISTRY.values() if scope in c.scopes), purpose)
    for scope, purpose in SCOPE_PURPOSES.items()
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
            admin = [t for t in tests if "repository admin" in REGISTRY[t].permissions]
            entry["not_admin_of"] = [] if missing else refused
            entry["tests_left_unknown_for_permission"] = sorted(t for t in admin if t in on) if refused else []
        report.append(entry)
    return report

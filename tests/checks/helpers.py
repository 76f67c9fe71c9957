"""Builders shared by the tests' own test modules: plain facts, no fakes, no I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from app import checks
from app.bitbucket.models import (
    BranchRestriction,
    Pipeline,
    PipelinesConfig,
    Repository,
    User,
)
from app.checks.base import (
    Context,
    Evidence,
    MemberFacts,
    Person,
    RepoFacts,
    WorkspaceFacts,
)

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def repo(main: str | None = "main", **kw: Any) -> Repository:
    return Repository(
        uuid="{r1}", full_name="acme/api", slug="api", name="api", workspace="acme", mainbranch=main, **kw
    )


def br(
    kind: str,
    pattern: str | None = "main",
    value: int | None = None,
    match: str = "glob",
    branch_type: str | None = None,
    users: tuple[str, ...] = (),
    groups: tuple[str, ...] = (),
) -> BranchRestriction:
    return BranchRestriction(
        kind=kind,
        pattern=pattern if match == "glob" else None,
        value=value,
        branch_match_kind=match,
        branch_type=branch_type,
        users=users,
        groups=groups,
    )


PROTECTED = (br("force"), br("delete"), br("push"))


def run(check: str, facts: RepoFacts, **ctx: Any) -> tuple[str, str, dict[str, Any]]:
    results = checks.evaluate(WorkspaceFacts("acme", (facts,)), Context("acme", NOW, **ctx), [check])
    assert len(results) == 1
    return results[0].status, results[0].message, results[0].details


def facts(
    restrictions: Any = (),
    cls: str | None = "production",
    main: str | None = "main",
    model: Any = None,
    pipelines: Any = None,
    build: Pipeline | None = None,
) -> RepoFacts:
    return RepoFacts(
        repo=repo(main),
        repo_class=cls,
        restrictions=restrictions,
        branching_model=model,
        pipelines=pipelines or PipelinesConfig(enabled=True),
        last_build=build,
    )


def member(
    key: str = "acc-1",
    person: Person | None = None,
    how: str | None = None,
    two_fa: bool | None = None,
    lookup: str = "available",
) -> MemberFacts:
    return MemberFacts(
        user=User(account_id=key, uuid="{" + key + "}", display_name=key.title(), has_2fa_enabled=two_fa),
        person=person,
        linked_by=how,
        email_lookup=lookup,
    )


def run_members(check: str, members: tuple[MemberFacts, ...], evidence: tuple[Evidence, ...] = ()) -> list[Any]:
    return checks.evaluate(WorkspaceFacts("acme", (), members), Context("acme", NOW, evidence=evidence), [check])


def ev(
    eid: int,
    member_key: str | None,
    age_days: int,
    valid_days: int = 90,
    covered: tuple[str, ...] | None = None,
    check: str = "member-mfa-enabled",
) -> Evidence:
    uploaded = NOW - timedelta(days=age_days)
    return Evidence(
        id=eid,
        check=check,
        workspace="acme",
        member=member_key,
        uploaded_at=uploaded,
        expires_at=uploaded + timedelta(days=valid_days),
        covered_members=covered,
        filename=f"e{eid}.pdf",
    )

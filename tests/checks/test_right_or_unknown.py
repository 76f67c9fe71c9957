"""Issue "right or unknown, never wrong", on plain facts: each case here gave a wrong answer before."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from app import checks
from app.bitbucket.models import BranchRestriction, PipelinesConfig, Repository, User
from app.checks.base import (
    Context,
    Evidence,
    ExceptionGrant,
    MemberFacts,
    Person,
    RepoFacts,
    Unreadable,
    WorkspaceFacts,
)

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
MEMBER_CHECKS = ("member-mfa-enabled", "offboarded-access-removed")
# checks.md "Results": why a result is unknown, a closed set.
UNKNOWN_REASONS = {"scope_missing", "permission_missing", "not_linked", "owner_missing", "fetch_failed"}


def member(key: str = "acc-1", person: Person | None = None, how: str | None = None, **kw: Any) -> MemberFacts:
    return MemberFacts(
        user=User(account_id=key, uuid="{" + key + "}", display_name=key.title()),
        person=person,
        linked_by=how if person else None,
        email_lookup="available",
        **kw,
    )


def run_members(check: str, members: Any, evidence: tuple[Evidence, ...] = (), now: datetime = NOW) -> list[Any]:
    return checks.evaluate(WorkspaceFacts("acme", (), members), Context("acme", now, evidence=evidence), [check])


def restriction(kind: str, value: int | None = None) -> BranchRestriction:
    return BranchRestriction(kind=kind, pattern="main", value=value, branch_match_kind="glob")


def repo_facts(
    main: str | None = "main", restrictions: Any = (), pipelines: Any = None, uuid: str = "{r1}"
) -> RepoFacts:
    repo = Repository(uuid=uuid, full_name="acme/api", slug="api", name="api", workspace="acme", mainbranch=main)
    return RepoFacts(
        repo=repo,
        repo_class="production",
        restrictions=restrictions,
        pipelines=pipelines or PipelinesConfig(enabled=False, configured=False),
    )


# -- a credential without the `account` scope ---------------------------------------------------------
@pytest.mark.parametrize("check", MEMBER_CHECKS)
def test_member_list_refused_for_want_of_account_is_unknown_naming_it(check: str) -> None:
    [r] = run_members(check, Unreadable("missing_scope", scope="account"))
    assert r.status == "unknown" and r.subject_type == "workspace" and r.subject_key == "acme"
    assert r.details["reason"] == "scope_missing" and r.details["missing_scope"] == "account"
    assert "`account`" in r.message and "Reconnect" in r.details["fix"]


@pytest.mark.parametrize("check", MEMBER_CHECKS)
def test_member_list_refused_to_the_user_is_permission_missing(check: str) -> None:
    [r] = run_members(check, Unreadable("missing_permission"))
    assert r.status == "unknown" and r.details["reason"] == "permission_missing" and r.details["fix"]


@pytest.mark.parametrize("check", MEMBER_CHECKS)
def test_member_list_never_read_because_of_a_fault_is_unknown_fetch_failed(check: str) -> None:
    [r] = run_members(check, Unreadable("fetch_failed", detail="ServerError: 503"))
    assert r.status == "unknown" and r.fetch_failed and r.details["reason"] == "fetch_failed"


def test_restrictions_refused_to_the_user_is_permission_missing() -> None:
    [r] = checks.evaluate(
        WorkspaceFacts("acme", (repo_facts(restrictions=Unreadable("missing_permission")),)),
        Context("acme", NOW),
        ["branch-protection-enforced"],
    )
    assert r.status == "unknown" and r.details["reason"] == "permission_missing"
    assert "administrator" in r.message and "missing_scope" not in r.details


# -- stale member data keeps the last result ------------------------------------------------------------
GONE = Person("carol@x.example", "Carol", "employee", "offboarded", "2026-10-01")


@pytest.mark.parametrize(
    ("kw", "check"),
    [
        ({"person": GONE, "how": "email", "stale": "email_links"}, "offboarded-access-removed"),
        ({"stale": "email_links"}, "offboarded-access-removed"),
        ({"person": GONE, "how": "email", "stale": "members"}, "offboarded-access-removed"),
        ({"stale": "members"}, "member-mfa-enabled"),
    ],
)
def test_stale_member_data_never_decides(kw: dict[str, Any], check: str) -> None:
    [r] = run_members(check, (member(**kw),))
    assert r.fetch_failed and r.status == "unknown" and r.details["reason"] == "fetch_failed"


def test_email_lookup_failure_does_not_touch_the_mfa_test() -> None:
    [r] = run_members("member-mfa-enabled", (member(stale="email_links"),))
    assert not r.fetch_failed and r.status == "fail"


# -- offboarded_on and owners ------------------------------------------------------------------------------
def person(
    status: str = "offboarded", on: str | None = None, kind: str = "employee", owner: str | None = None
) -> Person:
    return Person("p@x.example", "P", kind, status, on, "acc-1", owner)


@pytest.mark.parametrize(
    ("p", "status", "reason", "needle"),
    [
        (person(on="2026-12-28"), "pass", None, "to be offboarded on 2026-12-28"),  # scheduled: not yet
        (person(on="2026-11-28"), "fail", None, "offboarded since 2026-11-28"),  # today
        (person(on="2026-11-01"), "fail", None, "offboarded since 2026-11-01"),
        (person(on=None), "fail", None, "was offboarded"),
        (person("active", kind="service-account"), "unknown", "owner_missing", "without an owner"),
        (person("active", kind="external"), "unknown", "owner_missing", "Name an owner"),
        (person("active", kind="external", owner="sec-team"), "pass", None, "owned by sec-team"),
    ],
)
def test_offboarding_date_and_owner(p: Person, status: str, reason: str | None, needle: str) -> None:
    [r] = run_members("offboarded-access-removed", (member(person=p, how="account_id"),))
    assert r.status == status and r.details.get("reason") == reason and needle in r.message
    if status == "pass" and p.offboarded_on:
        assert r.details["offboarding_on"] == p.offboarded_on


def test_scheduled_offboarding_turns_to_fail_on_the_day_by_itself() -> None:
    m = member(person=person(on="2026-12-28"), how="account_id")
    assert run_members("offboarded-access-removed", (m,))[0].status == "pass"
    later = datetime(2026, 12, 28, 0, 0, 1, tzinfo=UTC)
    assert run_members("offboarded-access-removed", (m,), now=later)[0].status == "fail"


def test_unlinked_member_reason_is_not_linked_with_a_fix() -> None:
    [r] = run_members("offboarded-access-removed", (member(),))
    assert r.status == "unknown" and r.details["reason"] == "not_linked" and "Link the account" in r.details["fix"]


# -- a workspace 2SV report and broken memberships ----------------------------------------------------------
def report(uploaded: datetime, covered: tuple[str, ...]) -> Evidence:
    return Evidence(1, "member-mfa-enabled", "acme", None, uploaded, uploaded + timedelta(days=90), covered, "r.pdf")


@pytest.mark.parametrize(
    ("since", "status"),
    [
        (None, "pass"),  # a member since before tracking began, listed in the report
        (NOW - timedelta(days=20), "pass"),  # member since before the report
        (NOW - timedelta(days=5), "fail"),  # left and rejoined after the report: not covered
    ],
)
def test_report_covers_only_an_unbroken_membership(since: datetime | None, status: str) -> None:
    [r] = run_members(
        "member-mfa-enabled", (member(member_since=since),), (report(NOW - timedelta(days=10), ("acc-1",)),)
    )
    assert r.status == status


def test_evidence_messages_say_valid_through_the_day() -> None:
    # --expires 2026-12-31 is stored as 2027-01-01T00:00Z (exclusive).
    e = Evidence(1, "member-mfa-enabled", "acme", "acc-1", NOW, datetime(2027, 1, 1, tzinfo=UTC))
    [r] = run_members("member-mfa-enabled", (member(),), (e,))
    assert r.status == "pass" and "valid through 2026-12-31" in r.message
    [late] = run_members("member-mfa-enabled", (member(),), (e,), now=datetime(2027, 1, 1, tzinfo=UTC))
    assert late.status == "fail" and "valid through 2026-12-31" in late.message


# -- pipelines on an empty repository, review-group approvals --------------------------------------------------
def test_pipelines_on_an_empty_repository_is_not_applicable() -> None:
    [r] = checks.evaluate(WorkspaceFacts("acme", (repo_facts(main=None),)), Context("acme", NOW), ["pipelines-enabled"])
    assert r.status == "not_applicable"


def test_review_group_approvals_count_as_peer_review() -> None:
    facts = repo_facts(restrictions=(restriction("require_review_group_approvals_to_merge", 2),))
    [r] = checks.evaluate(WorkspaceFacts("acme", (facts,)), Context("acme", NOW), ["merge-requires-peer-review"])
    assert r.status == "pass" and r.details["rule"]["kind"] == "require_review_group_approvals_to_merge"


def test_kinds_of_approval_do_not_add_up() -> None:
    facts = repo_facts(
        restrictions=(
            restriction("require_approvals_to_merge", 1),
            restriction("require_review_group_approvals_to_merge", 1),
            restriction("require_approvals_to_merge", 0),
        )
    )
    [r] = checks.evaluate(
        WorkspaceFacts("acme", (facts,)), Context("acme", NOW, min_approvals=2), ["merge-requires-peer-review"]
    )
    assert r.status == "fail"


# -- exceptions by key ----------------------------------------------------------------------------------------
def test_exception_follows_the_key_not_the_name() -> None:
    grant = ExceptionGrant(1, "branch-protection-enforced", "{r1}", "cto", "legacy", NOW + timedelta(days=10))
    [renamed] = checks.evaluate(
        WorkspaceFacts("acme", (repo_facts(uuid="{r1}"),), exceptions=(grant,)),
        Context("acme", NOW),
        ["branch-protection-enforced"],
    )
    assert renamed.status == "excepted"
    by_name = ExceptionGrant(2, "branch-protection-enforced", "acme/api", "cto", "legacy", NOW + timedelta(days=10))
    [newcomer] = checks.evaluate(
        WorkspaceFacts("acme", (repo_facts(uuid="{r2}"),), exceptions=(by_name,)),
        Context("acme", NOW),
        ["branch-protection-enforced"],
    )
    assert newcomer.status == "fail"  # a new repository with the old name is not excepted


# -- every unknown says why ------------------------------------------------------------------------------------
def test_every_unknown_reason_is_from_the_closed_set() -> None:
    repos = (
        repo_facts(
            restrictions=Unreadable("missing_scope", scope="repository:admin"),
            pipelines=Unreadable("missing_scope", scope="repository:admin"),
        ),
        repo_facts(
            restrictions=Unreadable("missing_permission"), pipelines=Unreadable("missing_permission"), uuid="{r2}"
        ),
        repo_facts(restrictions=Unreadable("fetch_failed"), pipelines=Unreadable("fetch_failed"), uuid="{r3}"),
    )
    members = (
        member("a"),
        member("b", person("active", kind="service-account"), "account_id"),
        member("c", stale="members"),
        member("d", stale="email_links"),
    )
    results = checks.evaluate(WorkspaceFacts("acme", repos, members), Context("acme", NOW), list(checks.REGISTRY))
    results += run_members("offboarded-access-removed", Unreadable("missing_scope", scope="account"))
    unknown = [r for r in results if r.status == "unknown"]
    assert {r.details["reason"] for r in unknown} == UNKNOWN_REASONS
    for r in unknown:
        if r.details["reason"] != "fetch_failed":
            assert r.details["fix"] and r.details["fix"] in r.message

"""The eight tests, table-driven, on plain facts (no fakes, no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from app import checks
from app.bitbucket.models import (
    BranchingModel,
    BranchRestriction,
    BranchType,
    Pipeline,
    PipelinesConfig,
    Repository,
    User,
)
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
from app.checks.coverage import covering, glob_matches

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


# -- coverage -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("pattern", "branch", "covered"),
    [
        ("*", "main", True),
        ("main", "main", True),
        ("release/*", "main", False),
        ("*", "release/1.0/hotfix", True),  # * spans /
        ("rel*se", "release", True),
        ("main", "mainline", False),
        ("ma?n", "main", False),  # only * is special
        ("[m]ain", "main", False),
        ("", "main", False),
    ],
)
def test_glob(pattern: str, branch: str, covered: bool) -> None:
    assert glob_matches(pattern, branch) is covered


DEV_MAIN = BranchingModel(development_use_mainbranch=True)
DEV_NAMED = BranchingModel(development_name="develop")
PROD_ON = BranchingModel(development_name="develop", production_name="main")
PROD_OFF = BranchingModel(development_name="develop", production_name=None)
PREFIXED = BranchingModel(branch_types=(BranchType(kind="release", prefix="ma"),))


@pytest.mark.parametrize(
    ("branch_type", "model", "covered"),
    [
        ("development", DEV_MAIN, True),  # use_mainbranch: development is the main branch
        ("development", DEV_NAMED, False),
        ("production", PROD_ON, True),
        ("production", PROD_OFF, False),  # production branch disabled
        ("release", PREFIXED, True),  # prefixed types by prefix
        ("feature", PREFIXED, False),
        ("development", None, False),
    ],
)
def test_branching_model_coverage(branch_type: str, model: BranchingModel | None, covered: bool) -> None:
    r = br("push", match="branching_model", branch_type=branch_type)
    assert bool(covering([r], "main", model, "push")) is covered


# -- branch protection -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("restrictions", "status", "missing"),
    [
        (PROTECTED, "pass", []),
        ((br("force", "*"), br("delete", "*"), br("push", "*")), "pass", []),
        ((br("force"), br("push")), "fail", ["delete"]),  # force present but delete missing
        (
            (br("force", "release/*"), br("delete", "release/*"), br("push", "release/*")),
            "fail",
            ["force", "delete", "push"],
        ),
        ((), "fail", ["force", "delete", "push"]),
        ((br("force"), br("delete"), br("push", match="branching_model", branch_type="development")), "fail", ["push"]),
    ],
)
def test_branch_protection(restrictions: tuple[BranchRestriction, ...], status: str, missing: list[str]) -> None:
    got, message, details = run("branch-protection-enforced", facts(restrictions))
    assert got == status
    assert details.get("missing", []) == missing
    if status == "fail":
        assert "project level" in message and "admin/branch-restrictions" in message


def test_branch_protection_via_branching_model_and_bypass() -> None:
    rs = (
        br("force"),
        br("delete"),
        br("push", match="branching_model", branch_type="development", users=("ci-bot",), groups=("leads",)),
        br("restrict_merges", groups=("devs",)),
    )
    status, message, details = run("branch-protection-enforced", facts(rs, model=DEV_MAIN))
    assert status == "pass"
    assert details["bypass"] == {"users": ["ci-bot"], "groups": ["devs", "leads"]}
    assert "ci-bot" in message


@pytest.mark.parametrize(
    "check", ["branch-protection-enforced", "merge-requires-passing-builds", "merge-requires-peer-review"]
)
def test_branch_tests_scope(check: str) -> None:
    assert run(check, facts(PROTECTED, main=None))[0] == "not_applicable"  # empty repository
    assert run(check, facts(PROTECTED, cls="non-production"))[0] == "not_applicable"
    # unclassified is evaluated like production (the safe side)
    assert run(check, facts((), cls=None))[0] == "fail"
    status, message, details = run(check, facts(Unreadable("missing_scope", "repository:admin")))
    assert status == "unknown" and "repository:admin" in message and details["missing_scope"] == "repository:admin"
    failed = checks.evaluate(
        WorkspaceFacts("acme", (facts(Unreadable("fetch_failed", detail="ServerError")),)),
        Context("acme", NOW),
        [check],
    )[0]
    assert failed.status == "unknown" and failed.fetch_failed


# -- merge checks -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("restrictions", "strict", "status", "enforced"),
    [
        ((br("require_passing_builds_to_merge", value=1),), False, "pass", False),  # advisory, lenient mode
        ((br("require_passing_builds_to_merge", value=1),), True, "fail", None),  # advisory, strict mode
        ((br("require_passing_builds_to_merge", value=1), br("enforce_merge_checks")), False, "pass", True),
        ((br("require_passing_builds_to_merge", value=1), br("enforce_merge_checks")), True, "pass", True),
        ((br("require_passing_builds_to_merge", value=0),), False, "fail", None),
        ((br("require_passing_builds_to_merge", "develop", value=1),), False, "fail", None),
        ((br("require_passing_builds_to_merge", value=1), br("enforce_merge_checks", "release/*")), True, "fail", None),
    ],
)
def test_passing_builds(
    restrictions: tuple[BranchRestriction, ...], strict: bool, status: str, enforced: bool | None
) -> None:
    got, message, details = run("merge-requires-passing-builds", facts(restrictions), strict_merge_checks=strict)
    assert got == status
    if enforced is not None:
        assert details["enforced"] is enforced
    if status == "pass" and not enforced:
        assert "only warns" in message


@pytest.mark.parametrize(
    ("restrictions", "threshold", "status"),
    [
        ((br("require_approvals_to_merge", value=1),), 1, "pass"),
        ((br("require_approvals_to_merge", value=1),), 2, "fail"),  # approvals below the threshold
        ((br("require_default_reviewer_approvals_to_merge", value=2),), 2, "pass"),
        (
            (br("require_approvals_to_merge", value=1), br("require_default_reviewer_approvals_to_merge", value=3)),
            2,
            "pass",
        ),
        ((br("require_approvals_to_merge", "*", value=2),), 2, "pass"),
        ((br("require_approvals_to_merge", match="branching_model", branch_type="development", value=1),), 1, "pass"),
        ((), 1, "fail"),
    ],
)
def test_peer_review(restrictions: tuple[BranchRestriction, ...], threshold: int, status: str) -> None:
    model = DEV_MAIN
    got, message, details = run("merge-requires-peer-review", facts(restrictions, model=model), min_approvals=threshold)
    assert got == status
    if status == "fail" and restrictions:
        assert f"required {threshold}" in message and details["rule"]["value"] < threshold
    if status == "pass":
        assert details["rule"]["kind"] in ("require_approvals_to_merge", "require_default_reviewer_approvals_to_merge")


# -- pipelines -------------------------------------------------------------------------------------
def test_pipelines() -> None:
    build = Pipeline(build_number=7, state="COMPLETED", result="FAILED", created_on="2026-11-27T00:00:00Z")
    status, _, details = run("pipelines-enabled", facts(pipelines=PipelinesConfig(enabled=True), build=build))
    assert (
        status == "pass" and details["last_build"]["build_number"] == 7 and details["last_build"]["result"] == "FAILED"
    )
    status, message, details = run(
        "pipelines-enabled", facts(pipelines=PipelinesConfig(enabled=False, configured=False))
    )
    assert status == "fail" and "not configured" in message  # pipelines_config 404
    assert run("pipelines-enabled", facts(pipelines=PipelinesConfig(enabled=False)))[0] == "fail"
    assert run("pipelines-enabled", facts(pipelines=Unreadable("missing_scope", "repository:admin")))[0] == "unknown"
    assert run("pipelines-enabled", facts(cls="non-production"))[0] == "not_applicable"


def test_pipelines_is_off_by_default() -> None:
    from app.settings import Settings

    assert "pipelines-enabled" not in Settings.from_env({}, env_file=None).enabled_checks


# -- classification -------------------------------------------------------------------------------
def test_repo_classified() -> None:
    assert run("repo-classified", facts(cls="production"))[0] == "pass"
    assert run("repo-classified", facts(cls="non-production"))[0] == "pass"
    status, message, _ = run("repo-classified", facts(cls=None))
    assert status == "fail" and "classify acme/api production" in message


# -- members ------------------------------------------------------------------------------------------
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


@pytest.mark.parametrize(
    ("evidence", "status", "reason"),
    [
        ((), "fail", "evidence_missing"),
        ((ev(1, "acc-1", 10),), "pass", None),
        ((ev(1, "acc-1", 100),), "fail", "evidence_expired"),  # evidence expiry
        ((ev(1, None, 10, covered=("acc-1", "acc-2")),), "pass", None),  # workspace 2SV report
        ((ev(1, None, 10, covered=("acc-2",)),), "fail", "evidence_missing"),  # joined after the report
        ((ev(1, None, 100, covered=("acc-1",)), ev(2, "acc-1", 5)), "pass", None),
        ((ev(1, "acc-2", 5),), "fail", "evidence_missing"),  # someone else's evidence
        ((ev(1, "acc-1", 5, valid_days=3),), "fail", "evidence_expired"),  # own shorter expiry
    ],
)
def test_member_mfa(evidence: tuple[Evidence, ...], status: str, reason: str | None) -> None:
    [r] = run_members("member-mfa-enabled", (member(),), evidence)
    assert r.status == status and r.details.get("reason") == reason
    if status == "fail":
        assert "admin.atlassian.com" in r.message


def test_member_mfa_api_value_decides() -> None:
    assert run_members("member-mfa-enabled", (member(two_fa=True),))[0].status == "pass"
    r = run_members("member-mfa-enabled", (member(two_fa=False),), (ev(1, "acc-1", 1),))[0]
    assert r.status == "fail" and r.details["reason"] == "2fa_disabled"


@pytest.mark.parametrize(
    ("evidence", "status", "reason"),
    [
        ((), "fail", "evidence_missing"),
        ((ev(1, None, 1, check="workspace-mfa-enforced"),), "pass", None),
        ((ev(1, None, 91, check="workspace-mfa-enforced"),), "fail", "evidence_expired"),
        ((ev(1, None, 1),), "fail", "evidence_missing"),  # member-test evidence does not count
    ],
)
def test_workspace_mfa(evidence: tuple[Evidence, ...], status: str, reason: str | None) -> None:
    [r] = checks.evaluate(WorkspaceFacts("acme"), Context("acme", NOW, evidence=evidence), ["workspace-mfa-enforced"])
    assert r.status == status and r.details.get("reason") == reason and r.subject_type == "workspace"


GONE = Person("carol@x.example", "Carol", "employee", "offboarded", "2026-10-01", "acc-1")
ACTIVE = Person("bob@x.example", "Bob", "employee", "active")
BOT = Person("bot@x.example", "CI bot", "service-account", "active", owner="platform-team")


@pytest.mark.parametrize(
    ("m", "status", "needle"),
    [
        (member(person=GONE, how="account_id"), "fail", "offboarded since 2026-10-01"),  # linked by account id
        (member(person=GONE, how="email"), "fail", "admin.atlassian.com"),  # linked by the email filter
        (member(person=ACTIVE, how="email"), "pass", "active employee"),
        (member(person=BOT, how="account_id"), "pass", "service-account"),  # service account
        (member(), "unknown", "not linked"),  # not linked
        (member(lookup="unavailable"), "unknown", "email matching is unavailable"),
    ],
)
def test_offboarded(m: MemberFacts, status: str, needle: str) -> None:
    [r] = run_members("offboarded-access-removed", (m,))
    assert r.status == status and needle in r.message


def test_members_not_read_yet_yield_nothing() -> None:
    assert run_members("offboarded-access-removed", Unreadable("not_fetched")) == []  # type: ignore[arg-type]


# -- exceptions -----------------------------------------------------------------------------------------
def test_exception_turns_fail_into_excepted_until_expiry() -> None:
    grant = ExceptionGrant(1, "branch-protection-enforced", "{r1}", "cto", "legacy", NOW + timedelta(days=10))
    ws = WorkspaceFacts("acme", (facts(()),), exceptions=(grant,))
    [r] = checks.evaluate(ws, Context("acme", NOW), ["branch-protection-enforced"])
    assert r.status == "excepted" and r.details["exception"]["owner"] == "cto"
    [later] = checks.evaluate(ws, Context("acme", NOW + timedelta(days=11)), ["branch-protection-enforced"])
    assert later.status == "fail"
    [passing] = checks.evaluate(
        WorkspaceFacts("acme", (facts(PROTECTED),), exceptions=(grant,)),
        Context("acme", NOW),
        ["branch-protection-enforced"],
    )
    assert passing.status == "pass"  # an exception never hides a pass


def test_every_check_module_documents_itself() -> None:
    assert len(checks.REGISTRY) == 8
    for check in checks.REGISTRY.values():
        assert check.doc.startswith("Pure.") and "Control" in check.doc

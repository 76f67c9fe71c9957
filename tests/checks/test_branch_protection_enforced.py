"""``branch-protection-enforced`` on plain facts."""

from __future__ import annotations

from datetime import timedelta

import pytest

from app import checks
from app.bitbucket.models import BranchingModel, BranchRestriction
from app.checks.base import Context, ExceptionGrant, WorkspaceFacts
from tests.checks.helpers import NOW, PROTECTED, br, facts, run

DEV_MAIN = BranchingModel(development_use_mainbranch=True)


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

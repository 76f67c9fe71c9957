"""Branch coverage (``app/checks/branch_coverage.py``) and what every branch test does first."""

from __future__ import annotations

import pytest

from app import checks
from app.bitbucket.models import BranchingModel, BranchType
from app.checks.base import Context, Unreadable, WorkspaceFacts
from app.checks.branch_coverage import covering, glob_matches
from tests.checks.helpers import NOW, PROTECTED, br, facts, run


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


@pytest.mark.parametrize("check", sorted(checks.BRANCH_CHECKS))
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

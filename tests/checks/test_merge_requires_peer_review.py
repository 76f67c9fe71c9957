"""``merge-requires-peer-review`` on plain facts."""

from __future__ import annotations

import pytest

from app.bitbucket.models import BranchingModel, BranchRestriction
from tests.checks.helpers import br, facts, run

DEV_MAIN = BranchingModel(development_use_mainbranch=True)


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

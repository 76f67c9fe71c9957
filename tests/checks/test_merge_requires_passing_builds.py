"""``merge-requires-passing-builds`` on plain facts."""

from __future__ import annotations

import pytest

from app.bitbucket.models import BranchRestriction
from tests.checks.helpers import br, facts, run


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

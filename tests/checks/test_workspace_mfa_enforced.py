"""``workspace-mfa-enforced`` on plain facts."""

from __future__ import annotations

import pytest

from app import checks
from app.checks.base import Context, Evidence, WorkspaceFacts
from tests.checks.helpers import NOW, ev


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

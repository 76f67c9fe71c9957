"""``member-mfa-enabled`` on plain facts."""

from __future__ import annotations

import pytest

from app.checks.base import Evidence
from tests.checks.helpers import ev, member, run_members


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

"""``offboarded-access-removed`` on plain facts."""

from __future__ import annotations

import pytest

from app.checks.base import MemberFacts, Person, Unreadable
from tests.checks.helpers import member, run_members

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

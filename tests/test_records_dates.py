"""Dates and identities in what people hand the product (checks.md): expiries mean "valid through"
a date, evidence never outlives LP_EVIDENCE_MAX_AGE_DAYS, exceptions last at most 365 days, and a
personnel import refuses ambiguous or contradictory rows."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from app import records
from app.checks.base import Person, valid_through

NOON = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
HEADER = "email,name,kind,status,offboarded_on,bitbucket_account_id\n"


def test_expires_means_valid_through_the_end_of_the_day() -> None:
    expires = records.evidence_expiry(NOON, "2026-12-01", 90)
    assert expires == datetime(2026, 12, 2, tzinfo=UTC) and valid_through(expires) == date(2026, 12, 1)
    # Today is a valid expiry for the rest of the day.
    assert records.evidence_expiry(NOON, "2026-11-28", 90) == datetime(2026, 11, 29, tzinfo=UTC)


@pytest.mark.parametrize("day", ["2099-01-01", "2027-02-26"])
def test_explicit_evidence_expiry_never_longer_than_the_maximum(day: str) -> None:
    with pytest.raises(records.RecordError, match=r"at most 90 days .*latest date allowed today is 2027-02-25"):
        records.evidence_expiry(NOON, day, 90)


def test_explicit_evidence_expiry_up_to_the_maximum() -> None:
    last = records.evidence_expiry(NOON, "2027-02-25", 90)
    assert last <= NOON + timedelta(days=90)


def test_exception_lasts_at_most_365_days_through_the_given_date() -> None:
    ok = records.check_exception("c", "s", "o", "r", "2027-11-28", NOON, ("c",))  # today + 365 days
    assert ok.expires_at == datetime(2027, 11, 29, tzinfo=UTC)
    with pytest.raises(records.RecordError, match="at most 365 days"):
        records.check_exception("c", "s", "o", "r", "2027-11-29", NOON, ("c",))  # 366 days


def _csv(*rows: str) -> bytes:
    return (HEADER + "".join(r + "\n" for r in rows)).encode()


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            ("a@x.example,A,employee,active,,acc-1", "b@x.example,B,employee,offboarded,2026-01-01,acc-1"),
            r"people.csv:3, field bitbucket_account_id: acc-1 also appears at people.csv:2",
        ),
        (
            ("a@x.example,A,employee,active,2026-11-01,acc-1",),
            r"people.csv:2, field offboarded_on: status=active with an offboarded_on in the past",
        ),
        (
            ("a@x.example,A,employee,active,2026-12-24,acc-1",),
            r"people.csv:2, field offboarded_on: 2026-12-24 without status=offboarded",
        ),
    ],
)
def test_personnel_import_refuses(rows: tuple[str, ...], message: str) -> None:
    with pytest.raises(records.RecordError, match=message):
        records.parse_personnel(_csv(*rows), "people.csv", today=NOON.date())


def test_scheduled_offboarding_is_accepted() -> None:
    [p] = records.parse_personnel(_csv("a@x.example,A,employee,offboarded,2026-12-24,acc-1"), "people.csv")
    assert p.status == "offboarded" and p.offboarded_on == "2026-12-24"


def test_account_id_already_linked_to_someone_else_is_refused() -> None:
    directory = [Person("old@x.example", "Old", "employee", "active", None, "acc-1")]
    with pytest.raises(records.RecordError, match=r"acc-1 is already linked to old@x\.example"):
        records.check_account_conflicts(
            [Person("new@x.example", "New", "employee", "active", None, "acc-1")], directory
        )
    # The same person re-imported is fine.
    records.check_account_conflicts([Person("old@x.example", "Old", "employee", "active", None, "acc-1")], directory)

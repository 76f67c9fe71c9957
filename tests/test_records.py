"""Personnel files, evidence files and exceptions: validation that names line and field."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from app import records

NOW = datetime(2026, 11, 28, tzinfo=UTC)
HEADER = "email,name,kind,status,offboarded_on,bitbucket_account_id\n"


def test_csv_and_json_import() -> None:
    people = records.parse_personnel(
        (
            HEADER + "A@X.example,Ann,employee,active,,557058:a\nb@x.example,Bo,contractor,offboarded,2026-10-01,\n"
        ).encode(),
        "people.csv",
    )
    assert [(p.email, p.status, p.bitbucket_account_id) for p in people] == [
        ("a@x.example", "active", "557058:a"),
        ("b@x.example", "offboarded", None),
    ]
    js = records.parse_personnel(
        b'[{"email": "c@x.example", "name": "Cy", "kind": "service-account", "status": "Offboarded"}]', "p.json"
    )
    assert js[0].kind == "service-account" and js[0].status == "offboarded"


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        (
            HEADER + "a@x.example,Ann,employee,active,,\nnot-an-email,Bo,employee,active,,\n",
            "p.csv",
            "p.csv:3, field email",
        ),
        (HEADER + "a@x.example,,employee,active,,\n", "p.csv", "p.csv:2, field name: required"),
        (HEADER + "a@x.example,Ann,wizard,active,,\n", "p.csv", "p.csv:2, field kind"),
        (HEADER + "a@x.example,Ann,employee,gone,,\n", "p.csv", "p.csv:2, field status"),
        (HEADER + "a@x.example,Ann,employee,offboarded,yesterday,\n", "p.csv", "p.csv:2, field offboarded_on"),
        (HEADER + "a@x.example,Ann,employee,active,,\nA@x.example,Ann,employee,active,,\n", "p.csv", "appears twice"),
        ("name,kind\nAnn,employee\n", "p.csv", "p.csv:1: the header"),
        (
            '[{"email": "a@x.example", "name": "A", "status": "active"}, {"email": "b@x.example", "status": "active"}]',
            "p.json",
            "entry 2, field name",
        ),
        # A missing status is never taken as "active" (that would fail open for a leaver).
        ('[{"email": "a@x.example", "name": "A"}]', "p.json", "entry 1, field status: required"),
        ('[{"email": "a@x.example", "name": "A", "status": null}]', "p.json", "entry 1, field status: required"),
        ('{"people": [{"email": "a@x.example", "name": "A", "status": "gone"}]}', "p.json", "entry 1, field status"),
        (HEADER + "a@x.example,Ann,employee,,,\n", "p.csv", "p.csv:2, field status: required"),
        ("email,name\na@x.example,Ann\n", "p.csv", "p.csv:1: the header has no status column"),
        ("[1", "p.json", "not valid JSON"),
        (HEADER, "p.csv", "no people"),
    ],
)
def test_bad_personnel_names_line_and_field(content: str, name: str, message: str) -> None:
    with pytest.raises(records.RecordError, match=message.replace("(", r"\(")):
        records.parse_personnel(content.encode(), name)


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"\x89PNG\r\n\x1a\nrest", "image/png"),
        (b"\xff\xd8\xff\xe0rest", "image/jpeg"),
        (b"%PDF-1.7 rest", "application/pdf"),
    ],
)
def test_evidence_type_from_content(data: bytes, kind: str) -> None:
    assert records.check_evidence(data) == kind


@pytest.mark.parametrize(
    ("data", "message"),
    [(b"GIF89a", "PNG, JPEG or PDF"), (b"", "empty"), (b"%PDF-" + b"x" * (10 * 1024 * 1024), "at most")],
)
def test_evidence_refused(data: bytes, message: str) -> None:
    with pytest.raises(records.RecordError, match=message):
        records.check_evidence(data)


def test_evidence_expiry() -> None:
    assert records.evidence_expiry(NOW, None, 90) == NOW + timedelta(days=90)
    assert records.evidence_expiry(NOW, "2027-01-01", 90) == datetime(2027, 1, 2, tzinfo=UTC)  # through 2027-01-01
    with pytest.raises(records.RecordError, match="not in the future"):
        records.evidence_expiry(NOW, "2020-01-01", 90)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("nope", "acme/api", "o", "r", "2027-01-01"), "unknown test id"),
        (("repo-classified", "acme/api", " ", "r", "2027-01-01"), "--owner: required"),
        (("repo-classified", "acme/api", "o", "r", "2026-01-01"), "not in the future"),
        (("repo-classified", "acme/api", "o", "r", "2028-01-01"), "more than one year"),
        (("repo-classified", "acme/api", "o", "r", "someday"), "not a date"),
    ],
)
def test_exception_validation(args: tuple[str, ...], message: str) -> None:
    with pytest.raises(records.RecordError, match=message):
        records.check_exception(*args, now=NOW, known_checks=("repo-classified",))

"""Pure: validation of what people hand the product: personnel files, evidence files, exceptions.

Errors are :class:`RecordError` with one line naming the place (file line and field) and the
problem; nothing is stored when any row is bad.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from app.checks.base import Person
from app.errors import LowerplaneError

KINDS = ("employee", "contractor", "service-account", "external")
STATUSES = ("active", "offboarded")
COLUMNS = ("email", "name", "kind", "status", "offboarded_on", "bitbucket_account_id")
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MAX_EVIDENCE_BYTES = 10 * 1024 * 1024
MAX_EXCEPTION_DAYS = 365


class RecordError(LowerplaneError):
    """Bad input from a person: one line that says where and what."""


class TooLarge(RecordError):
    """An evidence file over the size limit (HTTP 413); raised while reading, before the rest."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(f"evidence is larger than {size_text(max_bytes)} (LP_EVIDENCE_MAX_BYTES)")
        self.max_bytes = max_bytes


def size_text(n: int) -> str:
    """``10485760`` → ``10 MiB``; sizes that are not whole MiB or KiB in bytes."""
    for unit, factor in (("MiB", 1024 * 1024), ("KiB", 1024)):
        if n >= factor and n % factor == 0:
            return f"{n // factor} {unit}"
    return f"{n} bytes"


def _date(value: str, where: str) -> str:
    try:
        return date.fromisoformat(value.strip()).isoformat()
    except ValueError:
        raise RecordError(f"{where}: not a date (YYYY-MM-DD): {value!r}") from None


def person_from_row(row: dict[str, Any], where: str) -> Person:
    def field(name: str, required: bool = True) -> str | None:
        raw = row.get(name)
        value = "" if raw is None else str(raw).strip()
        if not value:
            if required:
                raise RecordError(f"{where}, field {name}: required")
            return None
        return value

    email = field("email")
    assert email is not None
    if not EMAIL.match(email):
        raise RecordError(f"{where}, field email: not an email address: {email!r}")
    name = field("name")
    kind = (field("kind", False) or "employee").lower()
    if kind not in KINDS:
        raise RecordError(f"{where}, field kind: must be one of {', '.join(KINDS)}, not {kind!r}")
    status = field("status", False)
    if status is None:  # never assumed: a missing status must not make a leaver "active"
        raise RecordError(f"{where}, field status: required (active or offboarded)")
    status = status.lower()
    if status not in STATUSES:
        raise RecordError(f"{where}, field status: must be active or offboarded, not {status!r}")
    off = field("offboarded_on", False)
    if off is not None:
        off = _date(off, f"{where}, field offboarded_on")
    account = field("bitbucket_account_id", False)
    owner = field("owner", False)
    return Person(
        email=email.lower(),
        name=name or email,
        kind=kind,
        status=status,
        offboarded_on=off,
        bitbucket_account_id=account,
        owner=owner,
    )


def check_dates(p: Person, where: str, today: date) -> None:
    """checks.md: ``offboarded_on`` only with ``status=offboarded`` (a future date schedules it)."""
    if p.offboarded_on is None or p.status == "offboarded":
        return
    if p.offboarded_on < today.isoformat():
        raise RecordError(
            f"{where}, field offboarded_on: status={p.status} with an offboarded_on in the past "
            f"({p.offboarded_on}): set status=offboarded, or clear the date"
        )
    raise RecordError(
        f"{where}, field offboarded_on: {p.offboarded_on} without status=offboarded (an offboarding "
        "scheduled ahead is status=offboarded with a future offboarded_on)"
    )


def check_account_conflicts(people: list[Person], directory: list[Person]) -> None:
    """An account id already linked to someone else in the directory (not in this import) is refused."""
    incoming = {p.email for p in people}
    owner = {d.bitbucket_account_id: d.email for d in directory if d.bitbucket_account_id and d.email not in incoming}
    for p in people:
        if p.bitbucket_account_id and p.bitbucket_account_id in owner:
            raise RecordError(
                f"{p.email}, field bitbucket_account_id: {p.bitbucket_account_id} is already linked to "
                f"{owner[p.bitbucket_account_id]} in the personnel directory"
            )


def parse_personnel(data: bytes, filename: str, today: date | None = None) -> list[Person]:
    """CSV (header row with the COLUMNS) or JSON (a list of objects, or {"people": [...]}).

    All or nothing: refuses, naming line and field, two records with the same email or the same
    ``bitbucket_account_id``, and an ``offboarded_on`` without ``status=offboarded``."""
    today = today or datetime.now(UTC).date()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise RecordError(f"{filename}: not UTF-8 text") from None
    people: list[Person] = []
    places: list[str] = []
    stripped = text.lstrip()
    if filename.lower().endswith(".json") or stripped.startswith(("[", "{")):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RecordError(f"{filename}:{exc.lineno}: not valid JSON: {exc.msg}") from None
        rows = doc.get("people") if isinstance(doc, dict) else doc
        if not isinstance(rows, list):
            raise RecordError(f"{filename}: expected a JSON list of people")
        for i, row in enumerate(rows, 1):
            if not isinstance(row, dict):
                raise RecordError(f"{filename}: entry {i}: expected an object")
            people.append(person_from_row(row, f"{filename}: entry {i}"))
            places.append(f"{filename}: entry {i}")
    else:
        reader = csv.DictReader(io.StringIO(text))
        header = [f.strip() for f in reader.fieldnames or []]
        if "email" not in header:
            raise RecordError(f"{filename}:1: the header must name the columns: {', '.join(COLUMNS)}")
        if "status" not in header:
            raise RecordError(f"{filename}:1: the header has no status column (active or offboarded for each person)")
        for row in reader:
            clean = {(k or "").strip(): v for k, v in row.items()}
            people.append(person_from_row(clean, f"{filename}:{reader.line_num}"))
            places.append(f"{filename}:{reader.line_num}")
    seen: dict[str, int] = {}
    for i, p in enumerate(people, 1):
        if p.email in seen:
            raise RecordError(f"{filename}: {p.email} appears twice (entries {seen[p.email]} and {i})")
        seen[p.email] = i
    accounts: dict[str, str] = {}
    for p, where in zip(people, places, strict=True):
        check_dates(p, where, today)
        if p.bitbucket_account_id:
            if p.bitbucket_account_id in accounts:
                raise RecordError(
                    f"{where}, field bitbucket_account_id: {p.bitbucket_account_id} also appears at "
                    f"{accounts[p.bitbucket_account_id]}"
                )
            accounts[p.bitbucket_account_id] = where
    if not people:
        raise RecordError(f"{filename}: no people in the file")
    return people


def media_type(data: bytes) -> str:
    """PNG, JPEG or PDF, recognised from the content, never from the file name."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"%PDF-"):
        return "application/pdf"
    raise RecordError("evidence must be a PNG, JPEG or PDF file (recognised from its content)")


def check_evidence(data: bytes, size: int | None = None, max_bytes: int = MAX_EVIDENCE_BYTES) -> str:
    """The media type of an evidence file from its first bytes (``data``) and its ``size``."""
    size = len(data) if size is None else size
    if size > max_bytes:
        raise RecordError(f"evidence is {size} bytes; at most {max_bytes} ({size_text(max_bytes)})")
    if not size:
        raise RecordError("evidence file is empty")
    return media_type(data)


def end_of_day(day: date) -> datetime:
    """A date given as an expiry means valid through that day: it ends at 00:00 UTC the day after."""
    return datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1)


def evidence_expiry(uploaded: datetime, explicit: str | None, max_age_days: int) -> datetime:
    """``LP_EVIDENCE_MAX_AGE_DAYS`` from upload; an explicit expiry (valid through that date) may be
    shorter, never longer."""
    latest = uploaded + timedelta(days=max_age_days)
    if explicit:
        day = date.fromisoformat(_date(explicit, "--expires"))
        expires = end_of_day(day)
        if expires <= uploaded:
            raise RecordError(f"--expires: {explicit} is not in the future")
        if expires > latest:
            last = (latest - timedelta(days=1)).date().isoformat()
            raise RecordError(
                f"--expires: {explicit} is too far: evidence is valid at most {max_age_days} days from upload "
                f"(LP_EVIDENCE_MAX_AGE_DAYS); the latest date allowed today is {last}"
            )
        return expires
    return latest


@dataclass(frozen=True)
class ExceptionRequest:
    check: str
    subject: str
    owner: str
    reason: str
    expires_at: datetime


def check_exception(
    check: str, subject: str, owner: str, reason: str, expires: str, now: datetime, known_checks: tuple[str, ...]
) -> ExceptionRequest:
    if check not in known_checks:
        raise RecordError(f"--check: unknown test id {check!r}")
    for name, value in (("--subject", subject), ("--owner", owner), ("--reason", reason)):
        if not value.strip():
            raise RecordError(f"{name}: required")
    day = date.fromisoformat(_date(expires, "--expires"))
    expires_at = end_of_day(day)  # valid through the given date
    if expires_at <= now:
        raise RecordError(f"--expires: {expires} is not in the future")
    if day > now.date() + timedelta(days=MAX_EXCEPTION_DAYS):
        raise RecordError(
            f"--expires: {expires} is more than one year away: an exception is valid through a date at most "
            f"{MAX_EXCEPTION_DAYS} days ahead"
        )
    return ExceptionRequest(check, subject.strip(), owner.strip(), reason.strip(), expires_at)

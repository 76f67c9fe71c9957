"""Value types shared by layers: a parsed webhook delivery, and later events, fetches, results.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict


def _wall_clock() -> datetime:
    return datetime.now(UTC)


# The product's one reading of "now" (evaluation, expiries, record stamps). A seam for tests that
# move time forward (tests/test_state_machine.py); nothing in the product assigns it.
clock: Callable[[], datetime] = _wall_clock


def utcnow() -> datetime:
    return clock()


def iso(dt: datetime) -> str:
    """The stamp the store keeps: seconds, UTC, ``Z``."""
    return dt.isoformat(timespec="seconds").replace("+00:00", "Z")


class Delivery(BaseModel):
    """What we keep of one Bitbucket webhook delivery: ids and the hints the planner needs.

    Never a commit message, an author line or a diff: only names and ids.
    """

    model_config = ConfigDict(frozen=True)

    event_key: str
    request_uuid: str
    hook_uuid: str
    attempt: int
    repository_uuid: str | None = None
    repository_full_name: str | None = None
    workspace: str | None = None
    actor_account_id: str | None = None
    branches: tuple[str, ...] = ()
    branches_created: tuple[str, ...] = ()
    branches_deleted: tuple[str, ...] = ()
    pullrequest_id: int | None = None
    pullrequest_state: str | None = None
    changed_fields: tuple[str, ...] = ()
    project_key: str | None = None
    fork_uuid: str | None = None


# --- results of the eight tests ---------------------------------------------------------------

STATUSES = ("pass", "fail", "unknown", "not_applicable", "excepted")
FAILING = frozenset({"fail", "unknown"})
PASSING = frozenset({"pass", "not_applicable", "excepted"})
SEVERITY_ORDER = {"critical": 0, "high": 1, "medium": 2, "low": 3}


class Result(BaseModel):
    """One evaluation of one test for one subject (docs/checks.md "Results").

    ``subject_key`` identifies the subject across renames: a repository's uuid, a member's
    account_id (uuid where there is none), the workspace slug. ``fetch_failed`` marks a result
    computed without fresh data; the findings diff then keeps the earlier result, marked stale.
    """

    model_config = ConfigDict(frozen=True)

    check: str
    severity: str
    workspace: str
    subject_type: str  # repository | member | workspace
    subject_key: str
    subject: str
    subject_uuid: str | None = None
    subject_name: str | None = None
    status: str
    message: str
    details: dict[str, Any] = {}
    fetch_failed: bool = False


class StoredResult(BaseModel):
    """A result as the store keeps it, with its history stamps."""

    model_config = ConfigDict(frozen=True)

    result: Result
    fingerprint: str
    first_seen: str
    last_changed: str
    stale_since: str | None = None

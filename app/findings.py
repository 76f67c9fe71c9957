"""Pure: compare stored results with a fresh evaluation → what to write and what to announce.

``diff(previous, current, scope)``:

- ``opened``: a subject newly failing: new, or moved from pass/not_applicable/excepted to
  fail/unknown;
- ``resolved``: moved from fail/unknown to pass/not_applicable/excepted;
- ``changed``: any other change of fingerprint (a new passing subject, an updated message or
  detail, fail ↔ unknown);
- ``unchanged``: same fingerprint, nothing to write;
- ``stale``: the fresh result was computed without data (``fetch_failed``): the earlier result is
  kept and only marked stale; with no earlier result the ``unknown`` is written as it is;
- ``retired``: stored results within ``scope`` that the evaluation no longer produces (a deleted
  repository, a departed member).

Each stored result carries a fingerprint of (status, message, details), so an unchanged result
writes nothing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from app.models import FAILING, Result, StoredResult

Key = tuple[str, str]


def key(r: Result) -> Key:
    return (r.check, r.subject_key)


def fingerprint(r: Result) -> str:
    body = json.dumps(
        {"status": r.status, "message": r.message, "details": r.details, "subject": r.subject},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(body.encode()).hexdigest()


@dataclass
class Change:
    """One result to write, with the earlier stored one (None when new)."""

    result: Result
    previous: StoredResult | None

    @property
    def status_changed(self) -> bool:
        return self.previous is None or self.previous.result.status != self.result.status


@dataclass
class Delta:
    opened: list[Change] = field(default_factory=list)
    resolved: list[Change] = field(default_factory=list)
    changed: list[Change] = field(default_factory=list)
    unchanged: list[Result] = field(default_factory=list)
    stale: list[StoredResult] = field(default_factory=list)
    retired: list[StoredResult] = field(default_factory=list)

    @property
    def writes(self) -> list[Change]:
        return [*self.opened, *self.resolved, *self.changed]

    def is_empty(self) -> bool:
        return not (self.opened or self.resolved or self.changed or self.stale or self.retired)


def diff(
    previous: Mapping[Key, StoredResult],
    current: Iterable[Result],
    in_scope: Callable[[Key], bool] = lambda _: True,
) -> Delta:
    delta = Delta()
    seen: set[Key] = set()
    for r in current:
        k = key(r)
        seen.add(k)
        prev = previous.get(k)
        if r.fetch_failed and prev is not None:
            if prev.stale_since is None:
                delta.stale.append(prev)
            else:
                delta.unchanged.append(prev.result)
            continue
        if prev is not None and prev.fingerprint == fingerprint(r) and prev.stale_since is None:
            delta.unchanged.append(r)
            continue
        change = Change(r, prev)
        was_failing = prev is not None and prev.result.status in FAILING
        now_failing = r.status in FAILING
        if now_failing and not was_failing:
            delta.opened.append(change)
        elif was_failing and not now_failing:
            delta.resolved.append(change)
        else:
            delta.changed.append(change)
    for k, stored in previous.items():
        if k not in seen and in_scope(k):
            delta.retired.append(stored)
    return delta


def to_json(stored: StoredResult) -> dict[str, object]:
    """The public JSON shape of one result (docs/interface.md "Findings as JSON")."""
    r = stored.result
    details = dict(r.details)
    if stored.stale_since:
        details["stale_since"] = stored.stale_since
    return {
        "workspace": r.workspace,
        "check": r.check,
        "severity": r.severity,
        "subject_type": r.subject_type,
        "subject": r.subject,
        "subject_uuid": r.subject_uuid,
        "subject_name": r.subject_name,
        "status": r.status,
        "message": r.message,
        "details": details,
        "first_seen": stored.first_seen,
        "last_changed": stored.last_changed,
    }

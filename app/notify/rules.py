"""Pure: which result changes are worth an alert (docs/checks.md "Changes worth an alert").

An alert goes out when a result moves between pass/not_applicable/excepted and fail/unknown (an
expired exception or evidence shows up as such a move), when an ``unknown`` is confirmed as a
``fail``, and when a new repository or member appears failing. A result that stays the same sends
nothing. The first assessment of a workspace (everything new at once) becomes one baseline summary
instead of a flood.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from app.checks import REGISTRY
from app.findings import Change, Delta
from app.models import FAILING, Result

BASELINE_MIN = 6


def subject_url(r: Result, web_url: str) -> str:
    """The Bitbucket (or Atlassian admin) page where the subject's setting is changed (``Check.settings_link``)."""
    check = REGISTRY.get(r.check)
    if check is not None and check.settings_link:
        return check.link(web_url, r.workspace, r.subject)
    if r.subject_type == "repository":
        return f"{web_url}/{r.subject}"
    if r.subject_type == "member":
        return "https://admin.atlassian.com"
    return f"{web_url}/{r.workspace}/workspace/settings"


def how_to_fix(r: Result) -> str:
    if r.status == "unknown" and r.details.get("fix"):
        return str(r.details["fix"])  # why it is unknown and how to fix it (docs/checks.md "Results")
    if r.status == "unknown" and r.details.get("missing_scope"):
        return f"Reconnect with the `{r.details['missing_scope']}` scope."
    if r.status == "unknown" and r.details.get("missing_permission"):
        return "Make the connecting user an admin of the repository, or connect as a workspace admin."
    check = REGISTRY.get(r.check)
    return check.fix_text(r.workspace, r.subject) if check is not None and check.fix else ""


def _alert(c: Change, web_url: str, kind: str) -> dict[str, Any]:
    r = c.result
    check = REGISTRY.get(r.check)
    old = c.previous.result.status if c.previous else None
    return {
        "kind": kind,
        "workspace": r.workspace,
        "check": r.check,
        "title": check.title if check else r.check,
        "severity": r.severity,
        "subject_type": r.subject_type,
        "subject": r.subject,
        "subject_key": r.subject_key,
        "subject_name": r.subject_name or r.subject,
        "old_status": old,
        "new_status": r.status,
        "message": r.message,
        "fix": how_to_fix(r) if r.status in FAILING else "",
        "url": subject_url(r, web_url),
        "reason": r.details.get("reason"),
        "expired_exception": old == "excepted",
        "since": c.previous.last_changed if c.previous else "new",
    }


def alerts_for(delta: Delta, web_url: str = "https://bitbucket.org") -> list[dict[str, Any]]:
    """Alerts for one written delta (one workspace)."""
    opened = [c for c in delta.opened if not _unread(c.result)]
    if (
        len(opened) >= BASELINE_MIN
        and all(c.previous is None for c in delta.writes)
        and not delta.unchanged
        and not delta.stale
    ):
        counts = Counter(c.result.check for c in opened)
        ws = opened[0].result.workspace
        lines = [f"{REGISTRY[k].title if k in REGISTRY else k}: {n}" for k, n in sorted(counts.items())]
        return [
            {
                "kind": "baseline",
                "workspace": ws,
                "check": "*",
                "title": "First assessment",
                "severity": "info",
                "subject": ws,
                "subject_key": ws,
                "new_status": "fail",
                "message": f"First assessment of {ws}: {len(opened)} results need attention.\n" + "\n".join(lines),
                "fix": "Open the dashboard's Findings page for the details.",
                "url": f"{web_url}/{ws}",
            }
        ]
    # "unknown" → "fail": something that could not be told is now known to fail (e.g. a member just
    # linked to an offboarded person): worth an alert too. A new subject first recorded while its
    # data could not be read (see below), then read as failing or ``unknown`` for a reason the user
    # can fix, is a new subject appearing failing: the alert the fault held back goes out now.
    confirmed = [
        c
        for c in delta.changed
        if c.previous
        and c.result.status in FAILING
        and ((c.previous.result.status == "unknown" and c.result.status == "fail") or _unread(c.previous.result))
    ]
    # A fault alone never alerts (checks.md: only data that was read decides): a new subject whose
    # data could not be read yet is recorded ``unknown`` (reason ``fetch_failed``) without an
    # alert, and its first good reading is not a "resolution" either.
    out = [_alert(c, web_url, "opened") for c in [*opened, *confirmed] if not _unread(c.result)]
    out += [
        _alert(c, web_url, "resolved")
        for c in delta.resolved
        if c.previous is not None and not _unread(c.previous.result)
    ]
    return out


def _unread(r: Result) -> bool:
    """An ``unknown`` that says only that the data could not be read (no earlier good data)."""
    return r.status == "unknown" and r.details.get("reason") == "fetch_failed"

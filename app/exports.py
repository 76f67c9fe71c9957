"""Pure: exports. Findings as CSV, and result transitions as OCSF Compliance Finding events
(class 2003, schema 1.1) one JSON object per line, for SIEMs."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime
from typing import Any

from app import __version__
from app.checks import REGISTRY

CSV_COLUMNS = [
    "workspace",
    "check",
    "severity",
    "subject_type",
    "subject",
    "subject_uuid",
    "subject_name",
    "status",
    "message",
    "details",
    "first_seen",
    "last_changed",
]
SEVERITY_ID = {"info": 1, "low": 2, "medium": 3, "high": 4, "critical": 5}
# OCSF compliance.status_id: 1 Pass, 2 Warning, 3 Fail, 99 Other
STATUS = {
    "pass": (1, "Pass"),
    "fail": (3, "Fail"),
    "unknown": (2, "Warning"),
    "not_applicable": (99, "Other"),
    "excepted": (99, "Other"),
    "retired": (99, "Other"),
}


# A spreadsheet reads a cell starting with one of these as a formula (OWASP: CSV injection).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """A value safe to open in a spreadsheet: text that would start a formula gets a leading ``'``."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def findings_csv(items: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(CSV_COLUMNS)
    for i in items:
        writer.writerow([csv_cell(json.dumps(i[c]) if c == "details" else i[c]) for c in CSV_COLUMNS])
    return buf.getvalue()


def _ms(at: str) -> int:
    return int(datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp() * 1000)


def ocsf(transition: dict[str, Any]) -> dict[str, Any]:
    """One history row (result_history) as an OCSF Compliance Finding."""
    check = REGISTRY.get(transition["check_id"])
    old, new = transition["old_status"], transition["new_status"]
    activity = 1 if old is None else (3 if new in ("pass", "not_applicable", "retired") else 2)
    status_id, status = STATUS.get(new, (99, "Other"))
    severity = check.severity if check else "info"
    return {
        "class_uid": 2003,
        "class_name": "Compliance Finding",
        "category_uid": 2,
        "category_name": "Findings",
        "activity_id": activity,
        "activity_name": {1: "Create", 2: "Update", 3: "Close"}[activity],
        "type_uid": 2003 * 100 + activity,
        "time": _ms(transition["at"]),
        "severity_id": SEVERITY_ID.get(severity, 1),
        "severity": severity.title(),
        "status": new,
        "message": transition["message"],
        "finding_info": {
            "uid": f"{transition['check_id']}:{transition['subject_key']}",
            "title": check.title if check else transition["check_id"],
            "desc": transition["message"],
            "types": ["Bitbucket Cloud"],
        },
        "compliance": {
            "control": transition["check_id"],
            "standards": ["SOC 2", "ISO/IEC 27001"],
            "status_id": status_id,
            "status": status,
            "status_detail": f"{old or 'new'} -> {new}",
        },
        "resources": [
            {
                "uid": transition["subject_key"],
                "name": transition["subject"],
                "type": "Bitbucket " + (check.subject_type if check else "subject"),
                "group": {"name": transition["workspace"]},
            }
        ],
        "metadata": {
            "version": "1.1.0",
            "product": {"name": "lowerplane-bitbucket", "vendor_name": "Lowerplane", "version": __version__},
        },
        "unmapped": {"cause": transition.get("cause"), "details": transition.get("details")},
    }


def ocsf_lines(history: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(ocsf(h), default=str) + "\n" for h in history)

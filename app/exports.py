"""Pure: exports. Findings as CSV, and result transitions as OCSF Compliance Finding events
(class 2003, schema 1.1) one JSON object per line, for SIEMs."""

from __future__ import annotations

import csv
import hashlib
import html
import io
import json
import zipfile
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


# -- the audit pack ----------------------------------------------------------------------------
HISTORY_COLUMNS = [
    "at",
    "workspace",
    "check_id",
    "subject",
    "subject_key",
    "old_status",
    "new_status",
    "cause",
    "message",
]


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(columns)
    for r in rows:
        writer.writerow([csv_cell(r.get(c)) for c in columns])
    return buf.getvalue()


def controls_map() -> list[dict[str, Any]]:
    """Each test with the controls it supports (SOC 2 TSC, ISO/IEC 27001:2022 Annex A)."""
    return [
        {"check": c.id, "title": c.title, "severity": c.severity, "controls": list(c.controls)}
        for c in REGISTRY.values()
    ]


def summary_html(start: str, end: str, generated_at: str, findings: list[dict[str, Any]], files: dict[str, str]) -> str:
    """The pack's front page: the period, each test's controls and counts, and every file's hash."""
    esc = html.escape
    rows = []
    for c in controls_map():
        mine = [f for f in findings if f["check"] == c["check"]]
        counts = {s: sum(1 for f in mine if f["status"] == s) for s in ("pass", "fail", "unknown", "excepted")}
        rows.append(
            f"<tr><td>{esc(c['title'])}<br><small>{esc(c['check'])}</small></td><td>{esc(c['severity'])}</td>"
            f"<td>{esc(', '.join(c['controls']))}</td>"
            + "".join(f"<td>{counts[s]}</td>" for s in ("pass", "fail", "unknown", "excepted"))
            + "</tr>"
        )
    listing = "".join(f"<tr><td>{esc(name)}</td><td><code>{digest}</code></td></tr>" for name, digest in files.items())
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Audit pack '
        f"{esc(start)} to {esc(end)}</title><style>body{{font:14px system-ui,sans-serif;margin:24px}}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}</style></head>"
        f"<body><h1>Bitbucket compliance audit pack</h1><p>Period: {esc(start)} to {esc(end)} (UTC). "
        f"Generated {esc(generated_at)} by lowerplane-bitbucket {esc(__version__)}.</p>"
        "<h2>Tests and the controls they support</h2><table><thead><tr><th>Test</th><th>Severity</th>"
        "<th>Controls</th><th>Pass</th><th>Fail</th><th>Unknown</th><th>Excepted</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table><p>Counts are the results at generation time (findings.csv, findings.json); "
        "history.csv lists every change of a result within the period.</p>"
        "<h2>Files</h2><table><thead><tr><th>File</th><th>SHA-256</th></tr></thead><tbody>"
        + listing
        + "</tbody></table></body></html>"
    )


def audit_pack(
    *,
    start: str,
    end: str,
    generated_at: str,
    findings: list[dict[str, Any]],
    history: list[dict[str, Any]],
    exceptions: list[dict[str, Any]],
    evidence: list[dict[str, Any]],
    evidence_files: dict[int, bytes],
    scope_report: list[dict[str, Any]],
) -> bytes:
    """One ZIP for an auditor: findings (CSV, JSON), the period's history, exceptions, evidence
    with its files and SHA-256 hashes, the scope report, the test-to-control map and a summary
    page; ``SHA256SUMS`` lists every file's hash."""
    files: dict[str, bytes] = {
        "findings.csv": findings_csv(findings).encode(),
        "findings.json": json.dumps(findings, indent=2, default=str).encode(),
        "history.csv": _table(history, HISTORY_COLUMNS).encode(),
        "history.json": json.dumps(history, indent=2, default=str).encode(),
        "exceptions.json": json.dumps(exceptions, indent=2, default=str).encode(),
        "evidence.json": json.dumps(evidence, indent=2, default=str).encode(),
        "scope-report.json": json.dumps(scope_report, indent=2, default=str).encode(),
        "controls.json": json.dumps(controls_map(), indent=2).encode(),
    }
    for e in evidence:
        data = evidence_files.get(int(e["id"]))
        if data is not None:
            files[f"evidence/{e['id']}-{_safe_name(str(e['filename']))}"] = data
    digests = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    files["summary.html"] = summary_html(start, end, generated_at, findings, digests).encode()
    digests["summary.html"] = hashlib.sha256(files["summary.html"]).hexdigest()
    files["SHA256SUMS"] = "".join(f"{d}  {n}\n" for n, d in digests.items()).encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            info = zipfile.ZipInfo(f"audit-pack/{name}", date_time=(2000, 1, 1, 0, 0, 0))
            zf.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
    return buf.getvalue()


def _safe_name(name: str) -> str:
    keep = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in name)
    return keep.lstrip(".")[:100] or "evidence"

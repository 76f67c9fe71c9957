"""A generated workspace written straight into the store (snapshots, results, history, personnel,
classes), for the dashboard's scale test and ``bench/dashboard.py``: building 10,000 repositories
through the sandbox and a reconcile would take minutes, the rows the pages read take seconds."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from app.store import Store
from app.store.snapshots import rebuild_members

REPO_CHECKS = (
    ("repo-classified", "medium"),
    ("branch-protection-enforced", "high"),
    ("merge-requires-peer-review", "high"),
    ("merge-requires-passing-builds", "medium"),
    ("pipelines-enabled", "low"),
)
MEMBER_CHECKS = (("member-mfa-enabled", "high"), ("offboarded-access-removed", "critical"))


def _result(
    check: str, severity: str, ws: str, kind: str, key: str, subject: str, name: str, status: str, at: str
) -> tuple[object, ...]:
    message = f"{subject}: {check} {status}"
    return (check, key, ws, kind, subject, key, name, severity, status, message, "{}", "fp", at, at, None)


async def seed(store: Store, ws: str = "big", repos: int = 10_000, members: int = 20_000) -> None:
    """``repos`` repositories (a third classified) and ``members`` members (half linked by account
    id, a tenth by email, a few offboarded) with every test's result and one history row each."""
    now = datetime.now(UTC)
    at = (now - timedelta(days=3)).isoformat()
    snaps: list[tuple[object, ...]] = []
    results: list[tuple[object, ...]] = []
    classes: list[tuple[object, ...]] = []
    uuids = []
    for i in range(repos):
        uuid = f"{{r{i:07d}-0000-0000-0000-000000000000}}"
        uuids.append(uuid)
        slug = f"repo-{i}"
        content = {
            "uuid": uuid,
            "full_name": f"{ws}/{slug}",
            "slug": slug,
            "name": f"Repo {i}",
            "workspace": ws,
            "is_private": True,
            "language": "python",
            "mainbranch": "main",
            "project_key": f"P{i % 20}",
            "project_name": f"Project {i % 20}",
            "updated_on": at,
        }
        snaps.append((f"repo:{uuid}", ws, "repo", json.dumps(content), "h", at))
        snaps.append((f"repo:{uuid}:prs", ws, "prs", json.dumps(i % 4), "h", at))
        if i % 3 == 0:
            classes.append((uuid, ws, f"{ws}/{slug}", "production" if i % 2 else "non-production", "test", at))
        for check, sev in REPO_CHECKS:
            status = "fail" if (i + len(check)) % 5 == 0 else "pass"
            results.append(_result(check, sev, ws, "repository", uuid, f"{ws}/{slug}", f"Repo {i}", status, at))
    snaps.append((f"repos:{ws}", ws, "repos", json.dumps(uuids), "h", at))
    raw_members = []
    people: list[tuple[object, ...]] = []
    links: dict[str, str] = {}
    for i in range(members):
        account = f"acct-{i:06d}"
        raw_members.append({"user": {"account_id": account, "display_name": f"User {i}"}, "permission": "member"})
        email = f"user{i}@example.com"
        status = "offboarded" if i % 97 == 0 else "active"
        if i % 2 == 0:
            people.append(
                (
                    email,
                    f"User {i}",
                    "employee",
                    status,
                    "2026-01-01" if status == "offboarded" else None,
                    account,
                    None,
                    at,
                )
            )
        elif i % 10 == 1:
            people.append((email, f"User {i}", "employee", "active", None, None, None, at))
            links[email] = account
        for check, sev in MEMBER_CHECKS:
            st = "fail" if (check == "member-mfa-enabled" and i % 7 == 0) or status == "offboarded" else "pass"
            results.append(_result(check, sev, ws, "member", account, f"User {i}", f"User {i}", st, at))
    snaps.append((f"members:{ws}", ws, "members", json.dumps(raw_members), "h", at))
    snaps.append((f"email_links:{ws}", ws, "email_links", json.dumps({"available": True, "links": links}), "h", at))
    results.append(_result("workspace-mfa-enforced", "high", ws, "workspace", ws, ws, ws, "fail", at))
    history = [(r[0], r[1], r[2], r[4], at, None, r[8], r[9], "{}", "reconcile") for r in results]
    async with store.db.transaction() as conn:
        await conn.executemany(
            "INSERT OR REPLACE INTO snapshots (key, workspace, kind, content, hash, fetched_at) VALUES (?,?,?,?,?,?)",
            snaps,
        )
        await conn.executemany(
            """INSERT OR REPLACE INTO results (check_id, subject_key, workspace, subject_type, subject, subject_uuid,
               subject_name, severity, status, message, details, fingerprint, first_seen, last_changed, stale_since)
               VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)""",
            results,
        )
        await conn.executemany(
            """INSERT INTO result_history (check_id, subject_key, workspace, subject, at, old_status, new_status,
               message, details, cause) VALUES (?,?,?,?,?,?,?,?,?,?)""",
            history,
        )
        await conn.executemany(
            "INSERT OR REPLACE INTO repo_classes (repo_uuid, workspace, full_name, class, set_by, set_at) "
            "VALUES (?,?,?,?,?,?)",
            classes,
        )
        await conn.executemany(
            """INSERT OR REPLACE INTO personnel (email, name, kind, status, offboarded_on, bitbucket_account_id, owner,
               updated_at) VALUES (?,?,?,?,?,?,?,?)""",
            people,
        )
        await rebuild_members(conn, ws)  # as storing the member list through the store does


# -- measuring a page in the browser ------------------------------------------------------------
PAGES = (
    "/",
    "/findings",
    "/findings?status=fail&sort=severity",
    "/findings?q=repo-99&page=2",
    "/findings/subject?check=branch-protection-enforced&subject=big/repo-5",
    "/repositories",
    "/repositories?class=unclassified&sort=project&dir=desc&page=20",
    "/members",
    "/members?link=unlinked&sort=name&dir=desc&page=40",
    "/personnel",
    "/events",
    "/operations",
    "/evidence",
    "/exceptions",
    "/connections",
    "/settings",
    "/audit-pack",
)


async def measure(page: Any, url: str) -> dict[str, float]:
    """Open ``url`` and read the browser's navigation timing: ``server`` (request sent → last byte),
    ``total`` (navigation start → load event end) in ms, and the HTML's size in bytes."""
    await page.goto(url, wait_until="load")
    timing = await page.evaluate(
        """() => { const n = performance.getEntriesByType('navigation')[0];
                   return {server: n.responseEnd - n.requestStart, total: n.loadEventEnd - n.startTime,
                           bytes: n.transferSize || n.encodedBodySize}; }"""
    )
    return {k: float(v) for k, v in timing.items()}

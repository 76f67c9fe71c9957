"""Read queries for the dashboard's lists: filtered, sorted and paged in SQL (LIMIT/OFFSET), each
with the total and per-facet counts, so a page costs the same at 10 repositories or 10,000.

Repositories are read from the stored snapshots (``json_each``/``json_extract``); members from
the members table (schema 6), which keeps each member's natural sort key ("User 2" before
"User 10", ``lp_natkey``) indexed.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from app.store.db import Database


def _glob_regex(pattern: str) -> str:
    """The classification rules' glob (``*`` spans anything, every other character is literal)."""
    return "^" + ".*".join(re.escape(part) for part in pattern.split("*")) + "$"


@dataclass
class Page:
    items: list[dict[str, Any]]
    total: int
    counts: dict[str, int] = field(default_factory=dict)


def _like(q: str) -> str:
    return "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


SEVERITY_RANK = (
    "CASE severity WHEN 'critical' THEN 0 WHEN 'high' THEN 1 WHEN 'medium' THEN 2 WHEN 'low' THEN 3 ELSE 4 END"
)
STATUS_RANK = (
    "CASE status WHEN 'fail' THEN 0 WHEN 'unknown' THEN 1 WHEN 'excepted' THEN 2 WHEN 'pass' THEN 3 ELSE 4 END"
)

# "status" is the Findings' default order; schema 6's index ``results_rank`` is on these very
# expressions (change one, change both), so a page of findings is read in index order.
RESULT_SORTS = {
    "status": f"{STATUS_RANK}, {SEVERITY_RANK}, check_id, subject",
    "severity": f"{SEVERITY_RANK}, {STATUS_RANK}, check_id, subject",
    "test": "check_id, subject",
    "subject": "subject, check_id",
    "since": "last_changed, check_id, subject",
    "workspace": "workspace, check_id, subject",
}
REPO_SORTS = {
    "name": "full_name",
    "project": "project, full_name",
    "class": "cls IS NULL DESC, cls, full_name",
    "workspace": "workspace, full_name",
}
MEMBER_SORTS = {
    "name": "name_key, account_id",
    "workspace": "workspace, name_key, account_id",
    "permission": "permission, name_key, account_id",
    "status": "offboarded DESC, linked_by IS NULL DESC, name_key, account_id",
}


def _order(sorts: dict[str, str], sort: str, desc: bool, default: str) -> str:
    clause = sorts.get(sort) or sorts[default]
    if not desc:
        return clause
    return ", ".join(part if part.endswith(" DESC") else f"{part} DESC" for part in clause.split(", "))


# The members query's few SQLite-only forms and their PostgreSQL equivalents.
_PG_FORMS = (
    (
        "FROM snapshots s, json_each(s.content) j",
        "FROM snapshots s CROSS JOIN LATERAL jsonb_array_elements(s.content::jsonb) j(value)",
    ),
    (
        "FROM snapshots s, json_each(s.content, '$.links') l",
        "FROM snapshots s CROSS JOIN LATERAL jsonb_each_text(s.content::jsonb -> 'links') l(key, value)",
    ),
    ("coalesce(p.status = 'offboarded', 0)", "coalesce(p.status = 'offboarded', false)"),
    ("WHERE +m.workspace IN", "WHERE m.workspace IN"),  # SQLite: unary + keeps the sort's index driving
    ("json_object(", "json_build_object("),
)


def _dialect(dialect: str, sql: str) -> str:
    if dialect == "sqlite":
        return sql
    for sqlite, pg in _PG_FORMS:
        sql = sql.replace(sqlite, pg)
    return sql


class Views:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- results ------------------------------------------------------------------------------
    async def results(
        self,
        *,
        workspace: str | None = None,
        check: str | None = None,
        status: str | None = None,
        severity: str | None = None,
        q: str | None = None,
        sort: str = "status",
        desc: bool = False,
        limit: int = 50,
        offset: int = 0,
    ) -> Page:
        """A page of results with the total and the count per status under the other filters."""
        where: list[str] = []
        params: list[Any] = []
        for column, value in (("workspace", workspace), ("check_id", check), ("severity", severity)):
            if value:
                where.append(f"{column} = ?")
                params.append(value)
        if q:
            where.append(
                "(subject LIKE ? ESCAPE '\\' OR subject_name LIKE ? ESCAPE '\\' OR subject_key LIKE ? ESCAPE '\\')"
            )
            params += [_like(q)] * 3
        rows, total, counts = await self._counted(
            "results", where, params, status, _order(RESULT_SORTS, sort, desc, "status"), limit, offset
        )
        items = [dict(r) | {"details": json.loads(r["details"])} for r in rows]
        return Page(items, total, counts)

    # -- repositories ---------------------------------------------------------------------------
    async def _counted(
        self, table: str, where: list[str], params: list[Any], status: str | None, order: str, limit: int, offset: int
    ) -> tuple[list[Any], int, dict[str, int]]:
        """One page of ``table`` under ``where`` in ``order``, its total, and the count per status
        under the other filters (the status filter narrows the page and the total, not the counts).
        ``table`` and ``order`` are fixed fragments of this module; every value is a parameter."""
        base = " WHERE " + " AND ".join(where) if where else ""
        if any("LIKE" in w for w in where):
            # a text search reads every row anyway: scan the table and sort the few matches, rather
            # than walk an index and fetch each row it names
            table = f"{table} NOT INDEXED"
        counts = {
            str(r[0]): int(r[1])
            for r in await self.db.fetchall(f"SELECT status, count(*) FROM {table}{base} GROUP BY status", params)
        }
        if status:
            where, params = [*where, "status = ?"], [*params, status]
        filt = " WHERE " + " AND ".join(where) if where else ""
        total = counts.get(status, 0) if status else sum(counts.values())
        rows = await self.db.fetchall(
            f"SELECT * FROM {table}{filt} ORDER BY {order} LIMIT ? OFFSET ?", [*params, limit, offset]
        )
        return list(rows), total, counts

    async def repositories(
        self,
        workspaces: Sequence[str],
        rules: Sequence[dict[str, Any]],
        *,
        workspace: str | None = None,
        project: str | None = None,
        cls: str | None = None,
        q: str | None = None,
        sort: str = "name",
        desc: bool = False,
        limit: int = 50,
        offset: int = 0,
    ) -> Page:
        """A page of the connected workspaces' repositories with their class (explicit, else the
        first matching rule, the same order as the evaluation uses); counts per class."""
        wss = [w for w in workspaces if not workspace or w == workspace]
        if not wss:
            return Page([], 0, {})
        cls_cases, src_cases = [], []
        cls_params: list[Any] = []
        src_params: list[Any] = []
        for rule in rules:
            conds: list[str] = []
            cond_params: list[Any] = []
            if rule.get("workspace"):
                conds.append("s.workspace = ?")
                cond_params.append(rule["workspace"])
            if rule.get("project_key"):
                conds.append("json_extract(s.content, '$.project_key') = ?")
                cond_params.append(rule["project_key"])
            elif rule.get("name_glob"):
                rx = _glob_regex(rule["name_glob"])
                conds.append(
                    "(lp_regexp(?, json_extract(s.content, '$.slug'))"
                    " OR lp_regexp(?, json_extract(s.content, '$.name')))"
                )
                cond_params += [rx, rx]
            else:
                continue
            cls_cases.append(f"WHEN {' AND '.join(conds)} THEN ?")
            src_cases.append(f"WHEN {' AND '.join(conds)} THEN ?")
            cls_params += [*cond_params, rule["class"]]
            src_params += [*cond_params, f"rule:{rule['id']}"]
        rule_cls = f"CASE {' '.join(cls_cases)} END" if cls_cases else "NULL"
        rule_src = f"CASE {' '.join(src_cases)} END" if src_cases else "NULL"
        marks = ",".join("?" * len(wss))
        inner = f"""
            SELECT s.key AS key, s.workspace AS workspace, json_extract(s.content, '$.uuid') AS uuid,
                   json_extract(s.content, '$.full_name') AS full_name, json_extract(s.content, '$.name') AS name,
                   json_extract(s.content, '$.project_key') AS project,
                   json_extract(s.content, '$.mainbranch') AS mainbranch,
                   json_extract(s.content, '$.is_private') AS is_private,
                   json_extract(s.content, '$.language') AS language,
                   coalesce(rc.class, {rule_cls}) AS cls,
                   CASE WHEN rc.class IS NOT NULL THEN 'explicit' ELSE {rule_src} END AS class_source
            FROM snapshots s LEFT JOIN repo_classes rc ON rc.repo_uuid = json_extract(s.content, '$.uuid')
            WHERE s.kind = 'repo' AND s.content IS NOT NULL AND s.workspace IN ({marks})"""
        inner_params = [*cls_params, *src_params, *wss]
        where: list[str] = []
        params: list[Any] = []
        if project:
            where.append("project = ?")
            params.append(project)
        if q:
            where.append("full_name LIKE ? ESCAPE '\\'")
            params.append(_like(q))
        base = " WHERE " + " AND ".join(where) if where else ""
        counts = {
            str(r[0] or "unclassified"): int(r[1])
            for r in await self.db.fetchall(
                f"SELECT cls, count(*) FROM ({inner}) v{base} GROUP BY cls", [*inner_params, *params]
            )
        }
        if cls:
            where.append("cls IS NULL" if cls == "unclassified" else "cls = ?")
            params += [] if cls == "unclassified" else [cls]
        filt = " WHERE " + " AND ".join(where) if where else ""
        total = counts.get(cls, 0) if cls else sum(counts.values())
        rows = await self.db.fetchall(
            f"""SELECT v.*, p.content AS prs, rs.fetched_at AS restrictions_read_at
                FROM ({inner}) v LEFT JOIN snapshots p ON p.key = v.key || ':prs'
                LEFT JOIN snapshots rs ON rs.key = 'restrictions:' || v.uuid
                {filt}
                ORDER BY {_order(REPO_SORTS, sort, desc, "name")} LIMIT ? OFFSET ?""",
            [*inner_params, *params, limit, offset],
        )
        items = [
            {
                "uuid": r["uuid"],
                "full_name": r["full_name"],
                "workspace": r["workspace"],
                "name": r["name"],
                "project": r["project"],
                "mainbranch": r["mainbranch"],
                "is_private": r["is_private"] in (1, True, "true"),  # SQLite: 1; PostgreSQL: JSON's text
                "language": r["language"],
                "class": r["cls"],
                "class_source": r["class_source"] if r["cls"] else None,
                "open_pullrequests": json.loads(r["prs"]) if r["prs"] is not None else None,
                # the last good reading of its branch restrictions (freshness; a failed read keeps it)
                "restrictions_read_at": r["restrictions_read_at"] if r["mainbranch"] else None,
            }
            for r in rows
        ]
        return Page(items, total, counts)

    async def projects(self, workspaces: Sequence[str]) -> list[str]:
        if not workspaces:
            return []
        marks = ",".join("?" * len(workspaces))
        rows = await self.db.fetchall(
            f"""SELECT DISTINCT json_extract(content, '$.project_key') FROM snapshots
                WHERE kind = 'repo' AND content IS NOT NULL AND workspace IN ({marks}) ORDER BY 1""",
            list(workspaces),
        )
        return [str(r[0]) for r in rows if r[0]]

    # -- members --------------------------------------------------------------------------------
    async def members(
        self,
        workspaces: Sequence[str],
        *,
        workspace: str | None = None,
        link: str | None = None,
        q: str | None = None,
        sort: str = "name",
        desc: bool = False,
        limit: int = 50,
        offset: int = 0,
    ) -> Page:
        """A page of the connected workspaces' members with the person they are linked to (by
        account id, else by the email the offboarding test matched) or their mark; counts per
        link state (linked, marked, unlinked, offboarded).

        Read from the members table (one row per member, written when the member list or the
        email lookup is stored), so a page by name, workspace or role walks an index for its 50
        rows; the person and mark are joined by key, as they stand now."""
        wss = [w for w in workspaces if not workspace or w == workspace]
        if not wss:
            return Page([], 0, {})
        marks = ",".join("?" * len(wss))
        # People by account id (the first of several), and the workspaces whose email lookup is
        # current: each read once, then joined by key; ``+m.workspace`` keeps the sort's index
        # (name, role) driving the scan, so a page by name reads its rows in order and stops.
        inner = f"""
            WITH acct AS MATERIALIZED (
                SELECT bitbucket_account_id AS account_id, min(id) AS id FROM personnel
                WHERE bitbucket_account_id IS NOT NULL GROUP BY 1
            ), fresh AS MATERIALIZED (
                SELECT workspace FROM snapshots WHERE kind = 'email_links' AND workspace IN ({marks})
                    AND stale_since IS NULL AND content IS NOT NULL
            )
            SELECT m.workspace AS workspace, m.account_id AS account_id, m.display_name AS display_name,
                   m.permission AS permission, m.name_key AS name_key,
                   CASE WHEN pa.id IS NOT NULL THEN 'account_id' WHEN pe.id IS NOT NULL THEN 'email' END
                       AS linked_by,
                   p.email AS p_email, p.name AS p_name, p.kind AS p_kind, p.status AS p_status,
                   p.offboarded_on AS p_offboarded_on, p.owner AS p_owner,
                   mk.mark AS mark, mk.owner AS mark_owner,
                   coalesce(p.status = 'offboarded', 0) AS offboarded,
                   CASE WHEN p.status = 'offboarded' THEN 'offboarded' WHEN p.id IS NOT NULL THEN 'linked'
                        WHEN mk.mark IS NOT NULL THEN 'marked' ELSE 'unlinked' END AS link
            FROM members m
            LEFT JOIN acct pa ON pa.account_id = m.account_id
            LEFT JOIN personnel pe ON pe.email = m.email AND m.workspace IN (SELECT workspace FROM fresh)
            LEFT JOIN personnel p ON p.id = coalesce(pa.id, pe.id)
            LEFT JOIN member_marks mk ON mk.workspace = m.workspace AND mk.account_id = m.account_id
            WHERE +m.workspace IN ({marks})"""
        where: list[str] = []
        params: list[Any] = [*wss, *wss]
        if q:
            where.append(
                "(display_name LIKE ? ESCAPE '\\' OR account_id LIKE ? ESCAPE '\\' OR p_email LIKE ? ESCAPE '\\')"
            )
            params += [_like(q)] * 3
        base = " WHERE " + " AND ".join(where) if where else ""
        counts = {
            str(r[0]): int(r[1])
            for r in await self.db.fetchall(
                _dialect(self.db.dialect, f"SELECT link, count(*) FROM ({inner}) AS members_page{base} GROUP BY link"),
                params,
            )
        }
        if link:
            where.append("link = ?")
            params.append(link)
        filt = " WHERE " + " AND ".join(where) if where else ""
        total = counts.get(link, 0) if link else sum(counts.values())
        rows = await self.db.fetchall(
            _dialect(
                self.db.dialect,
                f"SELECT * FROM ({inner}) AS members_page{filt}"
                f" ORDER BY {_order(MEMBER_SORTS, sort, desc, 'name')} LIMIT ? OFFSET ?",
            ),
            [*params, limit, offset],
        )
        items = [
            {
                "workspace": r["workspace"],
                "account_id": r["account_id"],
                "display_name": r["display_name"],
                "permission": r["permission"],
                "linked_by": r["linked_by"],
                "person": {
                    "email": r["p_email"],
                    "name": r["p_name"],
                    "kind": r["p_kind"],
                    "status": r["p_status"],
                    "offboarded_on": r["p_offboarded_on"],
                    "owner": r["p_owner"],
                }
                if r["p_email"]
                else None,
                "mark": {"kind": r["mark"], "owner": r["mark_owner"]} if r["mark"] else None,
                "link": r["link"],
            }
            for r in rows
        ]
        return Page(items, total, counts)

    # -- events ---------------------------------------------------------------------------------
    async def events(
        self,
        *,
        state: str | None = None,
        event_key: str | None = None,
        workspace: str | None = None,
        q: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> Page:
        """A page of the event log, newest first, with the count per state under the other filters."""
        where: list[str] = []
        params: list[Any] = []
        for column, value in (("event_key", event_key), ("workspace", workspace)):
            if value:
                where.append(f"{column} = ?")
                params.append(value)
        if q:
            where.append("(error LIKE ? ESCAPE '\\' OR caused LIKE ? ESCAPE '\\')")
            params += [_like(q)] * 2
        base = " WHERE " + " AND ".join(where) if where else ""
        counts = {
            str(r[0]): int(r[1])
            for r in await self.db.fetchall(f"SELECT state, count(*) FROM events{base} GROUP BY state", params)
        }
        if state:
            where.append("state = ?")
            params.append(state)
        filt = " WHERE " + " AND ".join(where) if where else ""
        total = counts.get(state, 0) if state else sum(counts.values())
        rows = await self.db.fetchall(
            f"SELECT id FROM events{filt} ORDER BY id DESC LIMIT ? OFFSET ?", [*params, limit, offset]
        )
        return Page([{"id": int(r[0])} for r in rows], total, counts)

    async def event_keys(self) -> list[str]:
        return [str(r[0]) for r in await self.db.fetchall("SELECT DISTINCT event_key FROM events ORDER BY 1")]

    async def queue(self) -> dict[str, Any]:
        """Queue depth, the oldest queued event's time, and the dead events (operator's panel)."""
        depth = await self.db.fetchone(
            "SELECT count(*), min(received_at) FROM events WHERE state IN ('queued', 'running', 'failed')"
        )
        return {"depth": int(depth[0]) if depth else 0, "oldest": depth[1] if depth else None}

    async def dead_events(self, limit: int = 20) -> list[dict[str, Any]]:
        rows = await self.db.fetchall(
            "SELECT id, event_key, workspace, error, tries, received_at, finished_at FROM events "
            "WHERE state = 'dead' ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        return [dict(r) for r in rows]

    async def retry_dead(self, eid: int, now: float) -> bool:
        """Put a dead event back in the queue (operator's retry); False if it is not dead."""
        rows = await self.db.write_returning(
            "UPDATE events SET state = 'queued', tries = 0, next_attempt_at = 0, lease_until = NULL, "
            "changed_at = ? WHERE id = ? AND state = 'dead' RETURNING id",
            (now, eid),
        )
        return bool(rows)

    async def passes(self, connection: str, workspace: str) -> dict[str, dict[str, Any]]:
        """Per tier of ``lp:reconcile``: the last finished pass and the one queued or running."""
        out: dict[str, dict[str, Any]] = {}
        for tier in ("members", "full"):
            last = await self.db.fetchone(
                "SELECT id, state, started_at, finished_at, error, caused FROM events "
                "WHERE event_key = 'lp:reconcile' AND connection_id = ? AND workspace = ? "
                "AND state IN ('done', 'dead', 'failed') AND coalesce(json_extract(payload, '$.tier'), 'full') = ? "
                "ORDER BY id DESC LIMIT 1",
                (connection, workspace, tier),
            )
            nxt = await self.db.fetchone(
                "SELECT value FROM meta WHERE key = ?", (f"next:{tier}:{connection}:{workspace}",)
            )
            out[tier] = {
                "last": dict(last) | {"caused": json.loads(last["caused"]) if last["caused"] else None}
                if last
                else None,
                "current": await self.current_pass(connection, workspace, tier),
                "next_at": float(nxt[0]) if nxt else None,
            }
        return out

    async def current_pass(self, connection: str, workspace: str, tier: str = "full") -> dict[str, Any] | None:
        """The pass of this tier queued or running now, with a running pass's progress
        (``{"step": ..., "done": n, "total": m, "waiting_until": ..., "why": ...}``) as the worker
        records it in ``caused`` (app/worker.py ``PassProgress``); None when there is none."""
        now = await self.db.fetchone(
            "SELECT id, state, received_at, started_at, caused FROM events "
            "WHERE event_key = 'lp:reconcile' AND connection_id = ? AND workspace = ? "
            "AND state IN ('queued', 'running') AND coalesce(json_extract(payload, '$.tier'), 'full') = ? "
            "ORDER BY id LIMIT 1",
            (connection, workspace, tier),
        )
        if now is None:
            return None
        progress = None
        if now["state"] == "running" and now["caused"]:
            progress = (json.loads(now["caused"]) or {}).get("progress")
        return dict(now) | {"progress": progress}

    async def assessed(self, connection: str, workspace: str) -> bool:
        """Whether a full pass of this workspace has finished (the first assessment is done).
        Once true it stays true: remembered on the connection (``/readyz`` asks at every probe)."""
        done: set[tuple[str, str]] = self.db.__dict__.setdefault("_lp_assessed", set())
        if (connection, workspace) in done:
            return True
        row = await self.db.fetchone(
            "SELECT 1 FROM events WHERE event_key = 'lp:reconcile' AND connection_id = ? AND workspace = ? "
            "AND state = 'done' AND coalesce(json_extract(payload, '$.tier'), 'full') = 'full' LIMIT 1",
            (connection, workspace),
        )
        if row is not None:
            done.add((connection, workspace))
        return row is not None

    async def first_steps(self, policy: list[str], report: list[str], classify: list[str]) -> dict[str, int]:
        """What the guided first steps look at: people imported, explicit classes and rules, 2SV
        evidence (the tests named by the caller: workspace policy, member report, classification)."""

        def among(ids: list[str]) -> str:
            return "(" + ",".join("?" * len(ids)) + ")" if ids else "(NULL)"

        row = await self.db.fetchone(
            f"""SELECT (SELECT count(*) FROM personnel),
                      (SELECT count(*) FROM repo_classes) + (SELECT count(*) FROM class_rules),
                      (SELECT count(*) FROM evidence WHERE revoked_at IS NULL AND check_id IN {among(policy)}),
                      (SELECT count(*) FROM evidence WHERE revoked_at IS NULL AND check_id IN {among(report)}),
                      (SELECT count(*) FROM results WHERE check_id IN {among(classify)} AND status = 'fail')""",
            (*policy, *report, *classify),
        )
        assert row is not None
        return {
            "people": int(row[0]),
            "classified": int(row[1]),
            "policy_evidence": int(row[2]),
            "report_evidence": int(row[3]),
            "unclassified": int(row[4]),
        }

    async def history_between(self, start: str, end: str) -> list[dict[str, Any]]:
        rows = await self.db.fetchall("SELECT * FROM result_history WHERE at >= ? AND at < ? ORDER BY id", (start, end))
        return [dict(r) | {"details": json.loads(r["details"])} for r in rows]

    async def trend(self, days: int) -> list[dict[str, Any]]:
        """Transitions into or out of failing per day (the Overview's chart), summed in SQL over
        the rows of the period that change the failing count (index ``result_history_at``)."""
        since = time.strftime("%Y-%m-%d", time.gmtime(time.time() - days * 86400))  # SQLite's date('now', -days)
        failing_new = "CASE WHEN new_status IN ('fail', 'unknown') THEN 1 ELSE 0 END"
        failing_old = "CASE WHEN old_status IN ('fail', 'unknown') THEN 1 ELSE 0 END"
        rows = await self.db.fetchall(
            f"""SELECT substr(at, 1, 10) AS day, sum({failing_new} - {failing_old})
               FROM result_history WHERE at >= ? AND {failing_new} <> {failing_old} GROUP BY 1""",
            (since,),
        )
        return [{"day": str(r[0]), "delta": int(r[1] or 0)} for r in rows]

    async def people(
        self, *, status: str | None = None, q: str | None = None, limit: int = 50, offset: int = 0
    ) -> Page:
        """A page of the personnel directory (offboarded first, then by name), counts per status."""
        where: list[str] = []
        params: list[Any] = []
        if q:
            where.append(
                "(name LIKE ? ESCAPE '\\' OR email LIKE ? ESCAPE '\\' OR bitbucket_account_id LIKE ? ESCAPE '\\')"
            )
            params += [_like(q)] * 3
        rows, total, counts = await self._counted(
            "personnel", where, params, status, "status = 'active', lp_natkey(name), email", limit, offset
        )
        return Page([dict(r) for r in rows], total, counts)

    async def repo_updates(self, workspace: str) -> list[str]:
        """``updated_on`` of every listed repository of a workspace (webhook health), one query."""
        each = (
            "json_each(l.content) j"
            if self.db.dialect == "sqlite"
            else "jsonb_array_elements_text(l.content::jsonb) j(value)"
        )
        rows = await self.db.fetchall(
            f"""SELECT json_extract(s.content, '$.updated_on') FROM snapshots l CROSS JOIN {each}
               JOIN snapshots s ON s.key = 'repo:' || j.value
               WHERE l.key = ? AND l.content IS NOT NULL AND s.content IS NOT NULL""",
            (f"repos:{workspace}",),
        )
        return [str(r[0]) for r in rows if r[0]]

    async def not_admin_repositories(self, workspaces: Sequence[str]) -> list[str]:
        """Repositories whose admin-only reads were refused for want of the admin permission."""
        if not workspaces:
            return []
        marks = ",".join("?" * len(workspaces))
        object_content = (
            "json_valid(s.content) AND json_type(s.content) = 'object'"
            if self.db.dialect == "sqlite"
            else "s.content LIKE '{%'"  # what is stored is JSON; an object starts with a brace
        )
        rows = await self.db.fetchall(
            f"""SELECT DISTINCT coalesce(json_extract(r.content, '$.full_name'), substr(s.key, instr(s.key, ':') + 1))
                FROM snapshots s LEFT JOIN snapshots r ON r.key = 'repo:' || substr(s.key, instr(s.key, ':') + 1)
                WHERE s.workspace IN ({marks}) AND (s.key LIKE 'restrictions:%' OR s.key LIKE 'pipelines:%')
                  AND {object_content}
                  AND json_extract(s.content, '$.unreadable.reason') = 'missing_permission'
                ORDER BY 1""",
            list(workspaces),
        )
        return [str(r[0]) for r in rows]

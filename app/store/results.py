"""Results per (test, subject) with ``first_seen``/``last_changed``, and every transition."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any

from app.findings import Delta, Key, diff, fingerprint, key
from app.models import Result, StoredResult
from app.store.db import Database
from app.store.outbox import Entry, insert


def _result(row: Any) -> StoredResult:
    return StoredResult(
        result=Result(
            check=row["check_id"],
            severity=row["severity"],
            workspace=row["workspace"],
            subject_type=row["subject_type"],
            subject_key=row["subject_key"],
            subject=row["subject"],
            subject_uuid=row["subject_uuid"],
            subject_name=row["subject_name"],
            status=row["status"],
            message=row["message"],
            details=json.loads(row["details"]),
        ),
        fingerprint=row["fingerprint"],
        first_seen=row["first_seen"],
        last_changed=row["last_changed"],
        stale_since=row["stale_since"],
    )


# pg_advisory_xact_lock(RECORD_LOCK, hashtext(workspace)): one recorder of a workspace's results at a
# time across instances (app.store.pg.MIGRATE_LOCK is another key of the same number space).
RECORD_LOCK = 0x4C50_0002


def _same(a: StoredResult | None, b: StoredResult | None) -> bool:
    """The stored result did not move between two reads."""
    if a is None or b is None:
        return a is b
    return (a.fingerprint, a.stale_since, a.last_changed) == (b.fingerprint, b.stale_since, b.last_changed)


async def _current(conn: Any, workspace: str, keys: set[Key]) -> dict[Key, StoredResult]:
    """The stored results of ``keys`` as this transaction sees them: read by primary key
    (workspace, test, subject; 400 subjects a query), so the cost follows the keys, not the
    size of the workspace."""
    checks = sorted({check for check, _ in keys})
    subjects = sorted({subject for _, subject in keys})
    found: dict[Key, StoredResult] = {}
    for start in range(0, len(subjects), 400):
        chunk = subjects[start : start + 400]
        cur = await conn.execute(
            f"SELECT * FROM results WHERE workspace = ? AND check_id IN ({','.join('?' * len(checks))})"
            f" AND subject_key IN ({','.join('?' * len(chunk))})",
            (workspace, *checks, *chunk),
        )
        for row in await cur.fetchall():
            k = (row["check_id"], row["subject_key"])
            if k in keys:
                found[k] = _result(row)
    return found


async def _revise(conn: Any, dialect: str, delta: Delta) -> None:
    """Bring ``delta`` up to date with the results as stored now, inside the recording transaction
    (see :meth:`Results.apply`). Nothing moved (the usual case): the delta stands as it is.
    Otherwise the fresh results are diffed again against what is stored now: a change another
    writer already recorded becomes unchanged, a stale mark of a result already stale or retired
    is dropped, a retirement of a result already retired is dropped."""
    previous = {key(s.result): s for s in (*delta.stale, *delta.retired)}
    previous |= {key(c.result): c.previous for c in delta.writes if c.previous is not None}
    keys = set(previous) | {key(c.result) for c in delta.writes}
    by_workspace: dict[str, set[Key]] = {}
    for c in delta.writes:
        by_workspace.setdefault(c.result.workspace, set()).add(key(c.result))
    for s in (*delta.stale, *delta.retired):
        by_workspace.setdefault(s.result.workspace, set()).add(key(s.result))
    current: dict[Key, StoredResult] = {}
    for workspace, wanted in sorted(by_workspace.items()):
        if dialect == "postgresql":
            await conn.execute("SELECT pg_advisory_xact_lock(?, hashtext(?))", (RECORD_LOCK, workspace))
        current |= await _current(conn, workspace, wanted)
    if all(_same(previous.get(k), current.get(k)) for k in keys):
        return
    writes = [c.result for c in delta.writes]
    again = diff({key(r): current[key(r)] for r in writes if key(r) in current}, writes, lambda _: False)
    delta.opened, delta.resolved, delta.changed = again.opened, again.resolved, again.changed
    delta.unchanged = [*delta.unchanged, *again.unchanged]
    stale = {key(s.result) for s in delta.stale}
    delta.stale = [
        *again.stale,
        *(current[k] for k in sorted(stale) if k in current and current[k].stale_since is None),
    ]
    delta.retired = [current[key(s.result)] for s in delta.retired if key(s.result) in current]


class Results:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def load(
        self,
        workspace: str | None = None,
        *,
        subjects: Collection[str] | None = None,
        checks: Collection[str] | None = None,
        subject_type: str | None = None,
        other_than: str | None = None,
    ) -> dict[Key, StoredResult]:
        """Stored results, narrowed to a workspace, subject keys, tests, a subject type (or every
        type ``other_than`` one). With ``subjects`` and ``checks`` both given the rows are read by
        primary key, so the cost follows the subjects asked for, not the size of the workspace."""
        where: list[str] = []
        params: list[Any] = []
        if workspace:
            where.append("workspace = ?")
            params.append(workspace)
        if checks is not None:
            where.append("check_id IN (" + ",".join("?" * len(checks)) + ")")
            params += sorted(checks)
        if subject_type is not None:
            where.append("subject_type = ?")
            params.append(subject_type)
        if other_than is not None:
            where.append("subject_type <> ?")
            params.append(other_than)
        sql = "SELECT * FROM results" + (" WHERE " + " AND ".join(where) if where else "")
        if subjects is None:
            rows = list(await self.db.fetchall(sql, params))
        else:
            wanted = sorted(set(subjects))
            rows = []
            joiner = " AND " if where else " WHERE "
            for start in range(0, len(wanted), 400):
                chunk = wanted[start : start + 400]
                marks = ",".join("?" * len(chunk))
                rows += await self.db.fetchall(f"{sql}{joiner}subject_key IN ({marks})", [*params, *chunk])
        return {(r["check_id"], r["subject_key"]): _result(r) for r in rows}

    async def exist(self, workspace: str, checks: Collection[str] | None = None) -> bool:
        """Whether the workspace has any stored result (of one of ``checks``, when given)."""
        sql, params = "SELECT 1 FROM results WHERE workspace = ?", [workspace]
        if checks is not None:
            if not checks:
                return False
            sql += " AND check_id IN (" + ",".join("?" * len(checks)) + ")"
            params += sorted(checks)
        return await self.db.fetchone(sql + " LIMIT 1", params) is not None

    async def checks(self, workspace: str) -> frozenset[str]:
        """The tests a workspace has stored results of (an index range per test, not a scan)."""
        rows = await self.db.fetchall("SELECT DISTINCT check_id FROM results WHERE workspace = ?", (workspace,))
        return frozenset(str(r[0]) for r in rows)

    async def subject_keys(self, workspace: str, subject_type: str) -> set[str]:
        """The subject keys of a workspace's stored results of one subject type (keys only)."""
        rows = await self.db.fetchall(
            "SELECT DISTINCT subject_key FROM results WHERE workspace = ? AND subject_type = ?",
            (workspace, subject_type),
        )
        return {str(r[0]) for r in rows}

    async def query(
        self,
        *,
        workspace: str | None = None,
        check: str | None = None,
        status: str | None = None,
        subject: str | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[StoredResult]:
        where: list[str] = []
        params: list[Any] = []
        for column, value in (("workspace", workspace), ("check_id", check), ("status", status)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if subject is not None:
            where.append("(subject = ? OR subject_key = ?)")
            params += [subject, subject]
        sql = "SELECT * FROM results" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY workspace, check_id, subject"
        if limit is not None:
            sql += " LIMIT ? OFFSET ?"
            params += [limit, offset]
        return [_result(r) for r in await self.db.fetchall(sql, params)]

    async def history(
        self, check: str | None = None, subject: str | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        where: list[str] = []
        params: list[Any] = []
        if check:
            where.append("check_id = ?")
            params.append(check)
        if subject:
            where.append("(subject = ? OR subject_key = ?)")
            params += [subject, subject]
        sql = "SELECT * FROM result_history" + (" WHERE " + " AND ".join(where) if where else "")
        rows = await self.db.fetchall(sql + " ORDER BY id LIMIT ?", [*params, limit])
        return [dict(r) | {"details": json.loads(r["details"])} for r in rows]

    async def counts(self) -> list[tuple[str, str, int]]:
        """(test, status, how many) over every workspace."""
        rows = await self.db.fetchall("SELECT check_id, status, count(*) FROM results GROUP BY 1, 2")
        return [(str(r[0]), str(r[1]), int(r[2])) for r in rows]

    async def count_history(self) -> int:
        row = await self.db.fetchone("SELECT count(*) FROM result_history")
        return int(row[0]) if row else 0

    async def apply(
        self,
        delta: Delta,
        now: str,
        cause: str = "reconcile",
        outbox: Sequence[Entry] = (),
        outbox_at: float | None = None,
        alerts: Callable[[Delta], Sequence[Entry]] | None = None,
    ) -> int:
        """Write a delta, its history and its alerts' outbox rows (``outbox``, plus what ``alerts``
        makes of the delta) in one transaction, so a crash never records a change without its alert
        nor an alert without its change; return the number of result rows written.

        The delta was diffed against results read before this transaction. Another recorder (a
        webhook batch on another instance, a pass, a cron ``reconcile`` on the same SQLite file)
        may have written the same subjects since: the transaction first takes the workspace's
        recording lock (PostgreSQL: an advisory transaction lock; SQLite: its writer lock), reads
        those results again and, where they moved, diffs anew against them (:func:`_revise`; the
        caller's ``delta`` is updated in place). A change already recorded by the other writer is
        then unchanged: no second history row, no second alert."""
        if delta.is_empty() and not outbox:
            return 0
        written = 0
        async with self.db.transaction() as conn:
            if not delta.is_empty():
                await _revise(conn, self.db.dialect, delta)
            rows = [*outbox, *(alerts(delta) if alerts is not None else ())]
            await insert(conn, rows, time.time() if outbox_at is None else outbox_at)
            for change in delta.writes:
                r, prev = change.result, change.previous
                first_seen = prev.first_seen if prev else now
                last_changed = now if change.status_changed else (prev.last_changed if prev else now)
                await conn.execute(
                    """INSERT INTO results (check_id, subject_key, workspace, subject_type, subject, subject_uuid,
                       subject_name, severity, status, message, details, fingerprint, first_seen, last_changed,
                       stale_since) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,NULL)
                       ON CONFLICT (workspace, check_id, subject_key) DO UPDATE SET
                       subject_type=excluded.subject_type, subject=excluded.subject,
                       subject_uuid=excluded.subject_uuid, subject_name=excluded.subject_name,
                       severity=excluded.severity, status=excluded.status, message=excluded.message,
                       details=excluded.details, fingerprint=excluded.fingerprint,
                       last_changed=excluded.last_changed, stale_since=NULL""",
                    (
                        r.check,
                        r.subject_key,
                        r.workspace,
                        r.subject_type,
                        r.subject,
                        r.subject_uuid,
                        r.subject_name,
                        r.severity,
                        r.status,
                        r.message,
                        json.dumps(r.details, default=str),
                        fingerprint(r),
                        first_seen,
                        last_changed,
                    ),
                )
                written += 1
                if change.status_changed:
                    await conn.execute(
                        """INSERT INTO result_history (check_id, subject_key, workspace, subject, at, old_status,
                           new_status, message, details, cause) VALUES (?,?,?,?,?,?,?,?,?,?)""",
                        (
                            r.check,
                            r.subject_key,
                            r.workspace,
                            r.subject,
                            now,
                            prev.result.status if prev else None,
                            r.status,
                            r.message,
                            json.dumps(r.details, default=str),
                            cause,
                        ),
                    )
            for stored in delta.stale:
                await conn.execute(
                    "UPDATE results SET stale_since = ? WHERE workspace = ? AND check_id = ? AND subject_key = ?",
                    (now, stored.result.workspace, stored.result.check, stored.result.subject_key),
                )
                written += 1
            for stored in delta.retired:
                r = stored.result
                await conn.execute(
                    "DELETE FROM results WHERE workspace = ? AND check_id = ? AND subject_key = ?",
                    (r.workspace, r.check, r.subject_key),
                )
                await conn.execute(
                    """INSERT INTO result_history (check_id, subject_key, workspace, subject, at, old_status,
                       new_status, message, details, cause) VALUES (?,?,?,?,?,?,?,?,?,?)""",
                    (
                        r.check,
                        r.subject_key,
                        r.workspace,
                        r.subject,
                        now,
                        r.status,
                        "retired",
                        f"{r.subject} is no longer in {r.workspace}; its result was retired.",
                        "{}",
                        cause,
                    ),
                )
                written += 1
        return written

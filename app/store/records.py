"""Manual records: repository classes and rules, personnel, evidence (files by SHA-256), exceptions,
and the audit trail that keeps their history for auditors."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

from app.checks.base import Evidence, ExceptionGrant, Person
from app.record_input import TooLarge
from app.store.db import Database

CHUNK = 1024 * 1024
HEAD = 16  # bytes kept to recognise the file type


@dataclass(frozen=True)
class StagedFile:
    """An evidence file copied into the evidence folder under a temporary name, not yet recorded."""

    path: Path
    sha256: str
    size: int
    head: bytes


def _dt(text: str) -> datetime:
    return datetime.fromisoformat(text)


class Records:
    def __init__(self, db: Database, data_dir: Path) -> None:
        self.db = db
        self.evidence_dir = data_dir / "evidence"

    async def _audit(
        self, conn: Any, at: str, actor: str, action: str, kind: str, oid: str, details: dict[str, Any]
    ) -> None:
        await conn.execute(
            "INSERT INTO audit (at, actor, action, object_type, object_id, details) VALUES (?,?,?,?,?,?)",
            (at, actor, action, kind, oid, json.dumps(details, default=str)),
        )

    # -- classification ----------------------------------------------------------------------
    async def set_class(self, repo_uuid: str, workspace: str, full_name: str, cls: str, actor: str, now: str) -> None:
        async with self.db.transaction() as conn:
            await conn.execute(
                """INSERT INTO repo_classes (repo_uuid, workspace, full_name, class, set_by, set_at)
                   VALUES (?,?,?,?,?,?) ON CONFLICT (repo_uuid) DO UPDATE SET class=excluded.class,
                   full_name=excluded.full_name, set_by=excluded.set_by, set_at=excluded.set_at""",
                (repo_uuid, workspace, full_name, cls, actor, now),
            )
            await self._audit(
                conn, now, actor, "classify", "repository", repo_uuid, {"full_name": full_name, "class": cls}
            )

    async def classes(self, workspace: str | None = None, uuids: Sequence[str] | None = None) -> dict[str, str]:
        """Explicit classes: of a workspace, or of the repositories ``uuids`` only (by key)."""
        if uuids is not None:
            out: dict[str, str] = {}
            wanted = sorted(set(uuids))
            for start in range(0, len(wanted), 400):
                part = wanted[start : start + 400]
                sql = "SELECT repo_uuid, class FROM repo_classes WHERE repo_uuid IN (" + ",".join("?" * len(part)) + ")"
                params: list[str] = part
                if workspace:
                    sql, params = sql + " AND workspace = ?", [*part, workspace]
                out.update((r[0], r[1]) for r in await self.db.fetchall(sql, params))
            return out
        sql = "SELECT repo_uuid, class FROM repo_classes" + (" WHERE workspace = ?" if workspace else "")
        return {r[0]: r[1] for r in await self.db.fetchall(sql, (workspace,) if workspace else ())}

    async def add_rule(
        self,
        cls: str,
        now: str,
        *,
        project_key: str | None = None,
        name_glob: str | None = None,
        workspace: str | None = None,
    ) -> int:
        row = await self.db.fetchone("SELECT coalesce(max(position), 0) + 1 FROM class_rules")
        position = int(row[0]) if row else 1
        return await self.db.execute(
            "INSERT INTO class_rules (position, workspace, project_key, name_glob, class, created_at)"
            " VALUES (?,?,?,?,?,?)",
            (position, workspace, project_key, name_glob, cls, now),
        )

    async def rules(self) -> list[dict[str, Any]]:
        return [dict(r) for r in await self.db.fetchall("SELECT * FROM class_rules ORDER BY position")]

    # -- personnel ---------------------------------------------------------------------------
    async def import_people(self, people: list[Person], actor: str, now: str) -> int:
        async with self.db.transaction() as conn:
            for p in people:
                await conn.execute(
                    """INSERT INTO personnel (email, name, kind, status, offboarded_on, bitbucket_account_id, owner,
                       updated_at) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (email) DO UPDATE SET name=excluded.name,
                       kind=excluded.kind, status=excluded.status, offboarded_on=excluded.offboarded_on,
                       bitbucket_account_id=coalesce(excluded.bitbucket_account_id, personnel.bitbucket_account_id),
                       owner=coalesce(excluded.owner, personnel.owner), updated_at=excluded.updated_at""",
                    (p.email, p.name, p.kind, p.status, p.offboarded_on, p.bitbucket_account_id, p.owner, now),
                )
            await self._audit(
                conn, now, actor, "import", "personnel", str(len(people)), {"emails": [p.email for p in people]}
            )
        return len(people)

    async def people(self) -> list[Person]:
        rows = await self.db.fetchall("SELECT * FROM personnel ORDER BY email")
        return [
            Person(
                email=r["email"],
                name=r["name"],
                kind=r["kind"],
                status=r["status"],
                offboarded_on=r["offboarded_on"],
                bitbucket_account_id=r["bitbucket_account_id"],
                owner=r["owner"],
            )
            for r in rows
        ]

    async def upsert_person(self, p: Person, actor: str, now: str) -> None:
        await self.import_people([p], actor, now)

    async def person(self, email: str) -> Person | None:
        for p in await self.people():
            if p.email == email.lower():
                return p
        return None

    async def offboard(self, email: str, on: str, actor: str, now: str) -> bool:
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                "UPDATE personnel SET status = 'offboarded', offboarded_on = ?, updated_at = ? WHERE email = ?",
                (on, now, email.lower()),
            )
            if cur.rowcount:
                await self._audit(conn, now, actor, "offboard", "personnel", email.lower(), {"on": on})
            return int(cur.rowcount) == 1

    async def link_member(self, email: str, account_id: str, actor: str, now: str) -> bool:
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                "UPDATE personnel SET bitbucket_account_id = ?, updated_at = ? WHERE email = ?",
                (account_id, now, email.lower()),
            )
            if cur.rowcount:
                await self._audit(conn, now, actor, "link", "personnel", email.lower(), {"account_id": account_id})
            return int(cur.rowcount) == 1

    async def mark_member(self, workspace: str, account_id: str, mark: str, owner: str, actor: str, now: str) -> None:
        async with self.db.transaction() as conn:
            await conn.execute(
                "INSERT INTO member_marks (workspace, account_id, mark, owner, created_at) VALUES (?,?,?,?,?) "
                "ON CONFLICT (workspace, account_id) DO UPDATE SET mark = excluded.mark, owner = excluded.owner",
                (workspace, account_id, mark, owner, now),
            )
            await self._audit(conn, now, actor, "mark", "member", account_id, {"mark": mark, "owner": owner})

    async def marks(self, workspace: str) -> dict[str, tuple[str, str]]:
        rows = await self.db.fetchall(
            "SELECT account_id, mark, owner FROM member_marks WHERE workspace = ?", (workspace,)
        )
        return {r[0]: (r[1], r[2]) for r in rows}

    # -- evidence ----------------------------------------------------------------------------
    def stage_evidence(self, source: BinaryIO, max_bytes: int) -> StagedFile:
        """Copy ``source`` in 1 MiB chunks into the evidence folder, hashing as it goes; over
        ``max_bytes`` stop at once, remove the partial copy and raise :class:`TooLarge`. Blocking:
        run it in a thread."""
        self.evidence_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.evidence_dir / f".upload-{secrets.token_hex(8)}.tmp"
        digest, size, head = hashlib.sha256(), 0, b""
        try:
            with tmp.open("xb") as out:
                while chunk := source.read(CHUNK):
                    size += len(chunk)
                    if size > max_bytes:
                        raise TooLarge(max_bytes)
                    if len(head) < HEAD:
                        head += chunk[: HEAD - len(head)]
                    digest.update(chunk)
                    out.write(chunk)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return StagedFile(tmp, digest.hexdigest(), size, head)

    def discard(self, staged: StagedFile) -> None:
        with contextlib.suppress(OSError):
            staged.path.unlink(missing_ok=True)

    async def add_evidence(
        self,
        staged: StagedFile,
        *,
        media_type: str,
        check: str,
        workspace: str,
        member: str | None,
        filename: str,
        uploaded_by: str,
        uploaded_at: datetime,
        expires_at: datetime,
        covered_members: list[str] | None,
    ) -> int:
        digest = staged.sha256
        await asyncio.to_thread(self._keep_file, staged)
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                """INSERT INTO evidence (sha256, check_id, workspace, member, filename, media_type, size, uploaded_by,
                   uploaded_at, expires_at, covered_members) VALUES (?,?,?,?,?,?,?,?,?,?,?)""",
                (
                    digest,
                    check,
                    workspace,
                    member,
                    filename,
                    media_type,
                    staged.size,
                    uploaded_by,
                    uploaded_at.isoformat(),
                    expires_at.isoformat(),
                    json.dumps(covered_members) if covered_members is not None else None,
                ),
            )
            eid = cur.lastrowid or 0
            await self._audit(
                conn,
                uploaded_at.isoformat(),
                uploaded_by,
                "upload",
                "evidence",
                str(eid),
                {
                    "check": check,
                    "workspace": workspace,
                    "member": member,
                    "sha256": digest,
                    "expires_at": expires_at.isoformat(),
                },
            )
        return eid

    async def evidence(self, workspace: str | None = None) -> list[Evidence]:
        sql = "SELECT * FROM evidence WHERE revoked_at IS NULL" + (" AND workspace = ?" if workspace else "")
        rows = await self.db.fetchall(sql + " ORDER BY id", (workspace,) if workspace else ())
        return [
            Evidence(
                id=r["id"],
                check=r["check_id"],
                workspace=r["workspace"],
                member=r["member"],
                uploaded_at=_dt(r["uploaded_at"]),
                expires_at=_dt(r["expires_at"]),
                covered_members=tuple(json.loads(r["covered_members"])) if r["covered_members"] else None,
                filename=r["filename"],
            )
            for r in rows
        ]

    def _keep_file(self, staged: StagedFile) -> None:
        path = self.evidence_dir / staged.sha256
        if path.exists():  # stored once, by content
            staged.path.unlink(missing_ok=True)
        else:
            staged.path.replace(path)

    def evidence_path(self, sha256: str) -> Path:
        return self.evidence_dir / sha256

    async def evidence_rows(self) -> list[dict[str, Any]]:
        return [dict(r) for r in await self.db.fetchall("SELECT * FROM evidence ORDER BY id")]

    # -- exceptions --------------------------------------------------------------------------
    async def add_exception(
        self,
        check: str,
        subject: str,
        owner: str,
        reason: str,
        expires_at: datetime,
        actor: str,
        now: str,
        *,
        subject_key: str,
    ) -> int:
        """Record an accepted risk for (test, ``subject_key``); ``subject`` is the name it was given by."""
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                """INSERT INTO exceptions (check_id, subject, subject_key, owner, reason, created_by, created_at,
                   expires_at) VALUES (?,?,?,?,?,?,?,?)""",
                (check, subject, subject_key, owner, reason, actor, now, expires_at.isoformat()),
            )
            xid = cur.lastrowid or 0
            await self._audit(
                conn,
                now,
                actor,
                "grant",
                "exception",
                str(xid),
                {
                    "check": check,
                    "subject": subject,
                    "subject_key": subject_key,
                    "owner": owner,
                    "reason": reason,
                    "expires_at": expires_at.isoformat(),
                },
            )
        return xid

    async def revoke_exception(self, xid: int, actor: str, now: str) -> dict[str, Any] | None:
        """Revoke an exception (it stops covering its result at the next evaluation); its row, or
        None when there is no such unrevoked exception."""
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                "UPDATE exceptions SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL RETURNING *", (now, xid)
            )
            row = await cur.fetchone()
            if row is None:
                return None
            await self._audit(conn, now, actor, "revoke", "exception", str(xid), {})
            return dict(row)

    async def exception_rows(self) -> list[dict[str, Any]]:
        return [dict(r) for r in await self.db.fetchall("SELECT * FROM exceptions ORDER BY id")]

    async def exceptions(self) -> list[ExceptionGrant]:
        """Exceptions in force: not revoked, and keyed (rows migrated without a key stay inactive)."""
        rows = await self.db.fetchall(
            "SELECT * FROM exceptions WHERE revoked_at IS NULL AND subject_key IS NOT NULL"
            " AND inactive_reason IS NULL ORDER BY id"
        )
        return [
            ExceptionGrant(
                id=r["id"],
                check=r["check_id"],
                subject=r["subject_key"],
                owner=r["owner"],
                reason=r["reason"],
                expires_at=_dt(r["expires_at"]),
            )
            for r in rows
        ]

"""Recording manual evidence, for the CLI, the API and the dashboard alike: stream the file into
the evidence folder with the size limit enforced while copying (``LP_EVIDENCE_MAX_BYTES``, 10 MiB by
default; never whole in memory), validate it (PNG, JPEG or PDF by content), work out its expiry,
and for a workspace-wide 2SV report record who was a member at upload time (people who join later,
or leave and come back, are not covered). An explicit expiry means valid through that date and may
not outlive ``LP_EVIDENCE_MAX_AGE_DAYS`` from upload. A refused file leaves nothing behind."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO

from app import records
from app.exceptions import UnknownSubject, resolve_subject
from app.models import utcnow
from app.store import Store
from app.store.snapshots import k_members

CHECKS = ("member-mfa-enabled", "workspace-mfa-enforced")


class NoMemberList(records.RecordError):
    """A 2SV report cannot be recorded before the first reconcile has listed the members."""


@dataclass(frozen=True)
class Recorded:
    id: int
    media_type: str
    expires_at: datetime
    covered: list[str] | None


async def record_evidence(
    store: Store,
    source: BinaryIO,
    *,
    check: str,
    workspace: str,
    member: str | None,
    filename: str,
    uploaded_by: str,
    expires: str | None,
    max_age_days: int,
    max_bytes: int = records.MAX_EVIDENCE_BYTES,
) -> Recorded:
    """Record ``source`` (a binary file object, read in chunks) as evidence; raise RecordError
    (:class:`app.records.TooLarge` over ``max_bytes``) with nothing stored."""
    if check not in CHECKS:
        raise records.RecordError("evidence is for member-mfa-enabled or workspace-mfa-enforced")
    if check == "workspace-mfa-enforced" and member:
        raise records.RecordError("workspace-mfa-enforced evidence is for the whole workspace, not a member")
    if member is not None:
        # Resolved to the member's key when recorded; a member never seen is refused (checks.md).
        try:
            member = (await resolve_subject(store, check, member, workspace)).key
        except UnknownSubject as exc:
            raise records.RecordError(str(exc).replace("--subject", "--member")) from None
    now = utcnow()
    expires_at = records.evidence_expiry(now, expires, max_age_days)
    covered: list[str] | None = None
    if check == "member-mfa-enabled" and member is None:
        snap = await store.snapshots.get(k_members(workspace))
        if snap is None or not isinstance(snap.content, list):
            raise NoMemberList(
                f"no member list for {workspace} yet (the connection needs the `account` scope to read it): "
                "run a reconcile before uploading a 2SV report"
            )
        covered = sorted({m["user"].get("account_id") or m["user"].get("uuid") for m in snap.content})
    staged = await asyncio.to_thread(store.records.stage_evidence, source, max_bytes)
    try:
        kind = records.check_evidence(staged.head, staged.size, max_bytes)
    except records.RecordError:
        store.records.discard(staged)
        raise
    eid = await store.records.add_evidence(
        staged,
        media_type=kind,
        check=check,
        workspace=workspace,
        member=member,
        filename=filename,
        uploaded_by=uploaded_by,
        uploaded_at=now,
        expires_at=expires_at,
        covered_members=covered,
    )
    return Recorded(eid, kind, expires_at, covered)

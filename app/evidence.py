"""Recording manual evidence, for the CLI, the API and the dashboard alike: validate the file
(PNG, JPEG or PDF by content, at most 10 MiB), work out its expiry, and for a workspace-wide 2SV
report record who was a member at upload time (people who join later, or leave and come back, are
not covered). An explicit expiry means valid through that date and may not outlive
``LP_EVIDENCE_MAX_AGE_DAYS`` from upload."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from app import records
from app.exceptions import UnknownSubject, resolve_subject
from app.reconcile import k_members, utcnow
from app.store import Store

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
    data: bytes,
    *,
    check: str,
    workspace: str,
    member: str | None,
    filename: str,
    uploaded_by: str,
    expires: str | None,
    max_age_days: int,
) -> Recorded:
    if check not in CHECKS:
        raise records.RecordError("evidence is for member-mfa-enabled or workspace-mfa-enforced")
    if check == "workspace-mfa-enforced" and member:
        raise records.RecordError("workspace-mfa-enforced evidence is for the whole workspace, not a member")
    kind = records.check_evidence(data)
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
    eid = await store.records.add_evidence(
        data,
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

"""Pure. ``member-mfa-enabled`` (manual evidence): every member should have MFA enabled.

Control: each workspace member uses two-step verification. Bitbucket's API does not expose other
members' 2FA status, so the test rests on uploaded evidence: evidence for that member, or a
workspace-wide 2SV report uploaded while they were already a member (someone who joined after the
report is not covered; membership is continuous: someone who left and came back after the report
is not covered either, ``MemberFacts.member_since``). A non-null ``has_2fa_enabled`` from the API
decides instead when present. Evidence expires after ``LP_EVIDENCE_MAX_AGE_DAYS`` (default 90)
from upload, or earlier with an explicit expiry ("valid through" a date).
``fail`` with ``details.reason`` = ``evidence_missing`` or ``evidence_expired``; ``unknown`` when
the member list cannot be read (``scope_missing``: the ``account`` scope). A failed member list
keeps the last result, marked stale.
"""

from __future__ import annotations

from collections.abc import Sequence

from app.checks.base import (
    Check,
    Context,
    Evidence,
    MemberFacts,
    Unreadable,
    WorkspaceFacts,
    member_result,
    members_unreadable,
    stale_member_result,
    valid_through,
)
from app.models import Result

HOW_TO = (
    "Get it from admin.atlassian.com → your organization → Security → two-step verification report "
    "of the workspace's members; a screenshot or PDF export is enough. Upload it with "
    "`lowerplane-bitbucket evidence add --check member-mfa-enabled --workspace {ws} FILE` "
    "(or --member ACCOUNT_ID for one person) or through the dashboard."
)


def covering_evidence(m: MemberFacts, evidence: Sequence[Evidence], check: str) -> list[Evidence]:
    key = m.user.key

    def report_covers(e: Evidence) -> bool:
        # A member at upload time whose membership has not been broken since.
        return (
            e.covered_members is not None
            and key in e.covered_members
            and (m.member_since is None or m.member_since <= e.uploaded_at)
        )

    return [e for e in evidence if e.check == check and (e.member == key or (e.member is None and report_covers(e)))]


def _one(ws: str, m: MemberFacts, ctx: Context) -> Result:
    name = m.user.display_name or m.user.key
    if m.stale == "members":
        return stale_member_result(CHECK, ws, m)
    if m.user.has_2fa_enabled is not None:
        ok = m.user.has_2fa_enabled
        return member_result(
            CHECK,
            ws,
            m,
            "pass" if ok else "fail",
            f"{name} has two-step verification {'enabled' if ok else 'disabled'} (reported by Bitbucket).",
            source="api",
            reason=None if ok else "2fa_disabled",
        )
    evidence = covering_evidence(m, ctx.evidence, CHECK.id)
    valid = [e for e in evidence if e.expires_at > ctx.now]
    if valid:
        best = max(valid, key=lambda e: e.expires_at)
        return member_result(
            CHECK,
            ws,
            m,
            "pass",
            f"{name}: two-step verification evidenced by {best.filename or 'evidence'} "
            f"(valid through {valid_through(best.expires_at).isoformat()}).",
            evidence_id=best.id,
            expires_at=best.expires_at.isoformat(),
            scope="member" if best.member else "workspace_report",
        )
    if evidence:
        latest = max(evidence, key=lambda e: e.expires_at)
        return member_result(
            CHECK,
            ws,
            m,
            "fail",
            f"{name}: the two-step verification evidence was valid through "
            f"{valid_through(latest.expires_at).isoformat()} and has expired. " + HOW_TO.format(ws=ws),
            reason="evidence_expired",
            evidence_id=latest.id,
        )
    return member_result(
        CHECK,
        ws,
        m,
        "fail",
        f"{name}: no evidence of two-step verification (a member who joined, or left and rejoined, after the "
        "last report is not covered by it). " + HOW_TO.format(ws=ws),
        reason="evidence_missing",
    )


def evaluate(ws: WorkspaceFacts, ctx: Context) -> Sequence[Result]:
    if isinstance(ws.members, Unreadable):
        return members_unreadable(CHECK, ws.workspace, ws.members)
    return [_one(ws.workspace, m, ctx) for m in ws.members]


CHECK = Check(
    id="member-mfa-enabled",
    title="Bitbucket user should have MFA enabled",
    severity="critical",
    subject_type="member",
    default_on=True,
    evaluate=evaluate,
    doc=__doc__ or "",
    controls=("SOC 2 CC6.1", "ISO 27001:2022 A.8.5"),
)

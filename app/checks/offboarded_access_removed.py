"""Pure. ``offboarded-access-removed``: offboarded people should no longer be members.

Control: every workspace member is linked to a person of the personnel directory (imported from
CSV or JSON, or edited through the API) by ``account_id``, else by email where the members
endpoint's email filter is allowed for the credential. Evidence: the link and the person's status.
- ``fail`` when linked to an ``offboarded`` person (who, since when, how to remove them);
- ``pass`` when linked to an ``active`` person, or to a ``service-account`` / ``external`` entry;
- ``unknown`` when not linked (link the account or mark it).
Settings: none. Offboarding a person re-evaluates this test at once.
"""

from __future__ import annotations

from collections.abc import Sequence

from app.checks.base import Check, Context, MemberFacts, Unreadable, WorkspaceFacts, member_result
from app.models import Result


def _one(ws: str, m: MemberFacts) -> Result:
    name = m.user.display_name or m.user.key
    p = m.person
    if p is None:
        hint = (
            ""
            if m.email_lookup == "available"
            else " (email matching is unavailable for this credential: Bitbucket lets only workspace admins, "
            "integrations and workspace access tokens filter members by email)"
        )
        return member_result(
            CHECK,
            ws,
            m,
            "unknown",
            f"{name} ({m.user.key}) is not linked to anyone in the personnel directory{hint}. Link the account "
            "(bitbucket_account_id in the personnel import) or mark it as a service account or external.",
            reason="unlinked",
            email_lookup=m.email_lookup,
        )
    details = {"person": p.email, "kind": p.kind, "person_status": p.status, "linked_by": m.linked_by}
    if p.status == "offboarded":
        since = f" since {p.offboarded_on}" if p.offboarded_on else ""
        return member_result(
            CHECK,
            ws,
            m,
            "fail",
            f"{name} ({p.email}) was offboarded{since} but is still a member of {ws}. Remove them at "
            "admin.atlassian.com → Directory → Users (or Workspace settings → User groups) and revoke their "
            "access tokens and SSH keys.",
            offboarded_on=p.offboarded_on,
            **details,
        )
    if p.kind in ("service-account", "external"):
        owner = f", owned by {p.owner}" if p.owner else ""
        return member_result(
            CHECK, ws, m, "pass", f"{name} is a known {p.kind} ({p.email}{owner}).", owner=p.owner, **details
        )
    return member_result(CHECK, ws, m, "pass", f"{name} is an active {p.kind} ({p.email}).", **details)


def evaluate(ws: WorkspaceFacts, ctx: Context) -> Sequence[Result]:
    if isinstance(ws.members, Unreadable):
        return []
    return [_one(ws.workspace, m) for m in ws.members]


CHECK = Check(
    id="offboarded-access-removed",
    title="Bitbucket access should be removed for offboarded user",
    severity="critical",
    subject_type="member",
    default_on=True,
    evaluate=evaluate,
    doc=__doc__ or "",
    controls=("SOC 2 CC6.2", "SOC 2 CC6.3", "ISO 27001:2022 A.5.18"),
)

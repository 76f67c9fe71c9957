"""Pure. ``offboarded-access-removed``: offboarded people should no longer be members.

Control: every workspace member is linked to a person of the personnel directory (imported from
CSV or JSON, or edited through the API) by ``account_id``, else by email where the members
endpoint's email filter is allowed for the credential. Evidence: the link and the person's status.
- ``fail`` when linked to an ``offboarded`` person whose ``offboarded_on`` is today or earlier, or
  absent (who, since when, how to remove them);
- ``pass`` when linked to an ``active`` person, to an ``offboarded`` person whose ``offboarded_on``
  is still ahead (``details.offboarding_on``: the result turns to ``fail`` on that day by itself),
  or to a ``service-account`` / ``external`` entry that names an ``owner``;
- ``unknown`` when not linked (``details.reason`` = ``not_linked``: link the account or mark it),
  when linked to a ``service-account`` / ``external`` entry without an owner (``owner_missing``),
  or when the member list cannot be read (``scope_missing``: the ``account`` scope).
A failed member list or email lookup keeps the last result, marked stale.
Settings: none. Offboarding a person re-evaluates this test at once.
"""

from __future__ import annotations

from collections.abc import Sequence

from app.checks.base import (
    NOT_LINKED,
    OWNER_MISSING,
    Check,
    Context,
    MemberFacts,
    Unreadable,
    WorkspaceFacts,
    member_result,
    members_unreadable,
    stale_member_result,
)
from app.models import Result


def _one(ws: str, m: MemberFacts, ctx: Context) -> Result:
    name = m.user.display_name or m.user.key
    if m.stale is not None:
        return stale_member_result(CHECK, ws, m)
    p = m.person
    if p is None:
        hint = (
            ""
            if m.email_lookup == "available"
            else " (email matching is unavailable for this credential: Bitbucket lets only workspace admins, "
            "integrations and workspace access tokens filter members by email)"
        )
        fix = (
            "Link the account (bitbucket_account_id in the personnel import) or mark it as a service account "
            "or external with an owner."
        )
        return member_result(
            CHECK,
            ws,
            m,
            "unknown",
            f"{name} ({m.user.key}) is not linked to anyone in the personnel directory{hint}. {fix}",
            reason=NOT_LINKED,
            email_lookup=m.email_lookup,
            fix=fix,
        )
    details = {"person": p.email, "kind": p.kind, "person_status": p.status, "linked_by": m.linked_by}
    today = ctx.now.date().isoformat()
    if p.status == "offboarded" and p.offboarded_on is not None and p.offboarded_on > today:
        return member_result(
            CHECK,
            ws,
            m,
            "pass",
            f"{name} ({p.email}) is to be offboarded on {p.offboarded_on}; the result turns to fail on that day "
            "if they are still a member.",
            offboarding_on=p.offboarded_on,
            **details,
        )
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
        if not p.owner:
            fix = (
                f"Name an owner for this {p.kind}: the owner column of the personnel import, or mark the member "
                "with an owner on the dashboard or through the API."
            )
            return member_result(
                CHECK,
                ws,
                m,
                "unknown",
                f"{name} is a {p.kind} ({p.email}) without an owner. {fix}",
                reason=OWNER_MISSING,
                fix=fix,
                **details,
            )
        return member_result(
            CHECK,
            ws,
            m,
            "pass",
            f"{name} is a known {p.kind} ({p.email}, owned by {p.owner}).",
            owner=p.owner,
            **details,
        )
    return member_result(CHECK, ws, m, "pass", f"{name} is an active {p.kind} ({p.email}).", **details)


def evaluate(ws: WorkspaceFacts, ctx: Context) -> Sequence[Result]:
    if isinstance(ws.members, Unreadable):
        return members_unreadable(CHECK, ws.workspace, ws.members)
    return [_one(ws.workspace, m, ctx) for m in ws.members]


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

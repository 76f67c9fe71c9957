"""Pure. ``workspace-mfa-enforced`` (manual evidence): workspace-level MFA should be enforced.

Control: the workspace requires two-step verification (a Premium setting with no read endpoint,
or an Atlassian authentication policy that requires 2SV). Evidence: an unexpired upload for the
workspace (screenshot or PDF of the policy). Expiry as for member evidence
(``LP_EVIDENCE_MAX_AGE_DAYS``). ``fail`` with ``details.reason`` = ``evidence_missing`` or
``evidence_expired``.
"""

from __future__ import annotations

from collections.abc import Sequence

from app.checks.base import Check, Context, WorkspaceFacts, valid_through
from app.models import Result

HOW_TO = (
    "Get it from admin.atlassian.com → your organization → Security → Authentication policies: the policy "
    "that requires two-step verification for the workspace's members (or Workspace settings → Security → "
    "Require two-step verification on Premium); a screenshot or PDF export is enough. Upload it with "
    "`lowerplane-bitbucket evidence add --check workspace-mfa-enforced --workspace {ws} FILE`."
)


def evaluate(ws: WorkspaceFacts, ctx: Context) -> Sequence[Result]:
    evidence = [e for e in ctx.evidence if e.check == CHECK.id and e.workspace == ws.workspace and e.member is None]
    valid = [e for e in evidence if e.expires_at > ctx.now]
    base = {
        "check": CHECK.id,
        "severity": CHECK.severity,
        "workspace": ws.workspace,
        "subject_type": "workspace",
        "subject_key": ws.workspace,
        "subject": ws.workspace,
        "subject_name": ws.workspace,
    }
    if valid:
        best = max(valid, key=lambda e: e.expires_at)
        return [
            Result(
                **base,
                status="pass",
                message=f"Workspace {ws.workspace}: enforced two-step verification evidenced by "
                f"{best.filename or 'evidence'} (valid through {valid_through(best.expires_at).isoformat()}).",
                details={"evidence_id": best.id, "expires_at": best.expires_at.isoformat()},
            )
        ]
    if evidence:
        latest = max(evidence, key=lambda e: e.expires_at)
        return [
            Result(
                **base,
                status="fail",
                message=f"Workspace {ws.workspace}: the evidence of enforced two-step verification was valid through "
                f"{valid_through(latest.expires_at).isoformat()} and has expired. " + HOW_TO.format(ws=ws.workspace),
                details={"reason": "evidence_expired", "evidence_id": latest.id},
            )
        ]
    return [
        Result(
            **base,
            status="fail",
            message=f"Workspace {ws.workspace}: no evidence that two-step verification is enforced. "
            + HOW_TO.format(ws=ws.workspace),
            details={"reason": "evidence_missing"},
        )
    ]


CHECK = Check(
    id="workspace-mfa-enforced",
    title="Bitbucket workspace level MFA should be enforced",
    severity="critical",
    subject_type="workspace",
    default_on=True,
    evaluate=evaluate,
    doc=__doc__ or "",
    controls=("SOC 2 CC6.1", "ISO 27001:2022 A.8.5"),
)

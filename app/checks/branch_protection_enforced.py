"""Pure. ``branch-protection-enforced``: branch protection rules should be enforced.

Control: covering ``force`` (no force pushes), ``delete`` (no deletion) and ``push`` (direct
pushes limited to the restriction's users and groups) restrictions all exist on the main branch.
Evidence: the three rules; ``details.bypass`` lists the users and groups that ``push`` and
``restrict_merges`` exempt. ``fail`` lists what is missing and notes that project-level
restrictions are not visible through the API. Settings: none.
"""

from __future__ import annotations

from collections.abc import Sequence

from app.checks.base import (
    PROJECT_LEVEL_NOTE,
    Check,
    Context,
    RepoFacts,
    WorkspaceFacts,
    branch_preamble,
    repo_result,
    settings_url,
)
from app.checks.coverage import covering, describe
from app.models import Result

REQUIRED = {"force": "force pushes", "delete": "branch deletion", "push": "direct pushes"}


def _one(facts: RepoFacts, ctx: Context) -> Result:
    pre = branch_preamble(CHECK, facts)
    if isinstance(pre, Result):
        return pre
    restrictions, model, main = pre
    present = {kind: covering(restrictions, main, model, kind) for kind in REQUIRED}
    bypass_rules = covering(restrictions, main, model, "push", "restrict_merges")
    bypass = {
        "users": sorted({u for r in bypass_rules for u in r.users}),
        "groups": sorted({g for r in bypass_rules for g in r.groups}),
    }
    missing = [kind for kind, rules in present.items() if not rules]
    rules = {kind: describe(rs[0]) for kind, rs in present.items() if rs}
    if missing:
        what = ", ".join(f"`{k}` (prevent {REQUIRED[k]})" for k in missing)
        return repo_result(
            CHECK,
            facts,
            "fail",
            f"{facts.repo.full_name}: {main} lacks {what}. Add them in Repository settings → Branch "
            f"restrictions ({settings_url(ctx, facts)}). {PROJECT_LEVEL_NOTE}",
            branch=main,
            missing=missing,
            rules=rules,
            bypass=bypass,
        )
    exempt = bypass["users"] + bypass["groups"]
    note = f" Exempt from the push restriction: {', '.join(exempt)}." if exempt else ""
    return repo_result(
        CHECK,
        facts,
        "pass",
        f"{facts.repo.full_name}: {main} blocks force pushes and deletion and limits direct pushes.{note}",
        branch=main,
        rules=rules,
        bypass=bypass,
    )


def evaluate(ws: WorkspaceFacts, ctx: Context) -> Sequence[Result]:
    return [_one(f, ctx) for f in ws.repositories]


CHECK = Check(
    id="branch-protection-enforced",
    title="Branch Protection rules should be enforced",
    severity="high",
    subject_type="repository",
    default_on=True,
    evaluate=evaluate,
    doc=__doc__ or "",
    controls=("SOC 2 CC6.1", "SOC 2 CC8.1", "ISO 27001:2022 A.8.4", "ISO 27001:2022 A.8.32"),
)

"""Pure. ``merge-requires-passing-builds``: merging should require passing status checks.

Control: a branch restriction ``require_passing_builds_to_merge`` with ``value >= 1`` covers the
main branch. Merge checks only warn unless the workspace is on Premium and an
``enforce_merge_checks`` restriction covers the branch ("Prevent a merge with unresolved merge
checks"). Evidence: the covering rule (``details.rule``) and ``details.enforced``.
Settings: ``LP_STRICT_MERGE_CHECKS`` (default false): when true, only an enforced rule passes.
``unknown`` when the restrictions cannot be read for want of ``repository:admin``;
``not_applicable`` for non-production or empty repositories.
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

KINDS = ("require_passing_builds_to_merge",)
WHAT = "passing build"


def _n(count: int | None, what: str) -> str:
    count = count or 0
    return f"{count} {what}{'' if count == 1 else 's'}"


def merge_check(
    check: Check, facts: RepoFacts, ctx: Context, kinds: tuple[str, ...], threshold: int, what: str
) -> Result:
    """Shared by the passing-builds and peer-review tests: a covering rule at or above threshold."""
    pre = branch_preamble(check, facts)
    if isinstance(pre, Result):
        return pre
    restrictions, model, main = pre
    rules = covering(restrictions, main, model, *kinds)
    good = [r for r in rules if (r.value or 0) >= threshold]
    enforced = bool(covering(restrictions, main, model, "enforce_merge_checks"))
    url = settings_url(ctx, facts)
    if not good:
        if rules:
            best = max(rules, key=lambda r: r.value or 0)
            return repo_result(
                check,
                facts,
                "fail",
                f"{facts.repo.full_name}: merging to {main} requires {_n(best.value, what)}, below the "
                f"required {threshold}. Raise it in Repository settings → Branch restrictions ({url}).",
                branch=main,
                rule=describe(best),
                threshold=threshold,
                enforced=enforced,
            )
        return repo_result(
            check,
            facts,
            "fail",
            f"{facts.repo.full_name}: no branch restriction requires {what}s before merging to {main}. "
            f"Add one in Repository settings → Branch restrictions ({url}). {PROJECT_LEVEL_NOTE}",
            branch=main,
            threshold=threshold,
            enforced=False,
        )
    rule = max(good, key=lambda r: r.value or 0)
    if enforced:
        return repo_result(
            check,
            facts,
            "pass",
            f"{facts.repo.full_name}: merging to {main} requires {_n(rule.value, what)}, enforced.",
            branch=main,
            rule=describe(rule),
            threshold=threshold,
            enforced=True,
        )
    if ctx.strict_merge_checks:
        return repo_result(
            check,
            facts,
            "fail",
            f"{facts.repo.full_name}: merging to {main} requires {_n(rule.value, what)}, but the check only warns. "
            'Strict mode needs it enforced: enable "Prevent a merge with unresolved merge checks" '
            f"(Premium) in Branch restrictions ({url}).",
            branch=main,
            rule=describe(rule),
            threshold=threshold,
            enforced=False,
        )
    return repo_result(
        check,
        facts,
        "pass",
        f"{facts.repo.full_name}: merging to {main} requires {_n(rule.value, what)}. Note: the check only warns; "
        'enable "Prevent a merge with unresolved merge checks" (Premium) to enforce it.',
        branch=main,
        rule=describe(rule),
        threshold=threshold,
        enforced=False,
    )


def evaluate(ws: WorkspaceFacts, ctx: Context) -> Sequence[Result]:
    return [merge_check(CHECK, f, ctx, KINDS, 1, WHAT) for f in ws.repositories]


CHECK = Check(
    id="merge-requires-passing-builds",
    title="Merging of code changes should require passing status-checks",
    severity="high",
    subject_type="repository",
    default_on=True,
    evaluate=evaluate,
    doc=__doc__ or "",
    controls=("SOC 2 CC8.1", "ISO 27001:2022 A.8.4", "ISO 27001:2022 A.8.32"),
)

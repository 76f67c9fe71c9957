"""Pure. ``merge-requires-peer-review``: changes should be reviewed by peers before merging.

Control: a ``require_approvals_to_merge``, ``require_default_reviewer_approvals_to_merge`` or
``require_review_group_approvals_to_merge`` restriction with ``value >= LP_MIN_APPROVALS`` covers
the main branch (several of one kind: the highest counts; kinds do not add up); enforcement as for passing
builds (``enforce_merge_checks``, Premium). Evidence: the rule and its value (``details.rule``).
Settings: ``LP_MIN_APPROVALS`` (default 1), ``LP_STRICT_MERGE_CHECKS`` (default false).
"""

from __future__ import annotations

from collections.abc import Sequence

from app.checks.base import Check, Context, WorkspaceFacts
from app.checks.merge_requires_passing_builds import merge_check
from app.models import Result

KINDS = (
    "require_approvals_to_merge",
    "require_default_reviewer_approvals_to_merge",
    "require_review_group_approvals_to_merge",
)


def evaluate(ws: WorkspaceFacts, ctx: Context) -> Sequence[Result]:
    return [merge_check(CHECK, f, ctx, KINDS, ctx.min_approvals, "approval") for f in ws.repositories]


CHECK = Check(
    id="merge-requires-peer-review",
    title="Code changes should be reviewed by peers before merging",
    severity="high",
    subject_type="repository",
    default_on=True,
    evaluate=evaluate,
    doc=__doc__ or "",
    controls=("SOC 2 CC8.1", "ISO 27001:2022 A.8.4", "ISO 27001:2022 A.8.32"),
)

"""Pure. ``pipelines-enabled`` (off by default): Bitbucket Pipelines should be enabled.

Control: ``pipelines_config.enabled`` is true, so vulnerability scanning can run in CI.
Evidence: the switch, and ``details.last_build``: the newest pipeline on the main branch (state,
result, build number, when). ``fail`` when disabled or never configured (the endpoint answers
404); ``not_applicable`` for an empty repository (no main branch); ``unknown`` without
``repository:admin`` (``details.reason`` = ``scope_missing``). Settings: switched on by
``LP_CHECKS_ENABLED=pipelines-enabled``.
"""

from __future__ import annotations

from collections.abc import Sequence

from app.checks.base import (
    Check,
    Context,
    RepoFacts,
    Unreadable,
    WorkspaceFacts,
    out_of_scope,
    repo_result,
    settings_url,
    unreadable_result,
)
from app.models import Result


def _one(facts: RepoFacts, ctx: Context) -> Result:
    if (na := out_of_scope(CHECK, facts)) is not None:
        return na
    if facts.repo.mainbranch is None:
        return repo_result(
            CHECK,
            facts,
            "not_applicable",
            f"{facts.repo.full_name} is empty: it has no main branch to build yet.",
            reason="no_main_branch",
        )
    if isinstance(facts.pipelines, Unreadable):
        return unreadable_result(CHECK, facts, facts.pipelines, "Pipelines settings")
    build = facts.last_build
    last = (
        {
            "state": build.state,
            "result": build.result,
            "build_number": build.build_number,
            "created_on": build.created_on,
        }
        if build
        else None
    )
    url = settings_url(ctx, facts, "pipelines/settings")
    if facts.pipelines.enabled:
        return repo_result(
            CHECK, facts, "pass", f"{facts.repo.full_name}: Pipelines is enabled.", enabled=True, last_build=last
        )
    never = not facts.pipelines.configured
    return repo_result(
        CHECK,
        facts,
        "fail",
        f"{facts.repo.full_name}: Pipelines is {'not configured' if never else 'disabled'}. Enable it in "
        f"Repository settings → Pipelines → Settings ({url}) and add a scanning step.",
        enabled=False,
        configured=not never,
        last_build=last,
    )


def evaluate(ws: WorkspaceFacts, ctx: Context) -> Sequence[Result]:
    return [_one(f, ctx) for f in ws.repositories]


CHECK = Check(
    id="pipelines-enabled",
    title="Bitbucket Pipelines should be enabled for vulnerability scanning",
    severity="medium",
    subject_type="repository",
    default_on=False,
    evaluate=evaluate,
    doc=__doc__ or "",
    controls=("SOC 2 CC7.1", "ISO 27001:2022 A.8.8", "ISO 27001:2022 A.8.29"),
)

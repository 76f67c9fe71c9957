"""Pure. ``repo-classified``: every code repository should be classified.

Control: each repository carries the product's own classification, ``production`` or
``non-production``, set explicitly (CLI ``classify``, the API or the dashboard) or by the first
matching configured rule (project key or name glob); an explicit setting always wins.
Evidence: the class and where it came from (``details.source``).
Settings: none. ``pass`` when classified, ``fail`` when not. An unclassified repository is
evaluated by the other repository tests as if it were production (the safe side).
"""

from __future__ import annotations

from collections.abc import Sequence

from app.checks.base import Check, Context, WorkspaceFacts, repo_result
from app.models import Result


def evaluate(ws: WorkspaceFacts, ctx: Context) -> Sequence[Result]:
    out = []
    for facts in ws.repositories:
        if facts.repo_class:
            out.append(
                repo_result(
                    CHECK,
                    facts,
                    "pass",
                    f"{facts.repo.full_name} is classified {facts.repo_class}.",
                    repo_class=facts.repo_class,
                    source=facts.class_source,
                )
            )
        else:
            out.append(
                repo_result(
                    CHECK,
                    facts,
                    "fail",
                    f"{facts.repo.full_name} is not classified. Mark it production or non-production: "
                    f"`lowerplane-bitbucket classify {facts.repo.full_name} production` (or the dashboard), "
                    "or add a classification rule for its project.",
                    project=facts.repo.project_key,
                )
            )
    return out


CHECK = Check(
    id="repo-classified",
    title="Code repo should be classified",
    severity="critical",
    subject_type="repository",
    default_on=True,
    evaluate=evaluate,
    doc=__doc__ or "",
    controls=("SOC 2 CC6.1", "ISO 27001:2022 A.5.9", "ISO 27001:2022 A.5.12"),
)

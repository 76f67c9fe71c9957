"""Pure: which branch restrictions cover a repository's protected (main) branch.

docs/checks.md "Which branch is protected": a ``glob`` restriction covers the branch when its pattern
matches, ``*`` matching any run of characters including ``/`` and everything else literal; a
``branching_model`` restriction covers it through the branching model (development with
``use_mainbranch``, production only when enabled, other types by prefix).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

from app.bitbucket.models import BranchingModel, BranchRestriction


@lru_cache(maxsize=4096)
def _glob(pattern: str) -> re.Pattern[str]:
    return re.compile("^" + ".*".join(re.escape(part) for part in pattern.split("*")) + "$", re.DOTALL)


def glob_matches(pattern: str, branch: str) -> bool:
    """``*`` spans any characters, ``/`` included; every other character is literal."""
    return bool(_glob(pattern).match(branch))


def branch_types(branch: str, main: str | None, model: BranchingModel | None) -> set[str]:
    """The branching-model types ``branch`` belongs to."""
    if model is None:
        return set()
    kinds: set[str] = set()
    dev = main if model.development_use_mainbranch else model.development_name
    if dev and dev == branch:
        kinds.add("development")
    if model.production_enabled:
        prod = main if model.production_use_mainbranch else model.production_name
        if prod and prod == branch:
            kinds.add("production")
    for t in model.branch_types:
        if t.prefix and branch.startswith(t.prefix):
            kinds.add(t.kind)
    return kinds


def covers(r: BranchRestriction, branch: str, main: str | None, model: BranchingModel | None) -> bool:
    if r.branch_match_kind == "glob":
        return r.pattern is not None and glob_matches(r.pattern, branch)
    if r.branch_match_kind == "branching_model":
        return r.branch_type is not None and r.branch_type in branch_types(branch, main, model)
    return False


def covering(
    restrictions: Iterable[BranchRestriction], branch: str, model: BranchingModel | None, *kinds: str
) -> list[BranchRestriction]:
    """Restrictions of the given kinds that cover ``branch`` (the main branch)."""
    return [r for r in restrictions if r.kind in kinds and covers(r, branch, branch, model)]


def describe(r: BranchRestriction) -> dict[str, object]:
    out: dict[str, object] = {"id": r.id, "kind": r.kind, "branch_match_kind": r.branch_match_kind}
    if r.branch_match_kind == "glob":
        out["pattern"] = r.pattern
    else:
        out["branch_type"] = r.branch_type
    if r.value is not None:
        out["value"] = r.value
    return out

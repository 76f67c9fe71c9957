"""Every recorded Bitbucket response in ../shared/bitbucket/fixtures/api parses with our models."""

from __future__ import annotations

from typing import Any

import pytest

from app.bitbucket import sansio
from app.bitbucket.models import BranchRestriction, Member, Pipeline, Repository, User, Webhook, Workspace
from tests.conftest import FIXTURES, fixture


def _pages(data: Any) -> list[dict[str, Any]]:
    """Some fixtures hold several recorded responses keyed by their query."""
    if isinstance(data, dict) and "values" not in data and all(k.startswith("responses[") for k in data):
        return [v for v in data.values() if v]  # an empty dict records "no such page"
    return [data]


def test_every_api_fixture_is_covered() -> None:
    names = {p.name for p in (FIXTURES / "api").glob("*.json")}
    assert names == set(PARSERS), f"fixtures without a parser test: {names - set(PARSERS)}"


def _repos(d: Any) -> None:
    for page in _pages(d):
        for raw in sansio.parse_page(page).values:
            r = Repository.from_api(raw)
            assert r.full_name and r.slug and r.workspace and r.uuid


def _repo(d: Any) -> None:
    r = Repository.from_api(d)
    assert r.full_name.endswith("/" + r.slug) and r.uuid


def _restrictions(d: Any) -> None:
    rows = [BranchRestriction.from_api(v) for v in sansio.parse_page(d).values]
    assert rows and all(r.kind for r in rows)
    assert any(r.users for r in rows if r.kind == "restrict_merges")


def _pipelines(d: Any) -> None:
    for page in _pages(d):
        for raw in sansio.parse_page(page).values:
            p = Pipeline.from_api(raw)
            assert p.build_number is not None and p.state


def _prs(d: Any) -> None:
    for page in _pages(d):
        assert isinstance(sansio.parse_page(page).values, list)


def _pr(d: Any) -> None:
    assert isinstance(d["id"], int)


def _workspaces(d: Any) -> None:
    for page in _pages(d):
        for raw in sansio.parse_page(page).values:
            assert Workspace.from_api(raw).slug


def _workspace(d: Any) -> None:
    assert Workspace.from_api(d).slug


def _hooks(d: Any) -> None:
    hooks = [Webhook.from_api(v) for v in sansio.parse_page(d).values]
    assert hooks and all(h.uuid and h.url and h.events for h in hooks)


def _hook(d: Any) -> None:
    h = Webhook.from_api(d)
    assert h.uuid and h.subject_type == "repository" and "repo:push" in h.events


def _perms(d: Any) -> None:
    for raw in sansio.parse_page(d).values:
        assert Member.from_api(raw).user.key


def _user(d: Any) -> None:
    u = User.from_api(d)
    assert u.key and u.nickname


def _statuses(d: Any) -> None:
    for page in _pages(d):
        assert all("state" in v for v in sansio.parse_page(page).values)


def _error(d: Any) -> None:
    import json

    with pytest.raises(Exception, match="not found"):
        sansio.raise_for_status(404, {}, json.dumps(d).encode(), "x")


def _single_perm(d: Any) -> None:
    assert "permission" in d or "values" in d


PARSERS = {
    "error_drone-go-scm_testdata.json": _error,
    "get-repository_atlassian-python-api_tests.json": _repo,
    "get-workspace_atlassian-python-api_tests.json": _workspace,
    "hook_drone-go-scm_testdata.json": _hook,
    "hooks_drone-go-scm_testdata.json": _hooks,
    "list-branch-restrictions_atlassian-python-api_tests.json": _restrictions,
    "list-default-reviewers_atlassian-python-api_tests.json": _prs,
    "list-pipelines_atlassian-python-api_tests.json": _pipelines,
    "list-pullrequest-statuses_atlassian-python-api_tests.json": _statuses,
    "list-pullrequests_atlassian-python-api_tests.json": _prs,
    "list-repositories-workspace_atlassian-python-api_tests.json": _repos,
    "list-workspaces_atlassian-python-api_tests.json": _workspaces,
    "perms_drone-go-scm_testdata.json": _perms,
    "pr_drone-go-scm_testdata.json": _pr,
    "prs_drone-go-scm_testdata.json": _prs,
    "repo_drone-go-scm_testdata.json": _repo,
    "repos_drone-go-scm_testdata.json": _repos,
    "statuses_drone-go-scm_testdata.json": _statuses,
    "user_drone-go-scm_testdata.json": _user,
    "user_repo_perm_admin_drone-go-scm_testdata.json": _single_perm,
    "workspace_repo_perms_drone-go-scm_testdata.json": _single_perm,
}


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_fixture_parses(name: str) -> None:
    PARSERS[name](fixture("api/" + name))

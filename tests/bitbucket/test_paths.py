"""The allow-list: read-only metadata plus webhook registration, nothing else."""

from __future__ import annotations

import pytest

from app.bitbucket import paths


@pytest.mark.parametrize(
    ("method", "path", "name"),
    [
        ("GET", "/user", "user"),
        ("GET", "/user/workspaces", "user_workspaces"),
        ("GET", "/repositories/acme", "repositories"),
        ("GET", "/repositories/acme/api", "repository"),
        ("GET", "/repositories/%7Bws-uuid%7D/%7Brepo-uuid%7D", "repository"),
        ("GET", "/repositories/acme/api/branch-restrictions", "branch_restrictions"),
        ("GET", "/repositories/acme/api/branching-model", "branching_model"),
        ("GET", "/repositories/acme/api/effective-branching-model", "effective_branching_model"),
        ("GET", "/repositories/acme/api/pipelines_config", "pipelines_config"),
        ("GET", "/repositories/acme/api/pipelines", "pipelines"),
        ("GET", "/repositories/acme/api/pullrequests", "pullrequests"),
        ("GET", "/workspaces/acme/members", "members"),
        ("GET", "/workspaces/acme/permissions", "permissions"),
        ("POST", "/workspaces/acme/hooks", "workspace_hook_create"),
        ("PUT", "/workspaces/acme/hooks/%7Bx%7D", "workspace_hook_update"),
        ("DELETE", "/repositories/acme/api/hooks/%7Bx%7D", "repo_hook_delete"),
        ("GET", "/hook_events/workspace", "hook_events"),
    ],
)
def test_allowed(method: str, path: str, name: str) -> None:
    endpoint = paths.match(method, path)
    assert endpoint is not None and endpoint.name == name


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/repositories/acme/api/src"),
        ("GET", "/repositories/acme/api/src/main/README.md"),
        ("GET", "/repositories/acme/api/commits"),
        ("GET", "/repositories/acme/api/commit/abc"),
        ("GET", "/repositories/acme/api/diff/abc..def"),
        ("GET", "/repositories/acme/api/patch/abc"),
        ("GET", "/repositories/acme/api/pullrequests/1/diff"),
        ("GET", "/repositories/acme/api/downloads"),
        ("GET", "/snippets/acme"),
        ("GET", "/repositories/acme/api%2Fsrc"),
        ("GET", "/repositories/acme/../acme/api/src"),
        ("DELETE", "/repositories/acme/api"),
        ("POST", "/repositories/acme/api/branch-restrictions"),
        ("PUT", "/repositories/acme/api/pipelines_config"),
    ],
)
def test_refused(method: str, path: str) -> None:
    assert paths.match(method, path) is None


def test_path_encodes_uuid_braces() -> None:
    assert paths.REPOSITORY.path(workspace="{a}", repo_slug="b") == "/repositories/%7Ba%7D/b"

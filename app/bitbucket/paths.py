"""Endpoint templates of Bitbucket Cloud REST 2.0 that the product may call: the allow-list.

Pure: no I/O. Each entry names the scope it needs (the ``security`` of the operation in Atlassian's
OpenAPI document for Bitbucket Cloud REST 2.0, "SPEC" in docs/bitbucket-facts.md; the tests check
every entry against it) and the SPEC path it comes from. Anything not listed
here, such as ``/src``, ``/commits``, ``/diff`` or ``/patch``, is refused by the client before a
request is sent, so the product cannot read source code even by mistake.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import quote

DOC = "https://developer.atlassian.com/cloud/bitbucket/rest/"


@dataclass(frozen=True)
class Endpoint:
    """One allowed (method, path template) pair."""

    name: str
    method: str
    template: str
    scope: str
    doc: str
    regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        pattern = re.sub(r"\\\{[a-z_]+\\\}", r"[^/]+", re.escape(self.template))
        object.__setattr__(self, "regex", re.compile(f"^{pattern}/?$"))

    def path(self, **parts: str) -> str:
        """The concrete path; every part is URL-encoded (braces of a ``{uuid}`` too)."""
        return self.template.format(**{k: quote(v, safe="") for k, v in parts.items()})


def _e(name: str, method: str, template: str, scope: str, doc: str) -> Endpoint:
    return Endpoint(name, method, template, scope, DOC + doc)


USER = _e("user", "GET", "/user", "account", "api-group-users/#api-user-get")
USER_WORKSPACES = _e(
    "user_workspaces", "GET", "/user/workspaces", "account", "api-group-workspaces/#api-user-workspaces-get"
)
REPOSITORIES = _e(
    "repositories",
    "GET",
    "/repositories/{workspace}",
    "repository",
    "api-group-repositories/#api-repositories-workspace-get",
)
REPOSITORY = _e(
    "repository",
    "GET",
    "/repositories/{workspace}/{repo_slug}",
    "repository",
    "api-group-repositories/#api-repositories-workspace-repo-slug-get",
)
BRANCH_RESTRICTIONS = _e(
    "branch_restrictions",
    "GET",
    "/repositories/{workspace}/{repo_slug}/branch-restrictions",
    "repository:admin",
    "api-group-branch-restrictions/#api-repositories-workspace-repo-slug-branch-restrictions-get",
)
BRANCHING_MODEL = _e(
    "branching_model",
    "GET",
    "/repositories/{workspace}/{repo_slug}/branching-model",
    "repository",
    "api-group-branching-model/#api-repositories-workspace-repo-slug-branching-model-get",
)
EFFECTIVE_BRANCHING_MODEL = _e(
    "effective_branching_model",
    "GET",
    "/repositories/{workspace}/{repo_slug}/effective-branching-model",
    "repository",
    "api-group-branching-model/#api-repositories-workspace-repo-slug-effective-branching-model-get",
)
PIPELINES_CONFIG = _e(
    "pipelines_config",
    "GET",
    "/repositories/{workspace}/{repo_slug}/pipelines_config",
    "repository:admin",
    "api-group-pipelines/#api-repositories-workspace-repo-slug-pipelines-config-get",
)
PIPELINES = _e(
    "pipelines",
    "GET",
    "/repositories/{workspace}/{repo_slug}/pipelines",
    "pipeline",
    "api-group-pipelines/#api-repositories-workspace-repo-slug-pipelines-get",
)
PULLREQUESTS = _e(
    "pullrequests",
    "GET",
    "/repositories/{workspace}/{repo_slug}/pullrequests",
    "pullrequest",
    "api-group-pullrequests/#api-repositories-workspace-repo-slug-pullrequests-get",
)
MEMBERS = _e(
    "members",
    "GET",
    "/workspaces/{workspace}/members",
    "account",
    "api-group-workspaces/#api-workspaces-workspace-members-get",
)
PERMISSIONS = _e(
    "permissions",
    "GET",
    "/workspaces/{workspace}/permissions",
    "account",
    "api-group-workspaces/#api-workspaces-workspace-permissions-get",
)
HOOK_EVENTS = _e(
    "hook_events",
    "GET",
    "/hook_events/{subject_type}",
    "",
    "api-group-webhooks/#api-hook-events-subject-type-get",
)
_WS_HOOKS = "/workspaces/{workspace}/hooks"
_WS_HOOK = "/workspaces/{workspace}/hooks/{uid}"
_REPO_HOOKS = "/repositories/{workspace}/{repo_slug}/hooks"
_REPO_HOOK = "/repositories/{workspace}/{repo_slug}/hooks/{uid}"
_HOOK_DOC = "api-group-webhooks/"
WORKSPACE_HOOKS_LIST = _e("workspace_hooks_list", "GET", _WS_HOOKS, "webhook", _HOOK_DOC)
WORKSPACE_HOOK_CREATE = _e("workspace_hook_create", "POST", _WS_HOOKS, "webhook", _HOOK_DOC)
WORKSPACE_HOOK_GET = _e("workspace_hook_get", "GET", _WS_HOOK, "webhook", _HOOK_DOC)
WORKSPACE_HOOK_UPDATE = _e("workspace_hook_update", "PUT", _WS_HOOK, "webhook", _HOOK_DOC)
WORKSPACE_HOOK_DELETE = _e("workspace_hook_delete", "DELETE", _WS_HOOK, "webhook", _HOOK_DOC)
REPO_HOOKS_LIST = _e("repo_hooks_list", "GET", _REPO_HOOKS, "webhook", _HOOK_DOC)
REPO_HOOK_CREATE = _e("repo_hook_create", "POST", _REPO_HOOKS, "webhook", _HOOK_DOC)
REPO_HOOK_GET = _e("repo_hook_get", "GET", _REPO_HOOK, "webhook", _HOOK_DOC)
REPO_HOOK_UPDATE = _e("repo_hook_update", "PUT", _REPO_HOOK, "webhook", _HOOK_DOC)
REPO_HOOK_DELETE = _e("repo_hook_delete", "DELETE", _REPO_HOOK, "webhook", _HOOK_DOC)

ALLOWED: tuple[Endpoint, ...] = (
    USER,
    USER_WORKSPACES,
    REPOSITORIES,
    REPOSITORY,
    BRANCH_RESTRICTIONS,
    BRANCHING_MODEL,
    EFFECTIVE_BRANCHING_MODEL,
    PIPELINES_CONFIG,
    PIPELINES,
    PULLREQUESTS,
    MEMBERS,
    PERMISSIONS,
    HOOK_EVENTS,
    WORKSPACE_HOOKS_LIST,
    WORKSPACE_HOOK_CREATE,
    WORKSPACE_HOOK_GET,
    WORKSPACE_HOOK_UPDATE,
    WORKSPACE_HOOK_DELETE,
    REPO_HOOKS_LIST,
    REPO_HOOK_CREATE,
    REPO_HOOK_GET,
    REPO_HOOK_UPDATE,
    REPO_HOOK_DELETE,
)


def match(method: str, path: str) -> Endpoint | None:
    """The allowed endpoint for ``method path`` (path relative to the API base), or None.

    More specific templates are listed after their parents, so the longest match wins.
    """
    lowered = path.lower()
    if "%2f" in lowered or "%5c" in lowered or "/../" in path or path.endswith("/.."):
        return None  # an encoded slash or a dot segment could reach a path outside the list
    found: Endpoint | None = None
    for endpoint in ALLOWED:
        if endpoint.method == method.upper() and endpoint.regex.match(path):
            if found is None or len(endpoint.template) > len(found.template):
                found = endpoint
    return found

"""Sandbox state: a scenario file loaded into mutable in-memory objects, and a generator.

A scenario (JSON) describes users, workspaces with projects, members (role, email), repositories
(main branch or none, visibility, language, branches, branch restrictions with every field,
branching model, Pipelines switch and runs, pull requests) and credentials (OAuth consumers and
access tokens with their scopes). See ``scenarios/sample.json``.
"""

from __future__ import annotations

import json
import uuid as uuidlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SAMPLE = Path(__file__).with_name("scenarios") / "sample.json"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "+00:00")


def new_uuid() -> str:
    return "{" + str(uuidlib.uuid4()) + "}"


@dataclass
class SUser:
    account_id: str
    uuid: str
    display_name: str
    nickname: str
    email: str


@dataclass
class SMember:
    account_id: str
    permission: str  # owner | member | collaborator


@dataclass
class SPullRequest:
    id: int
    title: str
    source: str
    destination: str
    state: str = "OPEN"
    author: str | None = None
    approvals: list[str] = field(default_factory=list)
    created_on: str = field(default_factory=now_iso)


@dataclass
class SPipelineRun:
    uuid: str
    build_number: int
    branch: str
    state: str  # PENDING | IN_PROGRESS | COMPLETED
    result: str | None  # SUCCESSFUL | FAILED | STOPPED | ERROR
    created_on: str
    completed_on: str | None = None


@dataclass
class SHook:
    uuid: str
    url: str
    description: str
    events: list[str]
    active: bool
    secret: str | None
    subject_type: str  # workspace | repository
    created_at: str = field(default_factory=now_iso)


@dataclass
class SRepo:
    uuid: str
    slug: str
    name: str
    project_key: str | None
    is_private: bool
    language: str
    mainbranch: str | None
    branches: dict[str, str]  # name -> head commit hash
    restrictions: list[dict[str, Any]]
    branching_model: dict[str, Any] | None
    pipelines: str  # enabled | disabled | never
    runs: list[SPipelineRun]
    pullrequests: list[SPullRequest]
    hooks: dict[str, SHook] = field(default_factory=dict)
    created_on: str = field(default_factory=now_iso)
    updated_on: str = field(default_factory=now_iso)
    fork_of: str | None = None
    # Explicit repository permissions (account_id -> admin | write | read); others get the
    # workspace default for their role (Repository settings -> User and group access).
    permissions: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)  # name -> commit hash


@dataclass
class SWorkspace:
    slug: str
    uuid: str
    name: str
    projects: dict[str, dict[str, str]]
    members: dict[str, SMember]
    repos: dict[str, SRepo]
    hooks: dict[str, SHook] = field(default_factory=dict)
    omit_pr_size: bool = False
    # What a member's repository permission is when the repository names none (owners are always
    # admin; collaborators only read what they were not given explicitly).
    default_repository_permission: str = "admin"
    # Project-level branching models (project key -> model in the repository model's shape); a
    # repository without its own model uses its project's (effective-branching-model).
    project_models: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class SCredential:
    """An OAuth consumer (client_id/secret, acting for ``user``) or an access token."""

    kind: str  # oauth_consumer | access_token
    scopes: set[str]
    key: str  # rate-limit bucket: the consumer id or the token id
    client_id: str | None = None
    client_secret: str | None = None
    callback_url: str | None = None
    user: str | None = None  # account_id the consumer acts for
    token: str | None = None
    workspace: str | None = None  # an access token's workspace
    # Scaled limit of an access token on Standard/Premium (1,000 + 10 per paid seat above 100,
    # capped at 10,000); None: the scenario's rate_limit_per_hour.
    rate_limit: int | None = None


@dataclass
class State:
    users: dict[str, SUser]
    workspaces: dict[str, SWorkspace]
    credentials: list[SCredential]
    rate_limit_per_hour: int = 1000
    oauth_expires_in: int = 7200
    # Whether responses carry X-OAuth-Scopes / X-Accepted-OAuth-Scopes (some Bitbucket answers,
    # such as those to API tokens, do not: then only a scope 403's error.detail names the scopes).
    scope_headers: bool = True
    # Whether a 429 of the rolling window carries Retry-After (absent in recorded real dumps).
    rate_limit_retry_after: bool = False
    # Whether repo:updated is delivered when only the main branch, project or visibility changed
    # (Bitbucket's documented ``changes`` keys do not include them: it is uncertain that it is).
    repo_updated_for_moves: bool = True
    next_restriction_id: int = 1000
    next_pr_id: int = 1000

    def workspace(self, ref: str) -> SWorkspace | None:
        """By slug or ``{uuid}`` (SPEC: both are accepted in paths)."""
        if ref in self.workspaces:
            return self.workspaces[ref]
        for ws in self.workspaces.values():
            if ws.uuid == ref:
                return ws
        return None

    def repo(self, ws: SWorkspace, ref: str) -> SRepo | None:
        if ref in ws.repos:
            return ws.repos[ref]
        for repo in ws.repos.values():
            if repo.uuid == ref:
                return repo
        return None


def _restriction(raw: dict[str, Any], rid: int) -> dict[str, Any]:
    kind = raw["kind"]
    match_kind = raw.get("branch_match_kind", "glob")
    out: dict[str, Any] = {
        "type": "branchrestriction",
        "id": raw.get("id", rid),
        "kind": kind,
        "branch_match_kind": match_kind,
        "users": list(raw.get("users", [])),
        "groups": list(raw.get("groups", [])),
        "value": raw.get("value"),
    }
    if match_kind == "glob":
        out["pattern"] = raw.get("pattern", "")
    else:
        out["branch_type"] = raw.get("branch_type", "development")
        out["pattern"] = ""
    return out


def _repo(raw: dict[str, Any], state: State) -> SRepo:
    main = raw.get("mainbranch", "main")
    branches = list(raw.get("branches", [main] if main else []))
    if main and main not in branches:
        branches.insert(0, main)
    restrictions = []
    for r in raw.get("branch_restrictions", []):
        state.next_restriction_id += 1
        restrictions.append(_restriction(r, state.next_restriction_id))
    runs = []
    for number, run in enumerate(raw.get("pipeline_runs", []), 1):
        runs.append(
            SPipelineRun(
                uuid=new_uuid(),
                build_number=run.get("build_number", number),
                branch=run["branch"],
                state=run.get("state", "COMPLETED"),
                result=run.get("result", "SUCCESSFUL"),
                created_on=run.get("created_on", now_iso()),
                completed_on=run.get("completed_on", now_iso()),
            )
        )
    prs = [
        SPullRequest(
            id=p.get("id", i),
            title=p.get("title", f"PR {i}"),
            source=p.get("source", "feature/x"),
            destination=p.get("destination", main or "main"),
            state=p.get("state", "OPEN"),
            author=p.get("author"),
        )
        for i, p in enumerate(raw.get("pull_requests", []), 1)
    ]
    slug = raw["slug"]
    return SRepo(
        uuid=raw.get("uuid") or new_uuid(),
        slug=slug,
        name=raw.get("name", slug),
        project_key=raw.get("project"),
        is_private=raw.get("is_private", True),
        language=raw.get("language", ""),
        mainbranch=main,
        branches={b: uuidlib.uuid4().hex + uuidlib.uuid4().hex[:8] for b in branches},
        restrictions=restrictions,
        branching_model=raw.get("branching_model"),
        pipelines=raw.get("pipelines", "never"),
        runs=runs,
        pullrequests=prs,
        permissions={str(k): _permission(v) for k, v in (raw.get("permissions") or {}).items()},
    )


PERMISSIONS = ("read", "write", "admin")


def _permission(value: Any) -> str:
    if value not in PERMISSIONS:
        raise ValueError(f"repository permission must be one of {PERMISSIONS}, not {value!r}")
    return str(value)


def load(data: dict[str, Any]) -> State:
    """Build the sandbox state from a scenario dict (raises KeyError/ValueError when malformed)."""
    state = State(users={}, workspaces={}, credentials=[])
    state.rate_limit_per_hour = int(data.get("rate_limit_per_hour", 1000))
    state.oauth_expires_in = int(data.get("oauth_expires_in", 7200))
    state.scope_headers = bool(data.get("scope_headers", True))
    state.rate_limit_retry_after = bool(data.get("rate_limit_retry_after", False))
    state.repo_updated_for_moves = bool(data.get("repo_updated_for_moves", True))
    for u in data.get("users", []):
        user = SUser(
            account_id=u["account_id"],
            uuid=u.get("uuid") or new_uuid(),
            display_name=u.get("display_name", u["account_id"]),
            nickname=u.get("nickname", u.get("display_name", u["account_id"])),
            email=u.get("email", f"{u['account_id']}@example.com"),
        )
        state.users[user.account_id] = user
    for w in data.get("workspaces", []):
        ws = SWorkspace(
            slug=w["slug"],
            uuid=w.get("uuid") or new_uuid(),
            name=w.get("name", w["slug"]),
            projects={
                p["key"]: {"key": p["key"], "name": p.get("name", p["key"]), "uuid": p.get("uuid") or new_uuid()}
                for p in w.get("projects", [])
            },
            members={},
            repos={},
            omit_pr_size=bool(w.get("omit_pr_size", False)),
            default_repository_permission=_permission(w.get("default_repository_permission", "admin")),
            project_models={p["key"]: p["branching_model"] for p in w.get("projects", []) if p.get("branching_model")},
        )
        for m in w.get("members", []):
            if m["account_id"] not in state.users:
                raise ValueError(f"member {m['account_id']} of {ws.slug} is not in users")
            ws.members[m["account_id"]] = SMember(m["account_id"], m.get("permission", "member"))
        for r in w.get("repositories", []):
            repo = _repo(r, state)
            ws.repos[repo.slug] = repo
        state.workspaces[ws.slug] = ws
    for c in data.get("credentials", []):
        if c["type"] == "oauth_consumer":
            state.credentials.append(
                SCredential(
                    kind="oauth_consumer",
                    scopes=set(c.get("scopes", [])),
                    key="consumer:" + c["client_id"],
                    client_id=c["client_id"],
                    client_secret=c["client_secret"],
                    callback_url=c.get("callback_url"),
                    user=c["user"],
                )
            )
        elif c["type"] == "access_token":
            state.credentials.append(
                SCredential(
                    kind="access_token",
                    scopes=set(c.get("scopes", [])),
                    key="token:" + c.get("name", c["token"][:6]),
                    token=c["token"],
                    workspace=c["workspace"],
                    rate_limit=min(int(c["rate_limit"]), 10_000) if c.get("rate_limit") else None,
                )
            )
        else:
            raise ValueError(f"unknown credential type {c['type']!r}")
    return state


def load_file(path: Path) -> State:
    return load(json.loads(path.read_text(encoding="utf-8")))


ALL_SCOPES = [
    "account",
    "repository",
    "repository:admin",
    "pullrequest",
    "pipeline",
    "webhook",
    "project",
]


def generate(
    *,
    workspace: str = "bench",
    repos: int = 1000,
    members: int = 2000,
    token: str = "bench-token",  # noqa: S107 - a sandbox credential, not a secret
    rate_limit: int = 1_000_000,
) -> dict[str, Any]:
    """A large deterministic scenario for benchmarks: a mix of protected and unprotected repos."""
    users = [
        {
            "account_id": f"5570:{i:06d}",
            "display_name": f"User {i}",
            "nickname": f"user{i}",
            "email": f"user{i}@example.com",
        }
        for i in range(members)
    ]
    repo_list = []
    for i in range(repos):
        protected = i % 3 != 0
        restrictions: list[dict[str, Any]] = []
        if protected:
            restrictions = [
                {"kind": "force", "pattern": "main"},
                {"kind": "delete", "pattern": "main"},
                {"kind": "push", "pattern": "main"},
                {"kind": "require_approvals_to_merge", "pattern": "*", "value": 1 + i % 2},
                {"kind": "require_passing_builds_to_merge", "pattern": "main", "value": 1},
            ]
        if i % 10 == 0:
            restrictions.append(
                {
                    "kind": "require_approvals_to_merge",
                    "branch_match_kind": "branching_model",
                    "branch_type": "development",
                    "value": 2,
                }
            )
        repo_list.append(
            {
                "slug": f"repo-{i:04d}",
                "project": "P" + str(i % 5),
                "mainbranch": None if i % 97 == 5 else "main",
                "language": "python",
                "branch_restrictions": restrictions,
                "branching_model": {"development": {"use_mainbranch": True}} if i % 10 == 0 else None,
                "pipelines": ["enabled", "disabled", "never"][i % 3],
                "pipeline_runs": [{"branch": "main", "result": "SUCCESSFUL"}] if i % 3 == 0 else [],
                "pull_requests": [{"title": f"change {j}"} for j in range(i % 4)],
            }
        )
    return {
        "rate_limit_per_hour": rate_limit,
        "users": users,
        "workspaces": [
            {
                "slug": workspace,
                "name": workspace.title(),
                "projects": [{"key": f"P{k}", "name": f"Project {k}"} for k in range(5)],
                "members": [
                    {"account_id": u["account_id"], "permission": "owner" if j == 0 else "member"}
                    for j, u in enumerate(users)
                ],
                "repositories": repo_list,
            }
        ],
        "credentials": [
            {"type": "access_token", "token": token, "workspace": workspace, "name": "bench", "scopes": ALL_SCOPES}
        ],
    }

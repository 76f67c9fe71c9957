"""Sandbox: objects rendered as Bitbucket Cloud 2.0 JSON (shapes of the SPEC and the fixtures)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from app.sandbox.scenario import SHook, SPipelineRun, SPullRequest, SRepo, SUser, SWorkspace

WEB = "https://bitbucket.org"


def link(href: str) -> dict[str, str]:
    return {"href": href}


def user(u: SUser, api: str, *, email: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": "user",
        "uuid": u.uuid,
        "account_id": u.account_id,
        "display_name": u.display_name,
        "nickname": u.nickname,
        "links": {
            "self": link(f"{api}/users/{quote(u.uuid, safe='')}"),
            "html": link(f"{WEB}/{quote(u.uuid, safe='')}/"),
            "avatar": link(f"{WEB}/account/{u.nickname}/avatar/32/"),
        },
    }
    if email:
        out["email"] = u.email
    return out


def workspace(ws: SWorkspace, api: str) -> dict[str, Any]:
    return {
        "type": "workspace",
        "uuid": ws.uuid,
        "slug": ws.slug,
        "name": ws.name,
        "is_private": True,
        "links": {
            "self": link(f"{api}/workspaces/{ws.slug}"),
            "html": link(f"{WEB}/{ws.slug}/"),
            "avatar": link(f"{WEB}/workspaces/{ws.slug}/avatar/"),
        },
    }


def workspace_base(ws: SWorkspace, api: str) -> dict[str, Any]:
    return {
        "type": "workspace_base",
        "uuid": ws.uuid,
        "slug": ws.slug,
        "name": ws.name,
        "links": {"self": link(f"{api}/workspaces/{ws.slug}")},
    }


def repository(ws: SWorkspace, r: SRepo, api: str) -> dict[str, Any]:
    base = f"{api}/repositories/{ws.slug}/{r.slug}"
    out: dict[str, Any] = {
        "type": "repository",
        "uuid": r.uuid,
        "full_name": f"{ws.slug}/{r.slug}",
        "slug": r.slug,
        "name": r.name,
        "is_private": r.is_private,
        "language": r.language,
        "description": "",
        "fork_policy": "no_public_forks" if r.is_private else "allow_forks",
        "has_issues": False,
        "has_wiki": False,
        "scm": "git",
        "size": 1024,
        "created_on": r.created_on,
        "updated_on": r.updated_on,
        "mainbranch": {"type": "branch", "name": r.mainbranch} if r.mainbranch else None,
        "workspace": workspace_base(ws, api) | {"type": "workspace"},
        "owner": {"type": "team", "uuid": ws.uuid, "display_name": ws.name, "username": ws.slug},
        "links": {
            "self": link(base),
            "html": link(f"{WEB}/{ws.slug}/{r.slug}"),
            "avatar": link(f"{WEB}/{ws.slug}/{r.slug}/avatar/32/"),
            "pullrequests": link(base + "/pullrequests"),
            "hooks": link(base + "/hooks"),
            "clone": [
                {"name": "https", "href": f"https://bitbucket.org/{ws.slug}/{r.slug}.git"},
                {"name": "ssh", "href": f"git@bitbucket.org:{ws.slug}/{r.slug}.git"},
            ],
        },
    }
    if r.project_key and r.project_key in ws.projects:
        p = ws.projects[r.project_key]
        out["project"] = {
            "type": "project",
            "key": p["key"],
            "uuid": p["uuid"],
            "name": p["name"],
            "links": {"html": link(f"{WEB}/{ws.slug}/workspace/projects/{p['key']}")},
        }
    if r.mainbranch is None:
        # An empty repository has no main branch: Bitbucket omits the object entirely.
        del out["mainbranch"]
    return out


def webhook_repository(ws: SWorkspace, r: SRepo, api: str) -> dict[str, Any]:
    """The condensed repository of webhook payloads (fixtures/webhooks: no ``slug``,
    ``workspace``, ``project`` or ``mainbranch``, unlike the REST object)."""
    return {
        "type": "repository",
        "uuid": r.uuid,
        "full_name": f"{ws.slug}/{r.slug}",
        "name": r.name,
        "is_private": r.is_private,
        "scm": "git",
        "website": "",
        "owner": {
            "type": "team",
            "uuid": ws.uuid,
            "display_name": ws.name,
            "username": ws.slug,
            "links": {"self": link(f"{api}/workspaces/{ws.slug}"), "html": link(f"{WEB}/{ws.slug}/")},
        },
        "links": {
            "self": link(f"{api}/repositories/{ws.slug}/{r.slug}"),
            "html": link(f"{WEB}/{ws.slug}/{r.slug}"),
            "avatar": link(f"{WEB}/{ws.slug}/{r.slug}/avatar/32/"),
        },
    }


def repository_ref(ws: SWorkspace, r: SRepo, api: str) -> dict[str, Any]:
    return {
        "type": "repository",
        "uuid": r.uuid,
        "full_name": f"{ws.slug}/{r.slug}",
        "name": r.name,
        "links": {"self": link(f"{api}/repositories/{ws.slug}/{r.slug}"), "html": link(f"{WEB}/{ws.slug}/{r.slug}")},
    }


def restriction(ws: SWorkspace, r: SRepo, raw: dict[str, Any], api: str, users: dict[str, SUser]) -> dict[str, Any]:
    out = dict(raw)
    out["users"] = [user(users[a], api) for a in raw.get("users", []) if a in users]
    out["groups"] = [
        {"type": "group", "slug": g, "name": g, "full_slug": f"{ws.slug}:{g}"} for g in raw.get("groups", [])
    ]
    out["links"] = {"self": link(f"{api}/repositories/{ws.slug}/{r.slug}/branch-restrictions/{raw['id']}")}
    return out


def branching_model(ws: SWorkspace, r: SRepo, api: str, *, effective: bool = False) -> dict[str, Any]:
    """Repository branching model. Without one configured, Bitbucket reports the default model:
    development on the main branch, production disabled (so absent), the four prefixed types.

    ``effective`` (``/effective-branching-model``): the model as applied, so a repository without
    its own model inherits its project's (SPEC: "the effective, or currently applied, branching
    model"); ``/branching-model`` shows the repository's own settings only."""
    page = "effective-branching-model" if effective else "branching-model"
    raw = r.branching_model or {}
    if effective and r.branching_model is None and r.project_key in ws.project_models:
        raw = ws.project_models[r.project_key]
    dev_raw = raw.get("development", {"use_mainbranch": True})
    dev_name = r.mainbranch if dev_raw.get("use_mainbranch") else dev_raw.get("name")
    out: dict[str, Any] = {
        "type": "branching_model",
        "development": {
            "use_mainbranch": bool(dev_raw.get("use_mainbranch")),
            "name": dev_name or "",
        },
        "branch_types": raw.get(
            "branch_types",
            [
                {"kind": "feature", "prefix": "feature/"},
                {"kind": "bugfix", "prefix": "bugfix/"},
                {"kind": "release", "prefix": "release/"},
                {"kind": "hotfix", "prefix": "hotfix/"},
            ],
        ),
        "links": {"self": link(f"{api}/repositories/{ws.slug}/{r.slug}/{page}")},
    }
    if dev_name and dev_name in r.branches:
        out["development"]["branch"] = {"type": "branch", "name": dev_name}
    prod = raw.get("production")
    if prod and prod.get("enabled", True):
        prod_name = r.mainbranch if prod.get("use_mainbranch") else prod.get("name")
        out["production"] = {"use_mainbranch": bool(prod.get("use_mainbranch")), "name": prod_name or ""}
        if prod_name and prod_name in r.branches:
            out["production"]["branch"] = {"type": "branch", "name": prod_name}
    return out


def pipeline(ws: SWorkspace, r: SRepo, run: SPipelineRun, api: str) -> dict[str, Any]:
    state: dict[str, Any] = {"name": run.state, "type": f"pipeline_state_{run.state.lower()}"}
    if run.state == "COMPLETED" and run.result:
        state["result"] = {"name": run.result, "type": f"pipeline_state_completed_{run.result.lower()}"}
    elif run.state == "IN_PROGRESS":
        state["stage"] = {"name": "RUNNING", "type": "pipeline_state_in_progress_running"}
    out: dict[str, Any] = {
        "type": "pipeline",
        "uuid": run.uuid,
        "build_number": run.build_number,
        "repository": repository_ref(ws, r, api),
        "state": state,
        "target": {
            "type": "pipeline_ref_target",
            "ref_type": "branch",
            "ref_name": run.branch,
            "selector": {"type": "branches", "pattern": run.branch},
        },
        "trigger": {"type": "pipeline_trigger_push", "name": "PUSH"},
        "created_on": run.created_on,
    }
    if run.completed_on:
        out["completed_on"] = run.completed_on
    return out


def pullrequest(
    ws: SWorkspace, r: SRepo, pr: SPullRequest, api: str, users: dict[str, SUser], *, listed: bool = False
) -> dict[str, Any]:
    """A pull request in its full shape (fixtures pr_created/pr_fulfilled); ``listed``: as in a
    collection, without ``reviewers`` and ``participants`` (fixture list-pullrequests)."""
    base = f"{api}/repositories/{ws.slug}/{r.slug}/pullrequests/{pr.id}"
    source_hash = r.branches.get(pr.source, "0" * 40)[:12]
    dest_hash = r.branches.get(pr.destination, "0" * 40)[:12]

    def end(branch: str, commit: str) -> dict[str, Any]:
        return {
            "branch": {"name": branch},
            "commit": {"hash": commit},
            "repository": repository_ref(ws, r, api),
        }

    out: dict[str, Any] = {
        "type": "pullrequest",
        "id": pr.id,
        "title": pr.title,
        "description": "",
        "summary": {"raw": "", "markup": "markdown", "html": ""},
        "state": pr.state,
        "reason": "",
        "source": end(pr.source, source_hash),
        "destination": end(pr.destination, dest_hash),
        "merge_commit": {"hash": r.branches.get(pr.destination, "0" * 40)[:12]} if pr.state == "MERGED" else None,
        "closed_by": None,
        "reviewers": [],
        "participants": [
            {"type": "participant", "role": "PARTICIPANT", "approved": True, "user": user(users[a], api)}
            for a in pr.approvals
            if a in users
        ],
        "created_on": pr.created_on,
        "updated_on": pr.created_on,
        "comment_count": 0,
        "task_count": 0,
        "close_source_branch": False,
        "links": {
            "self": link(base),
            "html": link(f"{WEB}/{ws.slug}/{r.slug}/pull-requests/{pr.id}"),
            "commits": link(base + "/commits"),
            "approve": link(base + "/approve"),
            "diff": link(base + "/diff"),
            "comments": link(base + "/comments"),
            "activity": link(base + "/activity"),
        },
    }
    if pr.author in users:
        out["author"] = user(users[pr.author], api)
    if listed:
        del out["reviewers"], out["participants"]
    return out


def hook(h: SHook, subject: dict[str, Any], self_href: str) -> dict[str, Any]:
    return {
        "type": "webhook_subscription",
        "uuid": h.uuid,
        "url": h.url,
        "description": h.description,
        "subject_type": h.subject_type,
        "subject": subject,
        "active": h.active,
        "created_at": h.created_at,
        "events": sorted(h.events),
        "secret_set": h.secret is not None,
        "read_only": False,
        "skip_cert_verification": False,
        "links": {"self": link(self_href)},
    }

"""Sandbox control API under ``/_sandbox``: act as a Bitbucket user, inject faults, read logs.

Each action delivers exactly the webhook events Bitbucket Cloud sends for it, and none where
Bitbucket sends none (bitbucket-facts.md: no event for members, permissions, branch restrictions,
webhooks or the Pipelines switch). An action answers after its deliveries finished, with their
records (``?wait=false`` answers at once and delivers in the background).
"""

from __future__ import annotations

import asyncio
import uuid as uuidlib
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.sandbox import render
from app.sandbox.api import PREFIX, ApiError, Faults, Sandbox, error_response
from app.sandbox.scenario import (
    SHook,
    SMember,
    SPipelineRun,
    SPullRequest,
    SRepo,
    SUser,
    SWorkspace,
    _permission,
    _restriction,
    new_uuid,
    now_iso,
)


def _hash() -> str:
    return uuidlib.uuid4().hex + uuidlib.uuid4().hex[:8]


def _api(sb: Sandbox) -> str:
    return sb.base_url + PREFIX


def _actor(sb: Sandbox, ws: SWorkspace, body: dict[str, Any]) -> SUser:
    account = body.get("actor")
    if account in sb.state.users:
        return sb.state.users[account]
    owners = [m.account_id for m in ws.members.values() if m.permission == "owner"]
    return sb.state.users[owners[0]] if owners else next(iter(sb.state.users.values()))


def _base_payload(sb: Sandbox, ws: SWorkspace, repo: SRepo, actor: SUser) -> dict[str, Any]:
    api = _api(sb)
    # Webhooks carry the condensed repository of the recordings, not the REST object.
    repository = render.webhook_repository(ws, repo, api)
    return {"repository": repository, "actor": render.user(actor, api)}


def _commit(sb: Sandbox, ws: SWorkspace, repo: SRepo, commit: str, actor: SUser, message: str) -> dict[str, Any]:
    api, web = _api(sb), f"https://bitbucket.org/{ws.slug}/{repo.slug}"
    return {
        "type": "commit",
        "hash": commit,
        "message": message,
        "summary": {"raw": message, "markup": "markdown", "html": f"<p>{message}</p>", "type": "rendered"},
        "author": {"type": "author", "raw": f"{actor.display_name} <{actor.email}>", "user": render.user(actor, api)},
        "date": now_iso(),
        "parents": [],
        "links": {
            "self": {"href": f"{api}/repositories/{ws.slug}/{repo.slug}/commit/{commit}"},
            "html": {"href": f"{web}/commits/{commit}"},
        },
    }


def _ref(
    sb: Sandbox, ws: SWorkspace, repo: SRepo, name: str, commit: str, actor: SUser, message: str, kind: str = "branch"
) -> dict[str, Any]:
    """A ref of a ``repo:push`` change (fixtures push_*): a branch, or a tag with tagger/date/message."""
    api, web = _api(sb), f"https://bitbucket.org/{ws.slug}/{repo.slug}"
    refs = "branches" if kind == "branch" else "tags"
    out: dict[str, Any] = {
        "type": kind,
        "name": name,
        "target": _commit(sb, ws, repo, commit, actor, message),
        "links": {
            "commits": {"href": f"{api}/repositories/{ws.slug}/{repo.slug}/commits/{name}"},
            "self": {"href": f"{api}/repositories/{ws.slug}/{repo.slug}/refs/{refs}/{name}"},
            "html": {"href": f"{web}/branch/{name}" if kind == "branch" else f"{web}/commits/tag/{name}"},
        },
    }
    if kind == "tag":
        out |= {"tagger": None, "date": None, "message": None}  # a lightweight tag (fixture)
    return out


def push_payload(
    sb: Sandbox,
    ws: SWorkspace,
    repo: SRepo,
    actor: SUser,
    branch: str,
    old: str | None,
    new: str | None,
    message: str,
    kind: str = "branch",
) -> dict[str, Any]:
    """``repo:push`` as recorded: one change with old/new refs and created/closed flags. Only a
    change that adds commits to a branch carries ``commits`` and ``links`` (a branch delete has
    neither, a tag push has links but no commits)."""
    api, web = _api(sb), f"https://bitbucket.org/{ws.slug}/{repo.slug}"
    change: dict[str, Any] = {
        "old": _ref(sb, ws, repo, branch, old, actor, "previous", kind) if old else None,
        "new": _ref(sb, ws, repo, branch, new, actor, message, kind) if new else None,
        "created": old is None,
        "closed": new is None,
        "forced": False,
        "truncated": False,
    }
    if new is not None:
        span = f"include={new}" + (f"&exclude={old}" if old else "")
        change["links"] = {
            "commits": {"href": f"{api}/repositories/{ws.slug}/{repo.slug}/commits?{span}"},
            "html": {"href": f"{web}/branches/compare/{new}..{old or ''}"},
            "diff": {"href": f"{api}/repositories/{ws.slug}/{repo.slug}/diff/{new}..{old or ''}"},
        }
        if kind == "branch":
            commit = _commit(sb, ws, repo, new, actor, message)
            change["commits"] = [commit]
    return _base_payload(sb, ws, repo, actor) | {"push": {"changes": [change]}}


async def deliver(
    sb: Sandbox, ws: SWorkspace, repo: SRepo | None, event_key: str, payload: dict[str, Any], request: Request
) -> list[dict[str, Any]]:
    hooks: list[SHook] = [h for h in ws.hooks.values() if h.active and event_key in h.events]
    if repo is not None:
        hooks += [h for h in repo.hooks.values() if h.active and event_key in h.events]
    coros = [sb.deliverer.deliver(h, event_key, payload) for h in hooks]
    if request.query_params.get("wait", "true") == "false":
        for c in coros:
            task = asyncio.create_task(c)
            sb.tasks.add(task)
            task.add_done_callback(sb.tasks.discard)
        return []
    records = await asyncio.gather(*coros)
    return [r.as_dict() for r in records]


async def _body(request: Request) -> dict[str, Any]:
    if not await request.body():
        return {}
    try:
        data = await request.json()
    except ValueError:
        raise ApiError(400, "Invalid JSON body") from None
    if not isinstance(data, dict):
        raise ApiError(400, "Invalid JSON body")
    return data


def _find(sb: Sandbox, ws_ref: str, slug: str | None = None) -> tuple[SWorkspace, SRepo | None]:
    ws = sb.state.workspace(ws_ref)
    if ws is None:
        raise ApiError(404, f"No workspace {ws_ref}")
    if slug is None:
        return ws, None
    repo = sb.state.repo(ws, slug)
    if repo is None:
        raise ApiError(404, f"No repository {ws_ref}/{slug}")
    return ws, repo


def _need(body: dict[str, Any], key: str) -> Any:
    if key not in body:
        raise ApiError(400, f"missing field {key!r}")
    return body[key]


async def _action(request: Request) -> Response:
    sb: Sandbox = request.app.state.sandbox
    try:
        result = await _dispatch(sb, request)
    except ApiError as exc:
        return error_response(exc.status, exc.message, exc.detail)
    return JSONResponse(result)


async def _dispatch(sb: Sandbox, request: Request) -> dict[str, Any]:
    p = request.path_params
    action = p["action"]
    body = await _body(request)
    ws, repo = _find(sb, p["ws"], p.get("slug"))
    actor = _actor(sb, ws, body)
    out: dict[str, Any] = {"action": action, "deliveries": []}

    if repo is None:
        if action == "create-repo":
            slug = _need(body, "slug")
            if slug in ws.repos:
                raise ApiError(400, f"Repository {ws.slug}/{slug} already exists")
            main = body.get("mainbranch", "main")
            new = SRepo(
                uuid=body.get("uuid") or new_uuid(),  # a test may fix it (e.g. to aim a fault at it)
                slug=slug,
                name=body.get("name", slug),
                project_key=body.get("project"),
                is_private=body.get("is_private", True),
                language=body.get("language", ""),
                mainbranch=main,
                branches={main: _hash()} if main else {},
                restrictions=[],
                branching_model=None,
                pipelines=body.get("pipelines", "never"),
                runs=[],
                pullrequests=[],
            )
            ws.repos[slug] = new
            event = "repo:imported" if body.get("imported") else "repo:created"
            out["repository"] = {"uuid": new.uuid, "full_name": f"{ws.slug}/{slug}"}
            out["deliveries"] = await deliver(sb, ws, None, event, _base_payload(sb, ws, new, actor), request)
            return out
        if action == "add-member":
            account = _need(body, "account_id")
            if account not in sb.state.users:
                sb.state.users[account] = SUser(
                    account_id=account,
                    uuid=body.get("uuid") or new_uuid(),
                    display_name=body.get("display_name", account),
                    nickname=body.get("nickname", account),
                    email=body.get("email", f"{account}@example.com"),
                )
            ws.members[account] = SMember(account, body.get("permission", "member"))
            return out  # Bitbucket sends no webhook for membership changes
        if action == "remove-member":
            account = _need(body, "account_id")
            if ws.members.pop(account, None) is None:
                raise ApiError(404, f"{account} is not a member of {ws.slug}")
            return out
        if action == "set-permission":
            account = _need(body, "account_id")
            if account not in ws.members:
                raise ApiError(404, f"{account} is not a member of {ws.slug}")
            ws.members[account].permission = _need(body, "permission")
            return out
        if action == "set-project-branching-model":
            key = _need(body, "key")
            if key not in ws.projects:
                raise ApiError(404, f"No project {key}")
            model = body.get("model")
            if model:
                ws.project_models[key] = model
            else:
                ws.project_models.pop(key, None)
            return out  # no webhook for settings changes
        if action == "update-project":
            key = _need(body, "key")
            if key not in ws.projects:
                raise ApiError(404, f"No project {key}")
            ws.projects[key]["name"] = body.get("name", ws.projects[key]["name"])
            payload = {
                "actor": render.user(actor, _api(sb)),
                "project": {"type": "project", **ws.projects[key]},
                "changes": {"name": {"new": ws.projects[key]["name"]}},
            }
            out["deliveries"] = await deliver(sb, ws, None, "project:updated", payload, request)
            return out
        raise ApiError(404, f"Unknown workspace action {action!r}")

    base = _base_payload
    if action == "push":
        branch = body.get("branch") or repo.mainbranch or "main"
        old = repo.branches.get(branch)
        new_commit = _hash()
        repo.branches[branch] = new_commit
        if repo.mainbranch is None:
            repo.mainbranch = branch  # the first push to an empty repository sets its main branch
        payload = push_payload(sb, ws, repo, actor, branch, old, new_commit, body.get("message", "Update"))
        out["deliveries"] = await deliver(sb, ws, repo, "repo:push", payload, request)
    elif action == "create-branch":
        name = _need(body, "name")
        if name in repo.branches:
            raise ApiError(400, f"Branch {name} already exists")
        repo.branches[name] = _hash()
        payload = push_payload(sb, ws, repo, actor, name, None, repo.branches[name], "branch created")
        out["deliveries"] = await deliver(sb, ws, repo, "repo:push", payload, request)
    elif action in ("push-tag", "delete-tag"):
        name = _need(body, "name")
        commit = repo.branches.get(body.get("branch") or repo.mainbranch or "", _hash())
        if action == "push-tag":
            old_tag = repo.tags.get(name)
            repo.tags[name] = commit
            payload = push_payload(sb, ws, repo, actor, name, old_tag, commit, body.get("message", ""), "tag")
        else:
            if name not in repo.tags:
                raise ApiError(404, f"No tag {name}")
            payload = push_payload(sb, ws, repo, actor, name, repo.tags.pop(name), None, "", "tag")
        out["deliveries"] = await deliver(sb, ws, repo, "repo:push", payload, request)
    elif action == "set-repository-permission":
        # Repository settings -> User and group access: no webhook (bitbucket-facts.md).
        account = _need(body, "account_id")
        permission = body.get("permission")
        if permission is None:
            repo.permissions.pop(account, None)
        else:
            try:
                repo.permissions[account] = _permission(permission)
            except ValueError as exc:
                raise ApiError(400, str(exc)) from None
    elif action == "delete-branch":
        name = _need(body, "name")
        if name not in repo.branches:
            raise ApiError(404, f"No branch {name}")
        if name == repo.mainbranch:
            raise ApiError(400, "You can't delete the main branch.")
        old = repo.branches.pop(name)
        payload = push_payload(sb, ws, repo, actor, name, old, None, "")
        out["deliveries"] = await deliver(sb, ws, repo, "repo:push", payload, request)
    elif action == "open-pr":
        sb.state.next_pr_id += 1
        pr = SPullRequest(
            id=sb.state.next_pr_id,
            title=body.get("title", "Change"),
            source=body.get("source", "feature/x"),
            destination=body.get("destination", repo.mainbranch or "main"),
            author=actor.account_id,
        )
        repo.pullrequests.append(pr)
        out["pullrequest"] = pr.id
        payload = base(sb, ws, repo, actor) | {
            "pullrequest": render.pullrequest(ws, repo, pr, _api(sb), sb.state.users)
        }
        out["deliveries"] = await deliver(sb, ws, repo, "pullrequest:created", payload, request)
    elif action in ("approve-pr", "merge-pr", "decline-pr"):
        pr_id = int(_need(body, "id"))
        pr_found = next((x for x in repo.pullrequests if x.id == pr_id), None)
        if pr_found is None:
            raise ApiError(404, f"No pull request {pr_id}")
        if action == "approve-pr":
            pr_found.approvals.append(actor.account_id)
            event = "pullrequest:approved"
        elif action == "merge-pr":
            pr_found.state = "MERGED"
            event = "pullrequest:fulfilled"
        else:
            pr_found.state = "DECLINED"
            event = "pullrequest:rejected"
        payload = base(sb, ws, repo, actor) | {
            "pullrequest": render.pullrequest(ws, repo, pr_found, _api(sb), sb.state.users)
        }
        if action == "approve-pr":
            payload["approval"] = {"date": now_iso(), "user": render.user(actor, _api(sb))}
        out["deliveries"] = await deliver(sb, ws, repo, event, payload, request)
        if action == "merge-pr":
            # A merge is also a push to the destination branch.
            dest = pr_found.destination
            old = repo.branches.get(dest)
            repo.branches[dest] = _hash()
            push = push_payload(sb, ws, repo, actor, dest, old, repo.branches[dest], f"Merged in {pr_found.source}")
            out["deliveries"] += await deliver(sb, ws, repo, "repo:push", push, request)
    elif action == "delete-repo":
        del ws.repos[repo.slug]
        out["deliveries"] = await deliver(sb, ws, repo, "repo:deleted", base(sb, ws, repo, actor), request)
    elif action == "fork":
        slug = _need(body, "slug")
        fork = SRepo(
            uuid=new_uuid(),
            slug=slug,
            name=slug,
            project_key=repo.project_key,
            is_private=repo.is_private,
            language=repo.language,
            mainbranch=repo.mainbranch,
            branches=dict(repo.branches),
            restrictions=[],
            branching_model=None,
            pipelines="never",
            runs=[],
            pullrequests=[],
            fork_of=repo.uuid,
        )
        ws.repos[slug] = fork
        payload = base(sb, ws, repo, actor) | {"fork": render.webhook_repository(ws, fork, _api(sb))}
        out["repository"] = {"uuid": fork.uuid, "full_name": f"{ws.slug}/{slug}"}
        out["deliveries"] = await deliver(sb, ws, repo, "repo:fork", payload, request)
    elif action == "update":
        changes: dict[str, Any] = {}
        old_slug = repo.slug
        if "name" in body:
            changes["name"] = {"old": repo.name, "new": body["name"]}
            repo.name = body["name"]
            new_slug = body["name"].lower().replace(" ", "-")
            if new_slug != repo.slug:
                changes["full_name"] = {"old": f"{ws.slug}/{repo.slug}", "new": f"{ws.slug}/{new_slug}"}
                del ws.repos[repo.slug]
                repo.slug = new_slug
                ws.repos[new_slug] = repo
        if "is_private" in body:
            changes["is_private"] = {"old": repo.is_private, "new": bool(body["is_private"])}
            repo.is_private = bool(body["is_private"])
        if "language" in body:
            changes["language"] = {"old": repo.language, "new": body["language"]}
            repo.language = body["language"]
        if "project" in body:
            changes["project"] = {"old": repo.project_key, "new": body["project"]}
            repo.project_key = body["project"]
        if "mainbranch" in body:
            name = body["mainbranch"]
            if name not in repo.branches:
                raise ApiError(400, f"No branch {name}")
            changes["mainbranch"] = {"old": {"name": repo.mainbranch}, "new": {"name": name}}
            repo.mainbranch = name
        repo.updated_on = now_iso()
        out["old_slug"] = old_slug
        payload = base(sb, ws, repo, actor) | {"changes": changes}
        moves = {"mainbranch", "project", "is_private"}
        if not sb.state.repo_updated_for_moves and changes and set(changes) <= moves:
            out["deliveries"] = []  # the switch: no repo:updated for a main branch/project/visibility move
        else:
            out["deliveries"] = await deliver(sb, ws, repo, "repo:updated", payload, request)
    elif action == "transfer":
        target = sb.state.workspace(_need(body, "to"))
        if target is None:
            raise ApiError(404, "No target workspace")
        del ws.repos[repo.slug]
        previous = render.workspace(ws, _api(sb))
        target.repos[repo.slug] = repo
        payload = base(sb, target, repo, actor) | {"previous_workspace": previous}
        out["deliveries"] = await deliver(sb, target, repo, "repo:transfer", payload, request)
        # Hooks of the old workspace hear about it too.
        out["deliveries"] += await deliver(sb, ws, None, "repo:transfer", payload, request)
    elif action == "add-restriction":
        sb.state.next_restriction_id += 1
        r = _restriction(body, sb.state.next_restriction_id)
        repo.restrictions.append(r)
        out["id"] = r["id"]  # no webhook: Bitbucket sends none for restriction changes
    elif action == "remove-restriction":
        rid = body.get("id")
        before = len(repo.restrictions)
        if rid is not None:
            repo.restrictions = [r for r in repo.restrictions if r["id"] != int(rid)]
        else:
            kind = _need(body, "kind")
            repo.restrictions = [
                r
                for r in repo.restrictions
                if not (r["kind"] == kind and ("pattern" not in body or r.get("pattern") == body["pattern"]))
            ]
        out["removed"] = before - len(repo.restrictions)
    elif action == "set-pipelines":
        repo.pipelines = "enabled" if _need(body, "enabled") else "disabled"  # no webhook either
    elif action == "set-branching-model":
        repo.branching_model = body.get("model")
    elif action == "run-pipeline":
        branch = body.get("branch") or repo.mainbranch or "main"
        number = max((r.build_number for r in repo.runs), default=0) + 1
        result = body.get("result", "SUCCESSFUL")
        run = SPipelineRun(new_uuid(), number, branch, "COMPLETED", result, now_iso(), now_iso())
        repo.runs.append(run)
        commit = repo.branches.get(branch, _hash())
        status = {
            "type": "build",
            "key": run.uuid,
            "name": f"Pipeline #{number} for {branch}",
            "refname": branch,
            "state": "SUCCESSFUL" if result == "SUCCESSFUL" else "FAILED",
            "url": f"https://bitbucket.org/{ws.slug}/{repo.slug}/pipelines/results/{number}",
            "commit": {"type": "commit", "hash": commit},
            "created_on": run.created_on,
            "updated_on": now_iso(),
        }
        created = base(sb, ws, repo, actor) | {"commit_status": status | {"state": "INPROGRESS"}}
        updated = base(sb, ws, repo, actor) | {"commit_status": status}
        out["deliveries"] = await deliver(sb, ws, repo, "repo:commit_status_created", created, request)
        out["deliveries"] += await deliver(sb, ws, repo, "repo:commit_status_updated", updated, request)
    else:
        raise ApiError(404, f"Unknown repository action {action!r}")
    return out


async def faults(request: Request) -> Response:
    sb: Sandbox = request.app.state.sandbox
    if request.method == "DELETE":
        sb.faults = Faults()
        return JSONResponse({"faults": sb.faults.__dict__})
    try:
        body = await _body(request)
        for key, value in body.items():
            if not hasattr(sb.faults, key):
                raise ApiError(400, f"unknown fault {key!r}")
            setattr(sb.faults, key, value)
    except ApiError as exc:
        return error_response(exc.status, exc.message)
    return JSONResponse({"faults": sb.faults.__dict__})


async def requests_log(request: Request) -> Response:
    sb: Sandbox = request.app.state.sandbox
    if request.method == "DELETE":
        sb.requests.clear()
        return Response(status_code=204)
    since = int(request.query_params.get("since", 0))
    return JSONResponse({"requests": [r for r in sb.requests if r["seq"] > since]})


async def deliveries_log(request: Request) -> Response:
    sb: Sandbox = request.app.state.sandbox
    if request.method == "DELETE":
        sb.deliverer.log.clear()
        return Response(status_code=204)
    bodies = request.query_params.get("bodies") == "1"
    return JSONResponse({"deliveries": [d.as_dict(bodies) for d in sb.deliverer.log]})


async def tokens(request: Request) -> Response:
    """``expire``: every issued OAuth access token expires now; ``revoke``: refresh tokens too."""
    sb: Sandbox = request.app.state.sandbox
    action = request.path_params["action"]
    if action == "expire":
        for issued in sb.issued.values():
            issued.expires_at = 0
    elif action == "revoke":
        sb.issued.clear()
        sb.refresh_tokens.clear()
    else:
        return error_response(404, f"Unknown token action {action!r}")
    return JSONResponse({"ok": True})


async def settings(request: Request) -> Response:
    sb: Sandbox = request.app.state.sandbox
    body = await request.json()
    if "rate_limit_per_hour" in body:
        sb.state.rate_limit_per_hour = int(body["rate_limit_per_hour"])
        sb.windows.clear()
    if "oauth_expires_in" in body:
        sb.state.oauth_expires_in = int(body["oauth_expires_in"])
    if "delivery_retry_delay" in body:
        sb.deliverer.retry_delay = float(body["delivery_retry_delay"])
    if "scope_headers" in body:
        sb.state.scope_headers = bool(body["scope_headers"])
    if "rate_limit_retry_after" in body:
        sb.state.rate_limit_retry_after = bool(body["rate_limit_retry_after"])
    if "repo_updated_for_moves" in body:
        sb.state.repo_updated_for_moves = bool(body["repo_updated_for_moves"])
    return JSONResponse(
        {
            "rate_limit_per_hour": sb.state.rate_limit_per_hour,
            "oauth_expires_in": sb.state.oauth_expires_in,
            "scope_headers": sb.state.scope_headers,
            "rate_limit_retry_after": sb.state.rate_limit_retry_after,
            "repo_updated_for_moves": sb.state.repo_updated_for_moves,
        }
    )


async def hooks_overview(request: Request) -> Response:
    """Every registered hook, with its secret hidden (for tests and the demo)."""
    sb: Sandbox = request.app.state.sandbox
    out = []
    for ws in sb.state.workspaces.values():
        for h in ws.hooks.values():
            out.append(
                {
                    "workspace": ws.slug,
                    "uuid": h.uuid,
                    "url": h.url,
                    "events": h.events,
                    "active": h.active,
                    "secret_set": h.secret is not None,
                }
            )
        for repo in ws.repos.values():
            for h in repo.hooks.values():
                out.append(
                    {
                        "workspace": ws.slug,
                        "repository": repo.slug,
                        "uuid": h.uuid,
                        "url": h.url,
                        "events": h.events,
                        "active": h.active,
                        "secret_set": h.secret is not None,
                    }
                )
    return JSONResponse({"hooks": out})


ROUTES = [
    Route("/_sandbox/workspaces/{ws}/{action}", _action, methods=["POST"]),
    Route("/_sandbox/repos/{ws}/{slug}/{action}", _action, methods=["POST"]),
    Route("/_sandbox/faults", faults, methods=["POST", "DELETE"]),
    Route("/_sandbox/requests", requests_log, methods=["GET", "DELETE"]),
    Route("/_sandbox/deliveries", deliveries_log, methods=["GET", "DELETE"]),
    Route("/_sandbox/tokens/{action}", tokens, methods=["POST"]),
    Route("/_sandbox/settings", settings, methods=["POST"]),
    Route("/_sandbox/hooks", hooks_overview, methods=["GET"]),
]

"""Sandbox: the Starlette app serving Bitbucket Cloud REST 2.0, OAuth 2.0 and a control API.

- REST under ``/2.0``: the read endpoints the product uses and webhook management, with SPEC
  pagination (``page``/``pagelen``/``next``/``size``), error bodies
  (``{"type":"error","error":{"message":…}}``), scopes per credential (``X-OAuth-Scopes``,
  ``X-Accepted-OAuth-Scopes``), a rolling-hour rate limit per credential with ``X-RateLimit-*``
  headers for access tokens and a ``text/plain`` 429.
- OAuth 2.0 under ``/site/oauth2``: ``authorize`` (approves at once, redirects with code and
  state) and ``access_token`` (authorization_code, refresh_token with rotation,
  client_credentials).
- Control API under ``/_sandbox``: act as a Bitbucket user would; each action delivers exactly
  the webhooks Bitbucket sends for it (none for members, restrictions, the Pipelines switch).
  Faults on demand; a request log for tests and benchmarks.
"""

from __future__ import annotations

import asyncio
import base64
import random
import re
import secrets
import time
import uuid as uuidlib
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response

from app.sandbox import render
from app.sandbox.delivery import REPOSITORY_EVENTS, WORKSPACE_EVENTS, Deliverer
from app.sandbox.scenario import (
    SCredential,
    SHook,
    SMember,
    SRepo,
    State,
    SUser,
    SWorkspace,
    new_uuid,
)

PREFIX = "/2.0"
RATE_LIMIT_BODY = "Rate limit for this resource has been exceeded"
# SPEC narrative "Scopes": implied scopes of the classic OAuth scopes.
IMPLIED: dict[str, set[str]] = {
    "repository:write": {"repository"},
    "repository:delete": set(),
    "pullrequest": {"repository"},
    "pullrequest:write": {"pullrequest", "repository", "repository:write"},
    "project": {"repository"},
    "project:write": {"project", "repository"},
    "account:write": {"account"},
    "pipeline:write": {"pipeline"},
    "webhook": set(),
}


def effective_scopes(scopes: set[str]) -> set[str]:
    out = set(scopes)
    for s in scopes:
        out |= IMPLIED.get(s, set())
    return out


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        detail: str | dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.detail = detail
        self.headers = headers or {}


def error_response(
    status: int, message: str, detail: str | dict[str, Any] | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body: dict[str, Any] = {"type": "error", "error": {"message": message}}
    if detail:
        body["error"]["detail"] = detail
    return JSONResponse(body, status_code=status, headers=headers)


@dataclass
class Issued:
    credential: SCredential
    expires_at: float
    scopes: set[str]


@dataclass
class Faults:
    latency_ms: float = 0.0
    error_rate: float = 0.0
    error_status: int = 503
    timeout_rate: float = 0.0
    timeout_seconds: float = 60.0
    force_429: int = 0
    retry_after: int | None = None
    force_status: dict[str, int] = field(default_factory=dict)  # regex on path (and ?query) -> status
    force_malformed: dict[str, str] = field(default_factory=dict)  # path regex -> body answered with 200
    exempt_tokens: list[str] = field(default_factory=list)  # Bearer tokens no fault applies to


@dataclass
class Ctx:
    """The authenticated caller of one REST request."""

    credential: SCredential
    scopes: set[str]  # with the implied ones: what the request may do
    granted: set[str] = field(default_factory=set)  # as granted, unexpanded


class Sandbox:
    """Mutable sandbox: state, issued tokens, rate-limit windows, faults, logs."""

    def __init__(self, state: State, *, seed: int | None = None) -> None:
        self.state = state
        self.issued: dict[str, Issued] = {}
        self.refresh_tokens: dict[str, SCredential] = {}
        self.codes: dict[str, tuple[SCredential, float, str | None]] = {}
        self.windows: dict[str, deque[float]] = {}
        self.faults = Faults()
        self.injected: Counter[str] = Counter()  # faults served, by kind (tests and benches report them)
        self.requests: list[dict[str, Any]] = []
        self.deliverer = Deliverer()
        self.rng = random.Random(seed)
        self.base_url = "http://127.0.0.1"
        self.clock: Callable[[], float] = time.monotonic  # the rate-limit windows' clock
        self.tasks: set[asyncio.Task[Any]] = set()

    # -- auth -----------------------------------------------------------------------------
    def authenticate(self, request: Request) -> Ctx:
        header = request.headers.get("Authorization", "")
        if not header.lower().startswith("bearer "):
            raise ApiError(401, "Authentication required")
        token = header[7:].strip()
        for cred in self.state.credentials:
            if cred.kind == "access_token" and cred.token == token:
                return Ctx(cred, effective_scopes(cred.scopes), set(cred.scopes))
        issued = self.issued.get(token)
        if issued is None:
            raise ApiError(401, "Access token expired or invalid")
        if issued.expires_at <= time.time():
            raise ApiError(401, "Access token expired. Use your refresh token to obtain a new access token.")
        return Ctx(issued.credential, effective_scopes(issued.scopes), set(issued.scopes))

    def limit_of(self, cred: SCredential) -> int:
        """Requests per rolling hour of a credential (an access token's scaled limit)."""
        return cred.rate_limit or self.state.rate_limit_per_hour

    def rate_limited(self, cred: SCredential) -> tuple[bool, int, float]:
        """Count one request against the credential's rolling hour: (limited, left, seconds until
        a slot frees). The window is per OAuth consumer or per access token, so every connection,
        user and token issued for one consumer shares it (support.atlassian.com: API request limits)."""
        now = self.clock()
        limit = self.limit_of(cred)
        window = self.windows.setdefault(cred.key, deque())
        while window and window[0] <= now - 3600:
            window.popleft()
        if len(window) >= limit:
            return True, 0, window[len(window) - limit] + 3600 - now
        window.append(now)
        return False, limit - len(window), 0.0

    def repo_permission(self, ctx: Ctx, ws: SWorkspace, repo: SRepo) -> str | None:
        """The caller's permission on one repository: admin | write | read, or None.

        An access token acts with its scopes alone; a user has what the repository grants them,
        else the default of their workspace role (owners administer every repository)."""
        member = self.member_of(ctx, ws)
        if member is None:
            return None
        if ctx.credential.kind == "access_token" or member.permission == "owner":
            return "admin"
        if member.account_id in repo.permissions:
            return repo.permissions[member.account_id]
        return ws.default_repository_permission if member.permission == "member" else "read"

    def require_repo_admin(self, ctx: Ctx, ws: SWorkspace, repo: SRepo) -> None:
        """Bitbucket checks the user's repository permission after the scope: a credential with
        ``repository:admin`` acting for a user who is not an admin of the repository gets 403."""
        if self.repo_permission(ctx, ws, repo) != "admin":
            who = self.actor(ctx).display_name
            raise ApiError(403, f"{who} does not have admin access to the repository.")

    def member_of(self, ctx: Ctx, ws: SWorkspace) -> SMember | None:
        if ctx.credential.kind == "access_token":
            return SMember("access-token", "owner") if ctx.credential.workspace == ws.slug else None
        return ws.members.get(ctx.credential.user or "")

    def actor(self, ctx: Ctx) -> SUser:
        if ctx.credential.kind == "oauth_consumer" and ctx.credential.user in self.state.users:
            return self.state.users[ctx.credential.user]
        ws = ctx.credential.workspace or "workspace"
        return SUser(
            account_id=f"access-token:{ws}",
            uuid="{" + str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, ws)) + "}",
            display_name=f"{ws} access token",
            nickname=f"{ws}-access-token",
            email="",
        )


def page_of(
    request: Request,
    items: list[Any],
    *,
    max_pagelen: int = 100,
    default: int = 10,
    include_size: bool = True,
) -> dict[str, Any]:
    """SPEC "Pagination": page-numbered collections with ``next`` as a full URL."""
    q = request.query_params
    try:
        pagelen = int(q.get("pagelen", default))
        page = int(q.get("page", 1))
    except ValueError:
        raise ApiError(400, "Invalid pagelen or page") from None
    if pagelen > max_pagelen or pagelen < 1:
        raise ApiError(400, "Invalid pagelen")
    if page < 1:
        raise ApiError(400, "Invalid page")
    start = (page - 1) * pagelen
    body: dict[str, Any] = {"pagelen": pagelen, "page": page, "values": items[start : start + pagelen]}
    if include_size:
        body["size"] = len(items)
    if start + pagelen < len(items):
        params = dict(parse_qsl(request.url.query, keep_blank_values=True))
        params["page"] = str(page + 1)
        body["next"] = str(request.url.replace(query=urlencode(params)))
    if page > 1:
        params = dict(parse_qsl(request.url.query, keep_blank_values=True))
        params["page"] = str(page - 1)
        body["previous"] = str(request.url.replace(query=urlencode(params)))
    return body


_EMAIL_FILTER = re.compile(r'^\s*user\.email\s+(IN\s*\((?P<list>.*)\)|=\s*(?P<one>"(?:[^"\\]|\\.)*"))\s*$', re.I)
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')


def parse_email_filter(q: str) -> list[str]:
    match = _EMAIL_FILTER.match(q)
    if not match:
        raise ApiError(400, "Invalid filter", f"Unsupported query: {q[:80]}")
    text = match.group("list") if match.group("list") is not None else match.group("one")
    emails = [re.sub(r"\\(.)", r"\1", m) for m in _QUOTED.findall(text)]
    # bitbucket-facts.md: the email filter accepts at most 90 addresses.
    if len(emails) > 90:
        raise ApiError(400, "Too many email addresses in the filter", "At most 90 addresses are allowed.")
    return [e.lower() for e in emails]


Handler = Callable[[Sandbox, Request, Ctx], Awaitable[Any]]


@dataclass
class RestRoute:
    method: str
    pattern: re.Pattern[str]
    scope: str | None
    handler: Handler
    rate_limited_resource: str | None = "api"


def _repo_ctx(sb: Sandbox, ctx: Ctx, ws_ref: str, slug: str) -> tuple[SWorkspace, SRepo]:
    ws = sb.state.workspace(ws_ref)
    if ws is None or sb.member_of(ctx, ws) is None:
        raise ApiError(404, f"Repository {ws_ref}/{slug} not found")
    repo = sb.state.repo(ws, slug)
    if repo is None:
        raise ApiError(404, f"Repository {ws_ref}/{slug} not found")
    return ws, repo


def _ws_ctx(sb: Sandbox, ctx: Ctx, ws_ref: str) -> SWorkspace:
    ws = sb.state.workspace(ws_ref)
    if ws is None:
        raise ApiError(404, f"No workspace with identifier '{ws_ref}'.")
    if sb.member_of(ctx, ws) is None:
        raise ApiError(403, "You do not have access to this workspace.")
    return ws


def _api(request: Request) -> str:
    return str(request.base_url).rstrip("/") + PREFIX


# -- REST handlers ---------------------------------------------------------------------------
async def h_user(sb: Sandbox, request: Request, ctx: Ctx) -> Any:
    out = render.user(sb.actor(ctx), _api(request))
    out["account_status"] = "active"
    out["has_2fa_enabled"] = None  # meaningful only for the caller; not documented for tokens
    if out["has_2fa_enabled"] is None:
        del out["has_2fa_enabled"]
    return out


async def h_user_workspaces(sb: Sandbox, request: Request, ctx: Ctx) -> Any:
    items = []
    for ws in sb.state.workspaces.values():
        member = sb.member_of(ctx, ws)
        if member is None:
            continue
        items.append(
            {
                "type": "workspace_access",
                "administrator": member.permission == "owner",
                "workspace": render.workspace_base(ws, _api(request)),
                "links": {"self": render.link(f"{_api(request)}/workspaces/{ws.slug}")},
            }
        )
    return page_of(request, items)


async def h_repositories(sb: Sandbox, request: Request, ctx: Ctx, ws_ref: str) -> Any:
    ws = sb.state.workspace(ws_ref)
    if ws is None:
        raise ApiError(404, f"No workspace with identifier '{ws_ref}'.")
    if sb.member_of(ctx, ws) is None:
        return page_of(request, [])  # Bitbucket lists only what the caller may see
    api = _api(request)
    repos = sorted(ws.repos.values(), key=lambda r: r.created_on)
    return page_of(request, [render.repository(ws, r, api) for r in repos])


async def h_repository(sb: Sandbox, request: Request, ctx: Ctx, ws_ref: str, slug: str) -> Any:
    ws, repo = _repo_ctx(sb, ctx, ws_ref, slug)
    return render.repository(ws, repo, _api(request))


async def h_restrictions(sb: Sandbox, request: Request, ctx: Ctx, ws_ref: str, slug: str) -> Any:
    ws, repo = _repo_ctx(sb, ctx, ws_ref, slug)
    sb.require_repo_admin(ctx, ws, repo)
    items = repo.restrictions
    if kind := request.query_params.get("kind"):
        items = [r for r in items if r["kind"] == kind]
    if (pattern := request.query_params.get("pattern")) is not None:
        items = [r for r in items if r.get("pattern") == pattern]
    api = _api(request)
    return page_of(request, [render.restriction(ws, repo, r, api, sb.state.users) for r in items])


async def h_branching_model(sb: Sandbox, request: Request, ctx: Ctx, ws_ref: str, slug: str) -> Any:
    ws, repo = _repo_ctx(sb, ctx, ws_ref, slug)
    return render.branching_model(ws, repo, _api(request))


async def h_effective_branching_model(sb: Sandbox, request: Request, ctx: Ctx, ws_ref: str, slug: str) -> Any:
    """The model as applied: the repository's own, else its project's, else the default."""
    ws, repo = _repo_ctx(sb, ctx, ws_ref, slug)
    return render.branching_model(ws, repo, _api(request), effective=True)


async def h_pipelines_config(sb: Sandbox, request: Request, ctx: Ctx, ws_ref: str, slug: str) -> Any:
    ws, repo = _repo_ctx(sb, ctx, ws_ref, slug)
    sb.require_repo_admin(ctx, ws, repo)
    if repo.pipelines == "never":
        raise ApiError(404, "Pipelines configuration not found for this repository.")
    return {
        "type": "repository_pipelines_configuration",
        "enabled": repo.pipelines == "enabled",
        "repository": render.repository_ref(ws, repo, _api(request)),
    }


async def h_pipelines(sb: Sandbox, request: Request, ctx: Ctx, ws_ref: str, slug: str) -> Any:
    ws, repo = _repo_ctx(sb, ctx, ws_ref, slug)
    runs = list(repo.runs)
    if branch := request.query_params.get("target.branch"):
        runs = [r for r in runs if r.branch == branch]
    sort = request.query_params.get("sort", "created_on")
    runs.sort(key=lambda r: (r.created_on, r.build_number), reverse=sort.startswith("-"))
    api = _api(request)
    return page_of(request, [render.pipeline(ws, repo, r, api) for r in runs])


async def h_pullrequests(sb: Sandbox, request: Request, ctx: Ctx, ws_ref: str, slug: str) -> Any:
    ws, repo = _repo_ctx(sb, ctx, ws_ref, slug)
    states = request.query_params.getlist("state") or ["OPEN"]
    prs = [p for p in repo.pullrequests if p.state in {s.upper() for s in states}]
    api = _api(request)
    # bitbucket-facts.md: pull requests refuse pagelen > 50 ("Invalid pagelen").
    return page_of(
        request,
        [render.pullrequest(ws, repo, p, api, sb.state.users, listed=True) for p in prs],
        max_pagelen=50,
        include_size=not ws.omit_pr_size,
    )


def _email_allowed(sb: Sandbox, ctx: Ctx, ws: SWorkspace) -> bool:
    # bitbucket-facts.md: only admins, integrations or workspace access tokens may filter on email.
    member = sb.member_of(ctx, ws)
    return ctx.credential.kind == "access_token" or (member is not None and member.permission == "owner")


async def h_members(sb: Sandbox, request: Request, ctx: Ctx, ws_ref: str) -> Any:
    ws = _ws_ctx(sb, ctx, ws_ref)
    members = list(ws.members.values())
    q = request.query_params.get("q")
    show_email = False
    if q:
        if not _email_allowed(sb, ctx, ws):
            raise ApiError(403, "You are not allowed to filter members by email.")
        wanted = set(parse_email_filter(q))
        members = [m for m in members if sb.state.users[m.account_id].email.lower() in wanted]
        show_email = "+values.user.email" in request.query_params.get("fields", "")
    api = _api(request)
    items = [
        {
            "type": "workspace_membership",
            "user": render.user(sb.state.users[m.account_id], api, email=show_email),
            "workspace": render.workspace(ws, api),
            "links": {"self": render.link(f"{api}/workspaces/{ws.slug}/members/{m.account_id}")},
        }
        for m in members
    ]
    return page_of(request, items)


async def h_permissions(sb: Sandbox, request: Request, ctx: Ctx, ws_ref: str) -> Any:
    ws = _ws_ctx(sb, ctx, ws_ref)
    if ctx.credential.kind == "access_token":
        # bitbucket-facts.md: access tokens cannot query permission endpoints.
        raise ApiError(403, "Access tokens cannot be used to query permissions.")
    api = _api(request)
    items = [
        {
            "type": "workspace_membership",
            "permission": m.permission,
            "user": render.user(sb.state.users[m.account_id], api),
            "workspace": render.workspace(ws, api),
        }
        for m in ws.members.values()
    ]
    return page_of(request, items)


async def h_hook_events(sb: Sandbox, request: Request, ctx: Ctx | None, subject: str) -> Any:
    if subject == "workspace":
        events = WORKSPACE_EVENTS
    elif subject == "repository":
        events = REPOSITORY_EVENTS
    else:
        raise ApiError(404, f"Unknown subject type '{subject}'")
    items = [{"event": e, "category": e.split(":")[0].title(), "label": e, "description": e} for e in events]
    return page_of(request, items)


async def _hook_body(request: Request, allowed: list[str]) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise ApiError(400, "Invalid JSON body") from None
    if not isinstance(body, dict):
        raise ApiError(400, "Invalid JSON body")
    url = body.get("url")
    if not isinstance(url, str) or not re.match(r"^https?://", url):
        raise ApiError(400, "Invalid URL", "url: Enter a valid URL.")
    events = body.get("events")
    if not isinstance(events, list) or not events or not all(isinstance(e, str) for e in events):
        raise ApiError(400, "events: This field is required.")
    bad = [e for e in events if e not in allowed]
    if bad:
        raise ApiError(400, f"Invalid event type: {bad[0]}")
    secret = body.get("secret")
    if secret is not None and not isinstance(secret, str):
        raise ApiError(400, "secret must be a string")
    return body


def _ws_owner(sb: Sandbox, ctx: Ctx, ws: SWorkspace) -> None:
    member = sb.member_of(ctx, ws)
    if member is None or member.permission != "owner":
        # bitbucket-facts.md: workspace hooks need a workspace owner.
        raise ApiError(403, "You must be an administrator of this workspace to manage its webhooks.")


def _hook_subject(request: Request, ws: SWorkspace, repo: SRepo | None) -> tuple[dict[str, Any], str]:
    api = _api(request)
    if repo is None:
        return render.workspace(ws, api), f"{api}/workspaces/{ws.slug}/hooks"
    return render.repository_ref(ws, repo, api), f"{api}/repositories/{ws.slug}/{repo.slug}/hooks"


async def _hooks(sb: Sandbox, request: Request, ctx: Ctx, ws: SWorkspace, repo: SRepo | None, uid: str | None) -> Any:
    store = ws.hooks if repo is None else repo.hooks
    allowed = WORKSPACE_EVENTS if repo is None else REPOSITORY_EVENTS
    subject, base = _hook_subject(request, ws, repo)
    method = request.method
    if uid is None and method == "GET":
        return page_of(request, [render.hook(h, subject, f"{base}/{h.uuid}") for h in store.values()])
    if uid is None and method == "POST":
        body = await _hook_body(request, allowed)
        hook = SHook(
            uuid=new_uuid(),
            url=body["url"],
            description=str(body.get("description", "")),
            events=sorted(set(body["events"])),
            active=bool(body.get("active", True)),
            secret=body.get("secret"),
            subject_type="workspace" if repo is None else "repository",
        )
        store[hook.uuid] = hook
        return JSONResponse(render.hook(hook, subject, f"{base}/{hook.uuid}"), status_code=201)
    assert uid is not None
    hook_found = store.get(uid) or store.get("{" + uid.strip("{}") + "}")
    if hook_found is None:
        raise ApiError(404, "Webhook not found")
    if method == "GET":
        return render.hook(hook_found, subject, f"{base}/{hook_found.uuid}")
    if method == "DELETE":
        del store[hook_found.uuid]
        return Response(status_code=204)
    body = await _hook_body(request, allowed)
    hook_found.url = body["url"]
    hook_found.events = sorted(set(body["events"]))
    hook_found.active = bool(body.get("active", hook_found.active))
    hook_found.description = str(body.get("description", hook_found.description))
    if "secret" in body:
        hook_found.secret = body["secret"]
    return render.hook(hook_found, subject, f"{base}/{hook_found.uuid}")


async def h_ws_hooks(sb: Sandbox, request: Request, ctx: Ctx, ws_ref: str, uid: str | None = None) -> Any:
    ws = _ws_ctx(sb, ctx, ws_ref)
    _ws_owner(sb, ctx, ws)
    return await _hooks(sb, request, ctx, ws, None, uid)


async def h_repo_hooks(sb: Sandbox, request: Request, ctx: Ctx, ws_ref: str, slug: str, uid: str | None = None) -> Any:
    ws, repo = _repo_ctx(sb, ctx, ws_ref, slug)
    sb.require_repo_admin(ctx, ws, repo)
    return await _hooks(sb, request, ctx, ws, repo, uid)


SEG = r"([^/]+)"


def _r(method: str, path: str, scope: str | None, handler: Any, resource: str | None = "api") -> RestRoute:
    return RestRoute(method, re.compile("^" + path.replace("{}", SEG) + "/?$"), scope, handler, resource)


# SPEC per-operation "security" (endpoint-scopes.csv) names the scope of each route.
ROUTES: list[RestRoute] = [
    _r("GET", "/user", "account", h_user, None),
    _r("GET", "/user/workspaces", "account", h_user_workspaces, None),
    _r("GET", "/repositories/{}", "repository", h_repositories),
    _r("GET", "/repositories/{}/{}", "repository", h_repository),
    _r("GET", "/repositories/{}/{}/branch-restrictions", "repository:admin", h_restrictions),
    _r("GET", "/repositories/{}/{}/branching-model", "repository", h_branching_model),
    _r("GET", "/repositories/{}/{}/effective-branching-model", "repository", h_effective_branching_model),
    _r("GET", "/repositories/{}/{}/pipelines_config", "repository:admin", h_pipelines_config),
    _r("GET", "/repositories/{}/{}/pipelines", "pipeline", h_pipelines),
    _r("GET", "/repositories/{}/{}/pullrequests", "pullrequest", h_pullrequests),
    _r("GET", "/workspaces/{}/members", "account", h_members, None),
    _r("GET", "/workspaces/{}/permissions", "account", h_permissions, None),
    _r("GET", "/hook_events/{}", None, h_hook_events, None),
    *[_r(m, "/workspaces/{}/hooks", "webhook", h_ws_hooks, "webhooks") for m in ("GET", "POST")],
    *[_r(m, "/workspaces/{}/hooks/{}", "webhook", h_ws_hooks, "webhooks") for m in ("GET", "PUT", "DELETE")],
    *[_r(m, "/repositories/{}/{}/hooks", "webhook", h_repo_hooks, "webhooks") for m in ("GET", "POST")],
    *[_r(m, "/repositories/{}/{}/hooks/{}", "webhook", h_repo_hooks, "webhooks") for m in ("GET", "PUT", "DELETE")],
]


async def rest(request: Request) -> Response:
    sb: Sandbox = request.app.state.sandbox
    path = request.url.path[len(PREFIX) :]
    response = await _rest(sb, request, path)
    log_request(sb, request, response.status_code)
    return response


def exempt(sb: Sandbox, request: Request) -> bool:
    """A request bearing one of ``exempt_tokens`` sees no fault (a fault-free twin reading the
    same state beside a faulted client)."""
    header = request.headers.get("Authorization", "")
    return bool(sb.faults.exempt_tokens) and header[7:].strip() in sb.faults.exempt_tokens


async def inject_fault(sb: Sandbox, path: str, request: Request) -> Response | None:
    """The configured fault for ``path`` (a forced status, a malformed body, a timeout, a random
    error), or None.

    Used by the REST API and the OAuth token endpoint alike (``force_status`` and
    ``force_malformed`` patterns are searched in the REST path after ``/2.0`` or in
    ``/site/oauth2/access_token``, with and without the query string)."""
    f = sb.faults
    if exempt(sb, request):
        return None
    if f.latency_ms:
        await asyncio.sleep(f.latency_ms / 1000)
    query = request.url.query
    target = f"{path}?{query}" if query else path
    for pattern, status in f.force_status.items():
        if re.search(pattern, path) or re.search(pattern, target):
            sb.injected[f"status {status}"] += 1
            return error_response(status, f"Injected HTTP {status}")
    for pattern, body in f.force_malformed.items():
        if re.search(pattern, path):
            sb.injected["malformed"] += 1
            return Response(body, status_code=200, media_type="application/json")
    if f.timeout_rate and sb.rng.random() < f.timeout_rate:
        sb.injected["timeout"] += 1
        await asyncio.sleep(f.timeout_seconds)
        return error_response(504, "Gateway timeout")
    if f.error_rate and sb.rng.random() < f.error_rate:
        sb.injected[f"status {f.error_status}"] += 1
        return error_response(f.error_status, "Something went wrong")
    return None


async def _rest(sb: Sandbox, request: Request, path: str) -> Response:
    f = sb.faults
    route = None
    args: tuple[str, ...] = ()
    method_seen = False
    for r in ROUTES:
        m = r.pattern.match(path)
        if m:
            method_seen = True
            if r.method == request.method:
                route, args = r, m.groups()
                break
    if route is None:
        if method_seen:
            return error_response(405, f"Method {request.method} not allowed")
        return error_response(404, f"Resource not found: {path}")
    injected = await inject_fault(sb, path, request)
    if injected is not None:
        return injected
    headers: dict[str, str] = {}
    ctx: Ctx | None = None
    if route.scope is not None:
        try:
            ctx = sb.authenticate(request)
        except ApiError as exc:
            return error_response(exc.status, exc.message)
        if sb.state.scope_headers:
            # Bitbucket lists the scopes as granted, without the ones they imply.
            headers["X-OAuth-Scopes"] = ", ".join(sorted(ctx.granted))
            headers["X-Accepted-OAuth-Scopes"] = route.scope
        headers["X-Credential-Type"] = "repo_access_token" if ctx.credential.kind == "access_token" else "oauth2"
        if f.force_429 > 0 and not exempt(sb, request):
            f.force_429 -= 1
            sb.injected["429" if f.retry_after is None else "429 with Retry-After"] += 1
            h = {"Retry-After": str(f.retry_after)} if f.retry_after is not None else {}
            return PlainTextResponse(RATE_LIMIT_BODY, status_code=429, headers=headers | h)
        limited, remaining, free_in = sb.rate_limited(ctx.credential)
        limit = sb.limit_of(ctx.credential)
        if ctx.credential.kind == "access_token" and route.rate_limited_resource == "api":
            # Scaled rate-limit headers go to access tokens only (Bitbucket blog, 2025); NearLimit
            # is true when under about 20 % is left.
            headers["X-RateLimit-Limit"] = str(limit)
            headers["X-RateLimit-Resource"] = "api"
            headers["X-RateLimit-NearLimit"] = str(remaining < limit * 0.2).lower()
        if limited:
            if sb.state.rate_limit_retry_after:
                headers["Retry-After"] = str(max(1, int(free_in + 0.999)))
            return PlainTextResponse(RATE_LIMIT_BODY, status_code=429, headers=headers)
        if route.scope not in ctx.scopes:
            # Recorded 403s: the detail is an object naming what was required and granted.
            return error_response(
                403,
                "Your credentials lack one or more required privilege scopes.",
                {"required": [route.scope], "granted": sorted(ctx.granted)},
                headers,
            )
    try:
        result = await route.handler(sb, request, ctx, *args)  # type: ignore[arg-type]
    except ApiError as exc:
        return error_response(exc.status, exc.message, exc.detail, headers | exc.headers)
    if isinstance(result, Response):
        result.headers.update(headers)
        return result
    return JSONResponse(partial(result, request.query_params.get("fields")), headers=headers)


def partial(body: Any, fields: str | None) -> Any:
    """SPEC narrative "Partial responses": ``fields=a.b,c`` keeps only those paths (``next`` too is
    dropped unless named, as on Bitbucket); ``+``/``-`` entries adjust the default shape and are
    left to the handlers."""
    wanted = [f.strip() for f in (fields or "").split(",") if f.strip()]
    if not wanted or any(f[0] in "+-" for f in wanted):
        return body
    tree: dict[str, Any] = {}
    for path in wanted:
        node = tree
        for part in path.split("."):
            node = node.setdefault(part, {})
    return _keep(body, tree)


def _keep(value: Any, tree: dict[str, Any]) -> Any:
    if not tree:
        return value
    if isinstance(value, list):
        return [_keep(v, tree) for v in value]
    if isinstance(value, dict):
        if "*" in tree:
            return value
        return {k: _keep(value[k], sub) for k, sub in tree.items() if k in value}
    return value


# -- OAuth 2.0 ---------------------------------------------------------------------------------
CODE_TTL = 600.0


def _oauth_error(error: str, description: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": error, "error_description": description}, status_code=status)


async def authorize(request: Request) -> Response:
    sb: Sandbox = request.app.state.sandbox
    q = request.query_params
    cred = next(
        (c for c in sb.state.credentials if c.kind == "oauth_consumer" and c.client_id == q.get("client_id")),
        None,
    )
    if cred is None:
        return PlainTextResponse("Invalid client_id", status_code=400)
    redirect = q.get("redirect_uri") or cred.callback_url
    if not redirect or (cred.callback_url and not redirect.startswith(cred.callback_url)):
        return PlainTextResponse("redirect_uri does not match the consumer's callback URL", status_code=400)
    params: dict[str, str] = {}
    if q.get("response_type") != "code":
        params["error"] = "unsupported_response_type"
    else:
        code = secrets.token_urlsafe(18)
        sb.codes[code] = (cred, time.time() + CODE_TTL, q.get("redirect_uri"))
        params["code"] = code
    if "state" in q:
        params["state"] = q["state"]
    sep = "&" if "?" in redirect else "?"
    return RedirectResponse(redirect + sep + urlencode(params), status_code=302)


def _client(sb: Sandbox, request: Request, form: dict[str, str]) -> SCredential | None:
    header = request.headers.get("Authorization", "")
    client_id, client_secret = form.get("client_id"), form.get("client_secret")
    if header.lower().startswith("basic "):
        try:
            client_id, _, client_secret = base64.b64decode(header[6:]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
    for c in sb.state.credentials:
        if (
            c.kind == "oauth_consumer"
            and c.client_id == client_id
            and c.client_secret is not None
            and client_secret is not None
            and secrets.compare_digest(c.client_secret, client_secret)
        ):
            return c
    return None


def _issue(sb: Sandbox, cred: SCredential, grant: str) -> JSONResponse:
    access = secrets.token_urlsafe(32)
    refresh = secrets.token_urlsafe(24)
    sb.issued[access] = Issued(cred, time.time() + sb.state.oauth_expires_in, set(cred.scopes))
    sb.refresh_tokens[refresh] = cred
    return JSONResponse(
        {
            "access_token": access,
            "scopes": " ".join(sorted(cred.scopes)),
            "expires_in": sb.state.oauth_expires_in,
            "refresh_token": refresh,
            "token_type": "bearer",
            "state": grant,
        },
        headers={"Cache-Control": "no-store"},
    )


def log_request(sb: Sandbox, request: Request, status: int) -> None:
    sb.requests.append(
        {
            "seq": len(sb.requests) + 1,
            "time": time.time(),
            "method": request.method,
            "path": request.url.path,
            "query": request.url.query,
            "status": status,
        }
    )


async def access_token(request: Request) -> Response:
    """The token endpoint, with the configured faults; logged with the REST requests."""
    sb: Sandbox = request.app.state.sandbox
    before = sum(sb.injected.values())
    response = await inject_fault(sb, request.url.path, request) or await _access_token(sb, request)
    if sum(sb.injected.values()) > before:
        sb.injected["token endpoint"] += 1
    log_request(sb, request, response.status_code)
    return response


async def _access_token(sb: Sandbox, request: Request) -> Response:
    form = {k: str(v) for k, v in (await request.form()).items()}
    cred = _client(sb, request, form)
    if cred is None:
        return _oauth_error("invalid_client", "Client credentials missing or wrong", 401)
    grant = form.get("grant_type")
    if grant == "authorization_code":
        code = form.get("code", "")
        entry = sb.codes.pop(code, None)  # single use: a reused code finds nothing
        if entry is None or entry[0] is not cred:
            return _oauth_error("invalid_grant", "The authorization code is invalid or was already used")
        if entry[1] < time.time():
            return _oauth_error("invalid_grant", "The authorization code has expired")
        if entry[2] is not None and form.get("redirect_uri") not in (None, entry[2]):
            return _oauth_error("invalid_grant", "redirect_uri does not match the authorization request")
        return _issue(sb, cred, "authorization_code")
    if grant == "refresh_token":
        old = form.get("refresh_token", "")
        owner = sb.refresh_tokens.get(old)
        if owner is None or owner is not cred:
            return _oauth_error("invalid_grant", "Invalid refresh_token")
        del sb.refresh_tokens[old]  # refresh tokens rotate on every refresh
        return _issue(sb, cred, "refresh_token")
    if grant == "client_credentials":
        return _issue(sb, cred, "client_credentials")
    return _oauth_error("unsupported_grant_type", f"Unsupported grant_type: {grant}")

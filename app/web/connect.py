"""Connecting a workspace with OAuth 2.0 (authorization-code flow) and the login it needs.

``GET /connect/bitbucket`` (logged in) creates a single-use ``state`` bound to the browser session,
valid 10 minutes, and redirects to Bitbucket's authorize page. The callback checks the state
(unknown, reused, expired or from another session: refused), exchanges the code, stores the tokens
encrypted, records the connecting user, the workspaces and the granted scopes, registers the
webhook and queues the first reconcile.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Iterable
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from app import errors
from app.bitbucket import oauth
from app.bitbucket.client import BitbucketClient, StaticToken
from app.logs import get_logger, register_secret
from app.store.views import Views
from app.web import session

log = get_logger("web.connect")
STATE_TTL = 600.0


def _h(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    import html

    return HTMLResponse(
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title></head>"
        f"<body><main><h1>{html.escape(title)}</h1><p>{html.escape(body)}</p>"
        "<p><a href='/'>Back to the dashboard</a></p></main></body></html>",
        status_code=status,
    )


async def login(request: Request) -> Response:
    """POST /login (form: token, next): the admin token in exchange for a session cookie."""
    form = await request.form()
    token = str(form.get("token") or "")
    target = str(form.get("next") or "/")
    if not target.startswith("/") or target.startswith("//"):
        target = "/"
    if not session.admin_token_ok(request, token):
        return RedirectResponse("/login?error=1&next=" + target, status_code=303)
    response = RedirectResponse(target, status_code=303)
    await session.start(request, response)
    return response


async def logout(request: Request) -> Response:
    """POST /logout (form: csrf): revokes the session server-side; the old cookie is refused after."""
    response = RedirectResponse("/login", status_code=303)
    sid = await session.session_id(request)
    if sid is None:
        response.delete_cookie(session.COOKIE, path="/")
        return response
    form = await request.form()
    if not session.check_csrf(request, sid, str(form.get("csrf") or "")):
        raise errors.ConfigError("The form expired or came from elsewhere (CSRF check). Reload the page.")
    await session.end(request, sid, response)
    return response


async def start(request: Request) -> Response:
    sid = await session.session_id(request)
    if sid is None:
        return RedirectResponse("/login?next=/connect/bitbucket", status_code=303)
    settings = request.app.state.settings
    if not settings.oauth_client_id or settings.oauth_client_secret is None:
        return _page("OAuth is not configured", "Set LP_OAUTH_CLIENT_ID and LP_OAUTH_CLIENT_SECRET.", 503)
    state = secrets.token_urlsafe(24)
    store = request.app.state.services.service.store
    await store.connections.add_oauth_state(_h(state), _h(sid), time.time())
    url = oauth.authorize_url(settings.bitbucket_url, settings.oauth_client_id, state, callback_url(settings))
    return RedirectResponse(url, status_code=302)


async def not_admin_repositories(store: Any, workspaces: Iterable[str]) -> list[str]:
    """Repositories whose admin-only reads (branch restrictions, Pipelines switch) Bitbucket refused
    because the connection's user is not an admin of them, although the scope is granted: the
    scope report shows them apart from missing scopes."""
    return await Views(store.db).not_admin_repositories(list(workspaces))


def callback_url(settings: Any) -> str:
    return f"{settings.public_url}/connect/bitbucket/callback"


async def callback(request: Request) -> Response:
    services = request.app.state.services
    service = services.service
    settings = request.app.state.settings
    q = request.query_params
    if q.get("error"):
        return _page("Bitbucket did not grant access", f"Bitbucket answered: {q.get('error')}.", 400)
    state, code = q.get("state", ""), q.get("code", "")
    sid = await session.session_id(request)
    if not state or not code:
        return _page("Connection refused", "The callback lacks a code or a state.", 400)
    # Single use: only the first callback for a state can claim it.
    claimed = await service.store.connections.claim_oauth_state(_h(state), time.time())
    if claimed is None:
        return _page("Connection refused", "This sign-in link is unknown or was already used. Start again.", 400)
    session_hash, created = claimed
    if sid is None or not secrets.compare_digest(session_hash, _h(sid)):
        return _page("Connection refused", "This sign-in began in another browser session. Start again.", 400)
    if time.time() - created > STATE_TTL:
        return _page("Connection refused", "The sign-in took longer than 10 minutes. Start again.", 400)
    assert settings.oauth_client_id and settings.oauth_client_secret
    try:
        tokens = await oauth.exchange_code(
            service.pool.session,
            settings.bitbucket_url,
            settings.oauth_client_id,
            settings.oauth_client_secret.get_secret_value(),
            code,
            callback_url(settings),
        )
    except oauth.TokenEndpointUnavailable as exc:
        log.warning("connect.exchange_unavailable", error=str(exc))
        return _page("Bitbucket is unavailable", f"Bitbucket's token endpoint failed ({exc}). Start again.", 502)
    except errors.TokenError as exc:
        log.warning("connect.exchange_failed", error=str(exc))
        return _page("Connection refused", f"Bitbucket refused the code ({exc}). Start again.", 400)
    register_secret(tokens.access_token)
    probe = BitbucketClient(service.pool.session, StaticToken(tokens.access_token), api_url=settings.bitbucket_api_url)
    try:
        user = await probe.current_user()
        workspaces = tuple(w.slug for w in await probe.workspaces())
    except errors.BitbucketError as exc:
        return _page("Connected, but Bitbucket could not be read", str(exc), 502)
    scopes = tokens.scopes or tuple(sorted(probe.granted_scopes or ()))
    cid = "oauth-" + re.sub(r"[^a-z0-9]+", "-", (user.nickname or user.key or "user").lower()).strip("-")[:40]
    await service.store.connections.upsert(
        cid,
        "oauth",
        workspaces,
        scopes=scopes,
        user={"account_id": user.account_id, "display_name": user.display_name, "uuid": user.uuid},
    )
    await oauth.store_tokens(service, cid, tokens)
    service.token_sources.pop(cid, None)
    service.pool.drop(cid)
    conn = await service.store.connections.get(cid)
    assert conn is not None
    from app.hooks import ensure_hooks

    try:
        await ensure_hooks(service, conn)
    except (errors.BitbucketError, errors.TokenError) as exc:
        log.error("connect.webhook_failed", connection=cid, error=f"{type(exc).__name__}: {exc}")
    for ws in workspaces:
        await service.internal_event("lp:reconcile", {"workspace": ws, "tier": "full"}, cid)
    log.info("connect.done", connection=cid, workspaces=list(workspaces), scopes=list(scopes))
    return RedirectResponse("/connections?connected=" + cid, status_code=303)

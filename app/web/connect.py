"""Connecting a workspace with OAuth 2.0 (authorization-code flow) and the login it needs.

``GET /connect/bitbucket`` (logged in) starts :func:`app.actions.begin_connect` (a single-use
``state`` bound to the browser session, valid 10 minutes) and redirects to Bitbucket's authorize
page. The callback hands the state and code to :func:`app.actions.finish_connect` (checks, token
exchange, connection, webhooks, first reconcile) and renders its result or its error as a page.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from app import actions, errors
from app.logs import get_logger
from app.web import session
from app.web.state import services_of

log = get_logger("web.connect")


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
        raise errors.CsrfError()
    await session.end(request, sid, response)
    return response


async def start(request: Request) -> Response:
    sid = await session.session_id(request)
    if sid is None:
        return RedirectResponse("/login?next=/connect/bitbucket", status_code=303)
    try:
        url = await actions.begin_connect(services_of(request), sid)
    except errors.OAuthNotConfigured as exc:
        return _page(exc.title, str(exc), exc.http_status)
    return RedirectResponse(url, status_code=302)


async def callback(request: Request) -> Response:
    q = request.query_params
    if q.get("error"):
        return _page("Bitbucket did not grant access", f"Bitbucket answered: {q.get('error')}.", 400)
    sid = await session.session_id(request)
    try:
        done = await actions.finish_connect(services_of(request), q.get("state", ""), q.get("code", ""), sid)
    except (errors.ConnectRefused, errors.ConnectedUnreadable, errors.OAuthNotConfigured) as exc:
        return _page(exc.title, str(exc), exc.http_status)
    except errors.TokenEndpointUnavailable as exc:
        log.warning("connect.exchange_unavailable", error=str(exc))
        return _page("Bitbucket is unavailable", f"Bitbucket's token endpoint failed ({exc}). Start again.", 502)
    except errors.TokenError as exc:
        log.warning("connect.exchange_failed", error=str(exc))
        return _page("Connection refused", f"Bitbucket refused the code ({exc}). Start again.", 400)
    return RedirectResponse("/connections?connected=" + done.id, status_code=303)

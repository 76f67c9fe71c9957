"""Browser sessions for the dashboard and the OAuth connect flow.

Login exchanges ``LP_ADMIN_TOKEN`` for a signed, HttpOnly, SameSite=Lax cookie
(``sid.expires.signature``, HMAC-SHA256 keyed by ``LP_SECRET_KEY`` and the admin token, so rotating
either logs everyone out). The session is also held server-side (the SHA-256 of its id, in the
database): logout, a CSRF-checked POST, deletes it, and the old cookie is refused from then on.
Forms carry a CSRF token derived from the session id.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

from starlette.requests import Request
from starlette.responses import Response

from app.store.sessions import Sessions

COOKIE = "lp_session"
LIFETIME = 12 * 3600


def _key(request: Request) -> bytes:
    s = request.app.state.settings
    secret = s.secret_key.get_secret_value() if s.secret_key else ""
    admin = s.admin_token.get_secret_value() if s.admin_token else ""
    return hashlib.sha256(f"{secret}\0{admin}".encode()).digest()


def _sign(key: bytes, value: str) -> str:
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()


def _hash(sid: str) -> str:
    return hashlib.sha256(sid.encode()).hexdigest()


def _sessions(request: Request) -> Sessions:
    return Sessions(request.app.state.services.service.store.db)


def _signed_sid(request: Request) -> str | None:
    raw = request.cookies.get(COOKIE, "")
    parts = raw.split(".")
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    sid, expires, sig = parts
    if int(expires) < time.time():
        return None
    if not hmac.compare_digest(sig, _sign(_key(request), f"{sid}.{expires}")):
        return None
    return sid


async def session_id(request: Request) -> str | None:
    """The logged-in session's id (signed cookie, not expired, not logged out), or None.
    Remembered on the request for :func:`current`."""
    if "lp_sid" in request.scope:
        return request.scope["lp_sid"]  # type: ignore[no-any-return]
    sid = _signed_sid(request)
    if sid is not None and not await _sessions(request).active(_hash(sid), time.time()):
        sid = None
    request.scope["lp_sid"] = sid
    return sid


def current(request: Request) -> str | None:
    """The session id :func:`session_id` found for this request (None if not looked up)."""
    sid: str | None = request.scope.get("lp_sid")
    return sid


async def start(request: Request, response: Response) -> str:
    sid = secrets.token_urlsafe(18)
    now = int(time.time())
    expires = str(now + LIFETIME)
    await _sessions(request).add(_hash(sid), float(expires), float(now))
    value = f"{sid}.{expires}.{_sign(_key(request), f'{sid}.{expires}')}"
    secure = request.app.state.settings.public_url.startswith("https://")
    response.set_cookie(COOKIE, value, max_age=LIFETIME, httponly=True, samesite="lax", secure=secure, path="/")
    return sid


async def end(request: Request, sid: str, response: Response) -> None:
    """Revoke the session server-side and drop the cookie."""
    await _sessions(request).revoke(_hash(sid))
    request.scope["lp_sid"] = None
    response.delete_cookie(COOKIE, path="/")


def csrf_token(request: Request, sid: str) -> str:
    return _sign(_key(request), f"csrf:{sid}")


def check_csrf(request: Request, sid: str, token: str | None) -> bool:
    return bool(token) and hmac.compare_digest(str(token), csrf_token(request, sid))


def admin_token_ok(request: Request, given: str) -> bool:
    expected = request.app.state.settings.admin_token
    return (
        expected is not None
        and bool(given)
        and hmac.compare_digest(given.encode(), expected.get_secret_value().encode())
    )

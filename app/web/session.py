"""Browser sessions for the dashboard and the OAuth connect flow.

Login exchanges ``LP_ADMIN_TOKEN`` for a signed, HttpOnly, SameSite=Lax cookie
(``sid.expires.signature``, HMAC-SHA256 keyed by ``LP_SECRET_KEY`` and the admin token, so rotating
either logs everyone out). Forms carry a CSRF token derived from the session id.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

from starlette.requests import Request
from starlette.responses import Response

COOKIE = "lp_session"
LIFETIME = 12 * 3600


def _key(request: Request) -> bytes:
    s = request.app.state.settings
    secret = s.secret_key.get_secret_value() if s.secret_key else ""
    admin = s.admin_token.get_secret_value() if s.admin_token else ""
    return hashlib.sha256(f"{secret}\0{admin}".encode()).digest()


def _sign(key: bytes, value: str) -> str:
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()


def session_id(request: Request) -> str | None:
    """The logged-in session's id, or None."""
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


def start(request: Request, response: Response) -> str:
    sid = secrets.token_urlsafe(18)
    expires = str(int(time.time()) + LIFETIME)
    value = f"{sid}.{expires}.{_sign(_key(request), f'{sid}.{expires}')}"
    secure = request.app.state.settings.public_url.startswith("https://")
    response.set_cookie(COOKIE, value, max_age=LIFETIME, httponly=True, samesite="lax", secure=secure, path="/")
    return sid


def end(response: Response) -> None:
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

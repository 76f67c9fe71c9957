"""Bearer authentication for ``/api`` with ``LP_ADMIN_TOKEN``, compared in constant time."""

from __future__ import annotations

import hmac

from starlette.requests import Request

from app.web.problems import Problem


def require_admin(request: Request) -> None:
    expected = request.app.state.settings.admin_token
    header = request.headers.get("Authorization", "")
    given = header[7:].strip() if header.lower().startswith("bearer ") else ""
    if expected is None or not given or not hmac.compare_digest(given.encode(), expected.get_secret_value().encode()):
        raise Problem(
            401,
            "Unauthorized",
            "Send Authorization: Bearer <LP_ADMIN_TOKEN>.",
            headers={"WWW-Authenticate": 'Bearer realm="lowerplane"'},
        )

"""The web app's one exception handler: every deliberate exception (``app.errors``) becomes an RFC
9457 problem details body (``application/problem+json``: type, title, status, detail) with the
HTTP status its class declares. Routes raise :class:`Problem` for an answer of their own choosing."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from app.errors import LowerplaneError
from app.errors import Problem as Problem
from app.logs import scrub


def problem_response(status: int, title: str, detail: str = "", headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, object] = {"type": "about:blank", "title": title, "status": status}
    if detail:
        body["detail"] = detail
    return JSONResponse(body, status_code=status, headers=headers, media_type="application/problem+json")


async def handle_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LowerplaneError)
    return problem_response(exc.http_status, exc.title, scrub(exc.detail), exc.headers or None)


handle_problem = handle_error  # the name routes and tests knew it by

"""Errors as JSON problem details (RFC 9457)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response


class Problem(Exception):
    def __init__(self, status: int, title: str, detail: str = "", headers: dict[str, str] | None = None) -> None:
        super().__init__(title)
        self.status = status
        self.title = title
        self.detail = detail
        self.headers = headers or {}


def problem_response(status: int, title: str, detail: str = "", headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status}
    if detail:
        body["detail"] = detail
    return JSONResponse(body, status_code=status, headers=headers, media_type="application/problem+json")


async def handle_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Problem)
    return problem_response(exc.status, exc.title, exc.detail, exc.headers)

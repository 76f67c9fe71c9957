"""One error tree, one mapping: each deliberate exception says its HTTP status and CLI exit status
(app/errors.py); the web app's one handler answers RFC 9457 problem+json bodies, the CLI's one
handler exits with the class's status and a one-line reason."""

from __future__ import annotations

import inspect
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app import errors
from app.logs import register_secret
from app.sandbox.serve import RunningSandbox, free_port
from app.web.openapi import document
from app.web.problems import handle_error
from tests.helpers import ADMIN, RunningApp, product_settings, running_app

TREE = [c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, errors.LowerplaneError)]


def test_every_deliberate_exception_says_what_it_maps_to() -> None:
    assert len(TREE) > 20
    for cls in TREE:
        assert 400 <= cls.http_status <= 599 and cls.title and cls.exit_code in (1, 2), cls.__name__
    assert errors.CsrfError.http_status == 403 and not issubclass(errors.CsrfError, errors.ConfigError)
    assert (errors.ConfigError.http_status, errors.ConfigError.exit_code) == (400, 2)
    assert (errors.TooLarge.http_status, errors.NoMemberList.http_status, errors.UnknownSubject.http_status) == (
        413,
        409,
        422,
    )


async def asgi_get(app: Starlette) -> tuple[int, dict[str, str], dict[str, object]]:
    """One GET / through the app's ASGI interface (Starlette's routing and exception handling)."""
    scope = {"type": "http", "method": "GET", "path": "/", "raw_path": b"/", "query_string": b"", "headers": []}
    scope |= {"http_version": "1.1", "scheme": "http", "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 1)}
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = sent[0]
    headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}  # type: ignore[attr-defined]
    body = b"".join(m.get("body", b"") for m in sent[1:])  # type: ignore[misc]
    return int(start["status"]), headers, json.loads(body)  # type: ignore[call-overload]


RAISED: list[errors.LowerplaneError] = [
    errors.NoMemberList("no member list for acme yet"),
    errors.UnknownSubject("no repository acme/nope"),
    errors.TooLarge(1024),
    errors.CsrfError(),
    errors.ConfigError("LP_X: bad"),
    errors.ServerError("Bitbucket answered 503", status=503),
    errors.Problem(404, "Unknown connection"),
]


@pytest.mark.parametrize("exc", RAISED, ids=lambda e: type(e).__name__)
async def test_the_one_handler_answers_problem_json_with_the_class_status(exc: errors.LowerplaneError) -> None:
    async def boom(request: Request) -> Response:
        raise exc

    app = Starlette(routes=[Route("/", boom)], exception_handlers={errors.LowerplaneError: handle_error})
    status, headers, body = await asgi_get(app)
    assert status == exc.http_status
    assert headers["content-type"] == "application/problem+json"
    assert body["type"] == "about:blank" and body["status"] == exc.http_status and body["title"] == exc.title
    assert body.get("detail", "") == exc.detail
    if isinstance(exc, errors.TooLarge):
        assert headers["connection"] == "close" and "1 KiB" in str(body["detail"])


async def test_no_secret_in_a_problem_body() -> None:
    register_secret("s3cr3t-value-123")

    async def boom(request: Request) -> Response:
        raise errors.ConfigError("LP_SMTP_URL: cannot reach smtp://u:s3cr3t-value-123@mail")

    app = Starlette(routes=[Route("/", boom)], exception_handlers={errors.LowerplaneError: handle_error})
    status, _, body = await asgi_get(app)
    assert "s3cr3t-value-123" not in str(body["detail"]) and status == body["status"] == 400


def test_openapi_documents_the_problem_shape() -> None:
    problem = document()["components"]["schemas"]["Problem"]
    assert problem["required"] == ["type", "title", "status"]
    assert set(problem["properties"]) == {"type", "title", "status", "detail"}


@pytest.fixture
async def product(sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path) -> AsyncIterator[RunningApp]:
    port = free_port()
    async with running_app(product_settings(sandbox.api, tmp_path, port), port, session, background=False) as app:
        yield app


async def test_a_forged_form_is_403_problem_json_not_a_config_error(product: RunningApp) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.post(product.url + "/login", data={"token": ADMIN}, allow_redirects=False) as r:
            cookie = r.cookies["lp_session"].value
        async with s.post(
            product.url + "/logout", data={"csrf": "forged"}, headers={"Cookie": f"lp_session={cookie}"}
        ) as r:
            assert r.status == 403
            assert r.headers["Content-Type"] == "application/problem+json"
            body = await r.json(content_type=None)
    assert body["status"] == 403 and body["title"] == "CSRF check failed" and "CSRF" in body["detail"]


async def test_api_errors_are_problem_json(product: RunningApp) -> None:
    headers = {"Authorization": f"Bearer {ADMIN}"}
    async with aiohttp.ClientSession() as s:
        async with s.get(product.url + "/api/findings?limit=abc", headers=headers) as r:
            assert r.status == 400 and r.headers["Content-Type"] == "application/problem+json"
            body = await r.json(content_type=None)
    assert set(body) == {"type", "title", "status", "detail"} and body["status"] == 400


def test_the_cli_exits_with_the_class_status(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.cli import main

    monkeypatch.setenv("LP_LOG_LEVEL", "loud")  # a bad setting: ConfigError, exit 2, one line
    assert main(["events"]) == errors.ConfigError.exit_code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "LP_LOG_LEVEL" in err

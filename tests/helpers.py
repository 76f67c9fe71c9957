"""Test helpers: a local HTTP receiver (webhooks, Slack) and the OpenAPI validator."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from aiohttp import web
from openapi_schema_validator import OAS30Validator

from app.sandbox.serve import free_port
from tests.conftest import SHARED


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A loopback HTTP server that records every POST and answers from a status script."""

    statuses: list[int] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        self.received.append(Received(request.path, dict(request.headers), await request.read()))
        status = self.statuses.pop(0) if self.statuses else 200
        return web.Response(status=status, text="ok")

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


@cache
def spec() -> dict[str, Any]:
    """The SPEC, with the deviations real Bitbucket is known to have from it made explicit."""
    data: dict[str, Any] = json.loads((SHARED / "bitbucket" / "openapi.json").read_text())
    schemas = data["components"]["schemas"]
    # Real responses carry "value": null for kinds without a value (fixture
    # list-branch-restrictions_atlassian-python-api_tests.json); the SPEC types it as a plain integer.
    restriction = next(part for part in schemas["branchrestriction"]["allOf"] if "properties" in part)
    restriction["properties"]["value"]["nullable"] = True
    return data


def response_schema(path: str, method: str = "get", status: str = "200") -> dict[str, Any]:
    """The SPEC's JSON schema for one operation's response."""
    op = spec()["paths"][path][method]
    schema: dict[str, Any] = op["responses"][status]["content"]["application/json"]["schema"]
    return schema


def validate(instance: Any, schema: dict[str, Any]) -> None:
    """Validate against a SPEC schema (refs resolved inside the document)."""
    OAS30Validator({**schema, "components": spec()["components"]}).validate(instance)

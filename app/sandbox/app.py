"""Sandbox: the Starlette application factory and a runner used by the CLI, tests and benches."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.routing import Route

from app.sandbox import control
from app.sandbox.api import PREFIX, Sandbox, access_token, authorize, rest
from app.sandbox.scenario import SAMPLE, State, load_file


def create_sandbox_app(state: State | None = None, *, base_url: str = "http://127.0.0.1") -> Starlette:
    sandbox = Sandbox(state if state is not None else load_file(SAMPLE))
    sandbox.base_url = base_url

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await sandbox.deliverer.start()
        try:
            yield
        finally:
            for task in list(sandbox.tasks):
                task.cancel()
            await sandbox.deliverer.close()

    routes: list[Any] = [
        Route(PREFIX + "/{path:path}", rest, methods=["GET", "POST", "PUT", "DELETE"]),
        Route("/site/oauth2/authorize", authorize, methods=["GET"]),
        Route("/site/oauth2/access_token", access_token, methods=["POST"]),
        *control.ROUTES,
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.sandbox = sandbox
    return app

"""Sandbox: serve it with uvicorn (CLI ``sandbox``) or in-process on a free port (tests, benches)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette

from app.sandbox.app import create_sandbox_app
from app.sandbox.scenario import SAMPLE, State, load, load_file


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


async def serve_sandbox(host: str, port: int, scenario: Path | None, sock: socket.socket | None = None) -> None:
    """Serve until stopped; ``sock``: an already bound socket (the CLI binds first, see app.ports)."""
    try:
        state = load_file(scenario or SAMPLE)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:  # a file of the wrong shape too
        from app.errors import ConfigError

        raise ConfigError(f"--scenario: cannot load {scenario}: {type(exc).__name__}: {exc}") from None
    app = create_sandbox_app(state, base_url=f"http://{host}:{port}")
    print(
        f"Bitbucket sandbox on http://{host}:{port}/2.0 (OAuth at /site/oauth2, control at /_sandbox)", file=sys.stderr
    )
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on"))
    await server.serve(sockets=[sock] if sock is not None else None)


class RunningSandbox:
    """A sandbox served by uvicorn in this event loop; ``url`` is its base, ``api`` its REST root."""

    def __init__(self, app: Starlette, server: uvicorn.Server, host: str, port: int) -> None:
        self.app = app
        self.server = server
        self.url = f"http://{host}:{port}"
        self.api = self.url + "/2.0"

    @property
    def sandbox(self) -> Any:
        return self.app.state.sandbox


@contextlib.asynccontextmanager
async def running_sandbox(
    scenario: State | dict[str, Any] | None = None, *, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[RunningSandbox]:
    """Start a sandbox on loopback for the duration of the block."""
    if isinstance(scenario, dict):
        state = load(json.loads(json.dumps(scenario)))
    elif scenario is None:
        state = load_file(SAMPLE)
    else:
        state = scenario
    port = port or free_port(host)
    app = create_sandbox_app(state, base_url=f"http://{host}:{port}")
    server = uvicorn.Server(
        uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on", access_log=False)
    )
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield RunningSandbox(app, server, host, port)
    finally:
        server.should_exit = True
        await task

"""Server side of bench/ingest.py: the product's receiver (writer only, no worker) or a bare
Starlette handler answering 202, each under uvicorn in its own process.

Usage: ``python bench/ingest_server.py product|bare PORT DATABASE WEBHOOK_SECRET SECRET_KEY``
"""

from __future__ import annotations

import asyncio
import sys

import aiohttp
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.logs import configure
from app.main import SERVER_OPTIONS, create_app
from app.services import build_services
from app.settings import Settings


async def bare(request: Request) -> Response:
    await request.body()
    return Response(status_code=202)


async def main(mode: str, port: int, db: str, webhook_secret: str, secret_key: str) -> None:
    if mode == "bare":
        app = Starlette(routes=[Route("/hooks/bitbucket/bench", bare, methods=["POST"])])
        await uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
        ).serve()
        return
    configure("warning")
    settings = Settings.from_env(
        {"LP_DATABASE": db, "LP_SECRET_KEY": secret_key, "LP_ADMIN_TOKEN": "x" * 16, "LP_LOG_LEVEL": "warning"},
        env_file=None,
    )
    async with aiohttp.ClientSession() as session:
        services = await build_services(settings, session)
        await services.service.store.connections.upsert("bench", "token", ("bench",))
        await services.service.store.connections.set_webhook("bench", services.service.encrypt(webhook_secret), [])
        app = create_app(settings, services, background=False)
        await uvicorn.Server(
            uvicorn.Config(
                app, host="127.0.0.1", port=port, log_level="warning", access_log=False, **SERVER_OPTIONS
            )  # serve's HTTP stack: httptools with the request head bounded
        ).serve()


if __name__ == "__main__":
    import uvloop  # the event loop `serve` gets from uvicorn's "auto" choice

    uvloop.install()
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]))

"""Schemathesis against /api/openapi.json on the running product: no 5xx, no schema violation."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import aiohttp

from app.sandbox.serve import RunningSandbox, free_port
from tests.helpers import ADMIN, product_settings, running_app, wait_for


async def test_api_conforms_to_its_openapi_document(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    port = free_port()
    async with running_app(product_settings(sandbox.api, tmp_path, port), port, session) as app:
        store = app.services.service.store

        async def reconciled() -> bool:
            return bool(await store.results.query())

        await wait_for(reconciled, within=20)
        exe = Path(sys.executable).with_name("schemathesis")
        proc = await asyncio.create_subprocess_exec(
            str(exe),
            "run",
            f"{app.url}/api/openapi.json",
            "--header",
            f"Authorization: Bearer {ADMIN}",
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--exclude-path",
            "/api/events/stream",
            "--exclude-path",
            "/api/connections/{id}/disconnect",
            "--max-examples",
            "25",
            "--generation-deterministic",
            "--request-timeout",
            "20",
            "--phases",
            "examples,coverage,fuzzing",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=dict(os.environ, NO_COLOR="1", SCHEMATHESIS_TELEMETRY="false"),
        )
        out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-6000:]
    assert "passed" in text.lower()

"""Shared fixtures: the shared reference data, a running sandbox, an aiohttp session."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from app.bitbucket.client import BitbucketClient, Budget, StaticToken
from app.sandbox.serve import RunningSandbox, running_sandbox

ROOT = Path(__file__).resolve().parents[1]


def _shared() -> Path:
    env = os.environ.get("LP_SHARED_DIR")
    candidates = [Path(env)] if env else []
    candidates += [ROOT.parent / "shared", ROOT.parent.parent / "shared"]
    for c in candidates:
        if (c / "bitbucket" / "openapi.json").is_file():
            return c
    raise RuntimeError("../shared/bitbucket not found beside the checkout (set LP_SHARED_DIR)")


SHARED = _shared()
FIXTURES = SHARED / "bitbucket" / "fixtures"
TOKEN = "sandbox-acme-token"
READONLY_TOKEN = "sandbox-acme-readonly"


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


@pytest.fixture
async def sandbox() -> AsyncIterator[RunningSandbox]:
    async with running_sandbox() as sb:
        yield sb


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def _no_sleep(_: float) -> None:
    return None


@pytest.fixture
def client_for(session: aiohttp.ClientSession, sandbox: RunningSandbox) -> Any:
    def make(token: str = TOKEN, **kw: Any) -> BitbucketClient:
        kw.setdefault("sleep", _no_sleep)
        return BitbucketClient(session, StaticToken(token), api_url=sandbox.api, budget=Budget(100_000), **kw)

    return make

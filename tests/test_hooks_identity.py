"""Hooks are the product's by stored uuid or description, never by URL; status judges from registration."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

from app.sandbox.scenario import SHook
from app.sandbox.serve import RunningSandbox
from app.services import Services, build_services
from app.webhook_registration import DESCRIPTION, description, ensure_hooks
from tests.helpers import SECRET_KEY, product_settings
from tests.test_hooks import _oauth_connection
from tests.test_reconcile_command import run

SCRIPT = Path(sys.executable).with_name("lowerplane-bitbucket")
AT_WS: dict[str, Any] = {"active": True, "secret": None, "subject_type": "workspace"}
MEMBER = {"LP_OAUTH_CLIENT_ID": "sandbox-member-client", "LP_OAUTH_CLIENT_SECRET": "sandbox-member-secret"}


def opener(sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path) -> Callable[..., Any]:
    @asynccontextmanager
    async def product(port: int) -> AsyncIterator[Services]:
        """The product's parts with LP_PUBLIC_URL http://127.0.0.1:<port>, on the same database."""
        services = await build_services(product_settings(sandbox.api, tmp_path, port, **MEMBER), session)
        try:
            yield services
        finally:
            await services.service.store.close()

    return product


async def test_a_new_public_url_updates_the_hook_instead_of_adding_one(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    product = opener(sandbox, session, tmp_path)
    hooks = sandbox.sandbox.state.workspaces["acme"].hooks
    async with product(8001) as services:
        conn = await services.service.ensure_token_connection()
        assert conn is not None
        [entry] = await ensure_hooks(services.service, conn)
    [first] = hooks.values()
    assert entry["action"] == "created" and first.description == description("token") == f"{DESCRIPTION} (token)"
    secret = first.secret
    async with product(8002) as services:  # LP_PUBLIC_URL changed
        conn = await services.service.store.connections.get("token")
        assert conn is not None
        [entry] = await ensure_hooks(services.service, conn)
        assert await services.service.webhook_secrets("token") == [secret]
    [hook] = hooks.values()  # still one hook: the same one, updated in place (PUT)
    assert entry["action"] == "repaired" and hook.uuid == first.uuid == entry["uuid"]
    assert hook.url == "http://127.0.0.1:8002/hooks/bitbucket/token" and hook.secret == secret


async def test_hooks_are_found_by_uuid_or_description_and_others_are_left_alone(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    product = opener(sandbox, session, tmp_path)
    hooks = sandbox.sandbox.state.workspaces["acme"].hooks
    url = "http://127.0.0.1:8001/hooks/bitbucket/token"
    foreign = SHook(
        uuid="{f0000000-0000-4000-8000-000000000001}", url=url, description="CI notifier", events=[], **AT_WS
    )
    hooks[foreign.uuid] = foreign  # someone else's hook, even at the very same URL, is not ours
    async with product(8001) as services:
        conn = await services.service.ensure_token_connection()
        assert conn is not None
        [entry] = await ensure_hooks(services.service, conn)
        ours = hooks[entry["uuid"]]
        # someone renames our hook: its stored uuid still identifies it, and the description is restored
        ours.description = "renamed by hand"
        conn = await services.service.store.connections.get("token")
        assert conn is not None
        assert [e["action"] for e in await ensure_hooks(services.service, conn)] == ["repaired"]
        assert ours.description == description("token")
    # the database is lost (no stored uuid): the description identifies the hook, at a new URL too
    (tmp_path / "lp.sqlite3").unlink()
    for extra in ("-wal", "-shm"):
        (tmp_path / f"lp.sqlite3{extra}").unlink(missing_ok=True)
    async with product(8003) as services:
        conn = await services.service.ensure_token_connection()
        assert conn is not None
        [entry] = await ensure_hooks(services.service, conn)
    assert entry["action"] == "repaired" and entry["uuid"] == ours.uuid
    assert set(hooks) == {foreign.uuid, ours.uuid} and foreign.url == url and foreign.description == "CI notifier"
    assert ours.url == "http://127.0.0.1:8003/hooks/bitbucket/token"


async def test_a_hook_from_an_earlier_version_is_adopted_not_duplicated(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    hooks = sandbox.sandbox.state.workspaces["acme"].hooks
    old = SHook(
        uuid="{e0000000-0000-4000-8000-000000000002}",
        url="http://127.0.0.1:8001/hooks/bitbucket/token",
        description="lowerplane",
        events=["repo:push"],
        secret="old-secret",
        active=True,
        subject_type="workspace",
    )
    hooks[old.uuid] = old
    async with opener(sandbox, session, tmp_path)(8001) as services:
        conn = await services.service.ensure_token_connection()
        assert conn is not None
        [entry] = await ensure_hooks(services.service, conn)
    assert list(hooks) == [old.uuid] and entry["action"] == "repaired"
    assert old.description == description("token")


async def test_repository_hooks_follow_the_public_url_too(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    product = opener(sandbox, session, tmp_path)
    async with product(8001) as services:
        cid = await _oauth_connection(services, sandbox, session)  # bob: not a workspace owner
        conn = await services.service.store.connections.get(cid)
        assert conn is not None
        created = await ensure_hooks(services.service, conn)
    assert {e["level"] for e in created} == {"repository"}
    async with product(8002) as services:
        conn = await services.service.store.connections.get(cid)
        assert conn is not None
        updated = await ensure_hooks(services.service, conn)
    assert [e["uuid"] for e in updated] == [e["uuid"] for e in created]
    assert {e["action"] for e in updated} == {"repaired"}
    for repo in sandbox.sandbox.state.workspaces["acme"].repos.values():
        [hook] = repo.hooks.values()
        assert hook.url == f"http://127.0.0.1:8002/hooks/bitbucket/{cid}"


async def test_status_right_after_registering_is_ok(sandbox: RunningSandbox, tmp_path: Path) -> None:
    """Repositories that changed long before the hook existed are no sign of a silent hook."""
    long_ago = (datetime.now(UTC) - timedelta(days=2)).isoformat()
    for repo in sandbox.sandbox.state.workspaces["acme"].repos.values():
        repo.updated_on = long_ago
    env = {
        "LP_DATABASE": str(tmp_path / "lp.sqlite3"),
        "LP_BITBUCKET_API_URL": sandbox.api,
        "LP_BITBUCKET_URL": sandbox.url,
        "LP_BITBUCKET_TOKEN": "sandbox-acme-token",
        "LP_WORKSPACES": "acme",
        "LP_SECRET_KEY": SECRET_KEY,
        "LP_PUBLIC_URL": "http://127.0.0.1:8001",
        "LP_LOG_LEVEL": "warning",
    }
    for argv in (["reconcile"], ["webhooks", "register"]):
        status, _, err = await run([str(SCRIPT), *argv], env, tmp_path)
        assert status == 0, err
    status, out, err = await run([str(SCRIPT), "webhooks", "status"], env, tmp_path)
    assert status == 0, out + err
    assert out.startswith("token: ok, 1 hooks, last delivery never") and "silent" not in out

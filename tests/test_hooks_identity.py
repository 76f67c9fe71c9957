"""Hooks are the product's by stored uuid or by a description carrying this installation's id, never by
URL alone; another installation's hook is left alone; status judges from registration."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from app.sandbox.scenario import SHook
from app.sandbox.serve import RunningSandbox
from app.services import Services, build_services
from app.webhook_registration import DESCRIPTION, description, ensure_hooks, installation_id
from tests import pgcluster
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
        ours = await installation_id(services.service)
    [first] = hooks.values()
    assert entry["action"] == "created" and first.description == description("token", ours)
    assert first.description == f"{DESCRIPTION} (token, installation {ours})"
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
        described = description("token", await installation_id(services.service))
        # someone renames our hook: its stored uuid still identifies it, and the description is restored
        ours.description = "renamed by hand"
        conn = await services.service.store.connections.get("token")
        assert conn is not None
        assert [e["action"] for e in await ensure_hooks(services.service, conn)] == ["repaired"]
        assert ours.description == described
        # the stored uuids are lost (connection forgotten), the database is not: the description, with
        # this installation's id, identifies the hook, at a new URL too
        await services.service.store.connections.set_webhook("token", None, [])
    async with product(8003) as services:
        conn = await services.service.store.connections.get("token")
        assert conn is not None and conn.hooks == []
        [entry] = await ensure_hooks(services.service, conn)
    assert entry["action"] == "repaired" and entry["uuid"] == ours.uuid
    assert set(hooks) == {foreign.uuid, ours.uuid} and foreign.url == url and foreign.description == "CI notifier"
    assert ours.url == "http://127.0.0.1:8003/hooks/bitbucket/token" and ours.description == described


async def test_two_installations_on_one_workspace_keep_their_own_hooks(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Staging and production (two databases, connection id ``token`` on both) watch one workspace:
    neither adopts, moves or re-keys the other's hook, however often each registers."""
    hooks = sandbox.sandbox.state.workspaces["acme"].hooks
    production = opener(sandbox, session, tmp_path / "production")
    staging = opener(sandbox, session, tmp_path / "staging")
    async with production(8001) as services:
        conn = await services.service.ensure_token_connection()
        assert conn is not None
        [made] = await ensure_hooks(services.service, conn)
        prod_id = await installation_id(services.service)
    prod_hook = hooks[made["uuid"]]
    prod_secret = prod_hook.secret
    async with staging(8002) as services:
        conn = await services.service.ensure_token_connection()
        assert conn is not None
        [entry] = await ensure_hooks(services.service, conn)
        staging_id = await installation_id(services.service)
        conn = await services.service.store.connections.get("token")
        assert conn is not None
        assert [e["action"] for e in await ensure_hooks(services.service, conn)] == ["ok"]
    assert staging_id != prod_id
    assert entry["action"] == "created" and entry["uuid"] != prod_hook.uuid
    assert hooks[entry["uuid"]].url == "http://127.0.0.1:8002/hooks/bitbucket/token"
    # production's hook is as production left it
    assert prod_hook.url == "http://127.0.0.1:8001/hooks/bitbucket/token" and prod_hook.secret == prod_secret
    assert prod_hook.description == description("token", prod_id)
    async with production(8001) as services:  # the id is kept: production still knows its hook
        assert await installation_id(services.service) == prod_id
        await services.service.store.connections.set_webhook("token", None, [])  # even without its uuid
        conn = await services.service.store.connections.get("token")
        assert conn is not None
        [again] = await ensure_hooks(services.service, conn)
    assert again["uuid"] == prod_hook.uuid and again["action"] == "ok" and prod_hook.secret == prod_secret
    assert len(hooks) == 2 and hooks[entry["uuid"]].description == description("token", staging_id)
    assert hooks[entry["uuid"]].url == "http://127.0.0.1:8002/hooks/bitbucket/token"


async def test_a_copied_database_given_its_own_id_leaves_the_originals_hook_alone(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Production's database restored into staging carries production's stored hook uuids; once the
    copy has its own installation id (README), the uuid alone does not make production's hook its own."""
    hooks = sandbox.sandbox.state.workspaces["acme"].hooks
    async with opener(sandbox, session, tmp_path / "production")(8001) as services:
        conn = await services.service.ensure_token_connection()
        assert conn is not None
        [made] = await ensure_hooks(services.service, conn)
        prod_id = await installation_id(services.service)
    prod_hook = hooks[made["uuid"]]
    (tmp_path / "staging").mkdir()
    pgcluster.copy(tmp_path / "production" / "lp.sqlite3", tmp_path / "staging" / "lp.sqlite3")
    staging_db = pgcluster.database_for(tmp_path / "staging" / "lp.sqlite3")
    pgcluster.execute(staging_db, "DELETE FROM meta WHERE key = 'installation_id'")  # the README's step for a copy
    async with opener(sandbox, session, tmp_path / "staging")(8002) as services:
        conn = await services.service.store.connections.get("token")
        assert conn is not None and [e["uuid"] for e in conn.hooks] == [prod_hook.uuid]  # copied
        [entry] = await ensure_hooks(services.service, conn)
        staging_id = await installation_id(services.service)
    assert staging_id != prod_id and entry["action"] == "created" and entry["uuid"] != prod_hook.uuid
    assert prod_hook.url == "http://127.0.0.1:8001/hooks/bitbucket/token"
    assert prod_hook.description == description("token", prod_id)


async def test_another_installations_hook_at_our_url_is_left_alone_and_reported(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A lost database means a new installation: the old hook is not taken over (it could be another
    installation's), a new one is made, and the log says which hook to delete."""
    hooks = sandbox.sandbox.state.workspaces["acme"].hooks
    url = "http://127.0.0.1:8001/hooks/bitbucket/token"
    other = SHook(
        uuid="{d0000000-0000-4000-8000-000000000003}",
        url=url,
        description=description("token", "0123456789ab"),
        events=["repo:push"],
        secret="their-secret",
        active=True,
        subject_type="workspace",
    )
    hooks[other.uuid] = other
    async with opener(sandbox, session, tmp_path)(8001) as services:
        conn = await services.service.ensure_token_connection()
        assert conn is not None
        [entry] = await ensure_hooks(services.service, conn)
    assert entry["action"] == "created" and entry["uuid"] != other.uuid and len(hooks) == 2
    assert other.secret == "their-secret" and other.description == description("token", "0123456789ab")
    assert other.events == ["repo:push"]
    logged = capsys.readouterr()
    assert "webhook.foreign" in logged.out + logged.err and other.uuid in logged.out + logged.err


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
        ours = await installation_id(services.service)
    assert list(hooks) == [old.uuid] and entry["action"] == "repaired"
    assert old.description == description("token", ours)


@pytest.mark.parametrize("port", [8001, 8009])
async def test_a_hook_described_without_an_installation_id_is_adopted_at_our_url_only(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path, port: int
) -> None:
    """The previous version's description named the connection but no installation: such a hook is
    ours when it delivers to our URL (and then takes the new description), another's otherwise."""
    hooks = sandbox.sandbox.state.workspaces["acme"].hooks
    old = SHook(
        uuid="{e0000000-0000-4000-8000-000000000004}",
        url=f"http://127.0.0.1:{port}/hooks/bitbucket/token",
        description=f"{DESCRIPTION} (token)",
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
        ours = await installation_id(services.service)
    if port == 8001:
        assert list(hooks) == [old.uuid] and entry["action"] == "repaired"
        assert old.description == description("token", ours)
    else:  # at another URL: another installation's, left as it was
        assert entry["action"] == "created" and set(hooks) == {old.uuid, entry["uuid"]}
        assert old.description == f"{DESCRIPTION} (token)" and old.url.endswith(":8009/hooks/bitbucket/token")


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
        "LP_DATABASE": str(pgcluster.database_for(tmp_path / "lp.sqlite3")),
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

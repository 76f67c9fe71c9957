"""The running product's shared parts, for ``serve``, the CLI and the tests.

Holds the store, the settings, the encryption keys and one Bitbucket client per connection (over
the process's one aiohttp session, passed in). Knows how to get a token for a connection (token
mode from ``LP_BITBUCKET_TOKEN``; OAuth connections through ``bitbucket.oauth``, whose
``TokenStore`` it implements) and keeps the decrypted webhook secrets in memory for the receiver.
"""

from __future__ import annotations

import json
import secrets as pysecrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from app import errors
from app.bitbucket.client import BitbucketClient, ClientPool, StaticToken, TokenSource
from app.bitbucket.oauth import Consumer, StoredOAuthTokens, TokenSet
from app.crypto import Crypto
from app.logs import get_logger, register_secret
from app.settings import Settings
from app.store import Store
from app.store.connections import Connection
from app.store.events import NewEvent

log = get_logger("service")

TOKEN_CONNECTION = "token"  # noqa: S105 - the id of the token-mode connection, not a secret
HOOK_TARGET_TTL = 30.0  # seconds the receiver trusts its copy of a connection's secrets and workspaces


@dataclass(frozen=True)
class HookTarget:
    """What the receiver needs of a connection: its webhook secrets and the workspaces it monitors."""

    secrets: list[str]
    workspaces: frozenset[str]
    loaded_at: float


class Service:
    def __init__(self, settings: Settings, store: Store, pool: ClientPool, crypto: Crypto | None) -> None:
        self.settings = settings
        self.store = store
        self.pool = pool
        self.crypto = crypto
        self._targets: dict[str, HookTarget] = {}
        self.token_sources: dict[str, TokenSource] = {}
        # Called when an OAuth connection's refresh fails (ops alert); set by the wiring.
        self.on_broken: Callable[[str, str], Awaitable[None]] | None = None

    # -- connections --------------------------------------------------------------------------
    async def ensure_token_connection(self) -> Connection | None:
        """The connection described by LP_BITBUCKET_TOKEN + LP_WORKSPACES, if configured."""
        if self.settings.bitbucket_token is None:
            return None
        workspaces = self.settings.workspaces
        if not workspaces:
            client = await self.client(TOKEN_CONNECTION)
            workspaces = tuple(w.slug for w in await client.workspaces())
        conn = await self.store.connections.upsert(TOKEN_CONNECTION, "token", workspaces)
        self.forget_secrets(TOKEN_CONNECTION)
        return conn

    def token_source(self, conn_id: str) -> TokenSource:
        if conn_id in self.token_sources:
            return self.token_sources[conn_id]
        if conn_id == TOKEN_CONNECTION:
            if self.settings.bitbucket_token is None:
                raise errors.ConfigError("LP_BITBUCKET_TOKEN is not set")
            source: TokenSource = StaticToken(self.settings.bitbucket_token.get_secret_value())
        else:
            source = self._oauth_source(conn_id)
        self.token_sources[conn_id] = source
        return source

    def _oauth_source(self, conn_id: str) -> TokenSource:
        if self.crypto is None:
            raise errors.ConfigError("LP_SECRET_KEY: required to use OAuth connections")
        settings = self.settings
        consumer = Consumer(settings.bitbucket_url, settings.oauth_client_id, settings.oauth_client_secret)
        return StoredOAuthTokens(self, conn_id, consumer, self.pool.session)

    # -- OAuth tokens (app.bitbucket.oauth.TokenStore) ----------------------------------------
    async def load_tokens(self, conn_id: str) -> TokenSet | None:
        """The connection's tokens, decrypted; None when it has none (disconnected)."""
        conn = await self.store.connections.get(conn_id)
        if conn is None or conn.tokens is None:
            return None
        data = json.loads(self.decrypt(conn.tokens))
        expires = datetime.fromisoformat(conn.token_expires_at) if conn.token_expires_at else datetime.now(UTC)
        return TokenSet(data["access_token"], data.get("refresh_token"), expires, conn.scopes or ())

    async def save_tokens(self, conn_id: str, tokens: TokenSet) -> None:
        """Persist a token pair, encrypted, in one statement (the rotated refresh token is never lost)."""
        blob = self.encrypt(json.dumps({"access_token": tokens.access_token, "refresh_token": tokens.refresh_token}))
        await self.store.connections.set_tokens(conn_id, blob, tokens.expires_at.isoformat(), tokens.scopes or None)

    async def refresh_failed(self, conn_id: str, reason: str) -> None:
        """A refresh failed for good: the connection is broken, and the ops alert goes out."""
        await self.store.connections.set_status(conn_id, "broken", f"token refresh failed: {reason}")
        if self.on_broken is not None:
            await self.on_broken(conn_id, reason)

    async def refresh_worked(self, conn_id: str) -> bool:
        """A connection marked broken by an earlier refresh is active again (True when it was)."""
        conn = await self.store.connections.get(conn_id)
        if conn is None or conn.status != "broken":
            return False
        await self.store.connections.set_status(conn_id, "active", None)
        return True

    async def client(self, conn_id: str) -> BitbucketClient:
        return self.pool.get(conn_id, self.token_source(conn_id))

    async def connections(self) -> list[Connection]:
        return [c for c in await self.store.connections.all() if c.status != "disconnected"]

    async def check_key(self) -> None:
        """Refuse (ConfigError, exit 2) an ``LP_SECRET_KEY`` that cannot decrypt the secrets and tokens
        the database holds (a key changed without rotation), before anything is fetched."""
        if self.crypto is None:
            return
        for conn in await self.connections():
            for blob in (conn.webhook_secret, conn.webhook_secret_previous, conn.tokens):
                if blob is not None:
                    self.crypto.decrypt(blob)

    def configured(self, conn: Connection) -> bool:
        """False for the token connection an earlier run stored once ``LP_BITBUCKET_TOKEN`` is gone
        (token mode switched off): it is left alone rather than failing every use."""
        return not (conn.kind == "token" and self.settings.bitbucket_token is None)

    async def usable_connections(self) -> list[Connection]:
        """Active connections whose credential is configured now."""
        return [c for c in await self.connections() if c.status == "active" and self.configured(c)]

    # -- webhook secrets ----------------------------------------------------------------------
    def new_secret(self) -> str:
        secret = pysecrets.token_urlsafe(32)
        register_secret(secret)
        return secret

    def encrypt(self, value: str) -> bytes:
        if self.crypto is None:
            raise errors.ConfigError("LP_SECRET_KEY: required to store webhook secrets and tokens")
        return self.crypto.encrypt(value)

    def decrypt(self, value: bytes) -> str:
        if self.crypto is None:
            raise errors.ConfigError("LP_SECRET_KEY: required to read stored secrets")
        plain = self.crypto.decrypt(value)
        register_secret(plain)
        return plain

    async def webhook_target(self, conn_id: str) -> HookTarget | None:
        """Current and previous secret of a connection (rotation) and its workspaces, or None for an
        unknown one; kept in memory for HOOK_TARGET_TTL so changes made by another process show."""
        now = time.monotonic()
        target = self._targets.get(conn_id)
        if target is not None and now - target.loaded_at < HOOK_TARGET_TTL:
            return target
        conn = await self.store.connections.get(conn_id)
        if conn is None or conn.webhook_secret is None or conn.status == "disconnected":
            self._targets.pop(conn_id, None)
            return None
        found = [self.decrypt(conn.webhook_secret)]
        if conn.webhook_secret_previous is not None:
            found.append(self.decrypt(conn.webhook_secret_previous))
        target = HookTarget(found, frozenset(ws.lower() for ws in conn.workspaces), now)
        self._targets[conn_id] = target
        return target

    async def webhook_secrets(self, conn_id: str) -> list[str] | None:
        target = await self.webhook_target(conn_id)
        return None if target is None else target.secrets

    def forget_secrets(self, conn_id: str) -> None:
        self._targets.pop(conn_id, None)

    def hook_url(self, conn_id: str) -> str:
        return f"{self.settings.public_url}/hooks/bitbucket/{conn_id}"

    # -- the event log ------------------------------------------------------------------------
    async def internal_event(self, key: str, payload: Mapping[str, object], conn_id: str | None = None) -> list[int]:
        """Append an internal event for every workspace it concerns (all when none is named); a
        pass joins the same workspace's pass of that tier when one is still queued."""
        ids: list[int] = []
        targets: list[tuple[str, str]] = []
        for conn in await self.connections():
            if conn_id and conn.id != conn_id:
                continue
            for ws in conn.workspaces:
                if payload.get("workspace") in (None, ws):
                    targets.append((conn.id, ws))
        for cid, ws in targets:
            if key == "lp:reconcile":
                # A user-requested and a scheduled pass of one workspace and tier are one pass.
                pending = await self.store.events.pending_pass(cid, ws, str(payload.get("tier", "full")))
                if pending is not None:
                    ids.append(pending)
                    continue
            eid = await self.store.events.append(
                NewEvent(
                    connection_id=cid,
                    source="internal",
                    event_key=key,
                    payload={**payload, "workspace": ws},
                    workspace=ws,
                )
            )
            if eid is not None:
                ids.append(eid)
        return ids

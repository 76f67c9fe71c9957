"""OAuth 2.0 with Bitbucket Cloud: authorization-code flow, refresh with rotation, token source.

docs/bitbucket-facts.md "Authentication": authorize at ``{LP_BITBUCKET_URL}/site/oauth2/authorize``
(``client_id``, ``response_type=code``, ``state``); exchange and refresh at
``/site/oauth2/access_token`` with HTTP Basic ``client_id:secret``. Scopes are set on the
consumer; ``expires_in`` is read from each answer; every refresh rotates the refresh token, so the
new pair is persisted (encrypted) before it is used.

The stored tokens are reached through :class:`TokenStore`, a protocol this module states and the
product implements (``app.service.Service``): the adapter imports nothing of the product beyond
the error tree and logging (tests/test_seams.py holds it to that).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol
from urllib.parse import urlencode

import aiohttp
from pydantic import SecretStr

from app import errors
from app.logs import get_logger, register_secret

log = get_logger("bitbucket.oauth")
REFRESH_MARGIN = 300.0  # refresh this many seconds before expiry
TOKEN_TIMEOUT = 30.0  # seconds for one token request
# Pauses between attempts at a refresh that failed transiently (5xx, 429, timeout, network):
# three attempts in all, then the caller's own retries take over.
REFRESH_RETRY_DELAYS: tuple[float, ...] = (1.0, 4.0)
# The token endpoint's failures live in the one error tree (app/errors.py); named here too.
PERMANENT_ERRORS = errors.PERMANENT_ERRORS
TokenEndpointUnavailable = errors.TokenEndpointUnavailable
TokenRejected = errors.TokenRejected


@dataclass(frozen=True)
class TokenSet:
    access_token: str
    refresh_token: str | None
    expires_at: datetime
    scopes: tuple[str, ...]


@dataclass(frozen=True)
class Consumer:
    """The OAuth consumer the tokens were issued to (``LP_OAUTH_CLIENT_ID`` / ``_SECRET``) and the
    Bitbucket site whose token endpoint refreshes them (``LP_BITBUCKET_URL``)."""

    bitbucket_url: str
    client_id: str | None
    client_secret: SecretStr | None


class TokenStore(Protocol):
    """What a stored-token source needs of the product: one connection's token pair, kept
    encrypted, and its state when a refresh fails for good or works again."""

    async def load_tokens(self, conn_id: str) -> TokenSet | None:
        """The connection's tokens, decrypted; None when it has none (disconnected)."""
        ...

    async def save_tokens(self, conn_id: str, tokens: TokenSet) -> None:
        """Persist a token pair, encrypted, in one statement (the rotated refresh token is never lost)."""
        ...

    async def refresh_failed(self, conn_id: str, reason: str) -> None:
        """A refresh failed for good: mark the connection broken and raise the ops alert."""
        ...

    async def refresh_worked(self, conn_id: str) -> bool:
        """A refresh worked: a connection marked broken is active again (True when it was broken)."""
        ...


def authorize_url(bitbucket_url: str, client_id: str, state: str, redirect_uri: str | None = None) -> str:
    params = {"client_id": client_id, "response_type": "code", "state": state}
    if redirect_uri:
        params["redirect_uri"] = redirect_uri
    return f"{bitbucket_url.rstrip('/')}/site/oauth2/authorize?{urlencode(params)}"


async def _token_request(
    session: aiohttp.ClientSession, bitbucket_url: str, client_id: str, client_secret: str, form: dict[str, str]
) -> TokenSet:
    url = f"{bitbucket_url.rstrip('/')}/site/oauth2/access_token"
    try:
        async with session.post(
            url,
            data=form,
            auth=aiohttp.BasicAuth(client_id, client_secret),
            timeout=aiohttp.ClientTimeout(total=TOKEN_TIMEOUT),
            allow_redirects=False,
        ) as resp:
            status = resp.status
            try:
                body: object = await resp.json(content_type=None)
            except ValueError:
                body = {}
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise TokenEndpointUnavailable(
            f"token endpoint unreachable: {type(exc).__name__}", endpoint="access_token"
        ) from None
    if status >= 500 or status == 429:
        raise TokenEndpointUnavailable(f"token endpoint answered {status}", status=status, endpoint="access_token")
    if status != 200 or not isinstance(body, dict) or "access_token" not in body:
        reason = body.get("error") if isinstance(body, dict) else None
        code = str(reason) if isinstance(reason, str) else None
        raise TokenRejected(f"token endpoint answered {status} ({code or 'no error code'})", code)
    access, refresh = str(body["access_token"]), body.get("refresh_token")
    register_secret(access)
    if refresh:
        register_secret(str(refresh))
    expires_in = float(body.get("expires_in") or 3600)
    return TokenSet(
        access_token=access,
        refresh_token=str(refresh) if refresh else None,
        expires_at=datetime.now(UTC) + timedelta(seconds=expires_in),
        scopes=tuple(sorted(str(body.get("scopes") or "").replace(",", " ").split())),
    )


async def exchange_code(
    session: aiohttp.ClientSession,
    bitbucket_url: str,
    client_id: str,
    client_secret: str,
    code: str,
    redirect_uri: str | None = None,
) -> TokenSet:
    form = {"grant_type": "authorization_code", "code": code}
    if redirect_uri:
        form["redirect_uri"] = redirect_uri
    return await _token_request(session, bitbucket_url, client_id, client_secret, form)


async def refresh(
    session: aiohttp.ClientSession, bitbucket_url: str, client_id: str, client_secret: str, refresh_token: str
) -> TokenSet:
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    return await _token_request(session, bitbucket_url, client_id, client_secret, form)


class StoredOAuthTokens:
    """Token source of an OAuth connection: tokens encrypted in the store, refreshed before expiry
    and on 401; the rotated refresh token is persisted atomically before the new access token is
    used. A transient failure of the token endpoint is retried and leaves the connection as it
    is; only ``invalid_grant`` / ``invalid_client`` mark it broken (and alert). A successful
    refresh clears a broken state."""

    def __init__(self, tokens: TokenStore, conn_id: str, consumer: Consumer, session: aiohttp.ClientSession) -> None:
        self.tokens = tokens
        self.conn_id = conn_id
        self.consumer = consumer
        self.session = session
        self._lock = asyncio.Lock()
        self._cached: TokenSet | None = None

    @property
    def credential_id(self) -> str:
        # Bitbucket counts an OAuth consumer's requests together, whichever user authorised it:
        # every OAuth connection of this consumer shares one budget.
        return f"oauth-consumer:{self.consumer.client_id or self.conn_id}"

    async def _load(self) -> TokenSet:
        if self._cached is not None:
            return self._cached
        tokens = await self.tokens.load_tokens(self.conn_id)
        if tokens is None:
            raise errors.TokenError("the connection has no tokens (disconnected?)")
        self._cached = tokens
        return self._cached

    async def token(self) -> str:
        tokens = await self._load()
        if tokens.expires_at - datetime.now(UTC) < timedelta(seconds=REFRESH_MARGIN):
            try:
                return await self.refresh(tokens.access_token)
            except TokenEndpointUnavailable:
                if tokens.expires_at <= datetime.now(UTC):
                    raise
                return tokens.access_token  # still valid for a few minutes: refresh again next time
        return tokens.access_token

    async def refresh(self, rejected: str) -> str:
        async with self._lock:
            tokens = await self._load()
            if tokens.access_token != rejected and tokens.expires_at - datetime.now(UTC) > timedelta(
                seconds=REFRESH_MARGIN
            ):
                return tokens.access_token  # another task refreshed already
            consumer = self.consumer
            if not tokens.refresh_token or not consumer.client_id or consumer.client_secret is None:
                await self._broken("no refresh token or OAuth consumer configured")
                raise errors.TokenError("cannot refresh: no refresh token or OAuth consumer configured")
            started = time.monotonic()
            delays = list(REFRESH_RETRY_DELAYS)
            while True:
                try:
                    new = await refresh(
                        self.session,
                        consumer.bitbucket_url,
                        consumer.client_id,
                        consumer.client_secret.get_secret_value(),
                        tokens.refresh_token,
                    )
                    break
                except TokenEndpointUnavailable as exc:
                    log.warning("oauth.refresh_unavailable", connection=self.conn_id, error=str(exc), left=len(delays))
                    if not delays:
                        raise  # transient: the connection stays as it is; the caller retries later
                    await asyncio.sleep(delays.pop(0))
                except TokenRejected as exc:
                    if exc.permanent:
                        await self._broken(str(exc))
                    else:
                        log.warning("oauth.refresh_refused", connection=self.conn_id, error=str(exc))
                    raise
            await self.tokens.save_tokens(self.conn_id, new)
            self._cached = new
            await self._recovered()
            log.info("oauth.refreshed", connection=self.conn_id, seconds=round(time.monotonic() - started, 3))
            return new.access_token

    async def _recovered(self) -> None:
        """A refresh worked: a connection marked broken by an earlier refresh is active again."""
        if await self.tokens.refresh_worked(self.conn_id):
            log.info("oauth.connection_recovered", connection=self.conn_id)

    async def _broken(self, reason: str) -> None:
        self._cached = None
        log.error("oauth.connection_broken", connection=self.conn_id, reason=reason)
        await self.tokens.refresh_failed(self.conn_id, reason)


async def store_tokens(store: TokenStore, conn_id: str, tokens: TokenSet) -> None:
    """Persist a token pair, encrypted, in one statement (the rotated refresh token is never lost)."""
    await store.save_tokens(conn_id, tokens)

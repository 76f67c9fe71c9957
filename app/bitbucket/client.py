"""The Bitbucket Cloud REST client: one aiohttp session, read-only, allow-listed, budgeted.

The only place that retries (docs/architecture.md). Behaviour:

- Every request is checked against :mod:`app.bitbucket.paths` first; anything else (source,
  commits, diffs, another host) raises EndpointNotAllowed before a byte is sent.
- 5xx, timeouts and connection errors are retried with exponential backoff and jitter (tenacity);
  a 429 pauses the credential's :class:`Budget` (every connection using it) for ``Retry-After``
  when sent, else for a doubling backoff, and the request is retried after the pause. No wait for
  429s is endless: after :data:`GIVE_UP_AFTER` seconds of nothing but 429s (counted per piece of
  work, :class:`Patience`: a pass), requests fail with errors.GaveUp instead of waiting on.
- 401 asks the token source for a fresh token once, then retries; a second 401 raises AuthError.
- Concurrency is bounded by a semaphore; every request first takes a slot from the rolling-hour
  :class:`Budget` of its credential (one per OAuth consumer or access token, shared by every
  connection using it, see :class:`ClientPool`), so reads are paced instead of running into 429;
  ``X-RateLimit-Limit`` and ``X-RateLimit-NearLimit`` adjust that budget.
- ``counters`` counts calls per (endpoint, status); ``granted_scopes`` keeps ``X-OAuth-Scopes``.
"""

from __future__ import annotations

import asyncio
import bisect
import contextvars
import hashlib
import math
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
from multidict import CIMultiDict
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    retry_if_not_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from app import errors
from app.bitbucket import paths, sansio
from app.bitbucket.models import (
    BranchingModel,
    BranchRestriction,
    Member,
    Pipeline,
    PipelinesConfig,
    Repository,
    User,
    Webhook,
    Workspace,
)
from app.logs import get_logger

log = get_logger("bitbucket.client")

# SPEC narrative "Pagination": pagelen is at most 100; pull requests refuse more than 50.
MAX_PAGELEN = 100
PR_PAGELEN = 50
# docs/bitbucket-facts.md: the members email filter takes at most 90 addresses.
EMAIL_BATCH = 90


# Work that may wait for budget (reconcile passes) runs with PRIORITY False, so a share of the
# hourly budget always stays free for webhook-driven fetches.
PRIORITY: contextvars.ContextVar[bool] = contextvars.ContextVar("bitbucket_priority", default=True)
# Low-priority work that must leave more room still (the restrictions tier leaves what the
# repositories and members tiers need): slots kept free below the low-priority cap.
KEEP: contextvars.ContextVar[int] = contextvars.ContextVar("bitbucket_keep", default=0)
# The longest a caller accepts to wait inside a request (a Retry-After, an exhausted budget);
# longer raises errors.Deferred at once, so the worker re-queues that event instead of blocking.
# None (passes, the CLI): wait as long as needed.
DEFER_AFTER: contextvars.ContextVar[float | None] = contextvars.ContextVar("bitbucket_defer_after", default=None)


class TokenSource(Protocol):
    """Where the client gets its Bearer token (static token or OAuth with refresh)."""

    @property
    def credential_id(self) -> str:
        """A stable, non-secret name for the credential (budget key, logs)."""
        ...

    async def token(self) -> str:
        """The current access token."""
        ...

    async def refresh(self, rejected: str) -> str:
        """A new token after ``rejected`` got a 401; raise TokenError when impossible."""
        ...


class StaticToken:
    """A workspace/repository access token: nothing to refresh."""

    def __init__(self, token: str, credential_id: str | None = None) -> None:
        self._token = token
        # Bitbucket counts an access token's requests together: the budget key is the token's
        # identity (a digest, never the token), so every connection using it shares one budget.
        self._id = credential_id or "token:" + hashlib.sha256(token.encode()).hexdigest()[:16]

    @property
    def credential_id(self) -> str:
        return self._id

    async def token(self) -> str:
        return self._token

    async def refresh(self, rejected: str) -> str:
        raise errors.TokenError("the access token was rejected and cannot be refreshed")


# Bitbucket's scaled rate limits go up to 10,000 requests an hour (bitbucket-facts.md "Rate limits").
MAX_LEARNT_LIMIT = 10_000
# X-RateLimit-NearLimit is "true when under about 20 % left" (bitbucket-facts.md).
NEAR_LIMIT_USED = 0.8
# Told when a request of this task waits for budget (a pass's progress, app/worker.py): called
# with the wait in seconds and why before the wait, and with (0, "") once it is over. Only waits
# of at least BUDGET_WAIT_REPORTED seconds are told.
BUDGET_WAIT: contextvars.ContextVar[Callable[[float, str], Awaitable[None]] | None] = contextvars.ContextVar(
    "bitbucket_budget_wait", default=None
)
BUDGET_WAIT_REPORTED = 1.0

# A 429 without Retry-After pauses the credential for this long, doubling per 429 in a row.
# Passes past half their share are paced over this many slices of the window.
PACE_SLICES = 60
PAUSE_INITIAL = 10.0
PAUSE_MAX = 600.0
# Once Bitbucket has answered nothing but 429 for this long (no request of the credential succeeded
# since the first 429), waiting on is given up: a request that would wait for the pause, or retry
# after its own 429, fails at once (errors.GaveUp), so its fetch is marked failed (its results stay
# as they were, stale: docs/checks.md "A fetch that fails") and a pass ends instead of waiting
# pause after pause for as long as the 429s last. The pause itself still holds, and the first
# request after it ends is sent: one success ends the streak.
GIVE_UP_AFTER = 900.0


class Patience:
    """The waiting done by one piece of work, shared by all its tasks (a pass sets one for all its
    reads, see :data:`PATIENCE`; a request outside any sets its own): its give-up time counts from
    the later of the first 429 in a row and the moment this work first used the budget, so work
    that starts while an earlier run of 429s still pauses the credential waits that pause out
    (and goes on when Bitbucket answers again) instead of failing at once."""

    def __init__(self) -> None:
        self.since: float | None = None  # the budget's clock when this work first asked for a slot


PATIENCE: contextvars.ContextVar[Patience | None] = contextvars.ContextVar("bitbucket_patience", default=None)
# The pause a task set itself and already waits for through its own retry (see ``Budget.pause``).
_OWN_PAUSE: contextvars.ContextVar[float] = contextvars.ContextVar("bitbucket_own_pause", default=0.0)


class Budget:
    """The rolling-hour request budget of one credential (Bitbucket counts an OAuth consumer's or an
    access token's requests together, across every connection that uses it).

    - ``limit``: requests per rolling hour; learnt from ``X-RateLimit-Limit`` when sent (:meth:`learn`,
      at most 10,000).
    - ``headroom``: the share of the limit never used (LP_BUDGET_HEADROOM), so the budget stays clear
      of Bitbucket's count even when both clocks disagree a little.
    - ``reserve``: the share kept for high-priority work (webhook-driven fetches,
      LP_WEBHOOK_BUDGET_SHARE): low-priority callers (passes, tiers) wait once their own calls
      reach ``limit * (1 - headroom - reserve)``, or less when webhook-driven work has used more
      than its share; ``keep`` leaves further slots free below that. High-priority callers may
      use everything up to the headroom.
    - ``X-RateLimit-NearLimit: true`` (:meth:`learn`) means Bitbucket counts at least 80 % used (another
      process may share the credential): usage is raised to that, spread over the window, which
      slows passes down at once and webhooks near the cap.
    - ``pace``: once passes have used half their share of the hour, they are spread evenly over it.
    - A 429 (:meth:`pause`) pauses this credential, not the process, for ``Retry-After`` or a
      doubling backoff; then requests resume.

    ``acquire`` waits until a slot is free, so callers are paced rather than refused.
    """

    def __init__(
        self,
        limit: int = 1000,
        *,
        window: float = 3600.0,
        reserve: float = 0.0,
        headroom: float = 0.0,
        pace: bool = False,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        give_up_after: float = GIVE_UP_AFTER,
    ) -> None:
        self.configured = limit
        self.pace = pace
        self.learnt: int | None = None
        self.window = window
        self.reserve_share = reserve
        self.headroom = headroom
        self._clock = clock
        self._sleep = sleep
        self._high: deque[float] = deque()  # high-priority calls in the window
        self._low: deque[float] = deque()  # low-priority calls (and others' use, NearLimit)
        self.give_up_after = give_up_after
        self.waited = 0.0
        self.paused_until = 0.0
        self.pauses = 0  # 429s met (every pause)
        self._strikes = 0  # pauses in a row after 429s without Retry-After
        self.epoch = 0  # counts pauses: a 429 to a request sent before the latest pause is the same episode
        self.limited_since: float | None = None  # the first 429 since the last success
        self.near_limit = False

    @property
    def limit(self) -> int:
        """Requests per rolling hour, as Bitbucket counts them."""
        return self.learnt or self.configured

    @property
    def reserve(self) -> int:
        """Slots kept for high-priority work."""
        return int(self.limit * self.reserve_share)

    def cap(self, *, priority: bool = True, keep: int = 0) -> int:
        """The most requests in the window a caller of this priority may bring usage to."""
        top = int(self.limit * (1.0 - self.headroom))
        return max(0, top if priority else top - self.reserve - keep)

    def _trim(self, now: float) -> None:
        for stamps in (self._high, self._low):
            while stamps and stamps[0] <= now - self.window:
                stamps.popleft()

    @property
    def used(self) -> int:
        self._trim(self._clock())
        return len(self._high) + len(self._low)

    @property
    def remaining(self) -> int:
        """Requests left in the rolling hour for high-priority work (headroom excluded)."""
        return max(0, self.cap() - self.used)

    def _low_room(self, keep: int) -> int:
        """Low-priority slots free now: the webhook share stays free as far as webhook-driven work
        has not used it yet, so webhooks never eat into what passes may use (and the reverse).

        Once passes have used half their share of the hour, they are paced evenly: at most a
        sixtieth of their share per sixtieth of the window. Otherwise a burst (a first pass) comes
        back as the same burst an hour later, every hour, and readings bunch up on the hour."""
        room = self.cap() - keep - len(self._low) - max(len(self._high), self.reserve)
        share = self.cap(priority=False)
        if not self.pace or len(self._low) * 2 < share:
            return room
        per_slice = max(1, math.ceil(share / PACE_SLICES))
        since = self._clock() - self.window / PACE_SLICES
        recent = len(self._low) - bisect.bisect_right(self._low, since)
        return min(room, per_slice - recent)

    def spare(self, keep: int = 0) -> int:
        """Requests low-priority work may still send now (0 while paused)."""
        now = self._clock()
        if self.paused_until > now:
            return 0
        self._trim(now)
        return max(0, self._low_room(keep))

    def delay(self, *, priority: bool = True, keep: int = 0) -> float:
        """Seconds until :meth:`acquire` would get a slot (0 when one is free now)."""
        now = self._clock()
        self._trim(now)
        paused = self.paused_until - now if self.paused_until > max(now, _OWN_PAUSE.get()) else 0.0
        if priority:
            need = len(self._high) + len(self._low) - self.cap() + 1
            stamps = sorted([*self._high, *self._low]) if need > 0 else []
        else:
            need = 1 - self._low_room(keep)
            stamps = list(self._low)  # passes wait for their own (and others') calls to leave the hour
            if need > 0 and self.pace and self.cap() - keep - len(self._low) - max(len(self._high), self.reserve) > 0:
                # paced: wait until the oldest call of the last slice leaves it
                since = now - self.window / PACE_SLICES
                first = bisect.bisect_right(self._low, since)
                if first < len(self._low):
                    return max(paused, self._low[first] + self.window / PACE_SLICES - now, 0.0)
        if need <= 0:
            return max(0.0, paused)
        if need > len(stamps):
            return max(paused, self.window)
        return max(paused, stamps[need - 1] + self.window - now, 0.0)

    def _record(self, priority: bool) -> None:
        (self._high if priority else self._low).append(self._clock())

    def take(self, *, priority: bool = True, keep: int = 0) -> bool:
        """Take a slot if one is free now (never waits); whether it did."""
        if self.delay(priority=priority, keep=keep) > 0:
            return False
        self._record(priority)
        return True

    async def acquire(self, *, priority: bool = True, keep: int = 0, endpoint: str = "") -> None:
        """Take a slot, waiting until one is free. Checking and taking a slot involve no await, so
        no lock is needed; none is held while waiting either: a caller that may go now (webhook-
        driven work, with its reserved share) never queues behind a pass that waits to be paced.

        Raises errors.GaveUp rather than wait for a 429 pause when the credential has met nothing
        but 429s for ``give_up_after`` seconds (see :data:`GIVE_UP_AFTER`)."""
        scope = PATIENCE.get()
        if scope is not None and scope.since is None:
            scope.since = self._clock()
        while True:
            wait = self.delay(priority=priority, keep=keep)
            if wait <= 0:
                self._record(priority)
                return
            self.check_give_up(wait, endpoint)
            self.waited += wait
            log.info("budget.wait", seconds=round(wait, 3), used=self.used, priority=priority)
            told = BUDGET_WAIT.get() if wait >= BUDGET_WAIT_REPORTED else None
            if told is not None:
                await told(wait, self.why(priority=priority, keep=keep))
            try:
                await self._sleep(max(wait, 0.001))
            finally:
                if told is not None:
                    await told(0.0, "")

    def limited_for(self, ahead: float = 0.0) -> float:
        """Seconds the calling work will have been held by 429s alone, ``ahead`` seconds from now:
        since the first 429 in a row, or since the work began when that was later (see
        :class:`Patience`); 0 when a request succeeded since the last 429."""
        if self.limited_since is None:
            return 0.0
        start = self.limited_since
        scope = PATIENCE.get()
        if scope is not None and scope.since is not None:
            start = max(start, scope.since)
        return max(0.0, self._clock() + ahead - start)

    def check_give_up(self, wait: float = 0.0, endpoint: str = "") -> None:
        """Raise errors.GaveUp when waiting ``wait`` more seconds, for a 429 pause, would hold the
        calling work past the give-up time (:data:`GIVE_UP_AFTER`)."""
        now = self._clock()
        if self.paused_until <= now or self.limited_since is None:
            return  # not paused: a budget wait, which ends by itself (at most a window)
        if self.limited_for(wait) > self.give_up_after:
            raise errors.GaveUp(
                f"{endpoint or 'request'}: Bitbucket has answered only 429 (rate limited) for "
                f"{now - self.limited_since:.0f} s; gave up waiting (after {self.give_up_after:.0f} s)",
                endpoint=endpoint,
                retry_after=max(0.0, self.paused_until - now),
            )

    def why(self, *, priority: bool = True, keep: int = 0) -> str:
        """Why a caller of this priority waits now (for the operator: the pass's progress)."""
        now = self._clock()
        self._trim(now)
        if self.paused_until > now:
            return "Bitbucket answered 429 (rate limited): requests with this credential pause"
        near = " (Bitbucket reports the credential near its limit)" if self.near_limit else ""
        if priority:
            return f"the hourly API budget is spent ({self.used} of {self.limit} requests in the last hour){near}"
        if self.pace and len(self._low) * 2 >= self.cap(priority=False) > len(self._low):
            return f"passes have used half their share of the hourly API budget and are spread over the hour{near}"
        return (
            f"the passes' share of the hourly API budget is spent ({self.used} of {self.limit} requests in the "
            f"last hour; {self.reserve} kept for webhooks){near}"
        )

    def learn(self, limit: int | None, near_limit: bool) -> None:
        """What Bitbucket's ``X-RateLimit-*`` headers say (sent to access tokens)."""
        if limit is not None and limit > 0:
            self.learnt = min(limit, MAX_LEARNT_LIMIT)
        self.near_limit = near_limit
        if near_limit:
            now = self._clock()
            floor = int(self.limit * NEAR_LIMIT_USED + 0.999)
            missing = floor - self.used
            if missing > 0:
                # Someone else spends this credential too: count their use as spread over the window
                # (with the passes' calls, so that passes slow down first).
                step = self.window / (missing + 1)
                extra = [now - self.window + step * (i + 1) for i in range(missing)]
                self._low = deque(sorted([*self._low, *extra]))
                log.info("budget.near_limit", used=self.used, limit=self.limit)

    def succeeded(self) -> None:
        self._strikes = 0
        self.limited_since = None

    def pause(self, retry_after: float | None, epoch: int | None = None) -> float:
        """A 429: pause this credential for ``retry_after`` (else a doubling backoff); returns the
        pause in seconds. The calling task retries on its own schedule (the client's), so the pause
        holds every other task using this credential, not that one.

        ``epoch`` is :attr:`epoch` when the request was sent: a 429 to a request that was already
        on its way when another 429 paused the credential belongs to that same pause, so it does
        not double the backoff again (concurrent requests would otherwise take it to the cap at
        once, and each of them then extend the pause for all the others)."""
        now = self._clock()
        if self.limited_since is None:
            self.limited_since = now
        if retry_after is None:
            if epoch is not None and epoch != self.epoch and self._strikes:
                last = min(PAUSE_MAX, PAUSE_INITIAL * float(1 << min(self._strikes - 1, 20)))
                until = self.paused_until if self.paused_until > now else now + last
            else:
                seconds = min(PAUSE_MAX, PAUSE_INITIAL * float(1 << min(self._strikes, 20)))
                self._strikes += 1
                self.epoch += 1
                until = now + seconds
        else:
            seconds = max(0.0, retry_after)
            self.epoch += 1
            until = now + seconds
        self.paused_until = max(self.paused_until, until)
        self.pauses += 1
        _OWN_PAUSE.set(until)
        log.warning("budget.paused", seconds=round(until - now, 1))
        return until - now


class BitbucketClient:
    """Read-only Bitbucket Cloud client. Create one per credential; share the aiohttp session."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        tokens: TokenSource,
        *,
        api_url: str = "https://api.bitbucket.org/2.0",
        budget: Budget | None = None,
        concurrency: int = 8,
        max_attempts: int = 5,
        timeout: float = 30.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._session = session
        self._tokens = tokens
        self.api_url = api_url.rstrip("/")
        self._base = urlsplit(self.api_url)
        self.budget = budget or Budget()
        self._sem = asyncio.Semaphore(concurrency)
        self._max_attempts = max_attempts
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._backoff = wait_exponential_jitter(multiplier=backoff_initial, max=backoff_max, jitter=backoff_initial)
        self._sleep = sleep
        self.counters: Counter[tuple[str, str]] = Counter()
        self.granted_scopes: frozenset[str] | None = None
        self.rate_limit: sansio.RateLimit | None = None

    # -- plumbing ------------------------------------------------------------------------
    def _check(self, method: str, url: str) -> paths.Endpoint:
        parts = urlsplit(url)
        base_path = self._base.path.rstrip("/")
        if (
            parts.scheme != self._base.scheme
            or parts.netloc != self._base.netloc
            or not parts.path.startswith(base_path + "/")
        ):
            raise errors.EndpointNotAllowed(f"refused {method} outside the API base: {parts.path}")
        endpoint = paths.match(method, parts.path[len(base_path) :])
        if endpoint is None:
            raise errors.EndpointNotAllowed(
                f"refused {method} {parts.path[len(base_path) :]}: not a read-only metadata endpoint"
            )
        return endpoint

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, errors.RateLimitedError) and exc.retry_after is not None:
            return exc.retry_after
        return float(self._backoff(state))

    async def _send_once(
        self, method: str, url: str, endpoint: paths.Endpoint, body: Any, token: str
    ) -> tuple[int, Mapping[str, str], bytes, int]:
        """One request: its status, headers, body and the budget's pause epoch when it was sent."""
        defer_after = DEFER_AFTER.get()
        priority, keep = PRIORITY.get(), KEEP.get()
        if defer_after is not None and (wait := self.budget.delay(priority=priority, keep=keep)) > defer_after:
            raise errors.Deferred(f"{endpoint.name}: budget exhausted", endpoint=endpoint.name, retry_after=wait)
        await self.budget.acquire(priority=priority, keep=keep, endpoint=endpoint.name)
        epoch = self.budget.epoch
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        async with self._sem:
            try:
                async with self._session.request(
                    method, url, json=body, headers=headers, timeout=self._timeout, allow_redirects=False
                ) as resp:
                    data = await resp.read()
                    status = resp.status
                    resp_headers: Mapping[str, str] = CIMultiDict(resp.headers)
            except TimeoutError:
                self.counters[(endpoint.name, "timeout")] += 1
                raise errors.TransportError(f"{endpoint.name}: timed out", endpoint=endpoint.name) from None
            except aiohttp.ClientError as exc:
                self.counters[(endpoint.name, "error")] += 1
                raise errors.TransportError(f"{endpoint.name}: {type(exc).__name__}", endpoint=endpoint.name) from None
        self.counters[(endpoint.name, str(status))] += 1
        scopes = sansio.parse_scopes(resp_headers.get("X-OAuth-Scopes"))
        if scopes is not None:
            self.granted_scopes = scopes
        limit = sansio.rate_limit(resp_headers)
        if limit is not None:
            self.rate_limit = limit
            self.budget.learn(limit.limit, limit.near_limit)
        if status != 429:
            self.budget.succeeded()
        return status, resp_headers, data, epoch

    async def _attempt(self, method: str, url: str, endpoint: paths.Endpoint, body: Any) -> Any:
        token = await self._tokens.token()
        status, headers, data, epoch = await self._send_once(method, url, endpoint, body, token)
        if status == 401:
            log.info("bitbucket.refresh_on_401", endpoint=endpoint.name)
            try:
                token = await self._tokens.refresh(token)
            except errors.TransientError:
                raise  # the token endpoint failed transiently: retried like any 5xx
            except errors.TokenError as exc:
                raise errors.AuthError(
                    f"{endpoint.name}: HTTP 401 and the token could not be refreshed: {exc}",
                    status=401,
                    endpoint=endpoint.name,
                ) from None
            status, headers, data, epoch = await self._send_once(method, url, endpoint, body, token)
        try:
            sansio.raise_for_status(status, headers, data, endpoint.name)
        except errors.RateLimitedError as exc:
            # The whole credential pauses (every connection using it); this task waits as long.
            exc.retry_after = self.budget.pause(exc.retry_after, epoch)
            defer_after = DEFER_AFTER.get()
            if defer_after is not None and exc.retry_after > defer_after:
                raise errors.Deferred(
                    str(exc), status=429, endpoint=endpoint.name, retry_after=exc.retry_after
                ) from None
            self.budget.check_give_up(exc.retry_after, endpoint.name)  # 429s for too long: no retry
            raise
        if status == 204 or not data:
            return None
        return sansio.json_body(data)

    async def request(self, method: str, url: str, body: Any = None) -> Any:
        """Send one allow-listed request with retries; return the decoded JSON body (or None)."""
        endpoint = self._check(method, url)
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(errors.TransientError)
            & retry_if_not_exception_type((errors.Deferred, errors.GaveUp)),
            stop=stop_after_attempt(self._max_attempts),
            wait=self._wait,
            sleep=self._sleep,
            reraise=True,
            before_sleep=lambda s: log.info(
                "bitbucket.retry",
                endpoint=endpoint.name,
                attempt=s.attempt_number,
                error=type(s.outcome.exception()).__name__ if s.outcome else None,
            ),
        )
        own = PATIENCE.set(Patience()) if PATIENCE.get() is None else None  # a request on its own
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._attempt(method, url, endpoint, body)
        finally:
            if own is not None:
                PATIENCE.reset(own)
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

    def url(self, endpoint: paths.Endpoint, params: dict[str, str | int] | None = None, **parts: str) -> str:
        return sansio.build_url(self.api_url, endpoint.path(**parts), params)

    async def get(self, endpoint: paths.Endpoint, params: dict[str, str | int] | None = None, **parts: str) -> Any:
        return await self.request("GET", self.url(endpoint, params, **parts))

    async def pages(
        self, endpoint: paths.Endpoint, params: dict[str, str | int] | None = None, **parts: str
    ) -> AsyncIterator[sansio.Page]:
        """Every page of a collection, following ``next`` as an opaque URL."""
        url: str | None = self.url(endpoint, params, **parts)
        while url is not None:
            page = sansio.parse_page(await self.request("GET", url))
            yield page
            url = page.next

    async def collect(
        self, endpoint: paths.Endpoint, params: dict[str, str | int] | None = None, **parts: str
    ) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        async for page in self.pages(endpoint, params, **parts):
            out.extend(page.values)
        return out

    # -- reads -----------------------------------------------------------------------------
    async def workspaces(self) -> list[Workspace]:
        """Workspaces of the credential (``/user/workspaces``; ``/workspaces`` was removed)."""
        rows = await self.collect(paths.USER_WORKSPACES, {"pagelen": MAX_PAGELEN})
        return [Workspace.from_api(r) for r in rows]

    async def current_user(self) -> User:
        return User.from_api(await self.get(paths.USER))

    async def repositories(self, workspace: str) -> list[Repository]:
        rows = await self.collect(paths.REPOSITORIES, {"pagelen": MAX_PAGELEN}, workspace=workspace)
        return [Repository.from_api(r) for r in rows]

    async def repository(self, workspace: str, repo_slug: str) -> Repository:
        return Repository.from_api(await self.get(paths.REPOSITORY, workspace=workspace, repo_slug=repo_slug))

    async def branch_restrictions(self, workspace: str, repo_slug: str) -> list[BranchRestriction]:
        """Needs ``repository:admin`` (SPEC security of this operation)."""
        rows = await self.collect(
            paths.BRANCH_RESTRICTIONS, {"pagelen": MAX_PAGELEN}, workspace=workspace, repo_slug=repo_slug
        )
        return [BranchRestriction.from_api(r) for r in rows]

    async def branching_model(self, workspace: str, repo_slug: str) -> BranchingModel:
        """The branching model as applied (``/effective-branching-model``): a repository without a
        model of its own inherits its project's, which ``/branching-model`` does not show."""
        return BranchingModel.from_api(
            await self.get(paths.EFFECTIVE_BRANCHING_MODEL, workspace=workspace, repo_slug=repo_slug)
        )

    async def pipelines_config(self, workspace: str, repo_slug: str) -> PipelinesConfig:
        """``enabled``; a 404 means Pipelines was never configured (docs/bitbucket-facts.md)."""
        try:
            body = await self.get(paths.PIPELINES_CONFIG, workspace=workspace, repo_slug=repo_slug)
        except errors.NotFoundError:
            return PipelinesConfig(enabled=False, configured=False)
        return PipelinesConfig(enabled=bool(isinstance(body, dict) and body.get("enabled")))

    async def latest_pipeline(self, workspace: str, repo_slug: str, branch: str) -> Pipeline | None:
        body = await self.get(
            paths.PIPELINES,
            {"target.branch": branch, "sort": "-created_on", "pagelen": 1},
            workspace=workspace,
            repo_slug=repo_slug,
        )
        page = sansio.parse_page(body)
        return Pipeline.from_api(page.values[0]) if page.values else None

    async def open_pullrequest_count(self, workspace: str, repo_slug: str) -> int:
        """The envelope's ``size`` when sent; otherwise count values page by page (pagelen 50)."""
        count = 0
        async for page in self.pages(
            paths.PULLREQUESTS, {"state": "OPEN", "pagelen": PR_PAGELEN}, workspace=workspace, repo_slug=repo_slug
        ):
            if page.size is not None:
                return page.size
            count += len(page.values)
        return count

    async def members(self, workspace: str) -> list[Member]:
        rows = await self.collect(paths.MEMBERS, {"pagelen": MAX_PAGELEN}, workspace=workspace)
        return [Member.from_api(r) for r in rows]

    async def permissions(self, workspace: str) -> dict[str, str]:
        """Member key (account_id, else uuid) → ``owner`` / ``member`` / ``collaborator``."""
        rows = await self.collect(paths.PERMISSIONS, {"pagelen": MAX_PAGELEN}, workspace=workspace)
        out: dict[str, str] = {}
        for row in rows:
            user = User.from_api(row.get("user") or {})
            if user.key and isinstance(row.get("permission"), str):
                out[user.key] = row["permission"]
        return out

    async def members_by_email(self, workspace: str, emails: Iterable[str]) -> dict[str, User]:
        """Email (lower-cased) → member, in batches of at most 90 addresses.

        Only admins, integrations and workspace access tokens may filter on email; others get
        403, which the caller reads as "email linking unavailable".
        """
        wanted = sorted({e.strip().lower() for e in emails if e.strip()})
        found: dict[str, User] = {}
        for start in range(0, len(wanted), EMAIL_BATCH):
            batch = wanted[start : start + EMAIL_BATCH]
            params: dict[str, str | int] = {
                "q": sansio.bbql_email_filter(batch),
                "fields": "+values.user.email",
                "pagelen": MAX_PAGELEN,
            }
            for row in await self.collect(paths.MEMBERS, params, workspace=workspace):
                user_raw = row.get("user") or {}
                email = user_raw.get("email")
                if isinstance(email, str):
                    found[email.lower()] = User.from_api(user_raw)
        return found

    async def hook_events(self, subject_type: str) -> list[str]:
        rows = await self.collect(paths.HOOK_EVENTS, {"pagelen": MAX_PAGELEN}, subject_type=subject_type)
        return sorted(str(r["event"]) for r in rows if isinstance(r.get("event"), str))

    # -- webhooks --------------------------------------------------------------------------
    async def workspace_hooks(self, workspace: str) -> list[Webhook]:
        rows = await self.collect(paths.WORKSPACE_HOOKS_LIST, {"pagelen": MAX_PAGELEN}, workspace=workspace)
        return [Webhook.from_api(r) for r in rows]

    async def repository_hooks(self, workspace: str, repo_slug: str) -> list[Webhook]:
        rows = await self.collect(
            paths.REPO_HOOKS_LIST, {"pagelen": MAX_PAGELEN}, workspace=workspace, repo_slug=repo_slug
        )
        return [Webhook.from_api(r) for r in rows]

    @staticmethod
    def _hook_body(
        url: str, events: Iterable[str], secret: str | None, description: str, active: bool
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "description": description,
            "url": url,
            "active": active,
            "events": sorted(set(events)),
        }
        if secret is not None:
            body["secret"] = secret
        return body

    async def create_workspace_hook(
        self, workspace: str, url: str, events: Iterable[str], secret: str | None, description: str = "lowerplane"
    ) -> Webhook:
        body = self._hook_body(url, events, secret, description, True)
        raw = await self.request("POST", self.url(paths.WORKSPACE_HOOK_CREATE, workspace=workspace), body)
        return Webhook.from_api(raw)

    async def update_workspace_hook(
        self,
        workspace: str,
        uid: str,
        url: str,
        events: Iterable[str],
        secret: str | None,
        description: str = "lowerplane",
        active: bool = True,
    ) -> Webhook:
        body = self._hook_body(url, events, secret, description, active)
        raw = await self.request("PUT", self.url(paths.WORKSPACE_HOOK_UPDATE, workspace=workspace, uid=uid), body)
        return Webhook.from_api(raw)

    async def delete_workspace_hook(self, workspace: str, uid: str) -> None:
        await self.request("DELETE", self.url(paths.WORKSPACE_HOOK_DELETE, workspace=workspace, uid=uid))

    async def create_repository_hook(
        self,
        workspace: str,
        repo_slug: str,
        url: str,
        events: Iterable[str],
        secret: str | None,
        description: str = "lowerplane",
    ) -> Webhook:
        body = self._hook_body(url, events, secret, description, True)
        raw = await self.request(
            "POST", self.url(paths.REPO_HOOK_CREATE, workspace=workspace, repo_slug=repo_slug), body
        )
        return Webhook.from_api(raw)

    async def update_repository_hook(
        self,
        workspace: str,
        repo_slug: str,
        uid: str,
        url: str,
        events: Iterable[str],
        secret: str | None,
        description: str = "lowerplane",
        active: bool = True,
    ) -> Webhook:
        body = self._hook_body(url, events, secret, description, active)
        raw = await self.request(
            "PUT", self.url(paths.REPO_HOOK_UPDATE, workspace=workspace, repo_slug=repo_slug, uid=uid), body
        )
        return Webhook.from_api(raw)

    async def delete_repository_hook(self, workspace: str, repo_slug: str, uid: str) -> None:
        await self.request(
            "DELETE", self.url(paths.REPO_HOOK_DELETE, workspace=workspace, repo_slug=repo_slug, uid=uid)
        )

    def calls(self) -> int:
        """Requests sent so far (every status)."""
        return sum(self.counters.values())


class ClientPool:
    """One client per connection, all over the process's one aiohttp session, and one
    :class:`Budget` per credential: connections that use the same OAuth consumer or the same access
    token share it, as Bitbucket counts their requests together."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        api_url: str,
        budget_per_hour: int,
        concurrency: int,
        reserve: float = 0.3,
        headroom: float = 0.1,
        **client_options: Any,
    ) -> None:
        self.session = session
        self.api_url = api_url
        self.budget_per_hour = budget_per_hour
        self.concurrency = concurrency
        self.reserve = reserve
        self.headroom = headroom
        self.options = client_options
        self.clients: dict[str, BitbucketClient] = {}
        self.budgets: dict[str, Budget] = {}  # credential id -> its budget

    def budget(self, credential_id: str) -> Budget:
        budget = self.budgets.get(credential_id)
        if budget is None:
            budget = Budget(self.budget_per_hour, reserve=self.reserve, headroom=self.headroom, pace=True)
            self.budgets[credential_id] = budget
        return budget

    def get(self, connection_id: str, tokens: TokenSource) -> BitbucketClient:
        client = self.clients.get(connection_id)
        if client is None:
            client = BitbucketClient(
                self.session,
                tokens,
                api_url=self.api_url,
                budget=self.budget(tokens.credential_id),
                concurrency=self.concurrency,
                **self.options,
            )
            self.clients[connection_id] = client
        return client

    def drop(self, connection_id: str) -> None:
        self.clients.pop(connection_id, None)

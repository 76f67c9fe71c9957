"""The client's exact wire behaviour against aioresponses (the outer HTTP boundary)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aioresponses import CallbackResult, aioresponses

from app import errors
from app.bitbucket.client import BitbucketClient, Budget, StaticToken

API = "https://api.bitbucket.org/2.0"


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


class Refreshing:
    """A token source that hands out a new token on refresh, and counts refreshes."""

    def __init__(self, fail: bool = False) -> None:
        self.current = "old-token"
        self.refreshes = 0
        self.fail = fail

    @property
    def credential_id(self) -> str:
        return "oauth"

    async def token(self) -> str:
        return self.current

    async def refresh(self, rejected: str) -> str:
        self.refreshes += 1
        if self.fail:
            raise errors.TokenError("revoked")
        self.current = f"new-token-{self.refreshes}"
        return self.current


@pytest.fixture
async def http() -> AsyncIterator[tuple[aioresponses, aiohttp.ClientSession]]:
    with aioresponses() as mocked:
        async with aiohttp.ClientSession() as session:
            yield mocked, session


def make(session: aiohttp.ClientSession, sleeps: Sleeps, tokens: Any = None, **kw: Any) -> BitbucketClient:
    return BitbucketClient(session, tokens or StaticToken("tkn"), api_url=API, budget=Budget(1000), sleep=sleeps, **kw)


def url(path: str) -> re.Pattern[str]:
    return re.compile(re.escape(API + path) + r"(\?.*)?$")


async def test_follows_next_pages(http: tuple[aioresponses, aiohttp.ClientSession]) -> None:
    mocked, session = http
    mocked.get(
        url("/repositories/acme"),
        payload={
            "values": [{"full_name": "acme/a", "uuid": "{1}"}],
            "next": API + "/repositories/acme?page=2&pagelen=100",
        },
    )
    mocked.get(url("/repositories/acme"), payload={"values": [{"full_name": "acme/b", "uuid": "{2}"}]})
    client = make(session, Sleeps())
    repos = await client.repositories("acme")
    assert [r.slug for r in repos] == ["a", "b"]
    assert client.counters[("repositories", "200")] == 2


async def test_retries_5xx_with_backoff_then_succeeds(http: tuple[aioresponses, aiohttp.ClientSession]) -> None:
    mocked, session = http
    mocked.get(url("/user"), status=503, body="down")
    mocked.get(url("/user"), status=500, body="down")
    mocked.get(url("/user"), payload={"uuid": "{u}", "account_id": "a1"})
    sleeps = Sleeps()
    user = await make(session, sleeps).current_user()
    assert user.account_id == "a1"
    assert len(sleeps.calls) == 2 and all(0 < s <= 31 for s in sleeps.calls)


async def test_gives_up_after_max_attempts(http: tuple[aioresponses, aiohttp.ClientSession]) -> None:
    mocked, session = http
    for _ in range(3):
        mocked.get(url("/user"), status=502)
    with pytest.raises(errors.ServerError):
        await make(session, Sleeps(), max_attempts=3).current_user()


async def test_timeout_and_connection_errors_are_retried(http: tuple[aioresponses, aiohttp.ClientSession]) -> None:
    mocked, session = http
    mocked.get(url("/user"), exception=TimeoutError())
    mocked.get(url("/user"), exception=aiohttp.ClientConnectionError("refused"))
    mocked.get(url("/user"), payload={"account_id": "a2"})
    client = make(session, Sleeps())
    assert (await client.current_user()).account_id == "a2"
    assert client.counters[("user", "timeout")] == 1 and client.counters[("user", "error")] == 1


async def test_429_waits_for_retry_after(http: tuple[aioresponses, aiohttp.ClientSession]) -> None:
    mocked, session = http
    mocked.get(
        url("/user"),
        status=429,
        body="Rate limit for this resource has been exceeded",
        headers={"Retry-After": "12", "Content-Type": "text/plain"},
    )
    mocked.get(url("/user"), payload={"account_id": "a3"})
    sleeps = Sleeps()
    assert (await make(session, sleeps).current_user()).account_id == "a3"
    assert sleeps.calls == [12.0]


async def test_429_without_retry_after_backs_off_exponentially(
    http: tuple[aioresponses, aiohttp.ClientSession],
) -> None:
    mocked, session = http
    for _ in range(3):
        mocked.get(url("/user"), status=429, body="Rate limit for this resource has been exceeded")
    mocked.get(url("/user"), payload={"account_id": "a4"})
    sleeps = Sleeps()
    client = make(session, sleeps, backoff_initial=1.0, backoff_max=60)
    assert (await client.current_user()).account_id == "a4"
    # The credential pauses 10 s, then 20 s, 40 s (doubling, capped at 10 min): the budget's pause.
    assert sleeps.calls == [10.0, 20.0, 40.0]
    assert client.budget.pauses == 3


async def test_401_refreshes_once_and_retries(http: tuple[aioresponses, aiohttp.ClientSession]) -> None:
    mocked, session = http
    seen: list[str] = []

    def cb(u: Any, **kw: Any) -> CallbackResult:
        auth = kw["headers"]["Authorization"]
        seen.append(auth)
        if auth == "Bearer old-token":
            return CallbackResult(status=401, payload={"type": "error", "error": {"message": "expired"}})
        return CallbackResult(payload={"account_id": "a5"})

    mocked.get(url("/user"), callback=cb, repeat=True)
    tokens = Refreshing()
    assert (await make(session, Sleeps(), tokens).current_user()).account_id == "a5"
    assert tokens.refreshes == 1 and seen == ["Bearer old-token", "Bearer new-token-1"]


async def test_second_401_is_an_auth_error(http: tuple[aioresponses, aiohttp.ClientSession]) -> None:
    mocked, session = http
    mocked.get(url("/user"), status=401, repeat=True)
    tokens = Refreshing()
    with pytest.raises(errors.AuthError):
        await make(session, Sleeps(), tokens).current_user()
    assert tokens.refreshes == 1


async def test_failed_refresh_is_an_auth_error_without_the_token(
    http: tuple[aioresponses, aiohttp.ClientSession],
) -> None:
    mocked, session = http
    mocked.get(url("/user"), status=401, repeat=True)
    with pytest.raises(errors.AuthError) as info:
        await make(session, Sleeps(), Refreshing(fail=True)).current_user()
    assert "old-token" not in str(info.value)


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("GET", API + "/repositories/acme/api/src/main/app.py"),
        ("GET", API + "/repositories/acme/api/commits"),
        ("GET", API + "/repositories/acme/api/diff/a..b"),
        ("GET", "https://evil.example/2.0/user"),
        ("GET", "http://api.bitbucket.org/2.0/user"),
        ("DELETE", API + "/repositories/acme/api"),
    ],
)
async def test_allow_list_refuses_before_sending(
    http: tuple[aioresponses, aiohttp.ClientSession], method: str, target: str
) -> None:
    mocked, session = http
    client = make(session, Sleeps())
    with pytest.raises(errors.EndpointNotAllowed):
        await client.request(method, target)
    assert not mocked.requests and client.calls() == 0


async def test_next_link_to_another_host_is_refused(http: tuple[aioresponses, aiohttp.ClientSession]) -> None:
    mocked, session = http
    mocked.get(url("/repositories/acme"), payload={"values": [], "next": "https://evil.example/2.0/repositories/acme"})
    with pytest.raises(errors.EndpointNotAllowed):
        await make(session, Sleeps()).repositories("acme")


async def test_pr_count_uses_size_else_counts_pages(http: tuple[aioresponses, aiohttp.ClientSession]) -> None:
    mocked, session = http
    mocked.get(url("/repositories/acme/a/pullrequests"), payload={"values": [{}] * 3, "size": 75})
    mocked.get(
        url("/repositories/acme/b/pullrequests"),
        payload={"values": [{}] * 50, "next": API + "/repositories/acme/b/pullrequests?page=2"},
    )
    mocked.get(url("/repositories/acme/b/pullrequests"), payload={"values": [{}] * 7})
    client = make(session, Sleeps())
    assert await client.open_pullrequest_count("acme", "a") == 75
    assert await client.open_pullrequest_count("acme", "b") == 57
    sent = [str(k[1]) for k in mocked.requests]
    assert all("pagelen=50" in u and "state=OPEN" in u for u in sent if "pullrequests" in u and "page=2" not in u)


async def test_members_by_email_batches_of_90(http: tuple[aioresponses, aiohttp.ClientSession]) -> None:
    mocked, session = http
    queries: list[str] = []

    def cb(u: Any, **kw: Any) -> CallbackResult:
        queries.append(str(u))
        return CallbackResult(payload={"values": []})

    mocked.get(url("/workspaces/acme/members"), callback=cb, repeat=True)
    emails = [f"p{i}@x.example" for i in range(181)]
    await make(session, Sleeps()).members_by_email("acme", emails)
    assert len(queries) == 3
    counts = [q.count("x.example") for q in queries]
    assert counts == [90, 90, 1]


async def test_pipelines_config_404_means_never_configured(http: tuple[aioresponses, aiohttp.ClientSession]) -> None:
    mocked, session = http
    mocked.get(
        url("/repositories/acme/a/pipelines_config"),
        status=404,
        payload={"type": "error", "error": {"message": "not found"}},
    )
    cfg = await make(session, Sleeps()).pipelines_config("acme", "a")
    assert cfg.enabled is False and cfg.configured is False


async def test_403_names_the_missing_scope(http: tuple[aioresponses, aiohttp.ClientSession]) -> None:
    mocked, session = http
    mocked.get(
        url("/repositories/acme/a/branch-restrictions"),
        status=403,
        payload={"type": "error", "error": {"message": "scopes"}},
        headers={"X-Accepted-OAuth-Scopes": "repository:admin", "X-OAuth-Scopes": "repository"},
    )
    with pytest.raises(errors.ForbiddenError) as info:
        await make(session, Sleeps()).branch_restrictions("acme", "a")
    assert info.value.required_scope == "repository:admin"


async def test_budget_paces_instead_of_overrunning() -> None:
    now = [0.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    budget = Budget(3, window=60, clock=lambda: now[0], sleep=sleep)
    for _ in range(3):
        await budget.acquire()
    assert budget.remaining == 0 and not slept
    now[0] = 10.0
    await budget.acquire()  # waits until the first slot leaves the window at t=60
    assert slept and now[0] >= 60.0 and budget.used == 1


async def test_budget_reserve_holds_back_low_priority() -> None:
    now = [0.0]

    async def sleep(seconds: float) -> None:
        now[0] += seconds

    budget = Budget(10, window=100, reserve=0.2, clock=lambda: now[0], sleep=sleep)
    for _ in range(8):
        await budget.acquire(priority=False)
    assert now[0] == 0.0
    await budget.acquire(priority=True)
    await budget.acquire(priority=True)
    assert now[0] == 0.0 and budget.remaining == 0
    await budget.acquire(priority=False)
    assert now[0] >= 100.0

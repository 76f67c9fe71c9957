"""The receiver's hot-path pieces (issue 10, ingest throughput): one timer for every delivery's
store deadline instead of one per delivery, and the webhook secret keyed once and copied per
delivery."""

from __future__ import annotations

import asyncio
import hashlib
import hmac

import pytest

from app import errors
from app.bitbucket import sansio
from app.store.events import Deadlines


# -- one timer for every delivery's deadline ----------------------------------------------------
async def test_a_delivery_not_stored_by_its_deadline_fails_with_timeout_then() -> None:
    deadlines = Deadlines()
    loop = asyncio.get_running_loop()
    waiting: asyncio.Future[int | None] = loop.create_future()
    started = loop.time()
    deadlines.watch(waiting, 0.2)
    with pytest.raises(TimeoutError):
        await waiting
    assert 0.15 <= loop.time() - started < 1.0


async def test_a_stored_delivery_keeps_its_answer_and_is_let_go() -> None:
    deadlines = Deadlines()
    loop = asyncio.get_running_loop()
    for n in range(1000):
        stored: asyncio.Future[int | None] = loop.create_future()
        deadlines.watch(stored, 0.2)
        stored.set_result(n)
        assert await stored == n
    # finished deliveries leave as the next ones come: only the last is still held
    assert len(deadlines._pending) == 1
    await asyncio.sleep(0.3)  # the timer finds nothing to expire and stops
    assert deadlines._timer is None and not deadlines._pending


async def test_a_shorter_deadline_after_a_longer_one_still_fires_on_time() -> None:
    """The timer follows the soonest deadline, not the first watched (STORE_TIMEOUT may change)."""
    deadlines = Deadlines()
    loop = asyncio.get_running_loop()
    slow: asyncio.Future[int | None] = loop.create_future()
    fast: asyncio.Future[int | None] = loop.create_future()
    deadlines.watch(slow, 30.0)
    started = loop.time()
    deadlines.watch(fast, 0.2)
    with pytest.raises(TimeoutError):
        await fast
    assert loop.time() - started < 1.0
    assert not slow.done()  # its own deadline is far off
    slow.cancel()


async def test_deliveries_expire_in_deadline_order_each_at_its_own_time() -> None:
    deadlines = Deadlines()
    loop = asyncio.get_running_loop()
    futures: list[asyncio.Future[int | None]] = []
    for _ in range(3):
        futures.append(loop.create_future())
        deadlines.watch(futures[-1], 0.3)
        await asyncio.sleep(0.1)
    # 0.3 s after the first was watched, the first has expired and the last has not
    await asyncio.sleep(0.05)
    assert futures[0].done() and not futures[2].done()
    await asyncio.sleep(0.3)
    for future in futures:
        with pytest.raises(TimeoutError):
            future.result()


def test_a_new_event_loop_starts_afresh() -> None:
    """A process that serves twice (the tests, ``demo``) gets deadlines on its current loop."""
    deadlines = Deadlines()

    async def one_expiry() -> None:
        waiting: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        deadlines.watch(waiting, 0.05)
        with pytest.raises(TimeoutError):
            await waiting

    asyncio.run(one_expiry())
    asyncio.run(one_expiry())


# -- the secret keyed once ----------------------------------------------------------------------
def test_one_keyed_secret_verifies_many_bodies_in_turn() -> None:
    """The keyed HMAC is copied per delivery: no body's bytes stay in it for the next one."""
    secret = "It's a Secret to Everybody"
    for n in range(3):
        body = f"delivery {n}".encode()
        good = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        sansio.verify_signature([secret], body, good)
        with pytest.raises(errors.SignatureError):
            sansio.verify_signature([secret], body + b" ", good)


def test_rotation_accepts_either_secret_and_refuses_a_third() -> None:
    body = b"Hello World!"
    for secret in ("old secret", "new secret"):
        sansio.verify_signature(["new secret", "old secret"], body, sansio.sign(secret, body))
    with pytest.raises(errors.SignatureError):
        sansio.verify_signature(["new secret", "old secret"], body, sansio.sign("third", body))

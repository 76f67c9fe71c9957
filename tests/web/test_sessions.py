"""Dashboard sessions are held server-side (hashed) and revoked by a CSRF-checked POST /logout:
the old cookie no longer opens a page. A real server on loopback and a real SQLite file."""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from app.sandbox.serve import RunningSandbox, free_port
from app.settings import PostgresURL
from tests.helpers import ADMIN, RunningApp, product_settings, running_app
from tests.pgcluster import fetch


@pytest.fixture
async def product(sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path) -> AsyncIterator[RunningApp]:
    port = free_port()
    async with running_app(product_settings(sandbox.api, tmp_path, port), port, session, background=False) as app:
        yield app


async def _login(app: RunningApp) -> str:
    async with (
        aiohttp.ClientSession() as s,
        s.post(app.url + "/login", data={"token": ADMIN, "next": "/events"}, allow_redirects=False) as r,
    ):
        assert r.status == 303
        return r.cookies["lp_session"].value


async def _get(app: RunningApp, cookie: str, path: str = "/events") -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as s,
        s.get(app.url + path, headers={"Cookie": f"lp_session={cookie}"}, allow_redirects=False) as r,
    ):
        return r.status, await r.text()


async def _post(app: RunningApp, cookie: str, path: str, form: dict[str, str], method: str = "POST") -> int:
    async with (
        aiohttp.ClientSession() as s,
        s.request(
            method, app.url + path, data=form, headers={"Cookie": f"lp_session={cookie}"}, allow_redirects=False
        ) as r,
    ):
        return r.status


async def test_logout_revokes_the_session(product: RunningApp) -> None:
    cookie = await _login(product)
    status, page = await _get(product, cookie)
    assert status == 200
    csrf = re.search(r'name="csrf" value="([^"]+)"', page)
    assert csrf is not None
    assert 'action="/logout"' in page  # the dashboard's logout is a form, not a link

    # Not a logout: GET, and POST without (or with a wrong) CSRF token.
    assert await _post(product, cookie, "/logout", {}, method="GET") == 405
    assert await _post(product, cookie, "/logout", {}) == 403
    assert await _post(product, cookie, "/logout", {"csrf": "forged"}) == 403
    assert (await _get(product, cookie))[0] == 200

    assert await _post(product, cookie, "/logout", {"csrf": csrf.group(1)}) == 303
    status, _ = await _get(product, cookie)
    assert status == 303  # the old cookie leads to the login page
    async with (
        aiohttp.ClientSession() as s,
        s.get(product.url + "/events", headers={"Cookie": f"lp_session={cookie}"}, allow_redirects=False) as r,
    ):
        assert r.headers["Location"].startswith("/login")
    # ... and cannot post a form any more, even with the token of its page.
    assert await _post(product, cookie, "/exceptions", {"csrf": csrf.group(1), "check": "x"}) == 303

    # A new login works and is a different session.
    again = await _login(product)
    assert again.split(".")[0] != cookie.split(".")[0]
    assert (await _get(product, again))[0] == 200


async def test_session_ids_are_stored_hashed(product: RunningApp) -> None:
    cookie = await _login(product)
    sid = cookie.split(".")[0]
    db = product.settings.database
    if isinstance(db, PostgresURL):  # every stored key and value
        raw = b"".join(f"{r['key']}={r['value']}".encode() for r in fetch(db, "SELECT key, value FROM meta"))
    else:
        raw = b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))
    assert sid.encode() not in raw
    assert hashlib.sha256(sid.encode()).hexdigest().encode() in raw


@pytest.mark.parametrize(
    "path",
    [
        "/personnel",
        "/exceptions",
        "/rules",
        "/members/link",
        "/members/mark",
        "/repositories/classify",
        "/operations/reconcile",
        "/alerts/test",
        "/exceptions/1/revoke",
        "/events/1/retry",
        "/connections/token/disconnect",
    ],
)
async def test_every_form_refuses_a_forged_csrf_token_with_403(product: RunningApp, path: str) -> None:
    """One answer for one failure: the personnel upload used to call it a configuration error (400)."""
    cookie = await _login(product)
    assert await _post(product, cookie, path, {"csrf": "forged", "confirm": "yes"}) == 403

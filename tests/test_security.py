"""Security hardening on real servers and real SQLite files: CSV injection in exports, evidence
uploads streamed with the size limit enforced while reading, sessions revoked on logout, and a
limit on request header size."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from app.commands import cmd_evidence_add, cmd_findings
from app.errors import ConfigError
from app.findings import Change, Delta
from app.models import Result
from app.sandbox.serve import RunningSandbox, free_port
from app.store import Store
from tests.conftest import ROOT
from tests.helpers import ADMIN, SECRET_KEY, product_settings, running_app
from tests.pgcluster import database_for

FORMULA = '=HYPERLINK("http://x","y")'


def _formula_result(subject: str = f"acme/{FORMULA}") -> Result:
    return Result(
        check="repo-classified",
        severity="medium",
        workspace="acme",
        subject_type="repository",
        subject_key="{formula-repo}",
        subject_uuid="{formula-repo}",
        subject=subject,
        subject_name=FORMULA,
        status="fail",
        message="+1 not classified; @team -check",
    )


async def _seed(db: Path) -> None:
    store = await Store.open(db)
    try:
        await store.results.apply(Delta(opened=[Change(_formula_result(), None)]), "2026-11-28T12:00:00+00:00")
    finally:
        await store.close()


def _cells(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def _assert_neutralised(rows: list[dict[str, str]]) -> None:
    [row] = [r for r in rows if r["subject_uuid"] == "{formula-repo}"]
    assert row["subject_name"] == "'" + FORMULA
    assert row["message"] == "'+1 not classified; @team -check"
    assert row["subject"] == f"acme/{FORMULA}"  # not at the start: left as it is
    for r in rows:
        for value in r.values():
            assert not value.startswith(("=", "+", "-", "@", "\t", "\r")), value


async def test_findings_csv_from_the_cli_neutralises_formulas(tmp_path: Path) -> None:
    settings = product_settings("http://127.0.0.1:9/2.0", tmp_path, 8000)
    await _seed(settings.database)
    out = io.StringIO()
    assert await cmd_findings(settings, None, None, None, "csv", out=out) == 0
    _assert_neutralised(_cells(out.getvalue()))


async def test_findings_csv_from_the_api_neutralises_formulas(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    port = free_port()
    settings = product_settings(sandbox.api, tmp_path, port)
    await _seed(settings.database)
    async with running_app(settings, port, session, background=False) as app:
        async with session.get(
            app.url + "/api/exports/findings.csv", headers={"Authorization": f"Bearer {ADMIN}"}
        ) as resp:
            assert resp.status == 200, await resp.text()
            _assert_neutralised(_cells(await resp.text()))


# -- the real `serve` command in a subprocess --------------------------------------------------
@dataclass
class Served:
    url: str
    port: int
    proc: subprocess.Popen[bytes]
    data: Path


def _serve(tmp_path: Path, **extra: str) -> Iterator[Served]:
    tmp_path.mkdir(exist_ok=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LP_")}
    env |= {
        "LP_DATABASE": str(database_for(tmp_path / "lp.sqlite3")),
        "LP_DATA_DIR": str(tmp_path),  # beside an SQLite file by default; said for PostgreSQL
        "LP_SECRET_KEY": SECRET_KEY,
        "LP_ADMIN_TOKEN": ADMIN,
        "LP_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "LP_LOG_LEVEL": "warning",
        "PYTHONPATH": str(ROOT),
        **extra,
    }
    log = tmp_path / "serve.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "app", "serve", "--port", str(port)], cwd=tmp_path, env=env, stderr=err
        )
    try:
        deadline = time.monotonic() + 30
        while not _raw(port, HEALTH).startswith(b"HTTP/1.1 200"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"serve did not start: {log.read_text()}")
            time.sleep(0.05)
        yield Served(f"http://127.0.0.1:{port}", port, proc, tmp_path)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    yield from _serve(tmp_path)


HEALTH = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


def _raw(port: int, request: bytes) -> bytes:
    """Send raw bytes, return everything the server answers before it closes (b"" on a reset)."""
    got = b""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    except OSError:
        return b""
    with sock:
        try:
            sock.sendall(request)
            sock.shutdown(socket.SHUT_WR)
            while chunk := sock.recv(65536):
                got += chunk
        except (ConnectionResetError, BrokenPipeError):
            pass
    return got


def test_serve_refuses_a_huge_header(served: Served) -> None:
    normal = _raw(served.port, HEALTH)
    assert normal.startswith(b"HTTP/1.1 200")  # the same request with ordinary headers is served
    big = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (100 * 1024) + b"\r\nConnection: close\r\n\r\n"
    answer = _raw(served.port, big)
    status = answer.split(b"\r\n", 1)[0]
    assert not status.startswith(b"HTTP/1.1 2"), status  # never processed
    assert answer == b"" or status.split(b" ")[1] in (b"400", b"431"), status


def endless_head(port: int) -> tuple[int, bytes]:
    """Send a request head that never ends, far past the limit: (bytes sent, what the server answered)."""
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Endless: ")
        sent = 0
        try:
            while sent < 4 * 1024 * 1024:  # far past the 16 KiB limit, and never a complete head
                sock.sendall(b"a" * 4096)
                sent += 4096
                time.sleep(0.001)
        except (ConnectionResetError, BrokenPipeError):
            pass
        with contextlib.suppress(ConnectionResetError, TimeoutError):
            while chunk := sock.recv(65536):
                answer += chunk
    return sent, answer


def test_serve_cuts_off_an_endless_header_while_it_arrives(served: Served) -> None:
    """A head that never ends is refused once it passes the limit, before it completes: the server
    must not buffer an endless header (httptools alone would)."""
    sent, answer = endless_head(served.port)
    assert sent < 4 * 1024 * 1024, "the server kept reading an endless header"
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431"), answer[:80]
    assert _raw(served.port, HEALTH).startswith(b"HTTP/1.1 200")  # and it still serves others


def test_serve_takes_a_large_body_behind_a_small_head(served: Served) -> None:
    """Body bytes never count toward the head limit, even when they arrive in the head's chunk.
    (Authorized, so the route reads the whole body before it answers: a server that answers and
    closes with body bytes unread resets the connection, and the answer can be lost under load.)"""
    body = b"x" * (200 * 1024)
    request = (
        b"POST /api/reconcile HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
    ) % (ADMIN.encode(), len(body))
    answer = _raw(served.port, request + body)
    assert answer.split(b"\r\n", 1)[0] == b"HTTP/1.1 400 Bad Request", answer[:80]  # routed: the body is no JSON


# -- evidence uploads: streamed, the limit enforced while reading ----------------------------
LIMIT = 64 * 1024
PDF = b"%PDF-1.4 2SV policy\n"


def _pdf(size: int) -> bytes:
    return PDF + b"x" * (size - len(PDF))


def _evidence_form(data: bytes | Path, **fields: str) -> aiohttp.FormData:
    form = aiohttp.FormData()
    for k, v in {"check": "workspace-mfa-enforced", "workspace": "acme", **fields}.items():
        form.add_field(k, v)
    if isinstance(data, Path):
        form.add_field("file", data.open("rb"), filename=data.name, content_type="application/pdf")
    else:
        form.add_field("file", data, filename="policy.pdf", content_type="application/pdf")
    return form


def _left_behind(data_dir: Path) -> list[str]:
    folder = data_dir / "evidence"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


async def test_api_upload_over_the_limit_is_413_and_leaves_nothing(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    port = free_port()
    settings = product_settings(sandbox.api, tmp_path, port, LP_EVIDENCE_MAX_BYTES=str(LIMIT))
    auth = {"Authorization": f"Bearer {ADMIN}"}
    async with running_app(settings, port, session, background=False) as app:
        store = app.services.service.store
        # One byte over: the body is within the form's allowance, the file copy stops at the limit.
        async with session.post(app.url + "/api/evidence", data=_evidence_form(_pdf(LIMIT + 1)), headers=auth) as r:
            assert r.status == 413, await r.text()
            problem = await r.json()
            assert "larger than 64 KiB" in problem["detail"] and "LP_EVIDENCE_MAX_BYTES" in problem["detail"]
        assert _left_behind(tmp_path) == [] and await store.records.evidence_rows() == []

        # A chunked body (no Content-Length) far over the limit: refused while reading.
        async def chunks() -> AsyncIterator[bytes]:
            boundary = b"--b0undary"
            yield boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="big.pdf"\r\n\r\n' + PDF
            for _ in range(64):
                yield b"x" * 16384

        async with (
            aiohttp.ClientSession() as s,
            s.post(
                app.url + "/api/evidence",
                data=chunks(),
                headers=auth | {"Content-Type": "multipart/form-data; boundary=b0undary"},
            ) as r,
        ):
            assert r.status == 413
        assert _left_behind(tmp_path) == [] and await store.records.evidence_rows() == []

        # Exactly at the limit: accepted, stored once by its hash.
        data = _pdf(LIMIT)
        async with session.post(app.url + "/api/evidence", data=_evidence_form(data), headers=auth) as r:
            assert r.status == 201, await r.text()
            body = await r.json()
        assert body["size"] == LIMIT and _left_behind(tmp_path) == [body["sha256"]]
        assert (tmp_path / "evidence" / body["sha256"]).read_bytes() == data


async def test_dashboard_upload_over_the_limit_is_413(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    port = free_port()
    settings = product_settings(sandbox.api, tmp_path, port, LP_EVIDENCE_MAX_BYTES=str(LIMIT))
    async with running_app(settings, port, session, background=False) as app:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
            async with browser.post(app.url + "/login", data={"token": ADMIN, "next": "/evidence"}) as r:
                page = await r.text()
            csrf = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
            form = _evidence_form(_pdf(LIMIT + 1), csrf=csrf)
            async with browser.post(app.url + "/evidence", data=form, allow_redirects=False) as r:
                assert r.status == 413
                assert "evidence is larger than 64 KiB" in await r.text()
            assert _left_behind(tmp_path) == []
            form = _evidence_form(_pdf(LIMIT), csrf=csrf)
            async with browser.post(app.url + "/evidence", data=form, allow_redirects=False) as r:
                assert r.status == 303 and "Evidence%20recorded" in r.headers["Location"]
        assert len(await app.services.service.store.records.evidence_rows()) == 1


async def test_cli_evidence_add_over_the_limit(tmp_path: Path) -> None:
    settings = product_settings("http://127.0.0.1:9/2.0", tmp_path, 8000, LP_EVIDENCE_MAX_BYTES=str(LIMIT))
    big = tmp_path / "policy.pdf"
    big.write_bytes(_pdf(LIMIT + 1))
    await (await Store.open(settings.database)).close()  # the product's database (the command needs one)
    with pytest.raises(ConfigError, match="larger than 64 KiB"):
        await cmd_evidence_add(settings, "workspace-mfa-enforced", "acme", None, None, big)
    assert _left_behind(tmp_path) == []


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


async def test_a_64_mib_upload_does_not_grow_the_server_by_its_size(tmp_path: Path) -> None:
    size = 64 * 1024 * 1024
    big = tmp_path / "upload" / "report.pdf"
    big.parent.mkdir()
    with big.open("wb") as f:
        f.write(PDF)
        for _ in range(size // (1024 * 1024)):
            f.write(b"x" * (1024 * 1024))
    small = tmp_path / "upload" / "small.pdf"
    small.write_bytes(_pdf(4096))
    auth = {"Authorization": f"Bearer {ADMIN}"}
    for served in _serve(tmp_path / "srv", LP_EVIDENCE_MAX_BYTES=str(128 * 1024 * 1024)):
        async with aiohttp.ClientSession() as s:
            # Warm up every code path with a small upload, then measure the big one.
            async with s.post(served.url + "/api/evidence", data=_evidence_form(small), headers=auth) as r:
                assert r.status == 201, await r.text()
            before = _peak_rss_kib(served.proc.pid)
            async with s.post(served.url + "/api/evidence", data=_evidence_form(big), headers=auth) as r:
                assert r.status == 201, await r.text()
                assert (await r.json())["size"] == big.stat().st_size
            growth = _peak_rss_kib(served.proc.pid) - before
    assert growth < 16 * 1024, f"peak RSS grew {growth} KiB for a {size // 1024} KiB upload"

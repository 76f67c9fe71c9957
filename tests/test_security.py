"""Security hardening on real servers and real SQLite files: CSV injection in exports, evidence
uploads streamed with the size limit enforced while reading, sessions revoked on logout, and a
limit on request header size."""

from __future__ import annotations

import csv
import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from app.commands import cmd_findings
from app.findings import Change, Delta
from app.models import Result
from app.sandbox.serve import RunningSandbox, free_port
from app.store import Store
from tests.conftest import ROOT
from tests.helpers import ADMIN, SECRET_KEY, product_settings, running_app

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
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LP_")}
    env |= {
        "LP_DATABASE": str(tmp_path / "lp.sqlite3"),
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

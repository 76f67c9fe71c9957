"""Personnel files: a row without a valid status is refused, naming the row, and nothing is imported.

Through the console script (exit 2, one line on stderr) and the API's import route (400), both
against a real database (an SQLite file, or PostgreSQL) that already holds an offboarded person: a
bad file must not reactivate her, nor add anyone.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from app.sandbox.serve import RunningSandbox, free_port
from tests.helpers import ADMIN, RunningApp, product_settings, running_app
from tests.pgcluster import rows

SCRIPT = Path(sys.executable).with_name("lowerplane-bitbucket")
HEADER = "email,name,kind,status,offboarded_on,bitbucket_account_id\n"
SEED = HEADER + "carol@acme.example,Carol,employee,offboarded,2026-10-31,557058:carol\n"
AUTH = {"Authorization": f"Bearer {ADMIN}"}

# (file name, content, the row the one-line reason names)
BAD_FILES = [
    (
        "people.json",
        '[{"email": "carol@acme.example", "name": "Carol", "status": "active"},\n'
        ' {"email": "dave@acme.example", "name": "Dave"}]',
        "people.json: entry 2, field status: required",
    ),
    (
        "people.json",
        '{"people": [{"email": "dave@acme.example", "name": "Dave", "status": "on leave"}]}',
        "people.json: entry 1, field status: must be active or offboarded",
    ),
    (
        "people.csv",
        HEADER + "carol@acme.example,Carol,employee,active,,557058:carol\ndave@acme.example,Dave,employee,,,\n",
        "people.csv:3, field status: required",
    ),
    (
        "people.csv",
        "email,name,bitbucket_account_id\ncarol@acme.example,Carol,557058:carol\n",
        "people.csv:1: the header has no status column",
    ),
    (
        "people.csv",
        HEADER + "dave@acme.example,Dave,employee,retired,,\n",
        "people.csv:2, field status: must be active or offboarded",
    ),
]
IDS = [f"{name}-{i}" for i, (name, _, _) in enumerate(BAD_FILES)]


def import_file(db: Path | str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own console script, arguments from the test
        [str(SCRIPT), "personnel", "import", str(path)],
        env={"PATH": "/usr/bin:/bin", "LP_DATABASE": str(db)},
        cwd=path.parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def people(db: Path | str) -> list[tuple[object, object]]:
    return [(r["email"], r["status"]) for r in rows(db, "SELECT email, status FROM personnel ORDER BY email")]


@pytest.mark.sqlite_only(
    "the same validation on both stores: the API test runs every bad file on PostgreSQL, and the next "
    "test runs the command there (import, then a bad file refused)"
)
@pytest.mark.parametrize(("name", "content", "reason"), BAD_FILES, ids=IDS)
def test_cli_refuses_a_row_without_a_valid_status(
    name: str, content: str, reason: str, tmp_path: Path, database: Path | str
) -> None:
    db = database
    seed = tmp_path / "seed.csv"
    seed.write_text(SEED)
    assert import_file(db, seed).returncode == 0
    bad = tmp_path / name
    bad.write_text(content)
    proc = import_file(db, bad)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"error: {reason}")
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert people(db) == [("carol@acme.example", "offboarded")]  # nothing imported, Carol not reactivated


def test_cli_imports_rows_with_a_status(tmp_path: Path, database: Path | str) -> None:
    db = database
    good = tmp_path / "people.json"
    good.write_text(
        '[{"email": "Dave@acme.example", "name": "Dave", "status": "active"},'
        ' {"email": "carol@acme.example", "name": "Carol", "status": "OFFBOARDED", "offboarded_on": "2026-10-31"}]'
    )
    proc = import_file(db, good)
    assert proc.returncode == 0, proc.stderr
    assert people(db) == [("carol@acme.example", "offboarded"), ("dave@acme.example", "active")]
    name, content, reason = BAD_FILES[0]  # then a bad file: refused, nothing changed
    (tmp_path / name).write_text(content)
    proc = import_file(db, tmp_path / name)
    assert proc.returncode == 2 and proc.stderr.startswith(f"error: {reason}"), proc.stderr
    assert people(db) == [("carol@acme.example", "offboarded"), ("dave@acme.example", "active")]


@pytest.fixture
async def product(sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path) -> AsyncIterator[RunningApp]:
    port = free_port()
    async with running_app(product_settings(sandbox.api, tmp_path, port), port, session, background=False) as app:
        yield app


@pytest.mark.parametrize(("name", "content", "reason"), BAD_FILES, ids=IDS)
async def test_api_import_refuses_a_row_without_a_valid_status(
    product: RunningApp, session: aiohttp.ClientSession, name: str, content: str, reason: str
) -> None:
    api = product.url + "/api/personnel/import"
    async with session.post(api, data=SEED, headers=AUTH | {"Content-Type": "text/csv"}) as resp:
        assert resp.status == 200, await resp.text()
    kind = "application/json" if name.endswith(".json") else "text/csv"
    async with session.post(api, data=content, headers=AUTH | {"Content-Type": kind}) as resp:
        assert resp.status == 400
        problem = await resp.json()
    assert problem["title"] == "Nothing imported"
    assert reason.replace("people", "upload", 1) in problem["detail"]
    stored = await product.services.service.store.records.people()
    assert [(p.email, p.status) for p in stored] == [("carol@acme.example", "offboarded")]


async def test_api_person_without_status_does_not_reactivate(
    product: RunningApp, session: aiohttp.ClientSession
) -> None:
    api = product.url + "/api/personnel"
    async with session.post(api + "/import", data=SEED, headers=AUTH | {"Content-Type": "text/csv"}) as resp:
        assert resp.status == 200
    async with session.post(api, json={"email": "carol@acme.example", "name": "Carol"}, headers=AUTH) as resp:
        assert resp.status == 400
        assert "field status: required" in (await resp.json())["detail"]
    stored = await product.services.service.store.records.people()
    assert [(p.email, p.status) for p in stored] == [("carol@acme.example", "offboarded")]

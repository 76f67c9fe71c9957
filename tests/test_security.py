"""Security hardening on real servers and real SQLite files: CSV injection in exports, evidence
uploads streamed with the size limit enforced while reading, sessions revoked on logout, and a
limit on request header size."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import aiohttp

from app.commands import cmd_findings
from app.findings import Change, Delta
from app.models import Result
from app.sandbox.serve import RunningSandbox, free_port
from app.store import Store
from tests.helpers import ADMIN, product_settings, running_app

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

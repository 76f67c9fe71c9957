"""Downloads from the dashboard: a signed-in user (session cookie) gets the CSV export, evidence
files and the audit pack, as the Bearer token does; no cookie and no token is 401. A real server
on loopback against the sandbox, a real SQLite file."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from app.sandbox.serve import RunningSandbox, free_port
from tests.helpers import ADMIN, RunningApp, product_settings, running_app, wait_for

PDF = b"%PDF-1.4 authentication policy requiring 2SV"


@pytest.fixture
async def product(sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path) -> AsyncIterator[RunningApp]:
    port = free_port()
    async with running_app(product_settings(sandbox.api, tmp_path, port), port, session) as app:
        store = app.services.service.store

        async def reconciled() -> bool:
            return len(await store.results.query(check="repo-classified")) == 6

        await wait_for(reconciled, within=30)
        yield app


async def _cookie(app: RunningApp) -> str:
    async with (
        aiohttp.ClientSession() as s,
        s.post(app.url + "/login", data={"token": ADMIN, "next": "/"}, allow_redirects=False) as r,
    ):
        assert r.status == 303
        return r.cookies["lp_session"].value


async def _get(app: RunningApp, path: str, headers: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
    async with aiohttp.ClientSession() as s, s.get(app.url + path, headers=headers, allow_redirects=False) as r:
        return r.status, await r.read(), dict(r.headers)


async def _upload(app: RunningApp) -> int:
    form = aiohttp.FormData()
    form.add_field("check", "workspace-mfa-enforced")
    form.add_field("workspace", "acme")
    form.add_field("file", PDF, filename="auth-policy.pdf", content_type="application/pdf")
    async with (
        aiohttp.ClientSession() as s,
        s.post(app.url + "/api/evidence", data=form, headers={"Authorization": f"Bearer {ADMIN}"}) as r,
    ):
        assert r.status == 201, await r.text()
        return int((await r.json())["id"])


async def test_a_signed_in_user_downloads_the_csv_and_evidence_files(product: RunningApp) -> None:
    eid = await _upload(product)
    cookie = {"Cookie": f"lp_session={await _cookie(product)}"}
    status, body, headers = await _get(product, "/api/exports/findings.csv", cookie)
    assert status == 200 and headers["Content-Type"].startswith("text/csv")
    assert body.decode().splitlines()[0].startswith("workspace,check,severity")
    assert "acme/web" in body.decode()
    status, body, _ = await _get(product, f"/api/evidence/{eid}/file", cookie)
    assert status == 200 and body == PDF
    # the dashboard's own pages link to these very URLs
    _, page, _ = await _get(product, "/findings", cookie)
    assert b'href="/api/exports/findings.csv"' in page
    _, page, _ = await _get(product, "/evidence", cookie)
    assert f'href="/api/evidence/{eid}/file"'.encode() in page

    # the token still works; nothing, a forged cookie or a wrong token does not
    assert (await _get(product, "/api/exports/findings.csv", {"Authorization": f"Bearer {ADMIN}"}))[0] == 200
    for headers in ({}, {"Cookie": "lp_session=forged.1.sig"}, {"Authorization": "Bearer wrong"}):
        assert (await _get(product, f"/api/evidence/{eid}/file", headers))[0] == 401
        assert (await _get(product, "/api/exports/findings.csv", headers))[0] == 401
    # a wrong token is refused even next to a valid session cookie
    status, _, _ = await _get(product, "/api/exports/findings.csv", cookie | {"Authorization": "Bearer wrong"})
    assert status == 401


async def test_the_audit_pack_holds_findings_history_evidence_and_controls(product: RunningApp) -> None:
    eid = await _upload(product)
    await product.services.worker.drain()
    cookie = {"Cookie": f"lp_session={await _cookie(product)}"}
    status, body, headers = await _get(product, "/api/exports/audit-pack.zip", cookie)
    assert status == 200 and headers["Content-Type"] == "application/zip"
    assert "attachment; filename=audit-pack-" in headers["Content-Disposition"]
    zf = zipfile.ZipFile(io.BytesIO(body))
    names = set(zf.namelist())
    expected = {
        "summary.html",
        "findings.csv",
        "findings.json",
        "history.csv",
        "history.json",
        "exceptions.json",
        "evidence.json",
        "scope-report.json",
        "controls.json",
        "SHA256SUMS",
        f"evidence/{eid}-auth-policy.pdf",
    }
    assert {f"audit-pack/{n}" for n in expected} == names

    def read(name: str) -> bytes:
        return zf.read(f"audit-pack/{name}")

    findings = json.loads(read("findings.json"))
    assert {f["check"] for f in findings} >= {"repo-classified", "workspace-mfa-enforced"}
    assert len(read("findings.csv").decode().splitlines()) == len(findings) + 1
    history = json.loads(read("history.json"))
    assert history and all(h["at"][:10] <= headers["Content-Disposition"][-14:-4] for h in history)
    evidence = json.loads(read("evidence.json"))
    assert [e["id"] for e in evidence] == [eid]
    assert read(f"evidence/{eid}-auth-policy.pdf") == PDF
    assert evidence[0]["sha256"] == hashlib.sha256(PDF).hexdigest()
    sums = dict(line.split("  ")[::-1] for line in read("SHA256SUMS").decode().splitlines())
    for name in expected - {"SHA256SUMS"}:
        assert sums[name] == hashlib.sha256(read(name)).hexdigest(), name
    controls = {c["check"]: c["controls"] for c in json.loads(read("controls.json"))}
    assert "SOC 2 CC6.2" in controls["offboarded-access-removed"]
    assert "ISO 27001:2022 A.8.5" in controls["member-mfa-enabled"]
    summary = read("summary.html").decode()
    assert "Branch Protection rules should be enforced" in summary and "SOC 2 CC8.1" in summary
    scope = json.loads(read("scope-report.json"))
    assert scope[0]["workspaces"] == ["acme"] and scope[0]["scope_report"]
    assert ADMIN not in body.decode("latin-1")

    # a period before anything happened has no history and no evidence
    status, body, _ = await _get(product, "/api/exports/audit-pack.zip?from=2020-01-01&to=2020-01-31", cookie)
    assert status == 200
    old = zipfile.ZipFile(io.BytesIO(body))
    assert json.loads(old.read("audit-pack/history.json")) == []
    assert json.loads(old.read("audit-pack/evidence.json")) == []
    assert (await _get(product, "/api/exports/audit-pack.zip?from=2020-02-01&to=2020-01-01", cookie))[0] == 400
    assert (await _get(product, "/api/exports/audit-pack.zip?from=yesterday", cookie))[0] == 400
    assert (await _get(product, "/api/exports/audit-pack.zip", {}))[0] == 401


async def test_the_repositories_page_shows_restriction_freshness(product: RunningApp) -> None:
    """Issue 13: each repository's restriction freshness (age of the last good reading) is on the
    dashboard too, next to the API and /metrics: read repositories say how long ago; a repository
    whose restrictions were never read says never; an empty one (no main branch) has none."""
    store = product.services.service.store
    cookie = await _cookie(product)
    status, body, _ = await _get(product, "/repositories", {"Cookie": f"lp_session={cookie}"})
    assert status == 200
    cells = [c.decode() for c in _cells(body)]
    assert cells and all(c in ("< 1 h ago", "never", "—") for c in cells), cells
    assert "< 1 h ago" in cells  # the first pass read them just now
    # Forget the restrictions readings: those repositories are shown as never read.
    await store.db.execute("DELETE FROM snapshots WHERE key LIKE 'restrictions:%'")
    status, body, _ = await _get(product, "/repositories", {"Cookie": f"lp_session={cookie}"})
    cells = [c.decode() for c in _cells(body)]
    assert "< 1 h ago" not in cells and "never" in cells, cells


def _cells(html: bytes) -> list[bytes]:
    import re

    return [c.replace(b"&lt;", b"<") for c in re.findall(rb'<td class="restrictions-age">([^<]*)</td>', html)]

"""End to end: the sample sandbox → reconcile → findings, with known answers for all eight tests."""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from app import commands
from app.sandbox.serve import RunningSandbox
from app.services import build_services
from app.settings import Settings
from app.store import Store
from tests.conftest import READONLY_TOKEN, TOKEN
from tests.pgcluster import database_for

PDF = b"%PDF-1.4 2SV report\n"
PEOPLE = """email,name,kind,status,offboarded_on,bitbucket_account_id
alice@acme.example,Alice Admin,employee,active,,557058:alice
bob@acme.example,Bob Builder,employee,active,,
carol@acme.example,Carol Gone,employee,offboarded,2026-10-01,557058:carol
frank@acme.example,Frank Former,contractor,offboarded,2026-11-01,
ci-bot@acme.example,CI Bot,service-account,active,,557058:cibot
"""

EXPECTED = {
    "repo-classified": {
        "acme/api": "pass",
        "acme/playground": "pass",
        "acme/web": "fail",
        "acme/billing": "fail",
        "acme/docs": "fail",
        "acme/empty-repo": "fail",
    },
    "branch-protection-enforced": {
        "acme/api": "pass",
        "acme/web": "fail",
        "acme/billing": "fail",
        "acme/docs": "pass",
        "acme/playground": "not_applicable",
        "acme/empty-repo": "not_applicable",
    },
    "merge-requires-passing-builds": {
        "acme/api": "pass",
        "acme/web": "fail",
        "acme/billing": "fail",
        "acme/docs": "pass",
        "acme/playground": "not_applicable",
        "acme/empty-repo": "not_applicable",
    },
    "merge-requires-peer-review": {
        "acme/api": "pass",
        "acme/web": "pass",
        "acme/billing": "fail",
        "acme/docs": "pass",
        "acme/playground": "not_applicable",
        "acme/empty-repo": "not_applicable",
    },
    "pipelines-enabled": {
        "acme/api": "pass",
        "acme/web": "fail",
        "acme/billing": "fail",
        "acme/docs": "pass",
        "acme/playground": "not_applicable",
        "acme/empty-repo": "not_applicable",  # no main branch
    },
    "workspace-mfa-enforced": {"acme": "pass"},
    "member-mfa-enabled": {
        "557058:alice": "pass",
        "557058:bob": "pass",
        "557058:carol": "pass",
        "557058:dave": "pass",
        "557058:cibot": "pass",
        "557058:frank": "pass",
        "557058:gina": "fail",
    },
    "offboarded-access-removed": {
        "557058:alice": "pass",
        "557058:bob": "pass",
        "557058:carol": "fail",
        "557058:dave": "unknown",
        "557058:cibot": "unknown",  # a service account without an owner
        "557058:frank": "fail",
        "557058:gina": "unknown",
    },
}


def settings_for(sb: RunningSandbox, tmp: Path, **extra: str) -> Settings:
    env = {
        "LP_DATABASE": str(database_for(tmp / "lp.sqlite3")),  # or the PostgreSQL run's database
        "LP_DATA_DIR": str(tmp),
        "LP_BITBUCKET_API_URL": sb.api,
        "LP_BITBUCKET_TOKEN": TOKEN,
        "LP_WORKSPACES": "acme",
        "LP_CHECKS_ENABLED": "pipelines-enabled",
        **extra,
    }
    return Settings.from_env(env, env_file=None)


async def reconcile(settings: Settings, session: aiohttp.ClientSession) -> dict[str, Any]:
    """A full pass through the event log, as `lowerplane-bitbucket reconcile` runs it."""
    services = await build_services(settings, session, max_attempts=2, backoff_initial=0.01, backoff_max=0.02)
    try:
        await services.service.ensure_token_connection()
        [eid] = await services.service.internal_event("lp:reconcile", {"workspace": "acme", "tier": "full"})
        await services.worker.drain()
        row = await services.service.store.events.get(eid)
        assert row is not None and row.state == "done" and row.caused is not None
        return row.caused
    finally:
        await services.service.store.close()


async def findings(settings: Settings, **filters: Any) -> list[dict[str, Any]]:
    out = io.StringIO()
    await commands.cmd_findings(
        settings, filters.get("workspace"), filters.get("check"), filters.get("status"), "json", out
    )
    data: list[dict[str, Any]] = json.loads(out.getvalue())
    return data


def statuses(items: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    table: dict[str, dict[str, str]] = {}
    for i in items:
        table.setdefault(i["check"], {})[i["subject"]] = i["status"]
    return table


async def _act(session: aiohttp.ClientSession, sb: RunningSandbox, path: str, body: dict[str, Any]) -> None:
    async with session.post(f"{sb.url}/_sandbox/{path}", json=body) as resp:
        assert resp.status == 200, await resp.text()


async def test_sample_workspace_known_answers(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    settings = settings_for(sandbox, tmp_path)
    out = io.StringIO()
    await commands.cmd_rule_add(settings, "non-production", "SAND", None, None, out)
    await reconcile(settings, session)
    await commands.cmd_classify(settings, "acme/api", "production", out)
    people = tmp_path / "people.csv"
    people.write_text(PEOPLE)
    await commands.cmd_personnel_import(settings, people, out)
    report = tmp_path / "2sv-report.pdf"
    report.write_bytes(PDF)
    await commands.cmd_evidence_add(settings, "member-mfa-enabled", "acme", None, None, report, out)
    await commands.cmd_evidence_add(settings, "workspace-mfa-enforced", "acme", None, None, report, out)
    # Gina joins after the 2SV report was uploaded: the report does not cover her.
    await _act(session, sandbox, "workspaces/acme/add-member", {"account_id": "557058:gina", "email": "gina@x.example"})
    await reconcile(settings, session)

    items = await findings(settings)
    assert statuses(items) == EXPECTED
    one = next(i for i in items if i["check"] == "branch-protection-enforced" and i["subject"] == "acme/web")
    assert set(one) == {
        "workspace",
        "check",
        "severity",
        "subject_type",
        "subject",
        "subject_uuid",
        "subject_name",
        "status",
        "message",
        "details",
        "first_seen",
        "last_changed",
    }
    assert one["details"]["missing"] == ["delete"] and one["severity"] == "high" and one["subject_name"] == "web"
    assert one["first_seen"].endswith("Z") and one["subject_uuid"].startswith("{")
    frank = next(i for i in items if i["check"] == "offboarded-access-removed" and i["subject"] == "557058:frank")
    assert frank["details"]["linked_by"] == "email"  # linked through the members email filter

    # A second reconcile with nothing changed records no transition and writes no result row.
    store = await Store.open(settings.database)
    before = await store.results.count_history()
    await store.close()
    again = await reconcile(settings, session)
    assert again["rows_written"] == 0 and again["changes"] == []
    store = await Store.open(settings.database)
    assert await store.results.count_history() == before
    await store.close()

    # The CLI in a real process prints the same JSON.
    env = dict(os.environ, LP_DATABASE=str(settings.database), LP_LOG_LEVEL="warning")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app",
        "findings",
        "--format",
        "json",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, _ = await proc.communicate()
    assert proc.returncode == 0 and json.loads(stdout) == items
    filtered = await findings(settings, check="repo-classified", status="fail")
    assert {i["subject"] for i in filtered} == {"acme/web", "acme/billing", "acme/docs", "acme/empty-repo"}


async def test_exception_and_drift_between_passes(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    settings = settings_for(sandbox, tmp_path)
    await reconcile(settings, session)
    out = io.StringIO()
    await commands.cmd_exception_add(
        settings, "branch-protection-enforced", "acme/billing", "cto", "legacy system", "2027-06-01", out
    )
    assert "fail → excepted" in out.getvalue()
    # Drift no webhook reports: a restriction removed on api is caught by the next pass.
    await _act(session, sandbox, "repos/acme/api/remove-restriction", {"kind": "delete", "pattern": "main"})
    report = await reconcile(settings, session)
    assert report["changes"] == ["branch-protection-enforced acme/api: pass → fail"]
    await _act(session, sandbox, "repos/acme/playground/delete-repo", {})
    report = await reconcile(settings, session)
    assert report["changes"] and all(c.endswith("→ retired") and "acme/playground" in c for c in report["changes"])


async def test_5xx_keeps_the_earlier_result_as_stale(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    settings = settings_for(sandbox, tmp_path)
    await reconcile(settings, session)
    before = {(i["check"], i["subject"]): i for i in await findings(settings)}
    sandbox.sandbox.faults.force_status = {r"/repositories/acme/web/branch-restrictions": 503}
    await _act(session, sandbox, "repos/acme/web/add-restriction", {"kind": "delete", "pattern": "main"})
    report = await reconcile(settings, session)
    assert sorted(report["changes"]) == [
        f"{check} acme/web: stale"
        for check in ("branch-protection-enforced", "merge-requires-passing-builds", "merge-requires-peer-review")
    ]
    after = {(i["check"], i["subject"]): i for i in await findings(settings)}
    web = after[("branch-protection-enforced", "acme/web")]
    assert web["status"] == before[("branch-protection-enforced", "acme/web")]["status"] == "fail"
    assert "stale_since" in web["details"]
    sandbox.sandbox.faults.force_status = {}
    await reconcile(settings, session)
    healed = {(i["check"], i["subject"]): i for i in await findings(settings)}
    assert healed[("branch-protection-enforced", "acme/web")]["status"] == "pass"
    assert "stale_since" not in healed[("branch-protection-enforced", "acme/web")]["details"]


async def test_missing_admin_scope_is_unknown_naming_it(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    settings = settings_for(sandbox, tmp_path, LP_BITBUCKET_TOKEN=READONLY_TOKEN)
    await reconcile(settings, session)
    items = await findings(settings, check="branch-protection-enforced", status="unknown")
    assert {i["subject"] for i in items} == {"acme/api", "acme/web", "acme/billing", "acme/docs", "acme/playground"}
    assert all(i["details"]["missing_scope"] == "repository:admin" for i in items)
    pipelines = await findings(settings, check="pipelines-enabled")
    assert len(pipelines) == 6
    assert {i["subject"]: i["status"] for i in pipelines if i["status"] != "unknown"} == {
        "acme/empty-repo": "not_applicable"
    }
    assert all("repository:admin" in i["message"] for i in pipelines if i["status"] == "unknown")


@pytest.mark.parametrize(
    "argv",
    [
        ["classify", "acme/api", "prod"],
        ["findings", "--status", "bad"],
        ["exceptions", "add", "--check", "repo-classified"],
    ],
)
def test_cli_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from app.cli import main

    assert main(argv) == 2
    assert capsys.readouterr().err.startswith("error: ")

"""End to end against the sandbox: the cases where the product gave a wrong answer before
(issue "right or unknown, never wrong")."""

from __future__ import annotations

import io
import json
import sqlite3
from pathlib import Path

import aiohttp
import pytest

from app import commands, errors
from app.sandbox.serve import RunningSandbox
from app.store import Store
from app.store.schema import MIGRATIONS
from tests.conftest import TOKEN
from tests.test_reconcile_e2e import _act, findings, reconcile, settings_for

PDF = b"%PDF-1.4 2SV report\n"


def _scopes(sandbox: RunningSandbox, token: str) -> set[str]:
    [cred] = [c for c in sandbox.sandbox.state.credentials if c.token == token]
    return cred.scopes


def by_subject(items: list[dict[str, object]]) -> dict[tuple[object, object], dict[str, object]]:
    return {(i["check"], i["subject"]): i for i in items}


# -- a credential without the `account` scope -------------------------------------------------------------
async def test_without_account_scope_repository_tests_run_and_member_tests_are_unknown(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    _scopes(sandbox, TOKEN).discard("account")
    settings = settings_for(sandbox, tmp_path)
    await reconcile(settings, session)  # finishes (it crashed on the 403 marker before)
    items = by_subject(await findings(settings))
    assert items[("branch-protection-enforced", "acme/api")]["status"] == "pass"
    assert items[("branch-protection-enforced", "acme/web")]["status"] == "fail"
    for check in ("member-mfa-enabled", "offboarded-access-removed"):
        member_results = [i for (c, _), i in items.items() if c == check]
        assert len(member_results) == 1
        [r] = member_results
        details = r["details"]
        assert isinstance(details, dict)
        assert r["status"] == "unknown" and r["subject"] == "acme" and r["subject_type"] == "workspace"
        assert details["reason"] == "scope_missing" and details["missing_scope"] == "account"
        assert "`account`" in str(r["message"])

    # The scope granted again: members are read and the workspace-level unknowns retire.
    _scopes(sandbox, TOKEN).add("account")
    await reconcile(settings, session)
    items = by_subject(await findings(settings))
    assert ("offboarded-access-removed", "acme") not in items
    assert items[("offboarded-access-removed", "557058:alice")]["status"] == "unknown"  # not linked


# -- stale member data ---------------------------------------------------------------------------------------
PEOPLE = """email,name,kind,status,offboarded_on,bitbucket_account_id
frank@acme.example,Frank Former,contractor,offboarded,2026-01-01,
bob@acme.example,Bob Builder,employee,active,,
"""


async def test_failed_email_lookup_keeps_email_linked_results(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    settings = settings_for(sandbox, tmp_path)
    people = tmp_path / "people.csv"
    people.write_text(PEOPLE)
    await reconcile(settings, session)
    await commands.cmd_personnel_import(settings, people, io.StringIO())
    await reconcile(settings, session)
    before = by_subject(await findings(settings, check="offboarded-access-removed"))
    assert before[("offboarded-access-removed", "557058:frank")]["status"] == "fail"
    assert before[("offboarded-access-removed", "557058:bob")]["status"] == "pass"

    sandbox.sandbox.faults.force_status = {r"/workspaces/acme/members\?q=": 503}
    report = await reconcile(settings, session)
    after = by_subject(await findings(settings, check="offboarded-access-removed"))
    for who, status in (("557058:frank", "fail"), ("557058:bob", "pass")):
        r = after[("offboarded-access-removed", who)]
        assert r["status"] == status and "stale_since" in r["details"]  # type: ignore[operator]
    assert not [c for c in report["changes"] if "→" in c and "stale" not in c]


async def test_failed_member_list_marks_kept_results_stale(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    settings = settings_for(sandbox, tmp_path)
    await reconcile(settings, session)
    before = by_subject(await findings(settings, check="member-mfa-enabled"))
    sandbox.sandbox.faults.force_status = {r"/workspaces/acme/members": 503}
    await reconcile(settings, session)
    after = by_subject(await findings(settings, check="member-mfa-enabled"))
    assert after.keys() == before.keys() and after
    for key, r in after.items():
        assert r["status"] == before[key]["status"] and "stale_since" in r["details"]  # type: ignore[operator]


# -- a workspace 2SV report and a broken membership ----------------------------------------------------------
async def test_member_who_left_and_rejoined_after_the_report_is_not_covered(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    settings = settings_for(sandbox, tmp_path)
    await reconcile(settings, session)
    report = tmp_path / "2sv.pdf"
    report.write_bytes(PDF)
    await commands.cmd_evidence_add(settings, "member-mfa-enabled", "acme", None, None, report, io.StringIO())
    await _act(session, sandbox, "workspaces/acme/remove-member", {"account_id": "557058:bob"})
    await reconcile(settings, session)
    await _act(session, sandbox, "workspaces/acme/add-member", {"account_id": "557058:bob"})
    await reconcile(settings, session)
    items = by_subject(await findings(settings, check="member-mfa-enabled"))
    assert items[("member-mfa-enabled", "557058:alice")]["status"] == "pass"
    bob = items[("member-mfa-enabled", "557058:bob")]
    assert bob["status"] == "fail" and bob["details"]["reason"] == "evidence_missing"  # type: ignore[index]


# -- exceptions keyed by the subject --------------------------------------------------------------------------
async def test_exception_follows_a_rename_and_never_passes_to_a_newcomer(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    settings = settings_for(sandbox, tmp_path)
    await reconcile(settings, session)
    out = io.StringIO()
    await commands.cmd_exception_add(
        settings, "branch-protection-enforced", "acme/billing", "cto", "legacy system", "2027-06-01", out
    )
    assert "valid through 2027-06-01" in out.getvalue()
    await _act(session, sandbox, "repos/acme/billing/update", {"name": "billing-legacy"})
    await _act(session, sandbox, "workspaces/acme/create-repo", {"slug": "billing"})
    await reconcile(settings, session)
    items = by_subject(await findings(settings, check="branch-protection-enforced"))
    assert items[("branch-protection-enforced", "acme/billing-legacy")]["status"] == "excepted"
    assert items[("branch-protection-enforced", "acme/billing")]["status"] == "fail"


@pytest.mark.parametrize(
    ("check", "subject"),
    [
        ("branch-protection-enforced", "acme/never-existed"),
        ("offboarded-access-removed", "557058:nobody"),
        ("branch-protection-enforced", "557058:alice"),  # a member is no subject of a repository test
    ],
)
async def test_exception_for_an_unknown_subject_is_refused(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path, check: str, subject: str
) -> None:
    settings = settings_for(sandbox, tmp_path)
    await reconcile(settings, session)
    with pytest.raises(errors.ConfigError, match=r"no .* the product has seen"):
        await commands.cmd_exception_add(settings, check, subject, "cto", "r", "2027-01-01", io.StringIO())
    store = await Store.open(settings.database)
    try:
        assert await store.records.exception_rows() == []
    finally:
        await store.close()


async def test_exception_for_a_member_by_account_id(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    settings = settings_for(sandbox, tmp_path)
    await reconcile(settings, session)
    out = io.StringIO()
    await commands.cmd_exception_add(settings, "member-mfa-enabled", "557058:bob", "cto", "on leave", "2027-01-01", out)
    items = by_subject(await findings(settings, check="member-mfa-enabled"))
    assert items[("member-mfa-enabled", "557058:bob")]["status"] == "excepted"
    assert items[("member-mfa-enabled", "557058:alice")]["status"] == "fail"


async def test_exception_for_a_known_member_while_the_member_list_cannot_be_read(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Found by the state machine: with the `account` scope taken away after a pass had seen the
    members, an exception for one of them was refused as "never seen". A member with recorded
    results was seen; a member never seen is still refused."""
    settings = settings_for(sandbox, tmp_path)
    await reconcile(settings, session)
    _scopes(sandbox, TOKEN).discard("account")
    await reconcile(settings, session)
    out = io.StringIO()
    await commands.cmd_exception_add(settings, "member-mfa-enabled", "557058:bob", "cto", "on leave", "2027-01-01", out)
    assert "557058:bob" in out.getvalue()
    with pytest.raises(errors.ConfigError, match="has seen"):
        await commands.cmd_exception_add(settings, "member-mfa-enabled", "557058:nobody", "cto", "r", "2027-01-01")
    # The scope granted again: the exception covers the member as before.
    _scopes(sandbox, TOKEN).add("account")
    await reconcile(settings, session)
    items = by_subject(await findings(settings, check="member-mfa-enabled"))
    assert items[("member-mfa-enabled", "557058:bob")]["status"] == "excepted"


# -- the migration of exceptions keyed by name ------------------------------------------------------------------
def _old_database(path: Path) -> None:
    """A database as schema 4 left it, with exceptions recorded by name."""
    db = sqlite3.connect(path, timeout=30)
    for script in MIGRATIONS[:4]:
        db.executescript(script)
    db.execute("PRAGMA user_version=4")
    repo = {"uuid": "{b1}", "full_name": "acme/billing", "name": "billing", "slug": "billing", "workspace": "acme"}
    db.execute(
        "INSERT INTO snapshots (key, workspace, kind, content, hash, fetched_at) VALUES (?,?,?,?,?,?)",
        ("repo:{b1}", "acme", "repo", json.dumps(repo), "h", "2026-11-01T00:00:00Z"),
    )
    db.execute(
        """INSERT INTO results (check_id, subject_key, workspace, subject_type, subject, severity, status, message,
           details, fingerprint, first_seen, last_changed) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)""",
        (
            "member-mfa-enabled",
            "557058:bob",
            "acme",
            "member",
            "557058:bob",
            "critical",
            "fail",
            "m",
            "{}",
            "f",
            "2026-11-01T00:00:00Z",
            "2026-11-01T00:00:00Z",
        ),
    )
    for subject in ("acme/billing", "557058:bob", "acme/gone"):
        check = "member-mfa-enabled" if subject.startswith("557058") else "branch-protection-enforced"
        db.execute(
            """INSERT INTO exceptions (check_id, subject, owner, reason, created_by, created_at, expires_at)
               VALUES (?,?,?,?,?,?,?)""",
            (check, subject, "cto", "legacy", "cli", "2026-11-01T00:00:00Z", "2027-06-01T00:00:00+00:00"),
        )
    db.commit()
    db.close()


async def test_migration_keys_exceptions_recorded_by_name(tmp_path: Path, store_kind: str) -> None:
    if store_kind != "sqlite":  # built with sqlite3; PostgreSQL's: tests/test_postgresql_storage.py (schema 3 to now)
        pytest.skip("an SQLite file of schema 4")
    path = tmp_path / "old.sqlite3"
    _old_database(path)
    store = await Store.open(path)
    try:
        rows = {r["subject"]: r for r in await store.records.exception_rows()}
        assert rows["acme/billing"]["subject_key"] == "{b1}" and rows["acme/billing"]["inactive_reason"] is None
        assert rows["557058:bob"]["subject_key"] == "557058:bob"
        gone = rows["acme/gone"]
        assert gone["subject_key"] is None and "acme/gone" in gone["inactive_reason"]
        active = {(g.check, g.subject) for g in await store.records.exceptions()}
        assert active == {("branch-protection-enforced", "{b1}"), ("member-mfa-enabled", "557058:bob")}
    finally:
        await store.close()


# -- a 403 with every scope granted is a missing permission ---------------------------------------------------------
def test_403_with_the_scope_granted_names_no_scope() -> None:
    from app.bitbucket.sansio import raise_for_status

    granted = {"X-Accepted-OAuth-Scopes": "repository:admin", "X-OAuth-Scopes": "repository, repository:admin"}
    with pytest.raises(errors.ForbiddenError) as info:
        raise_for_status(403, granted, b"{}", "/repositories/acme/a/branch-restrictions")
    assert info.value.required_scope is None  # the user is not an admin: a permission, not a scope
    lacking = {"X-Accepted-OAuth-Scopes": "repository:admin", "X-OAuth-Scopes": "repository"}
    with pytest.raises(errors.ForbiddenError) as info:
        raise_for_status(403, lacking, b"{}", "/repositories/acme/a/branch-restrictions")
    assert info.value.required_scope == "repository:admin"


async def test_2sv_report_without_a_readable_member_list_is_refused(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    _scopes(sandbox, TOKEN).discard("account")
    settings = settings_for(sandbox, tmp_path)
    await reconcile(settings, session)
    report = tmp_path / "2sv.pdf"
    report.write_bytes(PDF)
    with pytest.raises(errors.ConfigError, match="`account` scope"):
        await commands.cmd_evidence_add(settings, "member-mfa-enabled", "acme", None, None, report, io.StringIO())


async def test_member_evidence_for_someone_never_seen_is_refused(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    settings = settings_for(sandbox, tmp_path)
    await reconcile(settings, session)
    report = tmp_path / "bob.pdf"
    report.write_bytes(PDF)
    with pytest.raises(errors.ConfigError, match=r"--member: '557058:nobody' is no member"):
        await commands.cmd_evidence_add(
            settings, "member-mfa-enabled", "acme", "557058:nobody", None, report, io.StringIO()
        )
    out = io.StringIO()  # by uuid: recorded under the account id
    await commands.cmd_evidence_add(
        settings, "member-mfa-enabled", "acme", "{b0b0b0b0-0000-4000-8000-000000000002}", None, report, out
    )
    items = by_subject(await findings(settings, check="member-mfa-enabled"))
    assert items[("member-mfa-enabled", "557058:bob")]["status"] == "pass"


# -- shrunk from the state machine ----------------------------------------------------------------------------------
async def test_a_new_repository_whose_first_read_fails_is_unknown_fetch_failed(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    settings = settings_for(sandbox, tmp_path)
    await reconcile(settings, session)
    await _act(session, sandbox, "workspaces/acme/create-repo", {"slug": "fresh"})
    sandbox.sandbox.faults.force_status = {r"/pipelines_config": 503}
    await reconcile(settings, session)
    items = by_subject(await findings(settings, check="pipelines-enabled"))
    fresh = items[("pipelines-enabled", "acme/fresh")]
    assert fresh["status"] == "unknown" and fresh["details"]["reason"] == "fetch_failed"  # type: ignore[index]
    api = items[("pipelines-enabled", "acme/api")]
    assert api["status"] == "pass" and "stale_since" in api["details"]  # type: ignore[operator]

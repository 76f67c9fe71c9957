"""The use-case layer (app/actions.py) called directly, as the CLI, the API and the dashboard call it:
on a real SQLite store filled by a real pass against the sandbox on loopback. Each action refuses bad
input with a typed error and nothing written, or writes, appends its event and returns a typed result."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest

from app import actions, errors
from app.sandbox.serve import RunningSandbox
from app.services import Services, build_services
from app.store.events import EventRow
from tests.helpers import Receiver, product_settings

PDF = b"%PDF-1.4 two-step verification policy\n"
FAR = "2026-12-31"


async def _services(sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp: Path, **extra: str) -> Services:
    settings = product_settings(sandbox.api, tmp, 8999, **extra)
    return await build_services(settings, session, max_attempts=2, backoff_initial=0.01, backoff_max=0.02)


@pytest.fixture
async def services(sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path) -> AsyncIterator[Services]:
    """The product after one full pass of the sample workspace ``acme`` (what it has seen)."""
    s = await _services(
        sandbox,
        session,
        tmp_path,
        LP_OAUTH_CLIENT_ID="sandbox-member-client",
        LP_OAUTH_CLIENT_SECRET="sandbox-member-secret",
    )
    try:
        await actions.prepare_connections(s)
        [row] = await actions.settle(s, (await actions.reconcile_now(s, workspace="acme")).events)
        assert row.state == "done"
        yield s
    finally:
        await s.service.store.close()


async def _events(services: Services, ids: list[int]) -> list[EventRow]:
    rows = [await services.service.store.events.get(i) for i in ids]
    assert all(r is not None for r in rows)
    return [r for r in rows if r is not None]


async def _count(services: Services) -> int:
    return len(await services.service.store.events.list(limit=10_000))


# -- classification ------------------------------------------------------------------------------------
async def test_classify_refuses_a_bad_class_and_an_unknown_repository_writing_nothing(services: Services) -> None:
    before = await _count(services)
    with pytest.raises(errors.RecordError, match="production or non-production"):
        await actions.classify(services, "acme/api", "prod", "cli")
    with pytest.raises(errors.NotFound, match="unknown repository 'acme/nope'") as info:
        await actions.classify(services, "acme/nope", "production", "cli")
    assert info.value.http_status == 404 and info.value.title == "Unknown repository"
    with pytest.raises(errors.NotFound):
        await actions.classify(services, "{00000000-0000-4000-8000-000000000000}", "production", "api")
    assert await services.service.store.records.classes() == {}
    assert await _count(services) == before


async def test_classify_by_name_or_uuid_writes_and_appends_its_event(services: Services) -> None:
    done = await actions.classify(services, "acme/api", "production", "cli")
    assert isinstance(done, actions.Classified)
    assert (done.workspace, done.full_name, done.cls) == ("acme", "acme/api", "production")
    assert await services.service.store.records.classes("acme") == {done.uuid: "production"}
    [event] = await _events(services, done.events)
    assert event.event_key == "lp:classification" and event.source == "internal"
    assert event.payload["repository_uuid"] == done.uuid and event.workspace == "acme"

    again = await actions.classify(services, done.uuid, "non-production", "api")  # the API names it by uuid
    assert again.full_name == "acme/api"
    assert await services.service.store.records.classes("acme") == {done.uuid: "non-production"}
    [row] = await actions.settle(services, again.events)
    assert row.state == "done"


async def test_rules_need_exactly_one_of_project_and_pattern(services: Services) -> None:
    with pytest.raises(errors.RecordError, match="exactly one"):
        await actions.add_rule(services, "production", project_key=None, name_glob=None, workspace=None, actor="cli")
    with pytest.raises(errors.RecordError, match="exactly one"):
        await actions.add_rule(services, "production", project_key="P", name_glob="*", workspace=None, actor="cli")
    with pytest.raises(errors.RecordError, match="class"):
        await actions.add_rule(services, "staging", project_key="P", name_glob=None, workspace=None, actor="cli")
    assert await services.service.store.records.rules() == []
    done = await actions.add_rule(
        services, "non-production", project_key=None, name_glob="sandbox-*", workspace="acme", actor="dashboard"
    )
    assert isinstance(done, actions.RuleAdded) and done.id > 0
    [rule] = await services.service.store.records.rules()
    assert (rule["id"], rule["class"], rule["name_glob"], rule["workspace"]) == (
        done.id,
        "non-production",
        "sandbox-*",
        "acme",
    )
    [event] = await _events(services, done.events)
    assert event.event_key == "lp:classification" and "repository_uuid" not in event.payload


# -- personnel and members -------------------------------------------------------------------------------
CSV = b"email,name,kind,status,offboarded_on,bitbucket_account_id\nalice@acme.example,Alice,employee,active,,\n"


async def test_personnel_import_is_all_or_nothing_and_appends_its_event(services: Services) -> None:
    with pytest.raises(errors.RecordError, match=r"people\.csv:2, field email"):
        actions.read_personnel(b"email,name,kind,status\nnot-an-email,X,employee,active\n", "people.csv")
    done = await actions.import_personnel(services, actions.read_personnel(CSV, "people.csv"), "api")
    assert isinstance(done, actions.PeopleImported)
    assert (done.count, done.new_emails) == (1, ["alice@acme.example"])
    assert [p.email for p in await services.service.store.records.people()] == ["alice@acme.example"]
    [event] = await _events(services, done.events)
    assert event.event_key == "lp:personnel" and event.payload["new_emails"] == ["alice@acme.example"]

    again = await actions.import_personnel(services, actions.read_personnel(CSV, "people.csv"), "api")
    assert again.new_emails == []  # known already: no email lookup needed

    linked = CSV.replace(b"active,,", b"active,,557058:alice")
    await actions.import_personnel(services, actions.read_personnel(linked, "people.csv"), "api")
    before = await _count(services)
    taken = CSV.replace(b"alice@acme.example,Alice", b"bob@acme.example,Bob").replace(
        b"active,,", b"active,,557058:alice"
    )
    with pytest.raises(errors.RecordError, match="557058:alice"):
        await actions.import_personnel(services, actions.read_personnel(taken, "people.csv"), "api")
    assert [p.email for p in await services.service.store.records.people()] == ["alice@acme.example"]
    assert await _count(services) == before


async def test_person_offboard_link_and_mark(services: Services) -> None:
    saved = await actions.save_person(
        services, {"email": "Bob@acme.example", "name": "Bob", "kind": "employee", "status": "active"}, "api"
    )
    assert saved.created and saved.person.email == "bob@acme.example"
    assert not (await actions.save_person(services, {**_row(saved.person.email), "name": "Robert"}, "api")).created

    with pytest.raises(errors.RecordError, match="date"):
        await actions.offboard(services, "bob@acme.example", "soon", "api")
    with pytest.raises(errors.NotFound, match=r"no one with email eve@acme\.example"):
        await actions.offboard(services, "eve@acme.example", None, "api")
    off = await actions.offboard(services, "BOB@acme.example", "2026-01-31", "dashboard")
    assert (off.email, off.on) == ("bob@acme.example", "2026-01-31")
    person = await services.service.store.records.person("bob@acme.example")
    assert person is not None and (person.status, person.offboarded_on) == ("offboarded", "2026-01-31")
    [event] = await _events(services, off.events)
    assert event.event_key == "lp:personnel"

    with pytest.raises(errors.NotFound, match="personnel directory"):
        await actions.link_member(services, "acme", "557058:bob", "eve@acme.example", "api")
    linked = await actions.link_member(services, "acme", "557058:bob", "bob@acme.example", "api")
    person = await services.service.store.records.person("bob@acme.example")
    assert person is not None and person.bitbucket_account_id == "557058:bob"
    [event] = await _events(services, linked.events)
    assert event.event_key == "lp:personnel" and event.workspace == "acme"

    with pytest.raises(errors.RecordError, match="mark must be"):
        await actions.mark_member(services, "acme", "557058:bot", "robot", "cto", "api")
    with pytest.raises(errors.RecordError, match="owner is required"):
        await actions.mark_member(services, "acme", "557058:bot", "service-account", "  ", "api")
    assert await services.service.store.records.marks("acme") == {}
    marked = await actions.mark_member(services, "acme", "557058:bot", "service-account", " cto ", "dashboard")
    assert marked.owner == "cto"
    assert await services.service.store.records.marks("acme") == {"557058:bot": ("service-account", "cto")}


def _row(email: str) -> dict[str, object]:
    return {"email": email, "name": "Bob", "kind": "employee", "status": "active"}


# -- evidence and exceptions ------------------------------------------------------------------------------
async def test_evidence_is_validated_recorded_and_evaluated(services: Services) -> None:
    with pytest.raises(errors.RecordError, match="check must be"):
        await actions.add_evidence(
            services,
            io.BytesIO(PDF),
            check="no-such-check",
            workspace="acme",
            member=None,
            filename="p.pdf",
            expires=None,
            actor="api",
        )
    with pytest.raises(errors.RecordError, match="PNG, JPEG or PDF"):
        await actions.add_evidence(
            services,
            io.BytesIO(b"just text"),
            check="workspace-mfa-enforced",
            workspace="acme",
            member=None,
            filename="p.txt",
            expires=None,
            actor="api",
        )
    assert await services.service.store.records.evidence_rows() == []
    # The workspace may be left out when the product knows exactly one.
    done = await actions.add_evidence(
        services,
        io.BytesIO(PDF),
        check="workspace-mfa-enforced",
        workspace=None,
        member=None,
        filename="policy.pdf",
        expires=None,
        actor="cli",
    )
    assert isinstance(done, actions.EvidenceAdded)
    assert done.workspace == "acme" and done.recorded.media_type == "application/pdf"
    [row] = await services.service.store.records.evidence_rows()
    assert (row["id"], row["uploaded_by"], row["check_id"]) == (done.recorded.id, "cli", "workspace-mfa-enforced")
    [event] = await actions.settle(services, done.events)
    assert event.event_key == "lp:evidence" and event.state == "done"
    [result] = await services.service.store.results.query(check="workspace-mfa-enforced")
    assert result.result.status == "pass"  # the policy counts at once


async def test_exceptions_add_and_revoke(services: Services) -> None:
    with pytest.raises(errors.UnknownSubject, match="has seen"):
        await actions.add_exception(
            services,
            check="repo-classified",
            subject="acme/nope",
            owner="cto",
            reason="legacy",
            expires=FAR,
            actor="api",
        )
    with pytest.raises(errors.RecordError, match="--owner: required"):
        await actions.add_exception(
            services, check="repo-classified", subject="acme/api", owner=" ", reason="r", expires=FAR, actor="api"
        )
    assert await services.service.store.records.exception_rows() == []
    done = await actions.add_exception(
        services, check="repo-classified", subject="ACME/api", owner="cto", reason="legacy", expires=FAR, actor="api"
    )
    assert isinstance(done, actions.ExceptionAdded)
    assert done.granted.subject.name == "acme/api" and done.granted.subject.key.startswith("{")
    [row] = await services.service.store.records.exception_rows()
    assert (row["id"], row["subject_key"], row["created_by"]) == (done.granted.id, done.granted.subject.key, "api")
    [event] = await _events(services, done.events)
    assert event.event_key == "lp:exception" and event.payload["subject"] == done.granted.subject.key

    revoked = await actions.revoke_exception(services, done.granted.id, "dashboard")
    assert isinstance(revoked, actions.ExceptionRevoked) and revoked.check == "repo-classified"
    [row] = await services.service.store.records.exception_rows()
    assert row["revoked_at"] is not None
    [event] = await _events(services, revoked.events)
    assert event.event_key == "lp:exception"
    with pytest.raises(errors.NotFound, match="already revoked"):
        await actions.revoke_exception(services, done.granted.id, "dashboard")


# -- passes, dead events, alerts ---------------------------------------------------------------------------
async def test_reconcile_now_validates_the_tier_and_joins_a_queued_pass(services: Services) -> None:
    before = await _count(services)
    with pytest.raises(errors.RecordError, match="tier must be full or members"):
        await actions.reconcile_now(services, tier="everything")
    assert await _count(services) == before
    first = await actions.reconcile_now(services, tier="members", workspace="acme")
    second = await actions.reconcile_now(services, tier="members")
    assert first.events == second.events and len(first.events) == 1  # one pass, joined
    [event] = await _events(services, first.events)
    assert event.event_key == "lp:reconcile" and event.payload["tier"] == "members"


async def test_reconcile_connections_refuses_an_unknown_workspace(services: Services) -> None:
    with pytest.raises(errors.ConfigError, match="'nowhere' is not a connected workspace"):
        await actions.reconcile_connections(services, "nowhere")
    assert [c.id for c in await actions.reconcile_connections(services, "acme")] == ["token"]


async def test_retry_event_requeues_only_a_dead_event(services: Services) -> None:
    [eid] = (await actions.reconcile_now(services, tier="members")).events
    assert await actions.retry_event(services, eid) is False  # queued, not dead
    await services.service.store.db.execute("UPDATE events SET state = 'dead' WHERE id = ?", (eid,))
    assert await actions.retry_event(services, eid) is True
    row = await services.service.store.events.get(eid)
    assert row is not None and (row.state, row.tries) == ("queued", 0)


async def test_test_alert_needs_a_channel_and_reports_per_channel(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path, services: Services
) -> None:
    with pytest.raises(errors.NoAlertChannel) as info:
        await actions.send_test_alert(services)
    assert info.value.http_status == 409
    async with Receiver(statuses=[200]) as slack:
        with_slack = await _services(
            sandbox,
            session,
            tmp_path / "slack",
            LP_SLACK_WEBHOOK_URL=slack.url + "/hook",
            LP_SLACK_ALLOW_INSECURE_URL="true",
        )
        try:
            assert await actions.send_test_alert(with_slack) == {"slack": "sent"}
        finally:
            await with_slack.service.store.close()
        [received] = slack.received
        assert b"test message" in received.body


# -- connections ------------------------------------------------------------------------------------------
async def test_connect_with_oauth_then_disconnect(services: Services, session: aiohttp.ClientSession) -> None:
    with pytest.raises(errors.ConnectRefused, match="lacks a code"):
        await actions.finish_connect(services, "", "code", "sid")
    url = await actions.begin_connect(services, "browser-session")
    state = parse_qs(urlsplit(url).query)["state"][0]
    async with session.get(url, allow_redirects=False) as resp:  # the sandbox grants at once
        code = parse_qs(urlsplit(resp.headers["Location"]).query)["code"][0]
    with pytest.raises(errors.ConnectRefused, match="another browser session"):
        await actions.finish_connect(services, state, code, "other-session")
    with pytest.raises(errors.ConnectRefused, match="already used"):  # single use, even after a refusal
        await actions.finish_connect(services, state, code, "browser-session")

    url = await actions.begin_connect(services, "browser-session")
    state = parse_qs(urlsplit(url).query)["state"][0]
    async with session.get(url, allow_redirects=False) as resp:
        code = parse_qs(urlsplit(resp.headers["Location"]).query)["code"][0]
    done = await actions.finish_connect(services, state, code, "browser-session")
    assert isinstance(done, actions.Connected) and done.id.startswith("oauth-") and done.workspaces == ("acme",)
    conn = await services.service.store.connections.get(done.id)
    assert conn is not None and conn.kind == "oauth" and conn.tokens is not None
    assert b"access_token" not in conn.tokens  # encrypted
    events = await _events(services, done.events)
    assert [(e.event_key, e.connection_id, e.payload["tier"]) for e in events] == [("lp:reconcile", done.id, "full")]

    with pytest.raises(errors.NotFound, match="Unknown connection nope"):
        await actions.disconnect(services, "nope")
    gone = await actions.disconnect(services, done.id)
    assert isinstance(gone, actions.Disconnected) and gone.id == done.id
    conn = await services.service.store.connections.get(done.id)
    assert conn is not None and conn.status == "disconnected" and conn.tokens is None
    assert done.id not in [c.id for c in await services.service.connections()]


async def test_connect_needs_the_oauth_consumer(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    plain = await _services(sandbox, session, tmp_path)
    try:
        with pytest.raises(errors.OAuthNotConfigured) as info:
            await actions.begin_connect(plain, "sid")
        assert info.value.http_status == 503
    finally:
        await plain.service.store.close()


async def test_webhooks_register_and_report_health(services: Services) -> None:
    with pytest.raises(errors.NotFound):
        await actions.webhook_health(services, "nope")
    [conn] = await actions.webhook_connections(services)
    before = await actions.webhook_health(services, conn.id)
    assert (before.status, before.hooks) == ("missing", 0)
    done = await actions.register_webhooks(services, conn)
    assert isinstance(done, actions.HooksRegistered) and done.url == "http://127.0.0.1:8999/hooks/bitbucket/token"
    assert [(h["workspace"], h["level"], h["action"]) for h in done.hooks] == [("acme", "workspace", "created")]
    after = await actions.webhook_health(services, conn.id)
    assert after.hooks == 1 and after.status != "missing"
    again = await actions.register_webhooks(services, conn)  # recognised, not registered twice
    assert [h["action"] for h in again.hooks] != ["created"]

"""``/api`` resources beyond events and findings: repositories, members, personnel, evidence,
exceptions, connections, alerts, settings, exports. Changes are :mod:`app.actions` (shared with the
CLI and the dashboard): this module parses the request and renders the result or the error."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response

from app import actions, errors, exports
from app.checks import REGISTRY
from app.checks.base import valid_through
from app.findings import to_json
from app.models import iso, utcnow
from app.queries import (
    connections_data,
    evidence_data,
    evidence_json,
    exceptions_data,
    members_data,
    person_json,
    repositories_data,
)
from app.settings import CHECK_IDS
from app.store.views import Views
from app.web import session
from app.web.auth import require_admin
from app.web.jsonbody import MAX_DEPTH, json_object, too_deep
from app.web.problems import Problem
from app.web.state import services_of, settings_of
from app.web.uploads import upload_form

if TYPE_CHECKING:
    from app.services import Services


def _svc(request: Request) -> Services:
    require_admin(request)
    return services_of(request)


async def _reader(request: Request) -> Services:
    """Downloads (GET, nothing changes): the Bearer token, or a signed-in dashboard session."""
    if request.headers.get("Authorization") or await session.session_id(request) is None:
        require_admin(request)
    return services_of(request)


@contextmanager
def _bad(title: str, *, dashes: bool = False) -> Iterator[None]:
    """A person's bad input (:class:`errors.RecordError` answering 400) as a problem with this route's
    ``title``; the other errors (404, 409, 413, 422) keep their own. ``dashes``: drop the CLI's
    ``--`` from option names in the message."""
    try:
        yield
    except errors.RecordError as exc:
        detail = str(exc).replace("--", "") if dashes else str(exc)
        if exc.http_status == 400:
            raise Problem(400, title, detail) from None
        raise Problem(exc.http_status, exc.title, detail, headers=exc.headers) from None


async def _json(request: Request) -> dict[str, Any]:
    return await json_object(request)  # nesting limited: too deep is a 400, not a 500


def _str(body: dict[str, Any], name: str, required: bool = True) -> str | None:
    value = body.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise Problem(400, "Bad body", f"{name} is required")
        return None
    if not isinstance(value, str):
        raise Problem(400, "Bad body", f"{name} must be a string")
    return value.strip()


# -- findings, history, exports --------------------------------------------------------------
async def history(request: Request) -> Response:
    services = _svc(request)
    subject = request.query_params.get("subject")
    check = request.query_params.get("check")
    if check is not None and check not in CHECK_IDS:
        raise Problem(400, "Bad parameter", "unknown check")
    rows = await services.service.store.results.history(check, subject, limit=1000)
    return JSONResponse(
        [
            {
                k: r[k]
                for k in (
                    "check_id",
                    "subject",
                    "subject_key",
                    "workspace",
                    "at",
                    "old_status",
                    "new_status",
                    "message",
                    "details",
                    "cause",
                )
            }
            for r in rows
        ]
    )


async def export_findings(request: Request) -> Response:
    services = await _reader(request)
    items = [to_json(r) for r in await services.service.store.results.query()]
    fmt = request.path_params["fmt"]
    if fmt == "csv":
        return PlainTextResponse(
            exports.findings_csv(items),
            media_type="text/csv",
            headers={"Content-Disposition": "attachment; filename=findings.csv"},
        )
    if fmt == "json":
        return JSONResponse(items)
    raise Problem(404, "Unknown export", "use csv or json")


def _day(request: Request, name: str, default: str) -> str:
    raw = request.query_params.get(name) or default
    try:
        return datetime.fromisoformat(raw).date().isoformat()
    except ValueError:
        raise Problem(400, "Bad parameter", f"{name} must be a date (YYYY-MM-DD)") from None


async def export_audit_pack(request: Request) -> Response:
    """One ZIP for a period (``from``, ``to``: dates, both included; the last 90 days by default)."""
    services = await _reader(request)
    store = services.service.store
    today = utcnow().date()
    start = _day(request, "from", (today - timedelta(days=90)).isoformat())
    end = _day(request, "to", today.isoformat())
    if end < start:
        raise Problem(400, "Bad parameter", "to must not be before from")
    end_excl = (datetime.fromisoformat(end) + timedelta(days=1)).date().isoformat()
    findings = [to_json(r) for r in await store.results.query()]
    history = await Views(store.db).history_between(start, end_excl)
    exceptions = [x for x in await exceptions_data(store) if x["created_at"] < end_excl and x["expires_at"] >= start]
    evidence = [e for e in await evidence_data(store) if e["uploaded_at"] < end_excl and e["expires_at"] >= start]
    files: dict[int, bytes] = {}
    for e in evidence:
        path = store.records.evidence_path(e["sha256"])
        if path.is_file():
            files[int(e["id"])] = path.read_bytes()
    scope = [
        {"connection": c["id"], "workspaces": c["workspaces"], "scopes": c["scopes"], "scope_report": c["scope_report"]}
        for c in await connections_data(services)
    ]
    data = exports.audit_pack(
        start=start,
        end=end,
        generated_at=iso(utcnow()),
        findings=findings,
        history=history,
        exceptions=exceptions,
        evidence=evidence,
        evidence_files=files,
        scope_report=scope,
    )
    return Response(
        data,
        media_type="application/zip",
        headers={"Content-Disposition": f"attachment; filename=audit-pack-{start}-to-{end}.zip"},
    )


async def export_ocsf(request: Request) -> Response:
    services = await _reader(request)
    rows = await services.service.store.results.history(limit=1_000_000)
    return PlainTextResponse(
        exports.ocsf_lines(rows),
        media_type="application/x-ndjson",
        headers={"Content-Disposition": "attachment; filename=transitions.ocsf.jsonl"},
    )


# -- repositories and classes ------------------------------------------------------------------
async def repositories(request: Request) -> Response:
    return JSONResponse(await repositories_data(_svc(request)))


async def set_class(request: Request) -> Response:
    services = _svc(request)
    body = await _json(request)
    cls = _str(body, "class")
    uuid = request.path_params["uuid"]
    try:
        with _bad("Bad body"):
            done = await actions.classify(services, uuid, cls or "", "api")
    except errors.NotFound:
        raise Problem(404, "Unknown repository", "run a reconcile first") from None
    return JSONResponse({"uuid": done.uuid, "class": done.cls, "events": done.events})


# -- members and personnel ----------------------------------------------------------------------
async def members(request: Request) -> Response:
    return JSONResponse(await members_data(_svc(request)))


async def link_member(request: Request) -> Response:
    services = _svc(request)
    body = await _json(request)
    email = _str(body, "email")
    assert email is not None
    ws, account = request.path_params["workspace"], request.path_params["account_id"]
    with _bad("Bad body"):
        done = await actions.link_member(services, ws, account, email, "api")
    return JSONResponse({"account_id": done.account_id, "email": done.email, "events": done.events})


async def mark_member(request: Request) -> Response:
    services = _svc(request)
    body = await _json(request)
    mark = _str(body, "mark")
    owner = _str(body, "owner")
    ws, account = request.path_params["workspace"], request.path_params["account_id"]
    with _bad("Bad body"):
        done = await actions.mark_member(services, ws, account, mark or "", owner or "", "api")
    return JSONResponse({"account_id": account, "mark": done.mark, "owner": done.owner, "events": done.events})


async def personnel(request: Request) -> Response:
    services = _svc(request)
    if request.method == "GET":
        return JSONResponse([person_json(p) for p in await services.service.store.records.people()])
    body = await _json(request)
    with _bad("Bad body"):
        done = await actions.save_person(services, body, "api")
    return JSONResponse(person_json(done.person) | {"events": done.events}, status_code=201 if done.created else 200)


async def personnel_import(request: Request) -> Response:
    services = _svc(request)
    data = await request.body()
    name = "upload.json" if request.headers.get("content-type", "").startswith("application/json") else "upload.csv"
    if (name == "upload.json" or data.lstrip()[:1] in (b"[", b"{")) and too_deep(data):
        raise Problem(400, "Nothing imported", f"JSON nested deeper than {MAX_DEPTH} levels")
    with _bad("Nothing imported"):
        done = await actions.import_personnel(services, actions.read_personnel(data, name), "api")
    return JSONResponse({"imported": done.count, "events": done.events})


async def offboard(request: Request) -> Response:
    services = _svc(request)
    body = await _json(request) if await request.body() else {}
    on = _str(body, "offboarded_on", required=False)
    with _bad("Bad body"):
        done = await actions.offboard(services, request.path_params["email"], on, "api")
    return JSONResponse({"email": done.email, "status": "offboarded", "offboarded_on": done.on, "events": done.events})


# -- evidence ----------------------------------------------------------------------------------
async def evidence(request: Request) -> Response:
    services = _svc(request)
    store = services.service.store
    if request.method == "GET":
        return JSONResponse(await evidence_data(store))
    max_bytes = settings_of(request).evidence_max_bytes
    with _bad("Bad upload"):
        form = await upload_form(request, max_bytes)
    try:
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise Problem(400, "Bad upload", "file is required")
        check = str(form.get("check") or "")
        ws = str(form.get("workspace") or "")
        if not ws:
            raise Problem(400, "Bad upload", "workspace is required")
        with _bad("Bad upload"):
            done = await actions.add_evidence(
                services,
                upload.file,
                check=check,
                workspace=ws,
                member=str(form.get("member") or "") or None,
                filename=upload.filename or "evidence",
                expires=str(form.get("expires") or "") or None,
                actor="api",
            )
    finally:
        await form.close()
    eid = done.recorded.id
    row = next(r for r in await store.records.evidence_rows() if r["id"] == eid)
    return JSONResponse(evidence_json(row) | {"events": done.events}, status_code=201)


async def evidence_file(request: Request) -> Response:
    services = await _reader(request)
    store = services.service.store
    try:
        eid = int(request.path_params["id"])
    except ValueError:
        raise Problem(404, "Unknown evidence") from None
    row = next((r for r in await store.records.evidence_rows() if r["id"] == eid), None)
    if row is None:
        raise Problem(404, "Unknown evidence")
    return FileResponse(
        store.records.evidence_path(row["sha256"]), media_type=row["media_type"], filename=row["filename"]
    )


# -- exceptions ----------------------------------------------------------------------------------
async def exceptions(request: Request) -> Response:
    services = _svc(request)
    store = services.service.store
    if request.method == "GET":
        return JSONResponse(await exceptions_data(store))
    body = await _json(request)
    with _bad("Bad body", dashes=True):
        done = await actions.add_exception(
            services,
            check=str(body.get("check") or ""),
            subject=str(body.get("subject") or ""),
            owner=str(body.get("owner") or ""),
            reason=str(body.get("reason") or ""),
            expires=str(body.get("expires") or ""),
            actor="api",
        )
    req, subject = done.granted.request, done.granted.subject
    return JSONResponse(
        {
            "id": done.granted.id,
            "check": req.check,
            "subject": subject.name,
            "subject_key": subject.key,
            "owner": req.owner,
            "reason": req.reason,
            "expires_at": req.expires_at.isoformat(),
            "valid_through": valid_through(req.expires_at).isoformat(),
            "events": done.events,
        },
        status_code=201,
    )


# -- connections ---------------------------------------------------------------------------------
async def connections(request: Request) -> Response:
    return JSONResponse(await connections_data(_svc(request)))


async def disconnect(request: Request) -> Response:
    services = _svc(request)
    cid = request.path_params["id"]
    try:
        done = await actions.disconnect(services, cid)
    except errors.NotFound:
        raise Problem(404, "Unknown connection") from None
    return JSONResponse({"id": cid, "status": "disconnected", "hooks_removed": done.hooks_removed})


# -- alerts and settings -------------------------------------------------------------------------
async def alerts(request: Request) -> Response:
    services = _svc(request)
    rows = await services.dispatcher.outbox.history(limit=200)
    return JSONResponse(
        [
            {
                "id": r.id,
                "channel": r.channel,
                "kind": r.kind,
                "state": r.state,
                "tries": r.tries,
                "created_at": r.created_at,
                "sent_at": r.sent_at,
                "error": r.error,
                "summary": f"{r.payload.get('subject')}: {r.payload.get('new_status')}",
                "check": r.payload.get("check"),
                "workspace": r.payload.get("workspace"),
            }
            for r in rows
        ]
    )


async def alert_test(request: Request) -> Response:
    return JSONResponse(await actions.send_test_alert(_svc(request)))


async def settings_view(request: Request) -> Response:
    _svc(request)
    s = settings_of(request)
    secret_fields = {
        "oauth_client_secret",
        "bitbucket_token",
        "secret_key",
        "admin_token",
        "slack_webhook_url",
        "smtp_url",
    }
    out: dict[str, Any] = {}
    for name in type(s).model_fields:
        value = getattr(s, name)
        if name in secret_fields:
            out[name] = "set" if value is not None else None
        elif isinstance(value, tuple):
            out[name] = list(value)
        else:
            out[name] = value if isinstance(value, (int, float, bool, str)) or value is None else str(value)
    out["enabled_checks"] = list(s.enabled_checks)
    out["checks"] = [
        {
            "id": c.id,
            "title": c.title,
            "severity": c.severity,
            "subject_type": c.subject_type,
            "enabled": c.id in s.enabled_checks,
        }
        for c in REGISTRY.values()
    ]
    return JSONResponse(out)

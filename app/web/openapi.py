"""The JSON API's route table and its OpenAPI 3.1 document (served at ``/api/openapi.json``).

One table drives both the routing and the document, so no route can be missing from it (a test
checks it against the application's routes too).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from app import __version__
from app.checks import EVIDENCE_CHECKS
from app.models import STATUSES
from app.settings import CHECK_IDS
from app.web import api, operations, resources

Handler = Callable[[Request], Awaitable[Response]]

OBJ: dict[str, Any] = {"type": "object"}
LIST: dict[str, Any] = {"type": "array", "items": {"type": "object"}}
PROBLEM = {"$ref": "#/components/schemas/Problem"}
FINDING = {
    "type": "object",
    "required": [
        "workspace",
        "check",
        "severity",
        "subject_type",
        "subject",
        "status",
        "message",
        "details",
        "first_seen",
        "last_changed",
    ],
    "properties": {
        "workspace": {"type": "string"},
        "check": {"type": "string", "enum": list(CHECK_IDS)},
        "severity": {"type": "string"},
        "subject_type": {"type": "string", "enum": ["repository", "member", "workspace"]},
        "subject": {"type": "string"},
        "subject_uuid": {"type": ["string", "null"]},
        "subject_name": {"type": ["string", "null"]},
        "status": {"type": "string", "enum": list(STATUSES)},
        "message": {"type": "string"},
        "details": {"type": "object"},
        "first_seen": {"type": "string"},
        "last_changed": {"type": "string"},
    },
}


def q(name: str, schema: dict[str, Any] | None = None, desc: str = "") -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema or {"type": "string"}, "description": desc}


def p(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


@dataclass(frozen=True)
class ApiRoute:
    method: str
    path: str
    handler: Handler
    summary: str
    params: tuple[dict[str, Any], ...] = ()
    body: dict[str, Any] | None = None  # requestBody content
    response: dict[str, Any] = field(default_factory=lambda: OBJ)
    media: str = "application/json"
    ok: str = "200"
    errors: tuple[str, ...] = ("400", "401")
    stream: bool = False


def JSON_BODY(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


STATES = list(api.EVENT_STATES)

API_ROUTES: tuple[ApiRoute, ...] = (
    ApiRoute(
        "GET",
        "/api/findings",
        api.findings,
        "Current results",
        (
            q("workspace"),
            q("check", {"type": "string", "enum": list(CHECK_IDS)}),
            q("status", {"type": "string", "enum": list(STATUSES)}),
            q("subject"),
            q("limit", {"type": "integer", "minimum": 1, "maximum": 5000}),
            q("offset", {"type": "integer", "minimum": 0}),
        ),
        response={"type": "array", "items": FINDING},
    ),
    ApiRoute(
        "GET",
        "/api/findings/history",
        resources.history,
        "A subject's result history",
        (q("check", {"type": "string", "enum": list(CHECK_IDS)}), q("subject")),
        response=LIST,
    ),
    ApiRoute(
        "GET",
        "/api/exports/findings.{fmt}",
        resources.export_findings,
        "Findings as CSV or JSON",
        ({"name": "fmt", "in": "path", "required": True, "schema": {"type": "string", "enum": ["csv", "json"]}},),
        response={},
        media="*/*",
        errors=("401", "404"),
    ),
    ApiRoute(
        "GET",
        "/api/exports/audit-pack.zip",
        resources.export_audit_pack,
        "An audit pack (ZIP) for a period: findings, history, exceptions, evidence with hashes, scope report, "
        "controls and a summary page. The Bearer token or a signed-in dashboard session.",
        (q("from", {"type": "string", "format": "date"}), q("to", {"type": "string", "format": "date"})),
        response={},
        media="application/zip",
        errors=("400", "401"),
    ),
    ApiRoute(
        "GET",
        "/api/exports/transitions.ocsf.jsonl",
        resources.export_ocsf,
        "Result transitions as OCSF Compliance Finding (class 2003) JSON lines",
        response={"type": "string"},
        media="application/x-ndjson",
        errors=("401",),
    ),
    ApiRoute(
        "GET",
        "/api/events",
        api.events,
        "The event log (newest first)",
        (
            q("state", {"type": "string", "enum": STATES}),
            q("event_key"),
            q("workspace"),
            q("limit", {"type": "integer", "minimum": 1, "maximum": 500}),
            q("before", {"type": "integer", "minimum": 0}),
        ),
        response={
            "type": "object",
            "required": ["items"],
            "properties": {"items": LIST, "next": {"type": ["string", "null"]}},
        },
    ),
    ApiRoute(
        "GET",
        "/api/events/stream",
        api.event_stream,
        "The event log live (server-sent events)",
        response={"type": "string"},
        media="text/event-stream",
        errors=("401",),
        stream=True,
    ),
    ApiRoute(
        "GET",
        "/api/repositories",
        resources.repositories,
        "Repositories and their classes",
        response=LIST,
        errors=("401",),
    ),
    ApiRoute(
        "PUT",
        "/api/repositories/{uuid}/class",
        resources.set_class,
        "Classify a repository",
        (p("uuid"),),
        JSON_BODY(
            {
                "type": "object",
                "required": ["class"],
                "properties": {"class": {"type": "string", "enum": ["production", "non-production"]}},
            }
        ),
        errors=("400", "401", "404"),
    ),
    ApiRoute(
        "GET",
        "/api/members",
        resources.members,
        "Workspace members, their links and marks",
        response=LIST,
        errors=("401",),
    ),
    ApiRoute(
        "PUT",
        "/api/members/{workspace}/{account_id}/link",
        resources.link_member,
        "Link a member to a person (by email)",
        (p("workspace"), p("account_id")),
        JSON_BODY({"type": "object", "required": ["email"], "properties": {"email": {"type": "string"}}}),
        errors=("400", "401", "404"),
    ),
    ApiRoute(
        "PUT",
        "/api/members/{workspace}/{account_id}/mark",
        resources.mark_member,
        "Mark a member as a service account or external, with an owner",
        (p("workspace"), p("account_id")),
        JSON_BODY(
            {
                "type": "object",
                "required": ["mark", "owner"],
                "properties": {
                    "mark": {"type": "string", "enum": ["service-account", "external"]},
                    "owner": {"type": "string"},
                },
            }
        ),
    ),
    ApiRoute("GET", "/api/personnel", resources.personnel, "The personnel directory", response=LIST, errors=("401",)),
    ApiRoute(
        "POST",
        "/api/personnel",
        resources.personnel,
        "Create or update a person",
        (),
        JSON_BODY(
            {
                "type": "object",
                "required": ["email", "name", "status"],
                "properties": {
                    "email": {"type": "string"},
                    "name": {"type": "string"},
                    "kind": {"type": "string", "enum": ["employee", "contractor", "service-account", "external"]},
                    "status": {"type": "string", "enum": ["active", "offboarded"]},
                    "offboarded_on": {"type": ["string", "null"]},
                    "bitbucket_account_id": {"type": ["string", "null"]},
                    "owner": {"type": ["string", "null"]},
                },
            }
        ),
        ok="201",
    ),
    ApiRoute(
        "POST",
        "/api/personnel/import",
        resources.personnel_import,
        "Import people (CSV or JSON; all or nothing)",
        (),
        {
            "required": True,
            "content": {"text/csv": {"schema": {"type": "string"}}, "application/json": {"schema": {"type": "array"}}},
        },
    ),
    ApiRoute(
        "POST",
        "/api/personnel/{email}/offboard",
        resources.offboard,
        "Offboard a person (re-evaluates at once)",
        (p("email"),),
        {
            "required": False,
            "content": {
                "application/json": {"schema": {"type": "object", "properties": {"offboarded_on": {"type": "string"}}}}
            },
        },
        errors=("400", "401", "404"),
    ),
    ApiRoute(
        "GET", "/api/evidence", resources.evidence, "Evidence files and their expiry", response=LIST, errors=("401",)
    ),
    ApiRoute(
        "POST",
        "/api/evidence",
        resources.evidence,
        "Upload evidence (PNG, JPEG or PDF, at most LP_EVIDENCE_MAX_BYTES, 10 MiB by default)",
        (),
        {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file", "check", "workspace"],
                        "properties": {
                            "file": {"type": "string", "format": "binary"},
                            "check": {"type": "string", "enum": list(EVIDENCE_CHECKS)},
                            "workspace": {"type": "string"},
                            "member": {"type": "string"},
                            "expires": {"type": "string", "format": "date"},
                        },
                    }
                }
            },
        },
        ok="201",
        errors=("400", "401", "409", "413"),
    ),
    ApiRoute(
        "GET",
        "/api/evidence/{id}/file",
        resources.evidence_file,
        "Download an evidence file",
        (p("id"),),
        response={"type": "string", "format": "binary"},
        media="*/*",
        errors=("401", "404"),
    ),
    ApiRoute("GET", "/api/exceptions", resources.exceptions, "Accepted risks", response=LIST, errors=("401",)),
    ApiRoute(
        "POST",
        "/api/exceptions",
        resources.exceptions,
        "Accept a risk (at most one year)",
        (),
        JSON_BODY(
            {
                "type": "object",
                "required": ["check", "subject", "owner", "reason", "expires"],
                "properties": {
                    "check": {"type": "string", "enum": list(CHECK_IDS)},
                    "subject": {"type": "string"},
                    "owner": {"type": "string"},
                    "reason": {"type": "string"},
                    "expires": {"type": "string", "format": "date"},
                },
            }
        ),
        ok="201",
    ),
    ApiRoute(
        "GET",
        "/api/connections",
        resources.connections,
        "Connections with granted scopes, the scope report and webhook health",
        response=LIST,
        errors=("401",),
    ),
    ApiRoute(
        "POST",
        "/api/connections/{id}/disconnect",
        resources.disconnect,
        "Disconnect: remove the webhook, forget the tokens",
        (p("id"),),
        errors=("401", "404"),
    ),
    ApiRoute(
        "POST",
        "/api/reconcile",
        api.reconcile_now,
        "Queue a reconcile pass now",
        (),
        {
            "required": False,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "tier": {"type": "string", "enum": ["full", "members"]},
                            "workspace": {"type": "string"},
                        },
                    }
                }
            },
        },
        ok="202",
    ),
    ApiRoute(
        "GET",
        "/api/operations",
        operations.api_operations,
        "The operator's panel: per connection and workspace the last, running (with its progress: "
        "repositories done of those listed, and while it waits for API budget, until when and why) and "
        "next pass of each tier; the API budget; queue depth and oldest queued event; dead events",
        errors=("401",),
    ),
    ApiRoute("GET", "/api/alerts", resources.alerts, "Alert history", response=LIST, errors=("401",)),
    ApiRoute(
        "POST", "/api/alerts/test", resources.alert_test, "Send a test message to every channel", errors=("401", "409")
    ),
    ApiRoute("GET", "/api/settings", resources.settings_view, "Settings in effect (never a secret)", errors=("401",)),
)


def document() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for r in API_ROUTES:
        op: dict[str, Any] = {
            "summary": r.summary,
            "operationId": r.method.lower() + "_" + "".join(c if c.isalnum() else "_" for c in r.path.strip("/")),
            "parameters": list(r.params),
            "security": [{"bearer": []}],
            "responses": {
                r.ok: {"description": "OK", "content": {r.media: {"schema": r.response}}},
                **{
                    code: {"description": "Problem", "content": {"application/problem+json": {"schema": PROBLEM}}}
                    for code in r.errors
                },
            },
        }
        if r.body is not None:
            op["requestBody"] = r.body
        paths.setdefault(r.path, {})[r.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "lowerplane-bitbucket API",
            "version": __version__,
            "description": "Read-only Bitbucket Cloud compliance monitoring. Authenticate with "
            "`Authorization: Bearer <LP_ADMIN_TOKEN>`; errors are RFC 9457 problem details.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Problem": {
                    "type": "object",
                    "description": "RFC 9457 problem details (application/problem+json): every error answer of "
                    "the API, with the HTTP status its error class maps to (app/errors.py).",
                    "required": ["type", "title", "status"],
                    "properties": {
                        "type": {"type": "string", "description": "always about:blank: the status says it all"},
                        "title": {"type": "string", "description": "short, the same for every error of a kind"},
                        "status": {"type": "integer", "minimum": 400, "maximum": 599},
                        "detail": {"type": "string", "description": "what was wrong with this request"},
                    },
                }
            },
        },
    }


async def serve_document(request: Request) -> Response:
    return JSONResponse(document())

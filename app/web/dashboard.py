"""The dashboard: server-rendered Jinja2 pages and a little plain JavaScript (no build, no CDN).

Every page needs the session cookie from the login; every form carries a CSRF token. Changes go
through the same internal events as the API and the CLI.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from app import errors, records
from app.checks import REGISTRY
from app.checks.base import valid_through
from app.evidence import record_evidence
from app.exceptions import record_exception
from app.findings import to_json
from app.models import FAILING, SEVERITY_ORDER, STATUSES
from app.reconcile import iso, k_repo, utcnow
from app.settings import CHECK_IDS
from app.web import api, resources, session
from app.web.uploads import upload_form

TEMPLATES = Environment(
    loader=FileSystemLoader(str(Path(__file__).with_name("templates"))), autoescape=select_autoescape(["html"])
)
NAV = [
    ("/", "Overview"),
    ("/findings", "Findings"),
    ("/repositories", "Repositories"),
    ("/members", "Members"),
    ("/evidence", "Evidence"),
    ("/exceptions", "Exceptions"),
    ("/events", "Events"),
    ("/connections", "Connections"),
    ("/alerts", "Alerts"),
]


def render(request: Request, name: str, title: str, active: str, status: int = 200, **ctx: Any) -> HTMLResponse:
    sid = session.current(request)
    html = TEMPLATES.get_template(name).render(
        title=title,
        active=active,
        nav=NAV,
        logged_in=sid is not None,
        csrf=session.csrf_token(request, sid) if sid else "",
        notice=request.query_params.get("notice"),
        **ctx,
    )
    return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})


class LoginRequired(Exception):
    pass


async def _sid(request: Request) -> str:
    sid = await session.session_id(request)
    if sid is None:
        raise LoginRequired
    return sid


async def _form(request: Request) -> dict[str, Any]:
    """A form after the session and CSRF checks."""
    sid = await _sid(request)
    form = await request.form()
    if not session.check_csrf(request, sid, str(form.get("csrf") or "")):
        raise errors.ConfigError("The form expired or came from elsewhere (CSRF check). Reload the page.")
    return dict(form)


def _back(path: str, notice: str) -> RedirectResponse:
    return RedirectResponse(f"{path}?notice={quote(notice)}", status_code=303)


async def login_page(request: Request) -> Response:
    await session.session_id(request)
    target = request.query_params.get("next", "/")
    error = "That token is not right." if request.query_params.get("error") else None
    return render(request, "login.html", "Sign in", "", next=target, error=error)


def trend_svg(history: list[dict[str, Any]], current_failing: int, days: int = 30) -> str:
    """Inline SVG: failing results at the end of each of the last ``days`` days (replayed history)."""
    today = datetime.now(UTC).date()
    changes: Counter[str] = Counter()
    for h in history:
        delta = (h["new_status"] in FAILING) - (h["old_status"] in FAILING if h["old_status"] else 0)
        changes[h["at"][:10]] += delta
    points, count = [], current_failing
    for i in range(days):
        day = today - timedelta(days=i)
        points.append((day, count))
        count -= changes.get(day.isoformat(), 0)
    points.reverse()
    top = max([c for _, c in points] + [1])
    width, height = 600, 140
    coords = " ".join(
        f"{10 + i * (width - 20) / (days - 1):.1f},{height - 10 - c * (height - 30) / top:.1f}"
        for i, (_, c) in enumerate(points)
    )
    label = f"Failing results per day over {days} days; today {current_failing}"
    return (
        f'<svg class="trend" viewBox="0 0 {width} {height}" role="img" aria-label="{label}">'
        f'<polyline fill="none" stroke="#c62828" stroke-width="2.5" points="{coords}"/>'
        f'<text x="10" y="16" font-size="12" fill="#5b6475">max {top}</text>'
        f'<text x="{width - 10}" y="{height - 2}" font-size="12" text-anchor="end" fill="#5b6475">today: '
        f"{current_failing}</text></svg>"
    )


async def overview(request: Request) -> Response:
    await _sid(request)
    store = request.app.state.services.service.store
    rows = await store.results.query()
    by_check: dict[str, Counter[str]] = {}
    severities: Counter[str] = Counter()
    for r in rows:
        by_check.setdefault(r.result.check, Counter())[r.result.status] += 1
        if r.result.status in FAILING:
            severities[r.result.severity] += 1
    checks = []
    for cid, c in REGISTRY.items():
        if cid not in by_check:
            continue
        counts = by_check[cid]
        relevant = sum(counts.values()) - counts.get("not_applicable", 0)
        ok = counts.get("pass", 0) + counts.get("excepted", 0)
        checks.append(
            {
                "id": cid,
                "title": c.title,
                "severity": c.severity,
                "counts": counts,
                "rate": round(100 * ok / relevant) if relevant else 100,
            }
        )
    checks.sort(key=lambda c: (SEVERITY_ORDER.get(str(c["severity"]), 9), c["rate"]))
    history = await store.results.history(limit=100_000)
    failing = sum(1 for r in rows if r.result.status in FAILING)
    return render(
        request,
        "overview.html",
        "Overview",
        "/",
        checks=checks,
        severities=sorted(severities.items(), key=lambda s: SEVERITY_ORDER.get(s[0], 9)),
        trend=trend_svg(history, failing),
    )


async def findings(request: Request) -> Response:
    await _sid(request)
    store = request.app.state.services.service.store
    q = request.query_params
    f = {
        "check": q.get("check") if q.get("check") in CHECK_IDS else None,
        "status": q.get("status") if q.get("status") in STATUSES else None,
        "workspace": q.get("workspace") or None,
    }
    rows = await store.results.query(**f)
    items = [to_json(r) for r in rows]
    items.sort(
        key=lambda i: (
            str(i["status"]) not in FAILING,
            SEVERITY_ORDER.get(str(i["severity"]), 9),
            str(i["check"]),
            str(i["subject"]),
        )
    )
    return render(
        request, "findings.html", "Findings", "/findings", items=items, f=f, check_ids=CHECK_IDS, statuses=STATUSES
    )


async def subject(request: Request) -> Response:
    await _sid(request)
    store = request.app.state.services.service.store
    check, subj = request.query_params.get("check"), request.query_params.get("subject", "")
    rows = await store.results.query(check=check, subject=subj)
    item = None
    if rows:
        item = to_json(rows[0]) | {"title": REGISTRY[rows[0].result.check].title}
    history = await store.results.history(check, subj)
    evidence = [
        e
        for e in await store.records.evidence_rows()
        if e["member"] == (rows[0].result.subject_key if rows else subj) or e["workspace"] == subj
    ]
    key = rows[0].result.subject_key if rows else subj
    exceptions = [x for x in await store.records.exception_rows() if key in (x["subject_key"], x["subject"])]
    return render(
        request,
        "subject.html",
        subj,
        "/findings",
        subject=subj,
        item=item,
        history=history,
        evidence=evidence,
        exceptions=exceptions,
    )


async def repositories(request: Request) -> Response:
    await _sid(request)
    rows = await resources.repositories_data(request.app.state.services)
    return render(request, "repositories.html", "Repositories", "/repositories", repos=rows)


async def classify(request: Request) -> Response:
    form = await _form(request)
    raw = await request.form()
    services = request.app.state.services
    store = services.service.store
    if form.get("one"):
        uuid, _, cls = str(form["one"]).partition("|")
        targets = [uuid]
    else:
        targets = [str(u) for u in raw.getlist("uuid")]
        cls = str(form.get("class") or "")
    if cls not in ("production", "non-production") or not targets:
        return _back("/repositories", "Select repositories and a class.")
    done = []
    for uuid in targets:
        snap = await store.snapshots.get(k_repo(uuid))
        if snap is None or snap.content is None:
            continue
        ws = snap.content["workspace"]
        await store.records.set_class(uuid, ws, snap.content["full_name"], cls, "dashboard", iso(utcnow()))
        await services.service.internal_event("lp:classification", {"workspace": ws, "repository_uuid": uuid})
        done.append(snap.content["full_name"])
    return _back("/repositories", f"Classified {', '.join(done)} as {cls}.")


async def members(request: Request) -> Response:
    await _sid(request)
    rows = await resources.members_data(request.app.state.services)
    rows.sort(key=lambda m: (not (m["person"] and m["person"]["status"] == "offboarded"), m["display_name"] or ""))
    return render(request, "members.html", "Members", "/members", members=rows)


async def member_link(request: Request) -> Response:
    form = await _form(request)
    services = request.app.state.services
    ok = await services.service.store.records.link_member(
        str(form.get("email", "")), str(form["account_id"]), "dashboard", iso(utcnow())
    )
    if not ok:
        return _back("/members", "No one with that email in the personnel directory.")
    await services.service.internal_event("lp:personnel", {"workspace": str(form["workspace"])})
    return _back("/members", "Linked.")


async def member_mark(request: Request) -> Response:
    form = await _form(request)
    mark, owner = str(form.get("mark", "")), str(form.get("owner", "")).strip()
    if mark not in ("service-account", "external") or not owner:
        return _back("/members", "Choose a mark and name an owner.")
    services = request.app.state.services
    await services.service.store.records.mark_member(
        str(form["workspace"]), str(form["account_id"]), mark, owner, "dashboard", iso(utcnow())
    )
    await services.service.internal_event("lp:personnel", {"workspace": str(form["workspace"])})
    return _back("/members", "Marked.")


async def evidence(request: Request) -> Response:
    sid = await _sid(request)
    services = request.app.state.services
    if request.method == "POST":
        settings = request.app.state.settings
        try:
            form = await upload_form(request, settings.evidence_max_bytes)
        except records.TooLarge as exc:
            return await _evidence_page(request, str(exc), 413)
        except records.RecordError as exc:
            return _back("/evidence", str(exc))
        try:
            if not session.check_csrf(request, sid, str(form.get("csrf") or "")):
                raise errors.ConfigError("The form expired or came from elsewhere (CSRF check). Reload the page.")
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                return _back("/evidence", "Choose a file.")
            check, ws = str(form.get("check", "")), str(form.get("workspace", ""))
            member = str(form.get("member") or "").strip() or None
            done = await record_evidence(
                services.service.store,
                upload.file,
                check=check,
                workspace=ws,
                member=member,
                filename=upload.filename or "evidence",
                uploaded_by="dashboard",
                expires=str(form.get("expires") or "") or None,
                max_age_days=settings.evidence_max_age_days,
                max_bytes=settings.evidence_max_bytes,
            )
        except records.TooLarge as exc:
            return await _evidence_page(request, str(exc), 413)
        except records.RecordError as exc:
            return _back("/evidence", str(exc))
        finally:
            await form.close()
        expires = done.expires_at
        await services.service.internal_event("lp:evidence", {"workspace": ws, "check": check})
        return _back("/evidence", f"Evidence recorded for {check}; valid through {valid_through(expires).isoformat()}.")
    return await _evidence_page(request)


async def _evidence_page(request: Request, notice: str | None = None, status: int = 200) -> Response:
    services = request.app.state.services
    if notice:
        request.scope["query_string"] = f"notice={quote(notice)}".encode()
    rows = await resources.evidence_data(services.service.store)
    workspaces = sorted({w for c in await services.service.connections() for w in c.workspaces})
    return render(request, "evidence.html", "Evidence", "/evidence", status, rows=rows, workspaces=workspaces)


async def exceptions(request: Request) -> Response:
    await _sid(request)
    services = request.app.state.services
    if request.method == "POST":
        form = await _form(request)
        try:
            done = await record_exception(
                services.service.store,
                check=str(form.get("check", "")),
                subject=str(form.get("subject", "")),
                owner=str(form.get("owner", "")),
                reason=str(form.get("reason", "")),
                expires=str(form.get("expires", "")),
                actor="dashboard",
                known_checks=CHECK_IDS,
            )
        except records.RecordError as exc:
            return _back("/exceptions", str(exc).replace("--", ""))
        await services.service.internal_event(
            "lp:exception", {"check": done.request.check, "subject": done.subject.key}
        )
        return _back("/exceptions", "Exception recorded.")
    rows = await resources.exceptions_data(services.service.store)
    return render(request, "exceptions.html", "Exceptions", "/exceptions", rows=rows, check_ids=CHECK_IDS)


async def events(request: Request) -> Response:
    await _sid(request)
    rows = await request.app.state.services.service.store.events.list(limit=50)
    return render(request, "events.html", "Events", "/events", rows=[r.as_json() for r in rows])


async def event_stream(request: Request) -> Response:
    """The live event log for the dashboard (session cookie instead of the Bearer token)."""
    await _sid(request)
    return api.stream_response(request)


async def connections(request: Request) -> Response:
    await _sid(request)
    rows = await resources.connections_data(request.app.state.services)
    notice = f"Connected {request.query_params['connected']}." if request.query_params.get("connected") else None
    if notice:
        request.scope["query_string"] = f"notice={quote(notice)}".encode()
    return render(request, "connections.html", "Connections", "/connections", rows=rows)


async def disconnect(request: Request) -> Response:
    await _form(request)
    await resources.disconnect_connection(request.app.state.services, request.path_params["id"])
    return _back("/connections", f"Disconnected {request.path_params['id']}.")


async def alerts(request: Request) -> Response:
    await _sid(request)
    services = request.app.state.services
    rows = await services.dispatcher.outbox.history(limit=100)
    view = [
        {
            "created": datetime.fromtimestamp(r.created_at, UTC).isoformat(timespec="seconds"),
            "channel": r.channel,
            "kind": r.kind,
            "workspace": r.payload.get("workspace"),
            "state": r.state,
            "error": r.error,
            "summary": f"{r.payload.get('subject')}: {r.payload.get('new_status')}",
        }
        for r in rows
    ]
    return render(request, "alerts.html", "Alerts", "/alerts", rows=view, channels=list(services.dispatcher.senders))


async def alert_test(request: Request) -> Response:
    await _form(request)
    services = request.app.state.services
    if not services.dispatcher.senders:
        return _back("/alerts", "No alert channel: set LP_SLACK_WEBHOOK_URL or LP_SMTP_URL.")
    result = await resources.send_test_message(services)
    return _back("/alerts", "Test message: " + ", ".join(f"{k} {v}" for k, v in result.items()))

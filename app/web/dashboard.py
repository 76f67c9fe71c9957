"""The dashboard: server-rendered Jinja2 pages and a little plain JavaScript (no build, no CDN).

Every page needs the session cookie from the login; every form carries a CSRF token. Changes are
:mod:`app.actions`, shared with the API and the CLI: a handler here parses the form and renders.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from app import actions, errors, queries
from app.checks import EVIDENCE_CHECKS, REGISTRY
from app.checks.base import valid_through
from app.models import FAILING, SEVERITY_ORDER, STATUSES
from app.queries import assessment as assessment_of
from app.queries import operations_data
from app.settings import CHECK_IDS
from app.store.views import MEMBER_SORTS, REPO_SORTS, RESULT_SORTS, Page, Views
from app.web import api, session
from app.web.uploads import upload_form

if TYPE_CHECKING:
    pass

PER_PAGE = 50
SEVERITIES = ("critical", "high", "medium", "low")
TEMPLATES = Environment(
    loader=FileSystemLoader(str(Path(__file__).with_name("templates"))), autoescape=select_autoescape(["html"])
)
TEMPLATES.globals["evidence_checks"] = EVIDENCE_CHECKS
NAV = [
    ("/", "Overview"),
    ("/findings", "Findings"),
    ("/repositories", "Repositories"),
    ("/members", "Members"),
    ("/evidence", "Evidence"),
    ("/exceptions", "Exceptions"),
    ("/personnel", "Personnel"),
    ("/events", "Events"),
    ("/operations", "Operations"),
    ("/connections", "Connections"),
    ("/alerts", "Alerts"),
    ("/settings", "Settings"),
]


def _views(request: Request) -> Views:
    return Views(request.app.state.services.service.store.db)


def _page_args(request: Request, sorts: dict[str, str], default: str) -> tuple[int, str, bool]:
    q = request.query_params
    try:
        page = max(1, min(int(q.get("page") or 1), 10**6))
    except ValueError:
        page = 1
    sort = q.get("sort") or default
    return page, sort if sort in sorts else default, q.get("dir") == "desc"


def _pager(request: Request, page: Page, number: int) -> dict[str, Any]:
    """Page links that keep the filters and the sort."""
    params = {k: v for k, v in request.query_params.items() if k not in ("page", "notice") and v}
    last = max(1, (page.total + PER_PAGE - 1) // PER_PAGE)

    def link(n: int) -> str:
        return request.url.path + "?" + urlencode(params | {"page": str(n)})

    return {
        "number": number,
        "last": last,
        "total": page.total,
        "first_item": (number - 1) * PER_PAGE + 1 if page.total else 0,
        "last_item": min(number * PER_PAGE, page.total),
        "prev": link(number - 1) if number > 1 else None,
        "next": link(number + 1) if number < last else None,
    }


def _sorter(request: Request) -> Callable[[str], str]:
    """``sort_link(column)``: the URL that sorts by ``column`` (toggling the direction)."""
    params = {k: v for k, v in request.query_params.items() if k not in ("page", "notice", "sort", "dir") and v}
    current, desc = request.query_params.get("sort"), request.query_params.get("dir") == "desc"

    def sort_link(column: str) -> str:
        flip = "asc" if current == column and desc else ("desc" if current == column else "asc")
        return request.url.path + "?" + urlencode(params | {"sort": column, "dir": flip})

    return sort_link


def _age(since: str | None, now: datetime) -> str:
    if not since:
        return ""
    try:
        delta = now - datetime.fromisoformat(since)
    except ValueError:
        return ""
    days = delta.days
    if days >= 1:
        return f"{days} day{'s' if days != 1 else ''}"
    hours = int(delta.total_seconds() // 3600)
    return f"{hours} h" if hours else "< 1 h"


def first_line(message: str) -> str:
    """What is wrong, in one line: the message's first sentence."""
    head = message.split(". ", 1)[0].strip()
    return head if head.endswith((".", "?", "!")) else head + "."


def todo(row: dict[str, Any], web_url: str, now: datetime) -> dict[str, Any]:
    """A result as an item of the to-do list: title, severity, human subject, what, how, link, age."""
    check = REGISTRY.get(row["check_id"])
    # How to fix it, in one line next to what is wrong, and where: both from the test's own module.
    fix = check.fix_text(row["workspace"], row["subject"]) if check else ""
    link = check.link(web_url.rstrip("/"), row["workspace"], row["subject"]) if check and check.settings_link else ""
    failing = row["status"] in FAILING
    details = row["details"]
    return {
        "check": row["check_id"],
        "title": check.title if check else row["check_id"],
        "controls": check.controls if check else (),
        "severity": row["severity"],
        "status": row["status"],
        "workspace": row["workspace"],
        "subject_type": row["subject_type"],
        "subject": row["subject"],
        "subject_key": row["subject_key"],
        # the human name: a repository's full name, a member's display name; the id comes second
        "name": row["subject"] if row["subject_type"] != "member" else (row["subject_name"] or row["subject"]),
        "what": first_line(row["message"]),
        "message": row["message"],
        "fix": fix if failing else "",
        "fix_link": link if failing else "",
        "classify": failing and check is not None and check.action == "classify",
        "action": check.action if check else "",
        "age": _age(row["last_changed"], now) if failing else "",
        "since": row["last_changed"],
        "stale_since": row.get("stale_since"),
        "exception": details.get("exception"),
    }


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
        raise errors.CsrfError()
    return dict(form)


def _back(path: str, notice: str) -> RedirectResponse:
    return RedirectResponse(f"{path}?notice={quote(notice)}", status_code=303)


async def login_page(request: Request) -> Response:
    await session.session_id(request)
    target = request.query_params.get("next", "/")
    error = "That token is not right." if request.query_params.get("error") else None
    return render(request, "login.html", "Sign in", "", next=target, error=error)


def trend_svg(deltas: list[dict[str, Any]], current_failing: int, days: int = 30) -> str:
    """Inline SVG: failing results at the end of each of the last ``days`` days (history replayed
    backwards from today's count), with a date axis."""
    today = datetime.now(UTC).date()
    changes = {d["day"]: d["delta"] for d in deltas}
    points, count = [], current_failing
    for i in range(days):
        day = today - timedelta(days=i)
        points.append((day, count))
        count -= changes.get(day.isoformat(), 0)
    points.reverse()
    top = max([c for _, c in points] + [1])
    width, height, left, bottom = 600, 160, 40, 24

    def x(i: int) -> float:
        return left + i * (width - left - 10) / (days - 1)

    def y(c: int) -> float:
        return height - bottom - c * (height - bottom - 20) / top

    coords = " ".join(f"{x(i):.1f},{y(c):.1f}" for i, (_, c) in enumerate(points))
    ticks = "".join(
        f'<text x="{x(i):.1f}" y="{height - 6}" font-size="11" text-anchor="middle" fill="#5b6475">'
        f"{day.strftime('%b %d')}</text>"
        f'<line x1="{x(i):.1f}" x2="{x(i):.1f}" y1="{height - bottom}" y2="{height - bottom + 4}" stroke="#5b6475"/>'
        for i, (day, _) in enumerate(points)
        if i % 7 == 0 or i == days - 1
    )
    label = f"Failing results per day over {days} days; today {current_failing}"
    return (
        f'<svg class="trend" viewBox="0 0 {width} {height}" role="img" aria-label="{label}">'
        f'<line x1="{left}" x2="{width - 10}" y1="{height - bottom}" y2="{height - bottom}" stroke="#c9ced8"/>'
        f'<text x="{left - 4}" y="{y(top) + 4:.1f}" font-size="11" text-anchor="end" fill="#5b6475">{top}</text>'
        f'<text x="{left - 4}" y="{y(0) + 4:.1f}" font-size="11" text-anchor="end" fill="#5b6475">0</text>'
        f'<polyline fill="none" stroke="#c62828" stroke-width="2.5" points="{coords}"/>{ticks}</svg>'
    )


async def overview(request: Request) -> Response:
    await _sid(request)
    services = request.app.state.services
    store = services.service.store
    by_check: dict[str, Counter[str]] = {}
    for cid, status, n in await store.results.counts():
        by_check.setdefault(cid, Counter())[status] += n
    severities: Counter[str] = Counter()
    checks = []
    for cid, c in REGISTRY.items():
        if cid not in by_check:
            continue
        counts = by_check[cid]
        severities[c.severity] += sum(counts.get(s, 0) for s in FAILING)
        relevant = sum(counts.values()) - counts.get("not_applicable", 0)
        ok = counts.get("pass", 0) + counts.get("excepted", 0)
        checks.append(
            {
                "id": cid,
                "title": c.title,
                "severity": c.severity,
                "controls": c.controls,
                "counts": counts,
                "rate": round(100 * ok / relevant) if relevant else 100,
            }
        )
    checks.sort(key=lambda c: (SEVERITY_ORDER.get(str(c["severity"]), 9), c["rate"]))
    failing = sum(n for counts in by_check.values() for s, n in counts.items() if s in FAILING)
    views = _views(request)
    assessment = await assessment_of(services)
    steps = await views.first_steps(
        policy=[c.id for c in REGISTRY.values() if c.evidence and c.subject_type == "workspace"],
        report=[c.id for c in REGISTRY.values() if c.evidence and c.subject_type == "member"],
        classify=[c.id for c in REGISTRY.values() if c.action == "classify"],
    )
    first_steps = [
        (
            "Classify your repositories as production or non-production",
            "/repositories?class=unclassified",
            steps["unclassified"] == 0 and steps["classified"] > 0,
        ),
        ("Import the personnel directory (who works here, who left)", "/personnel", steps["people"] > 0),
        (
            "Upload the authentication policy that requires two-step verification",
            "/evidence",
            steps["policy_evidence"] > 0,
        ),
        (
            "Upload the two-step verification report of the workspace's members",
            "/evidence",
            steps["report_evidence"] > 0,
        ),
    ]
    return render(
        request,
        "overview.html",
        "Overview",
        "/",
        checks=checks,
        severities=sorted((s for s in severities.items() if s[1]), key=lambda s: SEVERITY_ORDER.get(s[0], 9)),
        trend=trend_svg(await views.trend(30), failing),
        assessing=[a for a in assessment if not a["assessed"]],
        connected=bool(assessment),
        first_steps=[] if all(done for _, _, done in first_steps) else first_steps,
    )


async def findings(request: Request) -> Response:
    await _sid(request)
    services = request.app.state.services
    q = request.query_params
    number, sort, desc = _page_args(request, RESULT_SORTS, "status")
    f = {
        "check": q.get("check") if q.get("check") in CHECK_IDS else None,
        "status": q.get("status") if q.get("status") in STATUSES else None,
        "severity": q.get("severity") if q.get("severity") in SEVERITIES else None,
        "workspace": q.get("workspace") or None,
        "q": (q.get("q") or "").strip() or None,
    }
    page = await _views(request).results(**f, sort=sort, desc=desc, limit=PER_PAGE, offset=(number - 1) * PER_PAGE)
    now = datetime.now(UTC)
    web = services.service.settings.bitbucket_url
    items = [todo(r, web, now) for r in page.items]
    export = "/api/exports/findings.csv"
    return render(
        request,
        "findings.html",
        "Findings",
        "/findings",
        items=items,
        f=f,
        checks=[(c.id, c.title) for c in REGISTRY.values()],
        statuses=STATUSES,
        severities=SEVERITIES,
        counts=page.counts,
        pager=_pager(request, page, number),
        sort_link=_sorter(request),
        export=export,
        workspaces=sorted({w for c in await services.service.connections() for w in c.workspaces}),
    )


async def subject(request: Request) -> Response:
    await _sid(request)
    services = request.app.state.services
    store = services.service.store
    check, subj = request.query_params.get("check"), request.query_params.get("subject", "")
    rows = await store.results.query(check=check, subject=subj)
    item = None
    if rows:
        r = rows[0]
        row = {
            "check_id": r.result.check,
            "subject_type": r.result.subject_type,
            "subject": r.result.subject,
            "subject_key": r.result.subject_key,
            "subject_name": r.result.subject_name,
            "workspace": r.result.workspace,
            "severity": r.result.severity,
            "status": r.result.status,
            "message": r.result.message,
            "details": r.result.details,
            "last_changed": r.last_changed,
            "stale_since": r.stale_since,
        }
        item = todo(row, services.service.settings.bitbucket_url, datetime.now(UTC))
    history = await store.results.history(check, subj)
    key = rows[0].result.subject_key if rows else subj
    evidence = [e for e in await queries.evidence_data(store) if e["member"] == key or e["workspace"] == subj]
    exceptions = [
        x
        for x in await queries.exceptions_data(store)
        if (x.get("subject_key") in (subj, key) or x["subject"] in (subj, key)) and (not check or x["check"] == check)
    ]
    title = (item["name"] if item else subj) or subj
    return render(
        request,
        "subject.html",
        title,
        "/findings",
        subject=subj,
        item=item,
        history=history,
        evidence=evidence,
        exceptions=exceptions,
        today=datetime.now(UTC).date().isoformat(),
    )


async def repositories(request: Request) -> Response:
    await _sid(request)
    services = request.app.state.services
    q = request.query_params
    number, sort, desc = _page_args(request, REPO_SORTS, "name")
    workspaces = sorted({w for c in await services.service.connections() for w in c.workspaces})
    f = {
        "workspace": q.get("workspace") or None,
        "project": q.get("project") or None,
        "cls": q.get("class") if q.get("class") in ("production", "non-production", "unclassified") else None,
        "q": (q.get("q") or "").strip() or None,
    }
    views = _views(request)
    page = await views.repositories(
        workspaces,
        await services.service.store.records.rules(),
        **f,
        sort=sort,
        desc=desc,
        limit=PER_PAGE,
        offset=(number - 1) * PER_PAGE,
    )
    now = datetime.now(UTC)
    for r in page.items:  # freshness: how old the last good reading of its branch restrictions is
        read_at = r["restrictions_read_at"]
        r["restrictions_age"] = (_age(read_at, now) or "< 1 h") if read_at else None
    return render(
        request,
        "repositories.html",
        "Repositories",
        "/repositories",
        repos=page.items,
        f=f,
        counts=page.counts,
        workspaces=workspaces,
        projects=await views.projects(workspaces),
        pager=_pager(request, page, number),
        sort_link=_sorter(request),
    )


async def classify(request: Request) -> Response:
    form = await _form(request)
    raw = await request.form()
    services = request.app.state.services
    if form.get("one"):
        uuid, _, cls = str(form["one"]).partition("|")
        targets = [uuid]
    else:
        targets = [str(u) for u in raw.getlist("uuid")]
        cls = str(form.get("class") or "")
    if cls not in actions.CLASSES or not targets:
        return _back("/repositories", "Select repositories and a class.")
    done = []
    for uuid in targets:
        try:
            done.append((await actions.classify(services, uuid, cls, "dashboard")).full_name)
        except errors.NotFound:
            continue
    return _back("/repositories", f"Classified {', '.join(done)} as {cls}.")


async def members(request: Request) -> Response:
    await _sid(request)
    services = request.app.state.services
    q = request.query_params
    number, sort, desc = _page_args(request, MEMBER_SORTS, "name")
    workspaces = sorted({w for c in await services.service.connections() for w in c.workspaces})
    f = {
        "workspace": q.get("workspace") or None,
        "link": q.get("link") if q.get("link") in ("linked", "marked", "unlinked", "offboarded") else None,
        "q": (q.get("q") or "").strip() or None,
    }
    page = await _views(request).members(
        workspaces, **f, sort=sort, desc=desc, limit=PER_PAGE, offset=(number - 1) * PER_PAGE
    )
    return render(
        request,
        "members.html",
        "Members",
        "/members",
        members=page.items,
        f=f,
        counts=page.counts,
        workspaces=workspaces,
        pager=_pager(request, page, number),
        sort_link=_sorter(request),
    )


async def member_link(request: Request) -> Response:
    form = await _form(request)
    services = request.app.state.services
    try:
        await actions.link_member(
            services, str(form["workspace"]), str(form["account_id"]), str(form.get("email", "")), "dashboard"
        )
    except errors.RecordError:
        return _back("/members", "No one with that email in the personnel directory.")
    return _back("/members", "Linked.")


async def member_mark(request: Request) -> Response:
    form = await _form(request)
    services = request.app.state.services
    try:
        await actions.mark_member(
            services,
            str(form["workspace"]),
            str(form["account_id"]),
            str(form.get("mark", "")),
            str(form.get("owner", "")),
            "dashboard",
        )
    except errors.RecordError:
        return _back("/members", "Choose a mark and name an owner.")
    return _back("/members", "Marked.")


async def evidence(request: Request) -> Response:
    sid = await _sid(request)
    services = request.app.state.services
    if request.method == "POST":
        settings = request.app.state.settings
        try:
            form = await upload_form(request, settings.evidence_max_bytes)
        except errors.TooLarge as exc:
            return await _evidence_page(request, str(exc), 413)
        except errors.RecordError as exc:
            return _back("/evidence", str(exc))
        try:
            if not session.check_csrf(request, sid, str(form.get("csrf") or "")):
                raise errors.CsrfError()
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                return _back("/evidence", "Choose a file.")
            done = await actions.add_evidence(
                services,
                upload.file,
                check=str(form.get("check", "")),
                workspace=str(form.get("workspace", "")),
                member=str(form.get("member") or "").strip() or None,
                filename=upload.filename or "evidence",
                expires=str(form.get("expires") or "") or None,
                actor="dashboard",
            )
        except errors.TooLarge as exc:
            return await _evidence_page(request, str(exc), 413)
        except errors.RecordError as exc:
            return _back("/evidence", str(exc))
        finally:
            await form.close()
        expires = done.recorded.expires_at
        return _back(
            "/evidence", f"Evidence recorded for {done.check}; valid through {valid_through(expires).isoformat()}."
        )
    return await _evidence_page(request)


async def _evidence_page(request: Request, notice: str | None = None, status: int = 200) -> Response:
    services = request.app.state.services
    if notice:
        request.scope["query_string"] = f"notice={quote(notice)}".encode()
    rows = await queries.evidence_data(services.service.store)
    workspaces = sorted({w for c in await services.service.connections() for w in c.workspaces})
    q = request.query_params
    prefill = {k: q.get(k, "") for k in ("check", "workspace", "member")}
    return render(
        request, "evidence.html", "Evidence", "/evidence", status, rows=rows, workspaces=workspaces, prefill=prefill
    )


async def exceptions(request: Request) -> Response:
    await _sid(request)
    services = request.app.state.services
    if request.method == "POST":
        form = await _form(request)
        try:
            await actions.add_exception(
                services,
                check=str(form.get("check", "")),
                subject=str(form.get("subject", "")),
                owner=str(form.get("owner", "")),
                reason=str(form.get("reason", "")),
                expires=str(form.get("expires", "")),
                actor="dashboard",
            )
        except errors.RecordError as exc:
            return _back("/exceptions", str(exc).replace("--", ""))
        return _back("/exceptions", "Exception recorded.")
    rows = await queries.exceptions_data(services.service.store)
    prefill = {k: request.query_params.get(k, "") for k in ("check", "subject")}
    return render(
        request, "exceptions.html", "Exceptions", "/exceptions", rows=rows, check_ids=CHECK_IDS, prefill=prefill
    )


async def events(request: Request) -> Response:
    await _sid(request)
    store = request.app.state.services.service.store
    q = request.query_params
    number, _, _ = _page_args(request, {"id": "id"}, "id")
    f = {
        "state": q.get("state") if q.get("state") in api.EVENT_STATES else None,
        "event_key": q.get("event_key") or None,
        "workspace": q.get("workspace") or None,
        "q": (q.get("q") or "").strip() or None,
    }
    views = _views(request)
    page = await views.events(**f, limit=PER_PAGE, offset=(number - 1) * PER_PAGE)
    rows = []
    for ref in page.items:
        row = await store.events.get(int(ref["id"]))
        if row is not None:
            rows.append(row.as_json())
    return render(
        request,
        "events.html",
        "Events",
        "/events",
        rows=rows,
        f=f,
        counts=page.counts,
        states=api.EVENT_STATES,
        keys=await views.event_keys(),
        pager=_pager(request, page, number),
        live=number == 1 and not any(f.values()),
        fold=FOLD,
    )


FOLD = 10  # an event's change list is folded beyond this many lines


async def event_stream(request: Request) -> Response:
    """The live event log for the dashboard (session cookie instead of the Bearer token)."""
    await _sid(request)
    return api.stream_response(request)


async def connections(request: Request) -> Response:
    await _sid(request)
    rows = await queries.connections_data(request.app.state.services)
    notice = f"Connected {request.query_params['connected']}." if request.query_params.get("connected") else None
    if notice:
        request.scope["query_string"] = f"notice={quote(notice)}".encode()
    return render(request, "connections.html", "Connections", "/connections", rows=rows)


async def disconnect(request: Request) -> Response:
    """GET: a confirmation page; POST (CSRF, ``confirm=yes``): remove the hooks, forget the tokens."""
    cid = request.path_params["id"]
    if request.method == "GET":
        await _sid(request)
        conn = await request.app.state.services.service.store.connections.get(cid)
        if conn is None:
            return _back("/connections", f"Unknown connection {cid}.")
        return render(request, "disconnect.html", f"Disconnect {cid}", "/connections", conn=conn)
    form = await _form(request)
    if form.get("confirm") != "yes":
        return RedirectResponse(f"/connections/{quote(cid)}/disconnect", status_code=303)
    try:
        await actions.disconnect(request.app.state.services, cid)
    except errors.NotFound:
        pass  # gone already (another tab): the page says so
    return _back("/connections", f"Disconnected {cid}.")


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
    try:
        result = await actions.send_test_alert(request.app.state.services)
    except errors.NoAlertChannel as exc:
        return _back("/alerts", f"{exc.title}: {exc}.")
    return _back("/alerts", "Test message: " + ", ".join(f"{k} {v}" for k, v in result.items()))


async def operations(request: Request) -> Response:
    """The operator's panel: passes per connection and workspace, budget, queue, dead events."""
    await _sid(request)
    return render(
        request, "operations.html", "Operations", "/operations", **await operations_data(request.app.state.services)
    )


async def reconcile(request: Request) -> Response:
    form = await _form(request)
    tier = "members" if form.get("tier") == "members" else "full"
    done = await actions.reconcile_now(
        request.app.state.services, tier=tier, workspace=str(form.get("workspace") or "") or None
    )
    where = f" of {done.workspace}" if done.workspace else ""
    queued = ", ".join(map(str, done.events)) or "joined"
    return _back("/operations", f"Reconcile ({tier}){where} queued: event {queued}.")


async def event_retry(request: Request) -> Response:
    await _form(request)
    try:
        eid = int(request.path_params["id"])
    except ValueError:
        return _back("/operations", "Unknown event.")
    ok = await actions.retry_event(request.app.state.services, eid)
    return _back("/operations", f"Event {eid} queued again." if ok else f"Event {eid} is not dead.")


async def exception_revoke(request: Request) -> Response:
    await _form(request)
    try:
        xid = int(request.path_params["id"])
    except ValueError:
        return _back("/exceptions", "Unknown exception.")
    try:
        await actions.revoke_exception(request.app.state.services, xid, "dashboard")
    except errors.NotFound as exc:
        return _back("/exceptions", str(exc))
    return _back("/exceptions", f"Exception {xid} revoked.")


async def settings_page(request: Request) -> Response:
    await _sid(request)
    services = request.app.state.services
    s = request.app.state.settings
    secret = {"oauth_client_secret", "bitbucket_token", "secret_key", "admin_token", "slack_webhook_url", "smtp_url"}
    rows = []
    for name in type(s).model_fields:
        value = getattr(s, name)
        if name in secret:
            shown = "set" if value is not None else "not set"
        elif isinstance(value, tuple):
            shown = ", ".join(map(str, value)) or "—"
        else:
            shown = "—" if value is None else str(value)
        rows.append(("LP_" + name.upper(), shown))
    checks = [
        {"id": c.id, "title": c.title, "severity": c.severity, "controls": c.controls, "on": c.id in s.enabled_checks}
        for c in REGISTRY.values()
    ]
    return render(
        request,
        "settings.html",
        "Settings",
        "/settings",
        rows=rows,
        checks=checks,
        rules=await services.service.store.records.rules(),
    )


async def personnel_page(request: Request) -> Response:
    sid = await _sid(request)
    services = request.app.state.services
    if request.method == "POST":
        form = await request.form()
        try:
            if not session.check_csrf(request, sid, str(form.get("csrf") or "")):
                raise errors.CsrfError()
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                return _back("/personnel", "Choose a CSV or JSON file.")
            data = await upload.read()
            name = upload.filename or "upload.csv"
        finally:
            await form.close()
        try:
            done = await actions.import_personnel(services, actions.read_personnel(data, name), "dashboard")
        except errors.RecordError as exc:
            return _back("/personnel", f"Nothing imported: {exc}")
        return _back("/personnel", f"Imported {done.count} people.")
    q = request.query_params
    number, _, _ = _page_args(request, {"name": "name"}, "name")
    f = {
        "status": q.get("status") if q.get("status") in ("active", "offboarded") else None,
        "q": (q.get("q") or "").strip() or None,
    }
    page = await _views(request).people(**f, limit=PER_PAGE, offset=(number - 1) * PER_PAGE)
    return render(
        request,
        "personnel.html",
        "Personnel",
        "/personnel",
        people=page.items,
        f=f,
        counts=page.counts,
        pager=_pager(request, page, number),
    )


async def rules_page(request: Request) -> Response:
    await _sid(request)
    services = request.app.state.services
    store = services.service.store
    if request.method == "POST":
        form = await _form(request)
        try:
            await actions.add_rule(
                services,
                str(form.get("class") or ""),
                project_key=str(form.get("project_key") or "").strip() or None,
                name_glob=str(form.get("name_glob") or "").strip() or None,
                workspace=str(form.get("workspace") or "").strip() or None,
                actor="dashboard",
            )
        except errors.RecordError:
            return _back("/rules", "Give a class and either a project key or a name pattern (not both).")
        return _back("/rules", "Rule added.")
    workspaces = sorted({w for c in await services.service.connections() for w in c.workspaces})
    return render(
        request,
        "rules.html",
        "Classification rules",
        "/rules",
        rules=await store.records.rules(),
        workspaces=workspaces,
    )


async def audit_pack_page(request: Request) -> Response:
    await _sid(request)
    today = datetime.now(UTC).date()
    return render(
        request,
        "audit_pack.html",
        "Audit pack",
        "/findings",
        start=(today - timedelta(days=90)).isoformat(),
        end=today.isoformat(),
    )

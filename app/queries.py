"""What a person can see: the read models the JSON API and the dashboard render (repositories with
their class, members with their link or mark, evidence, exceptions, connections with their scope
report, webhook health and budget). Business rules (a repository's class from explicit classes and
rules, the scope report, webhook health) and the service's parts (the client pool) are read here,
so app/web/ only renders; changes are :mod:`app.actions`."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from app import errors, tiers
from app.bitbucket.models import Repository
from app.checks import scope_report
from app.checks.base import Person, valid_through
from app.models import StoredResult, utcnow
from app.store import Store
from app.store.facts import classify
from app.store.snapshots import k_members, k_prs, k_repo, k_repos
from app.store.views import Views
from app.webhook_registration import health

if TYPE_CHECKING:
    from app.services import Services


async def repositories_data(services: Services) -> list[dict[str, Any]]:
    """Repositories of every connected workspace with their class (API and dashboard)."""
    store = services.service.store
    rules = await store.records.rules()
    out = []
    for conn in await services.service.connections():
        for ws in conn.workspaces:
            explicit = await store.records.classes(ws)
            fresh = await tiers.freshness(store, ws)  # issue 13: age of the last good restrictions reading
            listed = await store.snapshots.get(k_repos(ws))
            for uuid in listed.content if listed and listed.content else []:
                snap = await store.snapshots.get(k_repo(uuid))
                if snap is None or snap.content is None:
                    continue
                repo = Repository.model_validate(snap.content)
                cls, source = classify(repo, explicit, rules)
                prs = await store.snapshots.get(k_prs(uuid))
                out.append(
                    {
                        "uuid": repo.uuid,
                        "full_name": repo.full_name,
                        "workspace": ws,
                        "name": repo.name,
                        "project": repo.project_key,
                        "mainbranch": repo.mainbranch,
                        "is_private": repo.is_private,
                        "language": repo.language,
                        "class": cls,
                        "class_source": source,
                        "open_pullrequests": prs.content if prs else None,
                        "restrictions_read_at": fresh.get(uuid, {}).get("read_at"),
                        "restrictions_age_seconds": fresh.get(uuid, {}).get("age_seconds"),
                    }
                )
    return out


def person_json(p: Person) -> dict[str, Any]:
    return {
        "email": p.email,
        "name": p.name,
        "kind": p.kind,
        "status": p.status,
        "offboarded_on": p.offboarded_on,
        "bitbucket_account_id": p.bitbucket_account_id,
        "owner": p.owner,
    }


async def members_data(services: Services) -> list[dict[str, Any]]:
    """Members of every connected workspace with their link or mark (API and dashboard)."""
    store = services.service.store
    people = {p.bitbucket_account_id: p for p in await store.records.people() if p.bitbucket_account_id}
    out = []
    for conn in await services.service.connections():
        for ws in conn.workspaces:
            snap = await store.snapshots.get(k_members(ws))
            marks = await store.records.marks(ws)
            for raw in snap.content if snap and isinstance(snap.content, list) else []:
                user = raw["user"]
                key = user.get("account_id") or user.get("uuid")
                person = people.get(key)
                out.append(
                    {
                        "workspace": ws,
                        "account_id": key,
                        "display_name": user.get("display_name"),
                        "permission": raw.get("permission"),
                        "person": person_json(person) if person else None,
                        "mark": {"kind": marks[key][0], "owner": marks[key][1]} if key in marks else None,
                    }
                )
    return out


def evidence_json(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": r["id"],
        "check": r["check_id"],
        "workspace": r["workspace"],
        "member": r["member"],
        "filename": r["filename"],
        "media_type": r["media_type"],
        "size": r["size"],
        "sha256": r["sha256"],
        "uploaded_by": r["uploaded_by"],
        "uploaded_at": r["uploaded_at"],
        "expires_at": r["expires_at"],
        "valid_through": valid_through(datetime.fromisoformat(r["expires_at"])).isoformat(),
        "expired": r["expires_at"] <= utcnow().isoformat(),
        "covered_members": json.loads(r["covered_members"]) if r["covered_members"] else None,
    }


async def evidence_data(store: Store) -> list[dict[str, Any]]:
    return [evidence_json(r) for r in await store.records.evidence_rows()]


async def exceptions_data(store: Store) -> list[dict[str, Any]]:
    rows = await store.records.exception_rows()
    now = utcnow().isoformat()
    return [
        {
            "id": r["id"],
            "check": r["check_id"],
            "subject": r["subject"],
            "subject_key": r["subject_key"],
            "owner": r["owner"],
            "reason": r["reason"],
            "created_at": r["created_at"],
            "expires_at": r["expires_at"],
            "valid_through": valid_through(datetime.fromisoformat(r["expires_at"])).isoformat(),
            "expired": r["expires_at"] <= now,
            "active": r["inactive_reason"] is None and r["subject_key"] is not None and r["revoked_at"] is None,
            "inactive_reason": r["inactive_reason"],
            "revoked_at": r["revoked_at"],
        }
        for r in rows
    ]


async def connections_data(services: Services) -> list[dict[str, Any]]:
    """Connections with scopes, the scope report and webhook health (API and dashboard)."""
    out = []
    for conn in await services.service.store.connections.all():
        client = services.service.pool.clients.get(conn.id)
        granted = conn.scopes or (tuple(sorted(client.granted_scopes)) if client and client.granted_scopes else None)
        out.append(
            {
                "id": conn.id,
                "kind": conn.kind,
                "workspaces": list(conn.workspaces),
                "status": conn.status,
                "status_reason": conn.status_reason,
                "user": conn.user,
                "scopes": list(granted) if granted else None,
                "scope_report": scope_report(
                    granted,
                    services.service.settings.enabled_checks,
                    await not_admin_repositories(services.service.store, conn.workspaces),
                ),
                "webhook": await health(services.service, conn)
                if conn.status != "disconnected"
                else {"status": "none"},
                "budget_remaining": client.budget.remaining if client else None,
                "created_at": conn.created_at,
            }
        )
    return out


async def not_admin_repositories(store: Store, workspaces: Iterable[str]) -> list[str]:
    """Repositories whose admin-only reads (branch restrictions, Pipelines switch) Bitbucket refused
    because the connection's user is not an admin of them, although the scope is granted: the
    scope report shows them apart from missing scopes."""
    return await Views(store.db).not_admin_repositories(list(workspaces))


def budget(services: Services, conn_id: str, now: float) -> dict[str, Any] | None:
    """A connection's request budget this hour (None before its client first ran): what is left,
    the limit, the seconds waited so far and, when a low-priority request must wait, until when."""
    client = services.service.pool.clients.get(conn_id)
    if client is None:
        return None
    b = client.budget
    wait = b.delay(priority=False)
    return {
        "remaining": b.remaining,
        "limit": b.limit,
        "waited": round(b.waited),
        "wait_until": datetime.fromtimestamp(now + wait, UTC).isoformat(timespec="seconds") if wait else None,
    }


# -- the operations data: one source for the Operations page, the Overview, GET /api/operations and
# /readyz: per connection and workspace, the last, current and next pass of each tier (a running pass
# with its progress: repositories done of those listed, and while it waits for API budget, until when
# and why), the API budget left this hour, the queue and the dead events.


def _at_iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds") if ts else None


async def assessment(services: Services) -> list[dict[str, Any]]:
    """Per connected workspace: whether its first full pass finished, and the full pass that is
    queued or running now (with its progress)."""
    views = Views(services.service.store.db)
    out = []
    for conn in await services.service.connections():
        for ws in conn.workspaces:
            assessed = await views.assessed(conn.id, ws)
            current = None if assessed else await views.current_pass(conn.id, ws, "full")
            out.append({"connection": conn.id, "workspace": ws, "assessed": assessed, "current": current})
    return out


async def operations_data(services: Services) -> dict[str, Any]:
    """The operator's panel: passes per connection and workspace, budget, queue, dead events."""
    views = Views(services.service.store.db)
    now = datetime.now(UTC).timestamp()
    panels = []
    for conn in await services.service.connections():
        budget = _budget_with_why(services, conn.id, now)
        for ws in conn.workspaces:
            passes = await views.passes(conn.id, ws)
            tiers = []
            for tier, p in passes.items():
                last = p["last"]
                tiers.append(
                    {
                        "tier": tier,
                        "last": last,
                        "last_calls": (last["caused"] or {}).get("api_calls") if last else None,
                        "current": p["current"],
                        "next_at": _at_iso(p["next_at"]),
                    }
                )
            panels.append(
                {
                    "connection": conn.id,
                    "workspace": ws,
                    "assessed": await views.assessed(conn.id, ws),
                    "tiers": tiers,
                    "budget": budget,
                }
            )
    return {"panels": panels, "queue": await views.queue(), "dead": await views.dead_events()}


def _budget_with_why(services: Services, conn_id: str, now: float) -> dict[str, Any] | None:
    """``budget`` and, while a low-priority request must wait, why (share spent, spread, 429, near limit)."""
    out = budget(services, conn_id, now)
    client = services.service.pool.clients.get(conn_id)
    if out is not None and client is not None:
        out["why"] = client.budget.why(priority=False) if out["wait_until"] else None
    return out


async def findings(
    store: Store, *, workspace: str | None = None, check: str | None = None, status: str | None = None
) -> tuple[list[StoredResult], bool]:
    """The results matching the filters, and whether any result exists at all. A workspace the
    product does not know is refused (``UnknownWorkspace``, naming the known ones): a misspelt
    workspace must not read as a clean report."""
    if workspace is not None and not await store.results.exist(workspace):
        connected = {ws for c in await store.connections.all() for ws in c.workspaces}
        if workspace not in connected:
            known_set = connected | {r.result.workspace for r in await store.results.query()}
            known = ", ".join(sorted(known_set | set(await store.snapshots.workspaces()))) or "none yet"
            raise errors.UnknownWorkspace(f"{workspace!r} is not a workspace the product knows ({known})")
    rows = await store.results.query(workspace=workspace, check=check, status=status)
    return rows, bool(rows) or bool(await store.results.counts())

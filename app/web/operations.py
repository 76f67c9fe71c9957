"""The operations data, one source for the Operations page, the Overview, ``GET /api/operations``
and ``/readyz``: per connection and workspace, the last, current and next pass of each tier (a
running pass with its progress: repositories done of those listed, and while it waits for API
budget, until when and why), the API budget left this hour, the queue and the dead events."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from app.store.views import Views
from app.web.auth import require_admin


def _at(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds") if ts else None


async def assessment(services: Any) -> list[dict[str, Any]]:
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


async def operations_data(services: Any) -> dict[str, Any]:
    """The operator's panel: passes per connection and workspace, budget, queue, dead events."""
    views = Views(services.service.store.db)
    now = datetime.now(UTC).timestamp()
    panels = []
    for conn in await services.service.connections():
        client = services.service.pool.clients.get(conn.id)
        budget = None
        if client is not None:
            b = client.budget
            wait = b.delay(priority=False)
            budget = {
                "remaining": b.remaining,
                "limit": b.limit,
                "waited": round(b.waited),
                "wait_until": _at(now + wait) if wait else None,
                "why": b.why(priority=False) if wait else None,
            }
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
                        "next_at": _at(p["next_at"]),
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


async def api_operations(request: Request) -> Response:
    """``GET /api/operations``: the Operations page's data as JSON."""
    require_admin(request)
    return JSONResponse(await operations_data(request.app.state.services))

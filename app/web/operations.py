"""``GET /api/operations``: the Operations page's data (``app.queries.operations_data``) as JSON."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from app.queries import operations_data
from app.web.auth import require_admin
from app.web.state import services_of


async def api_operations(request: Request) -> Response:
    """``GET /api/operations``: the Operations page's data as JSON."""
    require_admin(request)
    return JSONResponse(await operations_data(services_of(request)))

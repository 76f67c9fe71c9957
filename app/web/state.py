"""Typed access to what the app holds in ``request.app.state`` (Starlette types it as ``Any``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from starlette.requests import Request

if TYPE_CHECKING:
    from app.services import Services
    from app.settings import Settings


def services_of(request: Request) -> Services:
    """The running product's parts (store, service, worker, dispatcher)."""
    return cast("Services", request.app.state.services)


def settings_of(request: Request) -> Settings:
    return cast("Settings", request.app.state.settings)

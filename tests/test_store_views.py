"""The dashboard's list queries (app/store/views.py) after a real pass, on each store."""

from __future__ import annotations

import io
from pathlib import Path

from app.commands import cmd_reconcile, open_store
from app.sandbox.serve import RunningSandbox, free_port
from app.store.views import Views
from tests.helpers import product_settings


async def test_members_repositories_and_people_pages(sandbox: RunningSandbox, tmp_path: Path) -> None:
    settings = product_settings(sandbox.api, tmp_path, free_port())
    assert await cmd_reconcile(settings, None, out=io.StringIO()) == 0
    async with open_store(settings) as store:
        views = Views(store.db)
        members = await views.members(["acme"])
        assert members.total == len(members.items) > 1 and sum(members.counts.values()) == members.total
        names = [m["display_name"] for m in members.items]
        assert names == sorted(names, key=lambda n: n.casefold())  # by name
        assert all(
            m["account_id"] and m["link"] in ("linked", "marked", "unlinked", "offboarded") for m in members.items
        )
        first = await views.members(["acme"], limit=1, offset=1, sort="name", desc=True)
        assert [m["account_id"] for m in first.items] == [members.items[-2]["account_id"]]
        repos = await views.repositories(["acme"], [])
        assert repos.total > 1 and all(r["full_name"].startswith("acme/") for r in repos.items)
        assert any(r["is_private"] for r in repos.items) and all(r["class"] is None for r in repos.items)
        assert (await views.people()).total == 0
        trend = await views.trend(30)
        assert trend and all(d["delta"] >= 0 for d in trend)  # the first assessment: only new failures

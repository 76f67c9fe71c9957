"""Results, their history and the alerts they cause are written in one transaction: a failure
between them cannot record a change without its alert (nor an alert without its change)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp

from app.sandbox.serve import RunningSandbox, free_port
from tests import pgcluster
from tests.helpers import Receiver, product_settings, running_app


def rename_table(database: Path | str, old: str, new: str) -> None:
    """Through a connection of its own (another client): an SQLite file or a PostgreSQL URL."""
    if isinstance(database, str):
        pgcluster.fetch(database, f"ALTER TABLE {old} RENAME TO {new}")
        return
    conn = sqlite3.connect(database, timeout=10)
    try:
        conn.execute(f"ALTER TABLE {old} RENAME TO {new}")
        conn.commit()
    finally:
        conn.close()


def outbox_for(database: Path | str, subject: str) -> list[Any]:
    if isinstance(database, str):
        rows: list[Any] = pgcluster.fetch(database, "SELECT * FROM outbox WHERE kind = 'opened'")
    else:
        conn = sqlite3.connect(database, timeout=30)
        conn.row_factory = sqlite3.Row
        try:
            rows = list(conn.execute("SELECT * FROM outbox WHERE kind = 'opened'"))
        finally:
            conn.close()
    return [
        r for r in rows if f'"subject": "{subject}"' in r["payload"] and "branch-protection-enforced" in r["payload"]
    ]


async def test_a_failed_alert_write_leaves_no_result_change_behind(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    async with Receiver() as slack:
        port = free_port()
        settings = product_settings(
            sandbox.api,
            tmp_path,
            port,
            LP_SLACK_WEBHOOK_URL=slack.url + "/services/x",
            LP_SLACK_ALLOW_INSECURE_URL="true",
        )
        async with running_app(settings, port, session, background=False) as app:
            service, worker = app.services.service, app.services.worker
            store, db = service.store, pgcluster.database_for(tmp_path / "lp.sqlite3")  # the app's
            worker.coalesce_window = 0.0
            worker.retry_base = 0.0
            await service.internal_event("lp:reconcile", {"tier": "full"})
            await worker.drain()

            async def status() -> str:
                [row] = await store.results.query(check="branch-protection-enforced", subject="acme/api")
                return row.result.status

            assert await status() == "pass"
            history = await store.results.count_history()
            # The alert cannot be written (its table is gone) when the result changes.
            await asyncio.to_thread(rename_table, db, "outbox", "outbox_away")
            try:
                async with session.post(
                    f"{sandbox.url}/_sandbox/repos/acme/api/update", json={"mainbranch": "develop"}
                ) as resp:
                    assert resp.status == 200
                assert await worker.step() == 1
                [event] = await store.events.list(event_key="repo:updated")
                assert event.state == "failed" and "outbox" in (event.error or "")
                assert await status() == "pass"  # no change recorded without its alert
                assert await store.results.count_history() == history
            finally:
                await asyncio.to_thread(rename_table, db, "outbox_away", "outbox")
            assert outbox_for(db, "acme/api") == []
            # The retry records the change and its alert together.
            await worker.drain()
            assert (await store.events.get(event.id)).state == "done"  # type: ignore[union-attr]
            assert await status() == "fail"
            assert await store.results.count_history() == history + 2  # branch protection and peer review
            assert len(outbox_for(db, "acme/api")) == 1

"""The durable alert outbox: one row per (alert, channel), idempotent, grouped for delivery."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from app.store.db import Database

MAX_TRIES = 6


@dataclass(frozen=True)
class OutboxRow:
    id: int
    channel: str
    group_key: str
    kind: str
    payload: dict[str, Any]
    state: str
    tries: int
    created_at: float
    sent_at: float | None
    error: str | None


def _row(r: Any) -> OutboxRow:
    return OutboxRow(
        r["id"],
        r["channel"],
        r["group_key"],
        r["kind"],
        json.loads(r["payload"]),
        r["state"],
        r["tries"],
        r["created_at"],
        r["sent_at"],
        r["error"],
    )


# (channel, group_key, idempotency_key, kind, payload): one alert for one channel.
Entry = tuple[str, str, str, str, dict[str, Any]]


async def insert(conn: Any, rows: Sequence[Entry], stamp: float) -> int:
    """Add outbox rows inside the caller's transaction (results and their alerts commit together);
    a known idempotency key adds nothing."""
    added = 0
    for channel, group, key, kind, payload in rows:
        cur = await conn.execute(
            "INSERT OR IGNORE INTO outbox (channel, group_key, idempotency_key, kind, payload, state, "
            "created_at) VALUES (?,?,?,?,?, 'pending', ?)",
            (channel, group, key, kind, json.dumps(payload, default=str), stamp),
        )
        added += cur.rowcount
    return added


class Outbox:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(self, rows: Sequence[Entry], now: float | None = None) -> int:
        """(channel, group_key, idempotency_key, kind, payload); a known idempotency key adds nothing."""
        if not rows:
            return 0
        stamp = time.time() if now is None else now
        async with self.db.transaction() as conn:
            return await insert(conn, rows, stamp)

    async def due_groups(self, now: float) -> list[tuple[str, float, float | None]]:
        """(group, oldest pending created_at, last sent) for groups with deliverable rows."""
        rows = await self.db.fetchall(
            "SELECT o.group_key, min(o.created_at), g.last_sent_at FROM outbox o LEFT JOIN alert_groups g "
            "ON g.group_key = o.group_key WHERE o.state IN ('pending', 'failed') AND o.next_attempt_at <= ? "
            "GROUP BY o.group_key, g.last_sent_at",
            (now,),
        )
        return [(r[0], float(r[1]), float(r[2]) if r[2] is not None else None) for r in rows]

    async def pending(self, group: str, now: float) -> list[OutboxRow]:
        rows = await self.db.fetchall(
            "SELECT * FROM outbox WHERE group_key = ? AND state IN ('pending', 'failed') AND next_attempt_at <= ? "
            "ORDER BY id",
            (group, now),
        )
        return [_row(r) for r in rows]

    async def sent(self, ids: list[int], group: str, now: float) -> None:
        async with self.db.transaction() as conn:
            await conn.executemany(
                "UPDATE outbox SET state = 'sent', sent_at = ?, error = NULL WHERE id = ?", [(now, i) for i in ids]
            )
            await conn.execute(
                "INSERT INTO alert_groups (group_key, last_sent_at) VALUES (?, ?) ON CONFLICT (group_key) "
                "DO UPDATE SET last_sent_at = excluded.last_sent_at",
                (group, now),
            )

    async def failed(self, rows: list[OutboxRow], error: str, now: float, backoff: float = 10.0) -> bool:
        """Back off; True when the rows are now dead (tries exhausted)."""
        tries = max(r.tries for r in rows) + 1
        dead = tries >= MAX_TRIES
        await self.db.executemany(
            "UPDATE outbox SET state = ?, tries = ?, next_attempt_at = ?, error = ? WHERE id = ?",
            [("dead" if dead else "failed", tries, now + backoff * 2 ** (tries - 1), error[:500], r.id) for r in rows],
        )
        return dead

    async def history(self, limit: int = 100, channel: str | None = None) -> list[OutboxRow]:
        sql = "SELECT * FROM outbox" + (" WHERE channel = ?" if channel else "") + " ORDER BY id DESC LIMIT ?"
        params: list[Any] = [channel, limit] if channel else [limit]
        return [_row(r) for r in await self.db.fetchall(sql, params)]

    async def counts(self) -> dict[str, int]:
        return {r[0]: r[1] for r in await self.db.fetchall("SELECT state, count(*) FROM outbox GROUP BY state")}

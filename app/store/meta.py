"""Small named values: what the scheduler keeps between rounds (next due times, the last expiry sweep)
and this installation's id (``installation_id``, which marks its webhooks)."""

from __future__ import annotations

from app.store.db import Database


class Meta:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, key: str) -> str | None:
        row = await self.db.fetchone("SELECT value FROM meta WHERE key = ?", (key,))
        return str(row[0]) if row else None

    async def set(self, key: str, value: str) -> None:
        await self.db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    async def setdefault(self, key: str, value: str) -> str:
        """The stored value of ``key``; ``value`` is stored first when there is none (atomic: when two
        processes race, both get the one value that was stored first)."""
        await self.db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING", (key, value))
        stored = await self.get(key)
        assert stored is not None
        return stored

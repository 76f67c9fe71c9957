"""Dashboard sessions held server-side, so a logout revokes the cookie for good.

Only the SHA-256 of a session id is stored, with its expiry, as ``session:<hash>`` rows of the
``meta`` table (no schema change). A cookie whose row is gone (logged out, expired) is refused.
"""

from __future__ import annotations

from app.store.db import Database

PREFIX = "session:"


class Sessions:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(self, sid_hash: str, expires: float, now: float) -> None:
        async with self.db.transaction() as conn:
            await conn.execute("DELETE FROM meta WHERE key LIKE 'session:%' AND CAST(value AS REAL) < ?", (now,))
            await conn.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (PREFIX + sid_hash, repr(expires)))

    async def active(self, sid_hash: str, now: float) -> bool:
        row = await self.db.fetchone("SELECT value FROM meta WHERE key = ?", (PREFIX + sid_hash,))
        return row is not None and float(row[0]) >= now

    async def revoke(self, sid_hash: str) -> None:
        await self.db.execute("DELETE FROM meta WHERE key = ?", (PREFIX + sid_hash,))

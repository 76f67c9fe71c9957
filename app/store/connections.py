"""Connections to Bitbucket: token mode (from settings) or OAuth; secrets only as ciphertext."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from app.store.db import Database
from app.store.events import now_iso


@dataclass(frozen=True)
class Connection:
    id: str
    kind: str
    workspaces: tuple[str, ...]
    status: str
    status_reason: str | None
    tokens: bytes | None
    token_expires_at: str | None
    scopes: tuple[str, ...] | None
    user: dict[str, Any] | None
    webhook_secret: bytes | None
    webhook_secret_previous: bytes | None
    hooks: list[dict[str, Any]]
    last_delivery_at: str | None
    created_at: str


def _conn(r: Any) -> Connection:
    return Connection(
        id=r["id"],
        kind=r["kind"],
        workspaces=tuple(json.loads(r["workspaces"])),
        status=r["status"],
        status_reason=r["status_reason"],
        tokens=r["tokens"],
        token_expires_at=r["token_expires_at"],
        scopes=tuple(json.loads(r["scopes"])) if r["scopes"] else None,
        user=json.loads(r["user"]) if r["user"] else None,
        webhook_secret=r["webhook_secret"],
        webhook_secret_previous=r["webhook_secret_previous"],
        hooks=json.loads(r["hooks"]),
        last_delivery_at=r["last_delivery_at"],
        created_at=r["created_at"],
    )


class Connections:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def upsert(
        self,
        cid: str,
        kind: str,
        workspaces: tuple[str, ...],
        *,
        tokens: bytes | None = None,
        token_expires_at: str | None = None,
        scopes: tuple[str, ...] | None = None,
        user: dict[str, Any] | None = None,
    ) -> Connection:
        now = now_iso()
        await self.db.execute(
            """INSERT INTO connections (id, kind, workspaces, tokens, token_expires_at, scopes, "user", created_at,
               updated_at) VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT (id) DO UPDATE SET workspaces = excluded.workspaces,
               tokens = coalesce(excluded.tokens, connections.tokens),
               token_expires_at = coalesce(excluded.token_expires_at, connections.token_expires_at),
               scopes = coalesce(excluded.scopes, connections.scopes),
               "user" = coalesce(excluded."user", connections."user"),
               status = 'active', status_reason = NULL, updated_at = excluded.updated_at""",
            (
                cid,
                kind,
                json.dumps(list(workspaces)),
                tokens,
                token_expires_at,
                json.dumps(list(scopes)) if scopes is not None else None,
                json.dumps(user) if user else None,
                now,
                now,
            ),
        )
        got = await self.get(cid)
        assert got is not None
        return got

    async def get(self, cid: str) -> Connection | None:
        r = await self.db.fetchone("SELECT * FROM connections WHERE id = ?", (cid,))
        return _conn(r) if r else None

    async def all(self) -> list[Connection]:
        return [_conn(r) for r in await self.db.fetchall("SELECT * FROM connections ORDER BY created_at, id")]

    async def set_webhook(
        self, cid: str, secret: bytes | None, hooks: list[dict[str, Any]], previous: bytes | None = None
    ) -> None:
        await self.db.execute(
            "UPDATE connections SET webhook_secret = coalesce(?, webhook_secret), "
            "webhook_secret_previous = coalesce(?, webhook_secret_previous), hooks = ?, updated_at = ? WHERE id = ?",
            (secret, previous, json.dumps(hooks), now_iso(), cid),
        )

    async def set_tokens(self, cid: str, tokens: bytes, expires_at: str | None, scopes: tuple[str, ...] | None) -> None:
        await self.db.execute(
            "UPDATE connections SET tokens = ?, token_expires_at = ?, scopes = coalesce(?, scopes), updated_at = ? "
            "WHERE id = ?",
            (tokens, expires_at, json.dumps(list(scopes)) if scopes is not None else None, now_iso(), cid),
        )

    async def set_scopes(self, cid: str, scopes: tuple[str, ...]) -> None:
        await self.db.execute("UPDATE connections SET scopes = ? WHERE id = ?", (json.dumps(sorted(scopes)), cid))

    async def set_status(self, cid: str, status: str, reason: str | None) -> None:
        await self.db.execute(
            "UPDATE connections SET status = ?, status_reason = ?, updated_at = ? WHERE id = ?",
            (status, reason, now_iso(), cid),
        )

    async def touch_delivery(self, cid: str, at: str) -> None:
        await self.db.execute("UPDATE connections SET last_delivery_at = ? WHERE id = ?", (at, cid))

    async def add_oauth_state(self, state_hash: str, session_hash: str, created_at: float) -> None:
        await self.db.execute(
            "INSERT INTO oauth_states (state_hash, session_hash, created_at) VALUES (?, ?, ?)",
            (state_hash, session_hash, created_at),
        )

    async def claim_oauth_state(self, state_hash: str, now: float) -> tuple[str, float] | None:
        """Single use: only the first claim of a state gets (session hash, created at)."""
        rows = await self.db.write_returning(
            "UPDATE oauth_states SET used_at = ? WHERE state_hash = ? AND used_at IS NULL "
            "RETURNING session_hash, created_at",
            (now, state_hash),
        )
        return (str(rows[0][0]), float(rows[0][1])) if rows else None

    async def forget(self, cid: str) -> None:
        """Disconnect: drop tokens and secrets; the row stays for the record."""
        await self.db.execute(
            "UPDATE connections SET tokens = NULL, webhook_secret = NULL, webhook_secret_previous = NULL, "
            "hooks = '[]', status = 'disconnected', updated_at = ? WHERE id = ?",
            (now_iso(), cid),
        )

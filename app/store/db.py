"""SQLite through aiosqlite: one connection per process, WAL, versioned migrations.

Durability: ``synchronous=FULL`` on every connection, so a committed transaction (such as the
insert that gates a webhook's 202) survives a crash or power loss, not only a process kill.
Migrations are numbered SQL scripts applied in order; ``PRAGMA user_version`` records the last.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from app.store.natkey import natural_key, regexp
from app.store.schema import MIGRATIONS


class Database:
    """A single aiosqlite connection with a write lock for transactions.

    :class:`app.store.pg.PgDatabase` is its PostgreSQL twin (same methods; rows are read by name
    or position on both)."""

    dialect = "sqlite"

    def __init__(self, conn: aiosqlite.Connection, path: Path) -> None:
        self.conn = conn
        self.path = path
        self._write = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path) -> Database:
        path.parent.mkdir(parents=True, exist_ok=True)
        connecting = aiosqlite.connect(str(path), isolation_level=None)
        try:
            conn = await connecting
        except BaseException:
            # aiosqlite stops its thread on a failed connect without waiting for it; wait here, so the
            # thread never outlives the event loop (it would fail with "Event loop is closed").
            await asyncio.to_thread(connecting._thread.join, 10)
            raise
        try:
            conn.row_factory = aiosqlite.Row
            await conn.execute("PRAGMA journal_mode=WAL")
            await conn.execute("PRAGMA synchronous=FULL")
            await conn.execute("PRAGMA foreign_keys=ON")
            await conn.execute("PRAGMA busy_timeout=10000")
            # the members table's sort key (schema 6, app/store/snapshots.py); views use it too
            await conn.create_function("lp_natkey", 1, natural_key, deterministic=True)
            await conn.create_function("lp_regexp", 2, regexp, deterministic=True)
            db = cls(conn, path)
            await db.migrate()
        except BaseException:
            # aiosqlite's thread is not a daemon: a connection left open keeps the process alive.
            await conn.close()
            raise
        return db

    async def migrate(self) -> int:
        async with self._write:
            row = await (await self.conn.execute("PRAGMA user_version")).fetchone()
            version = int(row[0]) if row else 0
            if version > len(MIGRATIONS):
                # A later version migrated this database (then was rolled back?): its schema is not
                # ours to write. Refused (exit 2 in every command) instead of half-working on it.
                raise aiosqlite.DatabaseError(
                    f"written by a newer version of lowerplane-bitbucket (schema {version}; this version "
                    f"knows up to {len(MIGRATIONS)}): upgrade, or restore a backup made by this version"
                )
            for number, script in enumerate(MIGRATIONS, 1):
                if number <= version:
                    continue
                await self.conn.execute("BEGIN IMMEDIATE")
                try:
                    for statement in _statements(script):
                        await self.conn.execute(statement)
                    await self.conn.execute(f"PRAGMA user_version={number}")
                    await self.conn.execute("COMMIT")
                except BaseException:
                    await self.conn.execute("ROLLBACK")
                    raise
                version = number
            return version

    async def ping(self) -> None:
        """Raises when the database cannot answer (readiness probe)."""
        await self.fetchone("SELECT 1")

    async def close(self) -> None:
        await self.conn.close()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        """A write transaction (BEGIN IMMEDIATE … COMMIT), serialized within the process."""
        async with self._write:
            await self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                await self.conn.execute("ROLLBACK")
                raise
            await self.conn.execute("COMMIT")

    async def write_returning(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """One statement in autocommit mode (atomic and, with synchronous=FULL, durable when this
        returns), serialized with the transactions: one thread hop (execute and fetch together)."""
        async with self._write:
            return list(await self.conn.execute_fetchall(sql, params))

    async def insert_counted(self, sql: str, params: Sequence[Any] = ()) -> tuple[int, int]:
        """One INSERT in autocommit mode (atomic and durable when this returns), serialized with the
        transactions: ``(last_insert_rowid, rows inserted)``. One thread hop and one statement step
        whatever the number of rows: each step gives up the GIL, which the connection's thread then
        waits for while the event loop is busy (``RETURNING`` steps once per row)."""
        async with self._write:
            cursor = await self.conn.execute(sql, params)
            # Read where they are: the statement is done (its step reset it), so the cursor holds
            # nothing to close, which would cost another hop.
            return cursor.lastrowid or 0, max(cursor.rowcount, 0)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        async with self.conn.execute(sql, params) as cur:
            return list(await cur.fetchall())

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Any:
        async with self.conn.execute(sql, params) as cur:
            return await cur.fetchone()

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """One statement in its own transaction; returns lastrowid."""
        async with self.transaction() as conn:
            cur = await conn.execute(sql, params)
            return cur.lastrowid or 0

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        async with self.transaction() as conn:
            await conn.executemany(sql, rows)

    async def backup(self, target: Path) -> None:
        """An online, consistent copy of the database (SQLite backup API)."""
        target.parent.mkdir(parents=True, exist_ok=True)
        async with aiosqlite.connect(str(target)) as dest:
            await self.conn.backup(dest)


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";\n") if s.strip()]

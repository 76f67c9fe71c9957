"""The one place with SQL: SQLite (aiosqlite, the embedded default) or PostgreSQL (asyncpg, for
several instances). ``Store.open(database)`` gives every table."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from app.store.connections import Connections
from app.store.db import Database
from app.store.events import Events, Locks
from app.store.meta import Meta
from app.store.pg import PgDatabase, is_url
from app.store.records import Records
from app.store.results import Results
from app.store.snapshots import Snapshots


@dataclass
class Store:
    db: Database
    snapshots: Snapshots
    results: Results
    records: Records
    events: Events
    connections: Connections
    locks: Locks
    meta: Meta

    @classmethod
    async def open(cls, database: Path | str, data_dir: Path | None = None) -> Store:
        """An SQLite file (a path) or a PostgreSQL database (a ``postgresql://`` URL)."""
        db = await PgDatabase.open(str(database)) if is_url(database) else await Database.open(Path(database))
        return cls(
            db,
            Snapshots(db),
            Results(db),
            Records(db, data_dir or db.path.parent),
            Events(db),
            Connections(db),
            Locks(db),
            Meta(db),
        )

    async def close(self) -> None:
        await self.db.close()

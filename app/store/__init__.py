"""SQLite only (aiosqlite): the one place with SQL. ``Store.open(settings)`` gives every table."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from app.store.connections import Connections
from app.store.db import Database
from app.store.events import Events, Locks
from app.store.meta import Meta
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
    async def open(cls, database: Path, data_dir: Path | None = None) -> Store:
        db = await Database.open(database)
        return cls(
            db,
            Snapshots(db),
            Results(db),
            Records(db, data_dir or database.parent),
            Events(db),
            Connections(db),
            Locks(db),
            Meta(db),
        )

    async def close(self) -> None:
        await self.db.close()

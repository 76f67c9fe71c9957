"""Benchmark: what the event log's dedup indexes cost the group commit, per stored delivery.

The receiver's insert (``Events.append_many``: one multi-row ``INSERT OR IGNORE`` per batch, in
autocommit, ``synchronous=FULL``, WAL) run directly on a fresh database with the product's schema,
``--batches`` batches of ``--batch`` rows, and for each variant: the CPU the statement takes per
row (binding, B-tree inserts, WAL writes, fsync's system time) and the WAL bytes a batch writes.

Two key shapes:
- ``bench``: the keys of ``bench/ingest_wrk.py --keys sequential`` (X-Request-UUID ``run-N``, a hook per
  delivery), which sort nearly in arrival order, so a batch touches few index pages;
- ``real``: what Bitbucket sends (a random X-Request-UUID per delivery, one hook per workspace),
  so each row of a batch lands on a random leaf page of each dedup index.

Variants: with the unique index on (connection, hook, body) that schema 7 dropped (deduplication
is by X-Request-UUID alone since); the schema as it is; without the unique index on (connection,
X-Request-UUID) too (the floor: table, state and change indexes only).

Run: ``.venv/bin/python bench/ingest_indexes.py [--batches N] [--batch B]``
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sqlite3
import tempfile
import time
import uuid
from pathlib import Path

import orjson
from common import table

from app.store.events import _INSERT_MANY  # the product's own statement
from app.store.natkey import natural_key
from app.store.schema import MIGRATIONS

VARIANTS = {
    "before schema 7 (+ body index)": [
        "CREATE UNIQUE INDEX events_body ON events(connection_id, hook_uuid, body_hash) WHERE body_hash IS NOT NULL"
    ],
    "as is": [],
    "no unique index": ["DROP INDEX events_request"],
}


def payload(n: int) -> str:
    return orjson.dumps(
        {
            "event_key": "repo:push",
            "request_uuid": f"run-{n}",
            "hook_uuid": f"{{hook-run-{n}}}",
            "attempt": 1,
            "repository_uuid": f"{{bench-repo-{n % 500}}}",
            "repository_full_name": f"bench/repo-{n % 500}",
            "workspace": "bench",
            "actor_account_id": "557058:bench",
            "branches": [f"feature/run-{n}"],
            "branches_created": [],
            "branches_deleted": [],
            "pullrequest_id": None,
            "pullrequest_state": None,
            "changed_fields": [],
            "project_key": None,
            "fork_uuid": None,
        }
    ).decode()


def run(path: Path, keys: str, drops: list[str], batches: int, size: int) -> tuple[float, float]:
    """(CPU µs per row of the INSERT statements, WAL KiB per batch)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA wal_autocheckpoint=0")  # the WAL then holds every frame the batches wrote
    conn.create_function("lp_natkey", 1, natural_key, deterministic=True)
    for script in MIGRATIONS:
        conn.executescript(script)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    for statement in drops:
        conn.execute(statement)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    sql = _INSERT_MANY + ",".join(["(?,?,?,?,?,?,?,?,?,?,?,?)"] * size)
    hook = f"{{{uuid.uuid4()}}}"
    cpu, n = 0.0, 0
    for _ in range(batches):
        params: list[object] = []
        for _ in range(size):
            request = str(uuid.uuid4()) if keys == "real" else f"run-{n}"
            body_hash = hashlib.sha256(b"repo:push\n" + str(n).encode()).hexdigest()
            params += [
                "bench",
                "webhook",
                "repo:push",
                request,
                hook if keys == "real" else f"{{hook-run-{n}}}",
                1,
                body_hash,
                "bench",
                payload(n),
                "queued",
                "2026-01-01T00:00:00.000Z",
                time.time(),
            ]
            n += 1
        started = time.thread_time()
        conn.execute(sql, params)
        cpu += time.thread_time() - started
    wal = os.path.getsize(f"{path}-wal")
    conn.close()
    return cpu / n * 1e6, wal / batches / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=29, help="rows per commit (bench/ingest_wrk.py averages 29)")
    args = parser.parse_args()
    rows: list[tuple[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for keys in ("bench", "real"):
            for n, (name, drops) in enumerate(VARIANTS.items()):
                path = Path(tmp) / f"{keys}-{n}.sqlite3"
                cpu, wal = run(path, keys, drops, args.batches, args.batch)
                rows.append((f"{keys} keys, {name}", f"{cpu:.1f} µs CPU per row, WAL {wal:.0f} KiB per batch"))
    table(
        f"event log insert: {args.batches} commits of {args.batch} rows ({args.batches * args.batch} rows)",
        rows,
    )


if __name__ == "__main__":
    main()

"""The Overview's and Findings' whole-table queries on a real SQLite file: the trend sums, per
day, the transitions into and out of failing; it, the counts per test and status, and a page of
findings in the default order read an index (schema 6) instead of sorting every result or
history row on each visit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from app.store import Store
from app.store.views import Views


async def test_the_trend_counts_transitions_into_and_out_of_failing_per_day(database: Path | str) -> None:
    store = await Store.open(database)
    today = datetime.now(UTC).date()
    day1, day2 = (today - timedelta(days=2)).isoformat(), (today - timedelta(days=1)).isoformat()
    old = (today - timedelta(days=40)).isoformat()
    rows = [
        (day1, None, "fail"),  # +1
        (day1, None, "pass"),  # 0
        (day1, None, "unknown"),  # +1
        (day2, "fail", "pass"),  # -1
        (day2, "pass", "pass"),  # 0
        (day2, "unknown", "fail"),  # 0
        (day2, "pass", "fail"),  # +1
        (old, None, "fail"),  # before the period
    ]
    await store.db.executemany(
        "INSERT INTO result_history (check_id, subject_key, workspace, subject, at, old_status, new_status, message,"
        " details) VALUES ('c', 's', 'acme', 's', ?, ?, ?, 'm', '{}')",
        [(f"{at}T10:00:00+00:00", before, after) for at, before, after in rows],
    )
    try:
        trend = {d["day"]: d["delta"] for d in await Views(store.db).trend(30)}
        assert trend == {day1: 2, day2: 0}
    finally:
        await store.close()


async def test_the_overview_and_findings_queries_read_an_index(tmp_path: Path, store_kind: str) -> None:
    if store_kind != "sqlite":
        pytest.skip("SQLite's query plans (EXPLAIN QUERY PLAN); PostgreSQL's planner chooses by its statistics")
    store = await Store.open(tmp_path / "lp.sqlite")
    plans: list[str] = []
    real = store.db.fetchall

    async def explained(sql: str, params: Any = ()) -> Any:
        plans.append(" | ".join(str(r[3]) for r in await real("EXPLAIN QUERY PLAN " + sql, params)))
        return await real(sql, params)

    store.db.fetchall = explained  # type: ignore[method-assign]
    try:
        await store.results.counts()
        await Views(store.db).trend(30)
        counts, trend = plans
        plans.clear()
        await Views(store.db).results(sort="status", desc=True, limit=50, offset=100)
        by_status, page = plans
        assert "COVERING INDEX results_status" in by_status and "TEMP B-TREE" not in by_status, by_status
        assert "USING INDEX results_rank" in page and "TEMP B-TREE" not in page, page
        assert "COVERING INDEX results_status" in counts and "TEMP B-TREE" not in counts, counts
        assert "COVERING INDEX result_history_at (at>?)" in trend, trend
    finally:
        await store.close()

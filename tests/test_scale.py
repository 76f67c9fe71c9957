"""Scale: a webhook's re-evaluation reads only its subjects' snapshots; a pass streamed in chunks
records what an unchunked one does, and retires the results of repositories that left.

Real sandbox on loopback, real store on a SQLite file, the real client, worker and pass."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.bitbucket.client import BitbucketClient, Budget, StaticToken
from app.reconcile import reconcile_workspace
from app.sandbox.scenario import generate
from app.sandbox.serve import RunningSandbox, running_sandbox
from app.settings import Settings
from app.store import Store
from app.store.events import NewEvent
from app.worker import Worker
from tests.pgcluster import database_for

TOKEN = "bench-token"


def _settings(api: str, db: Path, **extra: str) -> Settings:
    return Settings.from_env(
        {
            "LP_DATABASE": str(database_for(db)),  # or the PostgreSQL run's database
            "LP_DATA_DIR": str(db.parent),
            "LP_BITBUCKET_API_URL": api,
            "LP_BITBUCKET_TOKEN": TOKEN,
            "LP_WORKSPACES": "bench",
            "LP_LOG_LEVEL": "warning",
            "LP_CHECKS_ENABLED": "pipelines-enabled",
            **extra,
        },
        env_file=None,
    )


async def _no_sleep(_: float) -> None:
    return None


def _client(session: aiohttp.ClientSession, api: str) -> BitbucketClient:
    return BitbucketClient(session, StaticToken(TOKEN), api_url=api, budget=Budget(1_000_000), sleep=_no_sleep)


@pytest.fixture
async def big() -> AsyncIterator[RunningSandbox]:
    async with running_sandbox(generate(repos=300, members=40)) as sb:
        yield sb


async def _results(store: Store) -> dict[tuple[str, str], tuple[str, str]]:
    return {
        (r.result.check, r.result.subject_key): (r.result.status, r.fingerprint) for r in await store.results.query()
    }


async def test_webhook_reads_only_its_subjects_snapshots(big: RunningSandbox, tmp_path: Path) -> None:
    """After a pass over 300 repositories, a main-branch move re-evaluates one repository: the
    worker reads a handful of snapshot rows (its repository's, the list), not the workspace's."""
    cfg = _settings(big.api, tmp_path / "lp.sqlite3")
    store = await Store.open(cfg.database)
    try:
        async with aiohttp.ClientSession() as session:
            client = _client(session, big.api)
            await reconcile_workspace(client, store, cfg, "bench")
            total = len(await store.snapshots.load("bench"))
            assert total > 300 * 3  # the workspace holds several snapshots per repository

            repo = big.sandbox.state.workspaces["bench"].repos["repo-0001"]
            repo.mainbranch = None  # an empty repository now: its branch tests turn not_applicable
            before = await store.results.query(check="branch-protection-enforced", subject=repo.uuid)
            assert before[0].result.status == "pass"

            async def clients(_: str) -> BitbucketClient:
                return client

            worker = Worker(store, cfg, clients, coalesce_window=0)
            await store.events.append(
                NewEvent(
                    connection_id="env",
                    source="webhook",
                    event_key="repo:updated",
                    payload={"workspace": "bench", "repository_uuid": repo.uuid},
                    workspace="bench",
                )
            )
            store.snapshots.rows_loaded = 0
            await worker.drain()
            read = store.snapshots.rows_loaded
            after = await store.results.query(check="branch-protection-enforced", subject=repo.uuid)
            assert after[0].result.status == "not_applicable"
            # O(subjects): the repository list and this repository's few snapshots, read a few
            # times (plan, repository list update, evaluation), never the workspace's hundreds.
            assert read <= 30, read
            assert read < total / 20
    finally:
        await store.close()


async def test_retirement_across_chunks(big: RunningSandbox, tmp_path: Path) -> None:
    """Repositories that left (in the first, a middle and the last chunk) have their results
    retired once, with a transition, and their snapshots dropped; the others' results stand."""
    cfg = _settings(big.api, tmp_path / "lp.sqlite3")
    store = await Store.open(cfg.database)
    try:
        async with aiohttp.ClientSession() as session:
            client = _client(session, big.api)
            await reconcile_workspace(client, store, cfg, "bench", chunk=7)
            repos = big.sandbox.state.workspaces["bench"].repos
            leaving = ["repo-0000", "repo-0150", "repo-0299"]
            uuids = {repos[s].uuid for s in leaving}
            for slug in leaving:
                del repos[slug]
            report = await reconcile_workspace(client, store, cfg, "bench", chunk=7)
            stored = await store.results.query()
            assert not [r for r in stored if r.result.subject_key in uuids]
            assert len({r.result.subject_key for r in stored if r.result.subject_type == "repository"}) == 297
            retired = {s.result.subject_key for s in report.delta.retired}
            assert retired == uuids
            history = await store.results.history(limit=100_000)
            assert {h["subject_key"] for h in history if h["new_status"] == "retired"} == uuids
            snaps = await store.snapshots.load("bench")
            assert not [k for k in snaps if any(u in k for u in uuids)]
            # Nothing else changed: a third pass writes no row.
            again = await reconcile_workspace(client, store, cfg, "bench", chunk=7)
            assert again.rows_written == 0
    finally:
        await store.close()


def _scenario(n: int, seed: int) -> dict[str, Any]:
    data = generate(repos=n, members=6)
    for i, r in enumerate(data["workspaces"][0]["repositories"]):
        if (i + seed) % 4 == 0:
            r["branch_restrictions"] = []
        if (i * seed) % 5 == 1:
            r["mainbranch"] = None
    return data


@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    n=st.integers(min_value=0, max_value=23),
    seed=st.integers(min_value=0, max_value=50),
    chunk=st.sampled_from([1, 2, 5]),
)
def test_chunked_pass_equals_unchunked(tmp_path_factory: pytest.TempPathFactory, n: int, seed: int, chunk: int) -> None:
    """Chunk size 1 (or a few) and one chunk for the whole workspace write the same results,
    and both leave nothing to write for the next pass."""
    import asyncio

    async def run() -> None:
        tmp = tmp_path_factory.mktemp("chunks")
        data = _scenario(n, seed)
        async with running_sandbox(json.loads(json.dumps(data))) as sb, aiohttp.ClientSession() as session:
            client = _client(session, sb.api)
            out = []
            for size, name in ((chunk, "small"), (10_000, "whole")):
                cfg = _settings(sb.api, tmp / f"{name}.sqlite3")
                store = await Store.open(cfg.database)
                try:
                    report = await reconcile_workspace(client, store, cfg, "bench", chunk=size)
                    assert report.fetch_failures == 0
                    out.append((await _results(store), report.rows_written))
                    again = await reconcile_workspace(client, store, cfg, "bench", chunk=size)
                    assert again.rows_written == 0
                finally:
                    await store.close()
            (small, small_written), (whole, whole_written) = out
            assert small == whole
            assert small_written == whole_written
            assert len([k for k in small if k[0] == "repo-classified"]) == n

    asyncio.run(run())


async def test_alerts_of_a_chunked_pass(big: RunningSandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A first pass in chunks sends one "first assessment" summary counting every opening; a
    later pass alerts each opening on its own, even when a chunk holds only new repositories."""
    from app import reconcile
    from app.notify.rules import alerts_for

    monkeypatch.setattr(reconcile, "REPORT_CAP", 50)

    cfg = _settings(big.api, tmp_path / "lp.sqlite3")
    store = await Store.open(cfg.database)
    sent: list[dict[str, Any]] = []

    def alerts(delta: Any) -> list[Any]:
        sent.extend(alerts_for(delta))
        return []

    try:
        async with aiohttp.ClientSession() as session:
            client = _client(session, big.api)
            report = await reconcile_workspace(client, store, cfg, "bench", alerts=alerts, chunk=7)
            assert [a["kind"] for a in sent] == ["baseline"]
            assert f": {report.counts['opened']} results need attention" in sent[0]["message"]
            assert (
                report.counts["opened"] > 100 and len(report.delta.opened) == 50
            )  # the report is cut, the count whole

            # Eight new repositories (with no restriction: their branch tests fail), listed last,
            # so that one chunk of 7 holds only new repositories.
            sent.clear()
            for i in range(8):
                async with session.post(
                    f"{big.url}/_sandbox/workspaces/bench/create-repo", json={"slug": f"new-{i}"}
                ) as r:
                    assert r.status == 200
            report = await reconcile_workspace(client, store, cfg, "bench", alerts=alerts, chunk=7)
            assert report.counts["opened"] >= 8
            assert "baseline" not in {a["kind"] for a in sent}
            assert len([a for a in sent if a["kind"] == "opened"]) == report.counts["opened"]
            assert {a["subject"] for a in sent} == {f"bench/new-{i}" for i in range(8)}
    finally:
        await store.close()


async def test_member_step_holds_one_chunk_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pass over 300 members in chunks of 40 never evaluates, nor reads the stored results of,
    more than 40 members at once (first pass, unchanged pass, departures, a failed member list),
    and records what the whole list would: departed members (first, middle and last chunk)
    retired, a failed list leaves every member result standing and stale, nothing to write after."""
    from app import checks
    from app.planner import MEMBER_CHECKS
    from app.store.results import Results

    chunk, total = 40, 300
    evaluated: list[int] = []
    loaded: list[int] = []
    real_evaluate, real_load = checks.evaluate, Results.load

    def evaluate(*args: Any, **kwargs: Any) -> Any:
        out = real_evaluate(*args, **kwargs)
        evaluated.append(sum(r.subject_type == "member" for r in out))
        return out

    async def load(self: Results, *args: Any, **kwargs: Any) -> Any:
        out = await real_load(self, *args, **kwargs)
        loaded.append(sum(s.result.subject_type == "member" for s in out.values()))
        return out

    monkeypatch.setattr(checks, "evaluate", evaluate)
    monkeypatch.setattr(Results, "load", load)

    async with running_sandbox(generate(repos=20, members=total)) as sb, aiohttp.ClientSession() as session:
        cfg = _settings(sb.api, tmp_path / "lp.sqlite3")
        per_member = len(MEMBER_CHECKS & set(cfg.enabled_checks))
        assert per_member >= 1
        bound = chunk * per_member
        store = await Store.open(cfg.database)
        try:
            client = _client(session, sb.api)

            async def run() -> Any:
                evaluated.clear()
                loaded.clear()
                report = await reconcile_workspace(client, store, cfg, "bench", chunk=chunk)
                assert max(evaluated) <= bound, max(evaluated)
                assert max(loaded) <= bound, max(loaded)
                return report

            async def members() -> dict[str, Any]:
                return {
                    s.result.subject_key: s for s in await store.results.query() if s.result.subject_type == "member"
                }

            await run()
            assert max(evaluated) == bound  # a full chunk was evaluated at once, never more
            assert len(await store.results.query()) > total * per_member
            assert len(set(await members())) == total
            assert (await run()).rows_written == 0

            ws = sb.sandbox.state.workspaces["bench"]
            accounts = list(ws.members)
            leaving = {accounts[0], accounts[150], accounts[299]}
            for account in leaving:
                del ws.members[account]
            report = await run()
            assert {s.result.subject_key for s in report.delta.retired} == leaving
            assert report.counts["retired"] == len(leaving) * per_member
            assert set(await members()) == set(accounts) - leaving

            sb.sandbox.faults.force_status = {r"^/workspaces/bench/(members|permissions)": 503}
            report = await run()
            assert report.fetch_failures >= 1
            standing = await members()
            assert set(standing) == set(accounts) - leaving  # nobody retired for a list that failed
            assert all(s.stale_since is not None for s in standing.values())

            sb.sandbox.faults.force_status = {}
            await run()
            assert all(s.stale_since is None for s in (await members()).values())
            assert (await run()).rows_written == 0
        finally:
            await store.close()


class _Loads:
    """Counts the snapshot rows each load of the store reads (by key, or a whole workspace)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from app.store.snapshots import Snapshots

        self.by_key: list[int] = []
        self.whole: list[str] = []
        real_keys, real_load = Snapshots.load_keys, Snapshots.load
        loads = self

        async def load_keys(self: Snapshots, keys: Any) -> Any:
            out = await real_keys(self, keys)
            loads.by_key.append(len(out))
            return out

        async def load(self: Snapshots, workspace: str, kinds: tuple[str, ...] = ()) -> Any:
            loads.whole.append(workspace)
            return await real_load(self, workspace, kinds)

        monkeypatch.setattr(Snapshots, "load_keys", load_keys)
        monkeypatch.setattr(Snapshots, "load", load)

    def clear(self) -> None:
        self.by_key.clear()
        self.whole.clear()


def _evaluated_subjects(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of repository and member subjects of each ``checks.evaluate`` call."""
    from app import checks

    sizes: list[int] = []
    real = checks.evaluate

    def evaluate(*args: Any, **kwargs: Any) -> Any:
        out = real(*args, **kwargs)
        sizes.append(len({r.subject_key for r in out if r.subject_type != "workspace"}))
        return out

    monkeypatch.setattr(checks, "evaluate", evaluate)
    return sizes


async def test_evaluate_all_in_chunks(big: RunningSandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A classification rule re-evaluates every subject of the workspace (300 repositories, 40
    members) a chunk at a time: no step loads more than one chunk's snapshots (never the whole
    workspace), nor evaluates more than a chunk of subjects; the stored results are exactly what
    evaluating the whole workspace at once gives (a repository no longer listed retired), one
    alert per change, and evaluating again writes no row."""
    from app import evaluate
    from app.evaluate import evaluate_plans, evaluate_workspace
    from app.models import iso, utcnow
    from app.notify.rules import alerts_for
    from app.planner import Plan

    chunk = 7
    cfg = _settings(big.api, tmp_path / "lp.sqlite3", LP_CHECKS_ENABLED="")
    store = await Store.open(cfg.database)
    try:
        async with aiohttp.ClientSession() as session:
            await reconcile_workspace(_client(session, big.api), store, cfg, "bench")
        now = utcnow()
        # Production: the repositories of project P1 (repo-classified passes for them now).
        await store.records.add_rule("production", iso(now), project_key="P1")
        left = big.sandbox.state.workspaces["bench"].repos["repo-0150"].uuid
        await store.snapshots.update_repo_list("bench", set(), {left}, iso(now))  # it left the workspace
        assert await store.results.load("bench", subjects=[left], checks=None)
        expected, _ = await evaluate_workspace(store, cfg, "bench", now)
        assert len({r.subject_key for r in expected}) > 300

        monkeypatch.setattr(evaluate, "CHUNK", chunk)
        loads = _Loads(monkeypatch)
        sizes = _evaluated_subjects(monkeypatch)
        sent: list[dict[str, Any]] = []

        def alerts(delta: Any) -> list[Any]:
            sent.extend(alerts_for(delta))
            return []

        deltas = await evaluate_plans(store, cfg, "bench", [Plan(workspace_checks=True)], "event:test", alerts=alerts)
        assert not loads.whole
        assert max(loads.by_key) <= chunk * 6, loads.by_key  # a chunk's repositories, six snapshots each
        assert max(sizes) <= chunk, sizes
        stored = await _results(store)
        from app.findings import fingerprint

        assert stored == {(r.check, r.subject_key): (r.status, fingerprint(r)) for r in expected}
        assert not [k for k in stored if k[1] == left]
        resolved = [c for d in deltas for c in d.resolved]
        assert len(resolved) >= 50  # the production repositories' repo-classified results
        assert {s.result.subject_key for d in deltas for s in d.retired} == {left}
        assert "baseline" not in {a["kind"] for a in sent}
        assert len([a for a in sent if a["kind"] == "resolved"]) == len(resolved)

        history = await store.results.count_history()
        again = await evaluate_plans(store, cfg, "bench", [Plan(workspace_checks=True)], "event:test", alerts=alerts)
        assert all(d.is_empty() for d in again)
        assert await store.results.count_history() == history
        assert await _results(store) == stored
    finally:
        await store.close()


async def test_members_tier_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The members tier over 300 members evaluates, and reads the stored results of, one chunk of
    members at a time; it records what evaluating the whole list at once gives (departed members
    retired, a changed permission re-evaluated), and a tier with nothing changed writes no row."""
    from app.evaluate import evaluate_workspace
    from app.findings import fingerprint
    from app.models import utcnow
    from app.planner import MEMBER_CHECKS

    chunk, total = 40, 300
    async with running_sandbox(generate(repos=20, members=total)) as sb, aiohttp.ClientSession() as session:
        cfg = _settings(sb.api, tmp_path / "lp.sqlite3")
        store = await Store.open(cfg.database)
        try:
            client = _client(session, sb.api)
            await reconcile_workspace(client, store, cfg, "bench")
            ws = sb.sandbox.state.workspaces["bench"]
            accounts = list(ws.members)
            leaving = {accounts[0], accounts[150], accounts[299]}
            for account in leaving:
                del ws.members[account]

            sizes = _evaluated_subjects(monkeypatch)
            loads = _Loads(monkeypatch)
            report = await reconcile_workspace(client, store, cfg, "bench", tier="members", chunk=chunk)
            assert max(sizes) <= chunk, sizes
            assert max(sizes) == chunk
            assert not loads.whole
            assert {s.result.subject_key for s in report.delta.retired} == leaving

            expected, _ = await evaluate_workspace(store, cfg, "bench", utcnow(), only_checks=MEMBER_CHECKS)
            members = {k: v for k, v in (await _results(store)).items() if k[0] in MEMBER_CHECKS}
            assert members == {(r.check, r.subject_key): (r.status, fingerprint(r)) for r in expected}
            assert len({k[1] for k in members}) == total - len(leaving)

            again = await reconcile_workspace(client, store, cfg, "bench", tier="members", chunk=chunk)
            assert again.rows_written == 0
        finally:
            await store.close()


async def test_webhook_path_reads_by_key_only(
    big: RunningSandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A repository's webhook reads its own snapshots by key and nothing whose size follows the
    workspace: not the repository list's content (parsed once per content, then told by its
    hash), not the workspace's explicit classes (by key), not its evidence (no repository test
    reads any)."""
    from app.store.records import Records
    from app.store.snapshots import Snapshots, k_repos

    cfg = _settings(big.api, tmp_path / "lp.sqlite3")
    store = await Store.open(cfg.database)
    try:
        async with aiohttp.ClientSession() as session:
            client = _client(session, big.api)
            await reconcile_workspace(client, store, cfg, "bench")
            repos = big.sandbox.state.workspaces["bench"].repos

            async def clients(_: str) -> BitbucketClient:
                return client

            worker = Worker(store, cfg, clients, coalesce_window=0)

            async def webhook(slug: str) -> None:
                repos[slug].mainbranch = None
                await store.events.append(
                    NewEvent(
                        connection_id="env",
                        source="webhook",
                        event_key="repo:updated",
                        payload={"workspace": "bench", "repository_uuid": repos[slug].uuid},
                        workspace="bench",
                    )
                )
                await worker.drain()
                stored = await store.results.query(check="branch-protection-enforced", subject=repos[slug].uuid)
                assert stored[0].result.status == "not_applicable"

            await webhook("repo-0001")  # the first one parses the list

            asked: list[str] = []
            returned = 0
            whole: list[str] = []
            classes: list[Any] = []
            evidence: list[Any] = []
            real_get, real_keys, real_load = Snapshots.get, Snapshots.load_keys, Snapshots.load
            real_classes, real_evidence = Records.classes, Records.evidence

            async def get(self: Snapshots, key: str) -> Any:
                nonlocal returned
                asked.append(key)
                out = await real_get(self, key)
                returned += out is not None
                return out

            async def load_keys(self: Snapshots, keys: Any) -> Any:
                nonlocal returned
                keys = list(keys)
                asked.extend(keys)
                out = await real_keys(self, keys)
                returned += len(out)
                return out

            async def load(self: Snapshots, workspace: str, kinds: tuple[str, ...] = ()) -> Any:
                whole.append(workspace)
                return await real_load(self, workspace, kinds)

            async def records_classes(self: Records, *args: Any, **kwargs: Any) -> Any:
                classes.append(kwargs.get("uuids"))
                return await real_classes(self, *args, **kwargs)

            async def records_evidence(self: Records, workspace: Any = None) -> Any:
                evidence.append(workspace)
                return await real_evidence(self, workspace)

            monkeypatch.setattr(Snapshots, "get", get)
            monkeypatch.setattr(Snapshots, "load_keys", load_keys)
            monkeypatch.setattr(Snapshots, "load", load)
            monkeypatch.setattr(Records, "classes", records_classes)
            monkeypatch.setattr(Records, "evidence", records_evidence)
            store.snapshots.rows_loaded = 0
            await webhook("repo-0002")
            assert k_repos("bench") not in asked
            assert not whole
            assert store.snapshots.rows_loaded == returned  # the list's content was not read again
            assert 0 < returned <= 8
            assert classes and all(c is not None and len(c) == 1 for c in classes)
            assert not evidence
    finally:
        await store.close()


async def test_repository_list_parsed_once_per_content(
    tmp_path: Path, database: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The parsed repository list follows its stored content (a change by another store on the
    same database is seen at once) and is read again only when that changed; a repository
    already listed changes nothing, without a write transaction."""
    from app.store.snapshots import k_repo

    store = await Store.open(database)
    other = await Store.open(database)
    try:
        now = "2026-01-01T00:00:00Z"
        uuids = [f"{{{i:08d}}}" for i in range(5)]
        await store.snapshots.put_many(
            [("repos:bench", "bench", "repos", uuids[:4]), *[(k_repo(u), "bench", "repo", {"uuid": u}) for u in uuids]],
            now,
        )
        store.snapshots.rows_loaded = 0
        first = await store.snapshots.repo_list("bench")
        assert first is not None and first.uuids == tuple(uuids[:4])
        assert first.ordered({uuids[3], uuids[1], "{nope}"}) == [uuids[1], uuids[3]]
        assert await store.snapshots.repo_list("bench") is first
        assert store.snapshots.rows_loaded == 1

        await other.snapshots.update_repo_list("bench", {uuids[4]}, {uuids[0]}, now)
        changed = await store.snapshots.repo_list("bench")
        assert changed is not None and changed.uuids == (*uuids[1:4], uuids[4])
        assert store.snapshots.rows_loaded == 2

        def no_transaction() -> Any:
            raise AssertionError("a write transaction for a repository already listed")

        monkeypatch.setattr(store.db, "transaction", no_transaction)
        await store.snapshots.update_repo_list("bench", {uuids[2]}, set(), now)
        monkeypatch.undo()
        assert (await other.snapshots.repo_list("bench")) == changed
        assert await store.snapshots.repo_list("empty") is None
    finally:
        await other.close()
        await store.close()


async def test_restrictions_order_reads_no_restrictions_content(
    big: RunningSandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The restrictions tier orders the repositories by when their restrictions were last read
    well, reading that time alone, not every restriction's content (every minute)."""
    from app import tiers
    from app.store.snapshots import Snapshots, k_restrictions

    cfg = _settings(big.api, tmp_path / "lp.sqlite3")
    store = await Store.open(cfg.database)
    try:
        async with aiohttp.ClientSession() as session:
            await reconcile_workspace(_client(session, big.api), store, cfg, "bench")
        asked: list[tuple[str, ...]] = []
        real = Snapshots.load

        async def load(self: Snapshots, workspace: str, kinds: tuple[str, ...] = ()) -> Any:
            asked.append(kinds)
            return await real(self, workspace, kinds)

        monkeypatch.setattr(Snapshots, "load", load)
        found, _ = await tiers.readings(store, "bench")
        assert asked and all(k and "restrictions" not in k for k in asked)
        assert len(found) > 290
        monkeypatch.undo()
        for reading in found[:: len(found) // 7]:
            snap = await store.snapshots.get(k_restrictions(reading.uuid))
            assert snap is not None and reading.read_at == snap.fetched_at is not None
    finally:
        await store.close()


async def test_repositories_tier_before_any_pass_lists_nothing(big: RunningSandbox, tmp_path: Path) -> None:
    """Before a full pass stored a repository list, the repositories tier leaves the reading to
    that pass without listing the workspace itself (at start, the two listings held together made
    serve's peak memory at 10,000 repositories); once the list is stored, it lists."""
    from app import tiers

    cfg = _settings(big.api, tmp_path / "lp.sqlite3")
    store = await Store.open(cfg.database)
    try:
        async with aiohttp.ClientSession() as session:
            client = _client(session, big.api)
            delta, written = await tiers.repositories_tier(client, store, cfg, "bench")
            assert (delta.is_empty(), written, client.calls()) == (True, 0, 0)
            await reconcile_workspace(client, store, cfg, "bench")
            before = client.calls()
            await tiers.repositories_tier(client, store, cfg, "bench")
            assert client.calls() - before == 3  # 300 repositories, 100 a page
    finally:
        await store.close()

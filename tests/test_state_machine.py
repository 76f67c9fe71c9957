"""A differential state machine (issue "right or unknown, never wrong", deliver 2; a start).

Hypothesis drives the sandbox through random user actions (restrictions added and removed with
several kinds and patterns, Pipelines switched, repositories created, renamed and emptied, members
added and removed) and the product through random user actions (classification, personnel imports
with past and future offboarding dates and owner-less service accounts, workspace 2SV reports and
member evidence (membership continuity), exceptions, faults on an
endpoint class, the credential's `account` and `repository:admin` scopes removed and granted
again), triggers full passes and members tiers, and compares every stored result with a reference evaluator
written here from checks.md alone (it does not import ``app.checks``). A fault may only ever leave
a result stale, never change it.

Bounded for ``make test`` (60 examples of 20 steps, about 25 s); ``STATE_MACHINE_SOAK=1`` runs
200 examples of 30 steps (about 95 s). Not covered yet: the workspace MFA test, explicit evidence
expiries, transfers, webhook deliveries, the clock moved forward.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from app import records
from app.evidence import record_evidence
from app.exceptions import record_exception
from app.main import build_services
from app.sandbox.scenario import SRepo
from app.sandbox.serve import running_sandbox
from app.settings import CHECK_IDS, Settings
from app.store import Store
from tests.conftest import TOKEN

pytestmark = pytest.mark.state_machine

SOAK = os.environ.get("STATE_MACHINE_SOAK") == "1"
WS = "acme"
KINDS = (
    "force",
    "delete",
    "push",
    "require_approvals_to_merge",
    "require_default_reviewer_approvals_to_merge",
    "require_review_group_approvals_to_merge",
    "require_passing_builds_to_merge",
)
PATTERNS = ("main", "*", "ma*", "release/*", "develop", "")
MODELS = (
    None,
    {"development": {"use_mainbranch": True}},
    {"development": {"name": "develop"}},
    {"development": {"name": "develop"}, "production": {"use_mainbranch": True, "enabled": True}},
    {"development": {"name": "develop"}, "production": {"name": "main", "enabled": False}},
    {"development": {"name": "develop"}, "branch_types": [{"kind": "release", "prefix": "ma"}]},
)
FAULTS = {
    "restrictions": r"/branch-restrictions",
    "pipelines": r"/pipelines_config",
    "members": r"/workspaces/acme/members",
}
PDF = b"%PDF-1.4 2SV report\n"
MEMBER_TESTS = ("offboarded-access-removed", "member-mfa-enabled")
REPO_TESTS = (
    "repo-classified",
    "merge-requires-passing-builds",
    "merge-requires-peer-review",
    "branch-protection-enforced",
    "pipelines-enabled",
)
BRANCH_TESTS = ("merge-requires-passing-builds", "merge-requires-peer-review", "branch-protection-enforced")
APPROVALS = (
    "require_approvals_to_merge",
    "require_default_reviewer_approvals_to_merge",
    "require_review_group_approvals_to_merge",
)


# -- the reference evaluator: checks.md, read again ------------------------------------------------------
def glob(pattern: str, branch: str) -> bool:
    """``*`` matches any run of characters (``/`` included); everything else is literal."""
    if "*" not in pattern:
        return pattern == branch
    parts = pattern.split("*")
    if not branch.startswith(parts[0]) or not branch.endswith(parts[-1]):
        return False
    pos = len(parts[0])
    end = len(branch) - len(parts[-1])
    if end < pos:
        return False
    for middle in parts[1:-1]:
        found = branch.find(middle, pos, end)
        if found < 0:
            return False
        pos = found + len(middle)
    return True


DEFAULT_TYPES = [{"kind": k, "prefix": f"{k}/"} for k in ("feature", "bugfix", "release", "hotfix")]


def in_model(repo: SRepo, branch_type: str, branch: str) -> bool:
    """checks.md: development is the model's development branch (``use_mainbranch``: the main
    branch); production only when enabled and it is this branch; other types by prefix. Without a
    configured model Bitbucket applies its default (development on the main branch)."""
    model = repo.branching_model or {}
    if branch_type == "development":
        dev = model.get("development", {"use_mainbranch": True})
        return (repo.mainbranch if dev.get("use_mainbranch") else dev.get("name")) == branch
    if branch_type == "production":
        prod = model.get("production")
        if not prod or not prod.get("enabled", True):
            return False
        return (repo.mainbranch if prod.get("use_mainbranch") else prod.get("name")) == branch
    types = model.get("branch_types", DEFAULT_TYPES)
    return any(t["kind"] == branch_type and t.get("prefix") and branch.startswith(t["prefix"]) for t in types)


def covers(r: dict[str, Any], branch: str, repo: SRepo) -> bool:
    if r.get("branch_match_kind", "glob") == "glob":
        return glob(r.get("pattern") or "", branch)
    return in_model(repo, r.get("branch_type") or "", branch)


def covering(repo: SRepo, kind: str) -> list[dict[str, Any]]:
    main = repo.mainbranch or ""
    return [r for r in repo.restrictions if r["kind"] == kind and covers(r, main, repo)]


@dataclass(frozen=True)
class Person:
    email: str
    account: str
    kind: str
    status: str
    offboarded_on: str | None
    owner: str | None


def expected_repo(check: str, repo: SRepo, cls: str | None) -> str:
    if check == "repo-classified":
        return "pass" if cls else "fail"
    if cls == "non-production" or repo.mainbranch is None:
        return "not_applicable"
    if check == "pipelines-enabled":
        return "pass" if repo.pipelines == "enabled" else "fail"
    if check == "merge-requires-passing-builds":
        return (
            "pass"
            if any((r.get("value") or 0) >= 1 for r in covering(repo, "require_passing_builds_to_merge"))
            else "fail"
        )
    if check == "merge-requires-peer-review":
        best = max(((r.get("value") or 0) for k in APPROVALS for r in covering(repo, k)), default=0)
        return "pass" if best >= 1 else "fail"
    assert check == "branch-protection-enforced"
    return "pass" if all(covering(repo, k) for k in ("force", "delete", "push")) else "fail"


def expected_member(account: str, people: dict[str, Person], today: date) -> tuple[str, str | None]:
    p = people.get(account)
    if p is None:
        return "unknown", "not_linked"
    if p.status == "offboarded":
        if p.offboarded_on is not None and p.offboarded_on > today.isoformat():
            return "pass", None
        return "fail", None
    if p.kind in ("service-account", "external") and not p.owner:
        return "unknown", "owner_missing"
    return "pass", None


# -- the machine ----------------------------------------------------------------------------------------------
class ProductAgainstReference(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.stack = contextlib.AsyncExitStack()
        self.tmp = tempfile.TemporaryDirectory()
        self.sandbox = self.run(self.stack.enter_async_context(running_sandbox()))
        self.session = self.run(self._session())
        env = {
            "LP_DATABASE": str(Path(self.tmp.name) / "lp.sqlite3"),
            "LP_BITBUCKET_API_URL": self.sandbox.api,
            "LP_BITBUCKET_TOKEN": TOKEN,
            "LP_WORKSPACES": WS,
            "LP_CHECKS_ENABLED": "pipelines-enabled",
        }
        self.settings = Settings.from_env(env, env_file=None)
        self.classes: dict[str, str] = {}  # repo uuid -> class
        self.people: dict[str, Person] = {}  # account id -> person
        self.exceptions: set[tuple[str, str]] = set()  # (check, repo uuid)
        self.fault: str | None = None
        self.faulted_last_pass: str | None = None
        self.previous: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}
        self.counter = 0
        self.pass_no = 0
        self.since: dict[str, int] = {}  # account -> the pass that first saw its current membership
        self.listed: set[str] | None = None  # the member list the product holds
        self.reports: list[tuple[int, set[str]]] = []  # (uploaded after pass n, members listed then)
        self.member_evidence: set[str] = set()
        self.full_pass()

    # plumbing
    async def _session(self) -> aiohttp.ClientSession:
        return await self.stack.enter_async_context(aiohttp.ClientSession())

    def run(self, aw: Any) -> Any:
        return self.loop.run_until_complete(aw)

    def teardown(self) -> None:
        self.run(self.stack.aclose())
        self.loop.close()
        self.tmp.cleanup()

    @property
    def ws(self) -> Any:
        return self.sandbox.sandbox.state.workspaces[WS]

    def act(self, path: str, body: dict[str, Any]) -> None:
        async def post() -> None:
            async with self.session.post(f"{self.sandbox.url}/_sandbox/{path}", json=body) as resp:
                assert resp.status == 200, await resp.text()

        self.run(post())

    def with_store(self, fn: Any) -> Any:
        async def go() -> Any:
            store = await Store.open(self.settings.database)
            try:
                return await fn(store)
            finally:
                await store.close()

        return self.run(go())

    def full_pass(self, tier: str = "full") -> None:
        self.pass_no += 1
        faults = self.sandbox.sandbox.faults
        faults.force_status = {FAULTS[self.fault]: 503} if self.fault else {}

        async def go() -> None:
            services = await build_services(
                self.settings, self.session, max_attempts=1, backoff_initial=0.0, backoff_max=0.0
            )
            try:
                await services.service.ensure_token_connection()
                [eid] = await services.service.internal_event("lp:reconcile", {"workspace": WS, "tier": tier})
                await services.worker.drain()
                row = await services.service.store.events.get(eid)
                assert row is not None and row.state == "done", (row.state if row else None, row and row.error)
            finally:
                await services.service.store.close()

        try:
            self.run(go())
        finally:
            faults.force_status = {}
        self.faulted_last_pass = self.fault
        self.fault = None
        [cred] = [c for c in self.sandbox.sandbox.state.credentials if c.token == TOKEN]
        if self.faulted_last_pass != "members":
            if "account" in cred.scopes:  # the product read the list: memberships begin or end
                current = set(self.ws.members)
                self.since = {a: self.since.get(a, self.pass_no) for a in current}
                self.listed = current
            else:
                self.listed = None  # the stored list is a scope marker: no 2SV report can be recorded
        self.compare(tier)

    # sandbox actions
    def repos(self) -> list[SRepo]:
        return sorted(self.ws.repos.values(), key=lambda r: r.slug)

    @rule(
        data=st.data(),
        kind=st.sampled_from(KINDS),
        pattern=st.sampled_from(PATTERNS),
        value=st.integers(0, 2),
        branch_type=st.sampled_from((None, "development", "production", "release")),
    )
    def add_restriction(
        self, data: st.DataObject, kind: str, pattern: str, value: int, branch_type: str | None
    ) -> None:
        repo = data.draw(st.sampled_from(self.repos()))
        body: dict[str, Any] = {"kind": kind, "pattern": pattern}
        if branch_type is not None:
            body = {"kind": kind, "branch_match_kind": "branching_model", "branch_type": branch_type}
        if kind.startswith("require_"):
            body["value"] = value
        self.act(f"repos/{WS}/{repo.slug}/add-restriction", body)

    @precondition(lambda self: any(r.restrictions for r in self.ws.repos.values()))
    @rule(data=st.data())
    def remove_restriction(self, data: st.DataObject) -> None:
        repo = data.draw(st.sampled_from([r for r in self.repos() if r.restrictions]))
        rid = data.draw(st.sampled_from([r["id"] for r in repo.restrictions]))
        self.act(f"repos/{WS}/{repo.slug}/remove-restriction", {"id": rid})

    @rule(data=st.data(), model=st.sampled_from(MODELS))
    def set_branching_model(self, data: st.DataObject, model: dict[str, Any] | None) -> None:
        repo = data.draw(st.sampled_from(self.repos()))
        self.act(f"repos/{WS}/{repo.slug}/set-branching-model", {"model": model})

    @rule(data=st.data(), enabled=st.booleans())
    def switch_pipelines(self, data: st.DataObject, enabled: bool) -> None:
        repo = data.draw(st.sampled_from(self.repos()))
        self.act(f"repos/{WS}/{repo.slug}/set-pipelines", {"enabled": enabled})

    @rule(empty=st.booleans())
    def create_repository(self, empty: bool) -> None:
        self.counter += 1
        body: dict[str, Any] = {"slug": f"new-{self.counter}"}
        if empty:
            body["mainbranch"] = None
        self.act(f"workspaces/{WS}/create-repo", body)

    @rule(data=st.data())
    def rename_repository(self, data: st.DataObject) -> None:
        repo = data.draw(st.sampled_from(self.repos()))
        self.counter += 1
        self.act(f"repos/{WS}/{repo.slug}/update", {"name": f"renamed-{self.counter}"})

    @precondition(lambda self: len(self.ws.repos) > 1)
    @rule(data=st.data())
    def delete_repository(self, data: st.DataObject) -> None:
        repo = data.draw(st.sampled_from(self.repos()))
        self.act(f"repos/{WS}/{repo.slug}/delete-repo", {})

    @rule(data=st.data())
    def toggle_member(self, data: st.DataObject) -> None:
        users = sorted(self.sandbox.sandbox.state.users)
        account = data.draw(st.sampled_from(users))
        if account in self.ws.members and len(self.ws.members) > 1:
            self.act(f"workspaces/{WS}/remove-member", {"account_id": account})
        elif account not in self.ws.members:
            self.act(f"workspaces/{WS}/add-member", {"account_id": account})

    # product actions
    @rule(data=st.data(), cls=st.sampled_from(("production", "non-production")))
    def classify(self, data: st.DataObject, cls: str) -> None:
        repo = data.draw(st.sampled_from(self.repos()))

        async def go(store: Store) -> bool:
            snap = await store.snapshots.get(f"repo:{repo.uuid}")
            if snap is None:
                return False  # not seen by the product yet: the CLI would refuse it
            await store.records.set_class(repo.uuid, WS, f"{WS}/{repo.slug}", cls, "test", "2026-01-01T00:00:00Z")
            return True

        if self.with_store(go):
            self.classes[repo.uuid] = cls

    @rule(
        data=st.data(),
        kind=st.sampled_from(("employee", "contractor", "service-account", "external")),
        status=st.sampled_from(("active", "offboarded")),
        days=st.sampled_from((None, -30, 0, 30)),
        owner=st.sampled_from((None, "platform")),
    )
    def import_person(self, data: st.DataObject, kind: str, status: str, days: int | None, owner: str | None) -> None:
        account = data.draw(st.sampled_from(sorted(self.sandbox.sandbox.state.users)))
        user = self.sandbox.sandbox.state.users[account]
        today = datetime.now(UTC).date()
        on = (today + timedelta(days=days)).isoformat() if days is not None else None
        row = f"{user.email},{account},{kind},{status},{on or ''},{account},{owner or ''}\n"
        text = "email,name,kind,status,offboarded_on,bitbucket_account_id,owner\n" + row
        try:
            people = records.parse_personnel(text.encode(), "people.csv")
        except records.RecordError:
            assert status == "active" and on is not None  # refused: offboarded_on without status=offboarded
            return
        self.with_store(lambda store: store.records.import_people(people, "test", "2026-01-01T00:00:00Z"))
        previous = self.people.get(account)
        self.people[account] = Person(
            user.email.lower(), account, kind, status, on, owner or (previous.owner if previous else None)
        )

    @rule(data=st.data(), check=st.sampled_from(REPO_TESTS))
    def grant_exception(self, data: st.DataObject, check: str) -> None:
        repo = data.draw(st.sampled_from(self.repos()))
        through = (datetime.now(UTC).date() + timedelta(days=30)).isoformat()

        async def go(store: Store) -> bool:
            try:
                await record_exception(
                    store,
                    check=check,
                    subject=repo.uuid,
                    owner="cto",
                    reason="accepted",
                    expires=through,
                    actor="test",
                    known_checks=CHECK_IDS,
                )
            except records.RecordError:
                return False  # a repository the product has not seen yet
            return True

        if self.with_store(go):
            self.exceptions.add((check, repo.uuid))

    @rule()
    def upload_2sv_report(self) -> None:
        async def go(store: Store) -> bool:
            try:
                await record_evidence(
                    store,
                    io.BytesIO(PDF),
                    check="member-mfa-enabled",
                    workspace=WS,
                    member=None,
                    filename="2sv.pdf",
                    uploaded_by="test",
                    expires=None,
                    max_age_days=90,
                )
            except records.RecordError:
                return False
            return True

        if self.with_store(go):
            assert self.listed is not None
            self.reports.append((self.pass_no, set(self.listed)))
        else:
            assert self.listed is None

    @rule(data=st.data())
    def upload_member_evidence(self, data: st.DataObject) -> None:
        account = data.draw(st.sampled_from(sorted(self.sandbox.sandbox.state.users)))

        async def go(store: Store) -> bool:
            try:
                await record_evidence(
                    store,
                    io.BytesIO(PDF),
                    check="member-mfa-enabled",
                    workspace=WS,
                    member=account,
                    filename="mine.pdf",
                    uploaded_by="test",
                    expires=None,
                    max_age_days=90,
                )
            except records.RecordError:
                return False  # a member the product has not seen
            return True

        recorded = self.with_store(go)
        assert recorded == (self.listed is not None and account in self.listed)
        if recorded:
            self.member_evidence.add(account)

    def expected_mfa(self, account: str) -> str:
        """checks.md member-mfa-enabled: evidence for the member, or a workspace report uploaded while
        they were already a member, with their membership unbroken since."""
        if account in self.member_evidence:
            return "pass"
        since = self.since.get(account)
        covered = any(account in listed and since is not None and since <= after for after, listed in self.reports)
        return "pass" if covered else "fail"

    @rule(scope=st.sampled_from(("account", "repository:admin")))
    def toggle_scope(self, scope: str) -> None:
        [cred] = [c for c in self.sandbox.sandbox.state.credentials if c.token == TOKEN]
        if scope in cred.scopes:
            cred.scopes.discard(scope)
        else:
            cred.scopes.add(scope)

    @rule(fault=st.sampled_from(sorted(FAULTS)))
    def fault_next_pass(self, fault: str) -> None:
        self.fault = fault

    @rule()
    def reconcile(self) -> None:
        self.full_pass()

    @rule()
    def members_tier(self) -> None:
        self.full_pass("members")

    # the comparison
    def compare(self, tier: str) -> None:
        stored = self.with_store(lambda store: store.results.load(WS))
        today = datetime.now(UTC).date()
        [cred] = [c for c in self.sandbox.sandbox.state.credentials if c.token == TOKEN]
        admin, account = "repository:admin" in cred.scopes, "account" in cred.scopes
        faulted = self.faulted_last_pass
        expected: dict[tuple[str, str], str] = {}
        if tier == "members":  # members and permissions only: repository results stand as they were
            expected.update({k: v[0] for k, v in self.previous.items() if k[0] in REPO_TESTS})
        for repo in self.ws.repos.values() if tier == "full" else ():
            cls = self.classes.get(repo.uuid)
            for check in REPO_TESTS:
                status = expected_repo(check, repo, cls)
                if status == "fail" and (check, repo.uuid) in self.exceptions:
                    status = "excepted"
                needs = (
                    "restrictions" if check in BRANCH_TESTS else "pipelines" if check == "pipelines-enabled" else None
                )
                if (
                    needs is not None
                    and needs == faulted
                    and status not in ("not_applicable",)
                    and (repo.mainbranch is not None and cls != "non-production")
                ):
                    prev = self.previous.get((check, repo.uuid))
                    if prev is None:  # fetch failed without earlier data
                        assert stored[(check, repo.uuid)].result.details["reason"] == "fetch_failed"
                        expected[(check, repo.uuid)] = "unknown"
                        continue
                    status = prev[0]
                    assert stored[(check, repo.uuid)].stale_since is not None
                elif needs is not None and not admin and repo.mainbranch is not None and cls != "non-production":
                    status = "unknown"  # the restrictions and the Pipelines switch need repository:admin
                    got = stored[(check, repo.uuid)].result.details
                    assert got["reason"] == "scope_missing" and got["missing_scope"] == "repository:admin"
                expected[(check, repo.uuid)] = status
        if faulted == "members":
            for key, (status, _) in self.previous.items():
                if key[0] in MEMBER_TESTS:
                    got = stored[key]
                    assert got.result.status == status and got.stale_since is not None, (key, got.result.status)
        elif not account:
            for check in MEMBER_TESTS:
                expected[(check, WS)] = "unknown"
                details = stored[(check, WS)].result.details
                assert details["reason"] == "scope_missing" and details["missing_scope"] == "account"
        else:
            for account_id in self.ws.members:
                status, reason = expected_member(account_id, self.people, today)
                expected[("offboarded-access-removed", account_id)] = status
                if reason is not None:
                    got = stored.get(("offboarded-access-removed", account_id))
                    assert got is not None and got.result.details.get("reason") == reason
                expected[("member-mfa-enabled", account_id)] = self.expected_mfa(account_id)
        actual = {k: v.result.status for k, v in stored.items() if k[0] in (*REPO_TESTS, *MEMBER_TESTS)}
        if faulted == "members":
            actual = {k: v for k, v in actual.items() if k[0] not in MEMBER_TESTS}
        assert actual == expected
        self.previous = {k: (v.result.status, v.result.details) for k, v in stored.items()}

    @invariant()
    def unknown_always_says_why(self) -> None:
        reasons = {"scope_missing", "permission_missing", "not_linked", "owner_missing", "fetch_failed"}
        for status, details in self.previous.values():
            if status == "unknown":
                assert details.get("reason") in reasons


ProductAgainstReference.TestCase.settings = settings(
    max_examples=200 if SOAK else 60,
    stateful_step_count=30 if SOAK else 20,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
TestProductAgainstReference = ProductAgainstReference.TestCase

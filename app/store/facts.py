"""Snapshots → facts: what the checks read of one workspace, built from stored snapshots alone.

A snapshot that was never fetched, whose latest fetch failed, or that holds a 403 marker becomes
``Unreadable`` with its reason, so a test answers ``unknown`` (never ``fail``) for it (docs/checks.md
"A fetch that fails"). Classification (explicit class, else the first matching rule) happens here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from app.bitbucket.models import (
    BranchingModel,
    BranchRestriction,
    Member,
    Pipeline,
    PipelinesConfig,
    Repository,
)
from app.checks.base import MemberFacts, Person, RepoFacts, Unreadable, WorkspaceFacts
from app.checks.branch_coverage import glob_matches
from app.planner import KnownRepo
from app.store.snapshots import (
    Snapshot,
    k_build,
    k_emails,
    k_member_since,
    k_members,
    k_model,
    k_pipelines,
    k_prs,
    k_repo,
    k_repos,
    k_restrictions,
    repo_keys,
)

if TYPE_CHECKING:
    from app.store import Store


def _unreadable(snap: Snapshot | None) -> Unreadable | None:
    if snap is None:
        return Unreadable("not_fetched")
    if snap.stale_since is not None:
        return Unreadable("fetch_failed", detail=snap.error or "fetch failed")
    if isinstance(snap.content, dict) and "unreadable" in snap.content:
        u = snap.content["unreadable"]
        return Unreadable(u.get("reason", "missing_scope"), scope=u.get("scope"))
    return None


def _count(snap: Snapshot | None) -> int | None:
    return snap.content if snap is not None and isinstance(snap.content, int) else None


def classify(
    repo: Repository, explicit: dict[str, str], rules: Sequence[dict[str, Any]]
) -> tuple[str | None, str | None]:
    """The explicit class wins; otherwise the first matching rule (project key or name glob)."""
    if repo.uuid in explicit:
        return explicit[repo.uuid], "explicit"
    for rule in rules:
        if rule.get("workspace") and rule["workspace"] != repo.workspace:
            continue
        if rule.get("project_key") and rule["project_key"] == repo.project_key:
            return rule["class"], f"rule:{rule['id']}"
        if rule.get("name_glob") and (
            glob_matches(rule["name_glob"], repo.slug) or glob_matches(rule["name_glob"], repo.name)
        ):
            return rule["class"], f"rule:{rule['id']}"
    return None, None


async def build_facts(
    store: Store,
    ws: str,
    repo_uuids: set[str] | None = None,
    with_repos: bool = True,
    with_members: bool = True,
    listed: Sequence[str] | None = None,
) -> tuple[WorkspaceFacts, bool]:
    """Facts for one workspace from stored snapshots; the flag says whether members were read.

    ``repo_uuids`` limits the repositories read; ``with_repos``/``with_members`` skip whole parts.
    ``listed``: the listed repositories among ``repo_uuids``, in list order, when the caller knows
    them (a pass's chunk, just listed): the stored repository list is then not read (at 10,000
    repositories, reading it for each chunk would make a pass quadratic).
    """
    snaps = await _snapshots(store, ws, repo_uuids, with_repos, with_members)
    if not with_repos:
        listed = []
    elif listed is None and repo_uuids is None:
        repo_list = snaps.get(k_repos(ws))  # the whole workspace was read, its list with it
        listed = repo_list.content if repo_list and isinstance(repo_list.content, list) else []
    elif listed is None:
        # The listed ones among ``repo_uuids``, in list order: a lookup per uuid in the list as
        # parsed once per content (a webhook's cost does not grow with the workspace).
        stored = await store.snapshots.repo_list(ws)
        listed = stored.ordered(repo_uuids or ()) if stored is not None else []
    # Explicit classes by key (those of the repositories evaluated), not the workspace's.
    explicit = await store.records.classes(ws, uuids=listed if repo_uuids is not None else None) if listed else {}
    rules = await store.records.rules() if with_repos else []
    people = await store.records.people() if with_members else []
    exceptions = await store.records.exceptions()
    repos: list[RepoFacts] = []
    for uuid in listed:
        snap = snaps.get(k_repo(uuid))
        if snap is None or snap.content is None:
            continue
        repo = Repository.model_validate(snap.content)
        cls, source = classify(repo, explicit, rules)
        r_snap = snaps.get(k_restrictions(uuid))
        restrictions: tuple[BranchRestriction, ...] | Unreadable = _unreadable(r_snap) or tuple(
            BranchRestriction.model_validate(v)
            for v in r_snap.content["values"]  # type: ignore[union-attr]
        )
        m_snap = snaps.get(k_model(uuid))
        model: BranchingModel | Unreadable | None = None
        if m_snap is not None:
            model = _unreadable(m_snap) or BranchingModel.model_validate(m_snap.content)
        p_snap = snaps.get(k_pipelines(uuid))
        pipelines: PipelinesConfig | Unreadable = _unreadable(p_snap) or PipelinesConfig.model_validate(
            p_snap.content  # type: ignore[union-attr]
        )
        b_snap = snaps.get(k_build(uuid))
        build = Pipeline.model_validate(b_snap.content) if b_snap and b_snap.content else None
        repos.append(
            RepoFacts(
                repo=repo,
                repo_class=cls,
                class_source=source,
                restrictions=restrictions,
                branching_model=model,
                pipelines=pipelines,
                last_build=build,
                open_pullrequests=_count(snaps.get(k_prs(uuid))),
            )
        )
    members = await _member_facts(store, ws, snaps, people) if with_members else Unreadable("not_fetched")
    facts = WorkspaceFacts(workspace=ws, repositories=tuple(repos), members=members, exceptions=tuple(exceptions))
    return facts, members_read(members)


async def _snapshots(
    store: Store, ws: str, repo_uuids: set[str] | None, with_repos: bool, with_members: bool
) -> dict[str, Snapshot]:
    """The snapshots an evaluation reads: by key when it is narrowed to some repositories or
    skips them (a webhook's re-evaluation reads its subjects' snapshots only; the repository
    list comes from :meth:`app.store.snapshots.Snapshots.repo_list`); the whole workspace when
    every repository is evaluated."""
    if with_repos and repo_uuids is None:
        return await store.snapshots.load(ws)
    keys: list[str] = []
    if with_repos and repo_uuids:
        keys += [k for uuid in repo_uuids for k in repo_keys(uuid)]
    if with_members:
        keys += [k_members(ws), k_emails(ws), k_member_since(ws)]  # as member_snapshots() reads them
    return await store.snapshots.load_keys(keys) if keys else {}


async def _member_facts(
    store: Store, ws: str, snaps: dict[str, Snapshot], people: Sequence[Person]
) -> tuple[MemberFacts, ...] | Unreadable:
    """Members linked to people (by account id, else email, else a mark). A member list or email
    lookup that failed leaves its earlier content in place: members whose result rests on it are
    marked ``stale`` so the findings diff keeps their last result (docs/checks.md "A fetch that fails")."""
    reader = await member_reader(store, ws, snaps, people)
    return reader if isinstance(reader, Unreadable) else reader.facts(reader.listed)


def members_read(members: object) -> bool:
    """Whether member results may be decided from what was read: a member list refused for want of
    a scope or permission is data (its results are `unknown`); a failed or absent one leaves the
    stored member results alone."""
    return not isinstance(members, Unreadable) or members.reason in ("missing_scope", "missing_permission")


@dataclass
class MemberReader:
    """The stored member list (raw entries, in list order) with everything that links a member to
    a person, so member facts can be built a slice at a time (a pass evaluates 20,000 members in
    chunks, never all at once)."""

    listed: list[Any]
    stale_list: bool
    by_account: dict[str, Person]
    by_email: dict[str, Person]
    account_to_email: dict[str, str]
    emails_stale: bool
    lookup: str
    since: dict[str, Any]
    marks: dict[str, tuple[str, str]]

    @staticmethod
    def key(raw: Any) -> str:
        """The subject key (account id) of one raw entry of the list."""
        return Member.model_validate(raw).user.key

    def facts(self, entries: Iterable[Any]) -> tuple[MemberFacts, ...]:
        out = []
        for raw in entries:
            m = Member.model_validate(raw)
            person, how = self.by_account.get(m.user.key), "account_id"
            if person is None and m.user.key in self.account_to_email:
                person, how = self.by_email.get(self.account_to_email[m.user.key]), "email"
            if person is None and m.user.key in self.marks:
                kind, owner = self.marks[m.user.key]
                person, how = (
                    Person(
                        email=f"{m.user.key} ({kind})",
                        name=m.user.display_name or m.user.key,
                        kind=kind,
                        status="active",
                        owner=owner,
                    ),
                    "mark",
                )
            linked_by = how if person else None
            stale: str | None = None
            if self.stale_list:
                stale = "members"
            elif self.emails_stale and linked_by in (None, "email"):
                stale = "email_links"
            began = self.since.get(m.user.key)
            out.append(
                MemberFacts(
                    user=m.user,
                    permission=m.permission,
                    person=person,
                    linked_by=linked_by,
                    email_lookup=self.lookup,
                    stale=stale,
                    member_since=datetime.fromisoformat(began) if isinstance(began, str) else None,
                )
            )
        return tuple(out)


async def member_reader(
    store: Store, ws: str, snaps: Mapping[str, Snapshot], people: Sequence[Person]
) -> MemberReader | Unreadable:
    """What member facts are built from, or why there is no member list to evaluate."""
    members_snap = snaps.get(k_members(ws))
    why = _unreadable(members_snap)
    listed = members_snap.content if members_snap is not None and isinstance(members_snap.content, list) else None
    if listed is None or (why is not None and why.reason != "fetch_failed"):
        if why is not None and why.reason == "missing_scope":
            return Unreadable("missing_scope", scope=why.scope or "account", detail=why.detail)
        return why or Unreadable("not_fetched")
    email_snap = snaps.get(k_emails(ws))
    links = email_snap.content if email_snap is not None and isinstance(email_snap.content, dict) else {}
    since_snap = snaps.get(k_member_since(ws))
    return MemberReader(
        listed=listed,
        stale_list=why is not None,
        by_account={p.bitbucket_account_id: p for p in people if p.bitbucket_account_id},
        by_email={p.email: p for p in people},
        account_to_email={acct: email for email, acct in (links.get("links") or {}).items()},
        emails_stale=email_snap is not None and email_snap.stale_since is not None,
        lookup={True: "available", False: "unavailable", None: "not_needed"}[links.get("available")],
        since=since_snap.content if since_snap and isinstance(since_snap.content, dict) else {},
        marks=await store.records.marks(ws),
    )


async def member_snapshots(store: Store, ws: str) -> dict[str, Snapshot]:
    """The three snapshots member facts are built from (list, email links, membership starts)."""
    return await store.snapshots.load_keys([k_members(ws), k_emails(ws), k_member_since(ws)])


async def known_repos(store: Store, ws: str, uuids: Iterable[str] | None = None) -> dict[str, KnownRepo]:
    """What the planner may know of the workspace's repositories: main branch, branching-model
    branches. With ``uuids``, of those repositories only (read by key: an event's plan costs the
    same in a workspace of ten repositories or of ten thousand)."""
    if uuids is None:
        snaps = await store.snapshots.load(ws, kinds=("repos", "repo", "branching_model"))
        listed = snaps.get(k_repos(ws))
        wanted = list(listed.content) if listed and isinstance(listed.content, list) else []
    else:
        stored = await store.snapshots.repo_list(ws)
        wanted = sorted(u for u in set(uuids) if stored is not None and u in stored.position)
        snaps = await store.snapshots.load_keys([k for u in wanted for k in (k_repo(u), k_model(u))])
    out: dict[str, KnownRepo] = {}
    for uuid in wanted:
        snap = snaps.get(k_repo(uuid))
        if snap is None or snap.content is None:
            continue
        main = snap.content.get("mainbranch")
        branches: set[str] = set()
        model = snaps.get(k_model(uuid))
        if model is not None and isinstance(model.content, dict):
            for part in ("development_name", "production_name"):
                if model.content.get(part):
                    branches.add(model.content[part])
        out[uuid] = KnownRepo(uuid=uuid, mainbranch=main, model_branches=frozenset(branches))
    return out

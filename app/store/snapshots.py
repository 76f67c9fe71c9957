"""Snapshots of fetched Bitbucket resources, keyed by resource, with a content hash, the time
they were fetched, and ``stale_since``/``error`` when the latest fetch failed."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from app.store.db import Database
from app.store.natkey import natural_key


# -- keys: one snapshot per resource ------------------------------------------------------------
def k_repos(ws: str) -> str:
    return f"repos:{ws}"


def k_repo(uuid: str) -> str:
    return f"repo:{uuid}"


def k_prs(uuid: str) -> str:
    return f"repo:{uuid}:prs"


def k_restrictions(uuid: str) -> str:
    return f"restrictions:{uuid}"


def k_model(uuid: str) -> str:
    return f"branching_model:{uuid}"


def k_pipelines(uuid: str) -> str:
    return f"pipelines:{uuid}"


def k_build(uuid: str) -> str:
    return f"last_build:{uuid}"


def k_members(ws: str) -> str:
    return f"members:{ws}"


def k_emails(ws: str) -> str:
    return f"email_links:{ws}"


def k_member_since(ws: str) -> str:
    return f"member_since:{ws}"


def repo_keys(uuid: str) -> list[str]:
    """Every snapshot that belongs to one repository (dropped when it leaves the workspace)."""
    return [k(uuid) for k in (k_repo, k_prs, k_restrictions, k_model, k_pipelines, k_build)]


def repo_of(key: str) -> str | None:
    """The repository a snapshot key belongs to, or None for a workspace-wide snapshot."""
    kind, _, rest = key.partition(":")
    if kind in ("repo", "restrictions", "branching_model", "pipelines", "last_build"):
        return rest.split(":")[0] if rest.startswith("{") else rest
    return None


@dataclass(frozen=True)
class RepoList:
    """A workspace's stored repository list, parsed: the uuids in list order and each one's place."""

    uuids: tuple[str, ...]
    position: Mapping[str, int]

    def ordered(self, among: Iterable[str]) -> list[str]:
        """The listed repositories among ``among``, in list order (a lookup per uuid asked)."""
        return sorted((u for u in set(among) if u in self.position), key=self.position.__getitem__)


@dataclass(frozen=True)
class Snapshot:
    key: str
    workspace: str
    kind: str
    content: Any
    fetched_at: str | None
    stale_since: str | None
    error: str | None


def listed_repos(snaps: Mapping[str, Snapshot], ws: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """The workspace's current repositories in loaded snapshots: each uuid of the repository list
    with its stored metadata, in list order; a listed repository never read is skipped."""
    listed = snaps.get(k_repos(ws))
    for uuid in listed.content if listed is not None and isinstance(listed.content, list) else []:
        snap = snaps.get(k_repo(uuid))
        if snap is not None and isinstance(snap.content, dict):
            yield uuid, snap.content


def repo_named(snaps: Mapping[str, Snapshot], ws: str, name: str) -> tuple[str, dict[str, Any]] | None:
    """The listed repository a user means by ``name`` (its uuid, or its ``full_name`` in any case).

    Bitbucket gives a full name to one repository at a time, but the product may still hold one
    that left with the name (a transfer is read again only by the next pass) beside the one that
    took it (a rename, read at once): the one read last holds the name now (found by the state
    machine: an exception for ``acme/api`` went to the repository transferred out)."""
    text = name.strip()
    best: tuple[str, tuple[str, dict[str, Any]]] | None = None
    for uuid, content in listed_repos(snaps, ws):
        if text == uuid or text.lower() == str(content.get("full_name", "")).lower():
            read = snaps[k_repo(uuid)].fetched_at or ""
            if best is None or read > best[0]:
                best = (read, (uuid, content))
    return best[1] if best is not None else None


def content_hash(content: Any) -> str:
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()


def _snapshot(r: Any) -> Snapshot:
    return Snapshot(
        key=r["key"],
        workspace=r["workspace"],
        kind=r["kind"],
        content=json.loads(r["content"]) if r["content"] is not None else None,
        fetched_at=r["fetched_at"],
        stale_since=r["stale_since"],
        error=r["error"],
    )


MEMBER_KINDS = ("members", "email_links")


def member_rows(workspace: str, members: Any, emails: Any) -> list[tuple[str, str, Any, str, Any, str | None]]:
    """The members table's rows of a workspace (schema 6) from its member list and email lookup:
    (workspace, account id, display name, natural sort key, permission, the lowest email the
    lookup matched to the member)."""
    links = emails.get("links") if isinstance(emails, dict) else None
    email_of: dict[str, str] = {}
    for email, account in sorted(links.items()) if isinstance(links, dict) else ():
        email_of.setdefault(str(account), str(email))
    rows: dict[str, tuple[str, str, Any, str, Any, str | None]] = {}
    for m in members if isinstance(members, list) else ():
        user = m.get("user") if isinstance(m, dict) else None
        if not isinstance(user, dict):
            continue
        account = user.get("account_id") or user.get("uuid")
        if account is None:
            continue
        name = user.get("display_name")
        key = natural_key(name if isinstance(name, str) else None)
        rows[str(account)] = (workspace, str(account), name, key, m.get("permission"), email_of.get(str(account)))
    return list(rows.values())


async def rebuild_members(conn: Any, workspace: str) -> None:
    """Write the members table's rows of ``workspace`` from its stored member list and email
    lookup, inside the caller's transaction on ``conn``."""
    contents: dict[str, Any] = {}
    async with conn.execute(
        "SELECT key, content FROM snapshots WHERE key IN (?, ?) AND content IS NOT NULL",
        (k_members(workspace), k_emails(workspace)),
    ) as cur:
        for key, content in await cur.fetchall():
            contents[key] = json.loads(content)
    rows = member_rows(workspace, contents.get(k_members(workspace)), contents.get(k_emails(workspace)))
    await conn.execute("DELETE FROM members WHERE workspace = ?", (workspace,))
    await conn.executemany(
        "INSERT INTO members (workspace, account_id, display_name, name_key, permission, email) VALUES (?,?,?,?,?,?)",
        rows,
    )


class Snapshots:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.rows_loaded = 0  # snapshot rows read with their content (a gauge of what evaluation costs)
        self._lists: dict[str, tuple[str, RepoList]] = {}  # workspace -> (content hash, its list parsed)

    async def put_many(self, rows: list[tuple[str, str, str, Any]], now: str) -> int:
        """Store (key, workspace, kind, content); rows whose hash is unchanged only get fetched_at.

        Returns how many snapshots changed content.
        """
        if not rows:
            return 0
        keys = [r[0] for r in rows]
        existing: dict[str, str | None] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for r in await self.db.fetchall(f"SELECT key, hash FROM snapshots WHERE key IN ({marks})", chunk):
                existing[r[0]] = r[1]
        changed, touched = [], []
        for key, ws, kind, content in rows:
            digest = content_hash(content)
            if existing.get(key) == digest:
                touched.append((now, key))
            else:
                changed.append((key, ws, kind, json.dumps(content, default=str), digest, now))
        async with self.db.transaction() as conn:
            if changed:
                await conn.executemany(
                    """INSERT INTO snapshots (key, workspace, kind, content, hash, fetched_at, stale_since, error)
                       VALUES (?,?,?,?,?,?,NULL,NULL) ON CONFLICT (key) DO UPDATE SET workspace=excluded.workspace,
                       content=excluded.content, hash=excluded.hash, fetched_at=excluded.fetched_at,
                       stale_since=NULL, error=NULL""",
                    changed,
                )
                for ws in sorted({r[1] for r in changed if r[2] in MEMBER_KINDS}):
                    await rebuild_members(conn, str(ws))
            if touched:
                await conn.executemany(
                    "UPDATE snapshots SET fetched_at = ?, stale_since = NULL, error = NULL WHERE key = ?", touched
                )
        return len(changed)

    async def mark_failed(self, key: str, workspace: str, kind: str, error: str, now: str) -> None:
        """A failed fetch keeps the content and marks the snapshot stale (first failure time kept)."""
        await self.db.execute(
            """INSERT INTO snapshots (key, workspace, kind, content, hash, fetched_at, stale_since, error)
               VALUES (?,?,?,NULL,NULL,NULL,?,?) ON CONFLICT (key) DO UPDATE SET
               stale_since=coalesce(snapshots.stale_since, excluded.stale_since), error=excluded.error""",
            (key, workspace, kind, now, error[:300]),
        )

    async def delete(self, keys: list[str]) -> None:
        if keys:
            await self.db.executemany("DELETE FROM snapshots WHERE key = ?", [(k,) for k in keys])

    async def workspaces(self) -> list[str]:
        """Workspaces whose repository list has been read."""
        rows = await self.db.fetchall("SELECT DISTINCT workspace FROM snapshots WHERE kind = 'repos' ORDER BY 1")
        return [str(r[0]) for r in rows]

    async def load(self, workspace: str, kinds: tuple[str, ...] = ()) -> dict[str, Snapshot]:
        """A workspace's snapshots, or only those of ``kinds``."""
        sql = "SELECT * FROM snapshots WHERE workspace = ?"
        if kinds:
            sql += " AND kind IN (" + ",".join("?" * len(kinds)) + ")"
        rows = await self.db.fetchall(sql, (workspace, *kinds))
        self.rows_loaded += len(rows)
        return {r["key"]: _snapshot(r) for r in rows}

    async def fetched(self, workspace: str, kind: str) -> dict[str, str | None]:
        """key -> when it was last read well, for a workspace's snapshots of one kind, without their
        content (the restrictions tier orders 10,000 repositories by it every minute)."""
        rows = await self.db.fetchall(
            "SELECT key, fetched_at FROM snapshots WHERE workspace = ? AND kind = ?", (workspace, kind)
        )
        return {str(r[0]): r[1] for r in rows}

    async def load_keys(self, keys: Iterable[str]) -> dict[str, Snapshot]:
        """The snapshots of these keys (those that exist), by primary key: the cost follows the
        keys asked for, not the size of the workspace."""
        wanted = sorted(set(keys))
        out: dict[str, Snapshot] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = await self.db.fetchall(f"SELECT * FROM snapshots WHERE key IN ({marks})", chunk)
            self.rows_loaded += len(rows)
            out.update((r["key"], _snapshot(r)) for r in rows)
        return out

    async def exists(self, key: str) -> bool:
        """Whether a snapshot of this key is stored (by key, without its content)."""
        return await self.db.fetchone("SELECT 1 FROM snapshots WHERE key = ?", (key,)) is not None

    async def get(self, key: str) -> Snapshot | None:
        r = await self.db.fetchone("SELECT * FROM snapshots WHERE key = ?", (key,))
        if r is None:
            return None
        self.rows_loaded += 1
        return _snapshot(r)

    async def repo_list(self, workspace: str) -> RepoList | None:
        """The workspace's stored repository list (None before one was read), parsed once per
        content: each call reads the row's hash by key, and its content only when that changed
        (10,000 uuids are 420 kB of JSON), so what a webhook pays for it does not grow with the
        workspace. The hash is read every time, so another process's change is seen at once."""
        row = await self.db.fetchone("SELECT hash FROM snapshots WHERE key = ?", (k_repos(workspace),))
        if row is None or row[0] is None:
            return None
        cached = self._lists.get(workspace)
        if cached is not None and cached[0] == row[0]:
            return cached[1]
        row = await self.db.fetchone("SELECT content, hash FROM snapshots WHERE key = ?", (k_repos(workspace),))
        if row is None or row[0] is None:
            return None
        self.rows_loaded += 1
        content = json.loads(row[0])
        if not isinstance(content, list):
            return None
        uuids = tuple(str(u) for u in content)
        parsed = RepoList(uuids, {u: i for i, u in reversed(list(enumerate(uuids)))})
        self._lists[workspace] = (str(row[1]), parsed)
        return parsed

    async def update_repo_list(self, workspace: str, adds: set[str], gone: set[str], now: str) -> None:
        """Repositories that arrived (once their metadata is stored) join the workspace's list;
        those that left leave it, with every snapshot of theirs. A webhook about a repository
        already listed changes nothing: that is told from the parsed list (:meth:`repo_list`),
        without reading and rewriting 10,000 uuids."""
        if not adds and not gone:
            return
        have_meta = {u for u in adds if await self.exists(k_repo(u))}
        listed = await self.repo_list(workspace)
        if listed is not None and all(u in listed.position for u in have_meta):
            if not any(u in listed.position for u in gone):
                if gone:
                    await self.delete([k for u in sorted(gone) for k in repo_keys(u)])
                return
        # Read, change and write the list in one transaction, the row locked on PostgreSQL: two
        # instances adding a repository each at the same moment must not lose one of them.
        lock = " FOR UPDATE" if self.db.dialect == "postgresql" else ""
        async with self.db.transaction() as conn:
            async with conn.execute(f"SELECT content FROM snapshots WHERE key = ?{lock}", (k_repos(workspace),)) as cur:
                row = await cur.fetchone()
            content = json.loads(row[0]) if row is not None and row[0] is not None else None
            current = list(content) if isinstance(content, list) else []
            new = [u for u in current if u not in gone] + [u for u in sorted(have_meta) if u not in current]
            if new != current:
                await conn.execute(
                    """INSERT INTO snapshots (key, workspace, kind, content, hash, fetched_at, stale_since, error)
                       VALUES (?,?,'repos',?,?,?,NULL,NULL) ON CONFLICT (key) DO UPDATE SET content=excluded.content,
                       hash=excluded.hash, fetched_at=excluded.fetched_at, stale_since=NULL, error=NULL""",
                    (k_repos(workspace), workspace, json.dumps(new), content_hash(new), now),
                )
        if gone:
            await self.delete([k for u in sorted(gone) for k in repo_keys(u)])

    async def keep_repos(self, workspace: str, listed: set[str]) -> None:
        """A pass listed these repositories: drop the snapshots of every other one.

        Reads keys only (no content), and tests each against the set: linear in the workspace."""
        rows = await self.db.fetchall("SELECT key, kind FROM snapshots WHERE workspace = ?", (workspace,))
        gone = []
        for key, kind in rows:
            if kind == "repos" or ":" not in key:
                continue
            repo = repo_of(key)
            if repo is not None and repo not in listed:
                gone.append(key)
        await self.delete(gone)

"""Recording an accepted risk, for the CLI, the API and the dashboard alike (docs/checks.md
"Exceptions"): validate the request, resolve the subject the user names to its stable key (a
repository's uuid, a member's account id, the workspace slug) so the exception follows a renamed
repository and never covers a new one that takes the old name, and refuse a subject the product
has never seen."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from app import record_input
from app.checks import REGISTRY
from app.errors import UnknownSubject as UnknownSubject
from app.models import iso, utcnow
from app.store import Store
from app.store.snapshots import k_members, repo_named


@dataclass(frozen=True)
class Subject:
    workspace: str
    type: str  # repository | member | workspace
    key: str
    name: str


async def resolve_subject(store: Store, check: str, subject: str, workspace: str | None = None) -> Subject:
    """The subject of ``check`` the user means by ``subject``: a repository by ``workspace/slug``
    or uuid, a member by account id or uuid, a workspace by its slug; only what the last reads saw
    (in ``workspace`` when given)."""
    wanted = REGISTRY[check].subject_type
    text = subject.strip()
    for ws in await store.snapshots.workspaces():
        if workspace is not None and ws != workspace:
            continue
        if wanted == "workspace":
            if text.lower() == ws.lower():
                return Subject(ws, "workspace", ws, ws)
            continue
        snaps = await store.snapshots.load(ws, ("repos", "repo", "members"))
        if wanted == "repository":
            named = repo_named(snaps, ws, text)
            if named is not None:
                return Subject(ws, "repository", named[0], str(named[1]["full_name"]))
        else:
            members = snaps.get(k_members(ws))
            if members is not None and isinstance(members.content, list):
                for m in members.content:
                    user = m.get("user") or {}
                    key = user.get("account_id") or user.get("uuid")
                    if key and text in (user.get("account_id"), user.get("uuid")):
                        return Subject(ws, "member", str(key), str(user.get("display_name") or key))
            # Not in the member list (one who left) or no list to read now (a scope taken away, a
            # failed read): a member the product has recorded results for was seen all the same
            # (found by the state machine: the same exception was accepted or refused depending on
            # whether the list could be read; docs/checks.md refuses only a subject never seen).
            for c in (c for c in REGISTRY.values() if c.subject_type == "member"):
                for row in reversed(await store.results.history(c.id, text)):
                    if row["workspace"] == ws and row["subject_key"] == text:
                        return Subject(ws, "member", text, str(row["subject"]))
    kind = {"repository": "repository (workspace/slug)", "member": "member (account id)"}.get(wanted, wanted)
    where = f" in {workspace}" if workspace else ""
    raise UnknownSubject(
        f"--subject: {text!r} is no {kind} the product has seen{where} for {check}; check the name, or run a "
        "reconcile first if it is new"
    )


@dataclass(frozen=True)
class Granted:
    id: int
    request: record_input.ExceptionRequest
    subject: Subject


async def record_exception(
    store: Store,
    *,
    check: str,
    subject: str,
    owner: str,
    reason: str,
    expires: str,
    actor: str,
    known_checks: tuple[str, ...],
    now: datetime | None = None,
) -> Granted:
    """Validate, resolve the subject to its key and store the exception; raises RecordError."""
    now = now or utcnow()
    req = record_input.check_exception(check, subject, owner, reason, expires, now, known_checks)
    found = await resolve_subject(store, req.check, req.subject)
    xid = await store.records.add_exception(
        req.check, found.name, req.owner, req.reason, req.expires_at, actor, iso(now), subject_key=found.key
    )
    return Granted(xid, req, found)

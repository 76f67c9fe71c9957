"""Recording an accepted risk, for the CLI, the API and the dashboard alike (checks.md
"Exceptions"): validate the request, resolve the subject the user names to its stable key (a
repository's uuid, a member's account id, the workspace slug) so the exception follows a renamed
repository and never covers a new one that takes the old name, and refuse a subject the product
has never seen."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from app import records
from app.checks import REGISTRY
from app.models import iso, utcnow
from app.store import Store
from app.store.snapshots import k_members, k_repos


class UnknownSubject(records.RecordError):
    """The named subject is no repository, member or workspace the product has seen."""


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
            listed = snaps.get(k_repos(ws))
            current = set(listed.content) if listed is not None and isinstance(listed.content, list) else set()
            for snap in snaps.values():
                content = snap.content
                if snap.kind != "repo" or not isinstance(content, dict) or content.get("uuid") not in current:
                    continue
                if text.lower() == str(content.get("full_name", "")).lower() or text == content.get("uuid"):
                    return Subject(ws, "repository", str(content["uuid"]), str(content["full_name"]))
        else:
            members = snaps.get(k_members(ws))
            for m in members.content if members is not None and isinstance(members.content, list) else []:
                user = m.get("user") or {}
                key = user.get("account_id") or user.get("uuid")
                if key and text in (user.get("account_id"), user.get("uuid")):
                    return Subject(ws, "member", str(key), str(user.get("display_name") or key))
    kind = {"repository": "repository (workspace/slug)", "member": "member (account id)"}.get(wanted, wanted)
    where = f" in {workspace}" if workspace else ""
    raise UnknownSubject(
        f"--subject: {text!r} is no {kind} the product has seen{where} for {check}; check the name, or run a "
        "reconcile first if it is new"
    )


@dataclass(frozen=True)
class Granted:
    id: int
    request: records.ExceptionRequest
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
    req = records.check_exception(check, subject, owner, reason, expires, now, known_checks)
    found = await resolve_subject(store, req.check, req.subject)
    xid = await store.records.add_exception(
        req.check, found.name, req.owner, req.reason, req.expires_at, actor, iso(now), subject_key=found.key
    )
    return Granted(xid, req, found)

"""Webhook registration and health.

One workspace hook per workspace, with a secret, for the events the planner uses (intersected with
``GET /hook_events/workspace``); when the credential is not a workspace owner (403) one hook per
repository instead. Every reconcile checks the hooks still exist, are active and have the right
events, and repairs them. A hook that has gone silent while repositories change is a health
warning: Bitbucket retries a failed delivery only twice, then gives up silently.
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from app import errors
from app.bitbucket.client import BitbucketClient
from app.bitbucket.models import Webhook
from app.logs import get_logger
from app.planner import USED_EVENTS
from app.service import Service
from app.store.connections import Connection
from app.store.views import Views

log = get_logger("hooks")
SILENCE_GRACE = timedelta(minutes=15)
# Hooks are recognised by their stored uuid or by this description, which names the connection and
# this installation (a random id kept in the database's meta table), never by their URL alone, which
# changes with LP_PUBLIC_URL. Two installations watching one workspace (staging and production, both
# with connection id ``token``) therefore never adopt each other's hook.
DESCRIPTION = "Lowerplane for Bitbucket: compliance monitoring"
LEGACY_DESCRIPTION = "lowerplane"  # what earlier versions wrote; recognised together with the URL
INSTALLATION_KEY = "installation_id"
_DESCRIBED = re.compile(re.escape(DESCRIPTION) + r" \(.+, installation ([0-9a-f]+)\)")


async def _desired(client: BitbucketClient, subject: str) -> list[str]:
    try:
        available = set(await client.hook_events(subject))
    except errors.BitbucketError:
        available = set(USED_EVENTS)
    return sorted(USED_EVENTS & available)


def description(conn_id: str, installation: str) -> str:
    """The fixed description that marks a hook as this installation's, for one connection."""
    return f"{DESCRIPTION} ({conn_id}, installation {installation})"


def _legacy(conn_id: str) -> set[str]:
    """Descriptions earlier versions wrote, without an installation id."""
    return {LEGACY_DESCRIPTION, f"{DESCRIPTION} ({conn_id})"}


async def installation_id(service: Service) -> str:
    """This installation's id: random, made once and kept in the database (meta ``installation_id``)."""
    return await service.store.meta.setdefault(INSTALLATION_KEY, secrets.token_hex(6))


def _needs_repair(hook: Webhook, url: str, events: list[str], described: str) -> bool:
    return (
        not hook.active
        or hook.url != url
        or hook.description != described
        or set(hook.events) != set(events)
        or hook.secret_set is False
    )


def _ours(
    listed: list[Webhook], stored: list[dict[str, Any]], described: str, legacy: set[str], url: str
) -> list[Webhook]:
    """The product's hooks among those listed: the stored uuid first, then by description.

    Never by URL alone: the public URL can change (LP_PUBLIC_URL), and a second hook would then be
    registered beside the old one. A description must carry this installation's id: a hook of another
    installation is left alone, even at the same URL. Hooks registered by earlier versions (a
    description without an installation id) are recognised together with their URL, and take the
    new description.
    """
    uuids = [e["uuid"] for e in stored]
    # A stored uuid whose hook carries another installation's id came with a copy of the database
    # (production's restored into staging): that hook is the other installation's.
    known = [h for h in listed if h.uuid in uuids and _installation(h) in (None, _installation_of(described))]
    others = [
        h
        for h in listed
        if h not in known and (h.description == described or (h.description in legacy and h.url == url))
    ]
    return known + others


def _installation_of(text: str | None) -> str | None:
    match = _DESCRIBED.fullmatch(text or "")
    return match.group(1) if match else None


def _installation(hook: Webhook) -> str | None:
    """The installation id a hook's description carries (None: not described by an installation)."""
    return _installation_of(hook.description)


def _foreign(listed: list[Webhook], ours: list[Webhook], url: str, where: str) -> None:
    """Say so when another installation's hook delivers to this URL (e.g. the database was lost)."""
    for h in listed:
        if h not in ours and h.url == url and (h.description or "").startswith(DESCRIPTION):
            log.warning(
                "webhook.foreign",
                hook=h.uuid,
                where=where,
                description=h.description,
                message="another installation's hook delivers to this URL and is left alone: if that "
                "installation no longer exists (e.g. its database was lost), delete the hook in Bitbucket",
            )


def _stored(conn: Connection, ws: str, repository: str | None) -> list[dict[str, Any]]:
    return [e for e in conn.hooks if e.get("workspace") == ws and e.get("repository") == repository]


async def ensure_hooks(service: Service, conn: Connection) -> list[dict[str, Any]]:
    """Create or repair the connection's hooks; return what was done, per hook."""
    client = await service.client(conn.id)
    url = service.hook_url(conn.id)
    described = description(conn.id, await installation_id(service))
    legacy = _legacy(conn.id)
    secret = service.decrypt(conn.webhook_secret) if conn.webhook_secret else None
    new_secret = secret is None
    if secret is None:
        secret = service.new_secret()
    state: list[dict[str, Any]] = []
    ws_events = await _desired(client, "workspace")
    repo_events: list[str] | None = None
    now = datetime.now(UTC).isoformat()
    for ws in conn.workspaces:
        try:
            stored = _stored(conn, ws, None)
            listed = await client.workspace_hooks(ws)
            hooks = _ours(listed, stored, described, legacy, url)
            _foreign(listed, hooks, url, ws)
            entry = await _one(client, ws, None, hooks, url, described, ws_events, secret, new_secret)
            state.append(_registered(entry, stored, now))
        except errors.ForbiddenError:
            # Workspace hooks need a workspace owner (docs/bitbucket-facts.md): fall back to repositories.
            repo_events = repo_events or await _desired(client, "repository")
            for repo in await client.repositories(ws):
                stored = _stored(conn, ws, repo.full_name)
                try:
                    listed = await client.repository_hooks(ws, repo.uuid)
                    hooks = _ours(listed, stored, described, legacy, url)
                    _foreign(listed, hooks, url, repo.full_name)
                    entry = await _one(client, ws, repo.uuid, hooks, url, described, repo_events, secret, new_secret)
                except errors.ForbiddenError as exc:
                    # Repository hooks need a repository admin: skip the others, say why, go on.
                    why = "not an admin of this repository" if exc.kind == "permission" else "scope missing"
                    entry = {"workspace": ws, "level": "repository", "uuid": None, "events": [], "action": "skipped"}
                    entry["reason"] = why
                entry["repository"] = repo.full_name
                state.append(_registered(entry, stored, now))
    await service.store.connections.set_webhook(conn.id, service.encrypt(secret) if new_secret else None, state)
    service.forget_secrets(conn.id)
    for entry in state:
        if entry["action"] != "ok":
            log.info(
                "webhook." + entry["action"],
                connection=conn.id,
                workspace=entry["workspace"],
                level=entry["level"],
                repository=entry.get("repository"),
            )
    return state


def _registered(entry: dict[str, Any], stored: list[dict[str, Any]], now: str) -> dict[str, Any]:
    """When the hook started to deliver to us: now when created or repaired, else as stored."""
    before = next((e.get("registered_at") for e in stored if e.get("uuid") == entry["uuid"]), None)
    entry["registered_at"] = before if entry["action"] == "ok" and before else now
    return entry


async def _one(
    client: BitbucketClient,
    ws: str,
    repo_uuid: str | None,
    hooks: list[Webhook],
    url: str,
    described: str,
    events: list[str],
    secret: str,
    new_secret: bool,
) -> dict[str, Any]:
    level = "workspace" if repo_uuid is None else "repository"
    if not hooks:
        if repo_uuid is None:
            hook = await client.create_workspace_hook(ws, url, events, secret, described)
        else:
            hook = await client.create_repository_hook(ws, repo_uuid, url, events, secret, described)
        return {"workspace": ws, "level": level, "uuid": hook.uuid, "events": events, "action": "created"}
    hook, extra = hooks[0], hooks[1:]
    action = "ok"
    if _needs_repair(hook, url, events, described) or new_secret:
        if repo_uuid is None:
            hook = await client.update_workspace_hook(ws, hook.uuid, url, events, secret, described)
        else:
            hook = await client.update_repository_hook(ws, repo_uuid, hook.uuid, url, events, secret, described)
        action = "repaired"
    for dup in extra:
        if repo_uuid is None:
            await client.delete_workspace_hook(ws, dup.uuid)
        else:
            await client.delete_repository_hook(ws, repo_uuid, dup.uuid)
    return {"workspace": ws, "level": level, "uuid": hook.uuid, "events": events, "action": action}


async def remove_hooks(service: Service, conn: Connection) -> int:
    client = await service.client(conn.id)
    removed = 0
    for entry in conn.hooks:
        if not entry.get("uuid"):
            continue  # skipped at registration: nothing to remove
        try:
            if entry["level"] == "workspace":
                await client.delete_workspace_hook(entry["workspace"], entry["uuid"])
            else:
                await client.delete_repository_hook(
                    entry["workspace"], entry.get("repository", "").split("/")[-1], entry["uuid"]
                )
            removed += 1
        except errors.NotFoundError:
            pass
    return removed


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def health(service: Service, conn: Connection, now: datetime | None = None) -> dict[str, Any]:
    """Registration and liveness of a connection's hooks (no API call).

    Silence is judged only from registration on: a repository change older than the hook (or than
    its last repair) says nothing about whether the hook delivers.
    """
    now = now or datetime.now(UTC)
    if not conn.hooks:
        return {"status": "missing", "message": "No webhook registered: run `lowerplane-bitbucket webhooks register`."}
    last = conn.last_delivery_at
    delivered = _when(last) if last else None
    newest: str | None = None
    unanswered: str | None = None  # the newest change after registration with no delivery since
    for ws in conn.workspaces:
        marks = [e["registered_at"] for e in conn.hooks if e.get("workspace") == ws and e.get("registered_at")]
        registered = max((_when(m) for m in marks), default=None)
        for updated in await Views(service.store.db).repo_updates(ws):
            if newest is None or updated > newest:
                newest = updated
            changed = _when(updated)
            if registered is not None and changed <= registered:
                continue  # before the hook existed (or was repaired): nothing to deliver then
            if now - changed > SILENCE_GRACE and (delivered is None or delivered < changed):
                if unanswered is None or updated > unanswered:
                    unanswered = updated
    skipped = sorted(str(e.get("repository")) for e in conn.hooks if e.get("action") == "skipped")
    out: dict[str, Any] = {
        "status": "ok",
        "hooks": len(conn.hooks) - len(skipped),
        "last_delivery_at": last,
        "newest_repository_change": newest,
    }
    if unanswered:
        out["status"] = "silent"
        out["message"] = (
            f"No webhook delivery since {last or 'registration'} although repositories changed at {unanswered}: "
            "check the hook's request log in Bitbucket (settings → Webhooks → View requests)."
        )
    if skipped:
        out["skipped"] = skipped
        if out["status"] == "ok":
            out["status"] = "partial"
            out["message"] = (
                f"No webhook on {', '.join(skipped)}: the connecting user is not an admin there, so changes "
                "to them are seen only by the reconcile."
            )
    return out

"""Every action a person can take, in one place, for the CLI, the JSON API and the dashboard alike.

Each action validates its input, writes through the store, appends its internal event (so the
change is evaluated by the one pipeline, like a webhook) and returns a typed result, or raises a
typed error from :mod:`app.errors` (which says its HTTP status and exit code). The front ends only
parse their input (argv, JSON, form) and render the result or the error; none of them holds a
business rule, SQL or a service's internals (ruff's layering rules and ``tests/test_layering.py``
enforce it).

Actions: classify a repository, add a classification rule, import or record personnel, offboard
someone, link or mark a member, add evidence, add and revoke an exception, connect (OAuth) and
disconnect, register webhooks (and read their health), reconcile now, retry a dead event, send a
test alert. What a person sees (read models with a rule in them) is :mod:`app.queries`.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from datetime import datetime
from hashlib import sha256
from typing import TYPE_CHECKING, Any, BinaryIO, Literal

from app import errors, record_input
from app.bitbucket import oauth
from app.bitbucket.client import BitbucketClient, StaticToken
from app.checks import EVIDENCE_CHECKS
from app.checks.base import Person
from app.evidence import Recorded, record_evidence
from app.exceptions import Granted, record_exception
from app.logs import get_logger, register_secret
from app.models import iso, utcnow
from app.settings import CHECK_IDS
from app.store.connections import Connection
from app.store.events import EventRow
from app.store.snapshots import k_repo, repo_named
from app.store.views import Views
from app.webhook_registration import ensure_hooks, health, remove_hooks

if TYPE_CHECKING:
    from app.services import Services

log = get_logger("actions")

Actor = Literal["cli", "api", "dashboard"]
CLASSES = ("production", "non-production")
MARKS = ("service-account", "external")
TIERS = ("full", "members")
OAUTH_STATE_TTL = 600.0  # seconds a connect link stays valid


# -- results ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Classified:
    uuid: str
    workspace: str
    full_name: str
    cls: str
    events: list[int]


@dataclass(frozen=True)
class RuleAdded:
    id: int
    cls: str
    project_key: str | None
    name_glob: str | None
    workspace: str | None
    events: list[int]


@dataclass(frozen=True)
class PeopleImported:
    count: int
    new_emails: list[str]
    events: list[int]


@dataclass(frozen=True)
class PersonSaved:
    person: Person
    created: bool
    events: list[int]


@dataclass(frozen=True)
class Offboarded:
    email: str
    on: str
    events: list[int]


@dataclass(frozen=True)
class MemberLinked:
    workspace: str
    account_id: str
    email: str
    events: list[int]


@dataclass(frozen=True)
class MemberMarked:
    workspace: str
    account_id: str
    mark: str
    owner: str
    events: list[int]


@dataclass(frozen=True)
class EvidenceAdded:
    recorded: Recorded
    check: str
    workspace: str
    member: str | None
    events: list[int]


@dataclass(frozen=True)
class ExceptionAdded:
    granted: Granted
    events: list[int]


@dataclass(frozen=True)
class ExceptionRevoked:
    id: int
    check: str
    subject: str
    events: list[int]


@dataclass(frozen=True)
class ReconcileQueued:
    tier: str
    workspace: str | None
    events: list[int]


@dataclass(frozen=True)
class Connected:
    id: str
    workspaces: tuple[str, ...]
    scopes: tuple[str, ...]
    events: list[int]


@dataclass(frozen=True)
class Disconnected:
    id: str
    hooks_removed: int


def _now() -> str:
    return iso(utcnow())


async def _event(services: Services, key: str, payload: dict[str, object], conn_id: str | None = None) -> list[int]:
    return list(await services.service.internal_event(key, dict(payload), conn_id))


async def settle(services: Services, ids: list[int]) -> list[EventRow]:
    """Run the queued events now (a CLI one-shot has no background worker) and return their rows."""
    await services.worker.drain()
    rows = []
    for eid in ids:
        row = await services.service.store.events.get(eid)
        if row is not None:
            rows.append(row)
    return rows


def changes(rows: list[EventRow]) -> list[str]:
    """The result changes the events caused, in order (what the CLI prints after an action)."""
    lines: list[str] = []
    for row in rows:
        if row.caused:
            lines += row.caused.get("changes", [])
    return lines


# -- classification --------------------------------------------------------------------------------
def _class(cls: str) -> str:
    if cls not in CLASSES:
        raise errors.RecordError("class must be production or non-production")
    return cls


async def classify(services: Services, repository: str, cls: str, actor: Actor) -> Classified:
    """Classify one repository, named by its uuid or by ``WORKSPACE/REPO`` (slug or full name);
    :class:`errors.NotFound` when the product has not seen it."""
    _class(cls)
    store = services.service.store
    found: tuple[str, str, str] | None = None  # uuid, workspace, full name
    snap = await store.snapshots.get(k_repo(repository))
    if snap is not None and snap.content is not None:
        found = (repository, str(snap.content["workspace"]), str(snap.content["full_name"]))
    elif "/" in repository:
        ws = repository.partition("/")[0]
        named = repo_named(await store.snapshots.load(ws), ws, repository)  # the one holding the name now
        if named is not None:
            found = (named[0], ws, str(named[1]["full_name"]))
    if found is None:
        raise errors.NotFound(
            f"unknown repository {repository!r} (run `reconcile` first so the product knows it)",
            title="Unknown repository",
        )
    uuid, ws, full_name = found
    await store.records.set_class(uuid, ws, full_name, cls, actor, _now())
    ids = await _event(services, "lp:classification", {"workspace": ws, "repository_uuid": uuid})
    return Classified(uuid, ws, full_name, cls, ids)


async def add_rule(
    services: Services,
    cls: str,
    *,
    project_key: str | None,
    name_glob: str | None,
    workspace: str | None,
    actor: Actor,
) -> RuleAdded:
    """A classification rule (a project key or a name pattern, optionally in one workspace)."""
    _class(cls)
    if (project_key is None) == (name_glob is None):
        raise errors.RecordError("give exactly one of a project key or a name pattern")
    rid = await services.service.store.records.add_rule(
        cls, _now(), project_key=project_key, name_glob=name_glob, workspace=workspace
    )
    log.info("action.rule_added", rule=rid, actor=actor)
    ids = await _event(services, "lp:classification", {})
    return RuleAdded(rid, cls, project_key, name_glob, workspace, ids)


# -- personnel and members ---------------------------------------------------------------------------
def read_personnel(data: bytes, filename: str) -> list[Person]:
    """A personnel file (CSV or JSON, by ``filename``) read and checked row by row (pure: a front
    end calls it before anything is opened, so a bad file changes nothing)."""
    return record_input.parse_personnel(data, filename)


async def import_personnel(services: Services, people: list[Person], actor: Actor) -> PeopleImported:
    """The people of a personnel file (:func:`read_personnel`): all imported, or none when one
    conflicts with the directory (an account id linked to someone else)."""
    store = services.service.store
    directory = await store.records.people()
    record_input.check_account_conflicts(people, directory)
    known = {p.email for p in directory}
    n = await store.records.import_people(people, actor, _now())
    new = sorted({p.email for p in people if not p.bitbucket_account_id} - known)
    ids = await _event(services, "lp:personnel", {"new_emails": new})
    return PeopleImported(n, new, ids)


async def save_person(services: Services, row: dict[str, object], actor: Actor) -> PersonSaved:
    """One person, added or replaced."""
    store = services.service.store
    person = record_input.person_from_row(row, "body")
    record_input.check_dates(person, "body", utcnow().date())
    record_input.check_account_conflicts([person], await store.records.people())
    known = await store.records.person(person.email)
    await store.records.upsert_person(person, actor, _now())
    ids = await _event(services, "lp:personnel", {"new_emails": [person.email] if known is None else []})
    return PersonSaved(person, known is None, ids)


async def offboard(services: Services, email: str, on: str | None, actor: Actor) -> Offboarded:
    """Mark someone offboarded on ``on`` (a date; today when None)."""
    day = on or utcnow().date().isoformat()
    try:
        day = datetime.fromisoformat(day).date().isoformat()
    except ValueError:
        raise errors.RecordError("offboarded_on must be a date (YYYY-MM-DD)") from None
    if not await services.service.store.records.offboard(email, day, actor, _now()):
        raise errors.NotFound(f"no one with email {email}", title="Unknown person")
    ids = await _event(services, "lp:personnel", {})
    return Offboarded(email.lower(), day, ids)


async def link_member(services: Services, workspace: str, account_id: str, email: str, actor: Actor) -> MemberLinked:
    """Link a workspace member to a person of the directory (by email)."""
    if not email.strip():
        raise errors.RecordError("email is required")
    if not await services.service.store.records.link_member(email, account_id, actor, _now()):
        raise errors.NotFound(f"no one with email {email} in the personnel directory", title="Unknown person")
    ids = await _event(services, "lp:personnel", {"workspace": workspace})
    return MemberLinked(workspace, account_id, email.lower(), ids)


async def mark_member(
    services: Services, workspace: str, account_id: str, mark: str, owner: str, actor: Actor
) -> MemberMarked:
    """Mark a member as a service account or an external, with the person who answers for it."""
    if mark not in MARKS:
        raise errors.RecordError("mark must be service-account or external")
    if not owner.strip():
        raise errors.RecordError("owner is required")
    owner = owner.strip()
    await services.service.store.records.mark_member(workspace, account_id, mark, owner, actor, _now())
    ids = await _event(services, "lp:personnel", {"workspace": workspace})
    return MemberMarked(workspace, account_id, mark, owner, ids)


# -- evidence and exceptions -----------------------------------------------------------------------
async def add_evidence(
    services: Services,
    source: BinaryIO,
    *,
    check: str,
    workspace: str | None,
    member: str | None,
    filename: str,
    expires: str | None,
    actor: Actor,
) -> EvidenceAdded:
    """Evidence for a test that accepts it (streamed from ``source``); ``workspace`` may be left out
    when the product knows exactly one."""
    if check not in EVIDENCE_CHECKS:
        raise errors.RecordError(f"check must be {' or '.join(EVIDENCE_CHECKS)}")
    store = services.service.store
    if not workspace:
        known = await store.snapshots.workspaces()
        if len(known) != 1:
            raise errors.RecordError("--workspace: required (the product knows several or none yet)")
        workspace = known[0]
    settings = services.service.settings
    done = await record_evidence(
        store,
        source,
        check=check,
        workspace=workspace,
        member=member,
        filename=filename,
        uploaded_by=actor,
        expires=expires,
        max_age_days=settings.evidence_max_age_days,
        max_bytes=settings.evidence_max_bytes,
    )
    ids = await _event(services, "lp:evidence", {"workspace": workspace, "check": check})
    return EvidenceAdded(done, check, workspace, member, ids)


async def add_exception(
    services: Services, *, check: str, subject: str, owner: str, reason: str, expires: str, actor: Actor
) -> ExceptionAdded:
    """An accepted risk for one subject the product has seen, valid through ``expires``."""
    done = await record_exception(
        services.service.store,
        check=check,
        subject=subject,
        owner=owner,
        reason=reason,
        expires=expires,
        actor=actor,
        known_checks=CHECK_IDS,
    )
    ids = await _event(services, "lp:exception", {"check": done.request.check, "subject": done.subject.key})
    return ExceptionAdded(done, ids)


async def revoke_exception(services: Services, xid: int, actor: Actor) -> ExceptionRevoked:
    """Revoke an exception; :class:`errors.NotFound` when there is no such unrevoked one."""
    row = await services.service.store.records.revoke_exception(xid, actor, _now())
    if row is None:
        raise errors.NotFound("No such exception (or already revoked).", title="Unknown exception")
    ids = await _event(services, "lp:exception", {"check": row["check_id"], "subject": row["subject"]})
    return ExceptionRevoked(xid, str(row["check_id"]), str(row["subject"]), ids)


# -- passes, events and alerts ----------------------------------------------------------------------
async def reconcile_now(
    services: Services, *, tier: str = "full", workspace: str | None = None, connection: str | None = None
) -> ReconcileQueued:
    """Queue a pass (it joins the same workspace's pass of that tier when one is still queued)."""
    if tier not in TIERS:
        raise errors.RecordError("tier must be full or members")
    payload: dict[str, object] = {"tier": tier}
    if workspace:
        payload["workspace"] = workspace
    ids = await _event(services, "lp:reconcile", payload, connection)
    return ReconcileQueued(tier, workspace or None, ids)


async def reconcile_connections(services: Services, workspace: str | None) -> list[Connection]:
    """The connections a ``reconcile`` command runs on: active and configured now; a ConfigError
    (exit 2) when there is none, every one is broken, or ``workspace`` is none of theirs."""
    service = services.service
    none = "no Bitbucket connection: set LP_BITBUCKET_TOKEN (and LP_WORKSPACES), or connect with OAuth via `serve`"
    conns = []
    for conn in await service.connections():
        if conn.status != "active" or not service.configured(conn):
            continue  # a token connection from an earlier run whose token is not configured now
        if conn.kind == "oauth" and service.crypto is None:
            raise errors.ConfigError("LP_SECRET_KEY: required to use the OAuth connections in the database")
        conns.append(conn)
    if not conns:
        broken = [c.id for c in await service.connections() if c.status == "broken"]
        if broken:
            raise errors.ConfigError(f"every connection is broken ({', '.join(broken)}): reconnect with OAuth")
        raise errors.ConfigError(none)
    if workspace is not None and not any(workspace in c.workspaces for c in conns):
        raise errors.ConfigError(f"--workspace: {workspace!r} is not a connected workspace")
    return conns


async def retry_event(services: Services, eid: int) -> bool:
    """Put a dead event back in the queue; False when it is not dead."""
    return await Views(services.service.store.db).retry_dead(eid, time.time())


async def send_test_alert(services: Services) -> dict[str, str]:
    """A test message to every configured channel: per channel "sent" or why it failed;
    :class:`errors.NoAlertChannel` when none is configured."""
    if not services.dispatcher.senders:
        raise errors.NoAlertChannel("set LP_SLACK_WEBHOOK_URL or LP_SMTP_URL")
    alert = {
        "kind": "test",
        "workspace": "test",
        "check": "test",
        "title": "Test message",
        "severity": "info",
        "subject": "lowerplane",
        "subject_key": "test",
        "new_status": "pass",
        "message": "This is a test message from lowerplane-bitbucket.",
        "fix": "",
        "stamp": utcnow().isoformat(),
    }
    results = {}
    for name, sender in services.dispatcher.senders.items():
        try:
            await sender.send([alert])
            results[name] = "sent"
        except errors.LowerplaneError as exc:
            results[name] = f"failed: {exc}"
    return results


# -- connections ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HooksRegistered:
    connection: str
    url: str
    hooks: list[dict[str, Any]]  # per hook: workspace, repository, level, uuid, events, action


@dataclass(frozen=True)
class HookHealth:
    connection: str
    status: str  # ok | missing | silent | ...
    message: str | None
    hooks: int
    last_delivery_at: str | None


async def prepare_connections(services: Services, *, check_workspaces: bool = True) -> None:
    """Before a one-shot uses the connections: the key must read what the database holds
    (ConfigError), the token-mode connection is brought up to date (BitbucketError), and, unless
    ``check_workspaces`` is False (a command that reads only the database), each workspace
    ``LP_WORKSPACES`` names must be one the token sees (ConfigError: a misspelt slug is bad
    configuration, exit 2, not a run that could not finish)."""
    await services.service.check_key()
    conn = await services.service.ensure_token_connection()
    if check_workspaces and conn is not None and services.service.settings.workspaces:
        await _token_sees(services, conn.id, services.service.settings.workspaces)


async def _token_sees(services: Services, conn_id: str, configured: tuple[str, ...]) -> None:
    """ConfigError naming the configured workspaces the token cannot see (``/user/workspaces``, one
    request). A token that may not list its workspaces (403, 404) is left to the pass, as before."""
    client = await services.service.client(conn_id)
    try:
        seen = sorted(w.slug for w in await client.workspaces())
    except (errors.ForbiddenError, errors.NotFoundError):
        return
    missing = [w for w in configured if w.lower() not in {s.lower() for s in seen}]
    if missing:
        names = ", ".join(repr(w) for w in missing)
        sees = ", ".join(seen) or "none"
        raise errors.ConfigError(
            f"LP_WORKSPACES: {names} {'is not a workspace' if len(missing) == 1 else 'are not workspaces'} "
            f"this token can see (it sees: {sees})"
        )


async def webhook_connections(services: Services) -> list[Connection]:
    """The connections whose webhooks a person can register or inspect: configured now."""
    service = services.service
    conns = [c for c in await service.connections() if service.configured(c)]
    if not conns:
        raise errors.ConfigError("no connection: set LP_BITBUCKET_TOKEN and LP_WORKSPACES, or connect with OAuth")
    return conns


async def register_webhooks(services: Services, conn: Connection) -> HooksRegistered:
    """Register (or repair) the connection's webhooks; BitbucketError when Bitbucket refuses."""
    state = await ensure_hooks(services.service, conn)
    return HooksRegistered(conn.id, services.service.hook_url(conn.id), state)


async def webhook_health(services: Services, conn_id: str) -> HookHealth:
    """Registration and liveness of a connection's hooks, from what the database holds (no API call)."""
    conn = await services.service.store.connections.get(conn_id)
    if conn is None:
        raise errors.NotFound(f"Unknown connection {conn_id}.", title="Unknown connection")
    h = await health(services.service, conn)
    return HookHealth(conn.id, str(h["status"]), h.get("message") or None, len(conn.hooks), conn.last_delivery_at)


def _h(value: str) -> str:
    return sha256(value.encode()).hexdigest()


def callback_url(public_url: str) -> str:
    return f"{public_url}/connect/bitbucket/callback"


async def begin_connect(services: Services, session_id: str) -> str:
    """Start an OAuth connection for a signed-in browser session: a single-use ``state`` bound to
    the session (valid :data:`OAUTH_STATE_TTL`); the URL of Bitbucket's authorize page."""
    settings = services.service.settings
    if not settings.oauth_client_id or settings.oauth_client_secret is None:
        raise errors.OAuthNotConfigured("Set LP_OAUTH_CLIENT_ID and LP_OAUTH_CLIENT_SECRET.")
    state = secrets.token_urlsafe(24)
    await services.service.store.connections.add_oauth_state(_h(state), _h(session_id), time.time())
    return oauth.authorize_url(
        settings.bitbucket_url, settings.oauth_client_id, state, callback_url(settings.public_url)
    )


async def finish_connect(services: Services, state: str, code: str, session_id: str | None) -> Connected:
    """The OAuth callback: check the state (unknown, reused, expired or from another session:
    :class:`errors.ConnectRefused`), exchange the code (:class:`errors.TokenError`), read who and
    which workspaces (:class:`errors.ConnectedUnreadable`), store the connection and its tokens
    encrypted, register the webhooks and queue the first reconcile."""
    service = services.service
    settings = service.settings
    if not state or not code:
        raise errors.ConnectRefused("The callback lacks a code or a state.")
    # Single use: only the first callback for a state can claim it.
    claimed = await service.store.connections.claim_oauth_state(_h(state), time.time())
    if claimed is None:
        raise errors.ConnectRefused("This sign-in link is unknown or was already used. Start again.")
    session_hash, created = claimed
    if session_id is None or not secrets.compare_digest(session_hash, _h(session_id)):
        raise errors.ConnectRefused("This sign-in began in another browser session. Start again.")
    if time.time() - created > OAUTH_STATE_TTL:
        raise errors.ConnectRefused("The sign-in took longer than 10 minutes. Start again.")
    if not settings.oauth_client_id or settings.oauth_client_secret is None:
        raise errors.OAuthNotConfigured("Set LP_OAUTH_CLIENT_ID and LP_OAUTH_CLIENT_SECRET.")
    tokens = await oauth.exchange_code(
        service.pool.session,
        settings.bitbucket_url,
        settings.oauth_client_id,
        settings.oauth_client_secret.get_secret_value(),
        code,
        callback_url(settings.public_url),
    )
    register_secret(tokens.access_token)
    probe = BitbucketClient(service.pool.session, StaticToken(tokens.access_token), api_url=settings.bitbucket_api_url)
    try:
        user = await probe.current_user()
        workspaces = tuple(w.slug for w in await probe.workspaces())
    except errors.BitbucketError as exc:
        raise errors.ConnectedUnreadable(str(exc)) from None
    scopes = tokens.scopes or tuple(sorted(probe.granted_scopes or ()))
    cid = "oauth-" + re.sub(r"[^a-z0-9]+", "-", (user.nickname or user.key or "user").lower()).strip("-")[:40]
    await service.store.connections.upsert(
        cid,
        "oauth",
        workspaces,
        scopes=scopes,
        user={"account_id": user.account_id, "display_name": user.display_name, "uuid": user.uuid},
    )
    await oauth.store_tokens(service, cid, tokens)
    service.token_sources.pop(cid, None)
    service.pool.drop(cid)
    conn = await service.store.connections.get(cid)
    assert conn is not None
    try:
        await ensure_hooks(service, conn)
    except (errors.BitbucketError, errors.TokenError) as exc:
        log.error("connect.webhook_failed", connection=cid, error=f"{type(exc).__name__}: {exc}")
    ids: list[int] = []
    for ws in workspaces:
        ids += await _event(services, "lp:reconcile", {"workspace": ws, "tier": "full"}, cid)
    log.info("connect.done", connection=cid, workspaces=list(workspaces), scopes=list(scopes))
    return Connected(cid, workspaces, scopes, ids)


async def disconnect(services: Services, cid: str) -> Disconnected:
    """Remove the connection's webhooks (when Bitbucket still answers) and forget its tokens."""
    service = services.service
    conn = await service.store.connections.get(cid)
    if conn is None:
        raise errors.NotFound(f"Unknown connection {cid}.", title="Unknown connection")
    removed = 0
    try:
        removed = await remove_hooks(service, conn)
    except (errors.BitbucketError, errors.TokenError):
        pass  # the hooks may be gone already; the tokens are forgotten either way
    await service.store.connections.forget(cid)
    service.forget_secrets(cid)
    service.token_sources.pop(cid, None)
    service.pool.drop(cid)
    return Disconnected(cid, removed)

"""What the CLI commands do, apart from parsing: open the store, call the pipeline, print.

Each function returns an exit status (0, 1) or raises ConfigError (exit 2).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TextIO

import aiohttp

from app import errors, exports, record_input
from app.checks import REGISTRY
from app.checks.base import valid_through
from app.crypto import Crypto
from app.evidence import record_evidence
from app.exceptions import record_exception
from app.findings import to_json
from app.main import Services, build_services
from app.models import SEVERITY_ORDER, iso, utcnow
from app.settings import CHECK_IDS, PostgresURL, Settings
from app.store import Store
from app.store.snapshots import listed_repos


def _unusable(path: Path, exc: sqlite3.Error | OSError) -> errors.ConfigError:
    reason = (exc.strerror or str(exc)) if isinstance(exc, OSError) else str(exc)
    return errors.ConfigError(f"LP_DATABASE: cannot use {path}: {reason}")


@asynccontextmanager
async def open_store(settings: Settings, *, existing: bool = False) -> AsyncIterator[Store]:
    """The one way commands open the database; it is always closed again, whatever happens.

    ``existing``: a read-only command refuses a missing file instead of creating an empty database.
    A file that is not an SQLite database (or cannot be opened) is a configuration error (exit 2).
    """
    path = settings.database
    if isinstance(path, PostgresURL):
        try:
            store = await Store.open(path, settings.files_dir)
        except ConnectionError as exc:  # the message names the URL without its password
            raise errors.ConfigError(f"LP_DATABASE: {exc}") from None
    else:
        if existing and not path.is_file():
            raise errors.ConfigError(f"no database at {path} (set LP_DATABASE to the product's database file)")
        try:
            store = await Store.open(path, settings.files_dir)
        except (sqlite3.Error, OSError) as exc:
            raise _unusable(path, exc) from None
    try:
        yield store
    finally:
        await store.close()


@asynccontextmanager
async def running(settings: Settings, *, existing: bool = False) -> AsyncIterator[Services]:
    """The product's parts without the HTTP server: store, session, clients, worker.

    Everything opened here is closed on the way out, on success, error or cancellation.
    """
    if settings.secret_key is not None:
        Crypto(settings.secret_key.get_secret_value())  # a bad key is refused before anything is created
    async with contextlib.AsyncExitStack() as stack:
        session = await stack.enter_async_context(aiohttp.ClientSession())
        store = await stack.enter_async_context(open_store(settings, existing=existing))
        yield await build_services(settings, session, store=store)


async def through_log(services: Services, key: str, payload: dict[str, Any]) -> list[str]:
    """Append an internal event (one per connected workspace), drain the worker, return the changes."""
    ids = await services.service.internal_event(key, payload)
    await services.worker.drain()
    lines: list[str] = []
    for eid in ids:
        row = await services.service.store.events.get(eid)
        if row and row.caused:
            lines += row.caused.get("changes", [])
    return lines


async def cmd_reconcile(settings: Settings, workspace: str | None, out: TextIO = sys.stdout) -> int:
    none = "no Bitbucket connection: set LP_BITBUCKET_TOKEN (and LP_WORKSPACES), or connect with OAuth via `serve`"
    if settings.bitbucket_token is None and isinstance(settings.database, Path) and not settings.database.is_file():
        raise errors.ConfigError(f"{none} (no database at {settings.database})")
    async with running(settings) as services:
        service = services.service
        await service.check_key()
        try:
            await service.ensure_token_connection()  # nothing without LP_BITBUCKET_TOKEN
        except errors.BitbucketError as exc:
            print(f"error: reconcile could not finish: {exc}", file=sys.stderr)
            return 1
        conns = []
        for conn in await service.connections():
            if conn.status != "active":
                continue
            if not service.configured(conn):
                continue  # a token connection from an earlier run; its token is not configured now
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
        ids: list[int] = []
        for conn in conns:
            for ws in conn.workspaces:
                if workspace in (None, ws):
                    ids += await service.internal_event("lp:reconcile", {"workspace": ws, "tier": "full"}, conn.id)
        await services.worker.drain()
        status = 0
        for eid in ids:
            row = await service.store.events.get(eid)
            assert row is not None
            ws = row.workspace or "?"
            if row.state != "done":
                print(
                    f"error: reconcile of {ws} could not finish: {row.error} (event {eid} will be retried)",
                    file=sys.stderr,
                )
                status = 1
                continue
            caused = row.caused or {}
            if "skipped" in caused:
                print(f"{ws}: skipped, {caused['skipped']}", file=out)
                continue
            changes = caused.get("changes", [])
            print(
                f"{ws}: {caused.get('api_calls', 0)} API calls, {caused.get('rows_written', 0)} result rows "
                f"written, {len(changes)} changes",
                file=out,
            )
            for line in changes[:50]:
                print(f"  {line}", file=out)
            if len(changes) > 50:
                print(f"  … and {len(changes) - 50} more (see `findings`)", file=out)
    return status


async def cmd_findings(
    settings: Settings,
    workspace: str | None,
    check: str | None,
    status: str | None,
    fmt: str,
    out: TextIO = sys.stdout,
) -> int:
    async with open_store(settings, existing=True) as store:
        rows = await store.results.query(workspace=workspace, check=check, status=status)
    items = [to_json(r) for r in rows]
    items.sort(key=lambda i: (SEVERITY_ORDER.get(str(i["severity"]), 9), str(i["check"]), str(i["subject"])))
    if fmt == "json":
        json.dump(items, out, indent=2)
        out.write("\n")
    elif fmt == "csv":
        out.write(exports.findings_csv(items))
    else:
        _table(items, out)
    return 0


def _table(items: list[dict[str, Any]], out: TextIO) -> None:
    if not items:
        print("No results yet. Run `lowerplane-bitbucket reconcile` first.", file=out)
        return
    counts = Counter(str(i["status"]) for i in items)
    current = None
    for i in items:
        if i["check"] != current:
            current = i["check"]
            title = REGISTRY[str(current)].title if current in REGISTRY else current
            print(f"\n{current} [{i['severity']}] {title}", file=out)
        stale = " (stale)" if "stale_since" in i["details"] else ""
        print(
            f"  {str(i['status']).upper():<15} {i['subject_name'] or i['subject']!s:<22} {i['message']}{stale}",
            file=out,
        )
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    print(f"\n{len(items)} results: {summary}", file=out)


async def _known_workspaces(store: Store) -> list[str]:
    return await store.snapshots.workspaces()


async def cmd_classify(settings: Settings, target: str, cls: str, out: TextIO = sys.stdout) -> int:
    ws, _, slug = target.partition("/")
    if not ws or not slug:
        raise errors.ConfigError(f"expected WORKSPACE/REPO, not {target!r}")
    async with running(settings, existing=True) as services:
        store = services.service.store
        snaps = await store.snapshots.load(ws)
        match = None
        for _, content in listed_repos(snaps, ws):
            if content["slug"] == slug or content["full_name"] == target:
                match = content
        if match is None:
            raise errors.ConfigError(f"unknown repository {target!r} (run `reconcile` first so the product knows it)")
        await store.records.set_class(match["uuid"], ws, match["full_name"], cls, "cli", iso(utcnow()))
        lines = await through_log(services, "lp:classification", {"workspace": ws, "repository_uuid": match["uuid"]})
    print(f"{match['full_name']} classified {cls}", file=out)
    for line in lines:
        print(line, file=out)
    return 0


async def cmd_rule_add(
    settings: Settings, cls: str, project: str | None, name: str | None, workspace: str | None, out: TextIO = sys.stdout
) -> int:
    if (project is None) == (name is None):
        raise errors.ConfigError("give exactly one of --project KEY or --name GLOB")
    async with running(settings) as services:
        rid = await services.service.store.records.add_rule(
            cls, iso(utcnow()), project_key=project, name_glob=name, workspace=workspace
        )
        lines = await through_log(services, "lp:classification", {})
    for line in lines:
        print(line, file=out)
    print(f"rule {rid}: {'project ' + project if project else 'name ' + str(name)} → {cls}", file=out)
    return 0


async def cmd_rule_list(settings: Settings, out: TextIO = sys.stdout) -> int:
    async with open_store(settings, existing=True) as store:
        for r in await store.records.rules():
            what = f"project {r['project_key']}" if r["project_key"] else f"name {r['name_glob']}"
            print(
                f"{r['position']}. {what} → {r['class']}"
                + (f" (workspace {r['workspace']})" if r["workspace"] else ""),
                file=out,
            )
    return 0


async def cmd_personnel_import(settings: Settings, path: Path, out: TextIO = sys.stdout) -> int:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise errors.ConfigError(f"{path}: {exc.strerror}") from None
    try:
        people = record_input.parse_personnel(data, path.name)
    except record_input.RecordError as exc:
        raise errors.ConfigError(str(exc)) from None
    async with running(settings) as services:
        store = services.service.store
        directory = await store.records.people()
        try:
            record_input.check_account_conflicts(people, directory)
        except record_input.RecordError as exc:
            raise errors.ConfigError(str(exc)) from None
        known = {p.email for p in directory}
        n = await store.records.import_people(people, "cli", iso(utcnow()))
        new_emails = sorted({p.email for p in people if not p.bitbucket_account_id} - known)
        lines = await through_log(services, "lp:personnel", {"new_emails": new_emails})
    print(f"imported {n} people", file=out)
    for line in lines:
        print(line, file=out)
    return 0


async def cmd_evidence_add(
    settings: Settings,
    check: str,
    workspace: str | None,
    member: str | None,
    expires: str | None,
    path: Path,
    out: TextIO = sys.stdout,
) -> int:
    try:
        source = path.open("rb")  # streamed into the evidence folder, never read whole
    except OSError as exc:
        raise errors.ConfigError(f"{path}: {exc.strerror}") from None
    async with running(settings, existing=True) as services:  # evidence belongs with the product's data
        store = services.service.store
        known = await _known_workspaces(store)
        ws = workspace or (known[0] if len(known) == 1 else None)
        if ws is None:
            raise errors.ConfigError("--workspace: required (the product knows several or none yet)")
        try:
            done = await record_evidence(
                store,
                source,
                check=check,
                workspace=ws,
                member=member,
                filename=path.name,
                uploaded_by="cli",
                expires=expires,
                max_age_days=settings.evidence_max_age_days,
                max_bytes=settings.evidence_max_bytes,
            )
        except record_input.RecordError as exc:
            raise errors.ConfigError(str(exc)) from None
        lines = await through_log(services, "lp:evidence", {"workspace": ws, "check": check})
    scope = (
        f"member {member}"
        if member
        else (f"{len(done.covered)} members" if done.covered is not None else f"workspace {ws}")
    )
    print(
        f"evidence {done.id} ({done.media_type}) for {check}, {scope}, valid through "
        f"{valid_through(done.expires_at).isoformat()}",
        file=out,
    )
    for line in lines:
        print(line, file=out)
    return 0


async def cmd_exception_add(
    settings: Settings, check: str, subject: str, owner: str, reason: str, expires: str, out: TextIO = sys.stdout
) -> int:
    async with open_store(settings, existing=True) as store:  # the subject must have been seen
        try:
            done = await record_exception(
                store,
                check=check,
                subject=subject,
                owner=owner,
                reason=reason,
                expires=expires,
                actor="cli",
                known_checks=CHECK_IDS,
            )
        except record_input.RecordError as exc:
            raise errors.ConfigError(str(exc)) from None
    req = done.request
    async with running(settings, existing=True) as services:
        lines = await through_log(services, "lp:exception", {"check": req.check, "subject": done.subject.key})
    print(
        f"exception {done.id}: {check} for {done.subject.name} ({done.subject.key}) valid through "
        f"{valid_through(req.expires_at).isoformat()} (owner {req.owner})",
        file=out,
    )
    for line in lines:
        print(line, file=out)
    return 0


async def cmd_webhooks(settings: Settings, action: str, out: TextIO = sys.stdout) -> int:
    from app.webhook_registration import ensure_hooks, health

    if settings.secret_key is None:
        raise errors.ConfigError("LP_SECRET_KEY: required to store the webhook secret")
    async with running(settings, existing=action == "status") as services:
        service = services.service
        await service.check_key()
        try:
            await service.ensure_token_connection()
        except errors.BitbucketError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        conns = [c for c in await service.connections() if service.configured(c)]
        if not conns:
            raise errors.ConfigError("no connection: set LP_BITBUCKET_TOKEN and LP_WORKSPACES, or connect with OAuth")
        status = 0
        for conn in conns:
            if action == "register":
                try:
                    state = await ensure_hooks(service, conn)
                except errors.BitbucketError as exc:
                    print(f"error: {conn.id}: {exc}", file=sys.stderr)
                    status = 1
                    continue
                for entry in state:
                    where = entry.get("repository") or entry["workspace"]
                    print(
                        f"{conn.id}: {entry['level']} hook on {where}: {entry['action']} "
                        f"({len(entry['events'])} events) → {service.hook_url(conn.id)}",
                        file=out,
                    )
            else:
                fresh = await service.store.connections.get(conn.id)
                assert fresh is not None
                h = await health(service, fresh)
                print(
                    f"{conn.id}: {h['status']}, {len(fresh.hooks)} hooks, last delivery "
                    f"{fresh.last_delivery_at or 'never'}" + (f" — {h['message']}" if h.get("message") else ""),
                    file=out,
                )
                if h["status"] != "ok":
                    status = 1
    return status


async def cmd_events(settings: Settings, follow: bool, limit: int = 20, out: TextIO = sys.stdout) -> int:
    async with open_store(settings, existing=True) as store:
        rows = list(reversed(await store.events.list(limit=limit)))
        for row in rows:
            print(_event_line(row.as_json()), file=out, flush=True)
        since = max((r.changed_at for r in rows), default=0.0)
        while follow:
            await store.events.wait_changed(1.0)
            for row in await store.events.list(changed_after=since, limit=500):
                print(_event_line(row.as_json()), file=out, flush=True)
                since = max(since, row.changed_at)
    return 0


def _event_line(e: dict[str, Any]) -> str:
    ids = f"req={e['request_uuid']} hook={e['hook_uuid']} attempt={e['attempt']}" if e["source"] == "webhook" else ""
    caused = e.get("caused") or {}
    what = ""
    if caused.get("fetches"):
        what += f" fetched {len(caused['fetches'])}"
    if caused.get("changes"):
        what += " → " + "; ".join(caused["changes"][:3]) + (" …" if len(caused["changes"]) > 3 else "")
    if e.get("error"):
        what += f" error: {e['error']}"
    return f"#{e['id']} {e['received_at']} {e['state']:<8} {e['event_key']:<28} {e['summary']} {ids}{what}".rstrip()


async def check_key(settings: Settings) -> None:
    """``serve``'s check, before it starts: the key reads what the database holds (else exit 2)."""
    async with running(settings) as services:
        await services.service.check_key()


async def cmd_backup(settings: Settings, target: Path, out: TextIO = sys.stdout) -> int:
    if target.exists():
        raise errors.ConfigError(f"{target}: exists already; choose a new file")
    if isinstance(settings.database, PostgresURL):
        raise errors.ConfigError("LP_DATABASE is a PostgreSQL database: back it up with pg_dump")
    if not settings.database.exists():
        raise errors.ConfigError(f"{settings.database}: no database to back up")
    async with open_store(settings) as store:
        await store.db.backup(target)
    print(f"backed up {settings.database} to {target}", file=out)
    return 0

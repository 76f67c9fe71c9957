"""What the CLI commands do, apart from parsing: open the store, call the pipeline, print.

Each function returns an exit status (0, 1) or raises ConfigError (exit 2).
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from app import actions, errors, exports, queries
from app.checks import REGISTRY
from app.checks.base import valid_through
from app.findings import to_json
from app.models import SEVERITY_ORDER
from app.runtime import backup, open_store, running
from app.settings import Settings


@contextmanager
def _as_config() -> Iterator[None]:
    """A person's bad input (an action's RecordError) as the CLI's configuration error: one line, exit 2."""
    try:
        yield
    except errors.RecordError as exc:
        raise errors.ConfigError(str(exc)) from None


async def cmd_reconcile(settings: Settings, workspace: str | None, out: TextIO = sys.stdout) -> int:
    none = "no Bitbucket connection: set LP_BITBUCKET_TOKEN (and LP_WORKSPACES), or connect with OAuth via `serve`"
    if settings.bitbucket_token is None and isinstance(settings.database, Path) and not settings.database.is_file():
        raise errors.ConfigError(f"{none} (no database at {settings.database})")
    async with running(settings) as services:
        try:
            await actions.prepare_connections(services)  # the token connection: nothing without LP_BITBUCKET_TOKEN
        except errors.BitbucketError as exc:
            print(f"error: reconcile could not finish: {exc}", file=sys.stderr)
            return 1
        ids: list[int] = []
        for conn in await actions.reconcile_connections(services, workspace):
            ids += (await actions.reconcile_now(services, workspace=workspace, connection=conn.id)).events
        status = 0
        for row in await actions.settle(services, ids):
            ws = row.workspace or "?"
            if row.state != "done":
                print(
                    f"error: reconcile of {ws} could not finish: {row.error} (event {row.id} will be retried)",
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
        try:
            rows, anything = await queries.findings(store, workspace=workspace, check=check, status=status)
        except errors.UnknownWorkspace as exc:
            raise errors.ConfigError(f"--workspace: {exc}") from None
    items = [to_json(r) for r in rows]
    items.sort(key=lambda i: (SEVERITY_ORDER.get(str(i["severity"]), 9), str(i["check"]), str(i["subject"])))
    if fmt == "json":
        json.dump(items, out, indent=2)
        out.write("\n")
    elif fmt == "csv":
        out.write(exports.findings_csv(items))
    else:
        _table(items, out, anything)
    return 0


def _table(items: list[dict[str, Any]], out: TextIO, anything: bool = True) -> None:
    if not items:
        if anything:
            print("No results match --workspace, --check and --status.", file=out)
        else:
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


async def cmd_classify(settings: Settings, target: str, cls: str, out: TextIO = sys.stdout) -> int:
    ws, _, slug = target.partition("/")
    if not ws or not slug:
        raise errors.ConfigError(f"expected WORKSPACE/REPO, not {target!r}")
    async with running(settings, existing=True) as services:
        with _as_config():
            done = await actions.classify(services, target, cls, "cli")
        lines = actions.changes(await actions.settle(services, done.events))
    print(f"{done.full_name} classified {cls}", file=out)
    for line in lines:
        print(line, file=out)
    return 0


async def cmd_rule_add(
    settings: Settings, cls: str, project: str | None, name: str | None, workspace: str | None, out: TextIO = sys.stdout
) -> int:
    if (project is None) == (name is None):
        raise errors.ConfigError("give exactly one of --project KEY or --name GLOB")
    async with running(settings) as services:
        with _as_config():
            done = await actions.add_rule(
                services, cls, project_key=project, name_glob=name, workspace=workspace, actor="cli"
            )
        lines = actions.changes(await actions.settle(services, done.events))
    for line in lines:
        print(line, file=out)
    print(f"rule {done.id}: {'project ' + project if project else 'name ' + str(name)} → {cls}", file=out)
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
    with _as_config():
        people = actions.read_personnel(data, path.name)  # a bad file is refused before anything is opened
    async with running(settings) as services:
        with _as_config():
            done = await actions.import_personnel(services, people, "cli")
        lines = actions.changes(await actions.settle(services, done.events))
    print(f"imported {done.count} people", file=out)
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
    with source:
        async with running(settings, existing=True) as services:  # evidence belongs with the product's data
            with _as_config():
                done = await actions.add_evidence(
                    services,
                    source,
                    check=check,
                    workspace=workspace,
                    member=member,
                    filename=path.name,
                    expires=expires,
                    actor="cli",
                )
            lines = actions.changes(await actions.settle(services, done.events))
    rec = done.recorded
    scope = (
        f"member {member}"
        if member
        else (f"{len(rec.covered)} members" if rec.covered is not None else f"workspace {done.workspace}")
    )
    print(
        f"evidence {rec.id} ({rec.media_type}) for {check}, {scope}, valid through "
        f"{valid_through(rec.expires_at).isoformat()}",
        file=out,
    )
    for line in lines:
        print(line, file=out)
    return 0


async def cmd_exception_add(
    settings: Settings, check: str, subject: str, owner: str, reason: str, expires: str, out: TextIO = sys.stdout
) -> int:
    async with running(settings, existing=True) as services:  # the subject must have been seen
        with _as_config():
            done = await actions.add_exception(
                services, check=check, subject=subject, owner=owner, reason=reason, expires=expires, actor="cli"
            )
        lines = actions.changes(await actions.settle(services, done.events))
    req, found = done.granted.request, done.granted.subject
    print(
        f"exception {done.granted.id}: {check} for {found.name} ({found.key}) valid through "
        f"{valid_through(req.expires_at).isoformat()} (owner {req.owner})",
        file=out,
    )
    for line in lines:
        print(line, file=out)
    return 0


async def cmd_webhooks(settings: Settings, action: str, out: TextIO = sys.stdout) -> int:
    if settings.secret_key is None:
        raise errors.ConfigError("LP_SECRET_KEY: required to store the webhook secret")
    async with running(settings, existing=action == "status") as services:
        try:
            await actions.prepare_connections(services, check_workspaces=action == "register")
        except errors.BitbucketError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        status = 0
        for conn in await actions.webhook_connections(services):
            if action == "register":
                try:
                    done = await actions.register_webhooks(services, conn)
                except errors.BitbucketError as exc:
                    print(f"error: {conn.id}: {exc}", file=sys.stderr)
                    status = 1
                    continue
                for entry in done.hooks:
                    where = entry.get("repository") or entry["workspace"]
                    print(
                        f"{conn.id}: {entry['level']} hook on {where}: {entry['action']} "
                        f"({len(entry['events'])} events) → {done.url}",
                        file=out,
                    )
            else:
                h = await actions.webhook_health(services, conn.id)
                print(
                    f"{conn.id}: {h.status}, {h.hooks} hooks, last delivery "
                    f"{h.last_delivery_at or 'never'}" + (f" — {h.message}" if h.message else ""),
                    file=out,
                )
                if h.status != "ok":
                    status = 1
    return status


async def cmd_events(settings: Settings, follow: bool, limit: int = 20, out: TextIO = sys.stdout) -> int:
    async with open_store(settings, existing=True) as store:
        rows = list(reversed(await store.events.list(limit=limit)))
        for row in rows:
            print(_event_line(row.as_json()), file=out, flush=True)
        since = max((r.changed_at for r in rows), default=0.0)
        watched = await store.events.watch()
        while follow:
            await store.events.wait_changed(1.0, watched)
            watched = await store.events.watch()  # before the read: a change after it wakes us
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
    await backup(settings, target)
    print(f"backed up {settings.database} to {target}", file=out)
    return 0

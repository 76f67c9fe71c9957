"""What the CLI commands do, apart from parsing: open the store, call the pipeline, print.

Each function returns an exit status (0, 1) or raises ConfigError (exit 2).
"""

from __future__ import annotations

import csv
import json
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TextIO

import aiohttp

from app import errors, records
from app.bitbucket.client import BitbucketClient, Budget, StaticToken
from app.checks import REGISTRY
from app.findings import to_json
from app.models import SEVERITY_ORDER
from app.reconcile import iso, k_members, k_repo, k_repos, reconcile_workspace, record, utcnow
from app.settings import CHECK_IDS, Settings
from app.store import Store


@asynccontextmanager
async def open_store(settings: Settings) -> AsyncIterator[Store]:
    store = await Store.open(settings.database)
    try:
        yield store
    finally:
        await store.close()


def token_client(settings: Settings, session: aiohttp.ClientSession) -> BitbucketClient:
    if settings.bitbucket_token is None:
        raise errors.ConfigError(
            "no Bitbucket connection: set LP_BITBUCKET_TOKEN (and LP_WORKSPACES), or connect with OAuth via `serve`"
        )
    return BitbucketClient(
        session,
        StaticToken(settings.bitbucket_token.get_secret_value(), "token"),
        api_url=settings.bitbucket_api_url,
        budget=Budget(settings.budget_per_hour),
        concurrency=settings.concurrency,
    )


async def cmd_reconcile(settings: Settings, workspace: str | None, out: TextIO = sys.stdout) -> int:
    async with aiohttp.ClientSession() as session, open_store(settings) as store:
        client = token_client(settings, session)
        targets = list(settings.workspaces)
        try:
            if not targets:
                targets = [w.slug for w in await client.workspaces()]
            if workspace is not None:
                if settings.workspaces and workspace not in settings.workspaces:
                    raise errors.ConfigError(f"--workspace: {workspace!r} is not in LP_WORKSPACES")
                targets = [workspace]
            for ws in targets:
                report = await reconcile_workspace(client, store, settings, ws)
                d = report.delta
                print(
                    f"{ws}: {report.api_calls} API calls, {report.rows_written} result rows written "
                    f"({len(d.opened)} opened, {len(d.resolved)} resolved, {len(d.changed)} changed, "
                    f"{len(d.retired)} retired, {len(d.stale)} marked stale), "
                    f"{report.fetch_failures} failed fetches, {report.seconds:.1f} s",
                    file=out,
                )
        except errors.BitbucketError as exc:
            print(f"error: reconcile could not finish: {exc}", file=sys.stderr)
            return 1
    return 0


async def cmd_findings(
    settings: Settings,
    workspace: str | None,
    check: str | None,
    status: str | None,
    fmt: str,
    out: TextIO = sys.stdout,
) -> int:
    async with open_store(settings) as store:
        rows = await store.results.query(workspace=workspace, check=check, status=status)
    items = [to_json(r) for r in rows]
    items.sort(key=lambda i: (SEVERITY_ORDER.get(str(i["severity"]), 9), str(i["check"]), str(i["subject"])))
    if fmt == "json":
        json.dump(items, out, indent=2)
        out.write("\n")
    elif fmt == "csv":
        writer = csv.writer(out)
        cols = [
            "workspace",
            "check",
            "severity",
            "subject_type",
            "subject",
            "subject_uuid",
            "subject_name",
            "status",
            "message",
            "details",
            "first_seen",
            "last_changed",
        ]
        writer.writerow(cols)
        for i in items:
            writer.writerow([json.dumps(i[c]) if c == "details" else i[c] for c in cols])
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


async def _reevaluate(store: Store, settings: Settings, workspaces: list[str], cause: str) -> list[str]:
    lines = []
    for ws in workspaces:
        delta, _ = await record(store, settings, ws, utcnow(), cause)
        for c in delta.writes:
            old = c.previous.result.status if c.previous else "new"
            if c.status_changed:
                lines.append(f"{c.result.check} {c.result.subject}: {old} → {c.result.status}")
    return lines


async def _known_workspaces(store: Store) -> list[str]:
    rows = await store.db.fetchall("SELECT DISTINCT workspace FROM snapshots WHERE kind = 'repos' ORDER BY 1")
    return [r[0] for r in rows]


async def cmd_classify(settings: Settings, target: str, cls: str, out: TextIO = sys.stdout) -> int:
    ws, _, slug = target.partition("/")
    if not ws or not slug:
        raise errors.ConfigError(f"expected WORKSPACE/REPO, not {target!r}")
    async with open_store(settings) as store:
        snaps = await store.snapshots.load(ws)
        repos = snaps.get(k_repos(ws))
        match = None
        for uuid in repos.content if repos and repos.content else []:
            snap = snaps.get(k_repo(uuid))
            if snap and snap.content and (snap.content["slug"] == slug or snap.content["full_name"] == target):
                match = snap.content
        if match is None:
            raise errors.ConfigError(f"unknown repository {target!r} (run `reconcile` first so the product knows it)")
        await store.records.set_class(match["uuid"], ws, match["full_name"], cls, "cli", iso(utcnow()))
        for line in await _reevaluate(store, settings, [ws], "classify"):
            print(line, file=out)
    print(f"{match['full_name']} classified {cls}", file=out)
    return 0


async def cmd_rule_add(
    settings: Settings, cls: str, project: str | None, name: str | None, workspace: str | None, out: TextIO = sys.stdout
) -> int:
    if (project is None) == (name is None):
        raise errors.ConfigError("give exactly one of --project KEY or --name GLOB")
    async with open_store(settings) as store:
        rid = await store.records.add_rule(cls, iso(utcnow()), project_key=project, name_glob=name, workspace=workspace)
        for line in await _reevaluate(store, settings, await _known_workspaces(store), "classify"):
            print(line, file=out)
    print(f"rule {rid}: {'project ' + project if project else 'name ' + str(name)} → {cls}", file=out)
    return 0


async def cmd_rule_list(settings: Settings, out: TextIO = sys.stdout) -> int:
    async with open_store(settings) as store:
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
        people = records.parse_personnel(data, path.name)
    except records.RecordError as exc:
        raise errors.ConfigError(str(exc)) from None
    async with open_store(settings) as store:
        n = await store.records.import_people(people, "cli", iso(utcnow()))
        lines = await _reevaluate(store, settings, await _known_workspaces(store), "personnel")
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
    if check not in ("member-mfa-enabled", "workspace-mfa-enforced"):
        raise errors.ConfigError("--check: evidence is for member-mfa-enabled or workspace-mfa-enforced")
    if check == "workspace-mfa-enforced" and member:
        raise errors.ConfigError("--member: workspace-mfa-enforced evidence is for the whole workspace")
    try:
        data = path.read_bytes()
        kind = records.check_evidence(data)
        now = utcnow()
        expires_at = records.evidence_expiry(now, expires, settings.evidence_max_age_days)
    except OSError as exc:
        raise errors.ConfigError(f"{path}: {exc.strerror}") from None
    except records.RecordError as exc:
        raise errors.ConfigError(str(exc)) from None
    async with open_store(settings) as store:
        known = await _known_workspaces(store)
        ws = workspace or (known[0] if len(known) == 1 else None)
        if ws is None:
            raise errors.ConfigError("--workspace: required (the product knows several or none yet)")
        covered: list[str] | None = None
        members = await store.snapshots.get(k_members(ws))
        if check == "member-mfa-enabled" and member is None:
            if members is None or members.content is None:
                raise errors.ConfigError(f"no member list for {ws} yet: run `reconcile` before uploading a 2SV report")
            covered = sorted({(m["user"].get("account_id") or m["user"].get("uuid")) for m in members.content})
        eid = await store.records.add_evidence(
            data,
            media_type=kind,
            check=check,
            workspace=ws,
            member=member,
            filename=path.name,
            uploaded_by="cli",
            uploaded_at=now,
            expires_at=expires_at,
            covered_members=covered,
        )
        lines = await _reevaluate(store, settings, [ws], "evidence")
    scope = f"member {member}" if member else (f"{len(covered)} members" if covered is not None else f"workspace {ws}")
    print(f"evidence {eid} ({kind}) for {check}, {scope}, valid until {expires_at.date().isoformat()}", file=out)
    for line in lines:
        print(line, file=out)
    return 0


async def cmd_exception_add(
    settings: Settings, check: str, subject: str, owner: str, reason: str, expires: str, out: TextIO = sys.stdout
) -> int:
    now = utcnow()
    try:
        req = records.check_exception(check, subject, owner, reason, expires, now, CHECK_IDS)
    except records.RecordError as exc:
        raise errors.ConfigError(str(exc)) from None
    async with open_store(settings) as store:
        xid = await store.records.add_exception(
            req.check, req.subject, req.owner, req.reason, req.expires_at, "cli", iso(now)
        )
        lines = await _reevaluate(store, settings, await _known_workspaces(store), "exception")
    print(f"exception {xid}: {check} for {subject} until {req.expires_at.date().isoformat()} (owner {owner})", file=out)
    for line in lines:
        print(line, file=out)
    return 0

"""Command line (``lowerplane-bitbucket`` / ``python -m app``): the commands of interface.md.

Exit status: 0 success, 2 bad usage or configuration (one-line reason on stderr), 1 a run that
could not finish (for example Bitbucket unreachable).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from app import errors
from app.logs import configure, get_logger, register_secret
from app.models import STATUSES
from app.settings import CHECK_IDS, Settings

CLASSES = ("production", "non-production")

log = get_logger("cli")


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one line and exit status 2."""

    def error(self, message: str) -> NoReturn:
        raise errors.ConfigError(f"{self.prog}: {message}")


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range: {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lowerplane-bitbucket", description="Bitbucket Cloud compliance monitoring")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("sandbox", help="run the Bitbucket Cloud sandbox alone")
    p.add_argument("--scenario", type=Path, help="scenario JSON file (default: the shipped sample)")
    p.add_argument("--port", type=_port, default=8100)
    p.add_argument("--host", default="127.0.0.1")

    p = sub.add_parser("demo", help="sandbox + the product, end to end")
    p.add_argument("--once", action="store_true", help="exit 0 after the scripted demo")
    p.add_argument("--port", type=_port, default=8000)

    p = sub.add_parser("serve", help="webhook receiver, worker, scheduler, API, dashboard, OAuth connect")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_port, default=8000)

    p = sub.add_parser("webhooks", help="register the workspace webhook, or show its health")
    p.add_argument("action", choices=("register", "status"))

    p = sub.add_parser("events", help="the event log (live with --follow)")
    p.add_argument("--follow", action="store_true")
    p.add_argument("--limit", type=int, default=20)

    p = sub.add_parser("backup", help="an online, consistent copy of the database (safe while serve runs)")
    p.add_argument("target", type=Path)

    p = sub.add_parser("reconcile", help="one full pass over every connected workspace (for cron)")
    p.add_argument("--workspace")

    p = sub.add_parser("findings", help="current results")
    p.add_argument("--workspace")
    p.add_argument("--check", choices=CHECK_IDS)
    p.add_argument("--status", choices=STATUSES)
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")

    p = sub.add_parser("classify", help="set a repository's class")
    p.add_argument("repository", metavar="WORKSPACE/REPO")
    p.add_argument("cls", metavar="CLASS", choices=CLASSES)

    p = sub.add_parser("classify-rules", help="ordered classification rules (an explicit class always wins)")
    rules = p.add_subparsers(dest="action", required=True, parser_class=_Parser)
    r = rules.add_parser("add", help="add a rule at the end of the list")
    r.add_argument("cls", metavar="CLASS", choices=CLASSES)
    r.add_argument("--project", metavar="KEY", help="repositories of this project key")
    r.add_argument("--name", metavar="GLOB", help="repositories whose slug or name matches (* spans anything)")
    r.add_argument("--workspace", help="only in this workspace")
    rules.add_parser("list", help="the rules in order")

    p = sub.add_parser("personnel", help="the personnel directory")
    people = p.add_subparsers(dest="action", required=True, parser_class=_Parser)
    r = people.add_parser("import", help="load people from CSV or JSON (all or nothing)")
    r.add_argument("file", type=Path)

    p = sub.add_parser(
        "evidence",
        help="manual evidence for the MFA tests",
        description="Get it from admin.atlassian.com: the organization's two-step verification report of the "
        "workspace's members (member-mfa-enabled) or the authentication policy that requires 2SV "
        "(workspace-mfa-enforced). A screenshot or PDF export is enough.",
    )
    ev = p.add_subparsers(dest="action", required=True, parser_class=_Parser)
    r = ev.add_parser("add", help="record a PNG, JPEG or PDF file as evidence")
    r.add_argument("--check", required=True, choices=("member-mfa-enabled", "workspace-mfa-enforced"))
    r.add_argument("--workspace")
    r.add_argument("--member", metavar="ACCOUNT_ID")
    r.add_argument(
        "--expires",
        metavar="DATE",
        help="YYYY-MM-DD: valid through that day; at most LP_EVIDENCE_MAX_AGE_DAYS from now (the default)",
    )
    r.add_argument("file", type=Path)

    p = sub.add_parser("exceptions", help="accepted risks")
    ex = p.add_subparsers(dest="action", required=True, parser_class=_Parser)
    r = ex.add_parser("add", help="accept a failing result through a date (at most 365 days ahead)")
    r.add_argument("--check", required=True, choices=CHECK_IDS)
    r.add_argument("--subject", required=True, help="workspace/repo, member account id, or workspace slug")
    r.add_argument("--owner", required=True)
    r.add_argument("--reason", required=True)
    r.add_argument("--expires", required=True, metavar="DATE", help="YYYY-MM-DD: valid through that day")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        settings = Settings.from_env()
        configure(settings.log_level)
        for secret in settings.secret_values():
            register_secret(secret)
        return _run(args, settings)
    except errors.ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except errors.LowerplaneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "sandbox":
        from app.sandbox.serve import serve_sandbox

        if args.scenario is not None and not args.scenario.is_file():
            raise errors.ConfigError(f"--scenario: no such file: {args.scenario}")
        asyncio.run(serve_sandbox(args.host, args.port, args.scenario))
        return 0
    if args.command == "demo":
        from app.demo import run_demo

        return asyncio.run(run_demo(settings, port=args.port, once=args.once))
    from app import commands as c

    command: Any
    if args.command == "serve":
        return _serve(settings, args.host, args.port)
    if args.command == "webhooks":
        command = c.cmd_webhooks(settings, args.action)
    elif args.command == "backup":
        command = c.cmd_backup(settings, args.target)
    elif args.command == "events":
        command = c.cmd_events(settings, args.follow, args.limit)
    elif args.command == "reconcile":
        command = c.cmd_reconcile(settings, args.workspace)
    elif args.command == "findings":
        command = c.cmd_findings(settings, args.workspace, args.check, args.status, args.format)
    elif args.command == "classify":
        command = c.cmd_classify(settings, args.repository, args.cls)
    elif args.command == "classify-rules" and args.action == "add":
        command = c.cmd_rule_add(settings, args.cls, args.project, args.name, args.workspace)
    elif args.command == "classify-rules":
        command = c.cmd_rule_list(settings)
    elif args.command == "personnel":
        command = c.cmd_personnel_import(settings, args.file)
    elif args.command == "evidence":
        command = c.cmd_evidence_add(settings, args.check, args.workspace, args.member, args.expires, args.file)
    elif args.command == "exceptions":
        command = c.cmd_exception_add(settings, args.check, args.subject, args.owner, args.reason, args.expires)
    else:  # pragma: no cover - argparse refuses unknown commands
        raise errors.ConfigError(f"unknown command {args.command!r}")
    return int(asyncio.run(command))


def _serve(settings: Settings, host: str, port: int) -> int:
    import uvicorn

    from app.main import create_app

    if settings.secret_key is None:
        raise errors.ConfigError("LP_SECRET_KEY: required by serve (it encrypts tokens and webhook secrets)")
    if settings.admin_token is None:
        raise errors.ConfigError("LP_ADMIN_TOKEN: required by serve (it protects /api and the dashboard)")
    from app.crypto import Crypto

    Crypto(settings.secret_key.get_secret_value())  # a bad key is a configuration error, before binding
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        loop="auto",
        http="auto",
        lifespan="on",
    )
    return 0

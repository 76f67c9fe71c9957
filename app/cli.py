"""Command line (``lowerplane-bitbucket`` / ``python -m app``): the commands of docs/interface.md.

Exit status: 0 success, 2 bad usage or configuration (one-line reason on stderr), 1 a run that
could not finish (for example Bitbucket unreachable).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn

from app import errors
from app.checks import EVIDENCE_CHECKS, REGISTRY
from app.logs import configure, get_logger, register_secret, scrub
from app.models import STATUSES
from app.settings import CHECK_IDS, Settings

CLASSES = ("production", "non-production")

log = get_logger("cli")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default (when it has one worth showing) after its help text."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            action.option_strings
            and action.default not in (None, False, argparse.SUPPRESS)
            and "%(default)" not in text
        ):
            text += " (default: %(default)s)"
        return text


class _Commands(argparse._SubParsersAction):  # type: ignore[type-arg]
    """Subcommands whose ``--help`` starts with their one-line help unless given a description."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        if kwargs.get("description") is None and kwargs.get("help"):
            kwargs["description"] = kwargs["help"][0].upper() + kwargs["help"][1:] + "."
        parser: argparse.ArgumentParser = super().add_parser(name, **kwargs)
        return parser


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one line and exit status 2."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)
        self.register("action", "parsers", _Commands)

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


def _version() -> str:
    try:
        return metadata.version("lowerplane-bitbucket")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value


DATE = "YYYY-MM-DD"
WORKSPACE = "workspace slug, e.g. acme (default: every connected workspace)"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lowerplane-bitbucket", description="Bitbucket Cloud compliance monitoring")
    parser.add_argument("--version", action="version", version=f"lowerplane-bitbucket {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")

    p = sub.add_parser("sandbox", help="run the Bitbucket Cloud sandbox alone")
    p.add_argument("--scenario", type=Path, metavar="FILE", help="scenario JSON file (default: the shipped sample)")
    p.add_argument("--port", type=_port, default=8100, help="TCP port to listen on (0: any free port)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")

    p = sub.add_parser(
        "demo",
        help="sandbox + the product, end to end",
        description="Start the built-in Bitbucket sandbox and the product pointed at it, connect through the "
        "real OAuth flow, reconcile, print the findings, then play scripted drift and show each alert. "
        "Uses data/demo.sqlite3 in the current folder (recreated each time).",
    )
    p.add_argument("--once", action="store_true", help="exit 0 after the scripted demo instead of keeping it up")
    p.add_argument("--port", type=_port, default=8000, help="port of the product's dashboard on 127.0.0.1")

    p = sub.add_parser(
        "serve",
        help="webhook receiver, worker, scheduler, API, dashboard, OAuth connect",
        description="Run the product: webhook receiver, worker, scheduler, API, dashboard and OAuth connect. "
        "Needs LP_SECRET_KEY and LP_ADMIN_TOKEN.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=_port, default=8000, help="TCP port to listen on")

    p = sub.add_parser(
        "webhooks",
        help="register the workspace webhook, or show its health",
        description="register: create or repair the webhook of every connection (needs LP_SECRET_KEY). "
        "status: whether each connection's hooks exist and deliver (exit 1 when one does not).",
    )
    p.add_argument("action", choices=("register", "status"), help="register or status")

    p = sub.add_parser("events", help="the event log (live with --follow)")
    p.add_argument("--follow", action="store_true", help="keep printing new and changed events until Ctrl-C")
    p.add_argument("--limit", type=_positive, default=20, metavar="N", help="how many of the latest events to show")

    p = sub.add_parser("backup", help="an online, consistent copy of the database (safe while serve runs)")
    p.add_argument("target", type=Path, metavar="FILE", help="new file to write (never overwritten)")

    p = sub.add_parser(
        "reconcile",
        help="one full pass over every connected workspace (for cron)",
        description="One full pass over every connected workspace, then exit (for cron). Uses LP_BITBUCKET_TOKEN "
        "and the OAuth connections stored in the database. Exit 1 when a workspace could not be read.",
    )
    p.add_argument("--workspace", metavar="SLUG", help=WORKSPACE)

    p = sub.add_parser("findings", help="current results")
    p.add_argument("--workspace", metavar="SLUG", help=WORKSPACE)
    p.add_argument("--check", choices=CHECK_IDS, metavar="CHECK", help="only this check: " + ", ".join(CHECK_IDS))
    p.add_argument("--status", choices=STATUSES, help="only results with this status")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table", help="output format")

    p = sub.add_parser("classify", help="set a repository's class")
    p.add_argument("repository", metavar="WORKSPACE/REPO", help="the repository, e.g. acme/api")
    p.add_argument("cls", metavar="CLASS", choices=CLASSES, help="production or non-production")

    p = sub.add_parser("classify-rules", help="ordered classification rules (an explicit class always wins)")
    rules = p.add_subparsers(dest="action", required=True, parser_class=_Parser, metavar="ACTION")
    r = rules.add_parser("add", help="add a rule at the end of the list (give --project or --name)")
    r.add_argument("cls", metavar="CLASS", choices=CLASSES, help="production or non-production")
    r.add_argument("--project", metavar="KEY", help="repositories of this project key")
    r.add_argument("--name", metavar="GLOB", help="repositories whose slug or name matches (* spans anything)")
    r.add_argument("--workspace", metavar="SLUG", help="only in this workspace (default: every workspace)")
    rules.add_parser("list", help="the rules in order")

    p = sub.add_parser("personnel", help="the personnel directory")
    people = p.add_subparsers(dest="action", required=True, parser_class=_Parser, metavar="ACTION")
    r = people.add_parser(
        "import",
        help="load people from CSV or JSON (all or nothing)",
        description="Load people from CSV or JSON (all or nothing). Columns: email, name, kind (employee, "
        f"contractor, service-account), status (active, offboarded), offboarded_on ({DATE}), "
        "bitbucket_account_id.",
    )
    r.add_argument("file", type=Path, metavar="FILE", help="a .csv or .json file")

    p = sub.add_parser(
        "evidence",
        help="manual evidence for the MFA tests",
        description=" ".join(f"{c}: {REGISTRY[c].fix_text('WORKSPACE', '')}" for c in EVIDENCE_CHECKS),
    )
    ev = p.add_subparsers(dest="action", required=True, parser_class=_Parser, metavar="ACTION")
    r = ev.add_parser("add", help="record a PNG, JPEG or PDF file as evidence")
    r.add_argument(
        "--check",
        required=True,
        choices=EVIDENCE_CHECKS,
        help="the check it supports",
    )
    r.add_argument("--workspace", metavar="SLUG", help="the workspace (default: the only one the product knows)")
    r.add_argument("--member", metavar="ACCOUNT_ID", help="one member's evidence (default: every member)")
    r.add_argument(
        "--expires",
        metavar=DATE,
        help="valid through that day; at most LP_EVIDENCE_MAX_AGE_DAYS from now (the default)",
    )
    r.add_argument("file", type=Path, metavar="FILE", help="PNG, JPEG or PDF file")

    p = sub.add_parser("exceptions", help="accepted risks")
    ex = p.add_subparsers(dest="action", required=True, parser_class=_Parser, metavar="ACTION")
    r = ex.add_parser("add", help="accept a failing result through a date (at most 365 days ahead)")
    r.add_argument("--check", required=True, choices=CHECK_IDS, metavar="CHECK", help=", ".join(CHECK_IDS))
    r.add_argument("--subject", required=True, help="workspace/repo, member account id, or workspace slug")
    r.add_argument("--owner", required=True, help="who accepted the risk (name or e-mail)")
    r.add_argument("--reason", required=True, help="why the risk is accepted")
    r.add_argument("--expires", required=True, metavar=DATE, help="valid through that day, at most 365 days ahead")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        settings = Settings.from_env()
        configure(settings.log_level)
        for secret in settings.secret_values():
            register_secret(secret)
        status = _run(args, settings)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return status
    except BrokenPipeError:
        return _reader_left()
    except KeyboardInterrupt:
        return 130
    except errors.LowerplaneError as exc:  # each class says its exit status (app/errors.py)
        return _fail(exc.exit_code, str(exc))
    except Exception as exc:  # any other failure: one line and exit 1, never a traceback
        log.debug("cli.failed", exc_info=True)
        return _fail(1, f"{type(exc).__name__}: {exc}")


def _reader_left() -> int:
    """``findings | head``: the reader has what it wanted; stop quietly with status 0.

    stdout is pointed at /dev/null so the interpreter's final flush does not fail again.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)
    return 0


def _fail(status: int, message: str) -> int:
    """One line on stderr (secrets scrubbed), the documented exit status."""
    first = scrub(message).strip().splitlines()
    print(f"error: {first[0] if first else 'failed'}", file=sys.stderr)
    return status


def _run(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "sandbox":
        from app.sandbox.serve import serve_sandbox

        if args.scenario is not None and not args.scenario.is_file():
            raise errors.ConfigError(f"--scenario: no such file: {args.scenario}")
        from app.ports import listen

        with listen(args.host, args.port) as sock:
            asyncio.run(serve_sandbox(args.host, args.port, args.scenario, sock))
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
    from app.main import create_app, make_server
    from app.ports import listen

    if settings.secret_key is None:
        raise errors.ConfigError("LP_SECRET_KEY: required by serve (it encrypts tokens and webhook secrets)")
    if settings.admin_token is None:
        raise errors.ConfigError("LP_ADMIN_TOKEN: required by serve (it protects /api and the dashboard)")
    from app.crypto import Crypto

    Crypto(settings.secret_key.get_secret_value())  # a bad key is a configuration error, before binding
    sock = listen(host, port)  # a busy port is one line and exit 2, before anything is opened
    with sock:
        from app.commands import check_key

        asyncio.run(check_key(settings))  # a key changed without rotation: one line and exit 2
        app = create_app(settings)
        server = make_server(app, host, port)  # httptools with the request head bounded while it arrives
        # A background task that cannot be kept alive stops the server; the exit status says so.
        app.state.stop = lambda: setattr(server, "should_exit", True)
        # uvicorn drains on SIGTERM, then re-raises the signal under the handler that was there before
        # it: make that handler a no-op, so a drained SIGTERM is a clean stop with exit status 0.
        signal.signal(signal.SIGTERM, lambda signum, frame: None)
        try:
            server.run(sockets=[sock])
        except SystemExit as exc:  # uvicorn's "startup failed" (already logged)
            raise errors.LowerplaneError("serve could not start (see the log above)") from exc
    if app.state.fatal is not None:
        print(f"lowerplane-bitbucket: {app.state.fatal}", file=sys.stderr)
        return 1
    return 0 if server.started else 1

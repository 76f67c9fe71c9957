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
from typing import NoReturn

from app import errors
from app.logs import configure, get_logger
from app.settings import Settings

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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        settings = Settings.from_env()
        configure(settings.log_level)
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
    raise errors.ConfigError(f"unknown command {args.command!r}")  # pragma: no cover

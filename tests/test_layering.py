"""The front ends (app/web/, app/commands.py, app/cli.py) only parse and render: no SQL, no database
module, no use case and no service internals; every change a person makes is an app/actions.py
function. ruff's banned-api rules (pyproject.toml, app/web/ruff.toml) refuse the imports; this module
proves they bite (ruff run on a probe, as if it were a file of that folder) and scans the front ends'
code for what an import ban cannot see: SQL text and database calls."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUFF = Path(sys.executable).with_name("ruff")
FRONT_ENDS = [*sorted((ROOT / "app" / "web").glob("*.py")), ROOT / "app" / "commands.py", ROOT / "app" / "cli.py"]

SQL = re.compile(
    r"\b(SELECT\b.+\bFROM|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|CREATE\s+(TABLE|INDEX)|PRAGMA)\b",
    re.IGNORECASE | re.DOTALL,
)
DB_CALLS = {"execute", "executemany", "executescript", "fetchall", "fetchone", "write_returning", "transaction"}
# Modules holding use cases or service internals: the CLI reaches them only through app.actions.
CLI_BANNED = (
    "app.record_input",
    "app.evidence",
    "app.exceptions",
    "app.service",
    "app.webhook_registration",
    "app.bitbucket",
    "app.store",
    "sqlite3",
    "aiosqlite",
    "aiohttp",
)


def _ruff(source: str, as_path: str) -> subprocess.CompletedProcess[str]:
    """ruff on ``source`` with the configuration a file at ``as_path`` gets (nothing is written)."""
    return subprocess.run(  # noqa: S603 - our own ruff, fixed arguments
        [str(RUFF), "check", "--no-cache", "--select", "TID251", "--stdin-filename", as_path, "-"],
        input=source,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    "line",
    [
        "import sqlite3",
        "import aiosqlite",
        "from app.store.db import Database",
        "from app.store import schema",
        "from app.service import Service",
        "from app.record_input import parse_personnel",
        "from app.evidence import record_evidence",
        "from app.exceptions import record_exception",
        "from app.bitbucket import oauth",
        "from app.webhook_registration import remove_hooks",
        "from app.store.facts import classify",
    ],
)
def test_ruff_refuses_sql_and_use_cases_in_web(line: str) -> None:
    done = _ruff(f"{line}\n", "app/web/probe.py")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "TID251" in done.stdout


@pytest.mark.parametrize(
    "line", ["import sqlite3", "import aiosqlite", "import aiohttp", "from app.store.db import Database"]
)
def test_ruff_refuses_the_database_in_commands(line: str) -> None:
    done = _ruff(f"{line}\n", "app/commands.py")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "TID251" in done.stdout


def test_ruff_lets_web_use_the_actions_and_the_store_reads() -> None:
    allowed = "from app import actions, queries\nfrom app.store import Store\nfrom app.store.views import Views\n"
    done = _ruff(allowed, "app/web/probe.py")
    assert done.returncode == 0, done.stdout + done.stderr


def offences(source: str, *, cli: bool = False) -> list[str]:
    """SQL text, database calls and (for the CLI) imports of use-case modules in ``source``."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL.search(node.value):
            found.append(f"line {node.lineno}: SQL {node.value[:40]!r}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in DB_CALLS:
            found.append(f"line {node.lineno}: database call .{node.func.attr}()")
        elif cli and isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if isinstance(node, ast.ImportFrom) and node.module == "app":
                names = [f"app.{a.name}" for a in node.names]
            for name in names:
                if any(name == b or name.startswith(b + ".") for b in CLI_BANNED):
                    found.append(f"line {node.lineno}: imports {name}")
    return found


def test_the_scan_finds_what_it_looks_for() -> None:
    bad = (
        "from app import evidence\n"
        "import app.store.records\n"
        "async def f(db):\n"
        "    await db.execute('UPDATE personnel SET status = ? WHERE email = ?', ('x', 'y'))\n"
        "    return await db.fetchall('select id from events')\n"
    )
    assert len(offences(bad, cli=True)) == 6
    assert offences("x = 'Select repositories and a class.'\nprint('updated the set')\n") == []


@pytest.mark.parametrize("path", FRONT_ENDS, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_front_ends_hold_no_sql_and_the_cli_no_use_case(path: Path) -> None:
    assert offences(path.read_text(), cli=path.parent.name == "app") == []

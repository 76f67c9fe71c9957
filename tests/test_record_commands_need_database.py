"""`evidence add` and `exceptions add` need what a reconcile stored (a member list, a subject seen),
so run from the wrong folder they can never succeed. They used to create an empty database there
anyway (and then refuse with "run a reconcile first"), leaving a stray data/lowerplane.sqlite3
beside the operator; now they refuse a missing database as the read-only commands do.

SQLite's by nature (the default database is a file); a PostgreSQL URL naming a database that does
not exist is refused by tests/test_cli_exits.py.
"""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import pytest

from tests.test_cli_exits import GOOD_KEY, assert_one_line, run_cli


@pytest.mark.parametrize(
    "argv",
    [
        ["evidence", "add", "--check", "workspace-mfa-enforced", "--workspace", "acme", "POLICY"],
        [
            *("exceptions", "add", "--check", "repo-classified", "--subject", "acme/api"),
            *("--owner", "cto@acme.example", "--reason", "legacy", "--expires", "SOON"),
        ],
    ],
    ids=["evidence-add", "exceptions-add"],
)
def test_record_commands_refuse_a_missing_database(argv: list[str], tmp_path: Path) -> None:
    policy = tmp_path / "policy.pdf"
    policy.write_bytes(b"%PDF-1.4 2SV policy\n")
    soon = (date.today() + timedelta(days=30)).isoformat()
    argv = [str(policy) if a == "POLICY" else soon if a == "SOON" else a for a in argv]
    status, err = run_cli(argv, tmp_path, {"LP_SECRET_KEY": GOOD_KEY})
    assert status == 2
    assert_one_line(err, "no database at data/lowerplane.sqlite3 (set LP_DATABASE")
    assert not (tmp_path / "data").exists()  # nothing created

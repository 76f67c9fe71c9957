"""Settings, the command line's exit statuses, and secret redaction in logs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import structlog

from app import errors, logs
from app.cli import main
from app.settings import Settings, parse_duration


def test_defaults_match_interface_md() -> None:
    s = Settings.from_env({}, env_file=None)
    assert s.database == Path("data/lowerplane.sqlite3")
    assert s.bitbucket_api_url == "https://api.bitbucket.org/2.0"
    assert s.bitbucket_url == "https://bitbucket.org"
    assert s.public_url == "http://127.0.0.1:8000"
    assert s.reconcile_interval == 6 * 3600
    assert s.min_approvals == 1 and s.strict_merge_checks is False and s.evidence_max_age_days == 90
    assert "pipelines-enabled" not in s.enabled_checks and len(s.enabled_checks) == 7


def test_values_are_read_and_typed(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("# comment\nLP_MIN_APPROVALS=3\nexport LP_WORKSPACES='a, b'\n")
    s = Settings.from_env(
        {
            "LP_MIN_APPROVALS": "2",
            "LP_CHECKS_ENABLED": "pipelines-enabled",
            "LP_CHECKS_DISABLED": "repo-classified",
            "LP_STRICT_MERGE_CHECKS": "true",
            "LP_RECONCILE_INTERVAL": "15m",
            "LP_BITBUCKET_TOKEN": "tok-123456",
        },
        env_file=env_file,
    )
    assert s.min_approvals == 2 and s.workspaces == ("a", "b") and s.strict_merge_checks
    assert s.reconcile_interval == 900 and "pipelines-enabled" in s.enabled_checks
    assert "repo-classified" not in s.enabled_checks
    assert "tok-123456" not in repr(s)


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"LP_MIN_APPROVALS": "zero"}, "LP_MIN_APPROVALS"),
        ({"LP_MIN_APPROVALS": "0"}, "LP_MIN_APPROVALS"),
        ({"LP_RECONCILE_INTERVAL": "soon"}, "LP_RECONCILE_INTERVAL"),
        ({"LP_RECONCILE_INTERVAL": "10s"}, "at least 1m"),
        ({"LP_CHECKS_ENABLED": "no-such-test"}, "unknown test id"),
        ({"LP_BITBUCKET_API_URL": "ftp://x"}, "LP_BITBUCKET_API_URL"),
        ({"LP_PUBLIC_URL": "https://user:pass@host"}, "LP_PUBLIC_URL"),
        ({"LP_STRICT_MERGE_CHECKS": "maybe"}, "LP_STRICT_MERGE_CHECKS"),
    ],
)
def test_bad_values_are_one_line_errors(env: dict[str, str], needle: str) -> None:
    with pytest.raises(errors.ConfigError) as info:
        Settings.from_env(env, env_file=None)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_parse_duration() -> None:
    assert parse_duration("6h") == 21600 and parse_duration("90") == 90 and parse_duration("1d") == 86400


@pytest.mark.parametrize(
    "argv",
    [["nonsense"], ["sandbox", "--port", "99999"], ["sandbox", "--scenario", "/no/such/file.json"], []],
)
def test_bad_command_lines_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err


def test_bad_setting_exits_2_from_a_real_process(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "app", "demo", "--once"],
        env={"LP_MIN_APPROVALS": "-1", "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "LP_MIN_APPROVALS" in proc.stderr


def test_logs_redact_secret_keys_and_values(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("info", json=True)
    logs.register_secret("planted-secret-value-42")
    log = logs.get_logger("t")
    log.info(
        "evt",
        token="abc123xyz",
        url="https://user:pw@host/x?code=topsecretcode&x=1",
        header="Bearer eyJhbGciOi.secret",
        note="contains planted-secret-value-42 inside",
        nested={"client_secret": "zzz", "ok": "fine"},
    )
    line = capsys.readouterr().err.strip().splitlines()[-1]
    record = json.loads(line)
    for secret in ("abc123xyz", "pw@", "topsecretcode", "eyJhbGciOi", "planted-secret-value-42", "zzz"):
        assert secret not in line
    assert record["nested"]["ok"] == "fine" and record["event"] == "evt"


def test_capture_logs_sees_events() -> None:
    with structlog.testing.capture_logs() as captured:
        logs.get_logger("t").info("hello", n=1)
    assert captured[0]["event"] == "hello" and captured[0]["n"] == 1


def test_backup_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """SQLite's command (PostgreSQL is backed up with pg_dump: tests/test_cli_exits.py checks the
    command says so)."""
    import asyncio

    from app.store import Store

    async def seed() -> None:
        store = await Store.open(tmp_path / "lp.sqlite3")
        await store.records.add_rule("non-production", "t", project_key="SAND")
        await store.close()

    asyncio.run(seed())
    monkeypatch.setenv("LP_DATABASE", str(tmp_path / "lp.sqlite3"))
    assert main(["backup", str(tmp_path / "copy.sqlite3")]) == 0
    assert main(["backup", str(tmp_path / "copy.sqlite3")]) == 2  # never overwrites
    import sqlite3

    rows = sqlite3.connect(tmp_path / "copy.sqlite3").execute("SELECT project_key FROM class_rules").fetchall()
    assert rows == [("SAND",)]

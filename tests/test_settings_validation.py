"""Settings validated at start: unknown ``LP_`` names, URLs, e-mail addresses, token lengths, wave-2 names.

Each bad setting is tried twice: through the settings loader, and through the installed console
script as a real process (exit status 2, one line on stderr naming the variable, no traceback, and
never the secret value).
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

import pytest

from app import errors
from app.settings import Settings
from app.store import Store
from tests.conftest import SHARED

SCRIPT = Path(sys.executable).with_name("lowerplane-bitbucket")

# (environment, text the one-line reason must contain, a value that must never be printed or None)
BAD: list[tuple[dict[str, str], str, str | None]] = [
    ({"LP_WORKSPACE": "acme"}, "LP_WORKSPACE: unknown setting; did you mean LP_WORKSPACES?", None),
    ({"LP_ADMIN_TOKN": "admin-token-0123456789"}, "did you mean LP_ADMIN_TOKEN?", "admin-token-0123456789"),
    ({"LP_NOTHING_LIKE_IT": "1"}, "LP_NOTHING_LIKE_IT: unknown setting", None),
    ({"LP_SMTP_URL": "notaurl"}, "LP_SMTP_URL: must be a URL starting with smtp:// or smtps://", "notaurl"),
    ({"LP_SMTP_URL": "smtp://mailer:hunter2-pw@:25"}, "LP_SMTP_URL", "hunter2-pw"),
    ({"LP_SMTP_URL": "https://mailer:hunter2-pw@mail.example"}, "LP_SMTP_URL", "hunter2-pw"),
    ({"LP_SMTP_URL": "smtp://mailer:hunter2-pw@mail.example:notaport"}, "LP_SMTP_URL", "hunter2-pw"),
    ({"LP_BITBUCKET_API_URL": "notaurl"}, "LP_BITBUCKET_API_URL", None),
    ({"LP_BITBUCKET_URL": "ftp://bitbucket.org"}, "LP_BITBUCKET_URL", None),
    ({"LP_PUBLIC_URL": "http:///callback"}, "LP_PUBLIC_URL", None),
    ({"LP_PUBLIC_URL": "https://ops:pub-s3cret@lp.example"}, "LP_PUBLIC_URL", "pub-s3cret"),
    (
        {"LP_SLACK_WEBHOOK_URL": "notaurl-slack-secret", "LP_SLACK_ALLOW_INSECURE_URL": "true"},
        "LP_SLACK_WEBHOOK_URL: must be a URL starting with http:// or https://",
        "notaurl-slack-secret",
    ),
    (
        {"LP_SLACK_WEBHOOK_URL": "https://evil.example/services/T0/B0/slack-path-secret"},
        "LP_SLACK_WEBHOOK_URL",
        "slack-path-secret",
    ),
    ({"LP_ALERT_EMAIL_FROM": "not-an-address"}, "LP_ALERT_EMAIL_FROM: not an email address", None),
    ({"LP_ALERT_EMAIL_FROM": "ops@example.com\r\nBcc: x@example.com"}, "LP_ALERT_EMAIL_FROM: contains a control", None),
    (
        {"LP_ALERT_EMAIL_TO": "ops@example.com\r\nBcc: spy@evil.example"},
        "LP_ALERT_EMAIL_TO: contains a control character",
        None,
    ),
    ({"LP_ALERT_EMAIL_TO": "ops@example.com\nspy@evil.example"}, "LP_ALERT_EMAIL_TO: contains a control", None),
    ({"LP_ALERT_EMAIL_TO": "ops@example.com, nobody"}, "LP_ALERT_EMAIL_TO: not an email address: 'nobody'", None),
    ({"LP_ADMIN_TOKEN": "short-tok"}, "LP_ADMIN_TOKEN: must be at least 16 characters", "short-tok"),
    ({"LP_SECRET_KEY": "tiny-key"}, "LP_SECRET_KEY: each key must be a Fernet key or at least", "tiny-key"),
    ({"LP_SECRET_KEY": "a-long-enough-passphrase,tiny-key"}, "LP_SECRET_KEY", "tiny-key"),
    ({"LP_BUDGET_HEADROOM": "95%"}, "LP_BUDGET_HEADROOM: must be from 0% to 90%", None),
    ({"LP_WEBHOOK_BUDGET_SHARE": "lots"}, "LP_WEBHOOK_BUDGET_SHARE: not a percentage", None),
    ({"LP_REPOS_TIER_INTERVAL": "10s"}, "LP_REPOS_TIER_INTERVAL: must be at least 1m", None),
    ({"LP_SMTP_ALLOW_PLAINTEXT": "maybe"}, "LP_SMTP_ALLOW_PLAINTEXT", None),
]
IDS = [next(iter(env)) + ":" + next(iter(env.values()))[:24] for env, _, _ in BAD]


def run_cli(env: dict[str, str], cwd: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own console script, arguments from the test
        [str(SCRIPT), *(argv or ("findings",))],
        env={"PATH": "/usr/bin:/bin", **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def assert_one_line_exit_2(proc: subprocess.CompletedProcess[str], needle: str, secret: str | None) -> None:
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.endswith("\n") and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("error: ") and needle in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    if secret is not None:
        assert secret not in proc.stderr


@pytest.mark.parametrize(("env", "needle", "secret"), BAD, ids=IDS)
def test_loader_refuses_bad_setting(env: dict[str, str], needle: str, secret: str | None) -> None:
    with pytest.raises(errors.ConfigError) as info:
        Settings.from_env(env, env_file=None)
    message = str(info.value)
    assert needle in message and "\n" not in message and "\r" not in message
    if secret is not None:
        assert secret not in message


@pytest.mark.parametrize(("env", "needle", "secret"), BAD, ids=IDS)
def test_console_script_refuses_bad_setting(
    env: dict[str, str], needle: str, secret: str | None, tmp_path: Path
) -> None:
    proc = run_cli(env, tmp_path)
    assert_one_line_exit_2(proc, needle, secret)
    assert not (tmp_path / "data").exists()  # refused before anything was opened


def test_unknown_name_in_env_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("# settings\nLP_DATABASE=lp.sqlite3\nLP_SMTP_URLL=smtp://u:dotenv-pw@mail.example\n")
    with pytest.raises(errors.ConfigError, match=r"LP_SMTP_URLL: unknown setting; did you mean LP_SMTP_URL\?"):
        Settings.from_env({}, env_file=tmp_path / ".env")
    proc = run_cli({}, tmp_path)
    assert_one_line_exit_2(proc, ".env: LP_SMTP_URLL: unknown setting; did you mean LP_SMTP_URL?", "dotenv-pw")


def test_bad_value_in_env_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("LP_ADMIN_TOKEN=dotenv-tok\n")
    assert_one_line_exit_2(run_cli({}, tmp_path), "LP_ADMIN_TOKEN: must be at least 16", "dotenv-tok")
    (tmp_path / ".env").write_text("LP_DATABASE=lp.sqlite3\nthis line has no equals sign\n")
    assert_one_line_exit_2(run_cli({}, tmp_path), ".env:2: expected NAME=value", None)


def test_other_programs_variables_are_left_alone(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("OTHER_TOOL_SETTING=1\nLP_DATABASE=lp.sqlite3\n")
    s = Settings.from_env({"HOME": "/root", "LPX": "1", "XLP_WORKSPACE": "y"}, env_file=tmp_path / ".env")
    assert s.database == Path("lp.sqlite3")


async def _create_database(database: Path | str) -> None:
    store = await Store.open(database)
    await store.close()


def test_good_settings_start_the_console_script(tmp_path: Path, database: Path | str) -> None:
    env = {
        "LP_DATABASE": str(database),
        "LP_PUBLIC_URL": "https://lp.example.com/",
        "LP_SMTP_URL": "smtps://mailer:pw@mail.example.com:465",
        "LP_ALERT_EMAIL_FROM": "Lowerplane <lowerplane@example.com>",
        "LP_ALERT_EMAIL_TO": "security@example.com, ops+alerts@example.co.uk",
        "LP_ADMIN_TOKEN": "0123456789abcdef",
        "LP_SECRET_KEY": "a-passphrase-of-16+",
        "LP_SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T0/B0/xyz",
        "LP_WORKSPACES": "",  # empty means not set
    }
    asyncio.run(_create_database(database))  # read-only commands refuse a missing database
    proc = run_cli(env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    s = Settings.from_env(env, env_file=None)
    assert s.public_url == "https://lp.example.com" and s.workspaces == ()
    assert s.alert_email_to == ("security@example.com", "ops+alerts@example.co.uk")
    assert s.alert_email_from == "Lowerplane <lowerplane@example.com>"


def test_wave_2_names_have_interface_md_defaults() -> None:
    s = Settings.from_env({}, env_file=None)
    assert s.budget_headroom == pytest.approx(0.10) and s.webhook_budget_share == pytest.approx(0.30)
    assert s.repos_tier_interval == 300 and s.smtp_allow_plaintext is False
    s = Settings.from_env(
        {
            "LP_BUDGET_HEADROOM": "25%",
            "LP_WEBHOOK_BUDGET_SHARE": "0.5",
            "LP_REPOS_TIER_INTERVAL": "2m",
            "LP_SMTP_ALLOW_PLAINTEXT": "true",
        },
        env_file=None,
    )
    assert s.budget_headroom == pytest.approx(0.25) and s.webhook_budget_share == pytest.approx(0.5)
    assert s.repos_tier_interval == 120 and s.smtp_allow_plaintext is True


def test_every_name_of_interface_md_is_a_setting() -> None:
    table = (SHARED / "docs" / "interface.md").read_text()
    documented = set(re.findall(r"`(LP_[A-Z_]+)`", table))
    assert documented and documented <= set(Settings.names())


def test_environment_wins_over_env_file_and_os_environ_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text('LP_MIN_APPROVALS=3\nLP_LOG_LEVEL="warning"\n')
    monkeypatch.setenv("LP_MIN_APPROVALS", "2")
    s = Settings.from_env(env_file=env_file)
    assert s.min_approvals == 2 and s.log_level == "warning"
    monkeypatch.setenv("LP_WORKSPACE", "typo")
    with pytest.raises(errors.ConfigError, match="did you mean LP_WORKSPACES"):
        Settings.from_env(env_file=env_file)


def test_shipped_deploy_example_is_valid() -> None:
    example = Path(__file__).resolve().parents[1] / "deploy" / "lowerplane.env.example"
    s = Settings.from_env({}, env_file=example)
    assert s.admin_token is not None and s.secret_key is not None
    assert s.public_url == "https://lowerplane.example.com" and s.slack_webhook_url is None

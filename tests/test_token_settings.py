"""Credentials in settings are checked at start like URLs and addresses: a token with a line break,
a control character or a space (a pasted value, a CRLF .env) is refused with one line naming the
variable, exit 2, never repeating the value. It used to pass, and `reconcile` then failed its pass
with "could not finish: ValueError: Newline ... in headers" and exit 1.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from app import errors
from app.settings import Settings
from tests.test_settings_validation import assert_one_line_exit_2, run_cli

BAD = [
    ("LP_BITBUCKET_TOKEN", "bb-token-s3cret\r\nX-Evil: 1"),
    ("LP_BITBUCKET_TOKEN", "bb-token-s3cret\r"),  # a .env written on Windows
    ("LP_BITBUCKET_TOKEN", "bb-token s3cret"),
    ("LP_OAUTH_CLIENT_ID", "client-id\nx"),
    ("LP_OAUTH_CLIENT_SECRET", "client-s3cret\tx"),
    ("LP_ADMIN_TOKEN", "admin-token-0123456789\n"),
]
IDS = ["token-crlf", "token-cr", "token-space", "client-id-lf", "client-secret-tab", "admin-lf"]


@pytest.mark.parametrize(("name", "value"), BAD, ids=IDS)
def test_loader_refuses_a_credential_with_control_characters(name: str, value: str) -> None:
    with pytest.raises(errors.ConfigError) as info:
        Settings.from_env({name: value, "LP_WORKSPACES": "acme"}, env_file=None)
    message = str(info.value)
    assert message.startswith(f"{name}: ") and "control characters" in message
    assert value.split()[0] not in message


@pytest.mark.parametrize(("name", "value"), BAD[:1], ids=IDS[:1])
def test_reconcile_refuses_a_credential_with_control_characters(name: str, value: str, tmp_path: Path) -> None:
    proc = run_cli({name: value, "LP_WORKSPACES": "acme", "LP_LOG_LEVEL": "error"}, tmp_path, "reconcile")
    assert_one_line_exit_2(proc, f"{name}: ", value.split()[0])
    assert not (tmp_path / "data").exists()


def test_ordinary_credentials_pass() -> None:
    s = Settings.from_env(
        {
            "LP_BITBUCKET_TOKEN": "ATCTT3xFfGN0abc_-=+/.",
            "LP_OAUTH_CLIENT_ID": "Zx9kLm",
            "LP_OAUTH_CLIENT_SECRET": "s3cr3t-value",
            "LP_ADMIN_TOKEN": "an-admin-token-for-tests-0123456",
        },
        env_file=None,
    )
    assert s.bitbucket_token is not None and s.bitbucket_token.get_secret_value() == "ATCTT3xFfGN0abc_-=+/."

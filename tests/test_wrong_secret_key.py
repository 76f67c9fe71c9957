"""A valid but wrong LP_SECRET_KEY (changed without rotation) is a configuration error: one line and
exit 2 from `serve`, `reconcile` and `webhooks register`, before any Bitbucket call.

It used to be exit 1 from `reconcile` ("could not finish", the pass left queued to fail again) and a
traceback with exit 1 from `serve` (its start-up raised while checking the webhook).
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from app.crypto import Crypto
from app.sandbox.serve import free_port
from app.store import Store

SCRIPT = Path(sys.executable).with_name("lowerplane-bitbucket")
OLD_KEY = "the-key-the-secrets-were-stored-with"
NEW_KEY = "another-key-set-without-rotation"
ADMIN = "an-admin-token-for-tests-0123456"
NEEDLE = "LP_SECRET_KEY cannot decrypt stored secrets"


async def _database_with_secret(database: Path | str) -> None:
    store = await Store.open(database)
    try:
        await store.connections.upsert("token", "token", ("acme",))
        await store.connections.set_webhook("token", Crypto(OLD_KEY).encrypt("webhook-secret-value"), [])
    finally:
        await store.close()


def _dead_port() -> int:
    with socket.socket() as s:  # nobody listens here: the refusal must come before any call
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    "argv",
    [["reconcile"], ["webhooks", "register"], ["serve", "--port", "PORT"]],
    ids=["reconcile", "webhooks-register", "serve"],
)
def test_a_wrong_secret_key_is_one_line_and_exit_2(argv: list[str], tmp_path: Path, database: Path | str) -> None:
    asyncio.run(_database_with_secret(database))
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LP_DATABASE": str(database),
        "LP_SECRET_KEY": NEW_KEY,
        "LP_ADMIN_TOKEN": ADMIN,
        "LP_BITBUCKET_TOKEN": "some-token",
        "LP_WORKSPACES": "acme",
        "LP_BITBUCKET_API_URL": f"http://127.0.0.1:{_dead_port()}/2.0",
    }
    argv = [str(free_port()) if a == "PORT" else a for a in argv]
    try:
        proc = subprocess.run(  # noqa: S603 - the project's own console script
            [str(SCRIPT), *argv], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30, check=False
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"`{' '.join(argv)}` did not exit")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("error: ") and NEEDLE in line
    assert OLD_KEY not in proc.stderr and NEW_KEY not in proc.stderr


def test_the_right_key_and_a_rotated_one_are_accepted(tmp_path: Path, database: Path | str) -> None:
    """The check refuses only a key list that cannot read the stored secrets."""
    asyncio.run(_database_with_secret(database))
    for key in (OLD_KEY, f"{NEW_KEY},{OLD_KEY}"):
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LP_DATABASE": str(database),
            "LP_SECRET_KEY": key,
            "LP_BITBUCKET_TOKEN": "some-token",
            "LP_WORKSPACES": "acme",
            "LP_BITBUCKET_API_URL": f"http://127.0.0.1:{_dead_port()}/2.0",
        }
        proc = subprocess.run(  # noqa: S603 - the project's own console script
            [str(SCRIPT), "webhooks", "status"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30
        )
        assert NEEDLE not in proc.stderr, proc.stderr

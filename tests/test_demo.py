"""`demo --once` runs the whole script from a fresh state and exits 0."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from app.sandbox.serve import free_port
from tests.test_security import HEALTH, _raw, endless_head


async def test_demo_once(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LP_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app",
        "demo",
        "--once",
        "--port",
        str(free_port()),
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=240)
    text = out.decode()
    assert proc.returncode == 0, text[-3000:]
    assert "First assessment of acme" in text
    assert "acme/payments is not classified" in text  # webhook-driven drift reached Slack
    assert "acme/docs: main lacks `delete`" in text  # restriction drift found by the next tier
    assert "Carol Gone (carol@acme.example) was offboarded" in text
    assert "workspace-mfa-enforced for acme: pass" in text
    assert (tmp_path / "data" / "demo.sqlite3").exists()


def test_demo_serves_as_serve_does_and_cuts_off_an_endless_header(tmp_path: Path) -> None:
    """The demo's server is built like serve's: a request head that never ends is refused while it
    arrives (httptools alone would buffer it without end), and others are still served."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LP_")}
    port = free_port()
    log = tmp_path / "demo.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            [sys.executable, "-m", "app", "demo", "--port", str(port)], cwd=tmp_path, env=env, stdout=out, stderr=out
        )
    try:
        deadline = time.monotonic() + 60
        while not _raw(port, HEALTH).startswith(b"HTTP/1.1 "):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"demo did not start: {log.read_text()}")
            time.sleep(0.05)
        sent, answer = endless_head(port)
        assert sent < 4 * 1024 * 1024, "the demo kept reading an endless header"
        assert answer == b"" or answer.startswith(b"HTTP/1.1 431"), answer[:80]
        assert _raw(port, HEALTH).startswith(b"HTTP/1.1 "), "the demo stopped serving"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

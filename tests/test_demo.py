"""`demo --once` runs the whole script from a fresh state and exits 0."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from app.sandbox.serve import free_port


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

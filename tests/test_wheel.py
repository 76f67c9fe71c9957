"""The built wheel, installed into a fresh venv and run from a folder outside the checkout: what
``pip install .`` (deploy/Containerfile) gives an ops engineer. The editable install the other
tests use reads templates and static files straight from the checkout and cannot catch a wheel
that leaves them out.

How the fresh venv gets its dependencies without the network: the venv is created without pip
(fast), the wheel is installed into it with ``--no-deps --no-index`` by this interpreter's pip
(``pip --python``), and one ``.pth`` line appends this project's own site-packages (already
installed from the lock) to the new venv's ``sys.path``. A path line in a ``.pth`` file is only
appended: ``.pth`` files inside that folder are not processed, so the editable install's import
hook never runs, and the venv's own site-packages comes first; the test checks ``app`` is
imported from the installed wheel, not from the checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.cli import main
from app.sandbox.serve import free_port
from tests.conftest import ROOT, TOKEN
from tests.pgcluster import created

VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
ADMIN = "wheel-test-admin-token-0123456789abcdef"


@dataclass
class Installed:
    python: Path
    script: Path
    outside: Path  # a working folder outside the checkout
    env: dict[str, str]

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # noqa: S603 - our own console script, fixed arguments
            [str(self.script), *args],
            cwd=self.outside,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def _build_and_install(tmp: Path) -> Installed:
    # Build from a copy holding only what deploy/Containerfile copies, so nothing else in the
    # checkout (and no build/ or egg-info left in it) can leak into the wheel.
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "app", src / "app", ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp / "dist"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    subprocess.run(  # noqa: S603
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", str(src), "-w", str(dist)],
        check=True,
        timeout=300,
    )
    (wheel,) = dist.glob("lowerplane_bitbucket-*.whl")

    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)  # noqa: S603
    python = venv / "bin" / "python"
    subprocess.run(  # noqa: S603
        [*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)], check=True, timeout=300
    )
    site = subprocess.run(  # noqa: S603
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(site) / "_lowerplane_test_deps.pth").write_text("".join(f"{d}\n" for d in sorted(deps)))

    outside = tmp / "outside"
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LP_", "PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return Installed(python, venv / "bin" / "lowerplane-bitbucket", outside, env)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    return _build_and_install(tmp_path_factory.mktemp("wheel"))


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
    request = urllib.request.Request(url, headers=headers or {})  # noqa: S310 - loopback only
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, response.headers.get("content-type", ""), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("content-type", ""), exc.read()


def _wait_up(url: str, proc: subprocess.Popen[str], within: float = 60) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out, _ = proc.communicate()
            raise AssertionError(f"exited {proc.returncode} before answering:\n{out[-3000:]}")
        try:
            _get(url)
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{url} did not answer within {within} s")


def _start(
    installed: Installed, processes: list[subprocess.Popen[str]], *args: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    proc = subprocess.Popen(  # noqa: S603
        [str(installed.script), *args],
        cwd=installed.outside,
        env={**installed.env, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    processes.append(proc)
    return proc


def test_version_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"lowerplane-bitbucket {VERSION}\n"


def test_wheel_imports_from_its_own_install_and_reports_its_version(installed: Installed) -> None:
    where = subprocess.run(  # noqa: S603
        [str(installed.python), "-c", "import app; print(app.__file__)"],
        cwd=installed.outside,
        env=installed.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(installed.python.parent.parent), where
    module = subprocess.run(  # noqa: S603
        [str(installed.python), "-m", "app", "--version"],
        cwd=installed.outside,
        env=installed.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (module.returncode, module.stdout) == (0, f"lowerplane-bitbucket {VERSION}\n"), module.stderr
    script = installed.run("--version")
    assert (script.returncode, script.stdout) == (0, f"lowerplane-bitbucket {VERSION}\n"), script.stderr


def test_wheel_serves_dashboard_and_static_files(
    installed: Installed, processes: list[subprocess.Popen[str]], database: Path | str
) -> None:
    port = free_port()
    env = {
        "LP_DATABASE": str(installed.outside / "serve" / "lp.sqlite3") if isinstance(database, Path) else database,
        "LP_SECRET_KEY": "wheel-test-secret-key-0123456789",
        "LP_ADMIN_TOKEN": ADMIN,
        "LP_PUBLIC_URL": f"http://127.0.0.1:{port}",
    }
    (installed.outside / "serve").mkdir(exist_ok=True)
    proc = _start(installed, processes, "serve", "--host", "127.0.0.1", "--port", str(port), env=env)
    base = f"http://127.0.0.1:{port}"
    _wait_up(base + "/healthz", proc)

    status, _, _ = _get(base + "/healthz")
    assert status == 200
    assert created(database if isinstance(database, str) else installed.outside / "serve" / "lp.sqlite3")
    status, kind, body = _get(base + "/login")  # rendered from app/web/templates
    assert status == 200 and kind.startswith("text/html"), body[:500]
    assert b'id="token"' in body
    status, kind, body = _get(base + "/static/app.css")  # app/web/static
    assert status == 200 and kind.startswith("text/css")
    assert body == (ROOT / "app" / "web" / "static" / "app.css").read_bytes()
    assert proc.poll() is None


def test_wheel_runs_commands_on_the_database(installed: Installed, database: Path | str) -> None:
    """The installed console script writes and reads the store (its driver: aiosqlite or asyncpg)."""
    env = {**installed.env, "LP_DATABASE": str(database)}

    def script(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # noqa: S603 - our own console script, fixed arguments
            [str(installed.script), *args],
            cwd=installed.outside,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    added = script("classify-rules", "add", "production", "--project", "CORE")
    assert added.returncode == 0, added.stderr
    listed = script("classify-rules", "list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.startswith("1. project CORE") and "production" in listed.stdout


def test_wheel_runs_the_sandbox(installed: Installed, processes: list[subprocess.Popen[str]]) -> None:
    port = free_port()
    proc = _start(installed, processes, "sandbox", "--port", str(port))
    base = f"http://127.0.0.1:{port}"
    _wait_up(base + "/2.0/repositories/acme", proc)
    status, kind, body = _get(base + "/2.0/repositories/acme", {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and kind.startswith("application/json"), body[:500]
    assert b'"full_name": "acme/api"' in body or b'"full_name":"acme/api"' in body


def test_wheel_runs_the_demo_once(installed: Installed) -> None:
    result = installed.run("demo", "--once", "--port", str(free_port()), timeout=240)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "First assessment of acme" in result.stdout
    assert (installed.outside / "data" / "demo.sqlite3").exists()

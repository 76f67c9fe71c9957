"""Install and deploy files: the lock files agree with pyproject.toml, the Makefile reinstalls when
a lock changes and passes PORT to the demo, and deploy/Containerfile copies files that exist and
installs from the production lock."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from app.sandbox.serve import free_port
from tests.conftest import ROOT

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
LOCKS = ROOT / "requirements"
MAKE = shutil.which("make")
needs_make = pytest.mark.skipif(MAKE is None, reason="make is not installed")


def make_env() -> dict[str, str]:
    """The environment for a make of our own: none of the outer make's flags (``make test`` runs
    pytest), no LP_ settings."""
    drop = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")
    return {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("LP_")}


def pins(lock: Path) -> dict[str, Version]:
    """``name==version`` lines of a lock (markers and ``# via`` comments dropped)."""
    found: dict[str, Version] = {}
    for line in lock.read_text().splitlines():
        if not line.strip() or line[0] in "# ":
            continue
        requirement = line.split(";")[0].strip()
        name, sep, version = requirement.partition("==")
        assert sep, f"{lock.name}: not pinned: {line!r}"
        found[canonicalize_name(name)] = Version(version)
    return found


def _check_pinned(requirements: list[str], locked: dict[str, Version], lock: str) -> None:
    for text in requirements:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in locked, f"{req.name} is in pyproject.toml but not in {lock}: run `make lock`"
        assert req.specifier.contains(locked[name], prereleases=True), (
            f"{lock} pins {req.name}=={locked[name]}, outside pyproject.toml's {req.specifier}: run `make lock`"
        )


def test_locks_pin_every_dependency_within_pyproject() -> None:
    prod, dev = pins(LOCKS / "prod.lock"), pins(LOCKS / "dev.lock")
    _check_pinned(PROJECT["dependencies"], prod, "prod.lock")
    _check_pinned(PROJECT["dependencies"] + PROJECT["optional-dependencies"]["dev"], dev, "dev.lock")
    assert prod["aiohttp"] < Version("3.14")  # aioresponses cannot build 3.14 responses
    dev_only = {canonicalize_name(Requirement(r).name) for r in PROJECT["optional-dependencies"]["dev"]}
    assert not dev_only & prod.keys(), "the production lock carries test tools"
    shared = prod.keys() & dev.keys()
    assert {n: prod[n] for n in shared} == {n: dev[n] for n in shared}, "the two locks disagree"
    assert "uv" in pins(LOCKS / "bootstrap.lock")


@needs_make
def test_install_stamp_is_out_of_date_when_a_lock_changes(tmp_path: Path) -> None:
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy2(ROOT / name, tmp_path / name)
    shutil.copytree(LOCKS, tmp_path / "requirements")
    bin_ = tmp_path / ".venv" / "bin"
    bin_.mkdir(parents=True)
    (bin_ / "uv").touch()
    (tmp_path / ".venv" / ".installed").touch()

    def up_to_date() -> bool:
        make = [str(MAKE), "-q", "-C", str(tmp_path), ".venv/.installed"]
        done = subprocess.run(make, env=make_env(), capture_output=True, timeout=60, check=False)  # noqa: S603
        return done.returncode == 0

    assert up_to_date()
    later = time.time() + 10
    for lock in ("dev.lock", "bootstrap.lock"):
        os.utime(tmp_path / "requirements" / lock, (later, later))
        assert not up_to_date(), f"changing {lock} does not reinstall"
        (bin_ / "uv").touch()
        os.utime(bin_ / "uv", (later + 1, later + 1))
        os.utime(tmp_path / ".venv" / ".installed", (later + 2, later + 2))
        assert up_to_date()
        later += 10


@needs_make
def test_make_demo_uses_port(tmp_path: Path) -> None:
    """``make demo PORT=…`` serves the demo's dashboard on that port (this interpreter's install)."""
    bin_ = str(Path(sys.executable).parent)
    make = [str(MAKE), "--no-print-directory", "-f", str(ROOT / "Makefile"), "-o", ".venv/.installed", f"BIN={bin_}"]
    make.append("demo")
    env = make_env()

    def dry_run(*extra: str) -> list[str]:
        done = subprocess.run([*make, "-n", *extra], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)  # noqa: S603
        return shlex.split(done.stdout.strip())

    port = free_port()
    assert dry_run() == [f"{bin_}/lowerplane-bitbucket", "demo"]
    assert dry_run(f"PORT={port}") == [f"{bin_}/lowerplane-bitbucket", "demo", "--port", str(port)]
    proc = subprocess.Popen(  # noqa: S603
        [*make, f"PORT={port}"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: make and the demo end together below
    )
    try:
        deadline = time.monotonic() + 120
        status = None
        while status is None and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
                    status = response.status
            except OSError:
                time.sleep(0.2)
        assert status == 200
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=30)


def _instructions(containerfile: Path) -> list[tuple[str, str]]:
    text = containerfile.read_text().replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            keyword, _, rest = line.strip().partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def test_containerfile_copies_existing_files_and_installs_from_the_lock() -> None:
    copied: list[str] = []
    runs: list[str] = []
    for keyword, rest in _instructions(ROOT / "deploy" / "Containerfile"):
        if keyword == "COPY" and not rest.startswith("--from"):
            *sources, _target = shlex.split(rest)
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: no such file in the build context"
            copied += sources
        elif keyword == "RUN":
            runs.append(rest)
            if "pip install" in rest:  # whatever pip installs must already be in the image
                for word in shlex.split(rest):
                    if word.endswith(".lock"):
                        assert word in copied, f"{word} is installed before it is copied"
    installs = [run for run in runs if "pip install" in run]
    assert any("-r requirements/prod.lock" in run for run in installs), "dependencies do not come from the lock"
    project = [run for run in installs if " ." in f"{run} "]
    assert project and all("--no-deps" in run for run in project), "the project install resolves dependencies"
    assert any("pip check" in run for run in runs)
    assert {"pyproject.toml", "app"} <= set(copied)


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="not a git checkout")
def test_no_tool_cache_is_tracked() -> None:
    """Tools the tests run write their caches into the checkout; tracked, ``make test`` rewrites them."""
    caches = [".schemathesis", ".hypothesis", ".pytest_cache", ".mypy_cache", ".ruff_cache"]
    listed = subprocess.run(  # noqa: S603
        [str(shutil.which("git")), "-C", str(ROOT), "ls-files", "--", *caches],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert listed.stdout == ""

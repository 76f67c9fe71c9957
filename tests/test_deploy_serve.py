"""The long-running commands shipped in deploy/, run as their files say: the systemd service unit,
the container image's CMD and HEALTHCHECK, and the Kubernetes Deployment's probes. (The reconcile
timer and CronJob are run by tests/test_reconcile_command.py.)

Each test reads the deploy file, starts the console script with its arguments and environment
(only the port, the database folder and the Bitbucket URLs differ: loopback, nothing listening),
checks what the file relies on, and stops it the way systemd or Kubernetes does (SIGTERM), which
must be a clean exit 0 (``Restart=on-failure`` would otherwise restart a stopped service).
"""

from __future__ import annotations

import configparser
import inspect
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from app.bitbucket.client import BitbucketClient
from app.main import SHUTDOWN_SECONDS
from app.sandbox.serve import free_port
from tests.conftest import ROOT
from tests.pgcluster import created
from tests.test_packaging import _instructions
from tests.test_reconcile_command import _env_file, unit_environment

SCRIPT = Path(sys.executable).with_name("lowerplane-bitbucket")
DEPLOY = ROOT / "deploy"


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback only
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def _nowhere() -> dict[str, str]:
    """Bitbucket on a loopback port where nothing listens: a started service reaches nothing outside."""
    port = free_port()
    return {"LP_BITBUCKET_API_URL": f"http://127.0.0.1:{port}/2.0", "LP_BITBUCKET_URL": f"http://127.0.0.1:{port}"}


def _with_port(argv: list[str], port: int) -> list[str]:
    """The same arguments with ``--port`` set to a free port (the file's port may be taken here)."""
    i = argv.index("--port")
    return [*argv[: i + 1], str(port), *argv[i + 2 :]]


def _start(argv: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("LP_", "VIRTUAL_ENV"))}
    with log.open("wb") as out:
        return subprocess.Popen(  # noqa: S603 - our own console script
            [str(SCRIPT), *argv], cwd=cwd, env={**base, **env}, stdout=out, stderr=out
        )


def _wait_ready(base: str, proc: subprocess.Popen[bytes], log: Path, path: str = "/readyz") -> None:
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode} before it was ready:\n{log.read_text()[-3000:]}")
        try:
            if _status(base + path) == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{base}{path} not ready within 60 s:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)


def _stop_as_a_supervisor_does(proc: subprocess.Popen[bytes], log: Path, grace: float) -> None:
    """SIGTERM, then the supervisor's grace period: the process must be gone, with status 0."""
    proc.send_signal(signal.SIGTERM)
    try:
        status = proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"still running {grace} s after SIGTERM:\n{log.read_text()[-3000:]}") from None
    assert status == 0, log.read_text()[-3000:]


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_systemd_service_unit_serves_and_stops_cleanly(
    tmp_path: Path, database: Path | str, processes: list[subprocess.Popen[bytes]]
) -> None:
    """On PostgreSQL the same unit, with /etc/lowerplane/lowerplane.env naming the database's URL."""
    unit = configparser.ConfigParser(interpolation=None, strict=False)
    unit.read(DEPLOY / "systemd" / "lowerplane.service")
    service = unit["Service"]
    argv = shlex.split(service["ExecStart"])
    assert Path(argv[0]).name == "lowerplane-bitbucket" and argv[1] == "serve"
    assert service["Restart"] == "on-failure"
    env = unit_environment(service)
    workdir = tmp_path / "var-lib-lowerplane"  # WorkingDirectory=, the one ReadWritePaths=
    workdir.mkdir()
    assert service["ReadWritePaths"] == service["WorkingDirectory"]
    assert env["LP_DATABASE"].startswith(service["WorkingDirectory"] + "/")  # the database is writable
    env["LP_DATABASE"] = env["LP_DATABASE"].replace(service["WorkingDirectory"], str(workdir))
    if isinstance(database, str):
        env["LP_DATABASE"] = database
    port = free_port()
    log = tmp_path / "serve.log"
    proc = _start(_with_port(argv[1:], port), {**env, **_nowhere()}, workdir, log)
    processes.append(proc)
    base = f"http://{argv[argv.index('--host') + 1]}:{port}"
    _wait_ready(base, proc, log)
    assert _status(base + "/healthz") == 200
    assert created(Path(env["LP_DATABASE"]) if isinstance(database, Path) else database)
    # systemd stops with SIGTERM and waits TimeoutStopSec= (default 90 s): serve drains within its bound
    grace = float(service.get("TimeoutStopSec", "90").removesuffix("s"))
    assert grace > SHUTDOWN_SECONDS
    _stop_as_a_supervisor_does(proc, log, grace)


def _containerfile() -> dict[str, str]:
    """The final stage's instructions that describe how the image runs."""
    found: dict[str, str] = {}
    for keyword, rest in _instructions(DEPLOY / "Containerfile"):
        if keyword == "FROM":
            found = {}  # only the last stage is the image
        elif keyword == "ENV":
            found["ENV"] = f"{found.get('ENV', '')} {rest}".strip()
        else:
            found[keyword] = rest
    return found


# The Deployment of each store: one replica on SQLite (its volume), several on PostgreSQL.
MANIFESTS = {"sqlite": "lowerplane.yaml", "postgresql": "lowerplane-postgresql.yaml"}


def test_the_container_image_and_the_kubernetes_deployment_serve_and_stop_cleanly(
    tmp_path: Path, database: Path | str, store_kind: str, processes: list[subprocess.Popen[bytes]]
) -> None:
    image = _containerfile()
    cmd = json.loads(image["CMD"])
    assert cmd[:2] == ["lowerplane-bitbucket", "serve"]
    host = cmd[cmd.index("--host") + 1]
    exposed = int(image["EXPOSE"])
    assert host == "0.0.0.0" and int(cmd[cmd.index("--port") + 1]) == exposed  # noqa: S104 - in a container
    image_env = dict(word.split("=", 1) for word in shlex.split(image["ENV"]))
    workdir = image["WORKDIR"]

    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes" / MANIFESTS[store_kind]).read_text()))
    secret = next(d for d in docs if d["kind"] == "Secret")
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert "command" not in container and "args" not in container  # the image's CMD runs
    [port_spec] = container["ports"]
    assert port_spec["containerPort"] == exposed
    env = {k: v for k, v in image_env.items() if k.startswith("LP_")}
    env |= {k: str(v) for k, v in secret["stringData"].items()}
    env |= {e["name"]: e["value"] for e in container.get("env", [])}
    [mount] = container["volumeMounts"]
    data = tmp_path / "data"
    data.mkdir()
    if isinstance(database, str):  # the replicas share the database and, on their volume, the evidence
        assert env["LP_DATABASE"].startswith("postgresql://") and deployment["spec"]["replicas"] > 1
        assert env["LP_DATA_DIR"] == mount["mountPath"]
        env["LP_DATABASE"], env["LP_DATA_DIR"] = database, str(data)
    else:
        assert env["LP_DATABASE"].startswith(mount["mountPath"] + "/")  # on the persistent volume
        env["LP_DATABASE"] = env["LP_DATABASE"].replace(mount["mountPath"], str(data))
    cwd = data if workdir == mount["mountPath"] else tmp_path

    port = free_port()
    log = tmp_path / "serve.log"
    args = _with_port(cmd[1:], port)
    args[args.index("--host") + 1] = "127.0.0.1"  # loopback here; 0.0.0.0 in the container
    proc = _start(args, {**env, **_nowhere()}, cwd, log)
    processes.append(proc)
    base = f"http://127.0.0.1:{port}"
    probes = {name: container[name] for name in ("readinessProbe", "livenessProbe")}
    _wait_ready(base, proc, log, probes["readinessProbe"]["httpGet"]["path"])
    for probe in probes.values():
        assert probe["httpGet"]["port"] in (port_spec["name"], exposed)
        assert _status(base + probe["httpGet"]["path"]) == 200

    # The image's HEALTHCHECK command succeeds against the running service and fails once it is gone.
    options, _, check = image["HEALTHCHECK"].partition("CMD ")
    health = shlex.split(check)
    assert health[0] == "python" and f"127.0.0.1:{exposed}/" in health[-1]
    health = [sys.executable, *health[1:-1], health[-1].replace(f"127.0.0.1:{exposed}/", f"127.0.0.1:{port}/")]
    timeout = float(next(o for o in options.split() if o.startswith("--timeout=")).split("=")[1].rstrip("s"))
    ran = subprocess.run(health, capture_output=True, timeout=timeout, check=False)  # noqa: S603
    assert ran.returncode == 0, ran.stderr

    # Kubernetes sends SIGTERM and waits terminationGracePeriodSeconds (default 30 s).
    _stop_as_a_supervisor_does(proc, log, float(pod.get("terminationGracePeriodSeconds", 30)))
    ran = subprocess.run(health, capture_output=True, timeout=timeout, check=False)  # noqa: S603
    assert ran.returncode != 0


def _worst_bitbucket_request() -> float:
    """How long one Bitbucket request may take when Bitbucket hangs: every attempt times out, with
    the longest backoff between attempts (the client's defaults)."""
    defaults = inspect.signature(BitbucketClient.__init__).parameters
    attempts = int(defaults["max_attempts"].default)
    return float(attempts * defaults["timeout"].default + (attempts - 1) * defaults["backoff_max"].default)


def _span(text: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1}
    return float(text[:-1]) * units[text[-1]]


@pytest.mark.parametrize("manifest", MANIFESTS.values())
def test_start_up_waiting_for_bitbucket_is_not_taken_for_a_dead_process(manifest: str) -> None:
    """serve answers its probes only once start-up is done, and start-up registers the webhooks
    (the hook events and the hook list, one request each, before anything else can fail): with a
    Bitbucket that hangs that is minutes, and a liveness probe counting from the start would kill
    the pod again and again (three failures 20 s apart) while Bitbucket is slow."""
    start_up = 2 * _worst_bitbucket_request()
    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes" / manifest).read_text()))
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    probe = container["startupProbe"]
    assert probe["httpGet"] == container["livenessProbe"]["httpGet"]
    assert probe["periodSeconds"] * probe["failureThreshold"] >= start_up
    options = _containerfile()["HEALTHCHECK"].partition("CMD ")[0].split()
    period = next(o for o in options if o.startswith("--start-period=")).split("=")[1]
    assert _span(period) >= start_up


def test_the_procfile_web_process_serves_on_the_platforms_port(
    tmp_path: Path, database: Path | str, processes: list[subprocess.Popen[bytes]]
) -> None:
    """Platforms that read a Procfile run its line through a shell with ``PORT`` set, and reach the
    process from outside its loopback."""
    [line] = [x for x in (ROOT / "Procfile").read_text().splitlines() if x.startswith("web:")]
    command = line.removeprefix("web:").strip()
    argv = shlex.split(command)
    assert argv[:2] == ["lowerplane-bitbucket", "serve"] and argv[argv.index("--host") + 1] == "0.0.0.0"  # noqa: S104
    port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("LP_", "VIRTUAL_ENV"))}
    env = {
        **base,
        "PATH": f"{SCRIPT.parent}{os.pathsep}{base.get('PATH', '')}",
        "PORT": str(port),
        **_env_file(DEPLOY / "lowerplane.env.example"),
        **_nowhere(),
        "LP_DATABASE": str(database),
    }
    log = tmp_path / "web.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(  # noqa: S603 - the Procfile's own line, loopback instead of every address
            ["/bin/sh", "-c", "exec " + command.replace("0.0.0.0", "127.0.0.1")],  # noqa: S104
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=out,
        )
    processes.append(proc)
    _wait_ready(f"http://127.0.0.1:{port}", proc, log)
    _stop_as_a_supervisor_does(proc, log, 30)


def test_the_env_example_keeps_the_images_database_on_its_volume() -> None:
    """`docker run --env-file lowerplane.env` (as the example's first line says): the file's values
    override the image's ENV, and the database must stay on the volume, or it is lost with the
    container (or cannot be created at all by the image's non-root user)."""
    image = _containerfile()
    env = dict(word.split("=", 1) for word in shlex.split(image["ENV"]))
    env |= _env_file(DEPLOY / "lowerplane.env.example")  # --env-file wins over ENV
    [volume] = json.loads(image["VOLUME"])
    assert env["LP_DATABASE"].startswith(volume + "/")

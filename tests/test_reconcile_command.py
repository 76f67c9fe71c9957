"""`reconcile` as cron runs it: with the OAuth connections stored in the database, no LP_BITBUCKET_TOKEN.

The workspace is connected through the real OAuth flow against the sandbox; then the console script
runs as a separate process, exactly as the systemd timer and the Kubernetes CronJob in deploy/ start it.
"""

from __future__ import annotations

import asyncio
import configparser
import os
import re
import shlex
import sys
from pathlib import Path

import aiohttp
import pytest
import yaml

from app.sandbox.serve import RunningSandbox, free_port
from app.store import Store
from tests.conftest import ROOT, TOKEN
from tests.helpers import SECRET_KEY, product_settings, running_app
from tests.pgcluster import created
from tests.web.test_connect_api import OAUTH, browser_session, connect

SCRIPT = Path(sys.executable).with_name("lowerplane-bitbucket")
CONSUMER = {"LP_OAUTH_CLIENT_ID": "sandbox-client-id", "LP_OAUTH_CLIENT_SECRET": "sandbox-client-secret"}


async def connect_by_oauth(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path, database: Path | str, secret_key: str
) -> None:
    """Sign in to the product and connect `acme` through the OAuth flow; the product does not reconcile."""
    port = free_port()
    settings = product_settings(
        sandbox.api, tmp_path, port, **OAUTH, LP_DATABASE=str(database), LP_SECRET_KEY=secret_key
    )
    async with running_app(settings, port, session, background=False) as app:
        async with browser_session() as browser:
            assert await connect(browser, app) == "/connections?connected=oauth-alice"
        assert not await app.services.service.store.results.query()
    # the access token is past its lifetime when cron runs: the command must refresh it as serve does
    await session.post(sandbox.url + "/_sandbox/tokens/expire")


async def run(argv: list[str], env: dict[str, str], cwd: Path, within: float = 60) -> tuple[int, str, str]:
    """The console script as a separate process, while this event loop keeps serving the sandbox."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), within)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"{argv} did not exit within {within} s")
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def stored(database: Path | str) -> tuple[int, bytes | None]:
    store = await Store.open(database)
    try:
        conn = await store.connections.get("oauth-alice")
        return len(await store.results.query(workspace="acme")), conn.tokens if conn else None
    finally:
        await store.close()


def towards(sandbox: RunningSandbox, database: Path | str) -> dict[str, str]:
    """What differs between the test and production: where Bitbucket is, the consumer, the database."""
    return {
        "LP_BITBUCKET_API_URL": sandbox.api,
        "LP_BITBUCKET_URL": sandbox.url,
        **CONSUMER,
        "LP_DATABASE": str(database),
        "LP_LOG_LEVEL": "warning",
    }


async def test_reconcile_uses_the_stored_oauth_connection(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path, database: Path | str
) -> None:
    await connect_by_oauth(sandbox, session, tmp_path, database, SECRET_KEY)
    _, tokens_before = await stored(database)
    env = {**towards(sandbox, database), "LP_SECRET_KEY": SECRET_KEY}  # no LP_BITBUCKET_TOKEN
    status, out, err = await run([str(SCRIPT), "reconcile"], env, tmp_path)
    assert status == 0, err
    assert out.startswith("acme: ") and "result rows written" in out
    results, tokens_after = await stored(database)
    assert results > 0
    assert tokens_after != tokens_before  # the expired token was refreshed and the new pair stored


async def test_reconcile_without_token_or_connection_is_one_line_and_exit_2(
    sandbox: RunningSandbox, tmp_path: Path, database: Path | str
) -> None:
    env = {**towards(sandbox, database), "LP_SECRET_KEY": SECRET_KEY}
    for empty_database in (False, True):
        if empty_database:
            await (await Store.open(database)).close()
        status, out, err = await run([str(SCRIPT), "reconcile"], env, tmp_path)
        assert status == 2 and out == ""
        [line] = err.strip().splitlines()
        assert line.startswith("error: no Bitbucket connection: set LP_BITBUCKET_TOKEN")
        if isinstance(database, Path):  # never created by a refused run (a PostgreSQL database exists
            assert created(database) == empty_database  # before the product runs: any command migrates it)


async def test_reconcile_with_a_misspelt_lp_workspaces_is_one_line_and_exit_2(
    sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """A workspace the token cannot see is bad configuration (docs/interface.md: exit 2 with a
    one-line reason), not a run that could not finish (exit 1, "will be retried"); nothing is
    reconciled. Spelt right, the same run works."""
    database = tmp_path / "lp.sqlite3"
    env = {**towards(sandbox, database), "LP_SECRET_KEY": SECRET_KEY, "LP_BITBUCKET_TOKEN": TOKEN}
    status, out, err = await run([str(SCRIPT), "reconcile"], env | {"LP_WORKSPACES": "acme,acmee"}, tmp_path)
    assert (status, out) == (2, ""), err
    [line] = err.strip().splitlines()
    assert line == "error: LP_WORKSPACES: 'acmee' is not a workspace this token can see (it sees: acme)"
    store = await Store.open(database)
    try:
        assert await store.results.query() == [] and await store.events.list(limit=10) == []
    finally:
        await store.close()
    status, out, err = await run([str(SCRIPT), "reconcile"], env | {"LP_WORKSPACES": "acme"}, tmp_path)
    assert status == 0, err
    assert out.startswith("acme: ")


def _env_file(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            env[name.strip()] = value.strip()
    return env


def unit_environment(service: configparser.SectionProxy) -> dict[str, str]:
    """A unit's environment: ``Environment=``, then ``EnvironmentFile=`` (it overrides), whose template
    is deploy/lowerplane.env.example."""
    assert service["EnvironmentFile"] == "/etc/lowerplane/lowerplane.env"
    env = dict(shlex.split(word)[0].split("=", 1) for word in shlex.split(service.get("Environment", "")))
    return env | _env_file(ROOT / "deploy" / "lowerplane.env.example")


async def test_the_systemd_timer_unit_runs(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path, database: Path | str
) -> None:
    """On PostgreSQL the same unit, with /etc/lowerplane/lowerplane.env naming the database's URL."""
    unit = configparser.ConfigParser(interpolation=None, strict=False)
    unit.read(ROOT / "deploy" / "systemd" / "lowerplane-reconcile.service")
    service = unit["Service"]
    argv = shlex.split(service["ExecStart"])
    assert Path(argv[0]).name == "lowerplane-bitbucket" and argv[1:] == ["reconcile"]
    # EnvironmentFile= names /etc/lowerplane/lowerplane.env, whose template is deploy/lowerplane.env.example
    assert service["EnvironmentFile"] == "/etc/lowerplane/lowerplane.env"
    env = unit_environment(service)  # Environment=, then EnvironmentFile= (which wins)
    assert "LP_BITBUCKET_TOKEN" not in env  # set up for OAuth
    workdir = tmp_path / "var-lib-lowerplane"  # WorkingDirectory=/var/lib/lowerplane
    workdir.mkdir()
    assert env["LP_DATABASE"].startswith(service["ReadWritePaths"] + "/")  # writable under ProtectSystem=strict
    if isinstance(database, Path):
        database = Path(env["LP_DATABASE"].replace(service["WorkingDirectory"], str(workdir)))
    await connect_by_oauth(sandbox, session, tmp_path, database, env["LP_SECRET_KEY"])
    status, out, err = await run([str(SCRIPT), *argv[1:]], {**env, **towards(sandbox, database)}, workdir)
    assert status == 0, err
    assert out.startswith("acme: ") and (await stored(database))[0] > 0


def _seconds(span: str) -> float:
    """A systemd time span such as ``6h``, ``10min`` or ``5h45min``."""
    units = {"h": 3600, "min": 60, "s": 1}
    total = 0.0
    for number, unit in re.findall(r"(\d+)\s*(h|min|s)", span):
        total += int(number) * units[unit]
    assert total > 0, span
    return total


def test_a_hung_timer_run_cannot_block_the_next() -> None:
    """The timer starts no new run while one is still active, and a oneshot has no start timeout by
    default: the unit must stop a run before the next one is due."""
    unit = configparser.ConfigParser(interpolation=None, strict=False)
    unit.read(ROOT / "deploy" / "systemd" / "lowerplane-reconcile.service")
    timer = configparser.ConfigParser(interpolation=None, strict=False)
    timer.read(ROOT / "deploy" / "systemd" / "lowerplane-reconcile.timer")
    assert unit["Service"]["Type"] == "oneshot"
    limit = unit["Service"].get("TimeoutStartSec", "infinity")
    assert limit != "infinity", "a hung run would block every later one"
    assert _seconds(limit) < _seconds(timer["Timer"]["OnUnitActiveSec"])


def test_the_cronjob_can_mount_the_volume_and_cannot_hang() -> None:
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / "lowerplane.yaml").read_text()))
    claim = next(d for d in docs if d["kind"] == "PersistentVolumeClaim")
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    cron = next(d for d in docs if d["kind"] == "CronJob")
    job = cron["spec"]["jobTemplate"]["spec"]
    pod = job["template"]["spec"]
    [volume] = pod["volumes"]
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    if claim["spec"]["accessModes"] == ["ReadWriteOnce"]:
        # one node at a time mounts it: the job must run on the node of serve's pod, or stay Pending
        # (and, with concurrencyPolicy Forbid, block every later run)
        [term] = pod["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert term["topologyKey"] == "kubernetes.io/hostname"
        assert term["labelSelector"]["matchLabels"] == deployment["spec"]["template"]["metadata"]["labels"]
    # a run is stopped before the next is due ("17 */6 * * *": every 6 hours)
    minute, hour = cron["spec"]["schedule"].split()[:2]
    assert minute.isdigit() and hour.startswith("*/")
    assert 0 < job["activeDeadlineSeconds"] < int(hour[2:]) * 3600


@pytest.mark.sqlite_only("lowerplane.yaml's CronJob shares serve's SQLite volume; lowerplane-postgresql.yaml has none")
async def test_the_kubernetes_cronjob_runs(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / "lowerplane.yaml").read_text()))
    secret = next(d for d in docs if d["kind"] == "Secret")
    cron = next(d for d in docs if d["kind"] == "CronJob")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    [container] = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert container["envFrom"] == [{"secretRef": {"name": secret["metadata"]["name"]}}]
    env = {k: str(v) for k, v in secret["stringData"].items()}
    env.update({e["name"]: e["value"] for e in container.get("env", [])})
    assert "LP_BITBUCKET_TOKEN" not in env  # set up for OAuth
    [mount] = container["volumeMounts"]
    data = tmp_path / "data"  # the persistent volume
    data.mkdir()
    database = Path(env["LP_DATABASE"].replace(mount["mountPath"], str(data)))
    await connect_by_oauth(sandbox, session, tmp_path, database, env["LP_SECRET_KEY"])
    command = container["command"]
    assert command[0] == "lowerplane-bitbucket"
    status, out, err = await run([str(SCRIPT), *command[1:]], {**env, **towards(sandbox, database)}, tmp_path)
    assert status == 0, err
    assert out.startswith("acme: ") and (await stored(database))[0] > 0

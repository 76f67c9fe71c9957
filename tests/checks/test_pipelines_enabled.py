"""``pipelines-enabled`` on plain facts."""

from __future__ import annotations

from app.bitbucket.models import Pipeline, PipelinesConfig
from app.checks.base import Unreadable
from tests.checks.helpers import facts, run


def test_pipelines() -> None:
    build = Pipeline(build_number=7, state="COMPLETED", result="FAILED", created_on="2026-11-27T00:00:00Z")
    status, _, details = run("pipelines-enabled", facts(pipelines=PipelinesConfig(enabled=True), build=build))
    assert (
        status == "pass" and details["last_build"]["build_number"] == 7 and details["last_build"]["result"] == "FAILED"
    )
    status, message, details = run(
        "pipelines-enabled", facts(pipelines=PipelinesConfig(enabled=False, configured=False))
    )
    assert status == "fail" and "not configured" in message  # pipelines_config 404
    assert run("pipelines-enabled", facts(pipelines=PipelinesConfig(enabled=False)))[0] == "fail"
    assert run("pipelines-enabled", facts(pipelines=Unreadable("missing_scope", "repository:admin")))[0] == "unknown"
    assert run("pipelines-enabled", facts(cls="non-production"))[0] == "not_applicable"


def test_pipelines_is_off_by_default() -> None:
    from app.settings import Settings

    assert "pipelines-enabled" not in Settings.from_env({}, env_file=None).enabled_checks

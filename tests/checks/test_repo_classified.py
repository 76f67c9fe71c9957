"""``repo-classified`` on plain facts."""

from __future__ import annotations

from tests.checks.helpers import facts, run


def test_repo_classified() -> None:
    assert run("repo-classified", facts(cls="production"))[0] == "pass"
    assert run("repo-classified", facts(cls="non-production"))[0] == "pass"
    status, message, _ = run("repo-classified", facts(cls=None))
    assert status == "fail" and "classify acme/api production" in message

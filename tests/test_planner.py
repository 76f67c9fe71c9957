"""The planner's table, row by row (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from app.planner import MEMBER_CHECKS, USED_EVENTS, Fetch, KnownRepo, Plan, coalesce, full_pass, plan

KNOWN = {
    "{api}": KnownRepo("{api}", "main", frozenset({"develop"})),
    "{empty}": KnownRepo("{empty}", None),
}
ALL = frozenset(
    {
        "repo-classified",
        "branch-protection-enforced",
        "merge-requires-peer-review",
        "merge-requires-passing-builds",
        "pipelines-enabled",
        "member-mfa-enabled",
        "offboarded-access-removed",
        "workspace-mfa-enforced",
    }
)
NO_PIPELINES = ALL - {"pipelines-enabled"}


def p(repo: str = "{api}", **kw: Any) -> dict[str, Any]:
    return {"workspace": "acme", "repository_uuid": repo, **kw}


@pytest.mark.parametrize(
    ("key", "payload", "enabled", "fetch_kinds", "repos", "api_free"),
    [
        ("repo:push", p("{new}", branches=["main"]), ALL, ["repo_full"], ["{new}"], False),  # unknown repository
        ("repo:push", p(branches=["feature/x"]), ALL, [], [], True),  # other branch: nothing
        ("repo:push", p(branches=["main"]), ALL, ["last_build"], ["{api}"], False),  # main touched
        ("repo:push", p(branches=["main"]), NO_PIPELINES, [], [], True),
        (
            "repo:push",
            p(branches=["develop"], branches_created=["develop"]),
            ALL,
            ["branching_model"],
            ["{api}"],
            False,
        ),
        (
            "repo:push",
            p("{empty}", branches=["main"], branches_created=["main"]),
            ALL,
            ["repo", "restrictions"],
            ["{empty}"],
            False,
        ),
        ("repo:updated", p(), ALL, ["repo"], ["{api}"], False),
        ("repo:created", p("{new}"), ALL, ["repo_full"], ["{new}"], False),
        ("repo:imported", p("{new}"), ALL, ["repo_full"], ["{new}"], False),
        ("repo:transfer", p(), ALL, ["repo_full"], ["{api}"], False),
        ("repo:fork", p(fork_uuid="{fork}"), ALL, ["repo_full"], ["{fork}"], False),
        ("repo:deleted", p(), ALL, [], [], True),
        ("pullrequest:created", p(), ALL, ["pr_count"], [], False),
        ("pullrequest:fulfilled", p(), ALL, ["pr_count"], [], False),
        ("pullrequest:rejected", p(), ALL, ["pr_count"], [], False),
        ("pullrequest:approved", p(), ALL, [], [], True),
        ("repo:commit_status_updated", p(branches=["main"]), ALL, ["last_build"], ["{api}"], False),
        ("repo:commit_status_created", p(branches=["feature/x"]), ALL, [], [], True),
        ("project:updated", {"workspace": "acme", "project_key": "CORE"}, ALL, ["repos"], [], False),
        ("lp:classification", p(), ALL, [], ["{api}"], True),
        ("lp:evidence", {"workspace": "acme"}, ALL, [], [], True),
        ("lp:exception", {"workspace": "acme", "check": "repo-classified"}, ALL, [], [], True),
        ("lp:expiry", {"workspace": "acme", "check": "member-mfa-enabled"}, ALL, [], [], True),
        ("lp:personnel", {"workspace": "acme", "new_emails": []}, ALL, [], [], True),
        ("lp:personnel", {"workspace": "acme", "new_emails": ["x@y.z"]}, ALL, ["emails"], [], False),
        ("issue:created", p(), ALL, [], [], True),
    ],
)
def test_plan_table(
    key: str, payload: dict[str, Any], enabled: frozenset[str], fetch_kinds: list[str], repos: list[str], api_free: bool
) -> None:
    got = plan(key, payload, KNOWN, enabled)
    assert [f.kind for f in got.fetches] == fetch_kinds
    assert list(got.repos) == repos
    assert got.api_free is api_free


def test_deleted_retires_and_reconcile_is_a_tier() -> None:
    assert plan("repo:deleted", p(), KNOWN, ALL).retire == ("{api}",)
    assert plan("lp:reconcile", {"workspace": "acme", "tier": "members"}, KNOWN, ALL).tier == "members"
    assert plan("issue:created", p(), KNOWN, ALL).ignored


def test_planner_subscribes_only_to_what_it_uses() -> None:
    for key in USED_EVENTS:
        assert not plan(key, p("{new}", branches=["main"], fork_uuid="{f}"), {}, ALL).ignored


def test_coalesce_one_fetch_per_resource_and_full_subsumes() -> None:
    push = plan("repo:push", p(branches=["main"]), KNOWN, ALL)
    fetches, _ = coalesce([push] * 100)
    assert fetches == [Fetch("last_build", "acme", "{api}", "main")]
    full = Plan(fetches=(Fetch("repo_full", "acme", "{api}"),))
    fetches, _ = coalesce([push, plan("repo:updated", p(), KNOWN, ALL), full])
    assert [f.kind for f in fetches] == ["repo_full"]


LISTED = [KnownRepo("{api}", "main", slug="api"), KnownRepo("{empty}", None, slug="empty")]


@pytest.mark.parametrize(
    ("tier", "enabled", "fetches"),
    [
        (
            "full",
            ALL,
            [  # no open pull-request count: no test needs it (issue 13)
                ("restrictions", "{api}", None),
                ("pipelines", "{api}", "main"),
                ("pipelines", "{empty}", None),  # no main branch: no restrictions, Pipelines config only
                ("members", None, None),
            ],
        ),
        (
            "full",
            frozenset({"repo-classified"}),
            [],  # only what an enabled test needs
        ),
        (
            "full",
            NO_PIPELINES - MEMBER_CHECKS,
            [("restrictions", "{api}", None)],
        ),
        ("members", ALL, [("members", None, None)]),
    ],
)
def test_a_pass_is_a_plan_with_every_fetch(
    tier: str, enabled: frozenset[str], fetches: list[tuple[str, str | None, str | None]]
) -> None:
    got = full_pass("acme", tier, LISTED if tier == "full" else [], enabled)
    assert [(f.kind, f.repo_uuid, f.branch) for f in got.fetches] == fetches
    assert got.tier == tier
    # A pass names repositories by slug, as the listing gave them (the path Bitbucket logs).
    assert {f.ref for f in got.fetches if f.repo_uuid} <= {"api", "empty"}
    if tier == "full":
        assert got.workspace_checks and not got.checks and got.repos == ("{api}", "{empty}")
    else:
        assert got.members and got.checks == MEMBER_CHECKS and not got.workspace_checks

"""Pure protocol code: tables, no fakes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app import errors
from app.bitbucket import sansio
from tests.conftest import FIXTURES, fixture

VECTOR_SECRET = "It's a Secret to Everybody"
VECTOR_BODY = b"Hello World!"
VECTOR_SIG = "sha256=a4771c39fbe90f317c7824e83ddef3caae9cb3d976c214ace1f2937e133263c9"


def test_published_hmac_vector() -> None:
    assert sansio.sign(VECTOR_SECRET, VECTOR_BODY) == VECTOR_SIG
    sansio.verify_signature([VECTOR_SECRET], VECTOR_BODY, VECTOR_SIG)


@pytest.mark.parametrize(
    ("secrets", "body", "header", "error"),
    [
        ([VECTOR_SECRET], b"Hello World?", VECTOR_SIG, "does not match"),  # tampered body
        ([VECTOR_SECRET], VECTOR_BODY, None, "missing"),
        ([VECTOR_SECRET], VECTOR_BODY, "", "missing"),
        ([VECTOR_SECRET], VECTOR_BODY, VECTOR_SIG.replace("sha256=", "sha1="), "sha256="),  # wrong prefix
        (["another secret"], VECTOR_BODY, VECTOR_SIG, "does not match"),
        ([], VECTOR_BODY, VECTOR_SIG, "does not match"),
    ],
)
def test_signature_refusals(secrets: list[str], body: bytes, header: str | None, error: str) -> None:
    with pytest.raises(errors.SignatureError, match=error):
        sansio.verify_signature(secrets, body, header)


def test_signature_rotation_accepts_old_and_new() -> None:
    sansio.verify_signature(["new secret", VECTOR_SECRET], VECTOR_BODY, VECTOR_SIG)


@pytest.mark.parametrize(
    ("status", "headers", "body", "exc", "attr"),
    [
        (401, {}, b'{"type":"error","error":{"message":"no"}}', errors.AuthError, None),
        (
            403,
            {"X-Accepted-OAuth-Scopes": "repository:admin", "X-OAuth-Scopes": "repository, account"},
            b'{"type":"error","error":{"message":"scopes"}}',
            errors.ForbiddenError,
            ("required_scope", "repository:admin"),
        ),
        (403, {}, b"", errors.ForbiddenError, ("required_scope", None)),
        (404, {}, (FIXTURES / "api/error_drone-go-scm_testdata.json").read_bytes(), errors.NotFoundError, None),
        (410, {}, b"{}", errors.GoneError, None),
        (429, {"Retry-After": "7"}, b"Rate limit", errors.RateLimitedError, ("retry_after", 7.0)),
        (429, {}, b"Rate limit for this resource has been exceeded", errors.RateLimitedError, ("retry_after", None)),
        (500, {}, b"oops", errors.ServerError, None),
        (503, {}, b"", errors.ServerError, None),
        (400, {}, b'{"type":"error","error":{"message":"Invalid pagelen"}}', errors.BadRequestError, None),
    ],
)
def test_error_mapping(
    status: int, headers: dict[str, str], body: bytes, exc: type[Exception], attr: tuple[str, object] | None
) -> None:
    with pytest.raises(exc) as info:
        sansio.raise_for_status(status, headers, body, "ep")
    if attr:
        assert getattr(info.value, attr[0]) == attr[1]


def test_error_message_read_from_fixture() -> None:
    with pytest.raises(errors.NotFoundError, match="Repository dev/null not found"):
        sansio.raise_for_status(404, {}, (FIXTURES / "api/error_drone-go-scm_testdata.json").read_bytes(), "ep")


def test_success_is_quiet() -> None:
    sansio.raise_for_status(200, {}, b"{}", "ep")
    sansio.raise_for_status(204, {}, b"", "ep")


def test_page_and_scopes_and_rate_limit() -> None:
    page = sansio.parse_page({"values": [{"a": 1}], "next": "https://x/2", "size": 3, "pagelen": 1})
    assert page.next == "https://x/2" and page.size == 3 and page.values == [{"a": 1}]
    last = sansio.parse_page({"values": []})
    assert last.next is None and last.size is None
    with pytest.raises(errors.UnexpectedResponse):
        sansio.parse_page({"type": "error"})
    assert sansio.parse_scopes("repository:admin, account") == {"repository:admin", "account"}
    assert sansio.parse_scopes(None) is None
    rl = sansio.rate_limit(
        {"X-RateLimit-Limit": "1000", "X-RateLimit-NearLimit": "true", "X-RateLimit-Resource": "api"}
    )
    assert rl is not None and rl.limit == 1000 and rl.near_limit and rl.resource == "api"
    assert sansio.rate_limit({}) is None
    assert sansio.retry_after({"Retry-After": "abc"}) is None


def test_bbql_email_filter_escapes() -> None:
    assert sansio.bbql_email_filter(["a@x", 'q"u@y']) == 'user.email IN ("a@x","q\\"u@y")'


def _headers(key: str) -> dict[str, str]:
    return {"X-Event-Key": key, "X-Request-UUID": "req-1", "X-Hook-UUID": "{hook}", "X-Attempt-Number": "2"}


@pytest.mark.parametrize(
    ("name", "key", "branches", "created", "deleted"),
    [
        ("push_drone-go-scm_testdata.json", "repo:push", ("master",), (), ()),
        ("push_branch_create_drone-go-scm_testdata.json", "repo:push", None, "any", ()),
        ("push_branch_delete_drone-go-scm_testdata.json", "repo:push", ("develop",), (), ("develop",)),
        ("push_tag_create_drone-go-scm_testdata.json", "repo:push", (), (), ()),
        ("pr_created_drone-go-scm_testdata.json", "pullrequest:created", (), (), ()),
        ("pr_fulfilled_drone-go-scm_testdata.json", "pullrequest:fulfilled", (), (), ()),
        (
            "repo-commit-status-created_pipelines-2025_drone-go-scm_testdata.json",
            "repo:commit_status_created",
            None,
            (),
            (),
        ),
        (
            "repo-commit-status-updated_pipelines-2025_drone-go-scm_testdata.json",
            "repo:commit_status_updated",
            None,
            (),
            (),
        ),
    ],
)
def test_every_recorded_webhook_parses(
    name: str, key: str, branches: tuple[str, ...] | None, created: object, deleted: tuple[str, ...]
) -> None:
    raw = (FIXTURES / "webhooks" / name).read_bytes()
    payload = json.loads(raw)
    d = sansio.parse_delivery(_headers(key), raw)
    assert d.event_key == key and d.request_uuid == "req-1" and d.hook_uuid == "{hook}" and d.attempt == 2
    assert d.repository_uuid == payload["repository"]["uuid"]
    assert d.repository_full_name == payload["repository"]["full_name"]
    assert d.workspace == payload["repository"]["full_name"].split("/")[0]
    if branches is not None:
        assert d.branches == branches
    if created == "any":
        assert d.branches_created and d.branches_created == d.branches
    assert d.branches_deleted == deleted
    if key.startswith("pullrequest:"):
        assert d.pullrequest_id == payload["pullrequest"]["id"]
    # Nothing of the commit content survives: no message, no author line.
    dumped = d.model_dump_json()
    for change in payload.get("push", {}).get("changes", []):
        for commit in change.get("commits", []):
            assert commit["message"].strip() not in dumped
            assert commit["author"]["raw"] not in dumped


@pytest.mark.parametrize(
    ("headers", "body", "error"),
    [
        ({}, b"{}", "X-Event-Key"),
        ({"X-Event-Key": "nonsense"}, b"{}", "X-Event-Key"),
        ({"X-Event-Key": "repo:push", "X-Attempt-Number": "x"}, b"{}", "Attempt"),
        ({"X-Event-Key": "repo:push"}, b"not json", "not JSON"),
        ({"X-Event-Key": "repo:push"}, b"[1, 2]", "JSON object"),
        ({"X-Event-Key": "repo:push"}, b"\xff\xfe", "not JSON"),
    ],
)
def test_malformed_deliveries(headers: dict[str, str], body: bytes, error: str) -> None:
    with pytest.raises(errors.PayloadError, match=error):
        sansio.parse_delivery(headers, body)


def test_fixture_helper_reads_json() -> None:
    assert fixture("api/error_drone-go-scm_testdata.json")["type"] == "error"


@pytest.mark.parametrize("path", sorted((FIXTURES / "webhooks").glob("*.json")), ids=lambda p: p.name)
def test_delivery_fields_are_the_delivery_as_stored(path: Path) -> None:
    """The receiver stores ``delivery_fields`` without building a Delivery: once in JSON, the same
    values and field order as the model's own dump."""
    raw = path.read_bytes()
    headers = _headers("repo:push")
    fields = sansio.delivery_fields(headers, raw)
    model = sansio.parse_delivery(headers, raw)
    assert json.dumps(fields) == json.dumps(model.model_dump(mode="json"))


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32", "utf-8-sig"])
def test_a_delivery_in_another_json_encoding_still_parses(encoding: str) -> None:
    """The UTF-8 shortcut leaves every other encoding JSON allows to json.loads's own detection."""
    body = json.dumps({"repository": {"full_name": "acme/api", "uuid": "{r}"}}).encode(encoding)
    assert sansio.delivery_fields(_headers("repo:push"), body)["repository_full_name"] == "acme/api"


def test_invalid_utf8_behind_an_opening_brace_is_not_json() -> None:
    with pytest.raises(errors.PayloadError, match="not JSON"):
        sansio.delivery_fields(_headers("repo:push"), b'{"a": "\xff"}')


@pytest.mark.parametrize("odd", [None, 1, "x", "", [], {}, [{"uuid": "{u}"}], True])
def test_sub_objects_of_another_type_read_as_empty(odd: object) -> None:
    """A delivery whose sub-objects (repository, actor, pull request, changes, project, fork,
    push) are not objects still parses: each reads as empty, never as an error."""
    body = json.dumps(
        {k: odd for k in ("repository", "actor", "pullrequest", "changes", "project", "fork", "push", "commit_status")}
    ).encode()
    fields = sansio.delivery_fields(_headers("repo:push"), body)
    assert {k: v for k, v in fields.items() if k not in ("event_key", "request_uuid", "hook_uuid", "attempt")} == {
        "repository_uuid": None,
        "repository_full_name": None,
        "workspace": None,
        "actor_account_id": None,
        "branches": (),
        "branches_created": (),
        "branches_deleted": (),
        "pullrequest_id": None,
        "pullrequest_state": None,
        "changed_fields": (),
        "project_key": None,
        "fork_uuid": None,
    }


def test_the_repository_project_stands_in_for_a_missing_or_empty_project() -> None:
    repo = {"full_name": "acme/api", "project": {"key": "RP"}}
    for project in (None, {}, "P", {"key": "TOP"}):
        body = json.dumps({"repository": repo, "project": project}).encode()
        expected = "TOP" if project == {"key": "TOP"} else "RP"
        assert sansio.delivery_fields(_headers("repo:push"), body)["project_key"] == expected

"""Pure Bitbucket Cloud protocol code: pagination, error mapping, headers, webhook signatures.

No I/O here (gidgethub's sans-I/O style): the client feeds status, headers and bytes in and gets
values or exceptions out, so every rule is testable from tables.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import orjson

from app import errors
from app.models import Delivery

JsonObject = dict[str, Any]

# SPEC narrative "Pagination": a collection is {"values", "next"?, "size"?, "page"?, "pagelen"}.
# ``next`` is opaque and absent on the last page.


@dataclass(frozen=True)
class Page:
    """One page of a paginated collection."""

    values: list[JsonObject]
    next: str | None
    size: int | None
    pagelen: int | None


def parse_page(body: Any) -> Page:
    """Read a collection envelope; raise UnexpectedResponse when it is not one."""
    if not isinstance(body, dict) or not isinstance(body.get("values"), list):
        raise errors.UnexpectedResponse("expected a paginated collection with 'values'")
    nxt = body.get("next")
    size = body.get("size")
    pagelen = body.get("pagelen")
    return Page(
        values=[v for v in body["values"] if isinstance(v, dict)],
        next=nxt if isinstance(nxt, str) and nxt else None,
        size=size if isinstance(size, int) else None,
        pagelen=pagelen if isinstance(pagelen, int) else None,
    )


def build_url(base: str, path: str, params: Mapping[str, str | int] | None = None) -> str:
    """``base + path`` with a query string (values encoded; BBQL quotes survive)."""
    url = base.rstrip("/") + path
    if params:
        url += "?" + urlencode({k: str(v) for k, v in params.items()})
    return url


def json_body(data: bytes) -> Any:
    """Decode a JSON body or raise UnexpectedResponse (no body text in the message)."""
    try:
        return json.loads(data) if data else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise errors.UnexpectedResponse("response body is not JSON") from None


def _error(data: bytes) -> dict[str, Any]:
    """Bitbucket's ``error`` object (SPEC narrative "Standardized error responses"), or {}."""
    try:
        body = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    error = body.get("error") if isinstance(body, dict) else None
    return dict(error) if isinstance(error, dict) else {}


def _error_message(data: bytes) -> str:
    """Bitbucket's ``error.message``, else the start of a text body."""
    error = _error(data)
    if error:
        return str(error.get("message") or "no message")[:300]
    try:
        json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        text = data[:200].decode("utf-8", "replace").strip()
        return text or "no message"
    return "no message"


def parse_scopes(value: str | None) -> frozenset[str] | None:
    """``X-OAuth-Scopes: repository, account`` → {"repository", "account"}; None when absent.

    The header lists scopes as granted, without the ones they imply: see :func:`expand_scopes`."""
    if value is None:
        return None
    return frozenset(s.strip() for s in value.replace(" ", ",").split(",") if s.strip())


# SPEC narrative "Bitbucket OAuth 2.0 scopes": what each classic scope implicitly grants.
# (``repository:admin``, ``project:admin`` and ``webhook`` imply nothing.)
IMPLIED_SCOPES: dict[str, frozenset[str]] = {
    "repository:write": frozenset({"repository"}),
    "pullrequest": frozenset({"repository"}),
    "pullrequest:write": frozenset({"pullrequest", "repository", "repository:write"}),
    "project": frozenset({"repository"}),
    "project:write": frozenset({"project", "repository"}),
    "issue:write": frozenset({"issue"}),
    "snippet:write": frozenset({"snippet"}),
    "account:write": frozenset({"account"}),
    "pipeline:write": frozenset({"pipeline"}),
}


def expand_scopes(scopes: Iterable[str]) -> frozenset[str]:
    """The granted scopes with every scope they imply (transitively)."""
    out = set(scopes)
    todo = list(out)
    while todo:
        for implied in IMPLIED_SCOPES.get(todo.pop(), frozenset()):
            if implied not in out:
                out.add(implied)
                todo.append(implied)
    return frozenset(out)


SCOPE_ERROR_MESSAGE = "lack one or more required privilege scopes"


def _strings(value: Any) -> frozenset[str] | None:
    if isinstance(value, list):
        return frozenset(str(v) for v in value if isinstance(v, str) and v)
    if isinstance(value, str) and value.strip():
        return parse_scopes(value)
    return None


def forbidden(headers: Mapping[str, str], data: bytes, message: str, endpoint: str) -> errors.ForbiddenError:
    """Tell a missing scope from a missing permission in a 403.

    A scope 403 says "Your credentials lack one or more required privilege scopes." with
    ``error.detail = {"required": [...], "granted": [...]}`` (recorded); the scope headers
    (``X-Accepted-OAuth-Scopes``, ``X-OAuth-Scopes``) are used when present, ``detail`` when they
    are missing. Any other 403 (such as "… does not have admin access to the repository") is a
    permission the credential's user lacks, and no scope is guessed for it.
    """
    error = _error(data)
    raw_detail = error.get("detail")
    detail: dict[str, Any] = raw_detail if isinstance(raw_detail, dict) else {}
    needed = parse_scopes(headers.get("X-Accepted-OAuth-Scopes")) or _strings(detail.get("required"))
    raw_granted = parse_scopes(headers.get("X-OAuth-Scopes"))
    if raw_granted is None:
        raw_granted = _strings(detail.get("granted"))
    granted = expand_scopes(raw_granted or ())
    said_scope = SCOPE_ERROR_MESSAGE in str(error.get("message") or "") or "required" in detail
    if not said_scope and (not needed or raw_granted is None or needed <= granted):
        return errors.ForbiddenError(message, endpoint=endpoint, kind="permission")
    missing = sorted((needed or frozenset()) - granted) if raw_granted is not None else sorted(needed or ())
    return errors.ForbiddenError(
        message, endpoint=endpoint, required_scope=missing[0] if missing else None, kind="scope"
    )


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from ``Retry-After`` (delta-seconds form only), or None."""
    raw = headers.get("Retry-After")
    if raw is None:
        return None
    try:
        seconds = float(raw.strip())
    except ValueError:
        return None
    return max(0.0, min(seconds, 3600.0))


@dataclass(frozen=True)
class RateLimit:
    """Rate-limit headers; sent to access tokens only (blog: scaled rate limits)."""

    limit: int | None
    resource: str | None
    near_limit: bool


def rate_limit(headers: Mapping[str, str]) -> RateLimit | None:
    """``X-RateLimit-Limit``/``-Resource``/``-NearLimit`` when present."""
    if "X-RateLimit-Limit" not in headers and "X-RateLimit-NearLimit" not in headers:
        return None
    raw = headers.get("X-RateLimit-Limit")
    limit = int(raw) if raw and raw.strip().isdigit() else None
    near = headers.get("X-RateLimit-NearLimit", "false").strip().lower() == "true"
    return RateLimit(limit=limit, resource=headers.get("X-RateLimit-Resource"), near_limit=near)


def raise_for_status(status: int, headers: Mapping[str, str], data: bytes, endpoint: str) -> None:
    """Map an HTTP status to the error tree; return quietly for 2xx/3xx."""
    if status < 400:
        return
    message = f"{endpoint}: HTTP {status}: {_error_message(data)}"
    if status == 401:
        raise errors.AuthError(message, status=status, endpoint=endpoint)
    if status == 403:
        raise forbidden(headers, data, message, endpoint)
    if status == 404:
        raise errors.NotFoundError(message, status=status, endpoint=endpoint)
    if status == 410:
        raise errors.GoneError(message, status=status, endpoint=endpoint)
    if status == 429:
        raise errors.RateLimitedError(message, endpoint=endpoint, retry_after=retry_after(headers))
    if status >= 500:
        raise errors.ServerError(message, status=status, endpoint=endpoint)
    if status == 400:
        raise errors.BadRequestError(message, status=status, endpoint=endpoint)
    raise errors.BitbucketError(message, status=status, endpoint=endpoint)


def bbql_email_filter(emails: Iterable[str]) -> str:
    """``user.email IN ("a@x","b@y")`` for the members endpoint (BBQL, SPEC narrative "Filtering").

    Quotes and backslashes inside an address are escaped as BBQL string literals require.
    """
    quoted = ",".join('"' + e.replace("\\", "\\\\").replace('"', '\\"') + '"' for e in emails)
    return f"user.email IN ({quoted})"


# --- webhooks -------------------------------------------------------------------------------
# Bitbucket signs the raw body: X-Hub-Signature: sha256=<hex HMAC-SHA256(secret, body)>
# (support.atlassian.com "Manage webhooks", published vector in docs/bitbucket-facts.md).

SIGNATURE_PREFIX = "sha256="


def sign(secret: str | bytes, body: bytes) -> str:
    """The ``X-Hub-Signature`` value Bitbucket sends for ``body``."""
    key = secret.encode() if isinstance(secret, str) else secret
    return SIGNATURE_PREFIX + hmac.new(key, body, hashlib.sha256).hexdigest()


@functools.lru_cache(maxsize=64)
def _keyed(secret: str | bytes) -> hmac.HMAC:
    """An HMAC-SHA256 keyed with ``secret`` and fed nothing, to copy per delivery: keying costs
    about as much as hashing a delivery's body (bench/ingest_wrk.py, the receiver's hot path)."""
    return hmac.new(secret.encode() if isinstance(secret, str) else secret, digestmod=hashlib.sha256)


def verify_signature(secrets: Iterable[str | bytes], body: bytes, header: str | None) -> None:
    """Raise SignatureError unless ``header`` is a valid signature of ``body`` under any secret.

    Several secrets allow rotation; every comparison runs in constant time and all are tried.
    """
    if not header:
        raise errors.SignatureError("missing X-Hub-Signature")
    if not header.startswith(SIGNATURE_PREFIX):
        raise errors.SignatureError("X-Hub-Signature must start with sha256=")
    given = header.strip().encode()
    ok = False
    for secret in secrets:
        mac = _keyed(secret).copy()  # the key's HMAC state, set up once per secret (see _keyed)
        mac.update(body)
        ok |= hmac.compare_digest(b"sha256=" + mac.hexdigest().encode(), given)
    if not ok:
        raise errors.SignatureError("X-Hub-Signature does not match the body")


_EMPTY: JsonObject = {}  # read only


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def parse_delivery(headers: Mapping[str, str], body: bytes) -> Delivery:
    """Parse a verified delivery into a Delivery, keeping no commit message, author or diff.

    Raises PayloadError for missing headers or a body that is not a JSON object.
    """
    # model_construct: every value is already of the declared type.
    return Delivery.model_construct(**delivery_fields(headers, body))


def delivery_fields(headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
    """The fields of :func:`parse_delivery`'s Delivery as plain values, in declaration order (tuples
    where the model has tuples): what the receiver stores, without building a model on its hot path.
    """
    event_key = headers.get("X-Event-Key", "").strip()
    request_uuid = headers.get("X-Request-UUID", "").strip()
    # Deliveries name the hook by a bare uuid; the REST API (and so our records) braces it.
    hook_uuid = headers.get("X-Hook-UUID", "").strip().strip("{}")
    hook_uuid = "{" + hook_uuid + "}" if hook_uuid else ""
    if not event_key or ":" not in event_key or len(event_key) > 100:
        raise errors.PayloadError("missing or malformed X-Event-Key")
    if len(request_uuid) > 100 or len(hook_uuid) > 100:
        raise errors.PayloadError("X-Request-UUID or X-Hook-UUID too long")
    attempt_raw = headers.get("X-Attempt-Number", "1").strip() or "1"
    if not attempt_raw.isdigit():
        raise errors.PayloadError("X-Attempt-Number must be a number")
    try:
        payload = orjson.loads(body)  # several times faster than json on the receiver's hot path
    except orjson.JSONDecodeError:
        # What orjson refuses and json accepts (a lone surrogate escape, NaN, UTF-16) is decided as
        # before: by json. A UTF-8 object opens with "{" and no NUL: decoding it here spares
        # json.loads its encoding detection (anything else, UTF-16 say, takes json's own path).
        try:
            utf8 = body[:1] == b"{" and body[1:2] != b"\x00"
            payload = json.loads(body.decode("utf-8", "surrogatepass") if utf8 else body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise errors.PayloadError("body is not JSON") from None
    if not isinstance(payload, dict):
        raise errors.PayloadError("body is not a JSON object")

    # Every lookup below runs once per delivery (the receiver's hot path): a sub-object that is
    # not a dict reads as empty, a value that is not a non-empty string as None.
    repo = payload.get("repository")
    if not isinstance(repo, dict):
        repo = _EMPTY
    full_name = _str(repo.get("full_name"))
    slug_of = repo.get("workspace")
    workspace = _str(slug_of.get("slug")) if isinstance(slug_of, dict) else None
    if workspace is None and full_name and "/" in full_name:
        workspace = full_name.split("/", 1)[0]
    actor = payload.get("actor")
    actor_id = (_str(actor.get("account_id")) or _str(actor.get("uuid"))) if isinstance(actor, dict) else None

    branches: list[str] = []
    created: list[str] = []
    deleted: list[str] = []
    push = payload.get("push")
    if isinstance(push, dict) and isinstance(push.get("changes"), list):
        for change in push["changes"]:
            if not isinstance(change, dict):
                continue
            new, old = change.get("new"), change.get("old")
            ref = new if isinstance(new, dict) else old if isinstance(old, dict) else None
            if ref is None or ref.get("type") not in ("branch", "named_branch"):
                continue  # tags do not affect any test
            name = _str(ref.get("name"))
            if not name:
                continue
            branches.append(name)
            if change.get("created") or old is None:
                created.append(name)
            if change.get("closed") or new is None:
                deleted.append(name)
    pr = payload.get("pullrequest")
    if isinstance(pr, dict):
        pr_id = pr.get("id") if isinstance(pr.get("id"), int) else None
        pr_state = _str(pr.get("state"))
    else:
        pr_id = pr_state = None
    status = payload.get("commit_status")
    if isinstance(status, dict) and isinstance(status.get("refname"), str):
        branches.append(status["refname"])
    changes = payload.get("changes")
    project = payload.get("project")
    if not (isinstance(project, dict) and project):
        project = repo.get("project")
    fork = payload.get("fork")

    return {
        "event_key": event_key,
        "request_uuid": request_uuid,
        "hook_uuid": hook_uuid,
        "attempt": int(attempt_raw),
        "repository_uuid": _str(repo.get("uuid")),
        "repository_full_name": full_name,
        "workspace": workspace,
        "actor_account_id": actor_id,
        "branches": tuple(dict.fromkeys(branches)) if branches else (),
        "branches_created": tuple(dict.fromkeys(created)) if created else (),
        "branches_deleted": tuple(dict.fromkeys(deleted)) if deleted else (),
        "pullrequest_id": pr_id,
        "pullrequest_state": pr_state,
        "changed_fields": tuple(sorted(str(k) for k in changes)) if isinstance(changes, dict) and changes else (),
        "project_key": _str(project.get("key")) if isinstance(project, dict) else None,
        "fork_uuid": _str(fork.get("uuid")) if isinstance(fork, dict) else None,
    }

"""Every deliberate exception of the product, in one tree.

::

    LowerplaneError
    ├── ConfigError              bad setting or command line: one-line reason, exit status 2
    ├── BitbucketError           anything Bitbucket answered or failed to answer
    │   ├── EndpointNotAllowed   refused by the client's allow-list before any request was sent
    │   ├── AuthError            401: token missing, expired or revoked (after one refresh)
    │   ├── ForbiddenError       403: ``required_scope`` from X-Accepted-OAuth-Scopes when sent
    │   ├── NotFoundError        404
    │   ├── GoneError            410: the resource or API was removed
    │   ├── BadRequestError      400: we sent something Bitbucket refused
    │   ├── TransientError       worth retrying
    │   │   ├── RateLimitedError 429, ``retry_after`` seconds when Bitbucket sent it
    │   │   │   └── Deferred     a wait (Retry-After, budget) longer than the caller's DEFER_AFTER
    │   │   ├── ServerError      5xx
    │   │   └── TransportError   timeout, connection refused or reset
    │   └── UnexpectedResponse   a body we cannot read (not JSON, wrong shape)
    ├── TokenError               the token source could not produce or refresh a token
    └── WebhookError             a delivery we refuse
        ├── SignatureError       missing or wrong X-Hub-Signature (401)
        └── PayloadError         malformed body or headers (400)

Messages never contain a secret: callers pass URLs without credentials and never tokens.
"""

from __future__ import annotations


class LowerplaneError(Exception):
    """Root of the product's own exceptions."""


class ConfigError(LowerplaneError):
    """A setting or a command-line argument is invalid; the message is one line."""


class BitbucketError(LowerplaneError):
    """Bitbucket answered with an error, or could not be reached."""

    def __init__(self, message: str, *, status: int | None = None, endpoint: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.endpoint = endpoint


class EndpointNotAllowed(BitbucketError):
    """The request is outside the read-only allow-list; nothing was sent."""


class AuthError(BitbucketError):
    """401 Unauthorized."""


class ForbiddenError(BitbucketError):
    """403 Forbidden. ``kind`` tells a scope the credential lacks (``scope``; ``required_scope``
    names it when Bitbucket said which) from a permission its user lacks (``permission``: the
    scope is there but, say, the user is not an admin of the repository)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = 403,
        endpoint: str = "",
        required_scope: str | None = None,
        kind: str | None = None,
    ) -> None:
        super().__init__(message, status=status, endpoint=endpoint)
        self.required_scope = required_scope
        self.kind = kind or ("scope" if required_scope else "permission")


class NotFoundError(BitbucketError):
    """404 Not Found."""


class GoneError(BitbucketError):
    """410 Gone."""


class BadRequestError(BitbucketError):
    """400 Bad Request."""


class TransientError(BitbucketError):
    """A failure worth retrying."""


class RateLimitedError(TransientError):
    """429 Too Many Requests."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = 429,
        endpoint: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status=status, endpoint=endpoint)
        self.retry_after = retry_after


class Deferred(RateLimitedError):
    """Not sent, or not retried: the wait it needs (``retry_after``) is longer than the caller
    accepts (``bitbucket.client.DEFER_AFTER``); the caller re-queues its work for later."""


class ServerError(TransientError):
    """5xx from Bitbucket."""


class TransportError(TransientError):
    """Timeout or connection failure."""


class UnexpectedResponse(BitbucketError):
    """A response body we could not read."""


class TokenError(LowerplaneError):
    """No usable token: refresh failed or the credential was revoked."""


class WebhookError(LowerplaneError):
    """A webhook delivery we refuse."""


class SignatureError(WebhookError):
    """Missing or wrong X-Hub-Signature."""


class PayloadError(WebhookError):
    """Malformed webhook body or headers."""

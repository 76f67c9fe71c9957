"""Every deliberate exception of the product, in one tree.

::

    LowerplaneError                                             HTTP  exit
    ├── Problem                  an HTTP answer chosen by the handler (status, title, detail)
    ├── ConfigError              bad setting or command line: one-line reason   400   2
    ├── CsrfError                a form that expired or came from elsewhere     403   2
    ├── RecordError              bad input from a person (records, evidence)    400   2
    │   ├── TooLarge             an evidence file over LP_EVIDENCE_MAX_BYTES    413   2
    │   ├── BadUpload            not a multipart/form-data body                 400   2
    │   ├── NoMemberList         2SV report before the members were listed      409   2
    │   ├── UnknownSubject       no repository, member or workspace seen        422   2
    │   └── NotFound             no such repository, person, exception, ...     404   2
    ├── NoAlertChannel           a test alert with no channel configured        409   2
    ├── OAuthNotConfigured       connect without LP_OAUTH_CLIENT_ID/SECRET      503   2
    ├── ConnectRefused           an OAuth callback we refuse (state, session)   400   2
    ├── ConnectedUnreadable      tokens granted, but Bitbucket could not be read 502  1
    ├── DeliveryError            a channel refused or failed an alert           502   1
    ├── ResourcesUnreadable      an event's resources could not be read         503   1
    ├── BitbucketError           anything Bitbucket answered or failed to answer 502  1
    │   ├── EndpointNotAllowed   refused by the client's allow-list before any request was sent
    │   ├── AuthError            401: token missing, expired or revoked (after one refresh)
    │   ├── ForbiddenError       403: ``required_scope`` from X-Accepted-OAuth-Scopes when sent
    │   ├── NotFoundError        404
    │   ├── GoneError            410: the resource or API was removed
    │   ├── BadRequestError      400: we sent something Bitbucket refused
    │   ├── TransientError       worth retrying
    │   │   ├── RateLimitedError 429, ``retry_after`` seconds when Bitbucket sent it
    │   │   │   ├── Deferred     a wait (Retry-After, budget) longer than the caller's DEFER_AFTER
    │   │   │   └── GaveUp       only 429s for longer than the budget waits on: not retried
    │   │   ├── ServerError      5xx
    │   │   └── TransportError   timeout, connection refused or reset
    │   └── UnexpectedResponse   a body we cannot read (not JSON, wrong shape)
    ├── TokenError               the token source could not produce or refresh  502   1
    │   ├── TokenEndpointUnavailable  Bitbucket's token endpoint failed (also a ServerError)
    │   └── TokenRejected        the token endpoint refused the grant
    └── WebhookError             a delivery we refuse
        ├── SignatureError       missing or wrong X-Hub-Signature               401
        └── PayloadError         malformed body or headers                      400

Each class says what it maps to: ``http_status`` and ``title`` for the web app's one exception
handler (``app.web.problems.handle_error``: an RFC 9457 problem+json body), ``exit_code`` for the
CLI's one handler (``app.cli.main``: one line on stderr). Exceptions of the sandbox (a stand-in for
Bitbucket, not the product) and control flow private to one module are not part of this tree.
Messages never contain a secret: callers pass URLs without credentials and never tokens.
"""

from __future__ import annotations


class LowerplaneError(Exception):
    """Root of the product's own exceptions: what each maps to, in HTTP and on the command line."""

    http_status: int = 500
    title: str = "Internal error"
    exit_code: int = 1
    headers: dict[str, str] | None = None

    @property
    def detail(self) -> str:
        return str(self)


class Problem(LowerplaneError):
    """An HTTP answer a route chooses itself: ``status``, ``title`` and ``detail`` as given."""

    def __init__(self, status: int, title: str, detail: str = "", headers: dict[str, str] | None = None) -> None:
        super().__init__(detail or title)
        self.http_status = status
        self.title = title
        self._detail = detail
        self.headers = headers or {}

    @property
    def status(self) -> int:
        return self.http_status

    @property
    def detail(self) -> str:
        return self._detail


class ConfigError(LowerplaneError):
    """A setting or a command-line argument is invalid; the message is one line."""

    http_status = 400
    title = "Bad request"
    exit_code = 2


class CsrfError(LowerplaneError):
    """A form whose CSRF token is missing, expired or from another session."""

    http_status = 403
    title = "CSRF check failed"
    exit_code = 2

    def __init__(self, message: str = "The form expired or came from elsewhere (CSRF check). Reload the page.") -> None:
        super().__init__(message)


class RecordError(LowerplaneError):
    """Bad input from a person: one line that says where and what."""

    http_status = 400
    title = "Bad request"
    exit_code = 2


class TooLarge(RecordError):
    """An evidence file over the size limit (HTTP 413); raised while reading, before the rest."""

    http_status = 413
    title = "Evidence too large"

    def __init__(self, max_bytes: int) -> None:
        super().__init__(f"evidence is larger than {size_text(max_bytes)} (LP_EVIDENCE_MAX_BYTES)")
        self.max_bytes = max_bytes
        self.headers = {"Connection": "close"}


def size_text(n: int) -> str:
    """``10485760`` → ``10 MiB``; sizes that are not whole MiB or KiB in bytes."""
    for unit, factor in (("MiB", 1024 * 1024), ("KiB", 1024)):
        if n >= factor and n % factor == 0:
            return f"{n // factor} {unit}"
    return f"{n} bytes"


class BadUpload(RecordError):
    """Not a multipart/form-data body."""

    title = "Bad upload"


class NoMemberList(RecordError):
    """A 2SV report cannot be recorded before the first reconcile has listed the members."""

    http_status = 409
    title = "No member list yet"


class UnknownSubject(RecordError):
    """The named subject is no repository, member or workspace the product has seen."""

    http_status = 422
    title = "Unknown subject"


class UnknownWorkspace(RecordError):
    """A workspace filter naming no workspace the product knows (a misspelling must not read as a
    clean report); the message lists the known ones."""


class NotFound(RecordError):
    """What a person named does not exist (a repository, a person, an exception, a connection);
    ``title`` says what was looked for."""

    http_status = 404

    def __init__(self, message: str, *, title: str = "Not found") -> None:
        super().__init__(message)
        self.title = title


class NoAlertChannel(LowerplaneError):
    """A test alert was asked for while no channel (Slack, e-mail) is configured."""

    http_status = 409
    title = "No alert channel"
    exit_code = 2


class OAuthNotConfigured(LowerplaneError):
    """Connecting with OAuth needs LP_OAUTH_CLIENT_ID and LP_OAUTH_CLIENT_SECRET."""

    http_status = 503
    title = "OAuth is not configured"
    exit_code = 2


class ConnectRefused(LowerplaneError):
    """An OAuth callback refused before any token is asked for: no code or state, a state unknown,
    used, expired or begun in another browser session."""

    http_status = 400
    title = "Connection refused"
    exit_code = 2


class ConnectedUnreadable(LowerplaneError):
    """Bitbucket granted tokens but the user or the workspaces could not be read with them."""

    http_status = 502
    title = "Connected, but Bitbucket could not be read"


class DeliveryError(LowerplaneError):
    """A channel refused or failed a message (the outbox retries)."""

    http_status = 502
    title = "Alert delivery failed"


class ResourcesUnreadable(LowerplaneError):
    """Some resources an event needs could not be read (the rest of its batch was written)."""

    http_status = 503
    title = "Bitbucket resources unreadable"


class BitbucketError(LowerplaneError):
    """Bitbucket answered with an error, or could not be reached."""

    http_status = 502
    title = "Bitbucket error"

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


class GaveUp(RateLimitedError):
    """Not sent, or not retried: Bitbucket has answered this credential nothing but 429 for longer
    than the client waits (``bitbucket.client.GIVE_UP_AFTER``); the read fails (its results stay as
    they were, stale) instead of waiting pause after pause for as long as the 429s last."""


class ServerError(TransientError):
    """5xx from Bitbucket."""


class TransportError(TransientError):
    """Timeout or connection failure."""


class UnexpectedResponse(BitbucketError):
    """A response body we could not read."""


class TokenError(LowerplaneError):
    """No usable token: refresh failed or the credential was revoked."""

    http_status = 502
    title = "No usable Bitbucket token"


# RFC 6749 §5.2 error codes that mean the grant or the consumer is no longer valid: only these
# break a connection (a new authorization is needed).
PERMANENT_ERRORS = frozenset({"invalid_grant", "invalid_client", "unauthorized_client"})


class TokenEndpointUnavailable(TokenError, ServerError):
    """The token endpoint failed transiently (5xx, 429, timeout, network): retry later; the
    connection is not broken. A TransientError, so the client's retries apply to it too."""


class TokenRejected(TokenError):
    """The token endpoint refused the request with an OAuth error code (``code``)."""

    def __init__(self, message: str, code: str | None) -> None:
        super().__init__(message)
        self.code = code

    @property
    def permanent(self) -> bool:
        return self.code in PERMANENT_ERRORS


class WebhookError(LowerplaneError):
    """A webhook delivery we refuse."""


class SignatureError(WebhookError):
    """Missing or wrong X-Hub-Signature."""

    http_status = 401
    title = "Bad signature"


class PayloadError(WebhookError):
    """Malformed webhook body or headers."""

    http_status = 400
    title = "Bad delivery"

"""structlog set-up: console rendering on a terminal, JSON lines elsewhere; secrets redacted.

Redaction works twice: values under keys that name secrets (token, secret, password,
authorization, signature, code, cookie...) are replaced, and any string value that contains a
registered secret (``register_secret``) or a Bearer/Basic credential or ``user:pass@`` URL is
scrubbed. Settings register every secret they hold at start-up.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

REDACTED = "[redacted]"
_SECRET_KEY = re.compile(
    r"(token|secret|password|passwd|authorization|signature|cookie|api_key|^code$|refresh|credential)",
    re.IGNORECASE,
)
_PATTERNS = [
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"), r"\1 " + REDACTED),
    (re.compile(r"(?i)(\w+://)[^/\s:@]+:[^/\s@]+@"), r"\1" + REDACTED + "@"),
    (re.compile(r"(?i)(sha256=)[0-9a-f]{16,}"), r"\1" + REDACTED),
    (re.compile(r"(?i)([?&](?:code|access_token|refresh_token|client_secret|state)=)[^&\s]+"), r"\1" + REDACTED),
]
_known: set[str] = set()


def register_secret(value: str | None) -> None:
    """Scrub this exact value from every later log line (ignored when short or empty)."""
    if value and len(value) >= 6:
        _known.add(value)


def scrub(text: str) -> str:
    """Remove registered secrets and credential-looking substrings from ``text``."""
    for secret in _known:
        if secret in text:
            text = text.replace(secret, REDACTED)
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return text


def _redact_value(key: str, value: Any) -> Any:
    if isinstance(value, str):
        if _SECRET_KEY.search(key) and value:
            return REDACTED
        return scrub(value)
    if isinstance(value, dict):
        return {k: _redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(key, v) for v in value]
    if isinstance(value, BaseException):
        return scrub(f"{type(value).__name__}: {value}")
    return value


def redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: redact secret keys and scrub secret-looking values."""
    for key in list(event_dict):
        event_dict[key] = _redact_value(key, event_dict[key])
    return event_dict


def _scrub_rendered(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    # Tracebacks are rendered to a string by format_exc_info: scrub that string too.
    if isinstance(event_dict.get("exception"), str):
        event_dict["exception"] = scrub(event_dict["exception"])
    return event_dict


def configure(level: str = "info", *, json: bool | None = None) -> None:
    """Configure structlog once per process; ``json=None`` picks JSON unless stderr is a TTY."""
    use_json = not sys.stderr.isatty() if json is None else json
    renderer: Any = structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact,
            structlog.processors.format_exc_info,
            _scrub_rendered,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        # Resolve sys.stderr at each call: a stream captured at configure time may be closed later.
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )


def _stderr_logger(*_: Any) -> structlog.PrintLogger:
    return structlog.PrintLogger(file=sys.stderr)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A logger bound to a component name."""
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(component=name)
    return logger

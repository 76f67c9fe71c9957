"""SQL functions registered on every connection when it opens (never later: SQLite refuses to
register a function while a statement is active on the connection, which a shared connection
cannot rule out): the natural sort key of names ``lp_natkey`` ("User 2" before "User 10"; the
members table stores it, indexed, for the Members page) and ``lp_regexp`` (classification rules)."""

from __future__ import annotations

import re

_DIGITS = re.compile(r"\d+")


def natural_key(text: str | None) -> str:
    """A sort key comparing digit runs as numbers: "user 2" < "user 10"; case-insensitive."""
    if text is None:
        return ""
    return _DIGITS.sub(lambda m: m.group(0).lstrip("0").rjust(12, "0"), text.casefold())


def regexp(pattern: str, text: str | None) -> bool:
    """SQL ``lp_regexp(pattern, text)``: whether ``pattern`` matches at the start of ``text``."""
    return text is not None and re.match(pattern, text, re.DOTALL) is not None

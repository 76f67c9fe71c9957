"""The natural sort key of names ("User 2" before "User 10"), registered on every connection as
the SQL function ``lp_natkey`` (the members table stores it, indexed, for the Members page)."""

from __future__ import annotations

import re

_DIGITS = re.compile(r"\d+")


def natural_key(text: str | None) -> str:
    """A sort key comparing digit runs as numbers: "user 2" < "user 10"; case-insensitive."""
    if text is None:
        return ""
    return _DIGITS.sub(lambda m: m.group(0).lstrip("0").rjust(12, "0"), text.casefold())

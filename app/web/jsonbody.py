"""JSON request bodies with a nesting limit: too deep is a 400, never a 500.

Python's ``json`` decoder recurses once per nested array or object and raises ``RecursionError``
somewhere past a thousand levels (the depth depends on the stack), which Starlette's
``request.json()`` turns into a 500. No body this product accepts (a Bitbucket delivery, an API
request) nests anywhere near :data:`MAX_DEPTH`, so anything deeper is refused before decoding.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

from starlette.requests import Request

from app.web.problems import Problem

MAX_DEPTH = 512

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')  # a JSON string, escapes included
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


class TooDeep(ValueError):
    """The body nests arrays and objects deeper than the limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"JSON nested deeper than {limit} levels")


def too_deep(raw: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether the arrays and objects of ``raw`` nest deeper than ``limit``.

    Counting brackets is enough for the common case (fewer openers than the limit); otherwise
    strings are removed first so brackets inside them do not count. For a body that is not JSON
    the answer does not matter: decoding fails next anyway.
    """
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    return max(accumulate(_STEP[b] for b in brackets), default=0) > limit


def loads(raw: bytes, limit: int = MAX_DEPTH) -> Any:
    """Decode a JSON body; ``ValueError`` for anything that is not JSON within the depth limit."""
    if too_deep(raw, limit):
        raise TooDeep(limit)
    try:
        return json.loads(raw)  # JSONDecodeError and UnicodeDecodeError are ValueErrors
    except RecursionError:  # a stack smaller than the limit assumes: still the client's fault
        raise TooDeep(limit) from None


async def json_object(request: Request) -> dict[str, Any]:
    """The request's body as a JSON object, or a 400 problem."""
    try:
        body = loads(await request.body())
    except TooDeep as exc:
        raise Problem(400, "Bad body", str(exc)) from None
    except ValueError:
        raise Problem(400, "Bad body", "expected a JSON object") from None
    if not isinstance(body, dict):
        raise Problem(400, "Bad body", "expected a JSON object")
    return body

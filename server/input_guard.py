"""Input every store can keep: no U+0000 in any string of a request.

PostgreSQL's text and JSONB cannot hold the NUL character (SQLite can), so a name, key or payload with
one failed deep inside a write, as a 500 and only on one backend. It is refused up front instead, with
a 422, before anything is written, whatever the store.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request

from graphs.errors import InvalidInputError


async def reject_nul_characters(request: Request) -> None:
    """Called by every route's ``require(scope)`` dependency once the caller is authorized (a caller
    without access gets 401/403, not this 422). The body is read once (the route reuses it) and only
    scanned in full when its bytes contain a NUL escape at all."""
    if "\x00" in request.url.path:
        raise InvalidInputError("the path contains a NUL character (U+0000); no store can keep it")
    for key, value in request.query_params.multi_items():
        if "\x00" in key or "\x00" in value:
            raise InvalidInputError(f"query parameter {key!r} contains a NUL character (U+0000)", parameter=key)
    body = await request.body()
    if (b"\\u0000" in body or b"\x00" in body) and _holds_nul(body):
        raise InvalidInputError("the request body contains a NUL character (U+0000) in a string; no store can keep it")


def _holds_nul(body: bytes) -> bool:
    try:
        document = json.loads(body)
    except ValueError:
        return b"\x00" in body  # not JSON: the route refuses it anyway
    return _any_nul(document)


def _any_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_any_nul(k) or _any_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_any_nul(v) for v in value)
    return False

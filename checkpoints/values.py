"""Values every store can keep: the runtime's one check of what a caller hands it to keep (a journey's user
and context, a resume value, a message, a task's answer), so that such input is refused up front, before
anything is written, with one typed error (:class:`InvalidInputError`) on every backend.

What is refused, and why:

- a type JSON has no form for (``datetime``, ``Decimal``, ``UUID``, ``bytes``, ``set``, objects): the event
  log keeps JSON, and such a value failed in its write with a bare ``TypeError``;
- a dict key that is not a string (JSON keys are strings: ``{1: "a"}`` would come back as ``{"1": "a"}``);
- NaN and infinities: PostgreSQL's JSON refuses them, SQLite kept them, so the same input failed on one
  backend only;
- an integer outside what LangGraph's checkpoint serializer (msgpack) encodes, -2**63 to 2**64 - 1: it failed
  after the journey had run, as a ``TypeError``, with the journey left completed;
- a NUL character or a lone surrogate in a string or key: PostgreSQL's text cannot hold NUL, and a lone
  surrogate is not text (it has no UTF-8 form);
- nesting deeper than ``max_depth`` levels (the value itself is level 1): the serializers recurse, and a few
  hundred levels failed with a ``RecursionError``;
- with ``max_string_chars``, a string or key longer than that (the server sets it; in process there is none).

The server checks request bodies with its own limits and leaves integers to each field's schema: its OpenAPI
document is what a client may send, and it cannot bound every integer of a free-form object.

The server's request guard (``server/input_guard.py``) applies this same check to every JSON body.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from checkpoints.errors import InvalidInputError

_PATH_SHOWN = 6  # components of a refused value's location named in the message (first and last)
_INT_RANGE = (-(2**63), 2**64 - 1)


@dataclass(frozen=True, slots=True)
class ValueLimits:
    """How deep a value may nest, (when set) how long its strings and keys may be, and whether integers must
    fit 64 bits."""

    max_depth: int = 64
    max_string_chars: int | None = None
    # The server leaves integers to each field's schema (its OpenAPI document states what it takes).
    bounded_integers: bool = True


DEFAULT_LIMITS = ValueLimits()


def check_value(value: Any, where: str, *, limits: ValueLimits = DEFAULT_LIMITS, subject: str = "") -> None:
    """Refuse ``value`` with :class:`InvalidInputError` naming where in it (``where``, then the path inside,
    e.g. ``context.items[3]``) the first value no store can keep is; see the module's docstring. ``subject``
    starts the message (e.g. "the request body at")."""
    try:
        _check(value, 1, limits)
    except _Refused as refused:
        location = _location(where, list(reversed(refused.path)))
        raise InvalidInputError(
            f"{subject + ' ' if subject else ''}{location} {refused.problem}", location=location, **refused.details
        ) from None


class _Refused(Exception):
    """A value refused by :func:`_check`; ``path`` collects its location (innermost first) on the way out."""

    def __init__(self, problem: str, **details: Any) -> None:
        self.problem = problem
        self.details = details
        self.path: list[Any] = []


def _check(value: Any, depth: int, limits: ValueLimits) -> None:
    if isinstance(value, str):
        _check_string(value, limits)
    elif value is None or isinstance(value, bool):
        return
    elif isinstance(value, int):
        if limits.bounded_integers and not _INT_RANGE[0] <= value <= _INT_RANGE[1]:
            raise _Refused("is an integer out of range; integers must lie between -2**63 and 2**64 - 1")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise _Refused("is a number too large for a double, or NaN; numbers must be finite")
    elif isinstance(value, dict):
        _check_depth(depth, limits)
        for key, item in value.items():
            try:
                _check_key(key, limits)
                _check(item, depth + 1, limits)
            except _Refused as refused:
                refused.path.append(key)
                raise
    elif isinstance(value, list | tuple):
        _check_depth(depth, limits)
        for index, item in enumerate(value):
            try:
                _check(item, depth + 1, limits)
            except _Refused as refused:
                refused.path.append(index)
                raise
    else:
        raise _Refused(
            f"is of type {type(value).__name__}, which has no JSON form; use a string, number, boolean, null, "
            "list or object (a date as its ISO text, say)"
        )


def _check_key(key: Any, limits: ValueLimits) -> None:
    if not isinstance(key, str):
        raise _Refused(f"has a key of type {type(key).__name__}; object keys must be strings")
    _check_string(key, limits)


def _check_depth(depth: int, limits: ValueLimits) -> None:
    if depth > limits.max_depth:
        raise _Refused(f"nests deeper than {limits.max_depth} levels", limit=limits.max_depth)


def _check_string(text: str, limits: ValueLimits) -> None:
    if limits.max_string_chars is not None and len(text) > limits.max_string_chars:
        raise _Refused(f"is a string of {len(text)} characters, over the limit of {limits.max_string_chars}")
    if "\x00" in text:
        raise _Refused("contains a NUL character (U+0000); no store can keep it")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise _Refused("contains a lone surrogate (\\ud800-\\udfff), which is not text") from None


def _location(where: str, path: list[Any]) -> str:
    """``context.items[0]``, eliding the middle of a deep path; keys shown ASCII-escaped and short (the key
    may itself be what was refused)."""
    parts = [f"[{p}]" if isinstance(p, int) else f".{_short(p)}" for p in path]
    if len(parts) > 2 * _PATH_SHOWN:
        parts = [*parts[:_PATH_SHOWN], f"…{len(parts) - 2 * _PATH_SHOWN} levels…", *parts[-_PATH_SHOWN:]]
    return where + "".join(parts)


def _short(key: Any) -> str:
    text = key if isinstance(key, str) else repr(key)
    shown = ascii(text[:40])[1:-1]
    return shown + "…" if len(text) > 40 else shown

"""Input every store can keep, refused up front with the same answer whatever the backend.

Every API route is a :class:`GuardedRoute`: before FastAPI reads and parses a request for its route, the
route, in this order,

1. refuses a body whose ``Content-Length`` is over the limit (413), unread;
2. authorizes the caller (401/403), so a caller without access never has a body read or parsed;
3. refuses NUL characters in the path or query (422);
4. reads the body, counting it against the limit while it streams (413), and hands it to the route;
5. checks a JSON body in full (:func:`check_json`): valid UTF-8 and JSON (400), then every value in it as
   the runtime checks what it is handed in process (``checkpoints.values``), with the server's limits: no
   nesting deeper than the limit, no string or key longer than the limit, no lone surrogate and no NUL
   character in any string or key, no NaN, Infinity or number too large for a double (422).

Why each: PostgreSQL's text and JSONB cannot hold NUL, lone surrogates cannot be encoded as UTF-8 and
JSONB has no NaN, so such input failed deep inside a write, as a 500, after part of it was stored, and
only on one backend; a document nested some 250 levels makes LangGraph's serializers fail mid-run.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.requests import ClientDisconnect
from starlette.types import Message

from checkpoints.values import ValueLimits, check_value
from graphs.errors import InvalidInputError
from server.auth import Require, authorize
from server.problems import ApiError
from server.settings import InputLimits

SUBJECT = "the request body at"  # a refused value's message: "the request body at body.input.x contains …"


class GuardedRoute(APIRoute):
    """An API route whose request is authorized and checked (see the module) before FastAPI reads it."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        scopes = [d.call.scope for d in self.dependant.dependencies if isinstance(d.call, Require)]

        async def guarded(request: Request) -> Response:
            limits: InputLimits = request.app.state.settings.limits
            refuse_declared_oversize(request, limits)
            for scope in scopes:
                await authorize(request, scope)
            refuse_nul_in_url(request)
            if self.body_field is None:
                return await handler(request)
            body = await read_body(request, limits)
            document = check_json(body, limits) if body and _is_json(request) else _UNPARSED
            return await handler(CheckedRequest(request, body, document, limits))

        return guarded


def content_too_large(limits: InputLimits) -> ApiError:
    return ApiError(
        413, "ContentTooLarge", f"the request body is over {limits.max_body_bytes} bytes", limit=limits.max_body_bytes
    )


def refuse_declared_oversize(request: Request, limits: InputLimits) -> None:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limits.max_body_bytes:
        raise content_too_large(limits)


async def read_body(request: Request, limits: InputLimits) -> bytes:
    """The body, counted while it streams in (chunked, or longer than it said): 413 past the limit; a client
    gone before its last byte (or cut off for sending too slowly: server/connections.py) is a 400 nobody reads,
    not a server error with a traceback."""
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limits.max_body_bytes:
                raise content_too_large(limits)
            chunks.append(chunk)
    except ClientDisconnect:
        raise ApiError(400, "ClientDisconnected", f"the client went away after {size} bytes of its body") from None
    return b"".join(chunks)


class CheckedRequest(Request):
    """A request whose body its route read and checked already: FastAPI gets the same bytes, and the
    checked document instead of parsing them a second time (what it validates is what was checked)."""

    def __init__(self, request: Request, body: bytes, document: Any, limits: InputLimits) -> None:
        delivered = False

        async def receive() -> Message:
            nonlocal delivered
            if delivered:
                return await request.receive()  # after the body: only the disconnect is left to wait for
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        super().__init__(request.scope, receive)
        self._checked_document = document
        self._limits = limits

    async def json(self) -> Any:
        if self._checked_document is _UNPARSED:  # a body FastAPI reads as JSON though its type said otherwise
            self._checked_document = check_json(await self.body(), self._limits)
        return self._checked_document


def refuse_nul_in_url(request: Request) -> None:
    # Read off the scope: request.url would build the whole URL (its host parsed) for every request.
    if "\x00" in request.scope["path"]:
        raise InvalidInputError("the path contains a NUL character (U+0000); no store can keep it")
    query = request.scope.get("query_string", b"")
    if b"\x00" not in query and b"%00" not in query:  # a query's NUL is one of these two, as sent
        return
    for key, value in request.query_params.multi_items():
        if "\x00" in key or "\x00" in value:
            raise InvalidInputError(f"query parameter {key!r} contains a NUL character (U+0000)", parameter=key)


_UNPARSED = object()


def _is_json(request: Request) -> bool:
    """Whether FastAPI parses this request's body as JSON (a JSON content type: it is strict about it)."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    return media_type == "application/json" or media_type.endswith("+json")


class _NonFinite(ValueError):
    pass


def _non_finite(literal: str) -> Any:
    raise _NonFinite(literal)


def check_json(body: bytes, limits: InputLimits) -> Any:
    """The document ``body`` holds, if every store can keep it within ``limits``; else a typed error:
    ``MalformedRequest`` (400) for a body that is not UTF-8 JSON, :class:`InvalidInputError` (422)
    naming where the refused value is."""
    try:
        text = body.decode("utf-8")  # strict: no raw surrogates, no other encodings
    except UnicodeDecodeError as exc:
        raise ApiError(400, "MalformedRequest", f"the request body is not UTF-8 (byte {exc.start})") from None
    overflowed = False

    def parse_float(literal: str) -> float:  # 1e400 parses as infinity: check_value then says where it is
        nonlocal overflowed
        number = float(literal)
        overflowed = overflowed or math.isinf(number)
        return number

    try:
        document = json.loads(text, parse_constant=_non_finite, parse_float=parse_float)
    except _NonFinite as exc:
        raise InvalidInputError(f"the request body holds {exc}; numbers must be finite") from None
    except RecursionError:
        raise InvalidInputError(
            f"{SUBJECT} body nests deeper than {limits.max_depth} levels", location="body", limit=limits.max_depth
        ) from None
    except json.JSONDecodeError as exc:
        raise ApiError(400, "MalformedRequest", f"the request body is not valid JSON ({exc})") from None
    except ValueError as exc:  # an integer literal of more digits than Python converts
        raise InvalidInputError(f"the request body holds a number out of range ({exc})") from None
    if overflowed or not _keepable_as_written(text, limits):
        body_limits = ValueLimits(limits.max_depth, limits.max_string_chars, bounded_integers=False)
        check_value(document, "body", limits=body_limits, subject=SUBJECT)
    return document


def _keepable_as_written(text: str, limits: InputLimits) -> bool:
    """Whether the JSON ``text`` (strict UTF-8, parsed, no infinity parsed from it) proves that
    :func:`check_value` would find nothing in its document, so that walking every value of a request's body
    is spared (~60 us of a run request, most of its check). A NUL or a lone surrogate reaches a string only as a ``\\u``
    escape (JSON refuses raw control characters; strict UTF-8, encoded surrogates); no string or key is longer
    than the text; no value nests deeper than the objects and arrays the text opens."""
    return (
        "\\u" not in text
        and len(text) <= limits.max_string_chars
        and text.count("{") + text.count("[") <= limits.max_depth
    )

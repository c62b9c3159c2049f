"""Errors as RFC 9457 ``application/problem+json``, with a stable ``type`` per error class.

A :class:`JourneyError` is reported by its ``category``: invalid → 422, not_found → 404, conflict → 409,
forbidden → 403, failed → 424 (an agent or step the operation depended on failed). Malformed JSON is a
400, a body that does not match the schema a 422; bad input never becomes a 500.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException
from starlette.routing import Match

from checkpoints.database import DATABASE_ERRORS, OUTAGE, database_conflict, lost_database
from checkpoints.errors import ErrorCategory, JourneyError, StoreError
from checkpoints.redaction import redact, redact_envelope

log = structlog.get_logger("journeys.server")
RETRY_LATER = {"Retry-After": "5"}  # seconds a client waits before retrying while the database is away
PROBLEM_JSON = "application/problem+json"
ALLOWABLE = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
STATUS_BY_CATEGORY = {"invalid": 422, "not_found": 404, "conflict": 409, "forbidden": 403, "failed": 424}
TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    422: "Unprocessable Content",
    424: "Failed Dependency",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


# The fields the server's answers own (Agent Server objects, checkpoints, stream envelopes, journey views,
# problems): a journey spec's ``sensitive`` marks never blank them, whatever names it marks. Any other field is
# taken for journey values.
PROTOCOL_FIELDS = frozenset(
    {
        *("assistant_id", "graph_id", "thread_id", "run_id", "cron_id", "instance_id", "journey_id", "task_id"),
        *("status", "created_at", "updated_at", "metadata", "version", "name", "description", "multitask_strategy"),
        *("cancel_reason", "schedule", "timezone", "end_time", "next_run_date", "on_run_completed", "user_id"),
        *("checkpoint", "parent_checkpoint", "checkpoint_ns", "checkpoint_id", "next", "tasks", "id", "source"),
        *("step", "parents", "pattern", "attempt", "type", "event_id", "seq", "method", "params", "namespace"),
        *("title", "detail", "code", "category", "key"),
    }
)


def redact_answer(content: Any) -> Any:
    """An answer of the server (or a stream's envelope) as it may be shown: secrets redacted everywhere, spec
    marks only in the journey values it carries (:func:`checkpoints.redaction.redact_envelope`)."""
    return redact_envelope(content, PROTOCOL_FIELDS)


# The events whose data is the server's own (a stream's opening, its end, an error, the run's checkpoints and
# tasks, a thread's state): redacted as an answer. Every other mode's chunk (values, updates, custom, messages)
# is journey values.
ENVELOPE_EVENTS = frozenset({"metadata", "end", "error", "checkpoints", "tasks", "debug", "events", "state_update"})


def shown(event: str, data: Any) -> Any:
    """An event's data as it may be shown: redacted like every answer of the server (checkpoints.redaction).
    The run's process stores its chunks so (it knows its design's marks; the API process may not), and
    every frame is redacted again as it is sent."""
    return redact_answer(data) if event.split("|")[0] in ENVELOPE_EVENTS else redact(data)


class RedactedJSONResponse(JSONResponse):
    """Every JSON answer of the server: secrets and personal data redacted (:mod:`checkpoints.redaction`)."""

    def render(self, content: Any) -> bytes:
        return super().render(redact_answer(content))


class JourneyValuesResponse(JSONResponse):
    """An answer that is a journey's values and nothing else (a run's output): redacted as journey values, so
    a field the journey's spec marks is blank even where it shares a name with a protocol field."""

    def render(self, content: Any) -> bytes:
        return super().render(redact(content))


class Problem(BaseModel):
    """An error report (RFC 9457)."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str
    code: str
    category: str | None = None
    details: dict[str, Any] | None = None


class ApiKeysError(JourneyError):
    """The API keys are not valid."""

    category: ClassVar[ErrorCategory] = "invalid"


class LoginRequired(JourneyError):
    """The dashboard needs an API key first (none in its cookie, or one the server does not know): its pages
    answer with the login form instead (server/ui/pages.py)."""

    category: ClassVar[ErrorCategory] = "forbidden"

    def __init__(self, next_path: str) -> None:
        super().__init__("log in with an API key")
        self.next_path = next_path


class InsecureServeError(JourneyError):
    """The server would be open to every caller beyond this machine."""

    category: ClassVar[ErrorCategory] = "invalid"


class EmbeddedServerRunningError(JourneyError):
    """Another server executes this database's runs in embedded mode: a second would execute them too."""

    category: ClassVar[ErrorCategory] = "conflict"


class WorkerStoppedError(JourneyError):
    """The worker executing this run was stopped (a stop signal) before the run ended, and its grace period
    is over: the run is handed to another worker, which finishes it as after a crash."""


class AuthenticatorError(JourneyError):
    """``--auth`` (or ``Settings.authenticator``) names no factory of an Authenticator, or gives no
    Authenticator."""

    category: ClassVar[ErrorCategory] = "invalid"


class PluginNotFoundError(JourneyError):
    """``--plugin`` names a module that cannot be imported, or a function the module does not have."""

    category: ClassVar[ErrorCategory] = "invalid"


class ApiError(JourneyError):
    """The request cannot be served."""

    def __init__(self, status: int, code: str, message: str, **details: Any) -> None:
        super().__init__(message, **details)
        self.status = status
        self._code = code

    @property
    def code(self) -> str:
        return self._code


def problem_type(code: str) -> str:
    return f"/problems/{code}"


def problem(
    status: int,
    code: str,
    detail: str,
    *,
    category: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": problem_type(code),
        "title": TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "code": code,
        "category": category,
    }
    body.update({k: v for k, v in extra.items() if v is not None})
    if status == 401:
        headers = {**(headers or {}), "WWW-Authenticate": 'ApiKey header="x-api-key"'}
    return RedactedJSONResponse(
        json.loads(json.dumps(body, default=str)), status, media_type=PROBLEM_JSON, headers=headers
    )


def allowed_methods(request: Request) -> str:
    """The ``Allow`` of a 405 (RFC 9110): every method some route serves at the request's path. Starlette
    names only the methods of the first route that matched the path, though several may share it."""
    scope = {"type": "http", "path": request.scope["path"], "root_path": request.scope.get("root_path", "")}
    routes = request.app.router.routes
    methods = [m for m in ALLOWABLE if any(r.matches({**scope, "method": m})[0] is Match.FULL for r in routes)]
    return ", ".join(methods)


def journey_error_response(exc: JourneyError) -> JSONResponse:
    if isinstance(exc, ApiError):
        return problem(exc.status, exc.code, exc.message, details=exc.details or None)
    status = 503 if isinstance(exc, StoreError) and exc.category == "failed" else STATUS_BY_CATEGORY[exc.category]
    headers = RETRY_LATER if status == 503 else None
    return problem(status, exc.code, exc.message, category=exc.category, headers=headers, details=exc.details or None)


# A field typed None is one the Agent Server API has and this server does not serve (a thread's or an item's ttl,
# supersteps): pydantic's "Input should be None" would not tell the client that, nor what to do.
_UNSERVED = "not supported by this server: leave it out (or null); see the field's description in /openapi.json"


def _said(error: Mapping[str, Any]) -> str:
    """What a request validation error tells the client."""
    return _UNSERVED if error.get("type") == "none_required" else str(error.get("msg", "invalid"))


INTERNAL_ERROR = "InternalError"
INTERNAL_MESSAGE = "the server failed to handle the request"


def unexpected_error(exc: Exception) -> JourneyError | None:
    """The typed error to answer for ``exc``, an error no layer typed, logged: a database error raised by a
    layer that did not say so itself is an outage (503, to be retried: not this request's fault, nor the
    server's) or a conflict (409, to retry); None for anything else, the server's fault (logged as such)."""
    lost = lost_database(exc)
    if lost is not None:
        OUTAGE.say_away("request", lost.message)
        return lost
    if (conflict := database_conflict(exc)) is not None:
        return conflict
    log.error("unhandled error", error=repr(exc))
    return None


def install_problem_handlers(app: FastAPI) -> None:
    async def on_journey_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, JourneyError)
        return journey_error_response(exc)

    async def on_validation_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return problem(400, "MalformedRequest", "the request body is not valid JSON")
        problems = [f"{'.'.join(str(p) for p in e.get('loc', ())) or '(root)'}: {_said(e)}" for e in errors]
        return problem(422, "RequestValidationError", "; ".join(problems), category="invalid", problems=problems)

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        codes = {401: "Unauthenticated", 403: "Forbidden", 404: "NotFound", 405: "MethodNotAllowed"}
        headers = {"Allow": allowed_methods(request)} if exc.status_code == 405 else None
        return problem(
            exc.status_code, codes.get(exc.status_code, f"Http{exc.status_code}"), str(exc.detail), headers=headers
        )

    async def on_unexpected(_request: Request, exc: Exception) -> JSONResponse:
        said = unexpected_error(exc)
        return journey_error_response(said) if said is not None else problem(500, INTERNAL_ERROR, INTERNAL_MESSAGE)

    # Handled as errors of their own (not by the catch-all, which ends the connection): the client retries.
    for database_error in DATABASE_ERRORS:
        app.add_exception_handler(database_error, on_unexpected)

    app.add_exception_handler(JourneyError, on_journey_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)

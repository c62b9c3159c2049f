"""How the server and its workers log: tracebacks without local variables, every value bounded.

structlog's default console renderer prints a rich traceback with every frame's local variables. One run
whose input nested 255 levels failed deep inside LangGraph, and rendering that traceback on the event
loop blocked every request for 46 s, wrote up to 75 MB to the log and copied the secrets in the input
into it 34 times. Here a traceback is plain (no locals), each of its lines is cut at a bound, and so is
every value of an event: rendering an event costs the same whatever a request carried.
"""

from __future__ import annotations

import io
import logging
import os
import reprlib
import sys
import time
import traceback
from collections.abc import MutableMapping
from typing import Any, Literal, TextIO

import structlog
from structlog.typing import ExcInfo, Processor

from checkpoints.database import OUTAGE, unreachable
from checkpoints.redaction import redact_field
from server.problems import PROTOCOL_FIELDS

LogFormat = Literal["auto", "json", "console"]
LOG_FORMATS = ("auto", "json", "console")

MAX_VALUE_CHARS = 2000  # an event's value, and a traceback's line
MAX_TRACEBACK_LINES = 400  # a deep recursion keeps its first and last frames
_SCALARS = (bool, int, float, type(None))


def _bounded_repr() -> reprlib.Repr:
    shown = reprlib.Repr()
    shown.maxlevel = 4
    shown.maxdict = shown.maxlist = shown.maxtuple = shown.maxset = 20
    shown.maxstring = shown.maxother = MAX_VALUE_CHARS // 4
    return shown


_REPR = _bounded_repr()


def _cut(text: str) -> str:
    if len(text) <= MAX_VALUE_CHARS:
        return text
    return f"{text[:MAX_VALUE_CHARS]}… ({len(text) - MAX_VALUE_CHARS} more characters)"


def redacted_values(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A structlog processor: secrets and personal data redacted (:func:`checkpoints.redaction.redact`); a
    line's own fields (its ids, status: the server's protocol fields) as in an API answer, whatever a spec
    marks sensitive."""
    for key, value in event.items():
        if key != "exc_info" and not isinstance(value, _SCALARS):
            event[key] = redact_field(key, value, PROTOCOL_FIELDS)
    return event


def bounded_values(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A structlog processor: strings cut at ``MAX_VALUE_CHARS``, other values shown by a bounded repr
    (a huge or deeply nested value costs no more than a small one). ``exc_info`` is left to the renderer."""
    for key, value in event.items():
        if key == "exc_info" or isinstance(value, _SCALARS):
            continue
        event[key] = _cut(value) if isinstance(value, str) else _REPR.repr(value)
    return event


def plain_bounded_traceback(sio: TextIO, exc_info: ExcInfo) -> None:
    """A structlog exception formatter: the standard traceback (no local variables), each line cut at
    ``MAX_VALUE_CHARS`` and the whole at ``MAX_TRACEBACK_LINES`` lines."""
    lines = "".join(traceback.format_exception(*exc_info)).splitlines()
    if len(lines) > MAX_TRACEBACK_LINES:
        half = MAX_TRACEBACK_LINES // 2
        lines = [*lines[:half], f"… {len(lines) - 2 * half} lines …", *lines[-half:]]
    sio.write("\n" + "\n".join(_cut(line) for line in lines) + "\n")


def json_traceback(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A structlog processor for JSON lines: ``exc_info`` becomes ``exception``, the text
    :func:`plain_bounded_traceback` writes (no local variables, bounded)."""
    exc_info = event.pop("exc_info", None)
    if exc_info:
        if not isinstance(exc_info, tuple):
            exc_info = sys.exc_info() if exc_info is True else (type(exc_info), exc_info, exc_info.__traceback__)
        if exc_info[0] is not None:
            text = io.StringIO()
            plain_bounded_traceback(text, exc_info)
            event["exception"] = text.getvalue().strip("\n")
    return event


class OutageNoise(logging.Filter):
    """Keeps the libraries' lines about the database being away to what an operator needs: the outage is
    ours to say (the worker's "database unavailable", then "database available again"). procrastinate logs a
    traceback for each of its worker's side tasks that the outage ended (the worker then stops, and ours
    starts it again once the database answers); psycopg's pool logs "error connecting" at every attempt.
    Dropped: those side-task lines, and every "error connecting" but the first since the database last
    answered (its reason, such as a refused password, is kept); the pool's "discarding closed connection"
    but the first of a burst (an outage ends every pooled connection at once); asyncio's "Task exception was
    never retrieved" for a procrastinate job task that could not save the job's end (the job is retried as
    stalled). A job the outage cut short keeps its line and its reason, without its traceback. Any other
    line, and every line about an error other than the database being unreachable, passes: a job that fails
    after recovery still shows."""

    def __init__(self) -> None:
        super().__init__()
        self.forget()

    def forget(self) -> None:
        """Show the next line of each kind again: what was shown before logging was configured anew is not."""
        self._refusal_shown: float | None = None  # when the last "error connecting" shown was logged
        self._discard_shown = float("-inf")  # when the last "discarding ... connection" shown was logged

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "psycopg.pool" and record.msg in _DISCARDED:  # a connection the outage ended
            now = time.monotonic()
            if now - self._discard_shown < DISCARD_BURST_S:
                return False  # its first is shown: the rest of the pool went with it
            self._discard_shown = now
            return True
        error = record.exc_info[1] if record.exc_info else None
        error = error or next((a for a in (record.args or ()) if isinstance(a, BaseException)), None)
        if error is None or unreachable(error) is None:
            return True
        if record.name.startswith("procrastinate."):
            action = getattr(record, "action", None)
            if action in _JOB_ERROR_ACTIONS:  # a job the outage cut short: its line and the reason, no traceback
                record.msg, record.args = f"{record.getMessage()} (the database went away: {unreachable(error)})", None
                record.exc_info = record.exc_text = None
            return action not in _SIDE_TASK_ACTIONS
        if record.name == "asyncio":  # procrastinate's job task whose end could not be saved: retried as stalled
            return False
        if record.name == "psycopg.pool":
            if self._refusal_shown is not None and OUTAGE.answered < self._refusal_shown:
                return False  # the database has not answered since the last one shown
            self._refusal_shown = time.monotonic()
        return True


# procrastinate's worker's lines about its side tasks (heartbeat, deferrer, abort poller, listener) failing.
_SIDE_TASK_ACTIONS = frozenset(
    {
        "side_task_failed",
        "side_task_monitor_failed",
        *(f"{task}_error" for task in ("update_heartbeats", "deferrer", "poll_jobs_to_abort", "listener")),
    }
)
# psycopg's pool's line per pooled connection found ended (each one an outage ended, returned or checked).
_DISCARDED = frozenset({"discarding closed connection: %s", "discarding broken connection: %s"})
DISCARD_BURST_S = 60.0  # one such line shown per minute: an outage ends every connection at once
_JOB_ERROR_ACTIONS = frozenset({"job_error", "job_error_retry"})  # procrastinate's worker's failed job lines
_OUTAGE_NOISE = OutageNoise()
# The libraries' loggers (a filter of a logger sees the lines logged on it, not on its children): a
# procrastinate worker logs on a child named after it ("worker", procrastinate's default we keep).
_NOISY_LOGGERS = (
    "psycopg.pool",
    "procrastinate.worker",
    "procrastinate.worker.worker",
    "procrastinate.utils",
    "asyncio",  # "Task exception was never retrieved": a procrastinate job task that could not save its end
)


def chosen_format(fmt: LogFormat | None = None) -> Literal["json", "console"]:
    """``fmt``, else ``$JOURNEYS_LOG_FORMAT``, else auto: console in a terminal, JSON lines otherwise."""
    fmt = fmt or os.environ.get("JOURNEYS_LOG_FORMAT", "auto")  # type: ignore[assignment]
    if fmt == "json" or fmt == "console":
        return fmt
    return "console" if sys.stdout.isatty() else "json"


def configure_logging(level: int, fmt: LogFormat | None = None) -> None:
    """Logs at ``level`` and above, one line per event, as ``journeys serve`` and ``journeys worker`` log:
    JSON lines or console lines (see :func:`chosen_format`), each with the journey context bound where it
    was logged (instance, journey, run, node, attempt, trace id)."""
    from nodes.telemetry import log_context  # loads LangChain: only for the commands that log

    # Both formats redact (checkpoints.redaction) before anything is rendered.
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        log_context,
        structlog.processors.add_log_level,
        structlog.processors.StackInfoRenderer(),
        structlog.dev.set_exc_info,
    ]
    if chosen_format(fmt) == "json":
        processors: list[Processor] = [
            *shared,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redacted_values,
            bounded_values,
            json_traceback,  # after bounded_values: the traceback has bounds of its own
            structlog.processors.JSONRenderer(),
        ]
    else:
        processors = [
            *shared,
            structlog.processors.TimeStamper(fmt="%Y-%m-%d %H:%M:%S", utc=False),
            redacted_values,
            bounded_values,
            structlog.dev.ConsoleRenderer(colors=False, exception_formatter=plain_bounded_traceback),
        ]
    structlog.configure(processors=processors, wrapper_class=structlog.make_filtering_bound_logger(level))
    _OUTAGE_NOISE.forget()
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).addFilter(_OUTAGE_NOISE)  # once however often called: filters are a set

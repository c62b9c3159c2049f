"""Errors of the node kinds (human tasks, message waits, timers). All derive from :class:`JourneyError`."""

from __future__ import annotations

from checkpoints.errors import JourneyError


class ResumeValueError(JourneyError):
    """The value given to resume a human task does not match the task's schema."""

    category = "invalid"


class CorrelationError(JourneyError):
    """A message wait cannot subscribe: the variable holding its correlation key is not set."""

    category = "invalid"


class TimerDefinitionError(JourneyError, ValueError):
    """A timer expression that cannot be read; the message says how to write it."""

    # Still a ValueError: pydantic validators and callers that catch ValueError keep working.
    category = "invalid"


class FlowSettingError(JourneyError, ValueError):
    """A start key, its window or a deadline that cannot be used."""

    category = "invalid"


class ConcurrencyKeyError(JourneyError):
    """The start input lacks a usable value at the path the spec's concurrency limit is keyed on: a rule of
    the spec, which the request's own schema cannot state (409)."""

    category = "conflict"

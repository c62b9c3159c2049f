"""What a start's flow control is made of: a spec's concurrency limit, a start key and its window, and the
durations they are written in (seconds or ISO 8601). The kernel applies them (:mod:`graphs.kernel.flow`)."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from checkpoints.ownership import DEFAULT_TENANT, current_owner
from nodes.errors import ConcurrencyKeyError, FlowSettingError, TimerDefinitionError
from nodes.timer import parse_duration

DEFAULT_START_KEY_WINDOW = timedelta(hours=24)
_REFERENCE = datetime(2026, 1, 1, tzinfo=UTC)
LONGEST = timedelta(days=36_525)  # a century: a window or deadline past it cannot be a date


KEY_WIDTH = 200  # the slot and queued-start tables' concurrency_key column


class ConcurrencySpec(BaseModel):
    """A spec's concurrency limit: ``key`` a path into the start input (``$.tenant``, ``$.org.id``). ``scope``:
    whose journeys the limit counts: ``"type"`` (the default, as a DBOS queue or an Inngest function's limit)
    those of this journey type or process name only; ``"shared"`` those of every spec whose ``shared`` limit
    names the same key path (a tenant's cap across journey types)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str = Field(min_length=3, max_length=200, pattern=r"^\$(\.[A-Za-z_][A-Za-z0-9_\-]*)+$")
    limit: int = Field(ge=1, le=10_000)
    on_limit: Literal["queue", "reject"] = "queue"
    scope: Literal["type", "shared"] = "type"

    def value_in(self, start_input: Mapping[str, Any]) -> str:
        """The concurrency key's value for a start; a start input without it is refused."""
        found: Any = start_input
        for part in self.key[2:].split("."):
            if not isinstance(found, Mapping) or part not in found:
                raise ConcurrencyKeyError(
                    f"the start input has no {self.key}, which the spec's concurrency limit is keyed on",
                    field=self.key,
                )
            found = found[part]
        if isinstance(found, bool) or not isinstance(found, str | int) or str(found) == "":
            raise ConcurrencyKeyError(f"{self.key} must be a non-empty string or an integer", field=self.key)
        return str(found)


def window_of(value: str | float | timedelta | None) -> timedelta:
    """A start key's window (default 24 hours)."""
    return DEFAULT_START_KEY_WINDOW if value is None else duration_of(value, what="start key window")


def duration_of(value: str | float | timedelta, *, what: str) -> timedelta:
    """A positive duration from seconds, an ISO 8601 duration (``PT1H``, ``P7D``; months counted from
    2026-01-01, as the timers' checks do) or a timedelta; anything else is refused naming ``what``."""
    if isinstance(value, timedelta):
        found = value
    elif isinstance(value, str):
        try:
            parsed = parse_duration(value)
            found = parsed if isinstance(parsed, timedelta) else (_REFERENCE + parsed) - _REFERENCE
        except TimerDefinitionError as exc:
            raise FlowSettingError(f"{what}: {exc}", field=what) from exc
        except OverflowError:
            raise FlowSettingError(f"{what} {value!r} is longer than {LONGEST.days} days", field=what) from None
    elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        if value <= 0:  # before timedelta(), which overflows on a huge negative number
            raise FlowSettingError(f"{what} must be positive, got {value!r}", field=what)
        if value > LONGEST.total_seconds():
            raise FlowSettingError(f"{what} {value!r} is longer than {LONGEST.days} days", field=what)
        found = timedelta(seconds=value)
    else:
        raise FlowSettingError(f"{what} must be seconds or an ISO 8601 duration, got {value!r}", field=what)
    if found <= timedelta(0):
        raise FlowSettingError(f"{what} must be positive, got {value!r}", field=what)
    if found > LONGEST:
        raise FlowSettingError(f"{what} {value!r} is longer than {LONGEST.days} days", field=what)
    return found


class DeadlineSpec(BaseModel):
    """A spec's whole-run deadline: ``after`` (seconds or ISO 8601) from the start, a durable timer. When
    it passes before the journey ends, the journey fails, or with ``on_expiry="compensate"`` a saga
    compensates its completed steps (other patterns fail)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    after: str | float
    on_expiry: Literal["fail", "compensate"] = "fail"

    @field_validator("after")
    @classmethod
    def _positive(cls, value: str | float) -> str | float:
        duration_of(value, what="deadline")
        return value

    @property
    def duration(self) -> timedelta:
        return duration_of(self.after, what="deadline")

    def due(self, start: datetime) -> datetime:
        """When the deadline of a journey started at ``start`` passes: ISO 8601 months and years are calendar ones
        (``P1M`` from 15 February is 15 March), as a timer's duration's are; seconds are seconds."""
        if isinstance(self.after, str):
            return (start + parse_duration(self.after)).astimezone(UTC)
        return start + self.duration


@dataclass(frozen=True, slots=True)
class StartControls:
    """How one start is controlled: its start key and window, and its spec's concurrency limit with the
    key's value taken from the start input."""

    start_key: str | None = None
    window: timedelta = DEFAULT_START_KEY_WINDOW
    concurrency: ConcurrencySpec | None = None
    concurrency_value: str | None = None
    deadline: DeadlineSpec | None = None
    journey_type: str = ""  # what a "type"-scoped limit counts within: the pattern and journey type (or process)

    @classmethod
    def of(
        cls,
        start_key: str | None,
        window: str | float | timedelta | None,
        concurrency: ConcurrencySpec | None,
        start_input: Mapping[str, Any],
        deadline: DeadlineSpec | None = None,
        *,
        journey_type: str = "",
    ) -> StartControls | None:
        """Controls for a start (None when it has none), checked before anything is written. ``journey_type``:
        the pattern and the spec's journey type or process name (``saga.review``, ``process.billing``)."""
        if start_key is not None and (not isinstance(start_key, str) or not 0 < len(start_key) <= 200):
            raise FlowSettingError("start_key must be a string of 1 to 200 characters", field="start_key")
        if start_key is None and concurrency is None and deadline is None:
            return None
        value = concurrency.value_in(start_input) if concurrency is not None else None
        return cls(start_key, window_of(window), concurrency, value, deadline, journey_type)

    @property
    def concurrency_key(self) -> str | None:
        """The slot key: the spec's key path with the start's value, within the journey type a ``"type"`` limit
        counts (``saga.review/$.tenant=acme``; a ``"shared"`` one: ``$.tenant=acme``), within the tenant of the
        caller the server acts for, so no tenant's journeys take another's slots (``globex:saga.review/…``).
        The default tenant's starts and the runtime's own (timers, in-process use) share unprefixed keys."""
        if self.concurrency is None or self.concurrency_value is None:
            return None
        key = f"{self.concurrency.key}={self.concurrency_value}"
        if self.concurrency.scope == "type":
            key = f"{self.journey_type}/{key}"
        owner = current_owner()
        if owner is not None and owner.tenant != DEFAULT_TENANT:
            key = f"{owner.tenant}:{key}"
        if len(key) <= KEY_WIDTH:
            return key
        # Cut to the column's width, a key would share slots with every key alike in its first characters.
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
        return f"{key[: KEY_WIDTH - len(digest) - 1]}#{digest}"

"""Timer definitions: when a timer falls due, in ISO 8601 (duration, date, repeating cycle) or cron.

Parsing is left to libraries (isodate for ISO 8601, croniter for cron). A definition is checked when
the process is designed, so a typo is a design error with a fix, never a timer that silently never
fires. All arithmetic is on timezone-aware UTC datetimes; cron expressions are read in ``timezone``
(so "daily at 9am" follows daylight saving time there).

Repeating cycles (``R5/PT10S``, ``R/P1D``, ``R3/2026-01-01T09:00:00Z/PT1H``) tick at the end of each
interval: from ``origin`` (the explicit start, or the moment the timer was armed), ticks fall at
``origin + 1·interval``, ``origin + 2·interval`` … up to the repetition count (none: no limit).

Missed ticks (the scheduler was down across several of them) follow ``missed``:

- ``coalesce`` (the default): fire once for all the ticks missed, then continue from the first tick
  after now. The missed ticks count against the repetitions.
- ``fire_all``: fire once per missed tick, back to back, in order.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import isodate
from croniter import croniter
from pydantic import BaseModel, ConfigDict, model_validator

from nodes.errors import TimerDefinitionError

TimerKind = Literal["duration", "date", "cycle", "cron"]
MissedTicks = Literal["coalesce", "fire_all"]

# A reference instant for checks that need one (is this duration positive?).
_REFERENCE = datetime(2026, 1, 1, tzinfo=UTC)
_TOO_FAR = "{text!r} reaches past the year 9999, the last a date-time can hold; use a shorter time"


def parse_duration(text: str) -> timedelta | isodate.Duration:
    """An ISO 8601 duration (``P7D``, ``PT4H``, ``P1M``), refused when not positive."""
    try:
        value = isodate.parse_duration(text)
    except (isodate.ISO8601Error, ValueError) as exc:
        raise TimerDefinitionError(
            f"{text!r} is not an ISO 8601 duration; write e.g. 'P7D' (7 days), 'PT4H' (4 hours), 'PT10S'"
        ) from exc
    except OverflowError as exc:  # more days than a timedelta holds
        raise TimerDefinitionError(_TOO_FAR.format(text=text)) from exc
    try:
        reached = _REFERENCE + value
    except (OverflowError, ValueError) as exc:  # past the year 9999, the last a datetime holds
        raise TimerDefinitionError(_TOO_FAR.format(text=text)) from exc
    if reached <= _REFERENCE:
        raise TimerDefinitionError(f"duration {text!r} must be positive")
    return value


def parse_instant(text: str) -> datetime:
    """An ISO 8601 date-time with an explicit offset (``2026-03-01T09:00:00Z``), as UTC."""
    try:
        value = isodate.parse_datetime(text)
    except (isodate.ISO8601Error, ValueError) as exc:
        raise TimerDefinitionError(f"{text!r} is not an ISO 8601 date-time; write e.g. '2026-03-01T09:00:00Z'") from exc
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise TimerDefinitionError(f"date-time {text!r} has no offset; add 'Z' or an offset such as '+01:00'")
    try:
        return value.astimezone(UTC)
    except OverflowError as exc:  # in UTC it falls past the year 9999
        raise TimerDefinitionError(_TOO_FAR.format(text=text)) from exc


def parse_cycle(text: str) -> tuple[int | None, datetime | None, timedelta | isodate.Duration]:
    """``R<n>/<duration>`` or ``R<n>/<start>/<duration>`` → (repetitions or None, start or None, interval)."""
    parts = text.split("/")
    if len(parts) not in (2, 3) or not parts[0].startswith("R"):
        raise TimerDefinitionError(
            f"{text!r} is not an ISO 8601 repeating interval; write 'R5/PT10S' (5 times, every 10 s), "
            "'R/P1D' (every day, no limit) or 'R3/2026-01-01T09:00:00Z/PT1H'"
        )
    count = parts[0][1:]
    if count and not count.isdigit():
        raise TimerDefinitionError(f"{text!r}: the repetition count after 'R' must be a whole number")
    repetitions = int(count) if count else None
    if repetitions == 0:
        raise TimerDefinitionError(f"{text!r} repeats zero times; use R1 or more, or R for no limit")
    start = parse_instant(parts[1]) if len(parts) == 3 else None
    return repetitions, start, parse_duration(parts[-1])


class TimerDefinition(BaseModel):
    """Exactly one of ``duration``, ``date``, ``cycle`` or ``cron``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    duration: str | None = None
    date: str | None = None
    cycle: str | None = None
    cron: str | None = None
    timezone: str = "UTC"
    missed: MissedTicks = "coalesce"

    @model_validator(mode="after")
    def _one_readable_expression(self) -> TimerDefinition:
        given = [k for k in ("duration", "date", "cycle", "cron") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"a timer needs exactly one of duration, date, cycle or cron; got {given or 'none'} "
                "(e.g. {'duration': 'P7D'} or {'cron': '0 9 * * *'})"
            )
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown timezone {self.timezone!r}; use an IANA name such as 'Europe/Paris'") from exc
        try:
            if self.duration is not None:
                parse_duration(self.duration)
            elif self.date is not None:
                parse_instant(self.date)
            elif self.cycle is not None:
                parse_cycle(self.cycle)
            elif self.cron is not None and not croniter.is_valid(self.cron):
                raise TimerDefinitionError(
                    f"{self.cron!r} is not a cron expression; write five fields, e.g. '0 9 * * *' (daily at 9:00)"
                )
        except TimerDefinitionError as exc:
            raise ValueError(str(exc)) from None
        return self

    @property
    def kind(self) -> TimerKind:
        if self.duration is not None:
            return "duration"
        if self.date is not None:
            return "date"
        return "cycle" if self.cycle is not None else "cron"

    @property
    def repeats(self) -> bool:
        return self.kind in ("cycle", "cron")

    @property
    def repetitions(self) -> int | None:
        """How many ticks a cycle has (None: no limit); 1 for one-shot timers."""
        if self.cycle is not None:
            return parse_cycle(self.cycle)[0]
        return None if self.cron is not None else 1

    def describe(self) -> str:
        return f"{self.kind} {getattr(self, self.kind)}"

    def origin(self, armed_at: datetime) -> datetime:
        """Where ticks count from: a cycle's explicit start, else the moment the timer was armed."""
        if self.cycle is not None:
            start = parse_cycle(self.cycle)[1]
            if start is not None:
                return start
        return armed_at.astimezone(UTC)

    def first_due(self, armed_at: datetime) -> datetime:
        origin = self.origin(armed_at)
        if self.duration is not None:
            return (origin + parse_duration(self.duration)).astimezone(UTC)
        if self.date is not None:
            return parse_instant(self.date)
        return self._next_tick(origin, 1, origin)

    def _next_tick(self, origin: datetime, number: int, previous: datetime) -> datetime:
        """Tick ``number`` (1-based) of a repeating timer; ``previous`` is the tick before it (or the origin)."""
        if self.cycle is not None:
            # Counted from the origin, not from the previous tick, so ticks never drift.
            return (origin + parse_cycle(self.cycle)[2] * number).astimezone(UTC)
        assert self.cron is not None
        schedule = croniter(self.cron, previous.astimezone(ZoneInfo(self.timezone)))
        return schedule.get_next(datetime).astimezone(UTC)  # type: ignore[no-any-return]

    def after_firing(
        self, origin: datetime, ticks_fired: int, fired_due: datetime, now: datetime
    ) -> tuple[datetime | None, int]:
        """Once tick number ``ticks_fired`` (due at ``fired_due``) has fired at ``now``: the next due time
        (None: the timer is spent) and how many ticks were skipped under the ``missed`` policy."""
        if not self.repeats:
            return None, 0
        limit = self.repetitions
        number, due, skipped = ticks_fired + 1, fired_due, 0
        while True:
            if limit is not None and number > limit:
                return None, skipped
            due = self._next_tick(origin, number, due)
            if self.missed == "fire_all" or due > now:
                return due, skipped
            skipped += 1
            number += 1

    def to_row(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_defaults=True)

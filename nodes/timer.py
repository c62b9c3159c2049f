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
  after now. The missed ticks count against the repetitions. A cycle finds that tick by arithmetic, so a
  long downtime costs nothing; a cron counts its missed ticks up to :data:`COUNTED_MISSED`, then jumps.
- ``fire_all``: fire once per missed tick, back to back, in order.

Every definition is bounded so that its arithmetic stays within dates and its scheduler's work stays
finite: a duration or interval is positive and at most a century (:data:`LONGEST`), a cycle ticks at most
once a second (:data:`SHORTEST_CYCLE`), and a cron must fall due at least once (``0 0 30 2 *`` never does).
A cron whose ticks end (a year field) is spent after its last one.
"""

from __future__ import annotations

import functools
import zoneinfo
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import isodate
from croniter import CroniterBadDateError, croniter
from pydantic import BaseModel, ConfigDict, model_validator

from nodes.errors import TimerDefinitionError

TimerKind = Literal["duration", "date", "cycle", "cron"]
MissedTicks = Literal["coalesce", "fire_all"]

# A reference instant for checks that need one (is this duration positive?).
_REFERENCE = datetime(2026, 1, 1, tzinfo=UTC)
# Zone names found on every host with the IANA database, but whose rules are the host's own choice.
HOST_ZONES = frozenset({"localtime", "Factory"})


@functools.cache
def iana_zones() -> frozenset[str]:
    """The IANA zone names (``posix/`` and ``right/`` copies left out); read from disk once."""
    return frozenset(zoneinfo.available_timezones())


def check_cron(cron: str, timezone: str = "UTC") -> None:
    """:class:`TimerDefinitionError` unless croniter reads ``cron`` as meant and it falls due within a century."""
    check_seconds_field(cron)
    if not croniter.is_valid(cron):
        raise TimerDefinitionError(
            f"{cron!r} is not a cron expression; write five fields (minute hour day month weekday), e.g. "
            "'0 9 * * *' (daily at 9:00); a sixth field is seconds, a seventh the year"
        )
    if next(_cron_ticks(cron, timezone, _REFERENCE), None) is None:
        raise TimerDefinitionError(
            f"{cron!r} never falls due within a century (a day no month has, such as 30 February, "
            "or only years already past); write a schedule with a next tick"
        )


def check_seconds_field(cron: str) -> None:
    """Refuse a six- or seven-field schedule whose sixth field, croniter's seconds (put last, after the weekday),
    is ``*`` or ``?``: every second of each minute it names. That is how croniter reads a Quartz or Spring
    schedule, which puts seconds first (``0 */5 * * * *``, every five minutes, fired every second of every
    fifth hour), and ``* * * * * *`` made a journey a second. Named seconds (``0 9 * * * 30``) stay taken."""
    fields = cron.split()
    if len(fields) not in (6, 7) or fields[5] not in ("*", "?"):
        return
    quartz = ""
    if fields[0] not in ("*", "?"):  # read seconds first, it names its seconds: say how to write it here
        seconds_last = " ".join([*(f.replace("?", "*") for f in fields[1:6]), fields[0], *fields[6:]])
        quartz = f"; a Quartz or Spring schedule (seconds first) is written {seconds_last!r} here"
    raise TimerDefinitionError(
        f"{cron!r} would fire every second: a sixth field is seconds, after the weekday (minute hour day month "
        f"weekday second), and it is {fields[5]!r}{quartz}; for at most once a minute write five fields, e.g. "
        "'0 9 * * *'"
    )


LONGEST = timedelta(days=36_525)  # a century: a duration or interval past it cannot be meant as a wait
SHORTEST_CYCLE = timedelta(seconds=1)  # schedulers look once a second: a shorter cycle could only spin
# Missed cron ticks a coalescing catch-up counts one by one; past it, it jumps to the first tick after now (a
# cron has no repetition limit: the count is for the record), so a cron every second down for a month costs
# no more than this.
COUNTED_MISSED = 1_000


def _too_long(text: str) -> TimerDefinitionError:
    return TimerDefinitionError(f"duration {text!r} is longer than {LONGEST.days} days (a century); shorten it")


def _span(value: timedelta | isodate.Duration) -> timedelta:
    """How long ``value`` is from the reference instant (months and years have no fixed length)."""
    return (_REFERENCE + value) - _REFERENCE


def parse_duration(text: str) -> timedelta | isodate.Duration:
    """An ISO 8601 duration (``P7D``, ``PT4H``, ``P1M``), refused unless positive and at most a century."""
    try:
        value = isodate.parse_duration(text)
    except (isodate.ISO8601Error, ValueError) as exc:
        raise TimerDefinitionError(
            f"{text!r} is not an ISO 8601 duration; write e.g. 'P7D' (7 days), 'PT4H' (4 hours), 'PT10S'"
        ) from exc
    except OverflowError:  # more days than a timedelta holds
        raise _too_long(text) from None
    if isinstance(value, isodate.Duration) and not (
        float(value.years).is_integer() and float(value.months).is_integer()
    ):
        raise TimerDefinitionError(f"duration {text!r}: write whole years and months, e.g. 'P1Y6M' rather than 'P1.5Y'")
    try:
        span = _span(value)
    except (OverflowError, ValueError):  # past the last date there is
        raise _too_long(text) from None
    if span <= timedelta(0):
        raise TimerDefinitionError(f"duration {text!r} must be positive")
    if span > LONGEST:
        raise _too_long(text)
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
    except OverflowError:  # the first or last day there is, shifted past it by its offset
        raise TimerDefinitionError(f"date-time {text!r} is out of range; write a year from 1 to 9999") from None


def parse_cycle(text: str) -> tuple[int | None, datetime | None, timedelta | isodate.Duration]:
    """``R<n>/<duration>`` or ``R<n>/<start>/<duration>`` → (repetitions or None, start or None, interval)."""
    parts = text.split("/")
    if len(parts) not in (2, 3) or not parts[0].startswith("R"):
        raise TimerDefinitionError(
            f"{text!r} is not an ISO 8601 repeating interval; write 'R5/PT10S' (5 times, every 10 s), "
            "'R/P1D' (every day, no limit) or 'R3/2026-01-01T09:00:00Z/PT1H'"
        )
    count = parts[0][1:]
    if count and not (count.isascii() and count.isdigit()):
        raise TimerDefinitionError(f"{text!r}: the repetition count after 'R' must be a whole number")
    repetitions = int(count) if count else None
    if repetitions == 0:
        raise TimerDefinitionError(f"{text!r} repeats zero times; use R1 or more, or R for no limit")
    start = parse_instant(parts[1]) if len(parts) == 3 else None
    interval = parse_duration(parts[-1])
    if _span(interval) < SHORTEST_CYCLE:
        raise TimerDefinitionError(
            f"{text!r} repeats every {parts[-1]}; a cycle may repeat at most once a second (e.g. 'R/PT1S')"
        )
    if start is not None:  # its ticks are known now: each one it promises must fall on a date there is
        last = 1 if repetitions is None else repetitions
        if _tick(start, interval, last) is None:
            which = "first tick" if last == 1 else f"tick {last} (its last)"
            raise TimerDefinitionError(
                f"{text!r}: its {which} falls after the year 9999; start it earlier or repeat it fewer times"
            )
    return repetitions, start, interval


def _tick(origin: datetime, interval: timedelta | isodate.Duration, number: int) -> datetime | None:
    """Tick ``number`` of a cycle from ``origin``, in UTC; None past the last date there is (a cycle without a
    limit runs out there)."""
    try:
        return (origin + interval * number).astimezone(UTC)
    except (OverflowError, ValueError):
        return None


def _cron_ticks(expression: str, timezone: str, after: datetime) -> Iterator[datetime]:
    """The cron's ticks after ``after``, in UTC, read in ``timezone``; they end when it has no more (a year
    field past).

    When the clocks go back, a schedule at fixed hours ticks once, at the first of the two moments a wall
    clock time then names (cron's own rule): "daily at 02:30" ran twice that night. One whose hour field is
    ``*`` keeps ticking in real time through the repeated hour."""
    # A century ahead, as far as a duration may reach (croniter's default, 50 years, missed a year field of 2099).
    schedule = croniter(expression, after.astimezone(ZoneInfo(timezone)), max_years_between_matches=100)
    fixed_hours = schedule.expanded[1] != ["*"]
    while True:
        try:
            tick: datetime = schedule.get_next(datetime)
        except CroniterBadDateError:
            return
        if fixed_hours and tick.fold and tick.utcoffset() != tick.replace(fold=0).utcoffset():
            continue  # the second time this wall clock time comes round tonight: ticked at the first
        yield tick.astimezone(UTC)


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
            host_dependent = self.timezone in HOST_ZONES or self.timezone not in iana_zones()
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown timezone {self.timezone!r}; use an IANA name such as 'Europe/Paris'") from exc
        if host_dependent:  # 'localtime', 'posix/...', 'right/...': each host's own files, so hosts disagree
            raise ValueError(
                f"timezone {self.timezone!r} depends on the host's files, so processes on different hosts would "
                "fire it at different times; use an IANA name such as 'Europe/Paris' or 'UTC'"
            )
        try:
            if self.duration is not None:
                parse_duration(self.duration)
            elif self.date is not None:
                parse_instant(self.date)
            elif self.cycle is not None:
                parse_cycle(self.cycle)
            elif self.cron is not None:
                check_cron(self.cron, self.timezone)
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
        if self.cycle is not None:
            due = self._cycle_tick(origin, 1)
            if due is None:
                raise TimerDefinitionError(
                    f"cycle {self.cycle!r} armed at {origin.isoformat()} has no tick before the year 9999 ends"
                )
            return due
        assert self.cron is not None
        due = next(_cron_ticks(self.cron, self.timezone, origin), None)
        if due is None:
            raise TimerDefinitionError(
                f"cron {self.cron!r} has no tick after {origin.isoformat()}: its last year is past; write a schedule "
                "with a next tick"
            )
        return due

    def _cycle_tick(self, origin: datetime, number: int) -> datetime | None:
        """Tick ``number`` (1-based) of a cycle: counted from the origin, not from the tick before, so ticks
        never drift. None: it would fall after the year 9999, and the cycle is spent."""
        assert self.cycle is not None
        return _tick(origin, parse_cycle(self.cycle)[2], number)

    def after_firing(
        self, origin: datetime, ticks_fired: int, fired_due: datetime, now: datetime
    ) -> tuple[datetime | None, int]:
        """Once tick number ``ticks_fired`` (due at ``fired_due``) has fired at ``now``: the next due time
        (None: the timer is spent) and how many ticks were skipped under the ``missed`` policy."""
        if not self.repeats:
            return None, 0
        if self.cron is not None:
            return self._cron_after(fired_due, now)
        assert self.cycle is not None
        limit, _start, interval = parse_cycle(self.cycle)
        number = ticks_fired + 1
        if self.missed == "coalesce":
            if isinstance(interval, timedelta):  # the first tick after now, by arithmetic: no loop per tick
                number = max(number, (now - origin) // interval + 1)
            else:  # months or years: twelve ticks a year at most
                while (limit is None or number <= limit) and (tick := self._cycle_tick(origin, number)) is not None:
                    if tick > now:
                        break
                    number += 1
        skipped = number - (ticks_fired + 1)
        if limit is not None and number > limit:
            return None, max(0, limit - ticks_fired)
        return self._cycle_tick(origin, number), skipped

    def _cron_after(self, fired_due: datetime, now: datetime) -> tuple[datetime | None, int]:
        assert self.cron is not None
        ticks = _cron_ticks(self.cron, self.timezone, fired_due)
        if self.missed == "fire_all":
            return next(ticks, None), 0
        skipped = 0
        for tick in ticks:
            if tick > now:
                return tick, skipped
            skipped += 1
            if skipped == COUNTED_MISSED:  # enough counted: straight to the first tick after now
                return next(_cron_ticks(self.cron, self.timezone, now), None), skipped
        return None, skipped  # its ticks ended (a year field): spent

    def to_row(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_defaults=True)

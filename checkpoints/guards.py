"""The agent path's shared guards, kept in the database so every process on the store sees one state:
a circuit breaker per intent and a rate-limit bucket (calls per second) per intent.

A guard's row is changed by compare-and-set on its ``version``: read the row, compute the next one in
Python (:class:`Circuit`, :class:`Bucket`: pure transitions), write it only if the version is still the
one read, else read again. No row lock is held while an agent runs, no state change is lost between
processes, and the same statements serve SQLite and PostgreSQL.

pybreaker and aiobreaker were not used: their storage interface is synchronous getters and setters
(state, counter, opened_at) changed one at a time, so two processes can interleave a read and a write
and lose a failure or a state change; and neither has a failure-rate threshold or several half-open
trials. purgatory's async repository could be backed by our tables, but its breaker has only a
consecutive-failure threshold and no limit on half-open trials, and it changes state by read-then-write.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, TypeVar

from sqlalchemy import Executable, Table, bindparam, select, update

from checkpoints.backends.base import Backend, Row
from checkpoints.clock import Clock
from checkpoints.errors import ResilienceSettingError, StoreError
from checkpoints.schema.resilience_tables import agent_circuits, agent_rate_limits

T = TypeVar("T")
CircuitStateName = Literal["closed", "open", "half_open"]
MAX_CONFLICTS = 50  # compare-and-set rounds lost in a row before giving up (never reached in practice)


class _VersionedRows:
    """Reads and compare-and-set writes of one guard table keyed by ``intent``."""

    def __init__(self, backend: Backend, table: Table) -> None:
        self._backend = backend
        columns = table.c
        self._get: Executable = select(table).where(columns.intent == bindparam("p_intent"))
        self._all: Executable = select(table).order_by(columns.intent)
        values = {c.name: bindparam(f"p_{c.name}", type_=c.type) for c in table.columns}
        self._insert: Executable = (
            backend.insert(table).values(**values).on_conflict_do_nothing().returning(columns.intent)
        )
        changed = {name: value for name, value in values.items() if name != "intent"}
        self._update: Executable = (
            update(table)
            .where(columns.intent == bindparam("p_intent"), columns.version == bindparam("p_expected"))
            .values(**changed)
            .returning(columns.intent)
        )

    async def get(self, intent: str) -> Row | None:
        rows = await self._backend.read(self._get, {"p_intent": intent})
        return rows[0] if rows else None

    async def all(self) -> list[Row]:
        return await self._backend.read(self._all)

    async def put(self, row: Row, expected: int | None) -> bool:
        """Write ``row``: a new row when ``expected`` is None, else only over version ``expected``.
        False when another process wrote first."""
        params = {f"p_{name}": value for name, value in row.items()}
        if expected is None:
            return bool(await self._backend.write([self._insert], params))
        return bool(await self._backend.write([self._update], {**params, "p_expected": expected}))


async def _transition(
    rows: _VersionedRows, intent: str, fresh: Callable[[], Row], step: Callable[[Row], tuple[Row | None, T]]
) -> T:
    """Apply ``step`` (the current row → the next row or None for no change, and a result) atomically."""
    for _round in range(MAX_CONFLICTS):
        current = await rows.get(intent)
        expected = None if current is None else int(current["version"])
        nxt, result = step(current if current is not None else fresh())
        if nxt is None:
            return result
        if await rows.put({**nxt, "version": (expected or 0) + 1}, expected):
            return result
    raise StoreError(f"the guard of intent {intent!r} kept changing under this process; try again", intent=intent)


# --- circuit breakers ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CircuitSettings:
    """When an intent's circuit opens, and how it closes again.

    Opens after ``failure_threshold`` consecutive failures, or when at least ``minimum_calls`` calls in
    a ``window`` (seconds) failed at a rate of ``failure_rate`` or more (either may be None, not both).
    After ``cool_down`` seconds open, it lets ``half_open_trials`` calls through: all succeed, it
    closes; one fails, it opens again for another cool-down.
    """

    failure_threshold: int | None = 5
    failure_rate: float | None = None
    minimum_calls: int = 10
    window: float = 60.0
    cool_down: float = 30.0
    half_open_trials: int = 1

    def __post_init__(self) -> None:
        if self.failure_threshold is None and self.failure_rate is None:
            raise ResilienceSettingError("a circuit needs a failure_threshold, a failure_rate, or both")
        if self.failure_threshold is not None and self.failure_threshold < 1:
            raise ResilienceSettingError(f"failure_threshold must be at least 1, got {self.failure_threshold!r}")
        if self.failure_rate is not None and not 0 < self.failure_rate <= 1:
            raise ResilienceSettingError(f"failure_rate must be in (0, 1], got {self.failure_rate!r}")
        if self.minimum_calls < 1 or self.half_open_trials < 1:
            raise ResilienceSettingError("minimum_calls and half_open_trials must be at least 1")
        if self.window <= 0 or self.cool_down < 0:
            raise ResilienceSettingError("window must be positive and cool_down not negative (seconds)")


@dataclass(frozen=True, slots=True)
class Circuit:
    """One intent's circuit as stored: its state and the counts that decide the next one."""

    intent: str
    state: CircuitStateName
    consecutive_failures: int
    window_calls: int
    window_failures: int
    window_started_at: datetime
    changed_at: datetime
    trials: int
    trial_successes: int
    version: int = 0

    @classmethod
    def closed(cls, intent: str, now: datetime) -> Circuit:
        return cls(intent, "closed", 0, 0, 0, now, now, 0, 0)

    def _opened(self, now: datetime) -> Circuit:
        return dataclasses.replace(self, state="open", changed_at=now, trials=0, trial_successes=0)

    def _windowed(self, settings: CircuitSettings, now: datetime) -> Circuit:
        if now - self.window_started_at >= timedelta(seconds=settings.window):
            return dataclasses.replace(self, window_calls=0, window_failures=0, window_started_at=now)
        return self

    def reopens_at(self, settings: CircuitSettings) -> datetime:
        return self.changed_at + timedelta(seconds=settings.cool_down)

    def admit(self, settings: CircuitSettings, now: datetime) -> tuple[Circuit | None, bool]:
        """May a call go through now? (the changed circuit, or None; and the answer)."""
        if self.state == "closed":
            return None, True
        cooled = now >= self.reopens_at(settings)
        if self.state == "open":
            if not cooled:
                return None, False
            return dataclasses.replace(self, state="half_open", changed_at=now, trials=1, trial_successes=0), True
        if self.trials < settings.half_open_trials:
            return dataclasses.replace(self, trials=self.trials + 1), True
        if cooled:  # the trials admitted a cool-down ago never reported (their process died): admit anew
            return dataclasses.replace(self, changed_at=now, trials=1, trial_successes=0), True
        return None, False

    def succeeded(self, settings: CircuitSettings, now: datetime) -> Circuit | None:
        if self.state == "open":
            return None  # a call admitted before the circuit opened: it does not close it
        if self.state == "half_open":
            if self.trial_successes + 1 >= settings.half_open_trials:
                return dataclasses.replace(Circuit.closed(self.intent, now), version=self.version)
            return dataclasses.replace(self, trial_successes=self.trial_successes + 1)
        if settings.failure_rate is None:
            return dataclasses.replace(self, consecutive_failures=0) if self.consecutive_failures else None
        counted = self._windowed(settings, now)
        return dataclasses.replace(counted, consecutive_failures=0, window_calls=counted.window_calls + 1)

    def failed(self, settings: CircuitSettings, now: datetime) -> Circuit | None:
        if self.state == "open":
            return None
        if self.state == "half_open":
            return self._opened(now)
        counted = self._windowed(settings, now)
        counted = dataclasses.replace(
            counted,
            consecutive_failures=counted.consecutive_failures + 1,
            window_calls=counted.window_calls + 1,
            window_failures=counted.window_failures + 1,
        )
        by_count = settings.failure_threshold is not None and counted.consecutive_failures >= settings.failure_threshold
        by_rate = (
            settings.failure_rate is not None
            and counted.window_calls >= settings.minimum_calls
            and counted.window_failures / counted.window_calls >= settings.failure_rate
        )
        return counted._opened(now) if by_count or by_rate else counted


@dataclass(frozen=True, slots=True)
class Admission:
    """Whether a call may go through its intent's circuit, and if not, when to try again."""

    allowed: bool
    state: CircuitStateName
    retry_after: float = 0.0


def _circuit_row(circuit: Circuit) -> Row:
    return dataclasses.asdict(circuit)


def _circuit(row: Row) -> Circuit:
    return Circuit(**{f.name: row[f.name] for f in dataclasses.fields(Circuit)})


class CircuitBreakers:
    """Every intent's circuit, in the store's database: shared by every process on it."""

    def __init__(self, backend: Backend, clock: Clock) -> None:
        self._rows = _VersionedRows(backend, agent_circuits)
        self._clock = clock

    async def admit(self, intent: str, settings: CircuitSettings) -> Admission:
        """Ask the circuit for one call (a half-open circuit counts it as one of its trials)."""
        now = self._clock.now()

        def step(row: Row) -> tuple[Row | None, Admission]:
            circuit = _circuit(row)
            changed, allowed = circuit.admit(settings, now)
            state = (changed or circuit).state
            wait = 0.0 if allowed else max(0.0, (circuit.reopens_at(settings) - now).total_seconds())
            return (None if changed is None else _circuit_row(changed)), Admission(allowed, state, wait)

        return await _transition(self._rows, intent, lambda: _circuit_row(Circuit.closed(intent, now)), step)

    async def record(self, intent: str, settings: CircuitSettings, *, succeeded: bool) -> Circuit:
        """Count one call's outcome; returns the circuit after it."""
        now = self._clock.now()

        def step(row: Row) -> tuple[Row | None, Circuit]:
            circuit = _circuit(row)
            changed = circuit.succeeded(settings, now) if succeeded else circuit.failed(settings, now)
            return (None if changed is None else _circuit_row(changed)), changed or circuit

        return await _transition(self._rows, intent, lambda: _circuit_row(Circuit.closed(intent, now)), step)

    async def get(self, intent: str) -> Circuit | None:
        row = await self._rows.get(intent)
        return None if row is None else _circuit(row)

    async def circuits(self) -> list[Circuit]:
        """Every circuit an agent call has used, by intent (for metrics and operators)."""
        return [_circuit(row) for row in await self._rows.all()]


# --- rate limits --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``per_second`` calls a second to an intent across every process, in bursts of up to
    ``burst`` calls (default: one second's worth, at least one)."""

    per_second: float
    burst: float | None = None

    def __post_init__(self) -> None:
        if not self.per_second > 0:  # also NaN
            raise ResilienceSettingError(
                f"a rate limit of {self.per_second!r} calls a second lets no call through: give a positive number "
                "(0.5 is one call every 2 s), or no rate limit (None) for an intent that is not limited"
            )
        if self.burst is not None and not self.burst >= 1:
            raise ResilienceSettingError(
                f"a rate limit's burst of {self.burst!r} lets no call through: give at least 1 (calls at once), or "
                "None for one second's worth"
            )

    @property
    def capacity(self) -> float:
        return self.burst if self.burst is not None else max(1.0, self.per_second)


@dataclass(frozen=True, slots=True)
class Bucket:
    """One intent's rate limit as stored, by the generic cell rate algorithm (a token bucket kept as one
    timestamp): ``next_call_at`` is when the next call would be due were calls spaced evenly."""

    intent: str
    next_call_at: datetime
    version: int = 0

    def take(self, limit: RateLimit, now: datetime) -> tuple[Bucket | None, float]:
        """Take one call: (the bucket after, 0.0) or (None, seconds until a call is allowed)."""
        spacing = timedelta(seconds=1 / limit.per_second)
        tolerance = spacing * (limit.capacity - 1)  # how far ahead of the even spacing a burst may run
        due = max(self.next_call_at, now)
        if due - now > tolerance:
            return None, (due - now - tolerance).total_seconds()
        return dataclasses.replace(self, next_call_at=due + spacing), 0.0


class RateLimits:
    """Every intent's rate-limit bucket, in the store's database: shared by every worker on it."""

    def __init__(self, backend: Backend, clock: Clock) -> None:
        self._rows = _VersionedRows(backend, agent_rate_limits)
        self._clock = clock

    async def acquire(self, intent: str, limit: RateLimit) -> float:
        """Take one call from the intent's bucket: 0.0 when taken, else the seconds until one is free."""
        now = self._clock.now()

        def step(row: Row) -> tuple[Row | None, float]:
            bucket = Bucket(**{f.name: row[f.name] for f in dataclasses.fields(Bucket)})
            taken, wait = bucket.take(limit, now)
            return (None if taken is None else dataclasses.asdict(taken)), wait

        return await _transition(self._rows, intent, lambda: dataclasses.asdict(Bucket(intent, now)), step)

"""Resilience of the agent path: time limits, retry policies (tenacity), bulkheads per agent pool, and
the spec form of a call's options. Circuit breakers and rate limits are shared through the store
(:mod:`checkpoints.guards`); :class:`nodes.agent_call.AgentCaller` applies them all on the one call path."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import isodate
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, model_validator
from tenacity import AsyncRetrying, RetryCallState, RetryError, retry_if_exception, stop_after_attempt

from agents.errors import BulkheadFullError, CircuitOpenError, PermanentAgentError, PolicyViolationError
from checkpoints.errors import ResilienceSettingError

T = TypeVar("T")
Jitter = float | Literal["full", "equal"]


def seconds(value: object) -> float:
    """A duration in seconds: a number, or an ISO 8601 duration (``PT30S``, ``PT1M30S``, ``P1D``)."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or an ISO 8601 duration, not a boolean")
    if isinstance(value, int | float):
        found = float(value)
    elif isinstance(value, timedelta):
        found = value.total_seconds()
    elif isinstance(value, str):
        found = _iso_seconds(value)
    else:
        raise ValueError(f"a duration is a number of seconds or an ISO 8601 duration, not {type(value).__name__}")
    if not math.isfinite(found):  # "NaN" timed every attempt out at once; "inf" is no time limit
        raise ValueError(f"a duration is a finite number of seconds, got {value!r}")
    if found < 0:
        raise ValueError(f"a duration must not be negative, got {value!r}")
    return found


def _iso_seconds(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        pass
    try:
        parsed = isodate.parse_duration(value)
    except (isodate.ISO8601Error, ValueError) as exc:
        raise ValueError(f"{value!r} is neither seconds nor an ISO 8601 duration such as PT30S") from exc
    except OverflowError as exc:  # past timedelta's 999,999,999 days
        raise ValueError(f"{value!r} is too long a duration; give at most a few years") from exc
    if not isinstance(parsed, timedelta):  # years or months: no fixed length
        raise ValueError(f"{value!r}: use days, hours, minutes or seconds, not years or months")
    return parsed.total_seconds()


# A duration in a spec: seconds or ISO 8601, stored as seconds.
Duration = Annotated[
    float,
    BeforeValidator(seconds),
    WithJsonSchema({"anyOf": [{"type": "number", "minimum": 0}, {"type": "string"}]}),
]


@dataclass(frozen=True, slots=True)
class RetrySettings:
    """How an agent call is retried: how many attempts, the backoff between them, and what not to retry.

    ``backoff``: the n-th wait is ``initial_delay * 2**(n-1)`` (exponential) or ``initial_delay * n``
    (linear), at most ``max_delay``. ``jitter``: ``"full"`` waits a random time up to that,
    ``"equal"`` half of it plus a random time up to the other half, a number adds a random time up
    to that many seconds. ``non_retryable``: names of error types (or of a base class of theirs)
    that fail the call at once, besides permanent errors and refusals.
    """

    max_attempts: int = 3
    backoff: Literal["exponential", "linear"] = "exponential"
    initial_delay: float = 0.05
    max_delay: float = 5.0
    jitter: Jitter = 0.05
    non_retryable: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ResilienceSettingError(
                f"max_attempts must be at least 1 (the first attempt), got {self.max_attempts!r}"
            )
        if not min(self.initial_delay, self.max_delay) >= 0 or (
            isinstance(self.jitter, float | int) and not self.jitter >= 0
        ):
            raise ResilienceSettingError("delays and jitter are seconds, and must not be negative")
        if self.max_delay < self.initial_delay:
            # The cap would cut every wait, the first included, to max_delay: initial_delay would mean nothing.
            raise ResilienceSettingError(
                f"max_delay ({self.max_delay:g} s) is the longest wait between attempts and must be at least "
                f"initial_delay ({self.initial_delay:g} s), the first wait: raise max_delay or lower initial_delay"
            )
        if self.jitter not in ("full", "equal") and not isinstance(self.jitter, float | int):
            raise ResilienceSettingError("jitter is 'full', 'equal' or a number of seconds")

    def delay(self, failed_attempt: int) -> float:
        """The wait after attempt ``failed_attempt`` (1-based) failed."""
        growth = 2 ** (failed_attempt - 1) if self.backoff == "exponential" else failed_attempt
        base = min(self.initial_delay * growth, self.max_delay)
        if self.jitter == "full":
            return random.uniform(0, base)
        if self.jitter == "equal":
            return base / 2 + random.uniform(0, base / 2)
        return base + (random.uniform(0, self.jitter) if self.jitter else 0.0)

    def pause(self, failed_attempt: int, error: BaseException | None) -> float:
        """The backoff, or longer when the error says when to come back (a rate limit), up to ``max_delay``."""
        details = getattr(error, "details", None)
        asked = details.get("retry_after_s") if isinstance(details, dict) else None
        backoff = self.delay(failed_attempt)
        return min(max(backoff, float(asked)), self.max_delay) if asked else backoff

    def retryable(self, exc: BaseException) -> bool:
        """Worth another attempt: :func:`is_retryable`, and not of a type declared non-retryable."""
        if not is_retryable(exc):
            return False
        return not self.non_retryable or not {k.__name__ for k in type(exc).__mro__} & set(self.non_retryable)


def is_retryable(exc: BaseException) -> bool:
    """Every error but refusals, declared-permanent failures and an open circuit is worth another attempt.

    Only ``Exception``s: cancellation and interpreter exits (``BaseException``) must propagate at once.
    """
    return isinstance(exc, Exception) and not isinstance(
        exc, PermanentAgentError | PolicyViolationError | CircuitOpenError
    )


async def call_with_retry(
    fn: Callable[[int], Awaitable[T]], settings: RetrySettings, *, first_attempt: int = 1
) -> tuple[T, int]:
    """Run ``fn(attempt)`` until it succeeds or the attempts run out; returns (result, attempts).

    ``first_attempt`` > 1 continues a call whose earlier attempts were made before a restart: they
    count against ``max_attempts``, and the backoff goes on from where they left it.
    """
    # The first attempt is made directly: most calls succeed at once, and setting tenacity up costs
    # tens of microseconds a call. Only a failure worth retrying enters its loop.
    try:
        return await fn(first_attempt), first_attempt
    except Exception as exc:
        if first_attempt >= settings.max_attempts or not settings.retryable(exc):
            raise
        first_pause = settings.pause(first_attempt, exc)
    attempt = first_attempt
    try:
        async for trial in AsyncRetrying(
            stop=stop_after_attempt(settings.max_attempts - first_attempt),
            # Attempt n of this loop is attempt first_attempt + n of the call: back off as the whole call would.
            wait=lambda state: settings.pause(
                first_attempt + state.attempt_number, state.outcome.exception() if state.outcome else None
            ),
            retry=retry_if_exception(settings.retryable),
            before=_sleep_first(first_pause),
            reraise=True,
        ):
            with trial:
                attempt = first_attempt + trial.retry_state.attempt_number
                result = await fn(attempt)
            if not trial.retry_state.outcome or not trial.retry_state.outcome.failed:
                return result, attempt
    except RetryError as exc:  # pragma: no cover - reraise=True surfaces the last error instead
        raise exc.last_attempt.exception() or exc from exc
    raise AssertionError("unreachable: tenacity either returns or raises")


def _sleep_first(delay: float) -> Callable[[RetryCallState], Awaitable[None]]:
    """Before the loop's first attempt, the backoff that follows the call's failed attempt before it."""

    async def before(state: RetryCallState) -> None:
        if state.attempt_number == 1:
            await asyncio.sleep(delay)

    return before


_NOTHING_HELD: AbstractAsyncContextManager[None] = nullcontext()  # a pool without a limit: no slot to hold


class Bulkheads:
    """One semaphore per agent pool (an agent's ``pool``, else its intent), so a slow or stuck agent
    cannot take every worker with it: other pools' calls, and so other journeys, keep moving.

    A pool's limit is its agent's ``concurrency``, else ``limit_per_intent``. A call that waits
    ``wait`` seconds for a slot in vain gets :class:`BulkheadFullError` (None: it waits as long as it takes).
    Per process: every worker has its own slots.
    """

    def __init__(self, limit_per_intent: int | None = None, *, wait: float | None = None) -> None:
        self._limit = limit_per_intent
        self._wait = wait
        self._semaphores: dict[str, asyncio.Semaphore] = {}

    def slot(self, pool: str, limit: int | None = None) -> asyncio.Semaphore | None:
        limit = limit if limit is not None else self._limit
        if limit is None:
            return None
        if pool not in self._semaphores:
            self._semaphores[pool] = asyncio.Semaphore(limit)
        return self._semaphores[pool]

    def hold(self, pool: str, limit: int | None = None) -> AbstractAsyncContextManager[None]:
        """Hold a slot of ``pool`` for the block (nothing to hold when the pool has no limit: no generator-based
        context manager is made for that, the common case, entered at every agent call)."""
        semaphore = self.slot(pool, limit)
        return _NOTHING_HELD if semaphore is None else self._held(pool, semaphore)

    @asynccontextmanager
    async def _held(self, pool: str, semaphore: asyncio.Semaphore) -> AsyncIterator[None]:
        try:
            await asyncio.wait_for(semaphore.acquire(), self._wait)
        except TimeoutError:
            raise BulkheadFullError(
                f"agent pool {pool!r} has every one of its slots taken; waited {self._wait:g} s for one",
                pool=pool,
                waited_s=self._wait,
            ) from None
        try:
            yield
        finally:
            semaphore.release()


class RetryPolicy(BaseModel):
    """A spec's retry policy: each field set replaces the runtime's or the agent's (see :class:`RetrySettings`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_attempts: int | None = Field(default=None, ge=1, le=100)
    backoff: Literal["exponential", "linear"] | None = None
    initial_delay: Duration | None = None
    max_delay: Duration | None = None
    jitter: Annotated[float, Field(ge=0)] | Literal["full", "equal"] | None = None
    non_retryable: tuple[str, ...] | None = Field(
        default=None, description="error type names that fail the call at once (their subclasses too)"
    )

    @model_validator(mode="after")
    def _delays_in_order(self) -> RetryPolicy:
        if self.initial_delay is not None and self.max_delay is not None and self.max_delay < self.initial_delay:
            raise ValueError(
                f"max_delay ({self.max_delay:g} s) is the longest wait between attempts and must be at least "
                f"initial_delay ({self.initial_delay:g} s), the first wait: raise max_delay or lower initial_delay"
            )
        return self

    def over(self, base: RetrySettings) -> RetrySettings:
        changes: dict[str, Any] = self.model_dump(exclude_none=True)
        if "non_retryable" in changes:
            changes["non_retryable"] = tuple(changes["non_retryable"])
        # A delay the spec sets wins over the other's default (a first wait of 10 s over a runtime's cap of 5 s).
        initial, longest = changes.get("initial_delay", base.initial_delay), changes.get("max_delay", base.max_delay)
        if longest < initial and "initial_delay" in changes:
            changes["max_delay"] = initial
        elif longest < initial:
            changes["initial_delay"] = longest
        return dataclasses.replace(base, **changes)


class CallOptions(BaseModel):
    """What a spec may say about one agent call (a step, a service task, a unit-of-work task):
    its time limit, its retry policy, the intents to fall back on, and whether an open circuit routes
    the call to a person."""

    timeout: Duration | None = Field(
        default=None, description="seconds or ISO 8601 (PT30S) per attempt; a hang becomes AgentTimeoutError"
    )
    retry: RetryPolicy | None = None
    fallbacks: tuple[str, ...] = Field(
        default=(),
        description="intents tried in order when the agent fails for good or its circuit is open",
    )
    # Whether the pattern can show a person the task an open circuit routes to (structured and saga steps,
    # answered with advance_journey_step); a process's people work from its inbox of user tasks instead.
    human_route: ClassVar[bool] = True

    on_circuit_open: Literal["fail", "human"] = Field(
        default="fail",
        description="human: when the circuit is open (and no fallback served), the step waits for a person "
        "whose answer completes it, as the agent's output",
    )

    @model_validator(mode="after")
    def _human_route_supported(self) -> CallOptions:
        if self.on_circuit_open == "human" and not self.human_route:
            raise ValueError(
                f"on_circuit_open 'human' is for structured and saga steps; a {type(self).__name__} fails "
                "(and compensates) on an open circuit: model the person's work as a user task on that path"
            )
        return self

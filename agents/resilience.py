"""Retry with backoff and jitter (tenacity), and bulkheads that cap concurrent calls per intent."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    RetryError,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_incrementing,
    wait_random,
)
from tenacity.wait import wait_base

from agents.errors import PermanentAgentError, PolicyViolationError

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetrySettings:
    """How an agent call is retried: how many attempts and how long to wait between them."""

    max_attempts: int = 3
    backoff: Literal["exponential", "linear"] = "exponential"
    initial_delay: float = 0.05
    max_delay: float = 5.0
    jitter: float = 0.05

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if min(self.initial_delay, self.max_delay, self.jitter) < 0:
            raise ValueError("delays and jitter must not be negative")

    def wait(self) -> wait_base:
        if self.backoff == "linear":
            return wait_incrementing(
                start=self.initial_delay, increment=self.initial_delay, max=self.max_delay
            ) + wait_random(0, self.jitter)
        # Not wait_exponential_jitter: its `initial` is deprecated in newer tenacity (a warning, an error
        # under -W error) and its replacement `multiplier` is missing from older 9.x releases.
        return wait_exponential(multiplier=self.initial_delay, max=self.max_delay) + wait_random(0, self.jitter)


def is_retryable(exc: BaseException) -> bool:
    """Every error but refusals and declared-permanent failures is worth another attempt.

    Only ``Exception``s: cancellation and interpreter exits (``BaseException``) must propagate at once.
    """
    return isinstance(exc, Exception) and not isinstance(exc, PermanentAgentError | PolicyViolationError)


async def call_with_retry(fn: Callable[[int], Awaitable[T]], settings: RetrySettings) -> tuple[T, int]:
    """Run ``fn(attempt)`` until it succeeds or the attempts run out; returns (result, attempts)."""
    # The first attempt is made directly: most calls succeed at once, and setting tenacity up costs
    # tens of microseconds a call. Only a failure worth retrying enters its loop, from attempt 2 on.
    try:
        return await fn(1), 1
    except Exception as exc:
        if settings.max_attempts == 1 or not is_retryable(exc):
            raise
    attempt = 1
    wait = settings.wait()
    try:
        async for trial in AsyncRetrying(
            stop=stop_after_attempt(settings.max_attempts - 1),
            # Attempt n of this loop is attempt n + 1 of the call: back off as the whole call would.
            wait=lambda state: wait(_shifted(state)),
            retry=retry_if_exception(is_retryable),
            before=_sleep_first(wait),
            reraise=True,
        ):
            with trial:
                attempt = trial.retry_state.attempt_number + 1
                result = await fn(attempt)
            if not trial.retry_state.outcome or not trial.retry_state.outcome.failed:
                return result, attempt
    except RetryError as exc:  # pragma: no cover - reraise=True surfaces the last error instead
        raise exc.last_attempt.exception() or exc from exc
    raise AssertionError("unreachable: tenacity either returns or raises")


def _shifted(state: RetryCallState) -> RetryCallState:
    shifted = copy.copy(state)
    shifted.attempt_number = state.attempt_number + 1
    return shifted


def _sleep_first(wait: wait_base) -> Callable[[RetryCallState], Awaitable[None]]:
    """Before the loop's first attempt, the backoff that follows the call's failed first attempt."""

    async def before(state: RetryCallState) -> None:
        if state.attempt_number == 1:
            first = copy.copy(state)
            first.attempt_number = 1
            await asyncio.sleep(wait(first))

    return before


class Bulkheads:
    """One semaphore per intent, so a slow or stuck agent cannot take every worker with it."""

    def __init__(self, limit_per_intent: int | None = None) -> None:
        self._limit = limit_per_intent
        self._semaphores: dict[str, asyncio.Semaphore] = {}

    def slot(self, intent: str) -> asyncio.Semaphore | None:
        if self._limit is None:
            return None
        if intent not in self._semaphores:
            self._semaphores[intent] = asyncio.Semaphore(self._limit)
        return self._semaphores[intent]

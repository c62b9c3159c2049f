"""The retry wrapper of the agent path: what it retries, and what it must let through at once."""

from __future__ import annotations

import asyncio

import pytest

from agents.errors import PermanentAgentError, TransientAgentError
from agents.resilience import RetrySettings, call_with_retry

FAST = RetrySettings(max_attempts=3, initial_delay=0.001, max_delay=0.002, jitter=0.001)


async def test_transient_failures_are_retried_until_success() -> None:
    attempts: list[int] = []

    async def flaky(attempt: int) -> str:
        attempts.append(attempt)
        if attempt < 3:
            raise TransientAgentError("not yet")
        return "done"

    assert await call_with_retry(flaky, FAST) == ("done", 3)
    assert attempts == [1, 2, 3]


@pytest.mark.parametrize("error", [PermanentAgentError("no"), asyncio.CancelledError(), KeyboardInterrupt()])
async def test_permanent_failures_and_cancellation_are_not_retried(error: BaseException) -> None:
    attempts: list[int] = []

    async def failing(attempt: int) -> str:
        attempts.append(attempt)
        raise error

    with pytest.raises(type(error)):
        await call_with_retry(failing, FAST)
    assert attempts == [1]


async def test_each_retry_waits_the_backoff_of_the_attempt_before_it(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []

    async def record_sleep(delay: float) -> None:
        slept.append(delay)

    # Both the first backoff and tenacity's sleeps between later attempts go through asyncio.sleep.
    monkeypatch.setattr(asyncio, "sleep", record_sleep)

    async def fails_three_times(attempt: int) -> int:
        if attempt < 4:
            raise TransientAgentError("busy")
        return attempt

    settings = RetrySettings(max_attempts=4, initial_delay=0.1, max_delay=1.0, jitter=0.0)
    assert await call_with_retry(fails_three_times, settings) == (4, 4)
    assert slept == pytest.approx([0.1, 0.2, 0.4])  # exponential: after attempts 1, 2 and 3


async def test_the_last_attempt_error_surfaces_when_attempts_run_out() -> None:
    async def always(attempt: int) -> None:
        raise TransientAgentError(f"attempt {attempt}")

    with pytest.raises(TransientAgentError, match="attempt 3"):
        await call_with_retry(always, FAST)

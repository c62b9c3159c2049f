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

"""A step's output has a size limit: an agent answering more is a typed, non-retried failure of the step,
and the output is stored nowhere (not a 50 MB checkpoint, not an event)."""

from __future__ import annotations

from typing import Any

import pytest

from agents import AgentCallFailedError, AgentRequest, RetrySettings
from graphs import JourneyRuntime

FAST = RetrySettings(max_attempts=3, initial_delay=0.001, max_delay=0.01, jitter=0.001)
BLOB = "z" * 50_000


async def test_an_output_over_the_limit_fails_the_step_and_is_not_stored(store_url: str) -> None:
    calls: list[int] = []

    def hoard(request: AgentRequest) -> dict[str, Any]:
        calls.append(request.attempt)
        return {"blob": BLOB}

    async with JourneyRuntime.open(store_url, retry=FAST, max_output_bytes=10_000) as rt:
        rt.agents.register("upload_content", hoard, replace=True)
        journey = await rt.structured.design_journey("content_migration", {})
        await rt.structured.execute_journey(journey["journey_id"], "u", {})
        with pytest.raises(AgentCallFailedError) as raised:
            await rt.structured.advance_journey_step(journey["journey_id"], "u", {})
        assert raised.value.details["error_type"] == "AgentOutputTooLargeError"
        assert "10000" in raised.value.message and calls == [1]  # permanent: not retried
        instance = f"{journey['journey_id']}:u"
        events = await rt.history(instance)
        assert [e.payload["error_type"] for e in events if e.type == "agent.failed"] == ["AgentOutputTooLargeError"]
        assert not [e for e in events if BLOB in str(e.payload)]
        status = await rt.structured.get_journey_status(journey["journey_id"], "u")
        assert (status["status"], status["failed_step"]) == ("failed", "upload_content")


async def test_an_output_within_the_limit_is_kept(store_url: str) -> None:
    async with JourneyRuntime.open(store_url, max_output_bytes=100_000) as rt:
        rt.agents.register("upload_content", lambda request: {"blob": BLOB}, replace=True)
        journey = await rt.structured.design_journey("content_migration", {})
        await rt.structured.execute_journey(journey["journey_id"], "u", {})
        status = await rt.structured.advance_journey_step(journey["journey_id"], "u", {})
        assert status["completed_steps"] == ["upload_content"]

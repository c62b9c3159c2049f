"""Least privilege and policies on the one agent-call path: a spec declares the intents it may call and an
agent the scopes it needs; a call outside the grants is refused before it runs, recorded with its reason,
and the journey fails safe (a saga compensates). Policies given to the runtime add to the defaults."""

from __future__ import annotations

from typing import Any

import pytest

from agents import AgentCall, PolicyViolationError, RecordingAgent, RetrySettings
from graphs import JourneyRuntime

FAST = RetrySettings(max_attempts=2, initial_delay=0.001, max_delay=0.01, jitter=0.001)
SPEC: dict[str, Any] = {
    "journey_type": "publishing",
    "permissions": ["content:write"],
    "intents": ["write_content", "review_content"],
    "steps": [
        {"step_id": "write", "agent": "write_content"},
        {"step_id": "enrich", "agent": "read_profiles"},  # an intent the spec does not declare
    ],
}


def denials(events: list[Any]) -> list[dict[str, Any]]:
    return [dict(e.payload) for e in events if e.type == "policy.denied"]


async def test_an_added_policy_runs_after_least_privilege_not_instead(store_url: str) -> None:
    seen: list[str] = []

    def audit(call: AgentCall) -> None:
        seen.append(call.agent.intent)

    async with JourneyRuntime.open(store_url, policies=[audit], retry=FAST) as rt:
        needy = RecordingAgent("write_content")
        rt.agents.register("write_content", needy, permissions={"content:publish"})  # not granted
        rt.agents.register("read_profiles", RecordingAgent("read_profiles"))
        spec = {**SPEC, "intents": None}
        journey = await rt.structured.design_journey("publishing", {}, spec=spec)
        await rt.structured.execute_journey(journey["journey_id"], "u", {})
        with pytest.raises(PolicyViolationError, match="content:publish"):
            await rt.structured.advance_journey_step(journey["journey_id"], "u", {})
        assert not needy.calls and seen == []  # refused by the default policy, before the added one ran
        [denied] = denials(await rt.history(f"{journey['journey_id']}:u"))
        assert denied["intent"] == "write_content" and denied["missing"] == ["content:publish"]
        assert "does not grant" in denied["reason"]


async def test_an_intent_the_spec_does_not_declare_is_refused_and_recorded(store_url: str) -> None:
    async with JourneyRuntime.open(store_url, retry=FAST) as rt:
        writer, profiles = RecordingAgent("write_content"), RecordingAgent("read_profiles")
        rt.agents.register("write_content", writer, permissions={"content:write"})
        rt.agents.register("read_profiles", profiles)
        journey = await rt.structured.design_journey("publishing", {}, spec=SPEC)
        await rt.structured.execute_journey(journey["journey_id"], "u", {})
        await rt.structured.advance_journey_step(journey["journey_id"], "u", {})
        with pytest.raises(PolicyViolationError, match="may not call intent 'read_profiles'"):
            await rt.structured.advance_journey_step(journey["journey_id"], "u", {})
        assert sum(writer.calls.values()) == 1 and not profiles.calls
        events = await rt.history(f"{journey['journey_id']}:u")
        [denied] = denials(events)
        assert (denied["intent"], denied["allowed"]) == ("read_profiles", ["review_content", "write_content"])
        assert [e.step for e in events if e.type == "policy.denied"] == ["enrich"]
        status = await rt.structured.get_journey_status(journey["journey_id"], "u")
        assert (status["status"], status["failed_step"]) == ("failed", "enrich")


async def test_a_refused_saga_step_compensates_what_was_done(store_url: str) -> None:
    async with JourneyRuntime.open(store_url, retry=FAST) as rt:
        undo = RecordingAgent("unwrite_content")
        rt.agents.register("write_content", RecordingAgent("write_content"), permissions={"content:write"})
        rt.agents.register("read_profiles", RecordingAgent("read_profiles"))
        rt.agents.register("unwrite_content", undo)
        saga = await rt.saga.design_saga_journey("publishing", {}, {"write": "unwrite_content"}, spec=SPEC)
        execution = await rt.saga.execute_saga_journey(saga["journey_id"], "u", {})
        for _ in range(2):
            status = await rt.saga.advance_saga_step(
                saga_id=execution["saga_id"], journey_id=saga["journey_id"], user_id="u", step_result={}
            )
        assert status["status"] == "compensated" and status["compensated_steps"] == ["write"]
        assert sum(undo.calls.values()) == 1
        assert [d["intent"] for d in denials(await rt.history(execution["saga_id"]))] == ["read_profiles"]

"""A structured journey writes each step's completion behind the run (``checkpoints.events.write_behind``):
the database commits it while LangGraph moves to the next node, and the next step's call waits for it.
These tests hold the guarantee that buys: every step is in the log before the next step's agent runs,
a write that fails behind the run is made again, and the log ends whole. Memory, SQLite and Postgres."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agents import AgentRequest
from checkpoints.events import EventLog
from graphs import JourneyRuntime

AUTO_STEPS = ["gather", "check", "draft", "send"]
SPEC: dict[str, Any] = {
    "journey_type": "auto_pipeline",
    "name": "Four automatic steps",
    "steps": [{"step_id": step, "mode": "auto", "agent": f"do_{step}"} for step in AUTO_STEPS],
}


async def logged_steps(rt: JourneyRuntime, instance_id: str) -> list[str]:
    """The steps whose completion is committed, read as another process would: through a log of its own,
    which does not wait for what the run writes behind it."""
    other = EventLog(rt.store.backend, rt.store.clock)
    return [event.step or "" for event in await other.list(instance_id, types=["step.completed"])]


async def test_each_step_is_in_the_log_before_the_next_steps_agent_runs(store_url: str) -> None:
    async with JourneyRuntime.open(store_url) as rt:
        seen: dict[str, dict[str, list[str]]] = {}

        def agent_for(step: str) -> Any:
            async def agent(request: AgentRequest) -> dict[str, Any]:
                seen.setdefault(request.instance_id, {})[step] = await logged_steps(rt, request.instance_id)
                return {"done": step}

            return agent

        for step in AUTO_STEPS:
            rt.agents.register(f"do_{step}", agent_for(step))
        journey_id = (await rt.structured.design_journey("auto_pipeline", spec=SPEC))["journey_id"]
        users = [f"user-{n}" for n in range(4)]  # at once: each run's writes behind it stay its own
        views = await asyncio.gather(*(rt.structured.execute_journey(journey_id, user) for user in users))
        for user, view in zip(users, views, strict=True):
            assert view["status"] == "completed"
            assert view["completed_steps"] == AUTO_STEPS
            assert seen[view["instance_id"]] == {step: AUTO_STEPS[:n] for n, step in enumerate(AUTO_STEPS)}, user
            assert await logged_steps(rt, view["instance_id"]) == AUTO_STEPS


async def test_a_completion_whose_write_fails_behind_the_run_is_made_again(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with JourneyRuntime.open(store_url) as rt:
        for step in AUTO_STEPS:
            rt.agents.register(f"do_{step}", lambda request, step=step: {"done": step})
        journey_id = (await rt.structured.design_journey("auto_pipeline", spec=SPEC))["journey_id"]
        events = rt.store.events
        real_append = events.append_together  # a completion behind its run goes with others asked meanwhile
        failed: list[str] = []

        async def append_failing_once(instance_id: str, event: Any, status: str | None = None) -> bool:
            if event.type == "step.completed" and event.step == "check" and not failed:
                failed.append(event.step)
                raise ConnectionResetError("the database went away mid-write")
            return await real_append(instance_id, event, status)

        monkeypatch.setattr(events, "append_together", append_failing_once)
        view = await rt.structured.execute_journey(journey_id, "u")
        assert failed == ["check"]
        assert view["status"] == "completed"
        assert view["completed_steps"] == AUTO_STEPS
        history = [(e.type, e.step) for e in await rt.history(f"{journey_id}:u") if e.type == "step.completed"]
        assert history == [("step.completed", step) for step in AUTO_STEPS]

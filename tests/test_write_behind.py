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
from tests.process_support import counted_write_transactions

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


async def test_last_steps_of_journeys_ending_at_once_are_written_together_with_their_status(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A journey's last step is not written behind (its status goes with it, and the run waits for it), but it
    goes with the completions other runs ask for at the same time: one transaction for many, not one each."""
    journeys = 8
    async with JourneyRuntime.open(store_url) as rt:
        arrived = 0
        everyone = asyncio.Event()

        async def last_step(request: AgentRequest) -> dict[str, Any]:
            nonlocal arrived
            arrived += 1
            if arrived == journeys:
                everyone.set()
            await everyone.wait()  # every journey's last step completes at about the same moment
            return {"done": True}

        rt.agents.register("do_last", last_step)
        spec = {**SPEC, "steps": [{"step_id": "last", "mode": "auto", "agent": "do_last"}]}
        journey_id = (await rt.structured.design_journey("auto_pipeline", spec=spec))["journey_id"]
        transactions = counted_write_transactions(rt.store.events, monkeypatch)  # completions per transaction
        users = [f"user-{n}" for n in range(journeys)]
        views = await asyncio.gather(*(rt.structured.execute_journey(journey_id, user) for user in users))
        assert sum(transactions) == journeys and len(transactions) <= journeys // 2, transactions
        for view in views:
            assert (view["status"], view["completed_steps"]) == ("completed", ["last"])
            assert await logged_steps(rt, view["instance_id"]) == ["last"]
            instance = await rt.store.index.get_instance(view["instance_id"])
            assert instance is not None and instance.status == "completed"


async def test_the_steps_of_journeys_running_at_once_are_written_a_transaction_per_round_not_per_step(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Journeys running at once whose steps each return at once complete their steps in rounds: the writes of a
    round land together, and each journey's next step asks for its own write a few passes of the event loop
    later. The writer took its batch after one pass, so a round went in several transactions (2.8 completions
    each in benchmarks/server.py at 20 clients); it now waits for the runs writing behind it to ask, a few passes
    at most, and a round goes in one."""
    journeys = 8
    async with JourneyRuntime.open(store_url) as rt:
        users = [f"user-{n}" for n in range(journeys)]

        async def agent(request: AgentRequest) -> dict[str, Any]:
            # Steps take their runs a pass or two of the event loop each, as a busy worker's calls do: the runs
            # whose writes landed together ask for their next ones a pass or two apart.
            for _ in range(int(request.instance_id.rpartition("-")[2]) % 3):
                await asyncio.sleep(0)
            return {"done": request.step}

        for step in AUTO_STEPS:
            rt.agents.register(f"do_{step}", agent)
        journey_id = (await rt.structured.design_journey("auto_pipeline", spec=SPEC))["journey_id"]
        # The runs register their instances first (not counted), so that their steps start in step with each other.
        started = asyncio.Barrier(journeys)
        real_run = rt.engine.run

        async def run_together(*args: Any, **kwargs: Any) -> Any:
            await started.wait()
            return await real_run(*args, **kwargs)

        monkeypatch.setattr(rt.engine, "run", run_together)
        transactions = counted_write_transactions(rt.store.events, monkeypatch)
        views = await asyncio.gather(*(rt.structured.execute_journey(journey_id, user) for user in users))
        assert [view["completed_steps"] for view in views] == [AUTO_STEPS] * journeys
        for view in views:
            assert await logged_steps(rt, view["instance_id"]) == AUTO_STEPS
        # A round per step, each in one transaction (a straggler's write may go on its own).
        assert sum(transactions) == journeys * len(AUTO_STEPS), transactions
        assert len(transactions) <= len(AUTO_STEPS) + 2, transactions

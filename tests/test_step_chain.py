"""Consecutive auto steps in one superstep: a structured journey's node goes on to the next auto step's work
itself when nobody watches the run node by node, each step durable in the event log before the next starts.
On memory, SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import func, update

from agents import AgentRequest, RecordingAgent
from checkpoints.schema.tables import journey_events
from graphs import JourneyRuntime
from graphs.errors import RecursionLimitError
from graphs.kernel.engine import RunOptions
from graphs.kernel.streaming import GraphCall
from nodes.criteria import Criteria
from tests.test_tracing import of_instance

EIGHT = {
    "journey_type": "eight",
    "steps": [{"step_id": f"s{i}", "mode": "auto", "agent": "work"} for i in range(8)],
}
# s0 → s1 → s0 → … for ever: s1's only way out needs an output its agent never gives.
ENDLESS = {
    "journey_type": "endless",
    "steps": [
        {"step_id": "s0", "mode": "auto", "agent": "work"},
        {
            "step_id": "s1",
            "mode": "auto",
            "agent": "work",
            "next_steps": [
                {"to": "done", "when": {"all": [{"field": "output.stop", "op": "==", "value": True}]}},
                {"to": "s0"},
            ],
        },
        {"step_id": "done", "mode": "auto", "agent": "work", "next_steps": []},
    ],
}


async def test_auto_steps_run_in_one_superstep_each_logged_before_the_next_starts(
    store_url: str, spans: InMemorySpanExporter
) -> None:
    async with JourneyRuntime.open(store_url) as rt:
        logged_before: list[int] = []
        agent = RecordingAgent("work")

        async def work(request: AgentRequest) -> Any:
            # What another process would read now: the steps before this one are committed already.
            events = await rt.store.events.list(request.instance_id, types=["step.completed"])
            logged_before.append(len(events))
            return agent(request)

        rt.agents.register("work", work, replace=True)
        design = await rt.structured.design_journey("eight", spec=EIGHT)
        done = await rt.structured.execute_journey(design["journey_id"], "ana")
        assert done["status"] == "completed" and done["completed_steps"] == [f"s{i}" for i in range(8)]
        assert logged_before == list(range(8))
        saved = [c async for c in rt.store.saver.alist({"configurable": {"thread_id": done["instance_id"]}})]
        # One checkpoint where the run stopped, after the one superstep that ran all eight steps.
        assert [c.metadata["step"] for c in saved] == [1]
        keys = [e.key for e in await rt.store.events.list(done["instance_id"], types=["step.completed"])]
        assert keys == [f"{done['instance_id']}:s0:1"] + [f"{done['instance_id']}:s{i}:1.{i}" for i in range(1, 8)]

    # Each step keeps its own span, in order, as a node of its own had.
    nodes = sorted(
        (s for s in of_instance(spans, done["instance_id"]) if s.name == "journey.node"),
        key=lambda s: s.start_time or 0,
    )
    assert [s.attributes["journey.node"] for s in nodes if s.attributes] == [f"s{i}" for i in range(8)]


async def test_a_loop_of_auto_steps_with_no_way_out_stops_at_the_recursion_limit(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Steps one node runs in a row count against the run's recursion limit, as LangGraph's supersteps do; a
    long line of auto steps does not (LangGraph's default limit, 10,007). A step's branches are judged once
    per visit: the route its completion event records is the route the run takes."""
    judged: list[dict[str, Any]] = []
    holds = Criteria.holds

    def counted(criteria: Criteria, document: Mapping[str, Any]) -> bool:
        judged.append(dict(document))
        return holds(criteria, document)

    monkeypatch.setattr(Criteria, "holds", counted)
    async with JourneyRuntime.open(store_url) as rt:
        calls: list[str] = []
        agent = RecordingAgent("work")

        def work(request: AgentRequest) -> Any:
            calls.append(request.step or "")
            return agent(request)

        rt.agents.register("work", work, replace=True)
        design = await rt.structured.design_journey("endless", spec=ENDLESS)
        bounded = RunOptions(call=GraphCall(config={"recursion_limit": 30}))
        with pytest.raises(RecursionLimitError, match="recursion_limit"):
            await rt.structured.execute_journey(design["journey_id"], "ana", run_options=bounded)
        assert 20 < len(calls) <= 30 and "done" not in calls  # as LangGraph bounds supersteps
        assert len(judged) == calls.count("s1")  # s1's branch to "done", once per visit
        [instance] = await rt.store.index.list_instances()
        assert instance.status == "failed"  # recorded as the instance's failure, and a read does not run it on
        assert (await rt.structured.run_status(instance.instance_id))["status"] == "failed"
        assert len(calls) <= 30

        forty = {
            "journey_type": "forty",
            "steps": [{"step_id": f"s{i}", "mode": "auto", "agent": "work"} for i in range(40)],
        }
        design = await rt.structured.design_journey("forty", spec=forty)
        done = await rt.structured.execute_journey(design["journey_id"], "ana")
        assert done["status"] == "completed" and len(done["completed_steps"]) == 40


class Crash(BaseException):
    """The process dying in the middle of a step (not an error the agent path retries or records)."""


async def test_a_run_cut_short_by_a_crash_under_the_one_superstep_per_step_version_is_replayed_not_repeated(
    durable_url: str,
) -> None:
    """A run that logged its steps one superstep each (the version before nodes chained them), killed mid-journey,
    replayed by this version: the steps it logged are found under their keys, not done again."""
    calls: list[str] = []
    async with JourneyRuntime.open(durable_url) as rt:
        agent = RecordingAgent("work")

        def crashing(request: AgentRequest) -> Any:
            calls.append(request.step or "")
            if request.step == "s3":
                raise Crash
            return agent(request)

        rt.agents.register("work", crashing, replace=True)
        design = await rt.structured.design_journey("eight", spec=EIGHT)
        with pytest.raises(Crash):
            await rt.structured.execute_journey(design["journey_id"], "ana")
        [instance] = await rt.store.index.list_instances()
        # The log as that version wrote it: s1 and s2 in supersteps 2 and 3 (this one: 1.1 and 1.2).
        t = journey_events.c
        async with rt.store.engine.begin() as conn:
            for visit in (1, 2):
                await conn.execute(
                    update(journey_events)
                    .where(t.idempotency_key.like(f"%:s{visit}:1.{visit}"))
                    .values(idempotency_key=func.replace(t.idempotency_key, f":1.{visit}", f":{1 + visit}"))
                )
    assert calls == ["s0", "s1", "s2", "s3"]

    async with JourneyRuntime.open(durable_url) as rt:
        rt.agents.register("work", RecordingAgent("work"), replace=True)
        counted: list[str] = []
        seen = RecordingAgent("work")

        def counting(request: AgentRequest) -> Any:
            counted.append(request.step or "")
            return seen(request)

        rt.agents.register("work", counting, replace=True)
        status = await rt.structured.run_status(instance.instance_id)
        assert status["status"] == "completed"
        assert counted == ["s3", "s4", "s5", "s6", "s7"]
        events = await rt.store.events.list(instance.instance_id, types=["step.completed"])
        assert [e.step for e in events] == [f"s{i}" for i in range(8)]


async def test_a_resumed_run_looks_up_only_until_it_does_a_step_itself(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that resumes a journey (a person's answer here) looks each step up in the log before doing it, in
    case a crash left it done; once it has done one itself, nothing after it can be logged: no more look-ups."""
    spec = {
        "journey_type": "approve_then_four",
        "steps": [
            {"step_id": "approve", "agent": "work"},
            *({"step_id": f"s{i}", "mode": "auto", "agent": "work"} for i in range(4)),
        ],
    }
    async with JourneyRuntime.open(store_url) as rt:
        rt.agents.register("work", RecordingAgent("work"), replace=True)
        design = await rt.structured.design_journey("approve_then_four", spec=spec)
        await rt.structured.execute_journey(design["journey_id"], "ana")
        looked_up: list[str] = []
        find = type(rt.store.events).find_by_key

        async def counted(self: Any, instance_id: str, key: str) -> Any:
            looked_up.append(key.rpartition(":")[0].rpartition(":")[2])
            return await find(self, instance_id, key)

        monkeypatch.setattr(type(rt.store.events), "find_by_key", counted)
        done = await rt.structured.advance_journey_step(design["journey_id"], "ana", {"ok": True})
        assert done["status"] == "completed" and done["completed_steps"] == ["approve", "s0", "s1", "s2", "s3"]
        assert looked_up == ["approve"]

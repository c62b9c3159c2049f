"""Forking a journey from an earlier step (``runtime.fork``): a new journey with the source's history up to the
step and its state there, which goes on from the next step; the source is left as it is. On memory, SQLite
and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agents import AgentRequest, FailingAgent, RecordingAgent, RetrySettings
from checkpoints import VirtualClock
from checkpoints.ownership import Owner, acting_as
from graphs import ForkPointError, ForkUnsupportedError, JourneyNotFoundError, JourneyRuntime
from graphs.errors import ConcurrencyLimitError
from graphs.lifecycle.catalog import READY_TO_START
from tests.test_saga import HANDLERS, MIGRATION

FAST = RetrySettings(max_attempts=2, initial_delay=0.001, max_delay=0.002, jitter=0.001)


def counting(rt: JourneyRuntime, intent: str, calls: list[AgentRequest]) -> None:
    agent = RecordingAgent(intent)

    def recorded(request: AgentRequest) -> Any:
        calls.append(request)
        return agent(request)

    rt.agents.register(intent, recorded, replace=True)


async def test_a_structured_journey_forked_after_step_two_goes_on_from_step_three_and_completes(
    store_url: str,
) -> None:
    async with JourneyRuntime.open(store_url) as rt:
        design = await rt.structured.design_journey("content_migration")
        journey_id = design["journey_id"]
        source = (await rt.structured.execute_journey(journey_id, "ana"))["instance_id"]
        for step in MIGRATION[:3]:
            await rt.structured.advance_journey_step(journey_id, "ana", {"files": [step]})
        before = await rt.structured.get_journey_status(journey_id, "ana")
        source_events = await rt.history(source)
        transforms: list[AgentRequest] = []
        counting(rt, "transform_data", transforms)

        with acting_as(Owner("bob", "default", None)):
            fork = await rt.fork(source, "analyze_content")
        fork_id = fork["instance_id"]
        assert fork_id != source
        assert fork["forked_from"] == {"instance_id": source, "step_id": "analyze_content"}
        assert fork["status"] == "in_progress"
        assert fork["current_step"] == "transform_data"
        assert fork["completed_steps"] == MIGRATION[:2]
        forked = await rt.store.index.get_instance(fork_id)
        assert forked is not None
        assert (forked.journey_id, forked.user_id, forked.owner) == (journey_id, "ana", "bob")

        # The fork's history: the source's up to step 2 (re-keyed to the fork), then where it came from.
        history = await rt.history(fork_id)
        upto = [e for e in source_events if e.seq <= history[-1].seq - 1]
        assert [(e.type, e.step) for e in history[:-1]] == [(e.type, e.step) for e in upto]
        assert [e.type for e in history].count("step.completed") == 2
        assert history[-1].type == "journey.forked_from"
        assert history[-1].payload["instance_id"] == source
        assert all(e.key is None or e.key.startswith(fork_id) for e in history)

        # The fork runs step 3 itself (its agent is called again), then step 4, and completes.
        third = await rt.structured.advance_run(fork_id, {"files": ["again"]})
        assert third["completed_step"] == "transform_data"
        assert len(transforms) == 1 and transforms[0].instance_id == fork_id
        done = await rt.structured.advance_run(fork_id, {"files": ["done"]})
        assert done["status"] == "completed"
        assert done["completed_steps"] == MIGRATION

        # The source is untouched: same standing, and its log only gained the link to the fork.
        after = await rt.structured.get_journey_status(journey_id, "ana")
        assert after == before
        assert after["current_step"] == "validate_results" and after["completed_steps"] == MIGRATION[:3]
        now = await rt.history(source)
        assert now[:-1] == source_events
        assert (now[-1].type, now[-1].payload["fork_id"]) == ("journey.forked", fork_id)
        finished = await rt.structured.advance_journey_step(journey_id, "ana", {"files": ["source"]})
        assert finished["status"] == "completed"


async def test_a_forked_saga_compensates_only_the_steps_it_completed_after_the_fork_point(store_url: str) -> None:
    """The steps a fork copied from its source are the source's real-world effects: the fork's compensation
    undoes only what it did itself after the fork point (and nothing of the source changes)."""
    async with JourneyRuntime.open(store_url, retry=FAST) as rt:
        undone: list[AgentRequest] = []
        for handler in HANDLERS.values():
            counting(rt, handler, undone)
        saga = await rt.saga.design_saga_journey("enterprise_migration", {"source": "legacy"}, HANDLERS)
        journey_id = saga["journey_id"]
        source = (await rt.saga.execute_saga_journey(journey_id, "ana"))["saga_id"]
        for step in MIGRATION[:3]:
            await rt.saga.advance_saga_step(source, journey_id, "ana", {"step": step})

        fork = await rt.fork(source, "upload_content")
        fork_id = fork["instance_id"]
        assert (fork["current_step"], fork["completed_steps"]) == ("analyze_content", MIGRATION[:1])
        await rt.saga.advance_saga_step(fork_id, journey_id, "ana", {"step": "analyze_content"})
        # In the fork, step 3 fails for good: the fork undoes step 3 (its agent was called) and step 2, which
        # it did; step 1 is the source's.
        rt.agents.register("transform_data", FailingAgent("transform_data", permanent=True), replace=True)
        failed = await rt.saga.advance_saga_step(fork_id, journey_id, "ana", {"step": "transform_data"})
        assert failed["status"] == "compensated"
        assert failed["compensated_steps"] == ["transform_data", "analyze_content"]
        assert [r.intent for r in undone] == ["revert_transformation", "revert_analysis"]
        assert {r.instance_id for r in undone} == {fork_id}

        source_view = await rt.saga.get_saga_status(source)
        assert source_view["status"] == "in_progress"
        assert source_view["current_step"] == "validate_results"
        assert source_view["compensated_steps"] == []
        types = [e.type for e in await rt.history(source)]
        assert not [t for t in types if t.startswith(("compensation.", "saga.compensat"))]
        done = await rt.saga.advance_saga_step(source, journey_id, "ana", {"step": "validate_results"})
        assert done["status"] == "completed"
        assert len(undone) == 2


AUTO_THEN_USER: dict[str, Any] = {
    "journey_type": "auto_then_user",
    "steps": [
        {"step_id": "fetch", "agent": "fetch", "mode": "auto"},
        {"step_id": "enrich", "agent": "enrich", "mode": "auto"},
        {"step_id": "approve", "agent": "approve", "mode": "user"},
    ],
}


@pytest.mark.parametrize("durability", [None, "sync"])
async def test_a_journey_checkpointing_where_it_stops_forks_at_the_steps_it_stopped_after(
    store_url: str, durability: str | None
) -> None:
    """A structured journey's runs checkpoint where they stop by default (every step is in the log), so a step
    that ran on to the next (here ``fetch``) has no checkpoint of its own to fork from: refused, naming the
    steps that can be forked at and how to keep a checkpoint after every step. ``durability="sync"`` does."""
    options: dict[str, Any] = {} if durability is None else {"durability": durability}
    async with JourneyRuntime.open(store_url, **options) as rt:
        calls: dict[str, list[AgentRequest]] = {"fetch": [], "enrich": [], "approve": []}
        for intent, seen in calls.items():
            counting(rt, intent, seen)
        design = await rt.structured.design_journey("auto_then_user", spec=AUTO_THEN_USER)
        source = await rt.structured.execute_journey(design["journey_id"], "ana")
        assert (source["current_step"], source["completed_steps"]) == ("approve", ["fetch", "enrich"])
        saved = [c async for c in rt.store.saver.alist({"configurable": {"thread_id": source["instance_id"]}})]
        if durability is None:
            assert len(saved) == 1  # the stop at "approve" only
            with pytest.raises(ForkPointError, match='durability="sync"') as refused:
                await rt.fork(source["instance_id"], "fetch")
            assert refused.value.allowed == ["enrich"]
            assert [i.instance_id for i in await rt.store.index.list_instances()] == [source["instance_id"]]
        else:
            fork = await rt.fork(source["instance_id"], "fetch")
            # The fork runs "enrich" itself (its agent is called for the fork), then waits at "approve".
            assert (fork["current_step"], fork["completed_steps"]) == ("approve", ["fetch", "enrich"])
            assert [r.instance_id for r in calls["enrich"]] == [source["instance_id"], fork["instance_id"]]
        assert len(calls["fetch"]) == 1
        fork = await rt.fork(source["instance_id"], "enrich")  # stopped right after it: always forkable
        assert (fork["current_step"], fork["completed_steps"]) == ("approve", ["fetch", "enrich"])
        assert len(calls["fetch"]) == 1 and len(calls["enrich"]) == (1 if durability is None else 2)


async def test_a_fork_is_refused_for_a_step_not_completed_an_unknown_journey_and_other_patterns(
    store_url: str,
) -> None:
    async with JourneyRuntime.open(store_url) as rt:
        design = await rt.structured.design_journey("content_migration")
        source = (await rt.structured.execute_journey(design["journey_id"], "ana"))["instance_id"]
        await rt.structured.advance_journey_step(design["journey_id"], "ana", {})
        with pytest.raises(ForkPointError) as refused:
            await rt.fork(source, "transform_data")
        assert refused.value.allowed == ["upload_content"]
        with pytest.raises(JourneyNotFoundError):
            await rt.fork("no-such-journey", "upload_content")
        lifecycle = (await rt.lifecycle.start_journey("client-a", metrics=READY_TO_START))["journey_id"]
        with pytest.raises(ForkUnsupportedError):
            await rt.fork(lifecycle, "sandbox")
        session = (await rt.mvp.start_mvp_journey("ana"))["session"]["session_id"]
        with pytest.raises(ForkUnsupportedError):
            await rt.fork(session, "content")
        assert len(await rt.store.index.list_instances()) == 3  # nothing was registered by a refusal


async def test_a_fork_counts_against_its_sources_concurrency_limit_and_carries_its_deadline(store_url: str) -> None:
    """A fork is no way around the source's limits: it takes a slot of the source's concurrency key (refused
    when none is free, never queued), and it fails at the source's whole-run deadline, not a new one."""
    clock = VirtualClock(datetime(2026, 3, 2, 9, 0, tzinfo=UTC))
    spec = {
        "journey_type": "review",
        "steps": [{"step_id": "draft"}, {"step_id": "approve"}],
        "concurrency": {"key": "$.tenant", "limit": 2, "on_limit": "queue"},
        "deadline": {"after": "PT2H"},
    }
    async with JourneyRuntime.open(store_url, clock=clock) as rt:
        journey_id = (await rt.structured.design_journey("review", spec=spec))["journey_id"]
        source = (await rt.structured.execute_journey(journey_id, "ana", {"tenant": "acme"}))["instance_id"]
        await rt.structured.advance_journey_step(journey_id, "ana", {"text": "first draft"})
        clock.advance(timedelta(hours=1))
        fork = await rt.fork(source, "draft")
        assert (fork["status"], fork["current_step"]) == ("in_progress", "approve")
        assert await rt.instances.flow.slot_of(fork["instance_id"]) == ("structured.review/$.tenant=acme", 1)

        # The source and its fork hold both slots of acme: a new start queues, another fork is refused.
        queued = await rt.structured.execute_journey(journey_id, "ben", {"tenant": "acme"})
        assert queued["status"] == "queued"
        with pytest.raises(ConcurrencyLimitError) as refused:
            await rt.fork(source, "draft")
        assert refused.value.details == {"concurrency_key": "structured.review/$.tenant=acme", "limit": 2}

        clock.advance(timedelta(hours=1))  # the source's two hours are up, and so are the fork's
        await rt.processes.scheduler.run_due()
        for instance_id in (source, fork["instance_id"]):
            found = await rt.store.index.get_instance(instance_id)
            assert found is not None and found.status == "failed"

"""A journey's first run reads no checkpoint: its thread was registered by the same call, under its lock, so
nothing can have been saved on it (LangGraph's read of the latest checkpoint is a round trip per start). Every
later run reads its thread as before, and a start a crash cut short (registered before) reads it too."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from langchain_core.runnables import RunnableConfig

from graphs.process.timers import fire_due_timers
from graphs.runtime import JourneyRuntime
from tests.process_support import runtime, virtual_clock

SPEC = {
    "journey_type": "fresh",
    "steps": [{"step_id": "first", "mode": "auto"}, {"step_id": "ask"}, {"step_id": "last", "mode": "auto"}],
}


@contextmanager
def latest_reads(rt: JourneyRuntime) -> Iterator[list[str]]:
    """The threads whose latest checkpoint the store's saver read meanwhile (by a run or a state read)."""
    saver: Any = rt.store.saver
    read = saver.aget_tuple
    threads: list[str] = []

    async def counted(config: RunnableConfig) -> Any:
        asked = config.get("configurable") or {}
        if not asked.get("checkpoint_id") and not asked.get("checkpoint_ns"):
            threads.append(str(asked.get("thread_id")))
        return await read(config)

    saver.aget_tuple = counted
    try:
        yield threads
    finally:
        saver.aget_tuple = read  # the saver's read again (its own, or read_together's on PostgreSQL)


async def test_a_journeys_first_run_reads_no_checkpoint_and_its_later_runs_read_theirs(store_url: str) -> None:
    async with runtime(store_url) as rt:
        design = await rt.structured.design_journey("fresh", spec=SPEC)
        with latest_reads(rt) as reads:
            started = await rt.structured.execute_journey(design["journey_id"], "ana")
        instance_id = started["instance_id"]
        assert (started["status"], started["current_step"], started["completed_steps"]) == (
            "in_progress",
            "ask",
            ["first"],
        )
        assert instance_id not in reads
        # What the first run saved is the thread's state: a read and the next run find it.
        with latest_reads(rt) as reads:
            status = await rt.structured.get_journey_status(design["journey_id"], "ana")
            done = await rt.structured.advance_journey_step(design["journey_id"], "ana", {"answer": 42})
        assert status["current_step"] == "ask"
        assert (done["status"], done["completed_steps"]) == ("completed", ["first", "ask", "last"])
        assert instance_id in reads
        # Another user's start of the same design is a journey of its own, again with no read.
        with latest_reads(rt) as reads:
            other = await rt.structured.execute_journey(design["journey_id"], "bob")
        assert other["completed_steps"] == ["first"] and other["instance_id"] not in reads


PROCESS = {
    "name": "fresh_timer",
    "elements": [
        {"type": "start", "id": "start"},
        {"type": "timer", "id": "wait", "timer": {"duration": "PT1H"}},
        {"type": "end", "id": "end"},
    ],
    "flows": ["start -> wait", "wait -> end"],
}


async def test_a_process_instances_start_reads_no_checkpoint_and_its_continuation_reads_its_own(
    store_url: str,
) -> None:
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        await rt.processes.deploy(PROCESS)
        with latest_reads(rt) as reads:
            started = await rt.processes.start("fresh_timer", "k-1")
        instance_id = started["instance_id"]
        assert started["status"] == "in_progress"
        assert [w["element"] for w in started["waiting"]] == ["wait"]
        assert instance_id not in reads
        # The start saved the thread where it parks: its timer's continuation reads it and goes on to the end.
        clock.advance(timedelta(hours=1))
        with latest_reads(rt) as reads:
            report = await fire_due_timers(rt.processes)
        assert (report.fired, report.resumed) == (1, 1)
        assert instance_id in reads
        assert (await rt.processes.status(instance_id))["status"] == "completed"

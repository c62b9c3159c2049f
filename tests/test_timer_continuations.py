"""A fired timer's continuation of a parked process checkpoints only where it stops (durability "exit"),
while each of its steps is logged before the next starts; a runtime opened with durability "sync" keeps
a checkpoint per superstep. Runs on memory, SQLite and Postgres, on a virtual clock."""

from __future__ import annotations

import asyncio
from contextlib import suppress
from datetime import timedelta
from typing import Any

import pytest
from langgraph.types import Durability

from agents import AgentRequest
from checkpoints.clock import VirtualClock
from graphs.kernel.engine import ON_CANCEL, OnCancel
from graphs.runtime import JourneyRuntime
from nodes.telemetry import METRICS
from tests.process_support import Calls, linear, runtime, user_task, virtual_clock, waiting_elements

# timer → two service tasks → a user task: the continuation runs three supersteps and stops at the task.
SPEC = linear(
    "remind_later",
    {"type": "timer", "id": "later", "timer": {"duration": "PT1H"}},
    {"type": "service_task", "id": "look_up", "agent": "crm.look_up", "output_variables": ["tier"]},
    {"type": "service_task", "id": "draft", "agent": "mail.draft", "output_variables": ["draft_id"]},
    user_task("send"),
)


async def checkpoints_of(rt: JourneyRuntime, instance_id: str) -> int:
    return len([c async for c in rt.store.saver.alist({"configurable": {"thread_id": instance_id}})])


@pytest.mark.parametrize(("durability", "written"), [("async", 1), ("sync", 4)])
async def test_a_timer_continuation_checkpoints_where_it_stops_unless_the_runtime_runs_sync(
    store_url: str, durability: Durability, written: int
) -> None:
    clock = virtual_clock()
    calls = Calls()
    async with runtime(store_url, clock, durability=durability) as rt:
        calls.register(rt, "crm.look_up", {"tier": "gold"})
        calls.register(rt, "mail.draft", {"draft_id": "d-1"})
        await rt.processes.deploy(SPEC)
        view = await rt.processes.start("remind_later", "cust-1")
        instance_id = view["instance_id"]
        assert waiting_elements(view) == ["later"]
        parked = await checkpoints_of(rt, instance_id)

        clock.advance(timedelta(hours=1))
        report = await rt.processes.scheduler.run_due()
        assert (report.fired, report.resumed, report.failed) == (1, 1, 0)

        status = await rt.processes.status(instance_id)
        assert waiting_elements(status) == ["send"]
        assert (status["variables"]["tier"], status["variables"]["draft_id"]) == ("gold", "d-1")
        assert [intent for intent, _payload in calls.log] == ["crm.look_up", "mail.draft"]
        # Each step's completion is in the log, whatever was checkpointed.
        logged = [e.step for e in await rt.processes.history(instance_id) if e.type == "task.completed"]
        assert logged == ["look_up", "draft"]
        assert await checkpoints_of(rt, instance_id) - parked == written


# two service tasks → a timer: the start runs four supersteps after its input and parks at the timer.
CALLS_THEN_TIMER = linear(
    "look_up_then_wait",
    {"type": "service_task", "id": "look_up", "agent": "crm.look_up", "output_variables": ["tier"]},
    {"type": "service_task", "id": "draft", "agent": "mail.draft", "output_variables": ["draft_id"]},
    {"type": "timer", "id": "later", "timer": {"duration": "PT1H"}},
)


async def _not_halted(_instance_id: str) -> None:
    raise AssertionError("nothing cancels this start")


@pytest.mark.parametrize(
    ("durability", "in_server_run", "written"), [("async", False, 1), ("sync", False, 5), ("async", True, 5)]
)
async def test_a_process_start_checkpoints_where_it_parks_unless_a_cancel_can_reach_it_or_the_runtime_runs_sync(
    store_url: str, durability: Durability, in_server_run: bool, written: int
) -> None:
    """A start's steps are logged as a continuation's are, and a start cut short before it stops is run again
    from its first event (test_kernel_instances): its checkpoints between its input and where it parks served
    nothing, and were half of a parking start's statements. A server's run (``ON_CANCEL`` set, as its executor
    sets it) keeps them: a client reads its thread while it runs, and its cancel's halt is recorded where the
    thread stands, a branch cut beside one that waits included (test_server_cancelled_branches)."""
    clock = virtual_clock()
    calls = Calls()
    async with runtime(store_url, clock, durability=durability) as rt:
        calls.register(rt, "crm.look_up", {"tier": "gold"})
        calls.register(rt, "mail.draft", {"draft_id": "d-1"})
        await rt.processes.deploy(CALLS_THEN_TIMER)
        token = ON_CANCEL.set(OnCancel(taken=lambda: None, halt=_not_halted)) if in_server_run else None
        try:
            view = await rt.processes.start("look_up_then_wait", "cust-1")
        finally:
            if token is not None:
                ON_CANCEL.reset(token)
        instance_id = view["instance_id"]
        assert waiting_elements(view) == ["later"]
        assert (view["variables"]["tier"], view["variables"]["draft_id"]) == ("gold", "d-1")
        logged = [e.step for e in await rt.processes.history(instance_id) if e.type == "task.completed"]
        assert logged == ["look_up", "draft"]
        assert await checkpoints_of(rt, instance_id) == written
        # Where it parked is its state: a read finds it, and its timer's continuation goes on from it.
        assert waiting_elements(await rt.processes.status(instance_id)) == ["later"]
        clock.advance(timedelta(hours=1))
        report = await rt.processes.scheduler.run_due()
        assert (report.fired, report.resumed, report.failed) == (1, 1, 0)
        assert (await rt.processes.status(instance_id))["status"] == "completed"
        assert [intent for intent, _payload in calls.log] == ["crm.look_up", "mail.draft"]


async def test_a_process_read_while_its_start_runs_answers_the_variables_it_started_with(store_url: str) -> None:
    """A process start checkpoints only where it stops (outside a server's run; at durability "exit", as here, every
    start does): a status read while it runs (a slow agent; the read waits for the lock a moment, then answers the
    instance as last committed) found no checkpoint and answered no variables at all. It answers the instance as it
    started."""
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow(_request: AgentRequest) -> dict[str, Any]:
        entered.set()
        async with asyncio.timeout(30):  # only a guard: the test releases it
            await release.wait()
        return {"tier": "gold"}

    async with runtime(store_url, durability="exit") as rt:
        rt.agents.register("crm.look_up", slow)
        rt.agents.register("mail.draft", lambda _request: {"draft_id": "d-1"})
        await rt.processes.deploy(CALLS_THEN_TIMER)
        starting = asyncio.create_task(
            rt.processes.start("look_up_then_wait", "cust-1", {"plan": "pro"}, instance_id="proc_slow_start")
        )
        async with asyncio.timeout(30):
            await entered.wait()
        read = await rt.processes.status("proc_slow_start")
        assert (read["status"], read["version"]) == ("in_progress", 1)
        assert read["variables"] == {"plan": "pro", "business_key": "cust-1"}
        release.set()
        view = await starting
        assert waiting_elements(view) == ["later"] and view["variables"]["tier"] == "gold"
        assert waiting_elements(await rt.processes.status("proc_slow_start")) == ["later"]


# How long the slow pager of the escalation test takes to answer when nothing else happens meanwhile.
PAGER_ANSWERS_S = 5.0

NAP = linear("wake_up", {"type": "timer", "id": "nap", "timer": {"duration": "PT1H"}})


async def fire_counting_single_reads(
    rt: JourneyRuntime, clock: VirtualClock, monkeypatch: pytest.MonkeyPatch
) -> list[str]:
    """Fire what is due an hour on (three naps that complete their processes), recording each instance
    read one at a time from the index meanwhile."""
    single_reads: list[str] = []
    read_one = rt.store.index.get_instance

    async def counted(instance_id: str, **kwargs: object) -> object:
        single_reads.append(instance_id)
        return await read_one(instance_id, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(rt.store.index, "get_instance", counted)
    clock.advance(timedelta(hours=1))
    report = await rt.processes.scheduler.run_due()
    assert (report.fired, report.resumed, report.failed) == (3, 3, 0)
    monkeypatch.undo()
    return single_reads


async def test_a_timer_continuation_that_completes_the_process_reads_no_instance_row_per_thread(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scheduler reads the index rows of a fired batch in one query; the continuation itself, through to
    the end event, reads none again (the spec that judges a completed run is the one its graph was built from)."""
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        await rt.processes.deploy(NAP)
        ids = [(await rt.processes.start("wake_up", f"cust-{i}"))["instance_id"] for i in range(3)]
        assert await fire_counting_single_reads(rt, clock, monkeypatch) == []
        assert [(await rt.processes.status(i))["status"] for i in ids] == ["completed"] * 3


async def test_a_worker_that_did_not_start_the_instances_reads_no_instance_row_per_continuation(
    durable_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Timers usually fall due long after their instances parked, in a worker that never saw them start:
    the batch's one read of the index rows also tells each run's telemetry its journey and pattern."""
    clock = virtual_clock()
    async with runtime(durable_url, clock) as rt:
        await rt.processes.deploy(NAP)
        ids = [(await rt.processes.start("wake_up", f"cust-{i}"))["instance_id"] for i in range(3)]
    async with runtime(durable_url, clock) as worker:
        assert await fire_counting_single_reads(worker, clock, monkeypatch) == []
        assert [(await worker.processes.status(i))["status"] for i in ids] == ["completed"] * 3


async def variables_version(rt: JourneyRuntime, instance_id: str) -> object:
    """The version LangGraph gave the thread's ``variables`` channel at its latest checkpoint."""
    saved = await rt.store.saver.aget_tuple({"configurable": {"thread_id": instance_id}})
    assert saved is not None
    return saved.checkpoint["channel_versions"]["variables"]


async def test_a_timer_continuation_leaves_the_variables_as_they_were_without_writing_them_again(
    store_url: str,
) -> None:
    """A timer assigns no variable: its continuation gives them no new version, so its checkpoint holds no
    new copy of them (a copy per continuation, serialised and written, of a process's whole variables)."""
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        await rt.processes.deploy(NAP)
        instance_id = (await rt.processes.start("wake_up", "cust-1", {"plan": "gold"}))["instance_id"]
        parked = await variables_version(rt, instance_id)

        clock.advance(timedelta(hours=1))
        report = await rt.processes.scheduler.run_due()
        assert (report.fired, report.resumed, report.failed) == (1, 1, 0)

        status = await rt.processes.status(instance_id)
        assert (status["status"], status["variables"]["plan"]) == ("completed", "gold")
        assert await variables_version(rt, instance_id) == parked


async def latest_step(rt: JourneyRuntime, instance_id: str) -> int:
    """The superstep of the thread's latest checkpoint."""
    saved = await rt.store.saver.aget_tuple({"configurable": {"thread_id": instance_id}})
    assert saved is not None
    return int(saved.metadata["step"])


def end_runs_timed() -> float:
    """How many runs of the end node the step histogram has counted (``journeys_step_duration_seconds``)."""
    return METRICS.get_sample_value("journeys_step_duration_seconds_count", {"pattern": "process", "node": "end"}) or 0


@pytest.mark.parametrize(("durability", "supersteps"), [("async", 1), ("sync", 2)])
async def test_a_timer_continuation_runs_the_end_it_leads_to_in_its_own_superstep_unless_the_runtime_runs_sync(
    store_url: str, durability: Durability, supersteps: int
) -> None:
    """A fired timer whose flow leads to an end event: the wait's node runs the end's work itself (nobody
    watches the continuation node by node, and it checkpoints only where it stops), which saves a superstep of
    LangGraph's. The end is logged, timed and shown as when it runs as a node of its own."""
    clock = virtual_clock()
    async with runtime(store_url, clock, durability=durability) as rt:
        await rt.processes.deploy(NAP)
        instance_id = (await rt.processes.start("wake_up", "cust-1", {"plan": "gold"}))["instance_id"]
        parked, timed = await latest_step(rt, instance_id), end_runs_timed()

        clock.advance(timedelta(hours=1))
        report = await rt.processes.scheduler.run_due()
        assert (report.fired, report.resumed, report.failed) == (1, 1, 0)

        assert await latest_step(rt, instance_id) - parked == supersteps
        status = await rt.processes.status(instance_id)
        assert (status["status"], status["outcome"], status["variables"]["plan"]) == ("completed", "end", "gold")
        ended = [e for e in await rt.processes.history(instance_id) if e.type == "process.completed"]
        recorded = {"plan": "gold", "business_key": "cust-1"}
        assert [(e.step, e.payload["outcome"], e.payload["variables"]) for e in ended] == [("end", "end", recorded)]
        assert end_runs_timed() == timed + 1


async def test_a_slow_escalation_does_not_hold_back_the_continuations_of_timers_fired_with_it(store_url: str) -> None:
    """An SLA's notify agent (a pager slow to answer) fired in the same pass as a parked journey's timer: the
    journey continues while the agent call is under way, not once every timer of the pass has taken effect."""
    clock = virtual_clock()
    continued = asyncio.Event()
    seen: list[bool] = []

    async def note(_request: AgentRequest) -> dict[str, Any]:
        continued.set()
        return {}

    async def page_lead(_request: AgentRequest) -> dict[str, Any]:
        with suppress(TimeoutError):  # the pager answers at last either way
            await asyncio.wait_for(continued.wait(), timeout=PAGER_ANSWERS_S)
        seen.append(continued.is_set())
        return {}

    async with runtime(store_url, clock) as rt:
        rt.agents.register("note", note)
        rt.agents.register("page_lead", page_lead)
        await rt.processes.deploy(
            linear(
                "remind",
                {"type": "timer", "id": "later", "timer": {"duration": "PT1H"}},
                {"type": "service_task", "id": "noted", "agent": "note"},
            )
        )
        sla = {"sla": "PT1H", "on_timeout": {"action": "notify", "notify": "page_lead"}}
        await rt.processes.deploy(linear("approval", user_task("approve", candidate_groups=["leads"], **sla)))
        parked = (await rt.processes.start("remind", "cust-1"))["instance_id"]
        await rt.processes.start("approval", "doc-1")

        clock.advance(timedelta(hours=1))
        report = await rt.processes.scheduler.run_due()
        assert (report.fired, report.resumed, report.failed) == (2, 1, 0)
        assert seen == [True]  # the journey had continued while the pager was being called
        assert (await rt.processes.status(parked))["status"] == "completed"

"""Delivering a wait's resolution resumes the interrupt its wait row names (recorded when the wait node
parked), without reading the thread's state first; whatever that id cannot vouch for goes the careful way.
Runs on memory, SQLite and Postgres, on a virtual clock."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, timedelta
from subprocess import PIPE
from typing import Any

import pytest
from langgraph.pregel import Pregel
from langgraph.types import Command
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from sqlalchemy import event, update
from structlog.testing import capture_logs

from checkpoints.figures import live_figures
from checkpoints.schema.tables import process_waits
from graphs.kernel import streaming
from graphs.kernel.engine import RunOptions
from graphs.kernel.instances import Instances
from graphs.kernel.streaming import GraphCall
from graphs.process import orchestrator
from graphs.process.spec import ProcessSpec
from graphs.process.timers import fire_due_timers
from graphs.runtime import JourneyRuntime
from tests.process_support import Calls, linear, runtime, user_task, virtual_clock

# A timer, then an agent: the continuation runs one step past the wait.
NAP = linear(
    "nap",
    {"type": "timer", "id": "later", "timer": {"duration": "PT1H"}},
    {"type": "service_task", "id": "wake", "agent": "wake", "output_variables": ["awake"]},
)
STALE_ID = "0" * 32  # an interrupt id the thread is not parked on (a crash cut its park short, say)


async def parked(rt: JourneyRuntime, calls: Calls, count: int) -> list[tuple[str, str]]:
    """``count`` instances of NAP parked at their timer: (instance id, wait id) each."""
    calls.register(rt, "wake", {"awake": True})
    await rt.processes.deploy(NAP)
    ids = [(await rt.processes.start("nap", f"cust-{i}"))["instance_id"] for i in range(count)]
    return [(i, str(timer.wait_id)) for i in ids for timer in await rt.processes.services.timers.find(instance_id=i)]


async def record_stale_id(rt: JourneyRuntime, wait_id: str) -> None:
    """The wait row names an interrupt its thread is not parked on."""
    async with rt.store.engine.begin() as conn:
        stale = update(process_waits).where(process_waits.c.wait_id == wait_id).values(interrupt_id=STALE_ID)
        await conn.execute(stale)


async def completions(rt: JourneyRuntime, instance_id: str) -> list[str]:
    return [e.type for e in await rt.processes.history(instance_id) if e.type in ("wait.completed", "task.completed")]


@asynccontextmanager
async def counting_state_reads(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[list[str]]:
    """Every read of a thread's state (``aget_state``) meanwhile, by thread."""
    reads: list[str] = []
    read = Pregel.aget_state

    async def counted(self: Pregel, config: Any, **kwargs: Any) -> Any:
        reads.append(str(config["configurable"]["thread_id"]))
        return await read(self, config, **kwargs)

    monkeypatch.setattr(Pregel, "aget_state", counted)
    try:
        yield reads
    finally:
        monkeypatch.undo()


async def test_a_continuation_resumes_the_recorded_interrupt_without_reading_the_threads_state(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock, calls = virtual_clock(), Calls()
    async with runtime(store_url, clock) as rt:
        waits = await parked(rt, calls, 3)
        for instance_id, wait_id in waits:  # the wait row names the interrupt the thread is parked on
            graph = (await rt.processes.loaded(instance_id))[3]
            snapshot = await graph.aget_state(rt.engine.config(instance_id))
            [pending] = [i for t in snapshot.tasks for i in t.interrupts]
            wait = await rt.processes.services.waits.get(wait_id)
            assert wait is not None and (wait.interrupt_id, pending.value["wait_id"]) == (pending.id, wait_id)

        clock.advance(timedelta(hours=1))
        async with counting_state_reads(monkeypatch) as reads:
            report = await rt.processes.scheduler.run_due()
        assert (report.fired, report.resumed, report.failed) == (3, 3, 0)
        assert reads == []
        for instance_id, _wait_id in waits:
            status = await rt.processes.status(instance_id)
            assert (status["status"], status["variables"]["awake"]) == ("completed", True)
            assert await completions(rt, instance_id) == ["wait.completed", "task.completed"]
        assert calls.intents() == ["wake"] * 3


async def test_a_stale_interrupt_id_is_refused_before_anything_is_written_and_the_wait_still_delivered(
    store_url: str,
) -> None:
    """An id the thread is not parked on (its park was cut short after the row was written, and it parked
    anew under another) changes nothing; the resolution is then delivered to the interrupt the state shows."""
    clock, calls = virtual_clock(), Calls()
    async with runtime(store_url, clock) as rt:
        [(instance_id, wait_id)] = await parked(rt, calls, 1)
        await record_stale_id(rt, wait_id)
        clock.advance(timedelta(hours=1))
        report = await rt.processes.scheduler.run_due()
        assert (report.fired, report.resumed, report.failed) == (1, 1, 0)
        assert (await rt.processes.status(instance_id))["status"] == "completed"
        assert await completions(rt, instance_id) == ["wait.completed", "task.completed"]
        assert calls.intents() == ["wake"]


async def test_a_refused_resume_is_an_expected_outcome_not_an_error_in_the_trace(
    store_url: str, spans: InMemorySpanExporter
) -> None:
    """The strict resume's refusal of a stale id ends its ``journey.run`` span unmarked (status unset), with an
    event saying it was refused; the careful delivery's run after it is a span of its own."""
    clock, calls = virtual_clock(), Calls()
    async with runtime(store_url, clock) as rt:
        [(_instance_id, wait_id)] = await parked(rt, calls, 1)
        await record_stale_id(rt, wait_id)
        clock.advance(timedelta(hours=1))
        spans.clear()
        assert (await rt.processes.scheduler.run_due()).resumed == 1
        runs = [s for s in spans.get_finished_spans() if s.name == "journey.run"]
        assert [s.status.status_code for s in runs] == [StatusCode.UNSET, StatusCode.UNSET]
        refused, delivered = runs
        assert [e.name for e in refused.events] == ["journey.resume_refused"]
        assert (refused.attributes or {})["journey.resume_refused"] == "not_pending"
        assert "journey.resume_refused" not in (delivered.attributes or {})


async def test_a_resolution_delivered_already_answers_false_and_changes_nothing(store_url: str) -> None:
    clock, calls = virtual_clock(), Calls()
    async with runtime(store_url, clock) as rt:
        [(instance_id, wait_id)] = await parked(rt, calls, 1)
        clock.advance(timedelta(hours=1))
        assert (await rt.processes.scheduler.run_due()).resumed == 1
        history = await rt.processes.history(instance_id)
        assert await rt.processes.deliver(instance_id, wait_id) is False
        assert await rt.processes.history(instance_id) == history
        assert calls.intents() == ["wake"]


async def test_two_workers_delivering_the_same_wait_at_once_continue_it_once(store_url: str) -> None:
    """Two workers (two runtimes on a durable store; on memory, two callers of one runtime) deliver the same
    resolution at the same moment: exactly one continues the thread, the other answers False."""
    clock, calls = virtual_clock(), Calls()
    async with runtime(store_url, clock) as first:
        waits = await parked(first, calls, 4)
        clock.advance(timedelta(hours=1))
        fired = await first.processes.services.timers.claim_due(clock.now(), "w", limit=10)
        assert len(await first.processes.services.timers.fire_waits(fired, "w")) == 4
        async with other_worker(first, store_url, clock, calls) as second:
            outcomes = await asyncio.gather(*(rt.processes.deliver(i, w) for i, w in waits for rt in (first, second)))
        assert [sorted(outcomes[n : n + 2]) for n in range(0, len(outcomes), 2)] == [[False, True]] * 4
        for instance_id, _wait_id in waits:
            assert (await first.processes.status(instance_id))["status"] == "completed"
            assert await completions(first, instance_id) == ["wait.completed", "task.completed"]
        assert calls.intents() == ["wake"] * 4


async def test_deliveries_asked_for_together_are_read_together(store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A burst of continuations reads their waits' deliveries in shared statements, each caller getting its own
    wait's (or None for one that has nothing to deliver), and every instance continues once."""
    clock, calls = virtual_clock(), Calls()
    async with runtime(store_url, clock) as rt:
        waits = await parked(rt, calls, 6)
        clock.advance(timedelta(hours=1))
        fired = await rt.processes.services.timers.claim_due(clock.now(), "w", limit=10)
        firing = [t for t in fired if t.wait_id != waits[-1][1]]  # the last wait stays unresolved
        assert len(await rt.processes.services.timers.fire_waits(firing, "w")) == 5
        store = rt.processes.services.waits
        reads: list[object] = []
        read = store._backend.read

        async def counted(statement: Any, params: Any = None) -> Any:
            reads.append(statement)
            return await read(statement, params)

        monkeypatch.setattr(store._backend, "read", counted)
        deliveries = await asyncio.gather(*(store.delivery(wait_id) for _i, wait_id in waits))
        assert len(reads) == 1
        assert [d is not None and d.resolution["kind"] for d in deliveries] == ["timer"] * 5 + [False]
        monkeypatch.undo()
        outcomes = await asyncio.gather(*(rt.processes.deliver(i, w) for i, w in waits))
        assert outcomes == [True] * 5 + [False]
        assert calls.intents() == ["wake"] * 5


async def test_a_worker_new_to_a_version_reads_its_deployment_once_for_a_burst(
    durable_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Timers of eight instances of one version fall due on a worker that has not seen that version: their
    continuations, run side by side, read its deployment row once between them."""
    clock, calls = virtual_clock(), Calls()
    async with runtime(durable_url, clock) as first:
        waits = await parked(first, calls, 8)
    clock.advance(timedelta(hours=1))
    async with runtime(durable_url, clock) as fresh:
        calls.register(fresh, "wake", {"awake": True})
        deployments = fresh.processes.deployed.store
        reads: list[str] = []
        by_design = deployments.by_design

        async def counted(design_id: str) -> Any:
            reads.append(design_id)
            return await by_design(design_id)

        monkeypatch.setattr(deployments, "by_design", counted)
        report = await fresh.processes.scheduler.run_due()
        assert (report.fired, report.resumed) == (8, 8)
        assert len(reads) == 1
        for instance_id, _wait_id in waits:
            assert (await fresh.processes.status(instance_id))["status"] == "completed"


@asynccontextmanager
async def other_worker(rt: JourneyRuntime, url: str, clock: Any, calls: Calls) -> AsyncIterator[JourneyRuntime]:
    if url.startswith("memory"):  # one process only: the same runtime stands in for the second worker
        yield rt
        return
    async with runtime(url, clock) as second:
        calls.register(second, "wake", {"awake": True})
        yield second


async def test_a_thread_a_crash_left_in_flight_is_finished_and_not_resumed_again(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A continuation cut short after its wait node took the resolution (its checkpoint moved past the
    interrupt): delivering again finds the recorded id no longer pending, finishes the run in flight, and
    answers False. The cut is an ``interrupt_after`` whose checkpoint is left unmarked, as a kill leaves it
    (a marked stop is a breakpoint, which waits for a run without input)."""
    monkeypatch.setattr(streaming, "BREAKPOINT", "not_a_breakpoint")
    clock, calls = virtual_clock(), Calls()
    async with runtime(store_url, clock, durability="sync") as rt:
        [(instance_id, wait_id)] = await parked(rt, calls, 1)
        clock.advance(timedelta(hours=1))
        fired = await rt.processes.services.timers.claim_due(clock.now(), "w", limit=10)
        [(_timer, resolution)] = await rt.processes.services.timers.fire_waits(fired, "w")
        delivery = await rt.processes.services.waits.delivery(wait_id)
        assert delivery is not None and delivery.interrupt_id is not None
        _instance, _deployment, _spec, graph = await rt.processes.loaded(instance_id)
        async with rt.engine.exclusive(instance_id):  # stops after the wait node, as a kill there would
            cut_short = RunOptions(call=GraphCall(interrupt_after=["later"]))
            await rt.processes.run(graph, instance_id, Command(resume={delivery.interrupt_id: resolution}), cut_short)
        assert calls.intents() == []

        assert await rt.processes.deliver(instance_id, wait_id) is False
        assert (await rt.processes.status(instance_id))["status"] == "completed"
        assert await completions(rt, instance_id) == ["wait.completed", "task.completed"]
        assert calls.intents() == ["wake"]
        assert await rt.processes.services.waits.delivery(wait_id) is None  # consumed: nothing left to deliver


# A fork: bob's task then an agent (ship) in one branch, a one-hour timer in the other; they join before the end.
FORKED = {
    "name": "forked",
    "version": 1,
    "elements": [
        {"type": "start", "id": "start"},
        {"type": "parallel_gateway", "id": "fork"},
        user_task("pack", assignee="bob"),
        {"type": "service_task", "id": "ship", "agent": "ship", "outputs": ["tracking"]},
        {"type": "timer", "id": "cool", "timer": {"duration": "PT1H"}},
        {"type": "parallel_gateway", "id": "join"},
        {"type": "end", "id": "end"},
    ],
    "flows": [
        "start -> fork",
        "fork -> pack",
        "pack -> ship",
        "ship -> join",
        "fork -> cool",
        "cool -> join",
        "join -> end",
    ],
}


async def fail_and_die(url: str) -> None:
    """The child of the test below: bob's task is completed, ship fails, and the process is SIGKILLed once
    the failed run has saved its checkpoint, before the failure is logged (the instance's row is written)."""
    async with runtime(url, virtual_clock()) as rt:
        Calls().flaky(rt, "ship")
        await rt.processes.deploy(FORKED)
        print("STARTED", (await rt.processes.start("forked", "order-1"))["instance_id"], flush=True)

        async def killed(*_args: Any, **_kwargs: Any) -> None:
            os.kill(os.getpid(), signal.SIGKILL)

        Instances.fail = killed  # type: ignore[method-assign]
        [pack] = await rt.processes.inbox.list_tasks(assignee="bob")
        await rt.processes.inbox.complete(pack["task_id"], user="bob", payload={})


async def test_a_failure_a_crash_kept_from_the_log_holds_the_answer_to_a_sibling_branch(durable_url: str) -> None:
    """A run fails in one branch of a fork, its checkpoint holds the failure, and the process is killed before
    the failure is logged: the instance's row still says ``in_progress``. When the other branch's timer fires,
    its answer must not resume the thread (LangGraph would run the failed element again with any resume,
    without a retry): it is held, the failure is logged with the error's own type, and the retry delivers the
    answer."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.test_timers_delivery", durable_url, stdout=PIPE, stderr=PIPE
    )
    out, err = await asyncio.wait_for(child.communicate(), timeout=120)
    assert child.returncode == -signal.SIGKILL, err.decode()[-3000:]
    [instance_id] = [line.split()[1] for line in out.decode().splitlines() if line.startswith("STARTED")]

    clock, calls = virtual_clock(), Calls()
    async with runtime(durable_url, clock) as rt:
        ship = calls.flaky(rt, "ship", {"tracking": "T-1"})
        ship["down"] = False  # any call now would succeed, and show
        graph = (await rt.processes.loaded(instance_id))[3]
        snapshot = await graph.aget_state(rt.engine.config(instance_id))
        assert [t.name for t in snapshot.tasks if t.error is not None] != []  # the checkpoint holds the failure
        row = await rt.store.index.get_instance(instance_id)
        assert row is not None and row.status == "in_progress"  # the instance's row does not

        clock.advance(timedelta(hours=1))
        report = await rt.processes.scheduler.run_due()
        assert report.fired == 1
        assert calls.intents() == []  # the failed element did not run again
        history = await rt.processes.history(instance_id)
        assert "process.retried" not in [e.type for e in history]
        [logged] = [e for e in history if e.type == "instance.failed"]
        assert "failed at step 'ship'" in logged.payload["error"]  # the failure the checkpoint holds
        # With the type the run raised, as a failure logged at once records it (it said JourneyError), and its
        # message, not the checkpoint's text of the error.
        assert logged.payload["error_type"] == "AgentCallFailedError"
        assert logged.payload["error"].startswith("agent for intent 'ship'")
        status = await rt.processes.status(instance_id)
        assert (status["status"], status["failed_element"]) == ("failed", "ship")
        row = await rt.store.index.get_instance(instance_id)
        assert row is not None and row.status == "failed"  # logged now: recovery passes leave it to the retry
        assert await rt.processes.services.waits.undelivered() == []

        retried = await rt.processes.retry(instance_id)
        assert (retried["status"], retried["variables"]["tracking"]) == ("completed", "T-1")
        assert calls.intents() == ["ship"]
        completed = [e.step for e in await rt.processes.history(instance_id) if e.type == "wait.completed"]
        assert sorted(completed) == ["cool", "pack"]


if __name__ == "__main__":
    asyncio.run(fail_and_die(sys.argv[1]))


async def test_the_instances_of_a_firing_are_read_a_batch_at_a_time_by_one_statement_text_as_their_threads_resume(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A firing reads the index rows of the instances it resumes a batch at a time: with an IN list each number of
    # ids was a new statement for SQLAlchemy to render and PostgreSQL to parse; one array parameter is not.
    calls, clock = Calls(), virtual_clock()
    async with runtime(postgres_url, clock) as rt:
        ids = [instance_id for instance_id, _wait_id in await parked(rt, calls, 5)]
        sent: list[str] = []

        def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            if "FROM journey_instances" in statement:
                sent.append(statement)

        engine = rt.store.engine.sync_engine
        event.listen(engine, "before_cursor_execute", record)
        try:
            two, five = await rt.processes.instances_by_id(ids[:2]), await rt.processes.instances_by_id(ids)
        finally:
            event.remove(engine, "before_cursor_execute", record)
        assert (sorted(two), sorted(five)) == (sorted(ids[:2]), sorted(ids))
        assert len(sent) == 2 and sent[0] == sent[1], sent

        # Each batch's rows are read as the threads of the batch before begin to resume: the first thread resumed
        # after one read, where it waited for a read of every fired instance's row (10,000 fired: ten reads of a
        # thousand held the first wave back 0.5-1 s).
        processes, seen = rt.processes, []
        read, deliver = processes.instances_by_id, processes.deliver

        async def reading(instance_ids: list[str]) -> dict[str, Any]:
            seen.append(f"read {len(instance_ids)}")
            return await read(instance_ids)

        async def delivering(instance_id: str, wait_id: str, **kwargs: Any) -> bool:
            seen.append("deliver")
            return await deliver(instance_id, wait_id, **kwargs)

        monkeypatch.setattr(processes, "instances_by_id", reading)
        monkeypatch.setattr(processes, "deliver", delivering)
        clock.advance(timedelta(hours=1))
        report = await fire_due_timers(processes, batch=2, concurrency=2)
        assert (report.fired, report.resumed, report.failed) == (5, 5, 0), report
        assert [s for s in seen if s != "deliver"] == ["read 2", "read 2", "read 1"], seen
        assert seen.index("deliver") < seen.index("read 1"), seen
        for instance_id in ids:
            assert (await processes.status(instance_id))["status"] == "completed"
        assert calls.intents() == ["wake"] * 5


async def test_a_timer_fired_where_its_agent_is_missing_is_left_for_a_process_that_has_it(
    durable_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A notebook's runtime beside a server on one database: whichever scheduler finds a timer due fires it, so
    the server fired the timer of a process the notebook started with an agent of its own, and the instance
    failed (AgentNotFoundError) for a deployment's mistake. The server now leaves the fired timer's resolution
    stored, warning which agents it lacks and where to register them; the notebook's pass delivers it.

    The server holds none of the notebook's designs, as a fresh worker's first wave of continuations (64 at once)
    does not: the callers that ask for one together share one read of it and one parsed spec. Which agents a
    design calls is found once per design, not at every continuation (each fired timer asks)."""
    clock, calls = virtual_clock(), Calls()
    looked_into: list[str] = []
    called_by = orchestrator.intents

    def counted(spec: ProcessSpec) -> Any:
        looked_into.append(spec.name)
        return called_by(spec)

    monkeypatch.setattr(orchestrator, "intents", counted)
    async with runtime(durable_url, clock) as notebook, runtime(durable_url, clock) as server:
        [(instance_id, _wait)] = await parked(notebook, calls, 1)
        deployment = await server.processes.deployment_of(await server.processes.instance(instance_id))
        specs = await asyncio.gather(*(server.processes.spec_of(deployment) for _ in range(8)))
        assert len({id(spec) for spec in specs}) == 1  # one parsed spec, not one per caller
        clock.advance(timedelta(hours=1))
        with capture_logs() as logs:
            report = await server.processes.scheduler.run_due()
        status = await notebook.processes.status(instance_id)
        assert status["status"] == "in_progress" and status.get("failure") is None, status
        assert (report.fired, report.held, report.failed) == (1, 1, 0), report
        [warning] = [entry for entry in logs if entry["event"] == "fired timer left for a process with its agents"]
        assert warning["missing_intents"] == ["wake"] and "--plugin on journeys serve" in warning["hint"]
        # Within the lease, no process takes it again; past it, the notebook's pass delivers it.
        assert (await notebook.processes.scheduler.run_due()).redelivered == 0
        # Held again at each lease, it is counted again but warned of once: an operator's log said it every lease.
        for _lease in range(2):
            clock.advance(timedelta(minutes=2))
            with capture_logs() as logs:
                assert (await server.processes.scheduler.run_due()).held == 1
            assert [entry for entry in logs if entry["log_level"] == "warning"] == []
        # /metrics showed no work waiting meanwhile (the timer had fired): its answer, undelivered, is.
        held = await live_figures(server.store.backend, clock.now())
        assert held.queue_depth == {"runs": 0, "timers": 0, "deliveries": 1}, held
        assert (await notebook.processes.scheduler.run_due()).redelivered == 1
        assert (await notebook.processes.status(instance_id))["status"] == "completed"
        assert (await live_figures(server.store.backend, clock.now())).queue_depth["deliveries"] == 0
        assert calls.intents() == ["wake"]
    # Once in each runtime: the server's three holds of it, the notebook's delivery (one per pass before).
    assert looked_into == ["nap", "nap"], looked_into


async def test_a_timer_held_for_a_missing_agent_runs_once_the_agent_is_registered(store_url: str) -> None:
    """A worker started without the plugin that registers its agents (the only process serving the
    database): the fired timer stays stored, and the first pass after the agent is registered delivers it."""
    clock, calls = virtual_clock(), Calls()
    async with runtime(store_url, clock) as rt:
        await rt.processes.deploy(NAP, agents=False)
        instance_id = (await rt.processes.start("nap", "cust-0"))["instance_id"]
        clock.advance(timedelta(hours=1))
        report = await rt.processes.scheduler.run_due()
        status = await rt.processes.status(instance_id)
        assert status["status"] == "in_progress"
        assert report.held == 1
        # Stored where its status is read, so an operator sees why it stands still (not only a worker's log).
        held = status.get("held") or {}
        assert (held.get("missing_intents"), held.get("since")) == (["wake"], clock.now().astimezone(UTC).isoformat())
        timers = await rt.processes.services.timers.find(instance_id=instance_id)
        assert held.get("timer_id") in {t.timer_id for t in timers}  # the fired timer, its answer undelivered
        instance = await rt.store.index.get_instance(instance_id)
        assert instance is not None and instance.held == status["held"]
        calls.register(rt, "wake", {"awake": True})
        clock.advance(timedelta(minutes=2))
        assert (await rt.processes.scheduler.run_due()).redelivered == 1
        status = await rt.processes.status(instance_id)
        assert status["status"] == "completed" and "held" not in status, status  # cleared as it went on
        instance = await rt.store.index.get_instance(instance_id)
        assert instance is not None and instance.held is None

"""The kernel's instance lifecycle, for every pattern: an accepted start is durable before it runs, and
``recover()`` finishes a start cut short before its first checkpoint; failures are one event.

A start is cut short here the way a kill would cut it: the instance is registered (its index row and its
first event commit together) and the process dies before its graph has run, so nothing is checkpointed.
That is simulated in-process by cancelling the first run as it begins; ``test_crash_resume.py`` does the
same with a real SIGKILL of a child process.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agents.deterministic import FailingAgent
from agents.errors import AgentCallFailedError, PermanentAgentError
from checkpoints import VirtualClock
from graphs.errors import JourneyFinishedError
from graphs.kernel.engine import JourneyEngine
from graphs.lifecycle.catalog import READY_TO_START
from graphs.runtime import JourneyRuntime
from graphs.structured.orchestrator import structured_instance_id
from nodes.services import FAILED
from tests.test_session import AREAS

Start = Callable[[JourneyRuntime, str], Awaitable[Any]]  # (runtime, a suffix for the ids it chooses)


async def start_structured(rt: JourneyRuntime, _n: str) -> dict[str, Any]:
    design = await rt.structured.design_journey("content_migration", {})
    return await rt.structured.execute_journey(design["journey_id"], "u-1", {"source": "wp"})


async def start_saga(rt: JourneyRuntime, n: str) -> dict[str, Any]:
    design = await rt.saga.design_saga_journey("enterprise_migration", {}, {})
    return await rt.saga.execute_saga_journey(design["journey_id"], "u-1", {}, saga_id=f"saga_{n}")


async def start_session(rt: JourneyRuntime, _n: str) -> dict[str, Any]:
    return await rt.session.start_session("u-1", {"areas": AREAS, "initial_area": "insights"})


async def start_mvp(rt: JourneyRuntime, _n: str) -> dict[str, Any]:
    return await rt.mvp.start_mvp_journey("u-1", "insights")


async def start_lifecycle(rt: JourneyRuntime, n: str) -> dict[str, Any]:
    return await rt.lifecycle.start_journey("client-1", journey_id=f"lc-{n}", metrics=READY_TO_START)


async def start_process(rt: JourneyRuntime, n: str) -> dict[str, Any]:
    await rt.processes.deploy_template("customer_onboarding")
    return await rt.processes.start("customer_onboarding", "pr-7", instance_id=f"proc_{n}")


STARTS: dict[str, Start] = {
    "structured": start_structured,
    "saga": start_saga,
    "session": start_session,
    "mvp": start_mvp,
    "lifecycle": start_lifecycle,
    "process": start_process,
}


async def view_of(rt: JourneyRuntime, pattern: str, instance_id: str) -> dict[str, Any]:
    if pattern == "structured":
        return await rt.structured.get_journey_status(instance_id.split(":")[0], "u-1")
    if pattern == "saga":
        return await rt.saga.get_saga_status(instance_id)
    if pattern in ("session", "mvp"):
        sessions = rt.session if pattern == "session" else rt.mvp.sessions
        return await sessions.get_session_progress(instance_id)
    if pattern == "lifecycle":
        return await rt.lifecycle.get_journey_state(instance_id)
    return await rt.processes.status(instance_id)


def instance_id_of(pattern: str, view: dict[str, Any]) -> str:
    if pattern == "structured":
        return structured_instance_id(view["journey_id"], "u-1")
    if pattern == "saga":
        return str(view["saga_id"])
    if pattern == "mvp":
        return str(view["session"]["session_id"])
    if pattern == "session":
        return str(view["session_id"])
    return str(view["journey_id"] if pattern == "lifecycle" else view["instance_id"])


def comparable(view: dict[str, Any], instance_id: str) -> Any:
    """The view without its ids and times (the two instances compared differ in those only)."""
    kept = {k: v for k, v in view.items() if not k.endswith(("_at", "_id")) and k not in ("metadata", "session")}
    return json.loads(json.dumps(kept, default=str).replace(instance_id, "<instance>"))


@pytest.mark.parametrize("pattern", list(STARTS))
async def test_recover_finishes_a_start_cut_short_before_its_first_checkpoint(
    store_url: str, pattern: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with JourneyRuntime.open(store_url) as rt:
        expected = await STARTS[pattern](rt, "whole")  # the same start, not cut short: what recovery must reach
        run = JourneyEngine.run
        registered: list[str] = []

        async def killed_before_first_checkpoint(self: JourneyEngine, graph: Any, instance_id: str, *a: Any, **k: Any):
            registered.append(instance_id)
            raise asyncio.CancelledError  # the process dies: its first run never checkpoints

        monkeypatch.setattr(JourneyEngine, "run", killed_before_first_checkpoint)
        with pytest.raises(asyncio.CancelledError):
            await STARTS[pattern](rt, "cut")
        monkeypatch.setattr(JourneyEngine, "run", run)
        [instance_id] = registered
        instance = await rt.store.index.get_instance(instance_id)
        assert instance is not None and instance.status == "in_progress"  # accepted: durable before it ran
        graph = await rt.instances.graph(instance)
        assert (await graph.aget_state(rt.engine.config(instance_id))).created_at is None

        assert await rt.recover() == [instance_id]
        recovered = await view_of(rt, pattern, instance_id)
        whole = instance_id_of(pattern, expected)
        assert comparable(recovered, instance_id) == comparable(await view_of(rt, pattern, whole), whole)
        assert await rt.recover() == []  # nothing left in flight


async def test_a_failure_is_one_event_naming_pattern_and_cause(store_url: str) -> None:
    async with JourneyRuntime.open(store_url) as rt:
        rt.agents.register("broken", FailingAgent("broken", permanent=True))
        steps = [{"step_id": "s1", "agent": "broken", "mode": "auto"}]
        spec = {"journey_type": "failing", "name": "Failing", "steps": steps}
        journey_id = (await rt.structured.design_journey("failing", spec=spec))["journey_id"]
        with pytest.raises(AgentCallFailedError):
            await rt.structured.execute_journey(journey_id, "u-1", {})
        history = await rt.history(structured_instance_id(journey_id, "u-1"))
        failed = [e for e in history if e.type.endswith(".failed") and e.type != "agent.failed"]
        assert [e.type for e in failed] == ["instance.failed"]
        assert failed[0].payload["pattern"] == "structured"
        assert failed[0].payload["cause"] == "step"
        assert failed[0].payload["error_type"]
        instance = await rt.store.index.get_instance(structured_instance_id(journey_id, "u-1"))
        assert instance is not None and instance.status == "failed"


def die_once_logged(rt: JourneyRuntime, step: str, logged: list[str]) -> Callable[[], None]:
    """The first completion of ``step`` raises :class:`Crash` once it is in the log (the step never returns, so
    it is not checkpointed: a process killed there), whether written alone or with the completions of other runs
    (``append_together``); ``logged`` gets its instance. Returns what puts the log back."""
    log = rt.store.events
    append, append_together = log.append, log.append_together

    def crash_if_first(instance_id: str, events: Sequence[Any]) -> None:
        if not logged and any(e.step == step and e.type.endswith("completed") for e in events):
            logged.append(instance_id)
            raise Crash

    async def dying_append(instance_id: str, events: Sequence[Any], **options: Any) -> list[bool]:
        written = await append(instance_id, events, **options)
        crash_if_first(instance_id, events)
        return written

    async def dying_together(instance_id: str, event: Any, status: str | None = None) -> bool:
        written = await append_together(instance_id, event, status)
        crash_if_first(instance_id, [event])
        return written

    log.append = dying_append  # type: ignore[method-assign]  # a fault injected into this runtime's log
    log.append_together = dying_together  # type: ignore[method-assign]

    def restore() -> None:
        log.append = append  # type: ignore[method-assign]
        log.append_together = append_together  # type: ignore[method-assign]

    return restore


class Crash(BaseException):
    """The process dies: not an error any layer handles, so nothing records it."""


async def test_a_process_replays_a_service_task_logged_before_a_crash(store_url: str) -> None:
    """A process killed after its first service task's completion event committed, before that step's
    checkpoint: recovery replays the logged call instead of making it again, and goes on."""
    calls: list[str] = []

    def agent(name: str) -> Any:
        async def call(_request: Any) -> dict[str, Any]:
            calls.append(name)
            return {name: True}

        return call

    spec = {
        "name": "two_calls",
        "elements": [
            {"type": "start", "id": "start"},
            {"type": "service_task", "id": "first", "agent": "crm.first"},
            {"type": "service_task", "id": "second", "agent": "crm.second"},
            {"type": "end", "id": "end"},
        ],
        "flows": ["start -> first", "first -> second", "second -> end"],
    }
    async with JourneyRuntime.open(store_url) as rt:
        rt.agents.register("crm.first", agent("first"))
        rt.agents.register("crm.second", agent("second"))
        await rt.processes.deploy(spec)
        logged: list[str] = []
        restore = die_once_logged(rt, "first", logged)
        with pytest.raises(Crash):
            await rt.processes.start("two_calls", "k-1", instance_id="proc_replay")
        restore()
        assert logged == ["proc_replay"] and calls == ["first"]
        assert await rt.recover() == ["proc_replay"]
        status = await rt.processes.status("proc_replay")
        assert status["status"] == "completed"
        assert calls == ["first", "second"]  # the first call replayed from its logged event, not made again
        completed = [e.step for e in await rt.history("proc_replay") if e.type.endswith("completed") and e.step]
        assert completed.count("first") == 1


async def test_recovery_replays_a_journeys_values_whole_not_as_the_history_shows_them(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The event log was stored redacted, and recovery replays from it: a start cut short before its first
    checkpoint (with the server's exit durability, any crash before a run stops) went on with ``[REDACTED]``
    for its context's e-mail address and password, and a process replaying a logged call set its variable
    to ``[REDACTED]``. The log keeps the values whole now (redacted where shown: the history answer)."""
    context = {"contact": "ana@example.com", "password": "hunter2"}
    received: list[dict[str, Any]] = []

    async def lookup(request: Any) -> dict[str, Any]:
        if "context" in request.payload:  # a structured step's (a process's service task has none)
            received.append(dict(request.payload["context"]))
        return {"email": "bob@example.com", "card": "4111 1111 1111 1111"}

    async with JourneyRuntime.open(store_url) as rt:
        rt.agents.register("lookup", lookup)
        steps = [{"step_id": "s1", "agent": "lookup", "mode": "auto"}]
        spec = {"journey_type": "replayed", "name": "Replayed", "steps": steps}
        journey_id = (await rt.structured.design_journey("replayed", spec=spec))["journey_id"]
        run = JourneyEngine.run

        async def killed_before_first_checkpoint(self: JourneyEngine, *_a: Any, **_k: Any) -> Any:
            raise asyncio.CancelledError

        monkeypatch.setattr(JourneyEngine, "run", killed_before_first_checkpoint)
        with pytest.raises(asyncio.CancelledError):
            await rt.structured.execute_journey(journey_id, "u-1", context)
        monkeypatch.setattr(JourneyEngine, "run", run)
        assert await rt.recover() == [structured_instance_id(journey_id, "u-1")]
        assert received == [context]

        process = {
            "name": "replayed",
            "elements": [
                {"type": "start", "id": "start"},
                {"type": "service_task", "id": "first", "agent": "lookup", "outputs": ["email", "card"]},
                {"type": "user_task", "id": "check", "title": "Check", "assignee": "ana"},
                {"type": "end", "id": "end"},
            ],
            "flows": ["start -> first", "first -> check", "check -> end"],
        }
        await rt.processes.deploy(process)
        restore = die_once_logged(rt, "first", [])
        with pytest.raises(Crash):
            await rt.processes.start("replayed", "k-1", instance_id="proc_whole")
        restore()
        assert await rt.recover() == ["proc_whole"]
        variables = (await rt.processes.status("proc_whole"))["variables"]
        assert (variables["email"], variables["card"]) == ("bob@example.com", "4111 1111 1111 1111")


@pytest.mark.parametrize("pattern", list(STARTS))
async def test_a_start_cancelled_on_purpose_before_its_first_checkpoint_stands_at_its_start_until_run_on(
    store_url: str, pattern: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first run cancelled on purpose before its first checkpoint (``JourneyEngine.halt``) leaves the thread the
    state it started from, its first node pending: reads and recovery leave it there, and a run without input
    (``settled_state(go_on=True)``) reaches what the same start not cut short reaches."""
    async with JourneyRuntime.open(store_url) as rt:
        expected = await STARTS[pattern](rt, "whole")
        run = JourneyEngine.run
        registered: list[str] = []

        async def cancelled_before_first_checkpoint(
            self: JourneyEngine, graph: Any, instance_id: str, *a: Any, **k: Any
        ):
            registered.append(instance_id)
            raise asyncio.CancelledError

        monkeypatch.setattr(JourneyEngine, "run", cancelled_before_first_checkpoint)
        with pytest.raises(asyncio.CancelledError):
            await STARTS[pattern](rt, "cut")
        monkeypatch.setattr(JourneyEngine, "run", run)
        [instance_id] = registered
        graph = await rt.instances.graph(await rt.store.index.get_instance(instance_id))  # type: ignore[arg-type]
        async with rt.engine.exclusive(instance_id):
            assert await rt.engine.halt(graph, instance_id)
        standing = await graph.aget_state(rt.engine.config(instance_id))
        assert standing.next and standing.metadata is not None and standing.metadata["step"] == 0  # its start, pending
        await view_of(rt, pattern, instance_id)  # a read leaves it there
        assert await rt.recover() == []
        assert (await graph.aget_state(rt.engine.config(instance_id))).config == standing.config
        async with rt.engine.exclusive(instance_id):
            await rt.engine.settled_state(graph, instance_id, go_on=True)
        went_on = await view_of(rt, pattern, instance_id)
        whole = instance_id_of(pattern, expected)
        assert comparable(went_on, instance_id) == comparable(await view_of(rt, pattern, whole), whole)


@pytest.mark.parametrize("halted", [True, False], ids=["cancelled", "crashed"])
async def test_recovery_leaves_a_run_cancelled_on_purpose_and_finishes_a_crashed_one(
    store_url: str, halted: bool
) -> None:
    """A run stopped mid-step: one cancelled on purpose (the server's runs.cancel records it with
    ``JourneyEngine.halt``) stays where it stopped on restart; one a crash cut short is finished there."""
    calls: list[int] = []
    working = asyncio.Event()

    async def slow(_request: Any) -> dict[str, Any]:
        calls.append(1)
        working.set()
        await asyncio.sleep(30 if len(calls) == 1 else 0)
        return {"ok": True}

    spec = {"journey_type": "t", "steps": [{"step_id": "ask"}, {"step_id": "work", "agent": "w", "mode": "auto"}]}
    async with JourneyRuntime.open(store_url) as rt:
        rt.agents.register("w", slow, replace=True)
        design = await rt.saga.design_saga_journey("t", {}, {}, spec=spec)
        saga_id = (await rt.saga.execute_saga_journey(design["journey_id"], "ana", {}))["saga_id"]
        advance = asyncio.create_task(rt.saga.advance_saga_step(saga_id, design["journey_id"], "ana", {}))
        await working.wait()
        advance.cancel()
        with pytest.raises(asyncio.CancelledError):
            await advance
        if halted:
            graph = await rt.instances.graph(await rt.store.index.get_instance(saga_id))  # type: ignore[arg-type]
            async with rt.engine.exclusive(saga_id):
                assert await rt.engine.halt(graph, saga_id)
        assert await rt.recover() == ([] if halted else [saga_id])
        status = await rt.saga.get_saga_status(saga_id)
    assert len(calls) == (1 if halted else 2)
    assert status["status"] == ("in_progress" if halted else "completed"), status


async def test_a_status_read_that_finishes_a_crashed_step_which_then_fails_records_the_failure(store_url: str) -> None:
    """A crash cut an advance short while its auto step worked; the step's agent fails when a status read finishes
    that work. Before, the read raised the agent's error and the index kept the journey ``in_progress`` while its
    thread stood failed (only processes recorded it). Now the read answers it failed, recorded as a run's failure
    is, and a retry runs the step again."""
    calls: list[int] = []
    working = asyncio.Event()

    async def down_after_the_crash(_request: Any) -> dict[str, Any]:
        calls.append(1)
        if len(calls) == 1:
            working.set()
            await asyncio.sleep(30)
        if len(calls) == 2:
            raise PermanentAgentError("the warehouse is closed", intent="w")
        return {"ok": True}

    spec = {"journey_type": "t", "steps": [{"step_id": "ask"}, {"step_id": "work", "agent": "w", "mode": "auto"}]}
    # "sync": the step's checkpoint is written before it works, so the crash leaves it in flight there.
    async with JourneyRuntime.open(store_url, durability="sync") as rt:
        rt.agents.register("w", down_after_the_crash, replace=True)
        journey_id = (await rt.structured.design_journey("t", spec=spec))["journey_id"]
        await rt.structured.execute_journey(journey_id, "ana", {})
        instance_id = structured_instance_id(journey_id, "ana")
        advance = asyncio.create_task(rt.structured.advance_journey_step(journey_id, "ana", {}))
        await working.wait()
        advance.cancel()  # no halt recorded: a crash's work, which the next read finishes
        with pytest.raises(asyncio.CancelledError):
            await advance
        status = await rt.structured.run_status(instance_id)
        assert status["status"] == "failed", status
        instance = await rt.store.index.get_instance(instance_id)
        assert instance is not None and instance.status == "failed"
        assert FAILED in [e.type for e in await rt.history(instance_id)]
        retried = await rt.structured.retry_journey_step(journey_id, "ana")
    assert retried["status"] == "completed", retried
    assert len(calls) == 3


async def test_a_saga_past_its_deadline_after_a_run_cancelled_in_a_step_undoes_that_step_first(
    store_url: str,
) -> None:
    """A saga whose run was cancelled on purpose while a step worked, then whose deadline passes with
    ``on_expiry="compensate"``: the step whose agent may have acted is undone first (told ``completed:
    False``), as ``cancel_saga`` does, then the steps it completed."""
    clock = VirtualClock(datetime(2026, 3, 2, 9, 0, tzinfo=UTC))
    calls: list[int] = []
    undone: list[tuple[str, bool]] = []
    working = asyncio.Event()

    async def slow(_request: Any) -> dict[str, Any]:
        calls.append(1)
        working.set()
        await asyncio.sleep(30)
        return {"ok": True}

    spec = {
        "journey_type": "t",
        "steps": [{"step_id": "ask"}, {"step_id": "work", "agent": "w", "mode": "auto"}, {"step_id": "end"}],
        "deadline": {"after": "P1D", "on_expiry": "compensate"},
    }
    async with JourneyRuntime.open(store_url, clock=clock) as rt:
        rt.agents.register("w", slow, replace=True)
        rt.agents.register("undo", lambda r: undone.append((r.payload["step_id"], r.payload["completed"])) or {})
        design = await rt.saga.design_saga_journey("t", {}, {"ask": "undo", "work": "undo"}, spec=spec)
        saga_id = (await rt.saga.execute_saga_journey(design["journey_id"], "ana", {}))["saga_id"]
        advance = asyncio.create_task(rt.saga.advance_saga_step(saga_id, design["journey_id"], "ana", {}))
        await working.wait()
        advance.cancel()
        with pytest.raises(asyncio.CancelledError):
            await advance
        graph = await rt.instances.graph(await rt.store.index.get_instance(saga_id))  # type: ignore[arg-type]
        async with rt.engine.exclusive(saga_id):
            assert await rt.engine.halt(graph, saga_id)
        clock.advance(timedelta(days=1))
        assert (await rt.processes.scheduler.run_due()).fired == 1
        status = await rt.saga.get_saga_status(saga_id)
    assert status["status"] == "compensated", status
    assert undone == [("work", False), ("ask", True)]
    assert len(calls) == 1


async def test_the_kernel_never_retries_an_instance_that_ended(store_url: str) -> None:
    """``Instances.retry`` checked no status: an instance cancelled while it stood failed (as a process is) was
    run again by its pattern's retry, its status back to ``in_progress``. The kernel refuses it now."""
    async with JourneyRuntime.open(store_url) as rt:
        rt.agents.register("broken", FailingAgent("broken", permanent=True))
        steps = [{"step_id": "s1", "agent": "broken", "mode": "auto"}]
        spec = {"journey_type": "failing", "name": "Failing", "steps": steps}
        journey_id = (await rt.structured.design_journey("failing", spec=spec))["journey_id"]
        with pytest.raises(AgentCallFailedError):
            await rt.structured.execute_journey(journey_id, "u-1", {})
        instance_id = structured_instance_id(journey_id, "u-1")
        async with rt.engine.exclusive(instance_id):
            await rt.instances.cancel(instance_id, "journey.cancelled", "given up")
        history = [e.type for e in await rt.history(instance_id)]
        with pytest.raises(JourneyFinishedError):
            await rt.structured.retry_journey_step(journey_id, "u-1")
        assert [e.type for e in await rt.history(instance_id)] == history
        instance = await rt.store.index.get_instance(instance_id)
        assert instance is not None and instance.status == "cancelled"

"""A run cancelled on purpose (``runs.cancel(..., action="interrupt")``, langgraph-sdk over real HTTP) while a
saga's or a structured journey's auto step works: the journey stays where the run stopped, as the Agent Server
leaves a cancelled run's thread at its last checkpoint. Reads (the journey's status, the thread's state) never
call the step's agent again; a new run (a retry, or a run without input) does. Memory, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from langgraph_sdk import get_client
from langgraph_sdk.client import LangGraphClient

from agents import AgentRequest
from checkpoints.clock import VirtualClock
from graphs.runtime import JourneyRuntime
from server.app import create_app
from server.assistants import get_assistant
from server.queues import embedded
from server.queues.base import ElsewhereQueue, cancel_run
from server.runs import executor as executor_module
from server.runs.executor import RunExecutor, thread_output
from server.runs.store import RunRow, RunStore
from server.settings import Settings
from tests.server_fixtures import served_app, served_sdk  # noqa: F401  (the fixtures app and sdk)
from tests.server_support import SlowShip, serving, slow_checkpoint_writes, structured_run

pytestmark = pytest.mark.slow

SPEC = {
    "journey_type": "slow_order",
    "steps": [
        {"step_id": "ask", "mode": "user"},
        {"step_id": "ship", "mode": "auto", "agent": "slow_ship"},
        {"step_id": "confirm", "mode": "user"},
    ],
}


async def _cancelled_in_ship(app: FastAPI, sdk: LangGraphClient, assistant: str) -> tuple[str, str, SlowShip]:
    """A journey of ``assistant`` whose advance to its auto step ``ship`` was cancelled while ``ship`` worked:
    its thread and instance ids, and the agent."""
    ship = SlowShip()
    app.state.services.runtime.agents.register("slow_ship", ship, replace=True)
    tid = (await sdk.threads.create())["thread_id"]
    start: dict[str, Any] = {"journey_type": "slow_order", "spec": SPEC, "user_id": "ana"}
    if assistant == "saga":
        start["compensation_handlers"] = {}
    await sdk.runs.wait(tid, assistant, input=start)
    run = await sdk.runs.create(tid, assistant, command={"resume": {}})
    await asyncio.wait_for(_started(ship), 10)
    cancelled = await sdk.runs.cancel(tid, run["run_id"], action="interrupt", wait=True)
    assert cancelled["status"] == "interrupted", cancelled
    instance_id = (await sdk.threads.get(tid))["metadata"]["instance_id"]  # the thread's journey
    return tid, str(instance_id), ship


PROCESS = {
    "name": "shipping",
    "elements": [
        {"type": "start", "id": "start"},
        {"type": "user_task", "id": "ask", "title": "Ask", "assignee": "local"},
        {"type": "service_task", "id": "ship", "agent": "slow_ship"},
        {"type": "user_task", "id": "confirm", "title": "Confirm", "assignee": "local", "outputs": ["confirmed"]},
        {"type": "end", "id": "end"},
    ],
    "flows": ["start -> ask", "ask -> ship", "ship -> confirm", "confirm -> end"],
}


@pytest.mark.parametrize("assistant", ["saga", "structured"])
async def test_reads_of_a_journey_whose_run_was_cancelled_do_not_run_its_step_again(
    app: tuple[FastAPI, str], sdk: LangGraphClient, assistant: str
) -> None:
    tid, instance_id, ship = await _cancelled_in_ship(app[0], sdk, assistant)
    async with httpx.AsyncClient(base_url=app[1], timeout=30) as http:
        for _ in range(2):
            status = (await http.get(f"/journeys/{instance_id}/status")).json()
            state = await sdk.threads.get_state(tid)
    assert ship.calls == 1  # no read called the agent again
    assert status["current_step"] == "ship" and status["completed_steps"] == ["ask"], status
    assert state["next"] == ["ship"]
    # A new run goes on from where it stopped: the step runs (once more), and the journey waits at the next.
    await sdk.runs.wait(tid, assistant)
    assert ship.calls == 2
    state = await sdk.threads.get_state(tid)
    assert state["next"] == ["confirm.await"], state["next"]


async def test_a_run_cancelled_again_while_it_unwinds_on_a_slow_database_stays_where_it_stopped(
    app: tuple[FastAPI, str], sdk: LangGraphClient, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run cancelled while its step works unwinds first: LangGraph writes its last checkpoint on the way out
    (a structured run checkpoints when it stops) and waits for it, seconds on a loaded database. A cancel taken so
    slowly looked lost, and was made again (``RECANCEL_S``), as a second ``runs.cancel`` is, which cut that wait
    short: the run was marked interrupted, its halt recorded and its lock let go while the write was in flight, and
    once it landed the next read took the cancelled step for a crash's work and ran it (PostgreSQL: ``ship`` called
    twice, the journey at ``confirm``). The run's graph call now takes one cancel and ends, its writes landed,
    before the run does; the cancels after it wait for that."""
    monkeypatch.setattr(executor_module, "RECANCEL_S", 0.5)  # the load (2 s) outlasts it, as 5 s would be outlasted
    served, url = app
    ship = SlowShip()
    services = served.state.services
    services.runtime.agents.register("slow_ship", ship, replace=True)
    tid = (await sdk.threads.create())["thread_id"]
    await sdk.runs.wait(tid, "structured", input={"journey_type": "slow_order", "spec": SPEC, "user_id": "ana"})
    run = await sdk.runs.create(tid, "structured", command={"resume": {}})
    await asyncio.wait_for(_started(ship), 10)
    async with slow_checkpoint_writes(store_url, services.runtime.store.saver, 2.0):
        await sdk.runs.cancel(tid, run["run_id"], action="interrupt")
        await asyncio.wait_for(_stopping(services.executor, run["run_id"]), 10)  # taken: it writes its way out
        cancelled = await sdk.runs.cancel(tid, run["run_id"], action="interrupt", wait=True)  # lands in that way
    assert cancelled["status"] == "interrupted", cancelled
    instance_id = (await sdk.threads.get(tid))["metadata"]["instance_id"]
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        status = (await http.get(f"/journeys/{instance_id}/status")).json()
    state = await sdk.threads.get_state(tid)
    assert ship.calls == 1  # no read called the agent again
    assert status["current_step"] == "ship" and status["completed_steps"] == ["ask"], status
    assert state["next"] == ["ship"]  # where it stopped: its last checkpoint landed before it was let go


async def test_a_run_cancelled_from_another_process_stops_as_the_cancel_is_recorded(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process that executes no runs (``journeys instances terminate``) records a cancel; an embedded server
    executing the run learnt of it only at its next look (every ``CANCEL_CHECK_S``, 1 s). On PostgreSQL the
    record notifies it, as its listener hears: with the look an hour away the run still stops at once."""
    monkeypatch.setattr(embedded, "CANCEL_CHECK_S", 3600)
    served = create_app(Settings(database_url=postgres_url, auth=False))
    with serving(served) as url:
        ship = SlowShip()
        served.state.services.runtime.agents.register("slow_ship", ship, replace=True)
        async with get_client(url=url, api_key=None) as sdk:
            tid = (await sdk.threads.create())["thread_id"]
            start = {"journey_type": "slow_order", "spec": SPEC, "user_id": "ana"}
            await sdk.runs.wait(tid, "structured", input=start)
            run = await sdk.runs.create(tid, "structured", command={"resume": {}})
            await asyncio.wait_for(_started(ship), 10)
            async with JourneyRuntime.open(postgres_url) as elsewhere:  # another process's store
                runs = RunStore(elsewhere.store.backend, elsewhere.store.clock)
                row = await runs.get_run(run["run_id"])
                assert row is not None and row.status == "running"
                await cancel_run(ElsewhereQueue(runs), runs, row, lambda _run_id, _row: None)
            await asyncio.wait_for(sdk.runs.join(tid, run["run_id"]), 20)  # the agent takes 30 s
            assert (await sdk.runs.get(tid, run["run_id"]))["status"] == "interrupted"
    assert ship.calls == 1


async def _stopping(executor: RunExecutor, run_id: str) -> None:
    while run_id not in executor.stopping:  # noqa: ASYNC110 (the run stops on the server's loop: no event of this loop tells)
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("assistant", ["saga", "structured"])
async def test_a_resume_with_multitask_interrupt_while_an_auto_step_works_takes_the_run_over(
    app: tuple[FastAPI, str], sdk: LangGraphClient, assistant: str
) -> None:
    """Before, the new run halted the old one and then failed with 409 StepHaltedError ("retry first"): the
    answer was lost. The stopped step now goes on first (its agent called once more), as LangGraph runs a
    thread's pending tasks before a new ``command.resume``, and the answer is the step's it then waits at."""
    ship = SlowShip()
    app[0].state.services.runtime.agents.register("slow_ship", ship, replace=True)
    tid = (await sdk.threads.create())["thread_id"]
    start: dict[str, Any] = {"journey_type": "slow_order", "spec": SPEC, "user_id": "ana"}
    await sdk.runs.wait(tid, assistant, input=start | ({"compensation_handlers": {}} if assistant == "saga" else {}))
    first = await sdk.runs.create(tid, assistant, command={"resume": {}})
    await asyncio.wait_for(_started(ship), 10)
    result = await sdk.runs.wait(
        tid, assistant, command={"resume": {"confirmed": True}}, multitask_strategy="interrupt"
    )
    assert "__error__" not in result, result
    assert (await sdk.runs.get(tid, first["run_id"]))["status"] == "interrupted"
    assert ship.calls == 2
    state = await sdk.threads.get_state(tid)
    assert not state["next"] and state["values"]["status"] == "completed", state
    instance_id = (await sdk.threads.get(tid))["metadata"]["instance_id"]
    async with httpx.AsyncClient(base_url=app[1], timeout=30) as http:
        status = (await http.get(f"/journeys/{instance_id}/status")).json()
    assert status["completed_steps"] == ["ask", "ship", "confirm"], status


@pytest.mark.parametrize("assistant", ["saga", "structured", "process"])
async def test_an_answer_sent_again_after_its_run_was_cancelled_runs_nothing(
    app: tuple[FastAPI, str], sdk: LangGraphClient, assistant: str
) -> None:
    """The answer to ``ask``, addressed to its interrupt, moved the journey to ``ship``, whose run was cancelled
    there; the client sent the same answer again (a double submit). Before, the stopped step ran (its agent called
    again) and the answer was then refused (409 InterruptNotPendingError): the step ran for a refused answer. Now
    it is refused before anything runs, and the step stays stopped until a run without input goes on."""
    ship = SlowShip()
    app[0].state.services.runtime.agents.register("slow_ship", ship, replace=True)
    tid = (await sdk.threads.create())["thread_id"]
    if assistant == "process":
        async with httpx.AsyncClient(base_url=app[1], timeout=30) as http:
            assert (await http.post("/processes", json=PROCESS)).status_code == 200
        start: dict[str, Any] = {"process": "shipping", "business_key": "order-1"}
    else:
        start = {"journey_type": "slow_order", "spec": SPEC, "user_id": "ana"}
        start |= {"compensation_handlers": {}} if assistant == "saga" else {}
    await sdk.runs.wait(tid, assistant, input=start)
    [interrupt] = (await sdk.threads.get_state(tid))["interrupts"]
    answer = {"resume": {interrupt["id"]: {"payload": {}} if assistant == "process" else {}}}
    run = await sdk.runs.create(tid, assistant, command=answer)
    await asyncio.wait_for(_started(ship), 10)
    assert (await sdk.runs.cancel(tid, run["run_id"], action="interrupt", wait=True))["status"] == "interrupted"
    with pytest.raises(Exception, match="InterruptNotPendingError"):  # langgraph-sdk raises the run's error
        await sdk.runs.wait(tid, assistant, command=answer)
    assert ship.calls == 1  # the stopped step did not run for the refused answer
    state = await sdk.threads.get_state(tid)
    assert [t["name"] for t in state["tasks"]] == ["ship"] and not state["interrupts"], state
    await sdk.runs.wait(tid, assistant)  # a run without input goes on: the step runs, the journey waits at confirm
    assert ship.calls == 2
    [waiting] = (await sdk.threads.get_state(tid))["interrupts"]
    assert waiting["id"] != interrupt["id"]


async def test_a_saga_step_whose_run_was_cancelled_goes_on_before_the_next_result(
    app: tuple[FastAPI, str], sdk: LangGraphClient
) -> None:
    """An advance (the saga endpoint) after the run was cancelled in ``ship`` runs ``ship`` on first and gives
    its result to ``confirm``; the same advance sent again (a double submit) does not complete a further step."""
    _tid, saga_id, ship = await _cancelled_in_ship(app[0], sdk, "saga")
    async with httpx.AsyncClient(base_url=app[1], timeout=30) as http:
        journey_id = (await http.get(f"/journeys/sagas/{saga_id}")).json()["journey_id"]
        who = {"journey_id": journey_id, "user_id": "ana"}
        advanced = await http.post(f"/journeys/sagas/{saga_id}/advance", json={**who, "step_result": {}})
        assert advanced.status_code == 200, advanced.json()
        assert advanced.json()["completed_steps"] == ["ask", "ship", "confirm"], advanced.json()
        again = await http.post(f"/journeys/sagas/{saga_id}/advance", json={**who, "step_result": {}})
        assert again.status_code == 409, again.json()
    assert ship.calls == 2


DEADLINED = {**SPEC, "journey_type": "slow_order_deadline", "deadline": {"after": "PT1H"}}


@pytest.mark.parametrize("how", ["resume", "without_input"])
async def test_a_step_stopped_by_a_cancelled_run_does_not_go_on_past_the_deadline(store_url: str, how: str) -> None:
    """The deadline passed after the run was cancelled in ``ship``, before the scheduler fired it (not running
    here): a new run is refused with DeadlineExceededError and the step's agent is not called again. Before,
    a run without input ran the stopped step on past the deadline."""
    clock = VirtualClock()
    app = create_app(Settings(database_url=store_url, auth=False, run_timers=False), clock=clock)
    ship = SlowShip()
    with serving(app) as url:
        app.state.services.runtime.agents.register("slow_ship", ship, replace=True)
        async with get_client(url=url, api_key=None) as sdk:
            tid = (await sdk.threads.create())["thread_id"]
            start = {"journey_type": "slow_order_deadline", "spec": DEADLINED, "user_id": "ana"}
            await sdk.runs.wait(tid, "structured", input=start)
            run = await sdk.runs.create(tid, "structured", command={"resume": {}})
            await asyncio.wait_for(_started(ship), 10)
            assert (await sdk.runs.cancel(tid, run["run_id"], action="interrupt", wait=True))["status"] == "interrupted"
            clock.advance(timedelta(hours=2))
            command = {"resume": {}} if how == "resume" else None
            with pytest.raises(Exception, match="DeadlineExceededError"):  # langgraph-sdk raises the run's error
                await sdk.runs.wait(tid, "structured", command=command)
            assert (await sdk.threads.get_state(tid))["next"] == ["ship"]
    assert ship.calls == 1


async def test_reads_of_a_process_whose_run_was_cancelled_in_a_service_task_do_not_run_it_again(
    app: tuple[FastAPI, str], sdk: LangGraphClient
) -> None:
    ship = SlowShip()
    app[0].state.services.runtime.agents.register("slow_ship", ship, replace=True)
    async with httpx.AsyncClient(base_url=app[1], timeout=30) as http:
        deployed = await http.post("/processes", json=PROCESS)
        assert deployed.status_code == 200, deployed.text
        tid = (await sdk.threads.create())["thread_id"]
        await sdk.runs.wait(tid, "process", input={"process": "shipping", "business_key": "order-1"})
        run = await sdk.runs.create(tid, "process", command={"resume": {"payload": {}}})
        await asyncio.wait_for(_started(ship), 10)
        assert (await sdk.runs.cancel(tid, run["run_id"], action="interrupt", wait=True))["status"] == "interrupted"
        for _ in range(2):
            assert (await http.get(f"/journeys/{tid}/status")).status_code == 200
            await sdk.threads.get_state(tid)
        assert ship.calls == 1  # no read called the service task's agent again
        await sdk.runs.wait(tid, "process")  # a new run without input goes on from where it stopped
        assert ship.calls == 2
        tasks = (await http.get("/tasks", params={"instance_id": tid})).json()
    assert [t["element"] for t in tasks] == ["confirm"], tasks


async def test_a_saga_cancelled_after_its_run_was_cancelled_in_a_step_undoes_that_step_first(
    app: tuple[FastAPI, str], sdk: LangGraphClient
) -> None:
    """The cancelled run's step may have acted before it was stopped: cancelling the saga then undoes it
    first (its handler told ``completed: False``), then the steps it completed."""
    undone: list[dict[str, Any]] = []
    runtime = app[0].state.services.runtime
    for handler in ("unask", "unship"):
        runtime.agents.register(handler, lambda request: undone.append(dict(request.payload)) or {}, replace=True)
    ship = SlowShip()
    runtime.agents.register("slow_ship", ship, replace=True)
    tid = (await sdk.threads.create())["thread_id"]
    start = {"journey_type": "slow_order", "spec": SPEC, "user_id": "ana"}
    start["compensation_handlers"] = {"ask": "unask", "ship": "unship"}
    await sdk.runs.wait(tid, "saga", input=start)
    run = await sdk.runs.create(tid, "saga", command={"resume": {}})
    await asyncio.wait_for(_started(ship), 10)
    assert (await sdk.runs.cancel(tid, run["run_id"], action="interrupt", wait=True))["status"] == "interrupted"
    saga_id = (await sdk.threads.get(tid))["metadata"]["instance_id"]
    async with httpx.AsyncClient(base_url=app[1], timeout=30) as http:
        cancelled = (await http.post(f"/journeys/sagas/{saga_id}/cancel", json={"reason": "no"})).json()
    assert cancelled["status"] == "compensated", cancelled
    assert cancelled["compensated_steps"] == ["ship", "ask"]
    assert [(u["step_id"], u["completed"]) for u in undone] == [("ship", False), ("ask", True)]
    assert ship.calls == 1


async def _started(ship: SlowShip) -> None:
    while not ship.calls:  # noqa: ASYNC110 (the agent runs on the server's loop: no event of this loop tells)
        await asyncio.sleep(0.02)


FIRST_AUTO = {
    "journey_type": "slow_first",
    "steps": [{"step_id": "reserve", "mode": "auto", "agent": "reserve"}, {"step_id": "confirm", "mode": "user"}],
}


def _first_run_held(app: FastAPI) -> list[int]:
    """Hold the server's first graph run before it starts (a run cancelled meanwhile stops before its journey's
    first checkpoint: registered, nothing run); the list counts the runs."""
    engine = app.state.services.runtime.engine
    run, runs = engine.run, []

    async def held(*args: Any, **kwargs: Any) -> Any:
        runs.append(1)
        if len(runs) == 1:
            await asyncio.sleep(30)
        return await run(*args, **kwargs)

    engine.run = held
    return runs


async def _saga_cancelled_before_its_first_checkpoint(
    app: FastAPI, sdk: LangGraphClient, undone: list[dict[str, Any]]
) -> tuple[str, str, list[int]]:
    """A saga whose first run was cancelled before its journey's first checkpoint: its thread and saga ids,
    and the calls of its first step's agent."""
    runtime = app.state.services.runtime
    runtime.agents.register("unreserve", lambda request: undone.append(dict(request.payload)) or {}, replace=True)
    calls: list[int] = []
    runtime.agents.register("reserve", lambda _request: calls.append(1) or {"reserved": True}, replace=True)
    runs = _first_run_held(app)
    tid = (await sdk.threads.create())["thread_id"]
    start = {"journey_type": "slow_first", "spec": FIRST_AUTO, "user_id": "ana"}
    run = await sdk.runs.create(tid, "saga", input={**start, "compensation_handlers": {"reserve": "unreserve"}})
    while not runs:  # noqa: ASYNC110 (the run waits on the server's loop: no event of this loop tells)
        await asyncio.sleep(0.02)
    assert (await sdk.runs.cancel(tid, run["run_id"], action="interrupt", wait=True))["status"] == "interrupted"
    saga_id = (await sdk.threads.get(tid))["metadata"]["instance_id"]
    return tid, str(saga_id), calls


async def test_a_saga_whose_first_run_was_cancelled_before_any_checkpoint_stands_at_its_first_step(
    app: tuple[FastAPI, str], sdk: LangGraphClient
) -> None:
    """It reads as in progress at its first step (not "completed"), and cancelling it compensates it: the
    step whose run was cut short is told ``completed: False``; its agent is not called."""
    undone: list[dict[str, Any]] = []
    _tid, saga_id, calls = await _saga_cancelled_before_its_first_checkpoint(app[0], sdk, undone)
    async with httpx.AsyncClient(base_url=app[1], timeout=30) as http:
        status = (await http.get(f"/journeys/sagas/{saga_id}")).json()
        assert (status["status"], status["current_step"]) == ("in_progress", "reserve"), status
        cancelled = await http.post(f"/journeys/sagas/{saga_id}/cancel", json={"reason": "no"})
    assert cancelled.status_code == 200, cancelled.json()
    assert cancelled.json()["status"] == "compensated", cancelled.json()
    assert [(u["step_id"], u["completed"]) for u in undone] == [("reserve", False)]
    assert not calls


async def test_a_saga_whose_first_run_was_cancelled_before_any_checkpoint_goes_on_with_a_run_without_input(
    app: tuple[FastAPI, str], sdk: LangGraphClient
) -> None:
    tid, _saga_id, calls = await _saga_cancelled_before_its_first_checkpoint(app[0], sdk, [])
    assert (await sdk.threads.get_state(tid))["next"] == ["reserve"]
    await sdk.runs.wait(tid, "saga")
    assert len(calls) == 1
    assert (await sdk.threads.get_state(tid))["next"] == ["confirm.await"]


async def test_a_read_that_takes_the_journey_as_its_cancelled_run_lets_it_go_does_not_run_the_step_on(
    app: tuple[FastAPI, str], sdk: LangGraphClient
) -> None:
    """The moment a cancelled run lets its journey's lock go, a direct call may take it (here a status read,
    made right then): the halt is recorded already, so the read leaves the journey where the run stopped."""
    engine = app[0].state.services.runtime.engine
    exclusive, reads = engine.exclusive, []

    @contextlib.asynccontextmanager
    async def read_as_released(instance_id: str, **options: Any) -> AsyncIterator[None]:
        try:
            async with exclusive(instance_id, **options):
                yield
        except asyncio.CancelledError:  # the cancelled run has let the lock go: a read takes the journey now
            if not reads:
                async with httpx.AsyncClient(base_url=app[1], timeout=30) as http:
                    reads.append((await http.get(f"/journeys/{instance_id}/status")).json())
            raise

    engine.exclusive = read_as_released
    _tid, instance_id, ship = await _cancelled_in_ship(app[0], sdk, "saga")
    assert reads and reads[0]["current_step"] == "ship", reads
    assert ship.calls == 1  # the read did not run the cancelled step on
    async with httpx.AsyncClient(base_url=app[1], timeout=30) as http:
        status = (await http.get(f"/journeys/{instance_id}/status")).json()
    assert (status["current_step"], status["completed_steps"]) == ("ship", ["ask"]), status
    assert ship.calls == 1


async def test_a_process_task_answered_with_multitask_interrupt_while_a_service_task_works_is_not_lost(
    app: tuple[FastAPI, str], sdk: LangGraphClient
) -> None:
    """Before, the new run halted the old one in ``ship`` and failed: "process ... has 0 open tasks; name one
    with command.resume.task_id" (none could be named: ``confirm`` was not open yet). The stopped service task
    now goes on first, and the answer completes the task the process then waits at."""
    ship = SlowShip()
    app[0].state.services.runtime.agents.register("slow_ship", ship, replace=True)
    async with httpx.AsyncClient(base_url=app[1], timeout=30) as http:
        assert (await http.post("/processes", json=PROCESS)).status_code == 200
        tid = (await sdk.threads.create())["thread_id"]
        await sdk.runs.wait(tid, "process", input={"process": "shipping", "business_key": "order-1"})
        first = await sdk.runs.create(tid, "process", command={"resume": {"payload": {}}})
        await asyncio.wait_for(_started(ship), 10)
        answer = {"resume": {"payload": {"confirmed": True}}}
        result = await sdk.runs.wait(tid, "process", command=answer, multitask_strategy="interrupt")
        assert "__error__" not in result, result
        assert (await sdk.runs.get(tid, first["run_id"]))["status"] == "interrupted"
        status = (await http.get(f"/journeys/{tid}/status")).json()
    assert ship.calls == 2
    assert status["status"] == "completed" and status["variables"]["confirmed"] is True, status


async def test_a_stopped_step_that_fails_as_a_new_run_takes_over_leaves_the_journey_failed(
    app: tuple[FastAPI, str], sdk: LangGraphClient
) -> None:
    """The stopped step goes on first and fails: the run ends with the agent's error, and the journey is
    ``failed`` in its index as in its state (before, the index said ``in_progress``: lists and metrics by
    status missed it)."""
    calls: list[int] = []

    async def reserve(_request: AgentRequest) -> dict[str, Any]:
        calls.append(1)
        if len(calls) == 1:
            await asyncio.sleep(30)
        raise RuntimeError("reserve broke")

    app[0].state.services.runtime.agents.register("reserve", reserve, replace=True)
    tid = (await sdk.threads.create())["thread_id"]
    first = await sdk.runs.create(
        tid, "structured", input={"journey_type": "slow_first", "spec": FIRST_AUTO, "user_id": "ana"}
    )
    while not calls:  # noqa: ASYNC110 (the agent runs on the server's loop: no event of this loop tells)
        await asyncio.sleep(0.02)
    with pytest.raises(Exception, match="AgentCallFailedError"):  # langgraph-sdk raises the run's error
        await sdk.runs.wait(tid, "structured", command={"resume": {}}, multitask_strategy="interrupt")
    assert (await sdk.runs.get(tid, first["run_id"]))["status"] == "interrupted"
    instance_id = (await sdk.threads.get(tid))["metadata"]["instance_id"]
    async with httpx.AsyncClient(base_url=app[1], timeout=30) as http:
        status = (await http.get(f"/journeys/{instance_id}/status")).json()
        assert (status["index_status"], status["status"], status["failed_step"]) == ("failed", "failed", "reserve")


@pytest.mark.parametrize("assistant", ["structured", "process"])
async def test_a_run_without_input_retries_a_failed_step(
    app: tuple[FastAPI, str], sdk: LangGraphClient, assistant: str
) -> None:
    """LangGraph's run without input re-runs a thread's failed task. Before, it was refused (409 JourneyStarted)
    and a structured journey started through the SDK had no HTTP retry at all (its retry endpoint is keyed by
    journey and user): the failed step now runs again, and the journey goes on to its next user step."""
    calls: list[int] = []

    async def ship(_request: AgentRequest) -> dict[str, Any]:
        calls.append(1)
        if len(calls) <= 3:  # the first run's attempts fail; the retry's first attempt succeeds
            raise RuntimeError("carrier down")
        return {"shipped": True}

    runtime = app[0].state.services.runtime
    runtime.agents.register("slow_ship", ship, replace=True)
    tid = (await sdk.threads.create())["thread_id"]
    async with httpx.AsyncClient(base_url=app[1], timeout=30) as http:
        if assistant == "process":
            assert (await http.post("/processes", json=PROCESS)).status_code == 200
            await sdk.runs.wait(tid, assistant, input={"process": "shipping", "business_key": "order-1"})
            answer: dict[str, Any] = {"resume": {"payload": {}}}
        else:
            await sdk.runs.wait(tid, assistant, input={"journey_type": "slow_order", "spec": SPEC, "user_id": "ana"})
            answer = {"resume": {}}
        # The run fails with the step's error, whatever the pattern: a structured journey's step raises it, a process
        # records it as its failed node (an incident). The process's run ended "success" before, its output saying
        # in_progress: a client waiting, joining, streaming or called back heard nothing of the failure.
        streamed = [part async for part in sdk.runs.stream(tid, assistant, command=answer, stream_mode="values")]
        run = (await sdk.runs.list(tid, limit=1))[0]
        joined = (await http.get(f"/threads/{tid}/runs/{run['run_id']}/join")).json()
        *_, last, end = streamed
        assert (last.event, end.event, run["status"]) == ("error", "end", "error"), (streamed, run)
        assert joined["__error__"]["error"] == "AgentCallFailedError", joined
        assert "failed at step 'ship': carrier down" in joined["__error__"]["message"], joined
        assert last.data == joined["__error__"]
        instance_id = (await sdk.threads.get(tid))["metadata"]["instance_id"]
        assert (await http.get(f"/journeys/{instance_id}/status")).json()["index_status"] == "failed"
        await sdk.runs.wait(tid, assistant)  # no input: the failed step runs again
        status = (await http.get(f"/journeys/{instance_id}/status")).json()
    assert len(calls) == 4
    assert status["index_status"] == "in_progress", status
    if assistant == "process":
        assert [w["element"] for w in status["waiting"]] == ["confirm"], status
    else:
        assert (status["current_step"], status["completed_steps"]) == ("confirm", ["ask", "ship"]), status


async def test_a_saga_run_whose_compensation_fails_ends_in_error_and_a_run_without_input_retries_it(
    app: tuple[FastAPI, str], sdk: LangGraphClient
) -> None:
    """A saga whose step fails compensates; an undo that fails for good leaves the saga ``failed`` (its handler
    retriable). Its run ended "success" all the same, its output saying status failed; and a run without input,
    LangGraph's retry, found no failed task in the thread and did nothing. The run now ends "error" with the undo's
    error, and a run without input resumes the compensation."""
    undone: list[bool] = []
    fixed = asyncio.Event()

    async def ship(_request: AgentRequest) -> dict[str, Any]:
        raise RuntimeError("carrier down")

    async def undo(_request: AgentRequest) -> dict[str, Any]:
        undone.append(fixed.is_set())
        if not fixed.is_set():  # every attempt of the first run fails
            raise RuntimeError("undo down")
        return {"undone": True}

    runtime = app[0].state.services.runtime
    runtime.agents.register("slow_ship", ship, replace=True)
    runtime.agents.register("undo_ask", undo, replace=True)
    tid = (await sdk.threads.create())["thread_id"]
    start = {"journey_type": "slow_order", "spec": SPEC, "user_id": "ana", "compensation_handlers": {"ask": "undo_ask"}}
    await sdk.runs.wait(tid, "saga", input=start)
    with pytest.raises(Exception, match=r"AgentCallFailedError: agent for intent 'undo_ask' failed .*: undo down"):
        await sdk.runs.wait(tid, "saga", command={"resume": {}})
    instance_id = (await sdk.threads.get(tid))["metadata"]["instance_id"]
    async with httpx.AsyncClient(base_url=app[1], timeout=30) as http:
        assert (await http.get(f"/journeys/{instance_id}/status")).json()["index_status"] == "failed"
        fixed.set()
        retried = await sdk.runs.wait(tid, "saga")  # no input: the compensation goes on at the handler that failed
        status = (await http.get(f"/journeys/{instance_id}/status")).json()
    assert undone.count(False) > 1 and undone.count(True) == 1, undone  # the failed run's attempts, the retry's one
    assert (retried["status"], status["index_status"]) == ("compensated", "compensated"), (retried, status)


class GatedShip:
    """An agent held until the test opens its gate; it counts its calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.called = asyncio.Event()
        self.gate = asyncio.Event()

    async def __call__(self, request: AgentRequest) -> dict[str, Any]:
        self.calls += 1
        self.called.set()
        await self.gate.wait()
        return {"shipped": True}


async def test_a_cancel_landing_as_the_runs_graph_call_ends_leaves_the_run_saying_its_step_is_done(
    store_url: str,
) -> None:
    """``runs.cancel`` landing in the very pass of the event loop where the run's graph call ended (its step done,
    its checkpoint written) came too late to stop anything. Before, the call's outcome was dropped: the run was
    recorded ``interrupted`` and a halt recorded where the finished call had left the journey."""
    async with JourneyRuntime.open(store_url) as runtime:
        ship = GatedShip()
        runtime.agents.register("slow_ship", ship, replace=True)
        runs = RunStore(runtime.store.backend, runtime.store.clock)
        executor = RunExecutor(runtime, runs, durability="exit")

        async def executed(thread_id: str | None, **fields: Any) -> tuple[RunRow, asyncio.Task[RunRow | None]]:
            run = await structured_run(runs, thread_id, "resume" if thread_id else "start", **fields)
            return run, asyncio.ensure_future(executor.execute(run.run_id))

        _run, starting = await executed(None, input={"journey_type": "slow_order", "spec": SPEC, "user_id": "ana"})
        started = await starting
        assert started is not None and started.status == "success", started
        resumed, running = await executed(started.thread_id, command={"resume": {}})
        await ship.called.wait()
        [call] = [t for t in asyncio.all_tasks() if t.get_coro().__qualname__ == "run_graph"]  # type: ignore[union-attr]
        await runs.request_cancel(resumed.run_id)  # as runs.cancel does, before it cancels the run's task
        call.add_done_callback(lambda _call: running.cancel())  # after the call's own waiter was told: same pass
        ship.gate.set()
        ended = await asyncio.gather(running, return_exceptions=True)
        run = await runs.get_run(resumed.run_id)
        instance_id = (await runs.get_thread(started.thread_id)).instance_id  # type: ignore[union-attr]
        halts = await runtime.store.events.list(instance_id, types=["run.halted"])
        view = await thread_output(runtime, get_assistant("structured"), instance_id)
        _confirm, confirming = await executed(started.thread_id, command={"resume": {}})
        confirmed = await confirming
    assert run is not None and run.status == "success", (ended, run)
    assert run.output == view and view["current_step"] == "confirm", view
    assert view["completed_steps"] == ["ask", "ship"] and not halts
    assert confirmed is not None and confirmed.output["status"] == "completed", confirmed
    assert ship.calls == 1  # the step ran once

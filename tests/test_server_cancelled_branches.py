"""A process run cancelled on purpose (``runs.cancel(..., action="interrupt")``, langgraph-sdk over real HTTP)
while a service task of one parallel branch works and a user task of another waits: the answer to the waiting
task, given after the cancel (through the inbox, or as a run's ``command.resume``), is not lost. Memory, SQLite
and PostgreSQL."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from langgraph.errors import GraphInterrupt
from langgraph.types import interrupt
from langgraph_sdk.client import LangGraphClient

from checkpoints.events import EventLog, NewEvent
from nodes import waits as waits_module
from tests.server_fixtures import served_app, served_sdk  # noqa: F401  (the fixtures app and sdk)
from tests.server_support import SlowShip

pytestmark = pytest.mark.slow

SPEC = {
    "name": "forked",
    "elements": [
        {"type": "start", "id": "start"},
        {"type": "parallel_gateway", "id": "fork"},
        {"type": "user_task", "id": "review", "title": "Review", "assignee": "local", "outputs": ["ok"]},
        {"type": "service_task", "id": "ship", "agent": "slow_ship", "outputs": ["shipped"]},
        {"type": "parallel_gateway", "id": "join"},
        {"type": "end", "id": "end"},
    ],
    "flows": ["start -> fork", "fork -> review", "fork -> ship", "review -> join", "ship -> join", "join -> end"],
}


def noted_arming(armed: list[str], *, hold: bool) -> Callable[..., Awaitable[list[bool]]]:
    """``EventLog.append`` noting in ``armed`` the user tasks armed (their ``task.created`` written); ``hold``: the
    first is held once written (its task in the inbox, its wait not parked yet), where a cancel landing under load
    found it."""
    append = EventLog.append

    async def noted(log: EventLog, instance_id: str, events: Sequence[NewEvent], **kwargs: Any) -> list[bool]:
        written = await append(log, instance_id, events, **kwargs)
        if any(e.type == "task.created" for e in events):
            armed.append(instance_id)
            if hold and len(armed) == 1:
                await asyncio.sleep(30)
        return written

    return noted


def noted_parking(parked: list[str]) -> Callable[..., Any]:
    """LangGraph's ``interrupt`` as the wait nodes call it, noting in ``parked`` each interrupt raised (a node
    parking its thread)."""

    def noted(value: Any) -> Any:
        try:
            return interrupt(value)
        except GraphInterrupt:
            parked.append(str(value))
            raise

    return noted


async def _noted(seen: list[str]) -> None:
    # Noted on the server's loop: no event of this loop tells.
    while not seen:  # noqa: ASYNC110
        await asyncio.sleep(0.02)


async def _started(ship: SlowShip, armed: list[str]) -> None:
    # The agent and the wait run on the server's loop: no event of this loop tells.
    while not (ship.calls and armed):  # noqa: ASYNC110
        await asyncio.sleep(0.02)


async def _recorded(sdk: LangGraphClient, thread_id: str) -> None:
    # The interrupt raised is not yet the interrupt recorded: its write lands as LangGraph ends the task.
    while not (await sdk.threads.get_state(thread_id))["interrupts"]:  # noqa: ASYNC110 (read over HTTP: no event)
        await asyncio.sleep(0.02)


async def _cancelled_in_ship(
    app: FastAPI,
    url: str,
    sdk: LangGraphClient,
    monkeypatch: pytest.MonkeyPatch,
    *,
    hold: bool,
    recorded: bool = False,
) -> tuple[str, SlowShip]:
    """A process whose first run was cancelled while ``ship`` worked and ``review`` waited (``hold``: as its task
    was armed, before it parked; ``recorded``: once its interrupt is in the thread's state)."""
    armed: list[str] = []
    monkeypatch.setattr(EventLog, "append", noted_arming(armed, hold=hold))
    parked: list[str] = []
    monkeypatch.setattr(waits_module, "interrupt", noted_parking(parked))
    ship = SlowShip()
    app.state.services.runtime.agents.register("slow_ship", ship, replace=True)
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        assert (await http.post("/processes", json=SPEC)).status_code == 200
    tid = (await sdk.threads.create())["thread_id"]
    run = await sdk.runs.create(tid, "process", input={"process": "forked", "business_key": "order-1"})
    await asyncio.wait_for(_started(ship, armed), 10)
    if not hold:  # the task armed is not yet the wait parked: under load the cancel could land in between
        await asyncio.wait_for(_noted(parked), 10)
    if recorded:
        await asyncio.wait_for(_recorded(sdk, tid), 10)
    assert (await sdk.runs.cancel(tid, run["run_id"], action="interrupt", wait=True))["status"] == "interrupted"
    return tid, ship


@pytest.mark.parametrize("parking", ["parked", "arming"])
@pytest.mark.parametrize("how", ["inbox", "resume"])
async def test_a_task_answered_after_a_run_cancelled_in_a_parallel_branch_is_not_lost(
    app: tuple[FastAPI, str], sdk: LangGraphClient, how: str, parking: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, the cancelled branch's error (LangGraph records a cancelled task's ``CancelledError``) was
    taken for a failure: completing the task answered 200 with the process ``failed`` (``failed_element``
    ``fork.branch1``, no failure), the answer held for a retry. The stopped branch now runs on with the
    answer, and the process completes.

    ``arming``: the cancel lands as the task's wait parks (its task in the inbox, no interrupt recorded), as it
    did once under load. Completing the task answered 200 and the process stayed ``in_progress``: the delivery
    found no interrupt parked and did not run the stopped branches on, the answer marked delivered."""
    tid, ship = await _cancelled_in_ship(app[0], app[1], sdk, monkeypatch, hold=parking == "arming")
    async with httpx.AsyncClient(base_url=app[1], timeout=30) as http:
        status = (await http.get(f"/journeys/{tid}/status")).json()
        assert status["status"] == "in_progress" and status.get("failed_element") is None, status
        assert ship.calls == 1  # the read ran nothing
        [task] = (await http.get("/tasks", params={"instance_id": tid})).json()
        if how == "inbox":
            done = await http.post(f"/tasks/{task['task_id']}/complete", json={"payload": {"ok": True}})
            assert done.status_code == 200, done.json()
        else:
            result = await sdk.runs.wait(tid, "process", command={"resume": {"payload": {"ok": True}}})
            assert "__error__" not in result, result
        status = (await http.get(f"/journeys/{tid}/status")).json()
    assert status["status"] == "completed", status
    assert status["variables"] == {"business_key": "order-1", "ok": True, "shipped": True}, status
    assert ship.calls == 2


async def test_an_answer_addressed_to_a_task_parked_beside_a_cancelled_branch_goes_on_with_it(
    app: tuple[FastAPI, str], sdk: LangGraphClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run was cancelled while ``ship`` worked and ``review`` waited; the answer names ``review``'s interrupt.
    The stopped branch runs on first (``review`` parks again at the same interrupt), then the answer completes it."""
    tid, ship = await _cancelled_in_ship(app[0], app[1], sdk, monkeypatch, hold=False, recorded=True)
    [interrupt] = (await sdk.threads.get_state(tid))["interrupts"]
    result = await sdk.runs.wait(tid, "process", command={"resume": {interrupt["id"]: {"payload": {"ok": True}}}})
    assert "__error__" not in result, result
    async with httpx.AsyncClient(base_url=app[1], timeout=30) as http:
        status = (await http.get(f"/journeys/{tid}/status")).json()
    assert status["status"] == "completed", status
    assert ship.calls == 2


def writes_slowed_after(saver: Any, slow: threading.Event, seconds: float) -> None:
    """The saver's writes made once ``slow`` is set take ``seconds`` longer (a loaded database)."""
    for name in ("aput", "aput_writes"):
        write = getattr(saver, name)

        async def slowed(*args: Any, _write: Callable[..., Awaitable[Any]] = write, **kwargs: Any) -> Any:
            if slow.is_set():
                await asyncio.sleep(seconds)
            return await _write(*args, **kwargs)

        setattr(saver, name, slowed)


async def _cut_recorded(sdk: LangGraphClient, tid: str) -> None:
    # The cancelled branch's error, written behind the run: a state read runs nothing.
    while not any(t["error"] for t in (await sdk.threads.get_state(tid))["tasks"]):  # noqa: ASYNC110 (over HTTP)
        await asyncio.sleep(0.1)


async def test_a_branch_cancelled_while_the_database_is_slow_is_not_run_again_by_a_read(
    app: tuple[FastAPI, str], sdk: LangGraphClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run cancelled while ``ship`` worked and ``review`` waited, on a loaded database: LangGraph writes the
    cancelled branch's error once the run has unwound, in a write nothing waits for, so the run's halt (recorded
    under the journey's lock as the cancel lands) read the thread before that write: a branch that waits and
    nothing cut, nothing to halt, no halt recorded. Once the write landed, the next status read took the cut
    branch for a crash's and ran ``ship`` again (seen once in CI, at load: the ship step ran twice). The halt is
    now recorded whenever the thread has pending work."""
    served, url = app
    armed: list[str] = []
    monkeypatch.setattr(EventLog, "append", noted_arming(armed, hold=False))
    parked: list[str] = []
    monkeypatch.setattr(waits_module, "interrupt", noted_parking(parked))
    ship = SlowShip()
    runtime = served.state.services.runtime
    runtime.agents.register("slow_ship", ship, replace=True)
    slow = threading.Event()  # read on the server's loop
    writes_slowed_after(runtime.store.saver, slow, 1.5)
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        assert (await http.post("/processes", json=SPEC)).status_code == 200
    tid = (await sdk.threads.create())["thread_id"]
    run = await sdk.runs.create(tid, "process", input={"process": "forked", "business_key": "order-1"})
    await asyncio.wait_for(_started(ship, armed), 10)
    await asyncio.wait_for(_noted(parked), 10)
    slow.set()
    assert (await sdk.runs.cancel(tid, run["run_id"], action="interrupt", wait=True))["status"] == "interrupted"
    await asyncio.wait_for(_cut_recorded(sdk, tid), 15)
    slow.clear()
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        status = (await http.get(f"/journeys/{tid}/status")).json()
        assert status["status"] == "in_progress", status
        assert ship.calls == 1  # the read ran nothing
        [task] = (await http.get("/tasks", params={"instance_id": tid})).json()
        done = await http.post(f"/tasks/{task['task_id']}/complete", json={"payload": {"ok": True}})
        assert done.status_code == 200, done.json()
        status = (await http.get(f"/journeys/{tid}/status")).json()
    assert status["status"] == "completed", status
    assert ship.calls == 2

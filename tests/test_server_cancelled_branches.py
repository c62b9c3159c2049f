"""A process run cancelled on purpose (``runs.cancel(..., action="interrupt")``, langgraph-sdk over real HTTP)
while a service task of one parallel branch works and a user task of another waits: the answer to the waiting
task, given after the cancel (through the inbox, or as a run's ``command.resume``), is not lost. Memory, SQLite
and PostgreSQL."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi import FastAPI
from langgraph_sdk.client import LangGraphClient

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


async def _started(ship: SlowShip) -> None:
    while not ship.calls:  # noqa: ASYNC110 (the agent runs on the server's loop: no event of this loop tells)
        await asyncio.sleep(0.02)


async def _cancelled_in_ship(app: FastAPI, url: str, sdk: LangGraphClient) -> tuple[str, SlowShip]:
    ship = SlowShip()
    app.state.services.runtime.agents.register("slow_ship", ship, replace=True)
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        assert (await http.post("/processes", json=SPEC)).status_code == 200
    tid = (await sdk.threads.create())["thread_id"]
    run = await sdk.runs.create(tid, "process", input={"process": "forked", "business_key": "order-1"})
    await asyncio.wait_for(_started(ship), 10)
    assert (await sdk.runs.cancel(tid, run["run_id"], action="interrupt", wait=True))["status"] == "interrupted"
    return tid, ship


@pytest.mark.parametrize("how", ["inbox", "resume"])
async def test_a_task_answered_after_a_run_cancelled_in_a_parallel_branch_is_not_lost(
    app: tuple[FastAPI, str], sdk: LangGraphClient, how: str
) -> None:
    """Before, the cancelled branch's error (LangGraph records a cancelled task's ``CancelledError``) was
    taken for a failure: completing the task answered 200 with the process ``failed`` (``failed_element``
    ``fork.branch1``, no failure), the answer held for a retry. The stopped branch now runs on with the
    answer, and the process completes."""
    tid, ship = await _cancelled_in_ship(app[0], app[1], sdk)
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

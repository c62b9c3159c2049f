"""Terminating a process whose service task runs inside a request (an embedded server runs a process's start, a
task's completion and a message in the request): no run's cancel reaches that step, so the terminate waits for
the request to let the journey go, and the step's effect is made. The terminate says so: its answer lists what
the journey did between the terminate's call and its taking effect. Over real HTTP, on memory, SQLite and
PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from agents import AgentRegistry
from server.app import create_app
from server.settings import Settings
from tests.process_support import linear, user_task
from tests.server_support import serving

SPEC = linear(
    "slow_charge",
    {"type": "service_task", "id": "charge", "agent": "charger", "outputs": ["charged"]},
    user_task("confirm"),
)


async def test_a_terminate_that_waited_for_a_step_run_in_a_request_reports_that_step(store_url: str) -> None:
    """Before: the answer said `terminated` and nothing else, while the card had been charged after the terminate
    was asked (the request's step finished first); only the history showed it. Now the answer lists it under
    ``went_on_first``."""
    charging, release = asyncio.Event(), asyncio.Event()

    async def charger(request: Any) -> dict[str, Any]:
        charging.set()
        await release.wait()
        return {"charged": True}

    agents = AgentRegistry()
    agents.register("charger", charger)
    app = create_app(Settings(database_url=store_url, auth=False), runtime_options={"agents": agents})
    with serving(app) as base:
        async with httpx.AsyncClient(base_url=base, timeout=60) as http:
            assert (await http.post("/processes", json=SPEC)).status_code == 200
            start = asyncio.ensure_future(http.post("/processes/slow_charge/instances", json={"business_key": "o-1"}))
            await asyncio.wait_for(charging.wait(), 30)
            [instance] = await app.state.services.runtime.store.index.list_instances(limit=10)
            terminate = asyncio.ensure_future(
                http.post(f"/journeys/{instance.instance_id}/terminate", json={"reason": "customer cancelled"})
            )
            await asyncio.sleep(0.5)  # the terminate waits for the journey the request holds
            assert not terminate.done()
            release.set()
            started, terminated = await start, await terminate
    assert started.status_code == 200, started.text
    assert terminated.status_code == 200, terminated.text
    answer = terminated.json()
    assert answer["status"] == "terminated", answer
    went_on = answer["went_on_first"]
    assert [e["type"] for e in went_on if e["step"] == "charge"] == ["task.completed"], went_on

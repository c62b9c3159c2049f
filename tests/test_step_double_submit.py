"""Two advances of a structured or saga step that name no step, sent at once (a double click, two tabs): the
first completes the step, the second is refused (StepMovedOnError, a conflict) instead of completing the next
step with the first one's result. Advances one after another without step_id still go on step by step."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from agents import AgentRequest
from graphs import JourneyRuntime, StepMovedOnError
from server.app import create_app
from server.settings import Settings
from tests.server_support import serving

SPEC = {
    "journey_type": "double_click",
    "steps": [
        {"step_id": "ask", "mode": "user"},
        {"step_id": "ship", "mode": "auto", "agent": "slow_ship"},
        {"step_id": "confirm", "mode": "user"},
    ],
}


async def slow_ship(_request: AgentRequest) -> dict[str, Any]:
    await asyncio.sleep(0.5)  # the second click arrives while the first advance runs
    return {"shipped": True}


async def _advance_twice(rt: JourneyRuntime, pattern: str) -> tuple[list[Any], dict[str, Any]]:
    rt.agents.register("slow_ship", slow_ship, replace=True)
    if pattern == "saga":
        design = await rt.saga.design_saga_journey("double_click", {}, {}, spec=SPEC)
        saga_id = (await rt.saga.execute_saga_journey(design["journey_id"], "ana", {}))["saga_id"]

        async def advance() -> dict[str, Any]:
            return await rt.saga.advance_saga_step(saga_id, design["journey_id"], "ana", {"answer": 1})

        async def status() -> dict[str, Any]:
            return await rt.saga.get_saga_status(saga_id)
    else:
        design = await rt.structured.design_journey("double_click", spec=SPEC)
        await rt.structured.execute_journey(design["journey_id"], "ana", {})

        async def advance() -> dict[str, Any]:
            return await rt.structured.advance_journey_step(design["journey_id"], "ana", {"answer": 1})

        async def status() -> dict[str, Any]:
            return await rt.structured.get_journey_status(design["journey_id"], "ana")

    first = asyncio.create_task(advance())
    await asyncio.sleep(0.1)
    second = asyncio.create_task(advance())
    answers = await asyncio.gather(first, second, return_exceptions=True)
    return answers, await status()


@pytest.mark.parametrize("pattern", ["structured", "saga"])
async def test_a_double_submitted_advance_completes_one_step(store_url: str, pattern: str) -> None:
    async with JourneyRuntime.open(store_url) as rt:
        (done, refused), status = await _advance_twice(rt, pattern)
    assert isinstance(done, dict) and done["completed_step"] == "ask", done
    assert isinstance(refused, StepMovedOnError), refused
    assert refused.details["current_step"] == "confirm" and "step_id" in refused.message
    assert status["status"] == "in_progress" and status["current_step"] == "confirm", status
    assert status["completed_steps"] == ["ask", "ship"]


async def test_advances_one_after_another_without_step_id_go_on_step_by_step(store_url: str) -> None:
    async with JourneyRuntime.open(store_url) as rt:
        rt.agents.register("slow_ship", slow_ship, replace=True)
        design = await rt.structured.design_journey("double_click", spec=SPEC)
        await rt.structured.execute_journey(design["journey_id"], "ana", {})
        await rt.structured.advance_journey_step(design["journey_id"], "ana", {})
        done = await rt.structured.advance_journey_step(design["journey_id"], "ana", {})
    assert done["status"] == "completed" and done["completed_steps"] == ["ask", "ship", "confirm"]


async def test_a_double_click_over_http_is_refused_with_a_409_naming_the_step(store_url: str) -> None:
    """The same over the JSON API: two POSTs of one saga step's advance at once, from two clients."""
    app = create_app(Settings(database_url=store_url, auth=False))
    with serving(app) as url:
        app.state.services.runtime.agents.register("slow_ship", slow_ship, replace=True)
        async with httpx.AsyncClient(base_url=url) as one, httpx.AsyncClient(base_url=url) as two:
            body = {"journey_type": "double_click", "spec": SPEC, "compensation_handlers": {}}
            design = (await one.post("/journeys/sagas/designs", json=body)).json()
            start = f"/journeys/sagas/designs/{design['journey_id']}/executions"
            saga_id = (await one.post(start, json={"user_id": "ana"})).json()["saga_id"]
            move = {"journey_id": design["journey_id"], "user_id": "ana", "step_result": {}}
            first = asyncio.create_task(one.post(f"/journeys/sagas/{saga_id}/advance", json=move))
            await asyncio.sleep(0.1)
            second = await two.post(f"/journeys/sagas/{saga_id}/advance", json=move)
            done = await first
            status = (await one.get(f"/journeys/sagas/{saga_id}")).json()
    assert done.status_code == 200 and done.json()["completed_step"] == "ask", done.text
    assert second.status_code == 409 and second.json()["code"] == "StepMovedOnError", second.text
    assert "step_id" in second.json()["detail"]
    assert (status["current_step"], status["completed_steps"]) == ("confirm", ["ask", "ship"])

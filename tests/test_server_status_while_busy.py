"""A journey's status read while a call is moving it (a long agent call: a compensation, a unit of work) over real
HTTP, on memory, SQLite and PostgreSQL.

Every status read took the journey's lock to finish work a crash may have left in flight, so while an advance ran a
step or a compensation (an agent taking a minute, as real ones do), ``GET /journeys/sagas/{id}``, ``GET
/journeys/{id}/status``, a lifecycle journey's state and the dashboard's journey page each waited the lock timeout
(30 s) and then answered 409 ``ConcurrentUpdateError`` "nothing was done, try again": a client polling a journey's
progress could never see it move. A read now waits for the lock a moment (``READ_PATIENCE_S``), then answers the
journey as last committed: the call holding it is alive and finishes it (its crash would release the lock)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from agents import AgentRequest, PermanentAgentError
from checkpoints.locks import DEFAULT_LOCK_TIMEOUT_S
from tests.server_fixtures import served_app  # noqa: F401 - the app fixture

pytestmark = pytest.mark.slow
HANDLERS = {"upload_content": "undo_upload", "analyze_content": "undo_analysis", "transform_data": "undo_transform"}


def _runtime(app: FastAPI) -> Any:
    return app.state.services.runtime


async def _hanging(release: threading.Event, entered: threading.Event) -> dict[str, Any]:
    entered.set()
    await asyncio.to_thread(release.wait, 60)  # set by the test, on another loop
    return {"undone": True}


async def _read_while_busy(
    client: httpx.AsyncClient, entered: threading.Event, what: str, paths: tuple[str, ...]
) -> list[dict[str, Any]]:
    """Once ``what`` (the long call) has started, read each of ``paths``: each answers 200 within the read's
    patience, not after the lock timeout. Returns the answers' bodies."""
    assert await asyncio.to_thread(entered.wait, 30), f"the {what} never started"
    bodies = []
    for path in paths:
        began = time.monotonic()
        answer = await client.get(path)
        took = time.monotonic() - began
        assert answer.status_code == 200, answer.text
        # Half the lock's timeout, which the read waited out: a loaded machine's seconds pass, that wait does not.
        assert took < DEFAULT_LOCK_TIMEOUT_S / 2, f"{path} took {took:.1f} s while the {what} ran"
        bodies.append(answer.json())
    return bodies


async def test_a_sagas_status_is_read_while_its_compensation_runs(app: tuple[FastAPI, str]) -> None:
    served, url = app
    release, entered = threading.Event(), threading.Event()

    def transform(request: AgentRequest) -> dict[str, Any]:
        raise PermanentAgentError("the transform service refused the batch")

    async def undo_analysis(request: AgentRequest) -> dict[str, Any]:
        return await _hanging(release, entered)

    agents = _runtime(served).agents
    agents.register("transform_data", transform, replace=True)
    agents.register("undo_analysis", undo_analysis, replace=True)
    for intent in ("undo_upload", "undo_transform"):
        agents.register(intent, lambda request: {"undone": True}, replace=True)
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        design = (
            await client.post(
                "/journeys/sagas/designs",
                json={"journey_type": "enterprise_migration", "requirements": {}, "compensation_handlers": HANDLERS},
            )
        ).json()
        journey_id = design["journey_id"]
        started = await client.post(f"/journeys/sagas/designs/{journey_id}/executions", json={"user_id": "ana"})
        saga_id = started.json()["saga_id"]
        body = {"journey_id": journey_id, "user_id": "ana"}
        for result in ({"files": 3}, {"entities": 2}):
            answer = await client.post(f"/journeys/sagas/{saga_id}/advance", json={**body, "step_result": result})
            assert answer.status_code == 200, answer.text
        failing = asyncio.ensure_future(
            client.post(f"/journeys/sagas/{saga_id}/advance", json={**body, "step_result": {"rows": 10}})
        )
        try:
            for body in await _read_while_busy(
                client, entered, "compensation", (f"/journeys/sagas/{saga_id}", f"/journeys/{saga_id}/status")
            ):
                assert body["status"] == "compensating"
        finally:
            release.set()
            done = await failing
        assert done.status_code == 200, done.text
        assert done.json()["status"] == "compensated"
        answer = await client.get(f"/journeys/sagas/{saga_id}")
        assert answer.json()["compensated_steps"] == ["transform_data", "analyze_content", "upload_content"]


async def test_a_lifecycle_journeys_state_is_read_while_a_unit_of_work_runs(app: tuple[FastAPI, str]) -> None:
    served, url = app
    release, entered = threading.Event(), threading.Event()

    async def provision(request: AgentRequest) -> dict[str, Any]:
        return {"dataset_id": "ds-1", "record_count": 10, **await _hanging(release, entered)}

    _runtime(served).agents.register("provision_test_dataset", provision, replace=True)
    ready = {"contract_signed": 1, "infrastructure_provisioned": 1, "data_sources_identified": 3}
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        started = await client.post("/journeys/lifecycle", json={"client_id": "acme", "metrics": ready})
        journey_id = started.json()["journey_id"]
        unit = {"event": "run_unit_of_work", "options": {"uow_id": "test_dataset_provisioning"}}
        running = asyncio.ensure_future(client.post(f"/journeys/lifecycle/{journey_id}/transitions", json=unit))
        try:
            for body in await _read_while_busy(
                client, entered, "unit of work", (f"/journeys/lifecycle/{journey_id}", f"/journeys/{journey_id}/status")
            ):
                assert body["current_stage"] == "sandbox"
        finally:
            release.set()
            done = await running
        assert done.status_code == 200, done.text
        assert done.json()["unit"]["status"] == "completed"


async def test_a_process_instances_status_is_read_while_its_service_task_runs(app: tuple[FastAPI, str]) -> None:
    served, url = app
    release, entered = threading.Event(), threading.Event()

    async def ship(request: AgentRequest) -> dict[str, Any]:
        return {"shipped": (await _hanging(release, entered))["undone"]}

    _runtime(served).agents.register("ship", ship, replace=True)
    process = {
        "name": "order",
        "elements": [
            {"type": "start", "id": "start"},
            {"type": "user_task", "id": "approve", "title": "Approve", "assignee": "ana"},
            {"type": "service_task", "id": "ship", "agent": "ship", "outputs": ["shipped"]},
            {"type": "end", "id": "end"},
        ],
        "flows": ["start -> approve", "approve -> ship", "ship -> end"],
    }
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        assert (await client.post("/processes", json=process)).status_code == 200
        started = (await client.post("/processes/order/instances", json={"business_key": "o-1"})).json()
        instance_id = started["instance_id"]
        [wait] = started["waiting"]
        completing = asyncio.ensure_future(
            client.post(f"/tasks/{wait['wait_id']}/complete", json={"user": "ana", "payload": {}})
        )
        try:
            for body in await _read_while_busy(
                client,
                entered,
                "service task",
                (f"/processes/instances/{instance_id}", f"/journeys/{instance_id}/status"),
            ):
                assert body["status"] == "in_progress"
        finally:
            release.set()
            done = await completing
        assert done.status_code == 200, done.text
        assert (done.json()["status"], done.json()["variables"]["shipped"]) == ("completed", True)

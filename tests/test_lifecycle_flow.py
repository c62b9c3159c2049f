"""Client lifecycle starts go through the one instance lifecycle (``Instances.create``), like every other
pattern's: idempotent start keys, concurrency slots and whole-run deadlines, on every backend."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import httpx
import pytest

from graphs.errors import ConcurrencyLimitError, DeadlineExceededError, InvalidTransitionError
from graphs.lifecycle.catalog import READY_TO_START, default_lifecycle_spec
from server.app import create_app
from server.settings import Settings
from tests.lifecycle_support import lifecycle_runtime
from tests.server_support import serving


def spec_with(**flow: Any) -> dict[str, Any]:
    return {**default_lifecycle_spec().model_dump(mode="json"), **flow}


async def test_a_lifecycle_start_key_answers_the_journey_it_started(store_url: str) -> None:
    async with lifecycle_runtime(store_url) as (rt, _clock):
        lc = rt.lifecycle
        first = await lc.start_journey("client-1", metrics=READY_TO_START, start_key="onboard-1")
        again = await lc.start_journey("client-1", metrics=READY_TO_START, start_key="onboard-1")
        assert again["journey_id"] == first["journey_id"]
        assert again["current_stage"] == "sandbox" and again["validation"]["passed"]
        together = await asyncio.gather(
            *(lc.start_journey("client-2", metrics=READY_TO_START, start_key="onboard-2") for _ in range(4))
        )
        assert len({answer["journey_id"] for answer in together}) == 1
        assert await rt.store.index.count_by_status(pattern="lifecycle") == {"active": 2}


async def test_a_lifecycle_concurrency_limit_queues_then_starts_when_a_slot_frees(store_url: str) -> None:
    limited = spec_with(concurrency={"key": "$.tenant", "limit": 1, "on_limit": "queue"})
    async with lifecycle_runtime(store_url) as (rt, _clock):
        lc = rt.lifecycle
        running = await lc.start_journey("c-1", metadata={"tenant": "acme"}, metrics=READY_TO_START, spec=limited)
        queued = await lc.start_journey("c-2", metadata={"tenant": "acme"}, metrics=READY_TO_START, spec=limited)
        other = await lc.start_journey("c-3", metadata={"tenant": "beta"}, metrics=READY_TO_START, spec=limited)
        assert (running["status"], queued["status"], other["status"]) == ("active", "queued", "active")
        assert queued["current_stage"] is None and queued["allowed_events"] == []
        assert await rt.processes.dispatch_queued() == []  # acme's slot is taken

        await lc.cancel(running["journey_id"], "make room")
        assert await rt.processes.dispatch_queued() == [queued["journey_id"]]
        started = await lc.get_journey_state(queued["journey_id"])
        assert (started["current_stage"], started["status"]) == ("sandbox", "active")

        rejecting = spec_with(concurrency={"key": "$.tenant", "limit": 1, "on_limit": "reject"})
        await lc.start_journey("c-4", metadata={"tenant": "zeta"}, metrics=READY_TO_START, spec=rejecting)
        with pytest.raises(ConcurrencyLimitError):
            await lc.start_journey("c-5", metadata={"tenant": "zeta"}, metrics=READY_TO_START, spec=rejecting)
        assert await rt.store.index.count_by_status(pattern="lifecycle") == {"active": 3, "cancelled": 1}


async def test_a_lifecycle_journey_past_its_deadline_is_cancelled_and_fails(store_url: str) -> None:
    async with lifecycle_runtime(store_url) as (rt, clock):
        lc = rt.lifecycle
        timed = spec_with(deadline={"after": "P30D"})
        journey = await lc.start_journey("client-9", metrics=READY_TO_START, spec=timed)
        journey_id = journey["journey_id"]
        clock.advance(timedelta(days=30) - timedelta(seconds=1))
        assert (await rt.processes.scheduler.run_due()).fired == 0  # never early
        clock.advance(timedelta(seconds=1))
        assert (await rt.processes.scheduler.run_due()).fired == 1
        state = await lc.get_journey_state(journey_id)
        assert (state["current_stage"], state["allowed_events"]) == ("cancelled", [])
        instance = await rt.store.index.get_instance(journey_id)
        assert instance is not None and instance.status == "failed"
        types = [event.type for event in await rt.history(journey_id)]
        assert "journey.deadline_passed" in types and types[-1] == "instance.failed", types
        with pytest.raises(InvalidTransitionError):
            await lc.promote(journey_id)


def test_the_http_lifecycle_start_takes_a_start_key(store_url: str) -> None:
    with (
        serving(create_app(Settings(database_url=store_url, auth=False))) as url,
        httpx.Client(base_url=url, timeout=60) as http,
    ):
        body = {"client_id": "client-7", "metrics": READY_TO_START, "start_key": "onboard-7", "start_key_window": 60}
        first, again = (http.post("/journeys/lifecycle", json=body) for _ in range(2))
        assert first.status_code == again.status_code == 200, again.text
        assert again.json()["journey_id"] == first.json()["journey_id"]
        assert again.json()["current_stage"] == "sandbox" and again.json()["validation"]["passed"]
        other = http.post("/journeys/lifecycle", json={**body, "start_key": "onboard-8"}).json()
        assert other["journey_id"] != first.json()["journey_id"]


async def test_a_lifecycle_past_its_deadline_after_a_run_cancelled_in_a_unit_runs_no_more(store_url: str) -> None:
    """A unit of work's run cancelled on purpose (``JourneyEngine.halt``), then the deadline passes: the
    journey, which its stage could not cancel mid-unit, has failed; no later event runs the stopped unit on
    (nothing of a journey runs after its deadline): each is refused with DeadlineExceededError."""
    calls: list[int] = []
    working = asyncio.Event()

    async def slow(_request: Any) -> dict[str, Any]:
        calls.append(1)
        working.set()
        await asyncio.sleep(30)
        return {"dataset_id": "d-1", "record_count": 1}

    async with lifecycle_runtime(store_url) as (rt, clock):
        lc = rt.lifecycle
        rt.agents.register("provision_test_dataset", slow, replace=True)
        timed = spec_with(deadline={"after": "P30D"})
        journey_id = (await lc.start_journey("client-9", metrics=READY_TO_START, spec=timed))["journey_id"]
        unit = asyncio.create_task(lc.run_unit_of_work(journey_id, "test_dataset_provisioning"))
        await working.wait()
        unit.cancel()
        with pytest.raises(asyncio.CancelledError):
            await unit
        graph = await rt.instances.graph(await rt.store.index.get_instance(journey_id))  # type: ignore[arg-type]
        async with rt.engine.exclusive(journey_id):
            assert await rt.engine.halt(graph, journey_id)
        clock.advance(timedelta(days=30))
        assert (await rt.processes.scheduler.run_due()).fired == 1
        instance = await rt.store.index.get_instance(journey_id)
        assert instance is not None and instance.status == "failed"
        with pytest.raises(DeadlineExceededError):
            await lc.cancel(journey_id, "too late")
        with pytest.raises(DeadlineExceededError):
            await lc.transition(journey_id, "run_unit_of_work", uow_id="search_quality_validation")
    assert len(calls) == 1

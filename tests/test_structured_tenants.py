"""Structured and saga designs belong to the tenant whose caller saved them, as process names do: before, any
tenant that knew a design's id started it (and ran its agents, and saw its steps). Designs the runtime saves
itself (used in-process) and those stored before migration 32 stay shared. On memory, SQLite and PostgreSQL, in
process and over real HTTP with two tenants' API keys."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from checkpoints.ownership import Owner, acting_as
from graphs import JourneyNotFoundError, JourneyRuntime
from server.app import create_app
from server.settings import ApiKey, Settings
from tests.server_support import serving

ACME, GLOBEX = Owner("ana", "acme"), Owner("bo", "globex")
SPEC = {"journey_type": "intake", "steps": [{"step_id": "collect"}, {"step_id": "review"}]}


async def test_a_design_a_tenant_saved_is_started_by_that_tenant_only(store_url: str) -> None:
    async with JourneyRuntime.open(store_url) as rt:
        structured = rt.structured
        with acting_as(ACME):
            mine = (await structured.design_journey("intake", spec=SPEC))["journey_id"]
            started = await structured.execute_journey(mine, "ana")
            assert started["current_step"] == "collect"
        with acting_as(Owner("cy", "acme")):  # another user of the tenant
            assert (await structured.execute_journey(mine, "cy"))["current_step"] == "collect"
        with acting_as(GLOBEX):
            with pytest.raises(JourneyNotFoundError, match="no journey design"):
                await structured.execute_journey(mine, "bo")
            with pytest.raises(JourneyNotFoundError, match="no journey design"):  # not 'not started': none
                await structured.advance_journey_step(mine, "bo", {})
        assert (await rt.store.index.get_design(mine)).tenant == "acme"  # type: ignore[union-attr]

        # The runtime's own design (in-process) is every tenant's, as before.
        shared = (await structured.design_journey("intake", spec=SPEC))["journey_id"]
        assert (await rt.store.index.get_design(shared)).tenant is None  # type: ignore[union-attr]
        with acting_as(GLOBEX):
            assert (await structured.execute_journey(shared, "bo"))["current_step"] == "collect"

        # A saga's design likewise.
        with acting_as(ACME):
            saga = (await rt.saga.design_saga_journey("intake", spec=SPEC))["journey_id"]
        with acting_as(GLOBEX), pytest.raises(JourneyNotFoundError):
            await rt.saga.execute_saga_journey(saga, "bo")
        with acting_as(ACME):
            assert (await rt.saga.execute_saga_journey(saga, "ana"))["status"] == "in_progress"


async def test_a_spec_each_tenant_sends_is_a_design_of_its_own(store_url: str) -> None:
    """The threads' first runs store a design once per content: the same content another tenant sent was its
    design, which the first tenant's callers then started by its id."""
    async with JourneyRuntime.open(store_url) as rt:
        structured = rt.structured
        with acting_as(ACME):
            acme = await structured.shared_design("intake", spec=SPEC)
            assert await structured.shared_design("intake", spec=SPEC) == acme
        with acting_as(GLOBEX):
            globex = await structured.shared_design("intake", spec=SPEC)
            with pytest.raises(JourneyNotFoundError):
                await structured.start_run("structured_g1", acme, "bo")
            assert (await structured.start_run("structured_g2", globex, "bo"))["journey_id"] == globex
        runtime_own = await structured.shared_design("intake", spec=SPEC)
        assert len({acme, globex, runtime_own}) == 3
        assert (await rt.store.index.get_design(runtime_own)).tenant is None  # type: ignore[union-attr]


WORK = frozenset({"read", "journeys", "runs"})
KEYS = {
    "key-ana": ApiKey("ana", WORK, tenant="acme"),
    "key-bo": ApiKey("bo", WORK, tenant="globex"),
}


@pytest.fixture
def base(store_url: str) -> Iterator[str]:
    with serving(create_app(Settings(database_url=store_url, api_keys=dict(KEYS)))) as url:
        yield url


def ok(response: httpx.Response) -> Any:
    assert response.status_code < 300, (response.request.url, response.status_code, response.text)
    return response.json()


@pytest.mark.slow
async def test_two_tenants_over_http_start_their_own_designs_only(base: str) -> None:
    async with (
        httpx.AsyncClient(base_url=base, headers={"x-api-key": "key-ana"}, timeout=60) as ana,
        httpx.AsyncClient(base_url=base, headers={"x-api-key": "key-bo"}, timeout=60) as bo,
    ):
        body = {"journey_type": "intake", "spec": SPEC}
        acme = ok(await ana.post("/journeys/structured/designs", json=body))["journey_id"]
        refused = await bo.post(f"/journeys/structured/{acme}/executions", json={"user_id": "bo"})
        assert refused.status_code == 404 and refused.json()["code"] == "JourneyNotFoundError", refused.text
        assert (await bo.get(f"/journeys/structured/{acme}/users/bo")).status_code == 404
        started = ok(await ana.post(f"/journeys/structured/{acme}/executions", json={"user_id": "ana"}))
        assert started["current_step"] == "collect"

        globex = ok(await bo.post("/journeys/structured/designs", json=body))["journey_id"]
        assert ok(await bo.post(f"/journeys/structured/{globex}/executions", json={"user_id": "bo"}))["journey_id"] == (
            globex
        )
        assert (await ana.post(f"/journeys/structured/{globex}/executions", json={"user_id": "ana"})).status_code == 404

        saga = ok(await ana.post("/journeys/sagas/designs", json=body))["journey_id"]
        assert (await bo.post(f"/journeys/sagas/designs/{saga}/executions", json={"user_id": "bo"})).status_code == 404
        ok(await ana.post(f"/journeys/sagas/designs/{saga}/executions", json={"user_id": "ana"}))

        # A thread's first run with the same spec: each tenant's journey runs a design of its own.
        runs = []
        for http in (ana, bo):
            thread = ok(await http.post("/threads", json={}))["thread_id"]
            first = {"assistant_id": "structured", "input": {"journey_type": "intake", "spec": SPEC}}
            ok(await http.post(f"/threads/{thread}/runs/wait", json=first))
            instance_id = ok(await http.get(f"/threads/{thread}"))["metadata"]["instance_id"]
            runs.append(ok(await http.get(f"/journeys/{instance_id}/status"))["journey_id"])
        assert runs[0] != runs[1]
        refused = await ana.post(f"/journeys/structured/{runs[1]}/executions", json={"user_id": "ana"})
        assert refused.status_code == 404, refused.text

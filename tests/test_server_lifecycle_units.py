"""A client lifecycle journey driven over HTTP only, with the official langgraph-sdk client, two users, on
SQLite and PostgreSQL: from the sandbox to the pilot, through the units of work the sandbox requires.

The sandbox can be left only once its required units have completed, and all but the first run on demand.
Over HTTP nothing could run one: the transitions endpoint and a lifecycle thread's resume took only the
seven stage events, so a journey started over HTTP stayed in the sandbox for ever, its promotion refused
with "unit of work 'test_dataset_provisioning' must complete first". ``run_unit_of_work`` (option
``uow_id``) now runs one, on both paths, and answers the run as ``unit``."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from langgraph_sdk.client import LangGraphClient

from graphs.lifecycle.catalog import READY_TO_START
from server.settings import ApiKey
from tests.lifecycle_support import PILOT_ENTRY, SANDBOX_EXIT

pytestmark = pytest.mark.slow
WORK = frozenset({"read", "runs", "journeys"})
KEYS = {"key-ana": ApiKey("ana", WORK, ()), "key-bob": ApiKey("bob", WORK, ())}
ON_DEMAND = ("test_dataset_provisioning", "search_quality_validation")  # the sandbox's required units run on demand


def run_unit(uow_id: str) -> dict[str, Any]:
    return {"event": "run_unit_of_work", "options": {"uow_id": uow_id}}


async def refused(call: Any) -> httpx.Response:
    with pytest.raises(httpx.HTTPStatusError) as caught:
        await call
    return caught.value.response


async def test_a_journey_started_over_http_runs_its_units_and_is_promoted(
    ana: LangGraphClient, bob: LangGraphClient
) -> None:
    started = await ana.http.post("/journeys/lifecycle", json={"client_id": "medtronic", "metrics": READY_TO_START})
    path = f"/journeys/lifecycle/{started['journey_id']}"
    await ana.http.post(f"{path}/metrics", json={"values": {**SANDBOX_EXIT, **PILOT_ENTRY}})
    # A promotion its gate refuses is a 409 whose details hold the validation (it was a 200 a client checking
    # the status took for a promotion); the stage stays, and the validation is in the journey's history.
    early = await refused(ana.http.post(f"{path}/transitions", json={"event": "promote_to_pilot"}))
    problem = early.json()
    assert early.status_code == 409 and problem["code"] == "GateRefusedError", problem
    assert "stays in stage 'sandbox'" in problem["detail"] and "must complete first" in problem["detail"], problem
    validation = problem["details"]["validation"]
    unmet = [c["name"] for c in validation["checks"] if not c["passed"]]
    assert (validation["passed"], unmet) == (False, [f"unit:{u}" for u in ON_DEMAND])
    assert (await ana.http.get(path))["current_stage"] == "sandbox"

    # Another user's journey is not found to him; an unknown unit is refused naming the stage's units.
    assert (await refused(bob.http.post(f"{path}/transitions", json=run_unit(ON_DEMAND[0])))).status_code == 404
    unknown = await refused(ana.http.post(f"{path}/transitions", json=run_unit("rollout_10")))
    assert unknown.status_code == 404 and ON_DEMAND[0] in unknown.json()["detail"]
    missing = await refused(ana.http.post(f"{path}/transitions", json={"event": "run_unit_of_work"}))
    assert missing.status_code == 422 and "uow_id" in missing.text

    for uow_id in ON_DEMAND:
        ran = await ana.http.post(f"{path}/transitions", json=run_unit(uow_id))
        assert (ran["current_stage"], ran["unit"]["uow_id"], ran["unit"]["status"]) == ("sandbox", uow_id, "completed")
        assert ran["units"][uow_id] == "completed" and ran["unit"]["purpose"] == "on_demand"
    promoted = await ana.http.post(f"{path}/transitions", json={"event": "promote_to_pilot"})
    assert promoted["validation"]["passed"] and promoted["current_stage"] == "pilot"
    assert (await ana.http.get(path))["completed_stages"] == ["sandbox"]


async def test_a_lifecycle_thread_runs_a_unit_as_a_resume(ana: LangGraphClient) -> None:
    thread_id = str((await ana.threads.create())["thread_id"])
    await ana.runs.wait(thread_id, "lifecycle", input={"client_id": "acme", "metrics": READY_TO_START})
    for uow_id in ON_DEMAND:
        run = await ana.runs.create(thread_id, "lifecycle", command={"resume": run_unit(uow_id)})
        await ana.runs.join(thread_id, run["run_id"])
        assert (await ana.runs.get(thread_id, run["run_id"]))["status"] == "success"
    await ana.runs.wait(thread_id, "lifecycle", command={"resume": {"metrics": {**SANDBOX_EXIT, **PILOT_ENTRY}}})
    await ana.runs.wait(thread_id, "lifecycle", command={"resume": {"event": "promote_to_pilot"}})
    journey = await ana.http.get(f"/journeys/lifecycle/{thread_id}")
    assert (journey["current_stage"], journey["units"]["search_quality_validation"]) == ("pilot", "completed")


async def test_a_resume_with_metrics_and_an_event_records_the_metrics_then_applies_the_event(
    ana: LangGraphClient,
) -> None:
    """``{"event": "promote_to_pilot", "metrics": {...}}`` was accepted (the resume schema allows both) and its
    metrics were dropped without a word: the gate then refused the promotion for the very metrics sent with it
    ("no value of search_precision was recorded"), and the run said 'success'. The metrics are now recorded
    first, then the event is applied to the journey as they left it."""
    thread_id = str((await ana.threads.create())["thread_id"])
    await ana.runs.wait(thread_id, "lifecycle", input={"client_id": "acme", "metrics": READY_TO_START})
    for uow_id in ON_DEMAND:
        await ana.runs.wait(thread_id, "lifecycle", command={"resume": run_unit(uow_id)})
    resume = {"event": "promote_to_pilot", "metrics": {**SANDBOX_EXIT, **PILOT_ENTRY}}
    promoted = await ana.runs.wait(thread_id, "lifecycle", command={"resume": resume})
    assert promoted["outcome"]["validation"]["passed"], promoted["outcome"]["validation"]["summary"]
    assert (await ana.http.get(f"/journeys/lifecycle/{thread_id}"))["current_stage"] == "pilot"
    history = [event["type"] for event in await ana.http.get(f"/journeys/{thread_id}/history")]
    assert history.count("metric.recorded") == 2  # the start's and the resume's

"""A run cancelled on purpose (``runs.cancel(..., action="interrupt")``, langgraph-sdk over real HTTP) while a
lifecycle's unit of work or a session's action worked: the journey stays where the run stopped, and the next
lifecycle event or session action goes on from there first, as a run without input would (LangGraph runs a
thread's pending tasks before it takes a new ``command.resume``). Memory, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fastapi import FastAPI
from langgraph_sdk.client import LangGraphClient

from agents import AgentRequest
from checkpoints.errors import ConcurrentUpdateError
from graphs.lifecycle import machine
from graphs.lifecycle.catalog import DEFAULT_AGENT_OUTPUTS, READY_TO_START
from tests.server_fixtures import served_app, served_sdk  # noqa: F401  (the fixtures app and sdk)

pytestmark = pytest.mark.slow


class Slow:
    """An agent whose first call takes long (its run is cancelled meanwhile); it counts its calls."""

    def __init__(self, output: dict[str, Any]) -> None:
        self.calls = 0
        self.output = output

    async def __call__(self, request: AgentRequest) -> dict[str, Any]:
        self.calls += 1
        if self.calls == 1:
            await asyncio.sleep(30)
        return self.output


def _event(event: str, **options: Any) -> dict[str, Any]:
    return {"resume": {"event": event, "options": options}}


async def _cancelled_in_unit(app: FastAPI, sdk: LangGraphClient) -> tuple[str, Slow]:
    """A lifecycle journey in sandbox whose run of the unit ``test_dataset_provisioning`` was cancelled while
    its first task's agent worked: its thread id, and the agent."""
    slow = Slow(DEFAULT_AGENT_OUTPUTS["provision_test_dataset"])
    app.state.services.runtime.agents.register("provision_test_dataset", slow, replace=True)
    tid = (await sdk.threads.create())["thread_id"]
    await sdk.runs.wait(tid, "lifecycle", input={"client_id": "client-1", "metrics": READY_TO_START})
    unit = _event("run_unit_of_work", uow_id="test_dataset_provisioning")
    run = await sdk.runs.create(tid, "lifecycle", command=unit)
    await asyncio.wait_for(_started(slow), 10)
    cancelled = await sdk.runs.cancel(tid, run["run_id"], action="interrupt", wait=True)
    assert cancelled["status"] == "interrupted", cancelled
    state = await sdk.threads.get_state(tid)
    assert state["next"], state  # it stands where the run stopped
    assert slow.calls == 1
    return tid, slow


async def test_a_lifecycle_event_after_a_cancelled_run_goes_on_with_the_stopped_unit_first(
    app: tuple[FastAPI, str], sdk: LangGraphClient
) -> None:
    tid, slow = await _cancelled_in_unit(app[0], sdk)
    # The next unit depends on the stopped one: the stopped unit completes first, then this one runs.
    unit = _event("run_unit_of_work", uow_id="search_quality_validation")
    result = await sdk.runs.wait(tid, "lifecycle", command=unit)
    assert "__error__" not in result, result
    assert slow.calls == 2
    units = (await sdk.threads.get_state(tid))["values"]["units"]
    assert units["test_dataset_provisioning"] == "completed", units
    assert units["search_quality_validation"] == "completed", units


async def test_a_lifecycle_cancelled_after_a_cancelled_run_is_cancelled(
    app: tuple[FastAPI, str], sdk: LangGraphClient
) -> None:
    tid, _slow = await _cancelled_in_unit(app[0], sdk)
    result = await sdk.runs.wait(tid, "lifecycle", command=_event("cancel_journey", reason="client left"))
    assert "__error__" not in result, result
    state = await sdk.threads.get_state(tid)
    assert state["values"]["current_stage"] == "cancelled", state["values"]


async def _started(agent: Slow) -> None:
    while not agent.calls:  # noqa: ASYNC110 (the agent runs on the server's loop: no event of this loop tells)
        await asyncio.sleep(0.02)


AREAS = [
    {"area_id": "content", "area_name": "Content", "completion": {"files_uploaded": True}},
    {"area_id": "insights", "area_name": "Insights"},
]


def _slow_area_updates(app: FastAPI, marker: str) -> list[int]:
    """Make the first write of an area update carrying ``marker`` take long (its run is cancelled meanwhile)
    by wrapping the server's event log; the list counts those writes."""
    log = app.state.services.runtime.store.events
    append, writes = log.append, []

    async def slow_append(instance_id: str, events: Any, **kwargs: Any) -> Any:
        if any(e.type == "area.updated" and marker in e.payload.get("updates", {}) for e in events):
            writes.append(1)
            if len(writes) == 1:
                await asyncio.sleep(30)
        return await append(instance_id, events, **kwargs)

    log.append = slow_append
    return writes


@pytest.mark.parametrize("action", ["update", "navigate", "close"])
async def test_a_session_action_after_a_cancelled_run_goes_on_with_the_stopped_action_first(
    app: tuple[FastAPI, str], sdk: LangGraphClient, action: str
) -> None:
    writes = _slow_area_updates(app[0], "files_uploaded")
    tid = (await sdk.threads.create())["thread_id"]
    await sdk.runs.wait(tid, "session", input={"user_id": "ana", "session_config": {"areas": AREAS}})
    update = {"type": "update", "area_id": "content", "updates": {"files_uploaded": True}}
    run = await sdk.runs.create(tid, "session", command={"resume": update})
    while not writes:  # noqa: ASYNC110 (the write waits on the server's loop: no event of this loop tells)
        await asyncio.sleep(0.02)
    assert (await sdk.runs.cancel(tid, run["run_id"], action="interrupt", wait=True))["status"] == "interrupted"
    assert (await sdk.threads.get_state(tid))["next"], "it stands where the cancelled run stopped"
    assert len(writes) == 1  # no read applied the update
    following = {
        "update": {"type": "update", "area_id": "insights", "updates": {"seen": True}},
        "navigate": {"type": "navigate", "area_id": "insights"},
        "close": {"type": "close", "reason": "done"},
    }[action]
    result = await sdk.runs.wait(tid, "session", command={"resume": following})
    assert "__error__" not in result, result
    values = (await sdk.threads.get_state(tid))["values"]
    assert values["areas"]["content"]["complete"] is True, values  # the stopped update was applied first
    assert values["actions_applied"] == 3, values  # the opening, the stopped update and this action, each once
    assert len(writes) == 2
    if action == "close":
        assert values["status"] == "closed", values


async def test_a_lifecycle_rolled_back_after_a_cancelled_run_compensates_the_stopped_unit(
    app: tuple[FastAPI, str], sdk: LangGraphClient
) -> None:
    """A rollback asked for after a unit's run was cancelled stops that unit between its waves (as it would
    stop one running) and compensates what it did; the journey waits in ROLLBACK."""
    tid, slow = await _cancelled_in_unit(app[0], sdk)
    rollback = _event("initiate_rollback", reason="bad data")
    result = await sdk.runs.wait(tid, "lifecycle", command=rollback)
    assert "__error__" not in result, result
    values = (await sdk.threads.get_state(tid))["values"]
    assert values["current_stage"] == "rollback", values
    assert values["units"]["test_dataset_provisioning"] == "rolled_back", values["units"]
    assert slow.calls == 1  # stopped before its next wave: its agent is not called again


async def test_a_lifecycle_whose_event_failed_is_retried_by_a_run_without_input(
    app: tuple[FastAPI, str], sdk: LangGraphClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The move of ``cancel_journey`` failed (its transition could not be written, once). Before, a run without
    input was refused 409 JourneyStarted: lifecycles and sessions had no retry. As for structured journeys, sagas
    and processes, a run without input now runs the failed task again."""
    tid = (await sdk.threads.create())["thread_id"]
    await sdk.runs.wait(tid, "lifecycle", input={"client_id": "client-1", "metrics": READY_TO_START})
    position = machine.next_position
    failures: list[str] = []

    def fails_once(*args: Any, **kwargs: Any) -> dict[str, Any]:
        if not failures:
            failures.append("written")
            raise ConcurrentUpdateError("the journey's row could not be written")
        return position(*args, **kwargs)

    monkeypatch.setattr(machine, "next_position", fails_once)
    with pytest.raises(Exception, match="ConcurrentUpdateError"):  # langgraph-sdk raises the run's error
        await sdk.runs.wait(tid, "lifecycle", command=_event("cancel_journey", reason="client left"))
    retried = await sdk.runs.wait(tid, "lifecycle")
    assert "__error__" not in retried, retried
    state = await sdk.threads.get_state(tid)
    assert state["values"]["current_stage"] == "cancelled", state["values"]
    # The orchestrator's view, asked over HTTP: the server's runtime lives on its own event loop (its pool's waits too).
    assert (await sdk.http.get(f"/journeys/lifecycle/{tid}"))["current_stage"] == "cancelled"


async def test_a_session_whose_action_failed_is_retried_by_a_run_without_input(
    app: tuple[FastAPI, str], sdk: LangGraphClient
) -> None:
    """An area update whose events could not be written (once) leaves the session standing at a failed task.
    Before, a run without input was refused 409 JourneyStarted; now it applies the update, once."""
    log = app[0].state.services.runtime.store.events
    append, tries = log.append, []

    async def fails_once(instance_id: str, events: Any, **kwargs: Any) -> Any:
        if any(e.type == "area.updated" for e in events):
            tries.append(1)
            if len(tries) == 1:
                raise ConcurrentUpdateError("the session's events could not be written")
        return await append(instance_id, events, **kwargs)

    log.append = fails_once
    tid = (await sdk.threads.create())["thread_id"]
    await sdk.runs.wait(tid, "session", input={"user_id": "ana", "session_config": {"areas": AREAS}})
    update = {"type": "update", "area_id": "content", "updates": {"files_uploaded": True}}
    with pytest.raises(Exception, match="ConcurrentUpdateError"):  # langgraph-sdk raises the run's error
        await sdk.runs.wait(tid, "session", command={"resume": update})
    retried = await sdk.runs.wait(tid, "session")
    assert "__error__" not in retried, retried
    values = (await sdk.threads.get_state(tid))["values"]
    assert values["areas"]["content"]["complete"] is True, values
    assert values["actions_applied"] == 2 and len(tries) == 2, values

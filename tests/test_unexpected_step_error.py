"""A step that raises an error none of the runtime's (a raw database error, a bug in a step's code) fails its run as
an agent's failure does: the instance is ``failed``, its ``instance.failed`` event names the error's type, the
caller gets a typed :class:`StepCrashedError` (an HTTP 424, not a 500), and a retry runs the step again.

Before, ``Instances.advance`` recorded only ``JourneyError``s: the raw error escaped with the index left
``in_progress`` while the thread stood failed, and a process's run raised it instead of standing failed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from graphs.errors import StepCrashedError
from graphs.runtime import JourneyRuntime
from graphs.structured.orchestrator import structured_instance_id
from nodes.services import FAILED


class IntegrityError(Exception):
    """What a driver raises for a broken constraint: no error of the runtime's."""


def break_once(rt: JourneyRuntime, step: str) -> list[str]:
    """The first log write of ``step``'s completion raises a raw driver error (inside the step's node)."""
    log = rt.store.events
    append, append_together = log.append, log.append_together
    broken: list[str] = []

    def breaks(instance_id: str, events: Sequence[Any]) -> None:
        if not broken and any(e.step == step and e.type.endswith("completed") for e in events):
            broken.append(instance_id)
            raise IntegrityError("duplicate key value violates unique constraint")

    async def append_or_break(instance_id: str, events: Sequence[Any], **options: Any) -> list[bool]:
        breaks(instance_id, events)
        return await append(instance_id, events, **options)

    async def together_or_break(instance_id: str, event: Any, status: str | None = None) -> bool:
        breaks(instance_id, [event])  # a step's completion goes with the others' at about the same time
        return await append_together(instance_id, event, status)

    log.append = append_or_break  # type: ignore[method-assign]  # a fault injected into this runtime's log
    log.append_together = together_or_break  # type: ignore[method-assign]
    return broken


async def assert_failed_with_type(rt: JourneyRuntime, instance_id: str) -> None:
    instance = await rt.store.index.get_instance(instance_id)
    assert instance is not None and instance.status == "failed", instance
    [failed] = [e for e in await rt.history(instance_id) if e.type == FAILED]
    assert failed.payload["error_type"] == "IntegrityError", failed.payload
    assert "duplicate key" in failed.payload["error"]


async def ok(_request: Any) -> dict[str, Any]:
    return {"done": True}


async def test_a_structured_step_raising_a_raw_error_fails_the_journey_and_retries(store_url: str) -> None:
    spec = {"journey_type": "t", "steps": [{"step_id": "work", "agent": "w", "mode": "auto"}]}
    async with JourneyRuntime.open(store_url) as rt:
        rt.agents.register("w", ok)
        journey_id = (await rt.structured.design_journey("t", spec=spec))["journey_id"]
        break_once(rt, "work")
        with pytest.raises(StepCrashedError) as raised:
            await rt.structured.execute_journey(journey_id, "ana", {})
        assert raised.value.details["error_type"] == "IntegrityError"
        await assert_failed_with_type(rt, structured_instance_id(journey_id, "ana"))
        retried = await rt.structured.retry_journey_step(journey_id, "ana")
        assert retried["status"] == "completed", retried


async def test_a_saga_step_raising_a_raw_error_fails_the_saga_and_retries(store_url: str) -> None:
    async with JourneyRuntime.open(store_url) as rt:
        design = await rt.saga.design_saga_journey("enterprise_migration", {}, {})
        journey_id, first = design["journey_id"], design["steps"][0]["step_id"]
        await rt.saga.execute_saga_journey(journey_id, "ana", {}, saga_id="saga_raw")
        broken = break_once(rt, first)
        with pytest.raises(StepCrashedError):
            await rt.saga.advance_saga_step("saga_raw", journey_id, "ana", {"uploaded": True})
        assert broken == ["saga_raw"]
        await assert_failed_with_type(rt, "saga_raw")
        retried = await rt.saga.retry_saga_step("saga_raw")
        assert retried["status"] == "in_progress" and retried["completed_steps"] == [first], retried


async def test_a_process_node_raising_a_raw_error_stands_failed_and_retries(store_url: str) -> None:
    spec = {
        "name": "one_call",
        "elements": [
            {"type": "start", "id": "start"},
            {"type": "service_task", "id": "call", "agent": "crm.call"},
            {"type": "end", "id": "end"},
        ],
        "flows": ["start -> call", "call -> end"],
    }
    async with JourneyRuntime.open(store_url) as rt:
        rt.agents.register("crm.call", ok)
        await rt.processes.deploy(spec)
        break_once(rt, "call")
        started = await rt.processes.start("one_call", "k-1", instance_id="proc_raw")
        assert started["status"] == "failed", started
        await assert_failed_with_type(rt, "proc_raw")
        # The view says why, as for an agent's failure (it said ``failure: None``: the reason was only in the log).
        for view in (started, await rt.processes.status("proc_raw")):
            assert view["failure"]["element"] == "call" and view["failure"]["error_type"] == "IntegrityError", view
            assert "duplicate key value violates unique constraint" in view["failure"]["error"]
        retried = await rt.processes.retry("proc_raw")
        assert retried["status"] == "completed", retried

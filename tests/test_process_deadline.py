"""A process's whole-run deadline is a fixed moment, as Temporal's workflow execution timeout is: it holds
while the instance stands failed, a retry before it keeps the very same moment armed, and nothing runs
after it (a retry past it is refused with :class:`DeadlineExceededError`). Every test runs on memory,
SQLite and Postgres, on a virtual clock."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from graphs.errors import DeadlineExceededError
from graphs.kernel.instances import DEADLINE_FAILURE
from tests.process_support import T0, Calls, linear, runtime, user_task, virtual_clock

DEADLINE = timedelta(hours=4)


def charged_then_reviewed() -> dict[str, Any]:
    """charge (an agent) → review (a user task), to be done within four hours."""
    return linear(
        "timed",
        {"type": "service_task", "id": "charge", "agent": "charge", "outputs": ["receipt"]},
        user_task("review"),
        deadline={"after": "PT4H"},
    )


async def test_a_process_that_failed_before_its_deadline_expires_at_it_and_is_not_retried(store_url: str) -> None:
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        calls = Calls()
        charge = calls.flaky(rt, "charge", {"receipt": "R-1"})
        await rt.processes.deploy(charged_then_reviewed())
        started = await rt.processes.start("timed", "order-1")
        instance_id = started["instance_id"]
        assert (started["status"], started["failed_element"]) == ("failed", "charge")

        clock.advance(DEADLINE)
        assert (await rt.processes.scheduler.run_due()).fired == 1  # it expires while it stands failed
        expired = await rt.processes.status(instance_id)
        assert expired["status"] == "failed" and expired["waiting"] == []
        assert expired["failure"] == {**DEADLINE_FAILURE, "deadline": (T0 + DEADLINE).isoformat()}  # says why
        events = [e.type for e in await rt.processes.history(instance_id)]
        assert events.count("journey.deadline_passed") == 1, events

        charge["down"] = False  # the agent has recovered, but the deadline has passed
        with pytest.raises(DeadlineExceededError) as refused:
            await rt.processes.retry(instance_id)
        assert refused.value.details["deadline"] == (T0 + DEADLINE).isoformat()
        assert calls.intents() == ["charge"]  # nothing ran after the deadline
        assert (await rt.processes.status(instance_id))["status"] == "failed"
        assert await rt.processes.inbox.list_tasks(assignee="ana") == []
        assert [e.type for e in await rt.processes.history(instance_id)] == events  # the refusal wrote nothing


async def test_a_retry_past_the_deadline_is_refused_even_before_the_scheduler_has_fired_it(store_url: str) -> None:
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        calls = Calls()
        charge = calls.flaky(rt, "charge", {"receipt": "R-1"})
        await rt.processes.deploy(charged_then_reviewed())
        instance_id = (await rt.processes.start("timed", "order-2"))["instance_id"]

        clock.advance(DEADLINE)  # due now, but no scheduler pass has run yet
        charge["down"] = False
        with pytest.raises(DeadlineExceededError):
            await rt.processes.retry(instance_id)
        assert calls.intents() == ["charge"]

        assert (await rt.processes.scheduler.run_due()).fired == 1  # the scheduler catches up and expires it
        events = [e.type for e in await rt.processes.history(instance_id)]
        assert "process.retried" not in events and events.count("journey.deadline_passed") == 1, events


async def test_a_retry_before_the_deadline_keeps_the_same_moment_armed(store_url: str) -> None:
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        calls = Calls()
        charge = calls.flaky(rt, "charge", {"receipt": "R-1"})
        await rt.processes.deploy(charged_then_reviewed())
        instance_id = (await rt.processes.start("timed", "order-3"))["instance_id"]

        clock.advance(timedelta(hours=1))
        charge["down"] = False
        retried = await rt.processes.retry(instance_id)
        assert (retried["status"], [w["element"] for w in retried["waiting"]]) == ("in_progress", ["review"])
        assert calls.intents() == ["charge", "charge"]

        clock.advance(DEADLINE - timedelta(hours=1, seconds=1))  # a second before the start's deadline
        assert (await rt.processes.scheduler.run_due()).fired == 0  # never early
        clock.advance(timedelta(seconds=1))  # four hours from the start, not from the retry
        report = await rt.processes.scheduler.run_due()
        assert (report.fired, report.lateness) == (1, [0.0])
        status = await rt.processes.status(instance_id)
        assert (status["status"], status["waiting"]) == ("failed", [])
        passed, failed = (await rt.processes.history(instance_id))[-2:]
        assert (passed.type, passed.payload["deadline"]) == ("journey.deadline_passed", (T0 + DEADLINE).isoformat())
        assert (failed.type, failed.payload["error_type"]) == ("instance.failed", "DeadlineExceededError")
        assert await rt.processes.inbox.list_tasks(assignee="ana") == []

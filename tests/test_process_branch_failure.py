"""A failed branch of a parallel fork stays failed until the instance is retried: answers that reach the
other branches meanwhile (a user task completed, a message, a timer) are accepted and kept, and nothing
the failed branch did runs again before the retry, which then delivers them. Every test runs on memory,
SQLite and Postgres, on a virtual clock."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import Any

import pytest

from graphs.errors import ProcessStateError
from tests.process_support import Calls, runtime, user_task, virtual_clock


def four_branches() -> dict[str, Any]:
    """A fork into: pack (bob's task) then ship (an agent), approve (ana's task) then file (an agent), paid (a
    message) and a one-hour cooling-off timer; they meet again before the end. Every branch waits first, so
    the others are parked when ship fails."""
    elements = [
        {"type": "start", "id": "start"},
        {"type": "parallel_gateway", "id": "fork"},
        user_task("pack", assignee="bob"),
        {"type": "service_task", "id": "ship", "agent": "ship", "outputs": ["tracking"]},
        user_task("approve"),
        {"type": "service_task", "id": "file", "agent": "file", "outputs": ["filed"]},
        {"type": "message", "id": "paid", "message": "payment.received", "correlation": "invoice_no"},
        {"type": "timer", "id": "cool", "timer": {"duration": "PT1H"}},
        {"type": "parallel_gateway", "id": "join"},
        {"type": "end", "id": "end"},
    ]
    flows = ["start -> fork", "pack -> ship", "ship -> join", "approve -> file", "file -> join", "join -> end"]
    flows += [f"fork -> {first}" for first in ("pack", "approve", "paid", "cool")]
    flows += [f"{last} -> join" for last in ("paid", "cool")]
    return {"name": "order", "version": 1, "elements": elements, "flows": flows}


def split() -> dict[str, Any]:
    """A fork into ana's task (sign) and an exclusive gateway over ``tier``, which fails while ``tier`` is unset
    in the step that arms the task."""
    return {
        "name": "split",
        "variables_schema": {"type": "object", "properties": {"tier": {"enum": ["gold", "silver"]}}},
        "elements": [
            {"type": "start", "id": "start"},
            {"type": "parallel_gateway", "id": "fork"},
            user_task("sign"),
            {"type": "exclusive_gateway", "id": "route"},
            {"type": "service_task", "id": "gold", "agent": "work"},
            {"type": "service_task", "id": "silver", "agent": "work"},
            {"type": "exclusive_gateway", "id": "merge"},
            {"type": "parallel_gateway", "id": "join"},
            {"type": "end", "id": "end"},
        ],
        "flows": [
            "start -> fork",
            "fork -> sign",
            "sign -> join",
            "fork -> route",
            *(
                {"source": "route", "target": tier, "when": {"field": "tier", "op": "==", "value": tier}}
                for tier in ("gold", "silver")
            ),
            "gold -> merge",
            "silver -> merge",
            "merge -> join",
            "join -> end",
        ],
    }


async def test_answers_to_other_branches_wait_for_the_retry_of_a_failed_one(store_url: str) -> None:
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        calls = Calls()
        ship = calls.flaky(rt, "ship", {"tracking": "T-1"})
        calls.register(rt, "file", {"filed": True})
        await rt.processes.deploy(four_branches())
        instance_id = (await rt.processes.start("order", "order-1", {"invoice_no": "INV-1"}))["instance_id"]
        [pack] = await rt.processes.inbox.list_tasks(assignee="bob")
        packed = await rt.processes.inbox.complete(pack["task_id"], user="bob", payload={"boxes": 2})
        assert (packed["status"], packed["failed_element"]) == ("failed", "ship")
        [task] = await rt.processes.inbox.list_tasks(assignee="ana")

        done = await rt.processes.inbox.complete(task["task_id"], user="ana", payload={"approved": True})
        assert (done["status"], done["failed_element"]) == ("failed", "ship")  # it still says what failed
        closed = await rt.processes.inbox.get_task(task["task_id"])
        assert (closed["status"], closed["completed_by"], closed["result"]) == ("completed", "ana", {"approved": True})
        sent = await rt.processes.send_message("payment.received", "INV-1", {"amount": 10})
        assert sent["correlated"] == [instance_id]
        clock.advance(timedelta(hours=1))
        assert (await rt.processes.scheduler.run_due()).fired == 1
        assert (await rt.processes.scheduler.run_due()).redelivered == 0  # kept for the retry, not delivered
        # Held answers are not "undelivered" (what recovery and every scheduler pass go through, 1,000 at most):
        # they would cost each pass a lock and a state read each, and could crowd out answers a crash left.
        assert [w.instance_id for w in await rt.processes.services.waits.undelivered()] == []
        assert Counter(calls.intents()) == {"ship": 1}  # the failed branch did not run again, nor did file
        status = await rt.processes.status(instance_id)
        assert (status["status"], status["failed_element"]) == ("failed", "ship")
        assert "process.retried" not in [e.type for e in await rt.processes.history(instance_id)]

        ship["down"] = False
        retried = await rt.processes.retry(instance_id)
        assert retried["status"] == "completed", retried
        assert retried["variables"]["approved"] is True and retried["variables"]["tracking"] == "T-1"
        assert retried["variables"]["amount"] == 10 and retried["variables"]["filed"] is True
        assert Counter(calls.intents()) == {"ship": 2, "file": 1}
        completed = [e.step for e in await rt.processes.history(instance_id) if e.type == "wait.completed"]
        assert sorted(completed) == ["approve", "cool", "pack", "paid"]


async def test_a_branch_failing_as_its_sibling_starts_is_named_not_the_sibling(store_url: str) -> None:
    """A gateway failed in one branch in the same step as its sibling's user task was being armed: the view
    named the sibling branch (``fork.branch0``, cancelled by the failure) as the failed element, since an error
    read back from a checkpoint is its text, not the exception. Now it names the gateway; and variables set to
    retry it are refused saying why (the branch would not see them), with nothing changed."""
    async with runtime(store_url) as rt:
        calls = Calls()
        calls.register(rt, "work")
        spec = split()
        await rt.processes.deploy(spec)
        view = await rt.processes.start("split", "k-1")
        assert (view["status"], view["failed_element"]) == ("failed", "route")
        status = await rt.processes.status(view["instance_id"])
        assert (status["status"], status["failed_element"]) == ("failed", "route")
        with pytest.raises(ProcessStateError) as caught:
            await rt.processes.set_variables(view["instance_id"], {"tier": "gold"}, retry=True)
        assert "parallel branches" in str(caught.value)
        assert "process.retried" not in [e.type for e in await rt.processes.history(view["instance_id"])]


async def test_a_task_armed_as_its_sibling_branch_failed_is_listed_as_waiting(store_url: str) -> None:
    """The gateway of one branch failed in the step that armed the sibling's user task: the task was open in the
    inbox (and could be completed, its answer held for the retry), yet the status said ``waiting: []``, for a
    failed instance listed no waits, and that branch's interrupt is in its own state only (the thread records the
    branch as cancelled). Now the status lists the task until it is answered."""
    async with runtime(store_url) as rt:
        Calls().register(rt, "work")
        await rt.processes.deploy(split())
        view = await rt.processes.start("split", "k-1")
        instance_id = view["instance_id"]
        [task] = await rt.processes.inbox.list_tasks(instance_id=instance_id)
        for shown in (view, await rt.processes.status(instance_id)):
            assert (shown["status"], shown["failed_element"]) == ("failed", "route")
            assert [(w["element"], w["wait_id"]) for w in shown["waiting"]] == [("sign", task["task_id"])]
        answered = await rt.processes.inbox.complete(task["task_id"], user="ana", payload={})
        assert (answered["status"], answered["failed_element"], answered["waiting"]) == ("failed", "route", [])

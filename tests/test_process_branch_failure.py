"""A failed branch of a parallel fork stays failed until the instance is retried: answers that reach the
other branches meanwhile (a user task completed, a message, a timer) are accepted and kept, and nothing
the failed branch did runs again before the retry, which then delivers them. Every test runs on memory,
SQLite and Postgres, on a virtual clock."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import pytest

from agents import AgentRequest, PermanentAgentError
from graphs.errors import JourneyFinishedError, ProcessStateError
from graphs.kernel.engine import JourneyEngine
from tests.process_support import Calls, linear, runtime, user_task, virtual_clock


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


async def ship_down(_request: AgentRequest) -> dict[str, Any]:
    """The carrier is down: the agent fails for good, once its sibling branch's task has opened."""
    await asyncio.sleep(0.5)
    raise PermanentAgentError("the carrier is down", intent="ship")


def dispatch() -> dict[str, Any]:
    """A fork into ana's task (sign) and a shipment (``ship``'s agent)."""
    return {
        "name": "dispatch",
        "elements": [
            {"type": "start", "id": "start"},
            {"type": "parallel_gateway", "id": "fork"},
            user_task("sign"),
            {"type": "service_task", "id": "ship", "agent": "ship"},
            {"type": "parallel_gateway", "id": "join"},
            {"type": "end", "id": "end"},
        ],
        "flows": ["start -> fork", "fork -> sign", "fork -> ship", "sign -> join", "ship -> join", "join -> end"],
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


async def test_the_open_task_of_a_branch_beside_a_failed_one_is_listed_as_waiting(store_url: str) -> None:
    """One branch's agent failed after its sibling's user task had opened: the task was open in the inbox (and
    could be completed, its answer held for the retry), yet the status said ``waiting: []``, as a failed instance
    listed no waits (and a branch its sibling's failure cancelled has no interrupt in the thread to list). Now
    the status lists the instance's open waits, from their rows, until they are answered."""

    async with runtime(store_url) as rt:
        rt.agents.register("ship", ship_down)
        await rt.processes.deploy(dispatch())
        view = await rt.processes.start("dispatch", "k-1")
        instance_id = view["instance_id"]
        [task] = await rt.processes.inbox.list_tasks(instance_id=instance_id)
        for shown in (view, await rt.processes.status(instance_id)):
            assert (shown["status"], shown["failed_element"]) == ("failed", "ship")
            assert shown["waiting"] == [
                {
                    "wait_id": task["task_id"],
                    "element": "sign",
                    "kind": "user_task",
                    "title": "sign",
                    "assignee": "ana",
                    "candidate_groups": [],
                    "response_schema": None,
                }
            ]
        answered = await rt.processes.inbox.complete(task["task_id"], user="ana", payload={})
        assert (answered["status"], answered["failed_element"], answered["waiting"]) == ("failed", "ship", [])


async def test_a_task_armed_as_its_sibling_branch_failed_is_listed_while_open(store_url: str) -> None:
    """A gateway failed in the step that armed its sibling's task: whether the task opened first or not, the
    status lists what the inbox holds open for the instance."""
    async with runtime(store_url) as rt:
        Calls().register(rt, "work")
        await rt.processes.deploy(split())
        view = await rt.processes.start("split", "k-1")
        tasks = await rt.processes.inbox.list_tasks(instance_id=view["instance_id"])
        status = await rt.processes.status(view["instance_id"])
        assert (status["status"], status["failed_element"]) == ("failed", "route")
        assert [w["wait_id"] for w in status["waiting"]] == [t["task_id"] for t in tasks]


async def test_a_terminated_process_is_not_run_again_by_a_retry(store_url: str) -> None:
    """Terminated while it stood failed, the instance was run on by a retry: ``process.retried`` was logged, its
    gateway ran again, and its status went from ``terminated`` back to ``failed`` (its view still listed the
    cancelled task as waiting). Now the retry is refused (JourneyFinishedError, 409) and nothing is logged."""
    async with runtime(store_url) as rt:
        rt.agents.register("ship", ship_down)
        await rt.processes.deploy(dispatch())
        instance_id = (await rt.processes.start("dispatch", "k-1"))["instance_id"]
        terminated = await rt.terminate(instance_id, "given up")
        assert (terminated["status"], terminated["waiting"]) == ("terminated", [])
        history = [e.type for e in await rt.processes.history(instance_id)]
        for attempt in (
            rt.processes.retry(instance_id),
            rt.processes.set_variables(instance_id, {"tier": "gold"}, retry=True),
        ):
            with pytest.raises(JourneyFinishedError):
                await attempt
        assert [e.type for e in await rt.processes.history(instance_id)] == history
        assert (await rt.processes.status(instance_id))["status"] == "terminated"


async def test_a_failed_process_is_cancelled_giving_its_retry_up(store_url: str) -> None:
    """A failed instance (which a retry would run on, its tasks open in the inbox) could not be cancelled: it
    "has already finished (failed)". Now, as Camunda cancels an instance with an incident, it is cancelled with
    its tasks, and then nothing runs it again."""
    async with runtime(store_url) as rt:
        rt.agents.register("ship", ship_down)
        await rt.processes.deploy(dispatch())
        instance_id = (await rt.processes.start("dispatch", "k-1"))["instance_id"]
        cancelled = await rt.processes.cancel(instance_id, "wrong customer")
        assert (cancelled["status"], cancelled["waiting"]) == ("cancelled", [])
        [task] = await rt.processes.inbox.list_tasks(instance_id=instance_id, status=None)
        assert task["status"] == "cancelled"
        with pytest.raises(JourneyFinishedError) as refused:  # as every pattern's retry of an ended instance
            await rt.processes.retry(instance_id)
        assert "has ended (cancelled)" in str(refused.value)
        with pytest.raises(ProcessStateError):
            await rt.processes.cancel(instance_id)
        assert (await rt.processes.status(instance_id))["status"] == "cancelled"


Racing = dict[str, Callable[[], Awaitable[Any]]]


@pytest.fixture
def racing(monkeypatch: pytest.MonkeyPatch) -> Racing:
    """Calls by another client, by instance id: each takes the instance's lock as soon as the next holder
    releases it."""
    exclusive = JourneyEngine.exclusive
    others: Racing = {}

    @asynccontextmanager
    async def then_the_other_client(self: JourneyEngine, instance_id: str, **options: Any) -> AsyncIterator[None]:
        async with exclusive(self, instance_id, **options):
            yield
        if (other := others.pop(instance_id, None)) is not None:
            await other()

    monkeypatch.setattr(JourneyEngine, "exclusive", then_the_other_client)
    return others


async def test_a_retry_answers_the_state_it_left_not_a_racing_cancel(store_url: str, racing: Racing) -> None:
    """A retry's answer was read after it released the instance's lock: a cancel by another client that took
    the lock in between made the retry answer ``cancelled`` (the other call's outcome, not its own). The view
    is now built under the lock, so each call answers the state it left."""
    async with runtime(store_url) as rt:
        ship = Calls().flaky(rt, "ship", {"tracking": "T-1"})
        await rt.processes.deploy(
            linear("post", {"type": "service_task", "id": "ship", "agent": "ship"}, user_task("sign"))
        )
        instance_id = (await rt.processes.start("post", "k-1"))["instance_id"]
        ship["down"] = False
        racing[instance_id] = lambda: rt.processes.cancel(instance_id, "the other client")
        retried = await rt.processes.retry(instance_id, {"tier": "gold"})
        assert (retried["status"], retried["variables"]["tier"]) == ("in_progress", "gold"), retried
        assert [w["element"] for w in retried["waiting"]] == ["sign"]
        assert (await rt.processes.status(instance_id))["status"] == "cancelled"  # the other call came after


async def test_a_task_completion_answers_the_state_it_left_not_a_racing_cancel(store_url: str, racing: Racing) -> None:
    """As a retry's: a completed task's answer showed a cancel that another client made right after it."""
    async with runtime(store_url) as rt:
        await rt.processes.deploy(linear("two_signs", user_task("first"), user_task("second")))
        instance_id = (await rt.processes.start("two_signs", "k-1"))["instance_id"]
        [task] = await rt.processes.inbox.list_tasks(instance_id=instance_id)
        racing[instance_id] = lambda: rt.processes.cancel(instance_id, "the other client")
        done = await rt.processes.inbox.complete(task["task_id"], user="ana", payload={})
        assert (done["status"], [w["element"] for w in done["waiting"]]) == ("in_progress", ["second"]), done
        assert (await rt.processes.status(instance_id))["status"] == "cancelled"  # the other call came after

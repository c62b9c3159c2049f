"""Races where two answers, or an answer and a change of the instance, meet on one process instance: each
interleaving is forced, and what the user sees afterwards (status, history, the message buffer) is checked.
Every test runs on memory, SQLite and Postgres, on a virtual clock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from graphs.errors import TaskForbiddenError
from tests.process_support import Calls, linear, payment_spec, runtime, user_task, virtual_clock, waiting_elements


async def test_a_message_sent_while_its_wait_is_armed_is_taken_by_that_wait(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sender found no subscription, then the instance armed its wait (and found the buffer empty), then
    the sender buffered the message. Before, the message sat in the buffer until it expired and the instance
    waited for ever, though the message had been accepted ("buffered") while the wait stood."""
    async with runtime(store_url) as rt:
        await rt.processes.deploy(payment_spec())
        messages = rt.processes.services.messages
        real_waiting = messages.waiting
        started: list[dict[str, Any]] = []

        async def waiting(name: str, key: str, tenant: str) -> list[Any]:
            found = await real_waiting(name, key, tenant)
            if not started:  # the wait is armed between the sender's look-up and its buffering
                started.append(await rt.processes.start("invoice", "cust-1", {"invoice_no": "INV-1"}))
                assert waiting_elements(started[0]) == ["paid"]
            return found

        monkeypatch.setattr(messages, "waiting", waiting)
        sent = await rt.processes.send_message("payment.received", "INV-1", {"amount": 7})
        monkeypatch.undo()

        view = await rt.processes.status(started[0]["instance_id"])
        assert (view["status"], view["variables"]["amount"]) == ("completed", 7)
        assert sent["correlated"] == [started[0]["instance_id"]] and sent["buffered"] is None
        [message] = await messages.find(name="payment.received")
        assert message.status == "consumed"
        completed = [e for e in await rt.processes.history(view["instance_id"]) if e.type == "wait.completed"]
        assert len(completed) == 1


def _before_first_lock(
    rt: Any, monkeypatch: pytest.MonkeyPatch, instance_id: str, first: Callable[[], Awaitable[Any]]
) -> list[Any]:
    """Make the next call that takes ``instance_id``'s lock meet ``first`` (another caller's operation on the
    instance, which takes and releases the lock itself) just before its own turn at the lock: as when a
    cancel in another process wins the lock while an answer's delivery is on its way to it. Returns what
    ``first`` answered, once it has run."""
    engine = rt.processes.engine
    real = engine.exclusive
    answered: list[Any] = []

    @asynccontextmanager
    async def exclusive(locked_id: str, **options: Any) -> AsyncIterator[None]:
        if locked_id == instance_id and not answered:
            answered.append(None)  # ``first``'s own calls go straight through
            answered[0] = await first()
        async with real(locked_id, **options):
            yield

    monkeypatch.setattr(engine, "exclusive", exclusive)
    return answered


def approval_spec(**extra: Any) -> dict[str, Any]:
    """approve (a user task) → activate (an agent) → end."""
    return linear(
        "approval", user_task("approve"), {"type": "service_task", "id": "activate", "agent": "activate"}, **extra
    )


def payment_then_activate() -> dict[str, Any]:
    """paid (a message) → activate (an agent) → end."""
    return linear(
        "paid_activation",
        {"type": "message", "id": "paid", "message": "payment.received", "correlation": "invoice_no"},
        {"type": "service_task", "id": "activate", "agent": "activate"},
    )


@pytest.mark.parametrize(
    ("answer", "ending"),
    [("task", "cancel"), ("message", "cancel"), ("task", "deadline")],
    ids=["task-then-cancel", "message-then-cancel", "task-then-deadline"],
)
async def test_an_answer_accepted_just_before_its_instance_ends_never_runs_the_ended_instance_on(
    store_url: str, monkeypatch: pytest.MonkeyPatch, answer: str, ending: str
) -> None:
    """The task was completed (or the message taken) and, before its delivery took the instance's lock, the
    instance was cancelled (or its deadline passed). Before, the delivery resumed the ended thread: the next
    step's agent ran (an activation after a cancel) and the thread completed while the instance said
    cancelled (or failed)."""
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        calls = Calls()
        calls.register(rt, "activate")
        if answer == "task":
            await rt.processes.deploy(approval_spec(deadline={"after": "PT4H"}))
            view = await rt.processes.start("approval", "cust-1")
        else:
            await rt.processes.deploy(payment_then_activate())
            view = await rt.processes.start("paid_activation", "cust-1", {"invoice_no": "INV-1"})
        instance_id = view["instance_id"]

        async def end() -> str:
            if ending == "cancel":
                return str((await rt.processes.cancel(instance_id, reason="customer left"))["status"])
            clock.advance(timedelta(hours=5))
            await rt.processes.scheduler.run_due()  # the deadline fires (and the pass redelivers what is due)
            return (await rt.store.index.get_instance(instance_id)).status  # type: ignore[union-attr]

        ended = _before_first_lock(rt, monkeypatch, instance_id, end)
        if answer == "task":
            [task] = await rt.processes.inbox.list_tasks(assignee="ana")
            await rt.processes.inbox.complete(task["task_id"], user="ana", payload={})
        else:
            await rt.processes.send_message("payment.received", "INV-1", {"amount": 1})
        monkeypatch.undo()
        expected = "cancelled" if ending == "cancel" else "failed"
        assert ended == [expected]

        assert calls.intents() == []
        final = await rt.processes.status(instance_id)
        assert (final["status"], final["waiting"]) == (expected, [])
        history = [e.type for e in await rt.processes.history(instance_id)]
        assert "process.completed" not in history and "task.completed" not in history
        # Nothing is left to deliver later either (the scheduler's pass, recovery).
        assert await rt.processes.services.waits.undelivered() == []
        await rt.recover()
        assert calls.intents() == [] and (await rt.processes.status(instance_id))["status"] == expected


def limited_approval() -> dict[str, Any]:
    """approve (a user task) → activate → end, one instance per tenant at a time (the rest queue)."""
    return approval_spec(concurrency={"key": "$.tenant", "limit": 1})


@pytest.mark.parametrize("when", ["while-queued", "while-dispatched"])
async def test_a_queued_instance_cancelled_never_starts_when_its_slot_frees(
    store_url: str, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    """An instance queued behind its process's concurrency limit is cancelled (before the dispatcher looks at
    the queue, or after it has read it). Before, once the slot freed, the dispatcher started it anyway: its
    first run opened a task in the inbox for a cancelled instance, and completing that task ran it on."""
    async with runtime(store_url) as rt:
        calls = Calls()
        calls.register(rt, "activate")
        await rt.processes.deploy(limited_approval())
        first = await rt.processes.start("approval", "b-1", {"tenant": "acme"})
        queued = await rt.processes.start("approval", "b-2", {"tenant": "acme"})
        assert queued["status"] == "queued"
        queued_id = queued["instance_id"]

        async def cancel() -> None:
            assert (await rt.processes.cancel(queued_id, reason="no longer needed"))["status"] == "cancelled"

        if when == "while-queued":
            await cancel()
        else:  # the dispatcher has read the queue when the cancel commits
            flow = rt.instances.flow
            real_queued = flow.queued

            async def queued_then_cancelled() -> list[Any]:
                found = await real_queued()
                if any(q.instance_id == queued_id for q in found):
                    monkeypatch.setattr(flow, "queued", real_queued)
                    await cancel()
                return found

            monkeypatch.setattr(flow, "queued", queued_then_cancelled)

        [task] = await rt.processes.inbox.list_tasks(assignee="ana")
        assert task["instance_id"] == first["instance_id"]
        await rt.processes.inbox.complete(task["task_id"], user="ana", payload={})
        await rt.processes.scheduler.run_due()  # the slot is free: the queue is dispatched
        monkeypatch.undo()

        assert (await rt.processes.status(queued_id))["status"] == "cancelled"
        assert await rt.processes.inbox.list_tasks(instance_id=queued_id) == []
        history = [e.type for e in await rt.processes.history(queued_id)]
        assert "task.created" not in history and history[-1] in ("process.cancelled", "journey.dequeued")
        # The next start of the tenant takes the slot and runs.
        after = await rt.processes.start("approval", "b-3", {"tenant": "acme"})
        assert waiting_elements(after) == ["approve"]


async def test_a_completion_that_loses_its_task_to_another_users_claim_says_so(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ana, offered the task through her group, completes it while Bob claims it. Before, her completion
    was refused with TaskClosedError ("task … was open meanwhile"), a conflict about a task that is open;
    it is TaskForbiddenError, as when she completes a task Bob had already claimed, and nothing changes."""
    async with runtime(store_url) as rt:
        spec = linear("review", {"type": "user_task", "id": "review", "title": "Review", "candidate_groups": ["ops"]})
        await rt.processes.deploy(spec)
        view = await rt.processes.start("review", "doc-1")
        [task] = await rt.processes.inbox.list_tasks(group="ops")
        waits = rt.processes.services.waits
        real_resolve = waits.resolve

        async def resolve_after_bobs_claim(*args: Any, **kwargs: Any) -> bool:
            monkeypatch.setattr(waits, "resolve", real_resolve)
            await rt.processes.inbox.claim(task["task_id"], "bob", groups=["ops"])
            return await real_resolve(*args, **kwargs)

        monkeypatch.setattr(waits, "resolve", resolve_after_bobs_claim)
        with pytest.raises(TaskForbiddenError) as refused:
            await rt.processes.inbox.complete(task["task_id"], user="ana", groups=["ops"], payload={})
        assert "claimed by 'bob'" in str(refused.value)
        now = await rt.processes.inbox.get_task(task["task_id"])
        assert (now["status"], now["claimed_by"]) == ("open", "bob")
        done = await rt.processes.inbox.complete(task["task_id"], user="bob", payload={})
        assert done["instance_id"] == view["instance_id"] and done["status"] == "completed"


async def test_the_timer_loop_survives_a_database_error_and_fires_at_its_next_poll(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pass of the background scheduler meets a database error (a deadlock PostgreSQL broke, a dropped
    connection: SQLAlchemy's errors, which are not OSError). Before, the loop's task died with it, silently:
    no timer of that process (no SLA, no boundary timer, no cron) fired again until a restart. Now the pass
    is logged as failed and the next poll fires what is due."""
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        await rt.processes.deploy(linear("trial", {"type": "timer", "id": "wait", "timer": {"duration": "PT1M"}}))
        view = await rt.processes.start("trial", "cust-1")
        clock.advance(timedelta(minutes=1))
        timers = rt.processes.services.timers
        real_claim = timers.claim_due
        passes: list[str] = []

        async def claim_due(*args: Any, **kwargs: Any) -> list[Any]:
            if not passes:
                passes.append("broken")
                raise OperationalError("UPDATE process_timers ...", {}, RuntimeError("deadlock detected"))
            passes.append("ok")
            return await real_claim(*args, **kwargs)

        waits = rt.processes.services.waits
        real_finish = waits.finish
        resumed = asyncio.Event()

        async def finish(wait_ids: Any) -> None:  # the pass marks the waits it resumed once their runs are written
            await real_finish(wait_ids)
            if wait_ids:
                resumed.set()

        monkeypatch.setattr(timers, "claim_due", claim_due)
        monkeypatch.setattr(waits, "finish", finish)
        scheduler = rt.processes.scheduler
        scheduler.poll_interval = 0.05
        async with scheduler.running():
            await asyncio.wait_for(resumed.wait(), timeout=10)
        monkeypatch.undo()
        assert passes[0] == "broken"
        assert (await rt.processes.status(view["instance_id"]))["status"] == "completed"

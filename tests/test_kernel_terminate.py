"""``Instances.terminate``: an instance ended for good where it stands, on memory, SQLite and PostgreSQL.

Nothing of a terminated instance runs or waits on: its inbox tasks, timers and waits are cancelled in the
transaction that logs ``journey.terminated``, so a task answered later is refused and a timer falling due
later fires nothing (the server terminates a journey whose thread is deleted)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from checkpoints.events import NewEvent
from checkpoints.schema.tables import process_timers
from graphs.errors import ProcessStateError, TaskClosedError
from tests.process_support import boundary_spec, linear, runtime, virtual_clock

BOUNDED = boundary_spec("bounded")


async def test_a_waiting_instance_is_terminated_and_nothing_of_it_runs_after(store_url: str) -> None:
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        await rt.processes.deploy(BOUNDED)
        instance_id = (await rt.processes.start("bounded", "contract-1"))["instance_id"]
        [task] = await rt.processes.inbox.list_tasks(assignee="ana")
        note = NewEvent("note", {"why": "test"}, None, "note")

        assert await rt.instances.terminate(instance_id, "given up", then=[note]) is True

        assert (await rt.store.index.get_instance(instance_id)).status == "terminated"  # type: ignore[union-attr]
        types = [e.type for e in await rt.store.events.list(instance_id)]
        assert types[-2:] == ["journey.terminated", "note"]
        assert await rt.processes.inbox.list_tasks(assignee="ana") == []
        with pytest.raises(TaskClosedError):
            await rt.processes.inbox.complete(task["task_id"], user="ana", payload={})
        clock.advance(timedelta(days=3))
        assert (await rt.processes.scheduler.run_due()).fired == 0
        async with rt.store.engine.connect() as conn:
            timers = (await conn.execute(select(process_timers.c.status))).scalars().all()
        assert set(timers) == {"cancelled"}
        with pytest.raises(ProcessStateError, match="already finished"):
            await rt.processes.cancel(instance_id)
        # Again: nothing more is terminated, and the events given are logged once.
        assert await rt.instances.terminate(instance_id, "given up", then=[note]) is False
        assert [e.type for e in await rt.store.events.list(instance_id)] == types


async def test_an_ended_instance_is_not_terminated_and_an_unknown_one_is_nothing(store_url: str) -> None:
    async with runtime(store_url) as rt:
        await rt.processes.deploy(linear("straight"))
        instance_id = (await rt.processes.start("straight", "k-1"))["instance_id"]
        assert (await rt.processes.status(instance_id))["status"] == "completed"
        note = NewEvent("note", {}, None, "note")

        assert await rt.instances.terminate(instance_id, "late", then=[note]) is False

        assert (await rt.store.index.get_instance(instance_id)).status == "completed"  # type: ignore[union-attr]
        assert [e.type for e in await rt.store.events.list(instance_id)][-1] == "note"
        assert await rt.instances.terminate("no-such-instance", "late") is False

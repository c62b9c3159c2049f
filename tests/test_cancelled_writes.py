"""A writer cancelled mid-statement ends its transaction: the next writer of the store is not held up.

LangGraph cancels a step's other tasks when one fails, wherever they stand: a branch arming a user task was
cancelled inside its append's ``INSERT ... RETURNING`` as its sibling failed. On SQLite (``memory://`` too) the
cancelled connection was closed with the statement still active, which SQLite keeps open with the write lock
until the statement is collected: the failure's own event then waited out the busy timeout (30 s, three times)
and the start failed with "database is locked". Every test runs on memory, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import event

from checkpoints.events import NewEvent
from graphs.errors import JourneyFinishedError
from tests.process_support import Calls, runtime
from tests.test_process_branch_failure import split

# Well under the busy timeout: a write held up by a lock a cancelled writer kept fails here, not 30 s later.
PROMPT = 5.0


async def test_a_writer_cancelled_inside_its_insert_leaves_the_store_writable(store_url: str) -> None:
    async with runtime(store_url) as rt:
        events = rt.store.events
        armed = {"cancel": True}

        def cancel_as_it_executes(cursor: Any, statement: str, parameters: Any, _context: Any) -> bool:
            # The caller is cancelled as its INSERT goes to the driver: the statement runs, its rows unread.
            if armed["cancel"] and statement.lstrip().upper().startswith("INSERT INTO JOURNEY_EVENTS"):
                armed["cancel"] = False
                task = asyncio.current_task()
                assert task is not None
                task.cancel()
            cursor.execute(statement, parameters)
            return True

        event.listen(events.engine.sync_engine, "do_execute", cancel_as_it_executes)
        try:
            two = [NewEvent("a", {}, None, "cut:a"), NewEvent("b", {}, None, "cut:b")]  # one transaction of the engine
            with pytest.raises(asyncio.CancelledError) as cut:
                await asyncio.create_task(events.append("cut", two))
        finally:
            event.remove(events.engine.sync_engine, "do_execute", cancel_as_it_executes)
        assert not armed["cancel"]

        await asyncio.wait_for(events.append("next", [NewEvent("one", {}, None, "next:one")]), PROMPT)
        both = [NewEvent("x", {}, None, "both:x"), NewEvent("y", {}, None, "both:y")]
        await asyncio.wait_for(events.append("both", both), PROMPT)
        assert [e.type for e in await events.list("cut")] == []  # rolled back whole
        del cut  # kept until now, as LangGraph keeps a cancelled task's error (and the frames it holds) a while
        assert [e.type for e in await events.list("both")] == ["x", "y"]


async def test_a_terminated_process_whose_branch_failed_as_its_sibling_armed_a_task_is_not_retried(
    store_url: str,
) -> None:
    """The gateway fails in the step that arms its sibling's task (``split``), which LangGraph cancels: the start
    answered at once (on ``memory://`` it hung 91 s in about one fresh process of two, then failed with "database
    is locked"), and once terminated the instance is not run again by a retry."""
    async with runtime(store_url) as rt:
        Calls().register(rt, "work")
        await rt.processes.deploy(split())
        started = await asyncio.wait_for(rt.processes.start("split", "k-1"), 4 * PROMPT)
        instance_id = started["instance_id"]
        assert (await rt.processes.status(instance_id))["status"] == "failed"
        terminated = await rt.terminate(instance_id, "given up")
        assert (terminated["status"], terminated["waiting"]) == ("terminated", [])
        with pytest.raises(JourneyFinishedError):
            await rt.processes.retry(instance_id)
        assert (await rt.processes.status(instance_id))["status"] == "terminated"

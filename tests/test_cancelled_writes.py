"""A writer cancelled mid-statement ends its transaction: the next writer of the store is not held up.

LangGraph cancels a step's other tasks when one fails, wherever they stand: a branch arming a user task was
cancelled inside its append's ``INSERT ... RETURNING`` as its sibling failed. On SQLite (``memory://`` too) the
cancelled connection was closed with the statement still active, which SQLite keeps open with the write lock
until the statement is collected: the failure's own event then waited out the busy timeout (30 s, three times)
and the start failed with "database is locked". Every test runs on memory, SQLite and PostgreSQL but the
last, which is SQLite's own."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from typing import Any

import aiosqlite
import pytest
from sqlalchemy import event

from checkpoints.database import connect_sqlite
from checkpoints.events import NewEvent
from graphs.errors import JourneyFinishedError
from graphs.runtime import JourneyRuntime
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


async def test_a_checkpoint_write_cancelled_before_its_commit_leaves_the_store_writable(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The official SQLite saver writes a task's writes, then commits, on its one connection: cancelled between
    the two (a step's sibling failed, a run was cancelled), it left that connection in its transaction, and the
    next write of the file on another connection waited out the busy timeout and failed. Now the write ends
    whole (here: it is kept), and the store's other writers go on at once."""
    async with runtime(store_url) as rt:
        saver, events = rt.store.saver, rt.store.events
        config = {"configurable": {"thread_id": "t-1", "checkpoint_ns": "", "checkpoint_id": "c-1"}}
        writer: list[asyncio.Task[Any]] = []
        if store_url.startswith(("memory", "sqlite")):
            original = aiosqlite.Cursor.executemany

            async def cancelled_as_it_writes(cursor: aiosqlite.Cursor, *args: Any) -> aiosqlite.Cursor:
                writer[0].cancel()  # the caller is cancelled as its statement goes to the database
                return await original(cursor, *args)

            monkeypatch.setattr(aiosqlite.Cursor, "executemany", cancelled_as_it_writes)
        writer.append(asyncio.create_task(saver.aput_writes(config, [("channel", "value")], "task-1")))  # type: ignore[arg-type]
        with contextlib.suppress(asyncio.CancelledError):
            await writer[0]
        monkeypatch.undo()
        both = [NewEvent("x", {}, None, "both:x"), NewEvent("y", {}, None, "both:y")]  # on the engine's connection
        await asyncio.wait_for(events.append("both", both), PROMPT)
        assert [e.type for e in await events.list("both")] == ["x", "y"]


async def test_a_sqlite_connection_whose_opener_is_cancelled_is_closed(tmp_path: Any) -> None:
    """aiosqlite opens the file in its own thread whatever its caller does: an opener cancelled meanwhile (a
    request cut off as the engine reconnected, a server stopped as it started) dropped the opened connection
    unclosed, and Python 3.13's ResourceWarning surfaced in whatever test ran when the garbage collector found
    it. Every connection of ours to a SQLite file is opened by ``connect_sqlite``, which closes such a one. (The
    file's own: no other backend opens connections in a thread of their own.)"""
    opened: list[sqlite3.Connection] = []
    closed: list[sqlite3.Connection] = []
    all_closed = threading.Event()  # set in aiosqlite's threads

    class Recorded(sqlite3.Connection):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            opened.append(self)

        def close(self) -> None:
            closed.append(self)
            super().close()
            if len(closed) == 5:
                all_closed.set()

    for _ in range(5):
        opener = asyncio.ensure_future(connect_sqlite(str(tmp_path / "file.db"), factory=Recorded))
        await asyncio.sleep(0)  # its thread is opening the file
        opener.cancel()
        with pytest.raises(asyncio.CancelledError):
            await opener
    assert await asyncio.to_thread(all_closed.wait, PROMPT), f"{len(opened) - len(closed)} of 5 left open"
    assert len(opened) == 5 and set(map(id, closed)) == set(map(id, opened))


async def test_closing_a_runtime_waits_for_a_write_behind_its_cancelled_run_left_going_on(store_url: str) -> None:
    """A run writing its steps' completions behind it (``EventLog.write_behind``) settles them on its way out, but a
    cancel landing there (a second ``runs.cancel``, a shutdown) left the write going on in its own task: closing the
    runtime then (a notebook's cell, a test's end) closed the store under it, and it wrote to a closed store, or from
    aiosqlite's thread into a closed event loop (CI's "Event loop is closed"). The close now waits for it."""
    gate, writing, landed = asyncio.Event(), asyncio.Event(), asyncio.Event()
    async with JourneyRuntime.open(store_url) as rt:
        events = rt.store.events

        async def completion() -> None:
            writing.set()
            await gate.wait()
            await events.append("behind", [NewEvent("step.completed", {}, "ship", "behind:ship")])
            landed.set()

        async def run() -> None:
            async with events.writing_behind("behind"):
                await events.write_behind("behind", completion)

        cut = asyncio.create_task(run())
        await writing.wait()  # the run is settling its write on its way out
        cut.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cut
        asyncio.get_running_loop().call_soon(gate.set)  # the write goes on once the close has begun
    assert landed.is_set()  # landed before the store closed

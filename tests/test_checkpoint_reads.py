"""Runs that read their threads' latest checkpoints at about the same time (a wave of fired timers' continuations)
read them together on PostgreSQL: one statement for the wave, not one per thread. Each run still gets its own
thread's checkpoint, read after it asked; a thread with none gets none. And the saver our wrappers of its
writes stand for is given what LangGraph gives the saver itself (the writing task's path)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langgraph.pregel._checkpoint import put_writes_accepts_task_path

from graphs.runtime import JourneyRuntime
from tests.process_support import linear, napping, runtime, statements_sent, virtual_clock

NAP = linear("nap_together", {"type": "timer", "id": "nap", "timer": {"duration": "PT1H"}})
INSTANCES = 20  # more than a wave held before (16), within one now (RESUME_CONCURRENCY)


async def test_continuations_at_once_each_resume_their_own_thread_read_together(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        ids = await napping(rt, clock, "nap_together", INSTANCES)
        with statements_sent(monkeypatch, str(getattr(rt.store.saver, "SELECT_SQL", ""))) as sent:
            report = await rt.processes.scheduler.run_due()
        assert (report.fired, report.resumed, report.failed) == (INSTANCES, INSTANCES, 0)

        # Each ran on from its own checkpoint: its end recorded its own variables.
        for n, instance_id in enumerate(ids):
            status = await rt.processes.status(instance_id)
            assert (status["status"], status["variables"]["n"]) == ("completed", n)
            [ended] = [e for e in await rt.processes.history(instance_id) if e.type == "process.completed"]
            assert ended.payload["variables"]["n"] == n
        if store_url.startswith("postgresql"):
            # One wave of continuations (RESUME_CONCURRENCY at a time): its threads' checkpoints in a statement or
            # two (the first thread to ask may go alone), not one per thread, nor two or three per 16 at a time.
            reads = [params for _cursor, params in sent]
            assert 1 <= len(reads) <= 2
            assert sorted(t for (threads,) in reads for t in threads) == sorted(ids)


async def test_reads_asked_at_once_answer_each_its_own_thread_and_none_for_a_thread_without_one(
    store_url: str,
) -> None:
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        await rt.processes.deploy(NAP)
        ids = [(await rt.processes.start("nap_together", f"cust-{n}", {"n": n}))["instance_id"] for n in range(3)]
        saver = rt.store.saver
        alone = [await saver.aget_tuple({"configurable": {"thread_id": thread}}) for thread in [*ids, "no-such"]]
        together = await asyncio.gather(
            *(saver.aget_tuple({"configurable": {"thread_id": thread}}) for thread in [*ids, "no-such", ids[0]])
        )
        assert alone[-1] is None and together[3] is None
        for read_alone, read_together in zip(alone[:3] + alone[:1], together[:3] + together[4:], strict=True):
            assert read_alone is not None and read_together is not None
            assert read_together.config == read_alone.config
            assert read_together.checkpoint == read_alone.checkpoint
            assert read_together.pending_writes == read_alone.pending_writes
            assert read_together.parent_config == read_alone.parent_config


async def stored_task_paths(rt: JourneyRuntime, thread_id: str) -> list[str]:
    """The task paths of the pending writes stored for ``thread_id``, in the saver's own table."""
    saver: Any = rt.store.saver
    if rt.store.url.kind == "postgres":
        async with saver.conn.connection() as conn:
            found = await conn.execute("SELECT task_path FROM checkpoint_writes WHERE thread_id = %s", (thread_id,))
            return [row["task_path"] for row in await found.fetchall()]
    async with saver.conn.execute("SELECT task_path FROM writes WHERE thread_id = ?", (thread_id,)) as found:
        return [row[0] for row in await found.fetchall()]


async def test_the_savers_writes_are_given_the_writing_tasks_path_as_the_savers_own_are(store_url: str) -> None:
    """LangGraph passes a task's path to a saver's ``aput_writes`` only if its signature names it; our wrappers of
    the writes (fenced on PostgreSQL, whole on SQLite) hid it, so every pending write was stored without its path
    (which orders the writes of a superstep's tasks when they are read back)."""
    async with runtime(store_url, virtual_clock()) as rt:
        assert put_writes_accepts_task_path(rt.store.saver.aput_writes)
        await rt.processes.deploy(NAP)
        instance_id = (await rt.processes.start("nap_together", "cust-1"))["instance_id"]
        paths = await stored_task_paths(rt, instance_id)
        assert paths and all(paths), paths  # the parked task's interrupt, at least

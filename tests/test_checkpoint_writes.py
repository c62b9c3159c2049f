"""Runs that write their checkpoints at about the same time (a wave of fired timers' continuations) write them
together on PostgreSQL: one transaction for the wave, not one per run. Each run's checkpoint is still its own, sent
after it asked and committed when its write returns; a write whose journey lock was lost meanwhile is refused unsent,
and one write's failure is its own."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from langgraph.checkpoint.base import empty_checkpoint

from checkpoints.errors import InstanceLockLostError
from checkpoints.locks import _LEASE, Lease
from graphs.runtime import JourneyRuntime
from tests.process_support import napping, runtime, statements_sent, virtual_clock

INSTANCES = 20  # a wave of continuations (at most RESUME_CONCURRENCY)


async def test_continuations_at_once_write_their_checkpoints_together_each_its_own(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        ids = await napping(rt, clock, "nap_written", INSTANCES)
        upsert = str(getattr(rt.store.saver, "UPSERT_CHECKPOINTS_SQL", ""))
        with statements_sent(monkeypatch, upsert) as upserts:
            report = await rt.processes.scheduler.run_due()
        assert (report.fired, report.resumed, report.failed) == (INSTANCES, INSTANCES, 0)

        # Each thread's last checkpoint is its own run's: completed, with its own variables.
        for n, instance_id in enumerate(ids):
            state = await rt.processes.status(instance_id)
            assert (state["status"], state["variables"]["n"]) == ("completed", n)
            saved = await rt.store.saver.aget_tuple({"configurable": {"thread_id": instance_id}})
            assert saved is not None and saved.checkpoint["channel_values"]["status"] == "completed"
        if store_url.startswith("postgresql"):
            # The saver writes through a cursor of its own per pipeline, and a pipeline is one transaction.
            transactions = {id(cursor) for cursor, _params in upserts}
            assert 1 <= len(transactions) <= INSTANCES // 4  # a few for the wave, not one per run


def _put(rt: JourneyRuntime, thread_id: str) -> Any:
    checkpoint = empty_checkpoint()
    checkpoint["channel_values"] = {"status": {"of": thread_id}}
    checkpoint["channel_versions"] = {"status": 1}
    config: Any = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
    return rt.store.saver.aput(config, checkpoint, {}, {"status": 1})


async def test_a_write_whose_lock_was_lost_while_it_waited_is_refused_and_the_others_are_written(
    postgres_url: str,
) -> None:
    async with runtime(postgres_url, virtual_clock()) as rt:
        saver: Any = rt.store.saver
        taken = 0
        while not saver.lock.locked():  # every connection of the saver busy: the first write waits on the wire
            await saver.lock.acquire()
            taken += 1
        first = asyncio.ensure_future(_put(rt, "w-first"))
        await asyncio.sleep(0.3)
        lease = Lease("w-lost")
        leased = _LEASE.set(lease)
        try:
            lost = asyncio.ensure_future(_put(rt, "w-lost"))  # its task holds the lease (a copy of this context)
        finally:
            _LEASE.reset(leased)
        kept = asyncio.ensure_future(_put(rt, "w-kept"))
        await asyncio.sleep(0.3)  # both asked, behind the first
        lease.lost = True  # the lock connection dropped before the write was sent
        for _ in range(taken):
            saver.lock.release()
        await first
        with pytest.raises(InstanceLockLostError):
            await lost
        await kept
        for thread, written in (("w-first", True), ("w-lost", False), ("w-kept", True)):
            found = await saver.aget_tuple({"configurable": {"thread_id": thread}})
            assert (found is not None) == written, thread


async def test_one_failing_write_among_others_fails_alone(postgres_url: str) -> None:
    async with runtime(postgres_url, virtual_clock()) as rt:
        saver: Any = rt.store.saver
        config: Any = {"configurable": {"thread_id": "w-bad", "checkpoint_ns": "", "checkpoint_id": "c"}}
        # A NUL in a text column: PostgreSQL refuses it (the saver's own write raises the same).
        bad = saver.aput_writes(config, [("status", "x")], "task\x00id")
        puts = [_put(rt, f"w-{n}") for n in range(3)]
        outcomes = await asyncio.gather(bad, *puts, return_exceptions=True)
        assert isinstance(outcomes[0], psycopg.DataError), outcomes[0]
        assert [o for o in outcomes[1:] if isinstance(o, BaseException)] == []
        for n in range(3):
            assert await saver.aget_tuple({"configurable": {"thread_id": f"w-{n}"}}) is not None

"""An instance's last event and final status (an end event's), written together with the others reached at about
the same time: a wave of timer continuations ends in a few transactions, not one per instance, and each end is
durable, once, before its continuation counts as done. Memory, SQLite and PostgreSQL, on a virtual clock."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Integer, text

from checkpoints.events import NewEvent
from tests.process_support import counted_write_transactions, linear, runtime, virtual_clock

NAP = linear("nap_then_end", {"type": "timer", "id": "nap", "timer": {"duration": "PT1H"}})
WAVE = 12


async def test_a_wave_of_continuations_writes_its_ends_together_each_once(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        await rt.processes.deploy(NAP)
        ids = [(await rt.processes.start("nap_then_end", f"cust-{n}"))["instance_id"] for n in range(WAVE)]
        transactions = counted_write_transactions(rt.store.events, monkeypatch)  # ends per transaction
        clock.advance(timedelta(hours=1))
        report = await rt.processes.scheduler.run_due()
        assert (report.fired, report.resumed, report.failed) == (WAVE, WAVE, 0)

        # The ends went out together, each once: far fewer transactions than instances. How the wave splits
        # depends on when each continuation reaches its end (the first may go alone; a loaded machine spreads
        # them: [1, 5, 3, 2, 1] was seen), so the bound is half the wave, and one transaction took several.
        assert sum(transactions) == WAVE and len(transactions) <= WAVE // 2, transactions
        assert max(transactions) >= WAVE // 4, transactions
        for instance_id in ids:
            assert (await rt.processes.status(instance_id))["status"] == "completed"
            ends = [e for e in await rt.processes.history(instance_id) if e.type == "process.completed"]
            assert [e.key for e in ends] == [f"{instance_id}:completed"]
        counts = await rt.store.index.count_by_status(pattern="process")
        assert counts.get("completed") == WAVE


async def test_last_events_asked_for_together_are_written_once_per_key_and_set_every_status(store_url: str) -> None:
    async with runtime(store_url) as rt:
        log = rt.store.events
        ids = [f"i-{n}" for n in range(8)]
        for instance_id in ids:  # each has a first event already, as a running instance has
            await log.append(instance_id, [NewEvent("started", {})])

        def last(instance_id: str) -> Any:
            return log.append_together(
                instance_id, NewEvent("done", {"n": 1}, "end", f"{instance_id}:done"), "completed"
            )

        # Every instance twice at once (a redelivered continuation reaching its end again): one write each.
        written = await asyncio.gather(*(last(i) for i in ids), *(last(i) for i in ids))
        assert sorted(written) == [False] * len(ids) + [True] * len(ids)
        assert written[: len(ids)] == [True] * len(ids)  # the first asked is the one written
        for instance_id in ids:
            history = await log.list(instance_id)
            assert [(e.seq, e.type) for e in history] == [(1, "started"), (2, "done")]
            instance = await rt.store.index.get_instance(instance_id)
            assert instance is None or instance.status == "completed"  # no index row: the log alone is kept

        with pytest.raises(ValueError, match="keyed event"):
            await log.append_together("i-0", NewEvent("done"), "completed")


async def test_one_end_that_cannot_be_written_fails_alone_and_the_rest_of_its_batch_is_written(
    postgres_url: str,
) -> None:
    # A NUL character cannot go into a PostgreSQL text column: that row's batch is rolled back whole, and each of
    # its events goes again on its own, so only the bad one's caller sees the error.
    async with runtime(postgres_url) as rt:
        log = rt.store.events
        ids = [f"i-{n}" for n in range(6)]
        for instance_id in ids:
            await log.append(instance_id, [NewEvent("started", {})])
        steps = {instance_id: "end" for instance_id in ids} | {"i-3": "en\x00d"}
        results = await asyncio.gather(
            *(log.append_together(i, NewEvent("done", {}, steps[i], f"{i}:done"), "completed") for i in ids),
            return_exceptions=True,
        )
        assert [type(r).__name__ for r in results[:3] + results[4:]] == ["bool"] * 5
        assert isinstance(results[3], Exception)
        for instance_id in ids:
            types = [e.type for e in await log.list(instance_id)]
            assert types == (["started"] if instance_id == "i-3" else ["started", "done"])


async def test_steps_of_many_runs_completed_at_once_are_written_together_and_change_no_status(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step's completion written behind its run (the server's runs, durability "exit") went in a transaction
    of its own: at 20 journeys at once, 7 commits per 8-step journey. Completions asked for at about the same
    time now go together, each once, and a completion without a status leaves the instance's as it was."""
    async with runtime(store_url) as rt:
        log = rt.store.events
        ids = [f"run-{n}" for n in range(8)]
        for instance_id in ids:
            await log.append(instance_id, [NewEvent("started", {})], status="in_progress")
        batches: list[int] = []
        together = log._write_together

        async def counted(batch: Sequence[Any]) -> dict[str, bool]:
            batches.append(len(batch))
            return await together(batch)

        monkeypatch.setattr(log, "_write_together", counted)

        def step(instance_id: str) -> Any:
            return log.append_together(instance_id, NewEvent("step.completed", {}, "s1", f"{instance_id}:s1"))

        written = await asyncio.gather(*(step(i) for i in ids), *(step(i) for i in ids))
        assert written == [True] * len(ids) + [False] * len(ids)
        assert sum(batches) <= 2 * len(ids) and max(batches) >= len(ids) // 2, batches
        for instance_id in ids:
            assert [e.type for e in await log.list(instance_id)] == ["started", "step.completed"]
            instance = await rt.store.index.get_instance(instance_id)
            assert instance is None or instance.status == "in_progress"

        # Completions asked for a pass of the event loop apart (steps of runs that returned in consecutive passes, as
        # a busy worker's do) go together too: the writer lets one pass go by before it takes its batch.
        async def next_step(instance_id: str, passes: int) -> bool:
            for _ in range(passes):
                await asyncio.sleep(0)
            return await log.append_together(instance_id, NewEvent("step.completed", {}, "s2", f"{instance_id}:s2"))

        batches.clear()
        assert list(await asyncio.gather(next_step(ids[0], 0), next_step(ids[1], 1))) == [True, True]
        assert batches == [2]


async def test_ends_written_together_set_their_statuses_by_key_however_many_instances_the_index_holds(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ends' statement set its instances' statuses through a hash join that read the whole instance index (the
    planner weighed json_to_recordset's default of 100 rows against the index): every journey's last step read
    every instance ever started, 3,110 rows for a batch of 3 at 3,110 instances. It reads the ones it sets only."""
    async with runtime(postgres_url) as rt:
        log, backend = rt.store.events, rt.store.events.backend
        await backend.write([FINISHED_LONG_AGO], {"p_count": 3_000})  # a service's index after a while
        await backend.write([text("ANALYZE journey_instances")], {})  # as autovacuum keeps its statistics
        ids = [f"live-{n}" for n in range(3)]
        for instance_id in ids:
            first = NewEvent("journey.started", {}, None, f"{instance_id}:started")
            await rt.store.index.create_instance(instance_id, "design", "structured", "u", first_event=first)
        read: list[int] = []
        write = backend.write

        async def counting_reads(statements: Sequence[Any], params: Any) -> list[Any]:
            if "p_ends" not in params:
                return await write(statements, params)
            async with backend.transaction() as tx:  # the batch, then what it read of the index, in its transaction
                rows = await tx.execute(statements[0], params)
                [found] = await tx.execute(INDEX_ROWS_READ)
            read.append(int(found["n"]))
            return rows

        monkeypatch.setattr(backend, "write", counting_reads)
        written = await asyncio.gather(
            *(log.append_together(i, NewEvent("done", {}, "end", f"{i}:done"), "completed") for i in ids)
        )
        assert written == [True] * len(ids)
        assert len(read) == 1 and read[0] <= len(ids), read  # 3,003 before
        for instance_id in ids:
            instance = await rt.store.index.get_instance(instance_id)
            assert instance is not None and instance.status == "completed"


FINISHED_LONG_AGO = text(
    "INSERT INTO journey_instances (instance_id, journey_id, pattern, user_id, status, created_at, updated_at) "
    "SELECT 'old-' || n, 'design', 'structured', 'u', 'completed', now(), now() "
    "FROM generate_series(1, :p_count) AS n"
)
# The index rows this transaction's statements have read so far, by sequential and by index scans.
INDEX_ROWS_READ = text(
    "SELECT seq_tup_read + coalesce(idx_tup_fetch, 0) AS n FROM pg_stat_xact_user_tables "
    "WHERE relname = 'journey_instances'"
).columns(n=Integer)

"""Waiting for a run wakes on its change notice, not on a timer: in-process, and across processes through
PostgreSQL NOTIFY. The fallback re-read is set to an hour here, so only a notice can end a wait in time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from checkpoints.clock import SystemClock
from checkpoints.encryption import Sealer
from checkpoints.runs import LISTEN_RUNS, PROBE_KEY, split_notice
from checkpoints.store import open_store
from checkpoints.url import parse_store_url
from server.queues.embedded import EmbeddedRunner
from server.runs.store import RunRow, RunStore
from server.runs.watch import RunWatch, listening, wait_for_run
from tests.server_support import queued_run

HOUR = 3600.0


@asynccontextmanager
async def run_store(url: str) -> AsyncIterator[RunStore]:
    async with open_store(url, clock=SystemClock()) as store:
        yield RunStore(store.backend, store.clock)


async def test_every_waiter_wakes_and_nothing_is_left_registered() -> None:
    watch = RunWatch()
    with watch.watching("r1") as first, watch.watching("r1") as second, watch.watching("r2") as other:
        watch.changed("r1")
        assert first.is_set() and second.is_set() and not other.is_set()
        watch.changed_all()
        assert other.is_set()
    assert watch.watched == 0


async def test_a_waiter_wakes_when_its_run_finishes_in_process(store_url: str) -> None:
    async with run_store(store_url) as runs:
        await _wakes_in_process(runs)


async def _wakes_in_process(runs: RunStore) -> None:
    watch = RunWatch()
    run = await queued_run(runs)
    assert (await runs.claim(run.run_id)) is not None
    waiter = asyncio.create_task(wait_for_run(runs, watch, run.run_id, HOUR))
    await asyncio.sleep(0)  # the waiter reads the run (running) and waits
    finished = await runs.finish(run.run_id, "success")
    assert finished is not None and finished.status == "success"
    watch.changed(run.run_id)
    assert (await asyncio.wait_for(waiter, 10)).status == "success"
    assert await runs.finish(run.run_id, "error") is None  # a finished run stays finished
    assert watch.watched == 0


async def test_a_waiter_in_another_process_wakes_on_the_database_notice(postgres_url: str) -> None:
    # Nothing calls watch.changed here: only the NOTIFY sent with the finishing write can wake the waiter.
    watch = RunWatch()
    async with run_store(postgres_url) as runs, listening(parse_store_url(postgres_url).target, watch):
        run = await queued_run(runs)
        waiter = asyncio.create_task(wait_for_run(runs, watch, run.run_id, HOUR))
        await runs.claim(run.run_id)
        await runs.append_event(run.run_id, 1, "values", {"step": 1})
        await runs.finish(run.run_id, "success")
        assert (await asyncio.wait_for(waiter, 10)).status == "success"


async def test_a_finished_runs_notice_carries_the_run_as_a_read_gets_it_sealed(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker's notice of a run's end holds the run's row, read by the waiter's store exactly as
    ``get_run`` reads it (times, JSON, sealed fields opened); the caller's data stays sealed in transit."""
    sealer = Sealer(b"k" * 32)
    finishes: list[tuple[str, Any]] = []  # the statements that finished a run, and their values
    execute = psycopg.AsyncCursor.execute

    async def recorded(cursor: psycopg.AsyncCursor[Any], query: Any, params: Any = None, **kwargs: Any) -> Any:
        if isinstance(query, str) and "pg_notify" in query and "UPDATE server_runs SET status" in query:
            finishes.append((query, params))
        return await execute(cursor, query, params, **kwargs)

    monkeypatch.setattr(psycopg.AsyncCursor, "execute", recorded)
    async with open_store(postgres_url, clock=SystemClock()) as store:
        runs = RunStore(store.backend, store.clock, sealer)
        conn = await psycopg.AsyncConnection.connect(parse_store_url(postgres_url).target, autocommit=True)
        async with conn:
            await conn.execute(LISTEN_RUNS)
            run = await queued_run(runs)
            await runs.claim(run.run_id)
            output = {"secret": "s3cr3t", "values": [1, 2.5, None, "x"]}
            await runs.finish(run.run_id, "success", {"why": "none"}, output)
            notice = await anext(conn.notifies(timeout=10))
        run_id, finished = split_notice(notice.payload)
        assert run_id == run.run_id and finished is not None and "s3cr3t" not in finished
        noticed = runs.noticed_run(finished)
        assert noticed == await runs.get_run(run.run_id)
        assert noticed.output == output and noticed.status == "success"
        # The row's JSON is built once per finish (about 50 us of PostgreSQL's CPU for a benchmark run's row),
        # not once to measure it and again to send it: PostgreSQL's plan of the statement says how often.
        [(sql, values)] = finishes
        async with await psycopg.AsyncConnection.connect(parse_store_url(postgres_url).target) as planning:
            explained = await psycopg.AsyncRawCursor(planning).execute(f"EXPLAIN (VERBOSE, COSTS OFF) {sql}", values)
            plan = await explained.fetchall()
        assert "\n".join(line for (line,) in plan).count("to_jsonb(") == 1


class GatedRuns:
    """A run table whose ``next_pending`` can be held at a gate, to land a submit in the middle of it."""

    def __init__(self, hold_call: int) -> None:
        self.queue: list[str] = []
        self.calls = 0
        self.hold_call = hold_call
        self.gate = asyncio.Event()
        self.looking = asyncio.Event()

    async def next_pending(self, thread_id: str) -> RunRow | None:
        found = self.queue[0] if self.queue else None  # read before the gate: a stale answer
        self.calls += 1
        if self.calls == self.hold_call:
            self.looking.set()
            await self.gate.wait()
        return _fake_row(found, thread_id) if found else None


class RecordingExecutor:
    def __init__(self, runs: GatedRuns) -> None:
        self.runs = runs
        self.executed: list[str] = []
        self.ran = asyncio.Event()

    def delay(self, run: RunRow) -> float:
        """Its runs are never delayed (no ``after_seconds``): due at once, as the real executor has it."""
        return 0.0

    async def execute(self, run_id: str, *, due: bool = False) -> None:
        self.executed.append(run_id)
        self.runs.queue.remove(run_id)
        self.ran.set()


def _fake_row(run_id: str, thread_id: str) -> RunRow:
    now = datetime.now(UTC)
    return RunRow(
        run_id, thread_id, "structured", "pending", "start", {}, None, [], "reject", {}, None, None, 0, None, now, now
    )


async def test_a_run_submitted_while_the_driver_looks_is_not_stranded() -> None:
    runs = GatedRuns(hold_call=2)  # the look after the first run
    executor = RecordingExecutor(runs)
    runner = EmbeddedRunner(executor)  # type: ignore[arg-type]
    runs.queue.append("r1")
    runner.submit(_fake_row("r1", "t"))
    await asyncio.wait_for(runs.looking.wait(), 10)  # r1 ran; the driver read an empty queue, its answer held
    assert executor.executed == ["r1"]
    executor.ran.clear()
    runs.queue.append("r2")
    runner.submit(_fake_row("r2", "t"))
    runs.gate.set()
    await asyncio.wait_for(executor.ran.wait(), 10)
    assert executor.executed == ["r1", "r2"]
    await runner.close()
    assert runner.drivers == 0


async def test_notices_resume_after_the_listening_connection_drops(postgres_url: str) -> None:
    import psycopg

    watch = RunWatch()
    target = parse_store_url(postgres_url).target
    async with run_store(postgres_url) as runs, listening(target, watch, retry=0.05):
        async with await psycopg.AsyncConnection.connect(target, autocommit=True) as admin:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'LISTEN journeys_runs%'"
            )
        run = await queued_run(runs)
        waiter = asyncio.create_task(wait_for_run(runs, watch, run.run_id, HOUR))
        await runs.claim(run.run_id)
        # Its notice may come before the listener listens again: reconnecting then wakes every waiter to re-read.
        await runs.finish(run.run_id, "success")
        assert (await asyncio.wait_for(waiter, 10)).status == "success"


class CountedRuns(RunStore):
    """The run store, counting the waiters' reads of a run."""

    reads = 0

    async def get_run(self, run_id: str) -> RunRow | None:
        self.reads += 1
        return await super().get_run(run_id)


async def test_waiters_re_read_only_while_the_listeners_probes_do_not_come_back(postgres_url: str) -> None:
    """Once a journey took longer than the fallback poll, each waiting request re-read its run every poll: 12 %
    of a busy API's CPU, spent exactly when it had least to spare. The listener's probe, heard back, proves no
    notice was lost, so a waiter waits on without a read; a listener whose connection died (and stays dead
    here: it retries in an hour) hears none, and its waiters re-read, which finds the run its lost notice told."""
    poll = 0.2
    watch = RunWatch()
    target = parse_store_url(postgres_url).target
    async with (
        open_store(postgres_url, clock=SystemClock()) as store,
        listening(target, watch, retry=HOUR, probe_every=poll / 2),
        await psycopg.AsyncConnection.connect(target, autocommit=True) as admin,
    ):
        runs = CountedRuns(store.backend, store.clock)
        await admin.execute(LISTEN_RUNS)  # to learn the listener's backend from its probes
        run = await queued_run(runs)
        await runs.claim(run.run_id)
        waiter = asyncio.create_task(wait_for_run(runs, watch, run.run_id, poll))
        probes = [notice async for notice in admin.notifies(timeout=10, stop_after=1)]  # someone waits: it probes
        assert probes and probes[0].payload.startswith(PROBE_KEY), probes
        reads = runs.reads
        await asyncio.sleep(10 * poll)  # the run runs for ten polls more
        assert not waiter.done() and runs.reads - reads <= 1, runs.reads - reads  # one a poll before the probes
        await admin.execute("SELECT pg_terminate_backend(%s)", (probes[0].pid,))
        await runs.finish(run.run_id, "success")  # its notice is lost with the listener
        assert (await asyncio.wait_for(waiter, 10)).status == "success"
        assert watch.probes_heard >= 5, watch.probes_heard

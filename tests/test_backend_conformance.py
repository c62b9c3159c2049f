"""The persistence seam itself, on every backend: the event log, the journey index and the run records
behave the same on memory://, SQLite and PostgreSQL, through one query definition each.

memory:// runs the SQLite code path (a throwaway SQLite file), so three backends are two code paths."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.rows import tuple_row
from sqlalchemy import bindparam, delete, literal_column, or_, select, update
from sqlalchemy.exc import IntegrityError

from checkpoints import DuplicateDesignError, DuplicateInstanceError, NewEvent, Store, VirtualClock, open_store
from checkpoints.backends.postgres import PostgresBackend
from checkpoints.backends.sqlite import SqliteBackend
from checkpoints.database import compact_json
from checkpoints.rows import insert_ignore
from checkpoints.runs import RunRow, RunStore, ThreadBusyError, ThreadExistsError, UnsupportedMultitaskStrategyError
from checkpoints.schema.tables import journey_instances, server_runs, user_task_groups

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
REFUSED = (IntegrityError, sqlite3.IntegrityError, psycopg.IntegrityError)  # a constraint's refusal, by any path


@asynccontextmanager
async def opened(url: str) -> AsyncIterator[tuple[Store, VirtualClock]]:
    clock = VirtualClock(START)
    async with open_store(url, clock=clock) as store:
        yield store, clock


async def started(store: Store, instance_id: str = "i-1") -> None:
    await store.index.create_instance(
        instance_id,
        "j-1",
        "structured",
        "ana",
        first_event=NewEvent("journey.started", {"n": 0}, None, f"{instance_id}:s"),
    )


def utc(moment: datetime) -> bool:
    return moment.tzinfo is UTC


async def test_each_url_runs_one_of_two_code_paths(store_url: str) -> None:
    async with opened(store_url) as (store, _):
        expected = PostgresBackend if store_url.startswith("postgresql") else SqliteBackend
        assert type(store.backend) is expected
        assert (store.pg_pool is not None) == (expected is PostgresBackend)


async def test_events_append_in_order_once_per_key_and_read_back_alike(store_url: str) -> None:
    async with opened(store_url) as (store, clock):
        await started(store)
        clock.advance(timedelta(seconds=5))
        log = store.events
        assert await log.append("i-1", [NewEvent("step.completed", {"a": [1, {"b": None}]}, "s1", "i-1:s1")]) == [True]
        assert await log.append("i-1", [NewEvent("step.completed", {"again": True}, "s1", "i-1:s1")]) == [False]
        assert await log.append("i-1", [NewEvent("note", {})]) == [True]
        assert await log.append("i-1", [NewEvent("note", {})]) == [True]  # no key: never deduplicated
        events = await log.list("i-1")
        assert [(e.seq, e.type, e.step, e.key) for e in events] == [
            (1, "journey.started", None, "i-1:s"),
            (2, "step.completed", "s1", "i-1:s1"),
            (3, "note", None, None),
            (4, "note", None, None),
        ]
        assert events[1].payload == {"a": [1, {"b": None}]}
        assert all(utc(e.created_at) for e in events)
        assert [e.created_at for e in events] == [START] + [START + timedelta(seconds=5)] * 3
        assert [e.seq for e in await log.list("i-1", types=["note", "journey.started"])] == [1, 3, 4]
        assert [e.seq for e in await log.list("i-1", types=["note"], after_seq=3)] == [4]
        assert await log.list("nobody") == []
        found = await log.find_by_key("i-1", "i-1:s1")
        assert found == events[1]
        assert await log.find_by_key("i-1", "missing") is None


async def test_an_append_with_a_status_moves_the_instance_in_the_same_write(store_url: str) -> None:
    async with opened(store_url) as (store, clock):
        await started(store)
        clock.advance(timedelta(minutes=1))
        await store.events.append("i-1", [NewEvent("journey.completed", {}, None, "i-1:done")], status="completed")
        instance = await store.index.get_instance("i-1")
        assert instance is not None
        assert (instance.status, instance.updated_at, instance.created_at) == (
            "completed",
            START + timedelta(minutes=1),
            START,
        )
        assert utc(instance.updated_at) and utc(instance.created_at)


async def test_several_events_and_derived_writes_commit_together_or_not_at_all(store_url: str) -> None:
    async with opened(store_url) as (store, _):
        await started(store)
        mark = update(journey_instances).where(journey_instances.c.instance_id == "i-1").values(user_id="bob")
        written = await store.events.append(
            "i-1", [NewEvent("a", {}, None, "i-1:a"), NewEvent("b", {}, None, "i-1:b")], also=[mark]
        )
        assert written == [True, True]
        replay = update(journey_instances).where(journey_instances.c.instance_id == "i-1").values(user_id="eve")
        assert await store.events.append("i-1", [NewEvent("a", {}, None, "i-1:a")], also=[replay]) == [False]
        instance = await store.index.get_instance("i-1")
        assert instance is not None and instance.user_id == "bob"  # a replayed append applies nothing twice
        # Rows insert_ignore builds (a wait's armed rows): one statement with their event on PostgreSQL, the same rule.
        groups = user_task_groups.c

        def group(name: str) -> Any:
            return insert_ignore(store.engine, user_task_groups, task_id="t-1", group_name=name)

        armed = NewEvent("armed", {}, None, "i-1:armed")
        assert await store.events.append("i-1", [armed], also=[group("ops"), group("finance")]) == [True]
        async with store.engine.begin() as conn:
            await conn.execute(delete(user_task_groups).where(groups.group_name == "ops"))
        assert await store.events.append("i-1", [armed], also=[group("ops"), group("legal")]) == [False]
        async with store.engine.connect() as conn:
            kept = (await conn.execute(select(groups.group_name).order_by(groups.group_name))).scalars().all()
        assert kept == ["finance"]  # the replay wrote neither the row deleted since nor a new one
        async with store.engine.begin() as conn:
            # Of one instance a logged key is skipped and two new ones follow in order; another has no event yet.
            await store.events.append_in(
                conn,
                [
                    ("i-1", NewEvent("a", {}, None, "i-1:a")),
                    ("i-1", NewEvent("c", {}, None, "i-1:c")),
                    ("i-2", NewEvent("c", {}, None, "i-2:c")),
                    ("i-1", NewEvent("d", {}, None, "i-1:d")),
                ],
            )
        assert [e.type for e in await store.events.list("i-1")] == ["journey.started", "a", "b", "armed", "c", "d"]
        assert [(e.seq, e.type) for e in await store.events.list("i-2")] == [(1, "c")]


async def test_concurrent_appends_to_one_instance_leave_no_gap(store_url: str) -> None:
    async with opened(store_url) as (store, _):
        await started(store)
        results = await asyncio.gather(
            *(store.events.append("i-1", [NewEvent("tick", {"n": n}, None, f"i-1:{n}")]) for n in range(24))
        )
        assert all(r == [True] for r in results)
        events = await store.events.list("i-1")
        assert [e.seq for e in events] == list(range(1, 26))
        assert sorted(e.payload["n"] for e in events[1:]) == list(range(24))


async def test_designs_and_instances_are_stored_once(store_url: str) -> None:
    async with opened(store_url) as (store, _):
        design = await store.index.save_design("d-1", "structured", "onboarding", {"steps": [{"id": "a"}]})
        assert await store.index.get_design("d-1") == design
        assert utc(design.created_at)
        with pytest.raises(DuplicateDesignError):
            await store.index.save_design("d-1", "structured", "onboarding", {})
        assert await store.index.get_design("missing") is None

        await started(store, "i-1")
        await started(store, "i-2")
        with pytest.raises(DuplicateInstanceError):
            await started(store, "i-1")
        assert [e.seq for e in await store.events.list("i-1")] == [1]  # the refused start wrote nothing
        found = await store.index.get_instances(["i-2", "i-1", "i-2", "missing"])
        assert sorted(i.instance_id for i in found) == ["i-1", "i-2"]
        assert [i.instance_id for i in await store.index.list_instances(pattern="structured")] == ["i-1", "i-2"]
        await store.events.append("i-2", [NewEvent("done", {})], status="completed")
        assert await store.index.count_by_status() == {"in_progress": 1, "completed": 1}
        assert [i.instance_id for i in await store.index.list_instances(status="completed")] == ["i-2"]


async def test_prebuilt_statements_read_and_write_the_same_rows_on_every_path(store_url: str) -> None:
    """A statement written once runs through the backend's hot path and through SQLAlchemy with the same
    result: values bound and read with the same type conversions."""
    async with opened(store_url) as (store, _):
        await started(store)
        by_id = select(journey_instances).where(journey_instances.c.instance_id == bindparam("p_id"))
        hot = await store.backend.read(by_id, {"p_id": "i-1"})
        plain = await store.backend.query(by_id, {"p_id": "i-1"})
        assert hot == plain and len(hot) == 1 and utc(hot[0]["created_at"])
        rename = (
            update(journey_instances)
            .where(journey_instances.c.instance_id == bindparam("p_id"))
            .values(user_id=bindparam("p_user"))
            .returning(journey_instances.c.user_id, journey_instances.c.updated_at)
        )
        assert await store.backend.write([rename], {"p_id": "i-1", "p_user": "zoe"}) == [
            {"user_id": "zoe", "updated_at": START}
        ]
        assert await store.backend.write([rename], {"p_id": "missing", "p_user": "zoe"}) == []


async def test_prebuilt_statements_bind_each_value_where_its_name_stands(store_url: str) -> None:
    """The hot path sends a statement's text as compiled (positional placeholders on PostgreSQL): a value
    used twice, constant lists, a literal percent sign and a write that returns no rows all run as
    SQLAlchemy runs them."""
    async with opened(store_url) as (store, _):
        await started(store, "i-1")
        await started(store, "i-2")
        i = journey_instances.c
        query = (
            select(i.instance_id, (i.user_id + literal_column("'%'")).label("marked"))
            .where(
                i.instance_id.in_(["i-1", "i-2", "i-3"]),
                or_(i.instance_id == bindparam("p_id"), i.journey_id == bindparam("p_id")),
                i.pattern.like(literal_column("'struct%'")),
                i.user_id != bindparam("p_not"),
            )
            .order_by(i.instance_id)
        )
        params = {"p_id": "j-1", "p_not": "zoe"}
        hot = await store.backend.read(query, params)
        assert hot == await store.backend.query(query, params)
        assert hot == [{"instance_id": "i-1", "marked": "ana%"}, {"instance_id": "i-2", "marked": "ana%"}]
        rename = update(journey_instances).where(i.instance_id == bindparam("p_id")).values(user_id=bindparam("p_id"))
        assert await store.backend.write([rename], {"p_id": "i-2"}) == []
        assert await store.backend.read(query, {"p_id": "j-1", "p_not": "i-2"}) == [
            {"instance_id": "i-1", "marked": "ana%"}
        ]


def new_run(runs: RunStore, thread_id: str | None = None, strategy: str = "reject") -> Any:
    return runs.create_run(
        thread_id=thread_id,
        assistant_id="structured",
        kind="start",
        input={"journey_type": "x"},
        command=None,
        stream_modes=["values"],
        multitask_strategy=strategy,
        metadata={"m": 1},
        principal="ana",
        durability="sync",
    )


async def test_runs_are_created_claimed_and_finished_once(store_url: str) -> None:
    async with opened(store_url) as (store, clock):
        runs = RunStore(store.backend, clock)
        run: RunRow = await new_run(runs)
        assert await runs.get_run(run.run_id) == run
        thread = await runs.get_thread(run.thread_id)
        assert thread is not None and (thread.owner, thread.instance_id) == ("ana", None)
        with pytest.raises(ThreadBusyError):
            await new_run(runs, run.thread_id)
        clock.advance(timedelta(seconds=1))  # runs of a thread are taken in the order they were created
        queued: RunRow = await new_run(runs, run.thread_id, strategy="enqueue")
        with pytest.raises(UnsupportedMultitaskStrategyError):
            await new_run(runs, run.thread_id, strategy="stampede")
        assert await runs.active_count(run.thread_id) == 2
        assert await runs.next_pending(run.thread_id) == run

        await runs.bind(run.thread_id, "structured", "i-9")
        await runs.bind(run.thread_id, "structured", "i-9")  # a bind that agrees (a chat's every run binds again)
        # One to another instance (a second attempt of the start run) is refused, with the registration it rides on.
        with pytest.raises(REFUSED) as refused:
            await store.index.create_instance(
                "i-10",
                "j-1",
                "structured",
                "ana",
                first_event=NewEvent("journey.started", {}, None, "i-10:s"),
                joined=[runs.binding(run.thread_id, "structured", "i-10")],
            )
        assert runs.bound_elsewhere(refused.value) and not store.backend.is_unique_violation(refused.value)
        assert await store.index.get_instance("i-10") is None and await store.events.list("i-10") == []
        with pytest.raises(REFUSED) as refused:
            await runs.bind(run.thread_id, "structured", "i-10")
        assert runs.bound_elsewhere(refused.value)
        claimed = await runs.claim(run.run_id)
        assert claimed is not None
        row, instance_id = claimed
        assert (row.status, row.attempts, row.updated_at, instance_id) == (
            "running",
            1,
            START + timedelta(seconds=1),
            "i-9",
        )
        await runs.set_base_checkpoint(run.run_id, "cp-1")
        await runs.request_cancel(run.run_id)
        finished = await runs.finish(run.run_id, "success", None, {"status": "completed", "n": [1, 2]})
        assert finished is not None and finished.output == {"status": "completed", "n": [1, 2]}
        assert (finished.base_checkpoint, finished.cancel_requested_at) == ("cp-1", START + timedelta(seconds=1))
        assert finished.durability == "sync" and finished.metadata == {"m": 1} and finished.stream_modes == ["values"]
        assert await runs.get_run(run.run_id) == finished
        assert await runs.finish(run.run_id, "error", {"message": "late"}) is None  # finished once
        assert await runs.claim(run.run_id) is None
        # interrupt and rollback are accepted on a busy thread: the server cancels (or rolls back) its active
        # runs before it creates the run, so the store queues it behind them like enqueue.
        clock.advance(timedelta(seconds=1))
        interrupting: RunRow = await new_run(runs, run.thread_id, strategy="interrupt")
        clock.advance(timedelta(seconds=1))
        rolling_back: RunRow = await new_run(runs, run.thread_id, strategy="rollback")
        assert (interrupting.multitask_strategy, rolling_back.multitask_strategy) == ("interrupt", "rollback")
        later = [queued.run_id, interrupting.run_id, rolling_back.run_id]
        assert sorted(r.run_id for r in await runs.unfinished()) == sorted(later)
        assert await runs.next_pending(run.thread_id) == queued
        failed = await runs.finish(queued.run_id, "error", {"message": "boom"})
        assert failed is not None and failed.error == {"message": "boom"} and failed.output is None
        assert await runs.next_pending(run.thread_id) == interrupting
        for later_run in (interrupting, rolling_back):
            claimed = await runs.claim(later_run.run_id)
            assert claimed is not None and claimed[0].attempts == 1
            assert await runs.finish(later_run.run_id, "success", None, {"status": "completed"}) is not None
            assert await runs.claim(later_run.run_id) is None  # finished once
        assert await runs.unfinished() == []
        assert {r.run_id for r in await runs.list_runs(run.thread_id)} == {run.run_id, *later}
        assert await runs.active_count(run.thread_id) == 0
        assert all(utc(r.created_at) and utc(r.updated_at) for r in await runs.list_runs(run.thread_id))


async def test_threads_and_stream_chunks(store_url: str) -> None:
    async with opened(store_url) as (store, clock):
        runs = RunStore(store.backend, clock)
        thread = await runs.create_thread("t-1", {"team": "a"}, "ana")
        assert await runs.get_thread("t-1") == thread
        with pytest.raises(ThreadExistsError):
            await runs.create_thread("t-1", {}, "ana")
        assert await runs.create_thread("t-1", {}, "bob", if_exists="do_nothing") == thread
        clock.advance(timedelta(seconds=1))
        await runs.create_thread("t-2", {"team": "b"}, "ana")
        assert [t.thread_id for t in await runs.search_threads(None, 10, 0)] == ["t-2", "t-1"]
        assert [t.thread_id for t in await runs.search_threads({"team": "a"}, 10, 0)] == ["t-1"]
        assert [t.thread_id for t in await runs.search_threads(None, 10, 0, ids=["t-1"])] == ["t-1"]

        run: RunRow = await new_run(runs, "t-1")
        assert await runs.last_seq(run.run_id) == 0
        for seq, data in enumerate([{"a": 1}, None, [1, "x"]], start=1):
            await runs.append_event(run.run_id, seq, "values", data)
        assert await runs.last_seq(run.run_id) == 3
        assert await runs.events_after(run.run_id, 1) == [(2, "values", None), (3, "values", [1, "x"])]


async def test_postgres_times_come_back_utc_whatever_the_session_time_zone(postgres_url: str) -> None:
    """Every read path converts created_at the same way: UTC, even where the database's own time zone
    differs (the hot path and SQLAlchemy once disagreed here)."""
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        database = conn.info.dbname
        conn.execute(f"ALTER DATABASE \"{database}\" SET timezone TO 'America/New_York'")
    async with opened(postgres_url) as (store, clock):
        await started(store)
        runs = RunStore(store.backend, clock)
        run: RunRow = await new_run(runs)
        [event] = await store.events.list("i-1")
        instance = await store.index.get_instance("i-1")
        fetched = await runs.get_run(run.run_id)
        listed = await store.index.list_instances()
        assert instance is not None and fetched is not None
        for moment in (event.created_at, instance.created_at, fetched.created_at, listed[0].updated_at):
            assert moment == START and utc(moment)
        assert fetched.view()["created_at"] == START.isoformat()
        rows = await store.backend.query(select(server_runs.c.created_at))
        assert rows == [{"created_at": START}] and utc(rows[0]["created_at"])


async def test_postgres_json_values_read_back_as_written_for_a_few_python_calls_each(postgres_url: str) -> None:
    """The pool's connections read JSON as ``json.loads`` does (integers of any size, text columns as written,
    strings outside ASCII), without its type checks and look for another encoding per value: a dozen values
    are read per run of a journey, and json.loads made each cost 18 Python calls."""
    written = {"big": 123456789012345678901234567890, "name": "Zoë ✓", "nested": [1.5, None, True]}
    async with opened(postgres_url) as (store, _clock):
        assert isinstance(store.backend, PostgresBackend)
        async with store.backend.pool.connection() as conn:
            cursor = conn.cursor(row_factory=tuple_row)
            await cursor.execute("SELECT %s::jsonb, %s::json", [compact_json(written), ' {"a": 1} '])
            assert await cursor.fetchall() == [(written, {"a": 1})]

            async def calls_to_read(values: int) -> int:
                await cursor.execute("SELECT jsonb_build_object('n', g) FROM generate_series(1, %s) g", [values])
                count = 0

                def counted(_frame: object, event: str, _arg: object) -> None:
                    nonlocal count
                    count += event in ("call", "c_call")

                sys.setprofile(counted)
                try:
                    await cursor.fetchall()
                finally:
                    sys.setprofile(None)
                return count

            per_value = (await calls_to_read(101) - await calls_to_read(1)) / 100
            assert per_value <= 12  # a row's tuple and the value's loader, decode and scan

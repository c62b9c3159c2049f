"""Transactions PostgreSQL rolls back for losing a race go again instead of failing their caller.

A process cancel writes its event and then the instance's waits; a scheduler pass firing the instance's
timer writes the waits and then their events. Run by two processes at once they can deadlock, and
PostgreSQL rolls one back: before, a losing cancel reached its caller as a raw ``OperationalError`` (over
HTTP, a 500) and a losing pass failed. Both now go again, like a writer that lost the log's next seq.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import IntegrityError, OperationalError

from checkpoints.seq_race import again_if_lost, lost_race
from graphs import JourneyRuntime
from graphs.errors import ProcessStateError, TaskClosedError
from tests.process_support import runtime, user_task, virtual_clock


def deadlock(url: str) -> BaseException:
    """A real deadlock between two connections taking two rows in opposite orders: the error of the loser."""
    with psycopg.connect(url, autocommit=True) as setup:
        setup.execute("CREATE TABLE IF NOT EXISTS race_rows (id int PRIMARY KEY)")
        setup.execute("INSERT INTO race_rows VALUES (1), (2) ON CONFLICT DO NOTHING")
    both_hold_one = threading.Barrier(2)
    errors: list[BaseException] = []

    def take(first: int, second: int) -> None:
        with psycopg.connect(url) as conn:
            try:
                conn.execute("SELECT 1 FROM race_rows WHERE id = %s FOR UPDATE", (first,))
                both_hold_one.wait()
                conn.execute("SELECT 1 FROM race_rows WHERE id = %s FOR UPDATE", (second,))
            except psycopg.Error as exc:
                errors.append(exc)

    threads = [threading.Thread(target=take, args=order) for order in ((1, 2), (2, 1))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    [error] = errors
    return error


def test_a_deadlock_is_a_lost_race_as_psycopg_and_sqlalchemy_raise_it(postgres_url: str) -> None:
    error = deadlock(postgres_url)
    assert isinstance(error, psycopg.errors.DeadlockDetected)
    assert lost_race(error)
    wrapped = OperationalError("SELECT …", {}, error)  # as SQLAlchemy raises it, the driver's error in .orig
    assert lost_race(wrapped)
    engine = create_engine(postgres_url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with pytest.raises(Exception) as caught, engine.connect() as conn:
            conn.execute(text("SELECT 1/0"))
        assert not lost_race(caught.value)  # any other failure is its caller's
    finally:
        engine.dispose()


async def test_only_a_unique_key_taken_first_is_a_lost_race_not_another_integrity_error(durable_url: str) -> None:
    """A NULL where none may be fails the same way every time: its caller gets it at once, not after 30
    tries and their backoff; a unique key another writer took first goes again."""
    async with JourneyRuntime.open(durable_url) as rt, rt.store.engine.begin() as conn:
        await conn.execute(text("CREATE TABLE race_keys (id int PRIMARY KEY, name text NOT NULL)"))
        await conn.execute(text("INSERT INTO race_keys VALUES (1, 'first')"))
    async with JourneyRuntime.open(durable_url) as rt:
        tries: Counter[str] = Counter()

        async def insert(kind: str, values: str) -> None:
            tries[kind] += 1
            async with rt.store.engine.begin() as conn:
                await conn.execute(text(f"INSERT INTO race_keys VALUES {values}"))

        with pytest.raises(IntegrityError) as null:
            await again_if_lost(lambda: insert("null", "(2, NULL)"))
        assert not lost_race(null.value)
        assert tries["null"] == 1
        with pytest.raises(IntegrityError) as taken:
            await again_if_lost(lambda: insert("taken", "(1, 'again')"), attempts=3)
        assert lost_race(taken.value)
        assert tries["taken"] == 3


SPEC = {
    "name": "boundary",
    "elements": [
        {"type": "start", "id": "start"},
        user_task("sign"),
        {"type": "boundary_timer", "id": "too_late", "attached_to": "sign", "timer": {"duration": "PT1H"}},
        {"type": "service_task", "id": "activate", "agent": "activate"},
        {"type": "end", "id": "signed"},
        {"type": "service_task", "id": "lapse", "agent": "lapse"},
        {"type": "end", "id": "lapsed"},
    ],
    "flows": ["start -> sign", "sign -> activate", "activate -> signed", "too_late -> lapse", "lapse -> lapsed"],
}


@pytest.mark.slow
async def test_cancels_and_a_timer_pass_of_other_runtimes_all_go_through(postgres_url: str) -> None:
    """Three runtimes on one database, as three processes: one completes tasks, one fires the due boundary
    timers, one cancels every seventh instance, all at once. Before, about one run in three ended with a
    deadlock error from a cancel or from the pass (found by the processes helper, session 7)."""
    clock = virtual_clock()
    called: Counter[tuple[str, str]] = Counter()

    def agent(name: str) -> Any:
        def call(request: Any) -> dict[str, Any]:
            called[(name, request.instance_id)] += 1
            return {}

        return call

    async with (
        runtime(postgres_url, clock) as a,
        runtime(postgres_url, clock) as b,
        runtime(postgres_url, clock) as c,
    ):
        for rt in (a, b, c):
            rt.agents.register("activate", agent("activate"), replace=True)
            rt.agents.register("lapse", agent("lapse"), replace=True)
        await a.processes.deploy(SPEC)
        ids = [(await a.processes.start("boundary", f"k{i}"))["instance_id"] for i in range(40)]
        tasks = {t["instance_id"]: t["task_id"] for t in await a.processes.inbox.list_tasks(assignee="ana")}
        clock.advance(timedelta(hours=1))
        errors: list[BaseException] = []

        async def guard(call: Any) -> None:
            try:
                await call
            except (TaskClosedError, ProcessStateError):  # the other side won: a typed answer
                pass
            except Exception as exc:
                errors.append(exc)

        calls = [guard(b.processes.inbox.complete(tasks[i], user="ana", payload={})) for i in ids]
        calls += [guard(a.processes.scheduler.run_due())]
        calls += [guard(c.processes.cancel(i)) for i in ids[::7]]
        await asyncio.gather(*calls)
        assert not errors, [f"{type(e).__name__}: {e}" for e in errors]
        assert all(count == 1 for count in called.values())  # no agent ran twice for one instance

"""Every statement the runtime sends through SQLAlchemy is compiled once and then found in its cache.

A construct SQLAlchemy cannot make a cache key for makes the whole statement uncacheable: it is compiled again
on every execution (milliseconds of CPU each), silently. SQLAlchemy tells which executions those were.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine.default import NO_CACHE_KEY
from sqlalchemy.ext.asyncio import AsyncEngine

from graphs.runtime import JourneyRuntime
from tests.process_support import linear, payment_spec, runtime, user_task


@contextmanager
def uncached_statements(engine: AsyncEngine) -> Iterator[list[str]]:
    """The SQL of every execution on ``engine`` meanwhile that had no cache key (compiled anew)."""
    found: list[str] = []

    def look(_conn: Any, _cursor: Any, statement: str, _params: Any, context: Any, _many: bool) -> None:
        if context is not None and getattr(context, "cache_hit", None) is NO_CACHE_KEY:
            found.append(statement)

    sync_engine = engine.sync_engine
    event.listen(sync_engine, "after_cursor_execute", look)
    try:
        yield found
    finally:
        event.remove(sync_engine, "after_cursor_execute", look)


async def use_every_pattern_once(rt: JourneyRuntime, n: int) -> None:
    """Processes waiting on a timer, a person and a message, and a structured journey, each taken to its end."""
    timed = await rt.processes.start("timed", f"t-{n}")
    assert timed["status"] == "in_progress"
    approval = await rt.processes.start("approval", f"a-{n}")
    tasks = await rt.processes.inbox.list_tasks(assignee="ana")
    task = next(t for t in tasks if t["instance_id"] == approval["instance_id"])
    done = await rt.processes.inbox.complete(task["task_id"], user="ana", payload={"approved": True})
    assert done["status"] == "completed"
    await rt.processes.start("invoice", f"i-{n}", {"invoice_no": f"INV-{n}"})
    await rt.processes.send_message("payment.received", f"INV-{n}", {"amount": n})
    design = await rt.structured.design_journey("content_migration")
    await rt.structured.execute_journey(design["journey_id"], f"user-{n}")


async def test_no_statement_of_the_runtime_is_compiled_anew_on_every_execution(store_url: str) -> None:
    async with runtime(store_url) as rt:
        await rt.processes.deploy(
            linear("timed", {"type": "timer", "id": "wait", "timer": {"duration": "PT1H"}}),
        )
        await rt.processes.deploy(linear("approval", user_task("approve")))
        await rt.processes.deploy(payment_spec())
        await use_every_pattern_once(rt, 0)  # the first of each: compiled and cached
        with uncached_statements(rt.store.engine) as uncached:
            for n in range(1, 3):
                await use_every_pattern_once(rt, n)
        assert uncached == []

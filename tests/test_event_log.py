"""The append-only event log under concurrent writers: gap-free sequences, idempotent keys."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

from checkpoints.backends.postgres import PostgresBackend
from checkpoints.events import NewEvent
from graphs.runtime import JourneyRuntime


async def test_concurrent_appends_to_one_instance_get_gap_free_sequence_numbers(store_url: str) -> None:
    async with JourneyRuntime.open(store_url) as rt:
        log = rt.store.events
        # Single appends take the fast path (psycopg, or the saver's SQLite connection); batches take
        # SQLAlchemy's. Both race for the next seq of the same instance.
        singles = [log.append("i-1", [NewEvent("single", {"n": n}, None, f"i-1:single:{n}")]) for n in range(20)]
        batches = [log.append("i-1", [NewEvent("batch", {"n": n}), NewEvent("batch", {"n": n})]) for n in range(5)]
        results = await asyncio.gather(*singles, *batches)
        assert all(all(written) for written in results)
        events = await rt.history("i-1")
        assert [e.seq for e in events] == list(range(1, 31))
        # A key already in the log is written once, whichever path it comes through.
        again = await asyncio.gather(
            *(log.append("i-1", [NewEvent("single", {}, None, "i-1:single:3")]) for _ in range(4))
        )
        assert again == [[False]] * 4
        assert len(await rt.history("i-1")) == 30


def _scans_of(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", ()):
        yield from _scans_of(child)


async def test_the_log_finds_an_instance_by_one_index_probe_on_a_prepared_statements_generic_plan(
    postgres_url: str,
) -> None:
    # The hot path prepares its statements once per connection, and PostgreSQL soon runs a prepared statement on
    # its generic plan: one that must serve every parameter value. Each statement finds the instance's number from
    # its first event, through the index of first events (``WHERE seq = 1``); with ``seq = $n`` the generic plan
    # cannot use that index and read every instance's first event on every append instead.
    async with JourneyRuntime.open(postgres_url, pool_size=1) as rt:  # one connection: it prepares every statement
        log = rt.store.events
        assert isinstance(log.backend, PostgresBackend)
        pool = log.backend.pool

        async def journey(n: int) -> None:
            instance = f"i-{n}"
            await log.append(instance, [NewEvent("started", {"n": n})])
            await log.append(instance, [NewEvent("step", {"n": n}, "s1", f"{instance}:s1:1")], status="completed")
            assert await log.find_by_key(instance, f"{instance}:s1:1") is not None
            assert [e.type for e in await log.list(instance, types=["step"])] == ["step"]

        for start in range(0, 400, 20):
            await asyncio.gather(*(journey(n) for n in range(start, start + 20)))
        async with pool.connection() as conn:
            await conn.execute("ANALYZE journey_events")
            prepared = await (
                await conn.execute(
                    "SELECT name, cardinality(parameter_types) FROM pg_prepared_statements"
                    " WHERE strpos(statement, %s) > 0",
                    ["FROM journey_events AS first_event"],
                )
            ).fetchall()
            assert prepared, "the event log's statements are prepared on the pool's connections"
            await conn.execute("SET plan_cache_mode = force_generic_plan")
            for row in prepared:
                name, arity = row["name"], row["cardinality"]
                args = f"({', '.join(['NULL'] * arity)})" if arity else ""
                explained = await (await conn.execute(f"EXPLAIN (FORMAT JSON) EXECUTE {name}{args}")).fetchone()
                assert explained is not None
                plan = explained["QUERY PLAN"][0]["Plan"]
                firsts = [s for s in _scans_of(plan) if str(s.get("Alias", "")).startswith("first_event")]
                assert firsts, plan
                assert {(s["Node Type"], s.get("Index Name")) for s in firsts} == {
                    ("Index Scan", "uq_journey_events_instance")
                }, plan
            await conn.execute("RESET plan_cache_mode")

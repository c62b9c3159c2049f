"""The append-only event log under concurrent writers: gap-free sequences, idempotent keys."""

from __future__ import annotations

import asyncio

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

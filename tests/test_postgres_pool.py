"""The store's psycopg pool: a connection given back is ready for the next caller at once, and one that
sat idle is probed before it is handed out again."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool

from checkpoints.backends import postgres
from checkpoints.backends.postgres import open_pool
from checkpoints.url import parse_store_url


async def test_a_connection_given_back_is_in_the_pool_without_a_task_switch(postgres_url: str) -> None:
    # Each of the saver's and the event log's queries checks a connection out and gives it back: doing
    # that through the pool's worker task (what any ``reset`` hook makes psycopg_pool do) costs a task
    # switch per query and leaves the connection unusable until the worker has run.
    async with open_pool(parse_store_url(postgres_url), 4) as pool:
        await pool.wait()
        async with pool.connection() as conn:
            await conn.execute("SELECT 1")
            before = pool.get_stats()["pool_available"]
        # No await in between: nothing else has run on the loop.
        assert pool.get_stats()["pool_available"] == before + 1


async def test_a_connection_is_probed_on_checkout_only_after_sitting_idle(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    probes: list[Any] = []
    real_check = AsyncConnectionPool.check_connection

    async def counted(conn: Any) -> None:
        probes.append(conn)
        await real_check(conn)

    monkeypatch.setattr(AsyncConnectionPool, "check_connection", counted)
    now = [1000.0]
    # The pool's own clock (and the event loop's) keep running; only the probe's idea of "now" moves.
    monkeypatch.setattr("checkpoints.backends.postgres.time", SimpleNamespace(monotonic=lambda: now[0]))
    async with open_pool(parse_store_url(postgres_url), 1) as pool:
        await pool.wait()
        async with pool.connection() as conn:  # never handed out before: probed
            await conn.execute("SELECT 1")
        assert len(probes) == 1
        now[0] += postgres.PROBE_AFTER_IDLE_S / 2
        async with pool.connection() as conn:  # used moments ago: not probed
            await conn.execute("SELECT 1")
        assert len(probes) == 1
        now[0] += postgres.PROBE_AFTER_IDLE_S * 2
        async with pool.connection() as conn:  # idle for a while: probed again
            await conn.execute("SELECT 1")
        assert len(probes) == 2

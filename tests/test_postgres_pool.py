"""The store's psycopg pool: a connection given back is ready for the next caller at once, and one that
sat idle is probed before it is handed out again."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool
from sqlalchemy import JSON, Integer, String, bindparam, cast, func, select

from checkpoints.backends import postgres
from checkpoints.backends.postgres import open_pool
from checkpoints.database import OutageMark
from checkpoints.store import open_store
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
    # The pool's own clock (and the event loop's) keep running; only the probe's idea of "now" moves. The probe
    # reads an outage mark of its own: the process's is marked by other tests' servers in this worker, even
    # while this test runs (a leftover thread finding its database dropped), which makes every connection used
    # before that moment one to probe.
    now = [1000.0]
    monkeypatch.setattr("checkpoints.backends.postgres.time", SimpleNamespace(monotonic=lambda: now[0]))
    monkeypatch.setattr("checkpoints.backends.postgres.OUTAGE", OutageMark())
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


async def test_a_statement_run_again_on_its_connection_reads_its_own_values_and_keeps_no_long_result(
    postgres_url: str,
) -> None:
    # The backend runs a statement again on the cursor it ran it on before, on that connection (psycopg
    # keeps the cursor's dumpers): each call still binds its own values, whatever their types, a failed
    # call leaves the next one unharmed, and a cursor holding a result of many rows is not kept.
    async with open_store(postgres_url, pool_size=1) as store:
        backend = store.backend
        assert isinstance(backend, postgres.PostgresBackend)
        echo = select(cast(bindparam("p_x", type_=String), Integer).label("n"), bindparam("p_y", type_=JSON).label("y"))
        series = select(func.generate_series(1, bindparam("p_n", type_=Integer)).label("n"))
        assert await backend.read(echo, {"p_x": "1", "p_y": {"a": 1}}) == [{"n": 1, "y": {"a": 1}}]
        assert await backend.read(echo, {"p_x": "2", "p_y": None}) == [{"n": 2, "y": None}]
        with pytest.raises(psycopg.errors.InvalidTextRepresentation):
            await backend.read(echo, {"p_x": "two", "p_y": [1]})
        assert await backend.write([echo], {"p_x": "3", "p_y": ["b"]}) == [{"n": 3, "y": ["b"]}]
        assert await backend.read(series, {"p_n": 3}) == [{"n": 1}, {"n": 2}, {"n": 3}]
        async with backend.pool.connection() as conn:  # the pool's one connection
            assert isinstance(conn, postgres.PooledConnection)
            kept = {sql: cursor.pgresult.ntuples if cursor.pgresult else 0 for sql, cursor in conn.cursors.items()}
        assert sorted(kept.values()) == [1]  # the echo's, with its one row; not the series' three

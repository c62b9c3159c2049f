"""The store's psycopg pool: a connection given back is ready for the next caller at once, and one that
sat idle is probed before it is handed out again."""

from __future__ import annotations

import os
import socket
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool
from sqlalchemy import JSON, Integer, String, bindparam, cast, func, select

from checkpoints.backends import postgres
from checkpoints.backends.postgres import open_pool
from checkpoints.database import OutageMark
from checkpoints.runs import LISTEN_RUNS
from checkpoints.store import open_store
from checkpoints.url import distributed_target, parse_store_url
from graphs.runtime import JourneyRuntime
from server.runs.watch import _listen
from tests.test_instance_locks import silencing_proxy


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


def tcp_settings(conn: psycopg.AsyncConnection[Any]) -> dict[str, int]:
    """The TCP keepalive settings of ``conn``'s socket, as the kernel holds them."""
    with socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:
        return {
            "keepalive": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
            "idle": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
            "interval": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
            "count": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
            "user_timeout_ms": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
        }


NOTICED = {"keepalive": 1, "idle": 10, "interval": 5, "count": 3, "user_timeout_ms": 25_000}


async def test_every_connection_to_postgresql_notices_a_path_gone_silent(postgres_url: str) -> None:
    """A path to the server that dies without a word (a failover, a NAT's dropped mapping) left a pooled
    connection's statement waiting for its answer for the kernel's retransmissions (about 15 minutes: a request
    or a run stuck that long) or, with nothing sent, for ever: the pools' connections, the engine's and the run
    notifications' set no TCP keepalives (the kernel's 2 hours) and no ``tcp_user_timeout``. Each connection
    now gives up a silent path after about 25 s, as the lock session's server does; a URL that sets its own
    keepalives keeps them."""
    async with silencing_proxy(postgres_url) as (behind, _go_silent):
        async with JourneyRuntime.open(behind) as runtime:
            assert runtime.store.pg_pool is not None
            async with runtime.store.pg_pool.connection() as pooled:
                assert tcp_settings(pooled) == NOTICED
            async with runtime.store.backend.engine.connect() as engine_conn:
                raw = (await engine_conn.get_raw_connection()).driver_connection
                assert raw is not None and tcp_settings(raw) == NOTICED
            async with runtime.engine.exclusive("journey-k"):
                locks: Any = runtime.store.locks
                assert tcp_settings(locks._conn) == NOTICED
        notified = await _listen(distributed_target(behind), LISTEN_RUNS)
        try:
            assert tcp_settings(notified) == NOTICED
        finally:
            await notified.close()
        own = parse_store_url(f"{behind}?keepalives_idle=60")
        async with await psycopg.AsyncConnection.connect(own.target) as conn:
            assert tcp_settings(conn) == {**NOTICED, "idle": 60}

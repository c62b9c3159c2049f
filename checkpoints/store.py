"""The persistence seam: one object that owns the checkpointer and our tables for a store URL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from psycopg_pool import AsyncConnectionPool
from sqlalchemy.ext.asyncio import AsyncEngine

from checkpoints.clock import Clock, SystemClock
from checkpoints.database import create_engine_for
from checkpoints.events import EventLog, EventWriter
from checkpoints.index import JourneyIndex
from checkpoints.locks import DEFAULT_LOCK_TIMEOUT_S, InstanceLocks, open_instance_locks
from checkpoints.migrations import migrate
from checkpoints.pg_events import PgEventStatements
from checkpoints.savers import open_saver
from checkpoints.sqlite_events import SqliteEventStatements
from checkpoints.url import StoreURL, parse_store_url


@dataclass(frozen=True, slots=True)
class Store:
    """Everything opened for one store URL: the checkpointer, the engine, the event log, the index and locks."""

    url: StoreURL
    saver: BaseCheckpointSaver[str]
    engine: AsyncEngine
    events: EventLog
    index: JourneyIndex
    clock: Clock
    locks: InstanceLocks  # one writer per journey instance across processes (JourneyEngine.exclusive)
    # PostgreSQL: the psycopg pool of autocommit connections the hot paths use instead of SQLAlchemy.
    pg_pool: AsyncConnectionPool[Any] | None = None


@asynccontextmanager
async def open_store(
    url: str, *, clock: Clock | None = None, pool_size: int = 10, lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S
) -> AsyncIterator[Store]:
    """Open the checkpointer and our tables on the database ``url`` names; migrate; close on exit.

    ``lock_timeout``: how many seconds a call waits for a journey another call is changing before it
    gets ``ConcurrentUpdateError``.
    """
    parsed = parse_store_url(url)
    clock = clock or SystemClock()
    engine = create_engine_for(parsed, pool_size=pool_size)
    try:
        await migrate(engine)
        async with (
            open_saver(parsed, pool_size=pool_size) as saver,
            _pg_statements(parsed, pool_size) as pg,
            open_instance_locks(parsed, wait_limit=lock_timeout) as locks,
        ):
            writer: EventWriter | None = pg
            if isinstance(saver, AsyncSqliteSaver):
                writer = SqliteEventStatements(saver.conn, saver.lock, engine.dialect)
            events = EventLog(engine, clock, writer=writer, pg=pg)
            index = JourneyIndex(engine, clock, writer=writer, pg=pg)
            yield Store(parsed, saver, engine, events, index, clock, locks, pg.pool if pg is not None else None)
    finally:
        await engine.dispose()


@asynccontextmanager
async def _pg_statements(url: StoreURL, pool_size: int) -> AsyncIterator[PgEventStatements | None]:
    """On PostgreSQL, a psycopg pool of its own for the event log's hot path (not the saver's, so that
    appends never wait behind checkpoint writes)."""
    if url.kind != "postgres":
        yield None
        return
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        url.target, min_size=1, max_size=pool_size, open=False, kwargs={"autocommit": True}
    )
    async with pool:
        yield PgEventStatements(pool)

"""The persistence seam: one object that owns the checkpointer and our tables for a store URL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from langgraph.store.base import BaseStore, IndexConfig
from psycopg_pool import AsyncConnectionPool
from sqlalchemy.exc import DatabaseError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from checkpoints.backends.base import Backend
from checkpoints.backends.postgres import PostgresBackend, open_pool
from checkpoints.backends.sqlite import SqliteBackend
from checkpoints.clock import Clock, SystemClock
from checkpoints.database import create_engine_for
from checkpoints.encryption import Sealer, check_key, configured_key
from checkpoints.events import EventLog
from checkpoints.guards import Circuit, CircuitBreakers, RateLimits
from checkpoints.index import JourneyIndex
from checkpoints.locks import DEFAULT_LOCK_TIMEOUT_S, InstanceLocks, open_instance_locks
from checkpoints.savers import open_graph_store, open_saver
from checkpoints.schema.migrations import migrate
from checkpoints.url import StoreURL, opened_target, parse_store_url, unavailable


@dataclass(frozen=True, slots=True)
class Store:
    """A store URL opened: the official checkpointer, our tables behind their backend, and the locks."""

    url: StoreURL
    saver: BaseCheckpointSaver[str]
    engine: AsyncEngine
    events: EventLog
    index: JourneyIndex
    clock: Clock
    locks: InstanceLocks  # one writer per journey instance across processes (JourneyEngine.exclusive)
    backend: Backend  # every query of our tables runs through it
    breakers: CircuitBreakers  # the circuit of every intent, shared by every process on the store
    rate_limits: RateLimits  # the calls-per-second bucket of every intent, shared likewise
    # LangGraph's official BaseStore on the same database: the long-term memory every compiled graph gets
    # (nodes reach it with get_store()), served on the /store endpoints.
    graph_store: BaseStore
    # PostgreSQL: the process's one psycopg pool (saver, hot paths, queue). None elsewhere.
    pg_pool: AsyncConnectionPool[Any] | None = None
    sealer: Sealer = field(
        default_factory=lambda: Sealer(None)
    )  # seals the JSON our tables keep for callers (run inputs) when keyed

    async def circuits(self) -> list[Circuit]:
        """Every intent's circuit as the database holds it (state, counts, when it last changed)."""
        return await self.breakers.circuits()


@asynccontextmanager
async def _migrated(url: str, pool_size: int) -> AsyncIterator[tuple[StoreURL, AsyncEngine]]:
    """The database ``url`` names, with its schema brought up to date, and our tables' engine on it."""
    async with opened_target(parse_store_url(url)) as parsed:
        # Off the event loop: SQLAlchemy resolves the SQLite path on the file system (blocking).
        engine = await asyncio.to_thread(create_engine_for, parsed, pool_size=pool_size)
        try:
            try:  # the first connection (kept in the pool for the migration): a database not there says so
                async with engine.connect():
                    pass
            except (OperationalError, InterfaceError, DatabaseError) as exc:  # DatabaseError: a file not SQLite's
                raise unavailable(parsed.raw, exc) from exc
            await migrate(engine)
            yield parsed, engine
        finally:
            await engine.dispose()


async def check_store_key(url: str, encryption_key: bytes | str | None = None) -> None:
    """Refuse as :func:`open_store` would (:class:`EncryptionKeyError`) a key that is not the database's, or
    none for an encrypted one: a command checks it before it serves, to say so instead of failing at start."""
    sealer = Sealer(configured_key(encryption_key))
    async with _migrated(url, pool_size=1) as (_parsed, engine):
        await check_key(engine, sealer, SystemClock().now())


@asynccontextmanager
async def open_store(
    url: str,
    *,
    clock: Clock | None = None,
    pool_size: int = 10,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S,
    encryption_key: bytes | str | None = None,
    store_index: IndexConfig | None = None,
) -> AsyncIterator[Store]:
    """Open the checkpointer and our tables on the database ``url`` names; migrate; close on exit.

    On PostgreSQL the process holds at most ``2 * pool_size + 1`` connections of the store: the shared
    psycopg pool (``pool_size``), SQLAlchemy's pool (``pool_size``) and the instance locks' one.

    ``lock_timeout``: how many seconds a call waits for a journey another call is changing before it
    gets ``ConcurrentUpdateError``. ``store_index`` turns on the graph store's vector search (off by default).

    ``encryption_key`` (else ``$JOURNEYS_ENCRYPTION_KEY``): checkpoints and sealed records are encrypted
    at rest (:mod:`checkpoints.encryption`).
    """
    clock = clock or SystemClock()
    key = configured_key(encryption_key)
    async with AsyncExitStack() as stack:
        parsed, engine = await stack.enter_async_context(_migrated(url, pool_size))
        sealer = Sealer(key)
        await check_key(engine, sealer, clock.now())  # before anything reads what it could not open
        pool = await stack.enter_async_context(open_pool(parsed, pool_size)) if parsed.kind == "postgres" else None
        saver = await stack.enter_async_context(open_saver(parsed, pool=pool, encryption_key=key))
        locks = await stack.enter_async_context(open_instance_locks(parsed, wait_limit=lock_timeout))
        graph_store = await stack.enter_async_context(open_graph_store(parsed, pool=pool, index=store_index))
        backend: Backend
        if pool is not None:
            backend = PostgresBackend(engine, pool)
        else:
            assert isinstance(saver, AsyncSqliteSaver)
            backend = SqliteBackend(engine, saver.conn, saver.lock)
        events = EventLog(backend, clock, sealer)
        index = JourneyIndex(backend, clock, sealer)
        breakers, rate_limits = CircuitBreakers(backend, clock), RateLimits(backend, clock)
        try:
            yield Store(
                parsed,
                saver,
                engine,
                events,
                index,
                clock,
                locks,
                backend,
                breakers,
                rate_limits,
                graph_store,
                pool,
                sealer,
            )
        finally:  # the writes its cancelled callers left going on land before the store's connections close
            await events.close()

"""The SQLAlchemy engine for our tables, on the same database as the checkpointer."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool

from checkpoints.url import StoreURL


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets the checkpointer's connection and ours write the same file; busy_timeout makes the
    # second writer wait instead of failing with "database is locked".
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def create_engine_for(url: StoreURL, *, pool_size: int = 10) -> AsyncEngine:
    if url.kind == "memory":
        # One in-memory database for the life of the engine, so one connection, kept in a pool of one:
        # each checkout owns it until returned. (A StaticPool hands the same connection to concurrent
        # checkouts, whose transactions then commit or roll back each other's writes.)
        return create_async_engine(
            url.sqlalchemy_url,
            poolclass=AsyncAdaptedQueuePool,
            pool_size=1,
            max_overflow=0,
            connect_args={"check_same_thread": False},
        )
    if url.kind == "sqlite":
        engine = create_async_engine(url.sqlalchemy_url, pool_size=1, max_overflow=0)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(url.sqlalchemy_url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=False)

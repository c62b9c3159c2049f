"""The official LangGraph checkpointers, opened by store URL. We never write a saver of our own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import cast

import aiosqlite
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from checkpoints.url import StoreURL


def strict_serializer() -> JsonPlusSerializer:
    """Journey state holds only JSON-like values, so msgpack may revive no custom classes."""
    return JsonPlusSerializer(allowed_msgpack_modules=None)


@asynccontextmanager
async def open_saver(url: StoreURL, *, pool_size: int = 10) -> AsyncIterator[BaseCheckpointSaver[str]]:
    """Open the saver for ``url``, run its ``setup()`` once, and close it on exit."""
    serde = strict_serializer()
    if url.kind == "memory":
        yield InMemorySaver(serde=serde)
        return
    if url.kind == "sqlite":
        conn = await aiosqlite.connect(url.target)
        try:
            await conn.execute("PRAGMA journal_mode=WAL")
            await conn.execute("PRAGMA busy_timeout=30000")
            saver = AsyncSqliteSaver(conn, serde=serde)
            await saver.setup()
            yield saver
        finally:
            await conn.close()
        return
    # A pool as the upstream docs build it: autocommit, no server-side prepares (poolers), dict rows.
    async with AsyncConnectionPool(
        url.target,
        min_size=1,
        max_size=pool_size,
        open=False,
        kwargs={"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row},
    ) as pool:
        pg_saver = AsyncPostgresSaver(pool, serde=serde)  # type: ignore[arg-type]
        unlock_pooled(pg_saver, pool_size)
        await pg_saver.setup()
        yield pg_saver


def unlock_pooled(saver: AsyncPostgresSaver, pool_size: int) -> None:
    """Let a pooled saver run as many operations at once as its pool has connections.

    ``AsyncPostgresSaver`` guards every operation with one ``asyncio.Lock``, which a single shared
    connection needs but a pool does not (each operation checks out a connection of its own), so on
    a pool it makes one lane of the whole process: upstream issue langchain-ai/langgraph#7259, fixed
    the same way by the open PR #7269. The workaround discussed there swaps the lock for a semaphore
    the size of the pool; the saver's code is unchanged.
    """
    saver.lock = cast(asyncio.Lock, asyncio.Semaphore(pool_size))

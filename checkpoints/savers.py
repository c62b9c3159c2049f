"""The official LangGraph checkpointers, opened by store URL. We never write a saver of our own."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

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
        await pg_saver.setup()
        yield pg_saver

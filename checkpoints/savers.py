"""The official LangGraph checkpointers, opened by store URL. We never write a saver of our own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, cast

import aiosqlite
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from checkpoints.backends.postgres import open_pool
from checkpoints.database import sqlite_pragmas
from checkpoints.encryption import checkpoint_serializer
from checkpoints.url import StoreURL, opened_target


@asynccontextmanager
async def open_saver(
    url: StoreURL,
    *,
    pool_size: int = 10,
    pool: AsyncConnectionPool[Any] | None = None,
    encryption_key: bytes | None = None,
) -> AsyncIterator[BaseCheckpointSaver[str]]:
    """Open the saver for ``url``, run its ``setup()`` (one process at a time), and close it on exit.

    ``memory://`` and ``sqlite://`` both get the official SQLite saver (``memory://`` on a throwaway
    file). On PostgreSQL the saver uses ``pool`` (the store's shared pool), or a pool of its own. With an
    ``encryption_key``, checkpoints are encrypted (:mod:`checkpoints.encryption`)."""
    serde = checkpoint_serializer(encryption_key)
    async with AsyncExitStack() as stack:
        if url.kind != "postgres":
            target = stack.enter_context(opened_target(url)).target
            conn = await aiosqlite.connect(target)
            stack.push_async_callback(conn.close)
            for pragma in sqlite_pragmas(url):
                await conn.execute(pragma)
            saver = AsyncSqliteSaver(conn, serde=serde)
            await saver.setup()
            yield saver
            return
        if pool is None:
            pool = await stack.enter_async_context(open_pool(url, pool_size))
        async with pool.connection() as conn:
            await _set_up_in_turn(AsyncPostgresSaver(conn, serde=serde))
        pg_saver = AsyncPostgresSaver(pool, serde=serde)
        unlock_pooled(pg_saver, pool.max_size)
        yield pg_saver


# Arbitrary and stable, apart from our migrations' lock: the saver's migrations hold it.
_SAVER_SETUP_LOCK = 7_310_512_002


async def _set_up_in_turn(saver: AsyncPostgresSaver) -> None:
    """Run the saver's ``setup()`` while no other process runs it.

    Processes starting together on a new database would race its ``CREATE TABLE IF NOT EXISTS``
    (PostgreSQL answers "type ... already exists"). The lock is taken by polling, not by waiting in
    ``pg_advisory_lock``: the holder's ``CREATE INDEX CONCURRENTLY`` waits for every older snapshot to
    end, and a waiter blocked inside a statement holds one, which PostgreSQL reports as a deadlock."""
    conn = saver.conn
    assert isinstance(conn, AsyncConnection)
    while True:
        row = await (await conn.execute("SELECT pg_try_advisory_lock(%s) AS ok", (_SAVER_SETUP_LOCK,))).fetchone()
        if row is not None and row["ok"]:
            break
        await asyncio.sleep(0.05)
    try:
        await saver.setup()
    finally:
        await conn.execute("SELECT pg_advisory_unlock(%s)", (_SAVER_SETUP_LOCK,))


def unlock_pooled(saver: AsyncPostgresSaver, pool_size: int) -> None:
    """Let a pooled saver run as many operations at once as its pool has connections.

    ``AsyncPostgresSaver`` guards every operation with one ``asyncio.Lock``, which a single shared
    connection needs but a pool does not (each operation checks out a connection of its own), so on
    a pool it makes one lane of the whole process: upstream issue langchain-ai/langgraph#7259, fixed
    the same way by the open PR #7269. The workaround discussed there swaps the lock for a semaphore
    the size of the pool; the saver's code is unchanged.
    """
    saver.lock = cast(asyncio.Lock, asyncio.Semaphore(pool_size))


async def copy_checkpoints(saver: BaseCheckpointSaver[str], source: str, target: str) -> int:
    """Copy every checkpoint of thread ``source`` (with its pending writes) to thread ``target``, oldest
    first, through the saver's own API (the official savers do not implement ``acopy_thread``); how many."""
    found = [t async for t in saver.alist({"configurable": {"thread_id": source}})]
    for saved in reversed(found):  # alist answers newest first; each checkpoint names its parent
        configurable = saved.config["configurable"]
        parent = (saved.parent_config or {}).get("configurable", {}).get("checkpoint_id")
        ns = configurable.get("checkpoint_ns", "")
        into: Any = {"configurable": {"thread_id": target, "checkpoint_ns": ns, "checkpoint_id": parent}}
        written = await saver.aput(into, saved.checkpoint, saved.metadata, saved.checkpoint["channel_versions"])
        by_task: dict[str, list[tuple[str, Any]]] = {}
        for task_id, channel, value in saved.pending_writes or ():
            by_task.setdefault(task_id, []).append((channel, value))
        for task_id, writes in by_task.items():
            await saver.aput_writes(written, writes, task_id)
    return len(found)

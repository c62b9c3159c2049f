"""Run queues: the one interface the server hands runs to, and its embedded and procrastinate
implementations (see :mod:`server.queues.base`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from server.queues.base import RunQueue
from server.queues.embedded import EmbeddedQueue
from server.runs.executor import RunExecutor
from server.runs.watch import RunWatch
from server.settings import Settings

__all__ = ["EmbeddedQueue", "RunQueue", "open_queue"]


@asynccontextmanager
async def open_queue(settings: Settings, executor: RunExecutor, watch: RunWatch) -> AsyncIterator[RunQueue]:
    """The queue ``settings.execution`` chooses, open for the block."""
    if settings.execution == "embedded":
        async with EmbeddedQueue.open(
            executor,
            concurrency=settings.concurrency,
            timers=settings.run_timers,
            retention_every=settings.retention_every,
        ) as embedded:
            yield embedded
        return
    from server.queues.procrastinate import ProcrastinateQueue  # procrastinate only where it is used

    pool = executor.runtime.store.pg_pool
    opened = ProcrastinateQueue.open(settings.database_url, watch, pool=pool, poll=settings.poll_interval)
    async with opened as distributed:
        yield distributed

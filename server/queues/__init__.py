"""Run queues: the one interface the server hands runs to, and its embedded and procrastinate
implementations (see :mod:`server.queues.base`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import structlog

from checkpoints.background import in_background
from server.queues.base import RunQueue
from server.queues.embedded import EmbeddedQueue
from server.runs.executor import RunExecutor
from server.runs.watch import RunWatch
from server.settings import Settings

__all__ = ["EmbeddedQueue", "RunQueue", "open_queue"]
log = structlog.get_logger("journeys.server")


@asynccontextmanager
async def open_queue(settings: Settings, executor: RunExecutor, watch: RunWatch) -> AsyncIterator[RunQueue]:
    """The queue ``settings.execution`` chooses, open for the block; meanwhile, in the background, the journeys
    a killed process left mid-step outside any run are run on (:func:`run_on_left_journeys`)."""
    async with AsyncExitStack() as stack:
        if settings.execution == "embedded":
            queue: RunQueue = await stack.enter_async_context(
                EmbeddedQueue.open(
                    executor,
                    concurrency=settings.concurrency,
                    timers=settings.run_timers,
                    retention_every=settings.retention_every,
                )
            )
        else:
            from server.queues.procrastinate import ProcrastinateQueue  # procrastinate only where it is used

            pool = executor.runtime.store.pg_pool
            opened = ProcrastinateQueue.open(settings.database_url, watch, pool=pool, poll=settings.poll_interval)
            queue = await stack.enter_async_context(opened)
        await stack.enter_async_context(in_background(run_on_left_journeys(executor), "recover-journeys"))
        yield queue


async def run_on_left_journeys(executor: RunExecutor) -> None:
    """Run on the journeys a killed process left mid-step outside any run, as ``runtime.recover`` does: a process
    instance started, a task answered or a step advanced in a request (the API runs those itself, in embedded and
    distributed mode alike) stood ``in_progress`` with no step running until someone read it over the API. Those
    with a run pending or running are left to it (an embedded queue takes them up as it opens, a worker's reaper
    in distributed mode), and those another process holds to that process."""
    runs = executor.runs

    async def driven(instance_id: str) -> bool:
        return bool(await runs.active_of_instance(instance_id))

    try:
        resumed = await executor.runtime.recover(leave=driven)
    except Exception as exc:  # the server serves on: a read or an answer of each journey runs it on too
        log.error("could not run on the journeys a previous process left mid-step", error=repr(exc))
        return
    if resumed:
        log.info("journeys a previous process left mid-step were run on", count=len(resumed), instances=resumed)

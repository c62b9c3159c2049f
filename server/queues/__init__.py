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
    instance started, a task answered or a step advanced in a request stood ``in_progress`` with no step running
    until someone read it over the API. Those with a run pending or running are left to it (an embedded queue takes
    them up as it opens, a worker's reaper in distributed mode), and those another process holds to that process.
    In distributed mode a process instance's work is handed to the workers (``processes.hand_off``), who hold its
    agents; the journeys of other patterns are run on here."""
    runs, runtime = executor.runs, executor.runtime

    async def driven(instance_id: str) -> bool:
        if await runs.active_of_instance(instance_id):
            return True
        hand_off = runtime.processes.hand_off  # distributed mode: a process's work is the workers'
        instance = await runtime.store.index.get_instance(instance_id) if hand_off is not None else None
        if hand_off is not None and instance is not None and instance.pattern == "process":
            await hand_off(instance_id)
            return True
        return False

    try:
        resumed = await executor.runtime.recover(leave=driven)
    except Exception as exc:  # the server serves on: a read or an answer of each journey runs it on too
        log.error("could not run on the journeys a previous process left mid-step", error=repr(exc))
        return
    if resumed:
        log.info("journeys a previous process left mid-step were run on", count=len(resumed), instances=resumed)

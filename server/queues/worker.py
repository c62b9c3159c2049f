"""``journeys worker``: takes runs and timers from PostgreSQL through procrastinate.

Run as many as you like, on as many machines: procrastinate's per-thread ``lock`` keeps one run per
journey thread at a time. A worker that dies stops heart-beating; the reaper in every surviving worker
retries its jobs, and the executor finishes those journeys without re-executing completed steps.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any

import procrastinate
import structlog
from langgraph.types import Durability
from procrastinate.signals import on_stop

from agents.guide_model import load_guide_model
from checkpoints.database import lost_database
from checkpoints.errors import DatabaseUnavailableError, JourneyError
from checkpoints.locks import DEFAULT_LOCK_TIMEOUT_S, held_elsewhere
from checkpoints.retention import RetentionPolicy
from checkpoints.runs import TTL_SWEEP_CRON
from checkpoints.schema.queue import RETRY_STALLED, TELL_RETRIED
from graphs.runtime import JourneyRuntime
from server.crons import CronService
from server.heap import freeze_startup_heap
from server.plugins import plugin_registry
from server.queues.procrastinate import (
    QUEUE,
    RETENTION_CRON,
    RETENTION_TASK,
    RETRY_TASK,
    RUN_JOBS,
    RUN_TASK,
    THREAD_TTL_TASK,
    TIMER_TASK,
    RunJobs,
    build_app,
    cancelled_again,
    enqueuer,
    ensure_schema,
    handed_over,
    retry_notice,
)
from server.runs.executor import RunExecutor
from server.runs.store import RunRow, RunStore
from server.thread_ends import ThreadTTLSweep

log = structlog.get_logger("journeys.worker")


async def outlasting_the_database(
    work: Callable[[], Awaitable[None]], ping: Callable[[], Awaitable[None]], *, longest_wait: float = 30.0
) -> None:
    """Run ``work`` (procrastinate's worker loop, its signal handlers off) until cancelled (a stop signal), and
    again once the database answers ``ping`` each time it fails because the database went away (a restart,
    a failover): pinged after 1 s, then twice as long each time up to ``longest_wait``. procrastinate's
    worker stops at the first database error, and returns as if asked to stop when one of its side tasks
    fails (its listening connection ended, and no new one to be had); a ``journeys worker`` keeps its
    process, its store and its pools, and takes jobs again once PostgreSQL answers (the jobs it was running
    are retried as stalled ones). The outage and its end are logged as warnings: an operator sees both at
    the worker's default log level (each try between them only with -v)."""
    while True:
        try:
            await work()
            lost = DatabaseUnavailableError("the worker lost a connection to the database it could not renew")
        except Exception as exc:
            found = lost_database(exc)
            if found is None:
                raise
            lost = found
        away_since, wait = time.monotonic(), 1.0
        log.warning("database unavailable: jobs are taken again once it answers", error=lost.message, retry_in=wait)
        while True:
            await asyncio.sleep(wait)
            wait = min(wait * 2, longest_wait)
            try:
                await ping()
                break
            except Exception as exc:
                still = lost_database(exc)
                if still is None:
                    raise
                log.info("database still unavailable", error=still.message, retry_in=wait)  # -v: one line per try
        log.warning("database available again: taking jobs", away_s=round(time.monotonic() - away_since, 1))


async def retried(runtime: JourneyRuntime, instance_id: str, by: str | None) -> dict[str, Any]:
    """An operator's retry handed to this worker (``journeys instances retry``), run by ``runtime.retry`` as the
    command would run it: ``{"status": ...}``, or ``{"error": ...}`` when the retry was refused or its step failed
    again (logged as the journey's failure already). An outage, or a journey another process kept past the lock
    timeout, is raised: the job is taken again later (:class:`OutageRetry`)."""
    try:
        answered = await runtime.retry(instance_id, by=by)
    except JourneyError as exc:
        if held_elsewhere(exc) or lost_database(exc) is not None:
            raise
        log.info("an operator's retry ended in error", instance_id=instance_id, error=exc.message)
        return {"error": {"message": exc.message, "category": exc.category, "code": exc.code}}
    log.info("an operator's retry ran", instance_id=instance_id, status=answered["status"])
    return {"status": answered["status"]}


async def reap_stalled(app: procrastinate.App, stalled_after: float) -> None:
    """Retry the jobs of workers whose heartbeat stopped (they died mid-run), each only if it is still theirs
    (:data:`~checkpoints.schema.queue.RETRY_STALLED`)."""
    while True:
        await asyncio.sleep(stalled_after / 2)
        try:
            for job in await app.connector.execute_query_all_async(RETRY_STALLED, seconds=stalled_after):
                log.warning(
                    "retrying a stalled job",
                    job_id=job["id"],
                    task=job["task_name"],
                    run_id=job["run_id"],  # a run's job; an operator's retry names its journey instead
                    instance_id=job["instance_id"],
                    worker_id=job["worker_id"],  # the worker whose heartbeat stopped, and for how long
                    silent_s=None if job["silent_s"] is None else round(job["silent_s"], 1),
                )
        except Exception as exc:  # a database hiccup: try again next round
            if lost_database(exc) is None:  # an outage is logged once, by outlasting_the_database
                log.warning("stalled-job check failed", error=repr(exc))


async def heartbeat_while_stopping(jobs: RunJobs, interval: float) -> None:
    """Heart-beat for this worker every ``interval`` seconds until cancelled, from its stop signal on:
    procrastinate stops its own heartbeat as the worker stops, then waits for the runs under way (the grace
    period), and other workers' reapers would take those for a dead worker's and run them again meanwhile."""
    while True:
        if (worker_id := jobs.worker_id) is not None:
            try:
                await jobs.update_heartbeat(worker_id)
            except Exception as exc:  # the database away: its reapers see a late heartbeat, as for a dead worker
                log.info("heartbeat failed while stopping", error=repr(exc))
        await asyncio.sleep(interval)


async def run_worker(
    database_url: str,
    *,
    concurrency: int = 8,
    heartbeat: float = 2.0,
    stalled_after: float = 10.0,
    plugin: str | None = None,
    timers: bool = True,
    durability: Durability = "exit",
    guide_model: str | None = None,
    retention: RetentionPolicy | None = None,
    retention_cron: str | None = RETENTION_CRON,
    thread_ttl_cron: str | None = TTL_SWEEP_CRON,
    shutdown_grace: float = 10.0,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S,
) -> None:
    """Take runs, timers, retention passes (``retention`` policy, on ``retention_cron``; None: no
    passes in this worker) and thread TTL sweeps (on ``thread_ttl_cron``; None: none) from the queue until
    cancelled. On a stop signal, take no more and give the runs
    under way ``shutdown_grace`` seconds to end; those still under way then are handed to other workers.
    ``lock_timeout``: seconds a run waits for its journey while another process works on it."""
    # Workers execute the runs in distributed mode, guide runs included: they need the server's guide model.
    guide = load_guide_model(guide_model) if guide_model else None
    ensure_schema(database_url)
    registry = plugin_registry(plugin)
    async with JourneyRuntime.open(
        database_url,
        agents=registry,
        pool_size=max(4, concurrency),
        guide_model=guide,
        retention=retention,
        lock_timeout=lock_timeout,
    ) as runtime:
        runs = RunStore(runtime.store.backend, runtime.store.clock, runtime.store.sealer, jobs=RUN_JOBS)
        executor = RunExecutor(runtime, runs, durability=durability)
        sweep = ThreadTTLSweep(runtime, runs)

        async def execute(run_id: str) -> None:
            # procrastinate took the job at its due time (schedule_at), claiming its run as it did
            await executor.execute(run_id, due=True, taken=jobs.taken(run_id))

        async def fire_timers() -> None:
            await runtime.processes.scheduler.run_due()

        async def apply_retention() -> None:
            await runtime.retention.run()

        async def sweep_threads() -> None:
            await sweep.run()

        async def retry_instance(instance_id: str, by: str | None, reply: str) -> None:
            # The command that handed it listens (retry_in_workers): told how it ended, even refused.
            outcome = await retried(runtime, instance_id, by)
            await app.connector.execute_query_async(TELL_RETRIED, notice=retry_notice(reply, outcome))

        handlers = {
            RUN_TASK: execute,
            RETENTION_TASK: apply_retention,
            THREAD_TTL_TASK: sweep_threads,
            RETRY_TASK: retry_instance,
            **({TIMER_TASK: fire_timers} if timers else {}),
        }
        app = build_app(database_url, handlers, retention_cron=retention_cron, thread_ttl_cron=thread_ttl_cron)
        app.job_manager = jobs = RunJobs(app.connector, runs)

        # A cron's run is deferred as a job in the transaction creating it, as the API does.
        async def deferred(run: RunRow) -> None:
            """Its job was deferred with it: nothing left to hand over."""

        CronService(runtime, executor.runs).serve_firings(lambda: enqueuer(app), deferred)
        async with app.open_async(pool=runtime.store.pg_pool):  # the store's pool: connections stay bounded
            freeze_startup_heap()
            reaper = asyncio.create_task(reap_stalled(app, stalled_after))
            work = asyncio.create_task(
                outlasting_the_database(
                    lambda: app.run_worker_async(
                        queues=[QUEUE],
                        concurrency=concurrency,
                        update_heartbeat_interval=heartbeat,
                        stalled_worker_timeout=stalled_after,
                        delete_jobs="successful",
                        fetch_job_polling_interval=0.5,
                        install_signal_handlers=False,  # ours: procrastinate's stop looks like a side task's failure
                        shutdown_graceful_timeout=shutdown_grace,
                        worker_middleware=[handed_over, cancelled_again(executor)],
                    ),
                    runtime.store.backend.ping,
                )
            )

            beating: list[asyncio.Task[None]] = []

            def stop() -> None:
                work.cancel()
                beating.append(asyncio.create_task(heartbeat_while_stopping(jobs, heartbeat)))

            try:
                # A stop signal cancels the work: procrastinate's worker then stops as on its own signal handlers
                # (its running jobs get the grace period, then are handed over: see handed_over).
                with on_stop(stop), suppress(asyncio.CancelledError):
                    await work
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise asyncio.CancelledError  # cancelled from outside, not stopped by a signal
            finally:
                for task in [reaper, *beating]:
                    task.cancel()
                    with suppress(asyncio.CancelledError):
                        await task

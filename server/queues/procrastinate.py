"""Distributed execution on procrastinate: runs and timers as jobs in PostgreSQL.

The API process defers one ``execute_run`` job per run with ``lock=<thread id>``, so procrastinate runs
at most one run per thread at a time, in order. ``journeys worker`` processes take the jobs; a job whose
worker died (no heartbeat) is retried by the surviving workers' reaper, and the run executor then finishes
the journey without re-executing completed steps. Timers fire through a periodic ``fire_timers`` job, and
finished journeys' checkpoints are pruned by a periodic ``retention`` job (:mod:`checkpoints.retention`).
"""

from __future__ import annotations

import asyncio
import functools
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import procrastinate
import psycopg
import structlog
from procrastinate.connector import BaseConnector
from procrastinate.exceptions import ConnectorException
from procrastinate.job_context import AbortReason, JobContext
from procrastinate.jobs import Job, Notification, Status
from procrastinate.manager import JobManager, NotificationCallback
from procrastinate.middleware import AsyncCallNext
from procrastinate.retry import BaseRetryStrategy, RetryDecision
from procrastinate.types import JSONDict
from procrastinate.worker import Worker
from psycopg_pool import AsyncConnectionPool

from checkpoints.backends.postgres import OutagePool, autocommit, note_return, probe_if_idle
from checkpoints.database import conflicted, lost_database, unreachable, violated
from checkpoints.locks import held_elsewhere
from checkpoints.runs import QueueJobs
from checkpoints.schema.queue import (
    DEFER_JOB,
    END_JOB,
    FETCH_JOB,
    LISTEN_RETRIES,
    QUEUE_INSTALLED,
    WORKERS_SERVING,
    migrate_queue_schema,
)
from checkpoints.url import distributed_target, unavailable
from server.problems import WorkerStoppedError
from server.queues.base import ElsewhereQueue, RunQueue, cancel_run
from server.runs.executor import RunExecutor, Taken
from server.runs.store import Enqueue, RunRow, RunStore
from server.runs.watch import RunWatch, listening
from server.thread_ends import thread_control_key

if TYPE_CHECKING:
    from graphs.runtime import JourneyRuntime

RUN_TASK = "journeys.execute_run"
TIMER_TASK = "journeys.fire_timers"
RETENTION_TASK = "journeys.retention"
RETRY_TASK = "journeys.retry_instance"  # an operator's retry of a failed journey (`journeys instances retry`)
RETENTION_CRON = "*/10 * * * *"  # a retention pass every ten minutes (procrastinate cron, seconds optional)
THREAD_TTL_TASK = "journeys.thread_ttl"  # a sweep of the threads whose time-to-live has passed (TTL_SWEEP_CRON)
QUEUE = "journeys"
log = structlog.get_logger("journeys.worker")
# A job's worker must be registered: a live worker another pruned as stalled (its heartbeat late) breaks it.
WORKER_REGISTERED = "procrastinate_jobs_worker_id_fkey"
# How a worker's run store takes runs with their jobs (see RunJobs).
RUN_JOBS = QueueJobs(FETCH_JOB, RUN_TASK, END_JOB)
# How procrastinate refuses to end or retry a job that is no longer under way (its functions' RAISE).
JOB_GONE = "Job was not found"
ABORT_POLL_S = 1.0  # how often a run's job is looked at for procrastinate's abort of it (see cancelled_again)
STARTED_PASSES = 100  # loop passes an abort waits for its job's task to start (one or two do: see RunJobs._started)


def ended_elsewhere(error: BaseException) -> bool:
    """Whether ``error`` is procrastinate refusing to end or retry a job no longer under way: another worker
    ended it (a run taken again from a worker whose heartbeat was late is ended by whichever of the two ends it
    first), or a reaper retried it already. A race that ends well, not a fault."""
    cause = error.__cause__ if isinstance(error, ConnectorException) else None
    return isinstance(cause, psycopg.errors.RaiseException) and str(cause).startswith(JOB_GONE)


def conninfo(database_url: str) -> str:
    return distributed_target(database_url)


def _pool(**options: Any) -> AsyncConnectionPool[Any]:
    # procrastinate probes every connection it checks out (an extra round trip per query); a connection
    # used moments ago is alive, so only one that sat idle is probed.
    return OutagePool(**{**options, "check": probe_if_idle, "reset": note_return})


class FetchedJob(Job):
    """A job as this worker fetched it, its log context made once: procrastinate's worker builds it (attrs'
    ``asdict`` of every field) into the ``extra`` of each of a job's log lines, three or more per job, whether
    or not the line is logged. A job does not change once fetched (a retry is fetched anew)."""

    @functools.cached_property
    def _log_context(self) -> JSONDict:
        return super().log_context()

    def log_context(self) -> JSONDict:
        return dict(self._log_context)


class RunJobs(JobManager):
    """procrastinate's job manager in a worker, with each run's claim and end in procrastinate's statements:
    the fetch of a run's job claims the run (:meth:`~checkpoints.runs.RunStore.take_job`), and the run's
    final status ends its job (:meth:`~checkpoints.runs.RunStore.finish`), one commit each where two were.
    procrastinate's own end of a job the run ended is skipped: the job is gone. An end or retry of a job another
    worker ended already (see :func:`ended_elsewhere`) is a race that ended well: one info line, not an error."""

    def __init__(self, connector: BaseConnector, runs: RunStore) -> None:
        super().__init__(connector)
        self._runs = runs
        self._taken: dict[str, Taken] = {}  # by run id, until its task takes it
        self._unstarted: set[int] = set()  # the jobs of those runs (see _started)
        self._ended: set[int] = set()  # jobs their run ended, until procrastinate would end them
        self.worker_id: int | None = None  # this process's worker, while registered (see heartbeat_while_stopping)
        self._again: dict[int, int] = {}  # procrastinate's id of this worker -> the id it registered again under
        self._inserted = 0  # the NOTIFYs of new jobs heard so far
        # The count of those as a fetch that took the queue's last waiting job was sent (see fetch_job); None: none.
        self._took_last: int | None = None

    def _registered(self, worker_id: int) -> int:
        """The id the worker procrastinate knows as ``worker_id`` is registered under now."""
        return self._again.get(worker_id, worker_id)

    def taken(self, run_id: str) -> Taken | None:
        """The claim made when ``run_id``'s job was fetched (None: its run was not taken so, e.g. a retry
        handed to a task directly). Its task calls this in its first step: from then on it has started."""
        taken = self._taken.pop(run_id, None)
        if taken is not None:
            self._unstarted.discard(taken.job_id)
        return taken

    async def _started(self, job_ids: Iterable[int]) -> None:
        """Return once the tasks of ``job_ids`` this worker fetched have started (their first step is queued as
        the job is fetched: a pass or two of the loop). procrastinate aborts a job by cancelling its task, and a
        task cancelled before its first step never runs its body: neither the run's executor, which ends a
        cancelled run interrupted, nor procrastinate's end of the job (left "doing", its run "running" for good,
        its thread's later runs behind its lock). An abort asked for a job whose task has not started is
        therefore handed on once it has (both ways procrastinate learns of one come through here)."""
        waiting = self._unstarted.intersection(job_ids)
        for _ in range(STARTED_PASSES):
            if not waiting & self._unstarted:
                return
            await asyncio.sleep(0)
        unstarted = waiting & self._unstarted
        log.warning("aborted jobs whose tasks did not start", job_ids=sorted(unstarted))
        # procrastinate cancels their tasks as this returns: a task cancelled unstarted never takes its claim.
        self._unstarted -= unstarted
        self._taken = {run_id: taken for run_id, taken in self._taken.items() if taken.job_id not in unstarted}

    async def list_jobs_to_abort_async(self, queue: str | None = None) -> Iterable[int]:
        job_ids = list(await super().list_jobs_to_abort_async(queue))
        await self._started(job_ids)
        return job_ids

    async def listen_for_jobs(
        self, *, on_notification: NotificationCallback, queues: Iterable[str] | None = None
    ) -> None:
        async def once_started(*, channel: str, notification: Notification) -> None:
            if notification["type"] == "job_inserted":
                self._inserted += 1
            elif notification["type"] == "abort_job_requested":
                await self._started([notification["job_id"]])
            await on_notification(channel=channel, notification=notification)

        await super().listen_for_jobs(on_notification=once_started, queues=queues)

    async def fetch_job(self, queues: Iterable[str] | None, worker_id: int) -> Job | None:
        """The next job, taken with its run's claim; None when none is due. procrastinate's worker fetches again
        after every job it takes, until a fetch finds none: after one that took the last job waiting (its statement
        says no other was), the next answers None without asking the database, unless a NOTIFY of a new job came
        since that fetch was sent. A job that comes later is noticed (its NOTIFY wakes the worker's loop), and one
        that is due later, or freed by another's lock, is found by the worker's polling as before."""
        took_last, self._took_last = self._took_last, None
        if took_last is not None and took_last == self._inserted:
            return None
        sent_at = self._inserted
        params = {"job_queues": list(queues) if queues is not None else None, "job_worker": self._registered(worker_id)}
        try:
            row, claimed = await self._runs.take_job(params)
        except Exception as exc:
            if not violated(exc, WORKER_REGISTERED):
                raise
            # Another worker pruned this one as stalled (its heartbeat was late: a pause, a blocked loop); its
            # jobs under way were handed to others already. It registers again and goes on taking jobs.
            self._again[worker_id] = params["job_worker"] = await self.register_worker()
            log.warning("this worker was pruned as stalled by another; registered again", worker_id=self.worker_id)
            row, claimed = await self._runs.take_job(params)
        if row["id"] is None:
            return None
        if not row["others_waiting"]:
            self._took_last = sent_at
        job = FetchedJob.from_row(row)
        if job.task_name == RUN_TASK and job.id is not None:
            self._taken[str(job.task_kwargs["run_id"])] = Taken(job.id, claimed, self._ended.add)
            self._unstarted.add(job.id)  # its task is created (its first step queued) as this returns
        return job

    async def register_worker(self) -> int:
        self.worker_id = await super().register_worker()
        return self.worker_id

    async def unregister_worker(self, worker_id: int) -> None:
        registered = self._again.pop(worker_id, worker_id)
        await super().unregister_worker(registered)
        if self.worker_id == registered:
            self.worker_id = None

    async def update_heartbeat(self, worker_id: int) -> None:
        await super().update_heartbeat(self._registered(worker_id))

    async def finish_job(self, job: Job, status: Status, delete_job: bool) -> None:
        if job.id in self._ended:
            self._ended.discard(job.id)
            return
        try:
            await super().finish_job(job, status, delete_job)
        except ConnectorException as exc:
            if not ended_elsewhere(exc):
                raise
            log.info("a job another worker ended already", job_id=job.id, status=status.value)

    async def retry_job(
        self,
        job: Job,
        retry_at: datetime | None = None,
        priority: int | None = None,
        queue: str | None = None,
        lock: str | None = None,
    ) -> None:
        try:
            await super().retry_job(job, retry_at, priority, queue, lock)
        except ConnectorException as exc:
            if not ended_elsewhere(exc):
                raise
            log.info("a job another worker ended or retried already", job_id=job.id)


class OutageRetry(BaseRetryStrategy):
    """A run's job that failed because the database went away (a restart, a failover, a blip) is taken again
    once it answers, after 1 s, then twice as long each time up to ``LONGEST_WAIT_S``: the run did not fail
    (its executor finishes it as an error only for its own failures), and procrastinate would otherwise
    mark the job failed with its run left "running" for good when the database answered that job's end.
    A job the database rolled back for a conflict with another transaction (a deadlock, a lock timeout) outside
    the run's steps (those retry themselves) is taken again too, but ``CONFLICT_ATTEMPTS`` times at most: a
    conflict that persists is not waited out. A run stopped by its worker's shutdown (:class:`WorkerStoppedError`)
    is taken again at once, and a retried run whose journey a live worker still holds (its heartbeat was late)
    as for an outage. Any other error is the run's, finished by the executor with the job: never retried here."""

    LONGEST_WAIT_S = 30
    CONFLICT_ATTEMPTS = 3

    def get_retry_decision(self, *, exception: BaseException, job: Job) -> RetryDecision | None:
        if isinstance(exception, WorkerStoppedError):  # see handed_over: another worker takes it at once
            return RetryDecision(retry_in={"seconds": 0})
        if held_elsewhere(exception):  # a retry whose journey a live worker still holds (see RunExecutor)
            return RetryDecision(retry_in={"seconds": min(2**job.attempts, self.LONGEST_WAIT_S)})
        if unreachable(exception) is not None:
            return RetryDecision(retry_in={"seconds": min(2**job.attempts, self.LONGEST_WAIT_S)})
        if conflicted(exception) is not None and job.attempts < self.CONFLICT_ATTEMPTS:
            return RetryDecision(retry_in={"seconds": 1})
        return None


async def handed_over(call_next: AsyncCallNext, context: JobContext, worker: Worker) -> Any:
    """A procrastinate worker middleware: a run's job still under way when its stopping worker's grace period
    ended (procrastinate then cancels it) fails with :class:`WorkerStoppedError`, which :class:`OutageRetry`
    retries at once, so another worker takes the run up; procrastinate would mark it aborted, never to be
    taken again, its run left "running". The run's executor left the run unfinished (nobody cancelled it)."""
    try:
        return await call_next()
    except asyncio.CancelledError:
        if context.job.task_name != RUN_TASK or context.abort_reason() is not AbortReason.SHUTDOWN:
            raise
        if (task := asyncio.current_task()) is not None:
            task.uncancel()  # the cancel is answered by the error: the job's end is recorded as usual
        run_id = context.job.task_kwargs.get("run_id")
        log.warning("a run still under way when this worker stopped is handed to another worker", run_id=run_id)
        raise WorkerStoppedError(f"run {run_id!r} was under way when its worker stopped", run_id=run_id) from None


def cancelled_again(executor: RunExecutor) -> Callable[[AsyncCallNext, JobContext, Worker], Awaitable[Any]]:
    """A procrastinate worker middleware: a run's job whose abort was asked for (a user's cancel, the worker's
    shutdown) is cancelled again while its run has not taken the cancel
    (:meth:`~server.runs.executor.RunExecutor.cancel_again_while_lost`). procrastinate cancels the job's task once,
    and a cancel lost on its way left the run going on to its end, its next steps run, its cancel never taken.
    Innermost of the middlewares: its watch ends before any other's handling of the run's end."""

    async def middleware(call_next: AsyncCallNext, context: JobContext, worker: Worker) -> Any:
        task = asyncio.current_task()
        if context.job.task_name != RUN_TASK or task is None:
            return await call_next()
        watch = asyncio.create_task(_once_aborted(executor, task, context), name=f"recancel:{context.job.id}")
        try:
            return await call_next()
        finally:
            watch.cancel()

    return middleware


async def _once_aborted(executor: RunExecutor, task: asyncio.Task[Any], context: JobContext) -> None:
    while context.abort_reason() is None:  # noqa: ASYNC110 (procrastinate tells its abort no other way)
        await asyncio.sleep(ABORT_POLL_S)
    await executor.cancel_again_while_lost(task, str(context.job.task_kwargs["run_id"]))


def build_app(
    database_url: str,
    handlers: dict[str, Any] | None = None,
    *,
    pool_size: int = 10,
    retention_cron: str | None = RETENTION_CRON,
    thread_ttl_cron: str | None = None,
) -> procrastinate.App:
    """The procrastinate app. ``handlers`` (in workers) give the task bodies; the API only defers.
    ``retention_cron``: when workers run a checkpoint retention pass (None: never); ``thread_ttl_cron``: when they
    sweep the threads whose time-to-live has passed (None: never).

    Every procrastinate query is one statement (a SQL function), so its connections are in autocommit:
    one round trip per query instead of three (BEGIN, the query, COMMIT).
    """
    connector = procrastinate.PsycopgConnector(
        conninfo=conninfo(database_url),
        configure=autocommit,  # not kwargs: procrastinate passes autocommit itself to its listening connection
        min_size=1,
        max_size=pool_size,
        pool_factory=_pool,
    )
    app = procrastinate.App(connector=connector)
    handlers = handlers or {}

    @app.task(name=RUN_TASK, queue=QUEUE, pass_context=False, retry=OutageRetry())
    async def execute_run(run_id: str) -> None:
        await handlers[RUN_TASK](run_id)

    @app.task(name=RETRY_TASK, queue=QUEUE, pass_context=False, retry=OutageRetry())
    async def retry_instance(instance_id: str, by: str | None, reply: str) -> None:
        await handlers[RETRY_TASK](instance_id, by, reply)

    @app.periodic(cron="* * * * * *", periodic_id="timers")
    @app.task(name=TIMER_TASK, queue=QUEUE, queueing_lock="journeys-timers")
    async def fire_timers(timestamp: int) -> None:
        await _periodic_pass(handlers.get(TIMER_TASK))

    if retention_cron is not None:  # one pass at a time across workers (queueing_lock), whoever defers it

        @app.periodic(cron=retention_cron, periodic_id="retention")
        @app.task(name=RETENTION_TASK, queue=QUEUE, queueing_lock="journeys-retention")
        async def apply_retention(timestamp: int) -> None:
            await _periodic_pass(handlers.get(RETENTION_TASK))

    if thread_ttl_cron is not None:

        @app.periodic(cron=thread_ttl_cron, periodic_id="thread-ttl")
        @app.task(name=THREAD_TTL_TASK, queue=QUEUE, queueing_lock="journeys-thread-ttl")
        async def sweep_threads(timestamp: int) -> None:
            await _periodic_pass(handlers.get(THREAD_TTL_TASK))

    return app


async def _periodic_pass(handler: Callable[[], Awaitable[None]] | None) -> None:
    """A periodic pass (timers, retention, the thread TTL sweep), in a worker that has it. One the database's
    outage cuts ends quietly: its work is the next pass's, and the worker says once that the database went away
    (outlasting_the_database), not with a failed job's traceback each pass. Any other failure fails the job."""
    if handler is None:
        return
    try:
        await handler()
    except Exception as exc:
        if lost_database(exc) is None:
            raise
        log.debug("periodic pass cut by the database's outage", error=str(exc))


# A worker whose heartbeat is older than this does not count as serving the database (a dead one's row stays until
# a live worker prunes it).
SERVING_HEARTBEAT_S = 30.0
NOTICE_TEXT_LIMIT = 4_000  # characters of an error message a retry's notice carries (PostgreSQL: 8,000 bytes a notice)


@dataclass(frozen=True, slots=True)
class HandedRetry:
    """An operator's retry handed to the workers: its job, and how it ended as the worker that ran it told
    (:func:`retry_notice`); ``outcome`` None: not told within the wait, the retry goes on in the workers."""

    job_id: int
    outcome: dict[str, Any] | None


def retry_notice(reply: str, outcome: Mapping[str, Any]) -> str:
    """The notice a worker sends when it has run a handed retry: ``outcome`` is ``{"status": ...}`` or
    ``{"error": {"message", "category", "code"}}`` (its message cut to :data:`NOTICE_TEXT_LIMIT`)."""
    error = outcome.get("error")
    if isinstance(error, Mapping):
        outcome = {**outcome, "error": {**error, "message": str(error.get("message", ""))[:NOTICE_TEXT_LIMIT]}}
    return f"{reply}\n{json.dumps(outcome, default=str)}"


async def retry_in_workers(
    database_url: str, instance_id: str, by: str | None, *, pool: AsyncConnectionPool[Any] | None, wait: float
) -> HandedRetry | None:
    """Hand the retry of ``instance_id`` to the workers serving the database through the queue (DBOS's
    ``workflow resume`` and Temporal's reset hand it to theirs), and wait up to ``wait`` seconds for how it ended.
    None, handing nothing, when no worker serves it (no live heartbeat): the caller retries it itself."""
    target = conninfo(database_url)
    try:
        listener = await psycopg.AsyncConnection.connect(target, autocommit=True)
    except psycopg.OperationalError as exc:
        raise unavailable(target, exc) from exc
    async with listener:
        if not await _workers_serve(listener):
            return None
        await listener.execute(LISTEN_RETRIES)  # before the job exists: its notice cannot come first
        reply = uuid.uuid4().hex
        app = build_app(database_url, retention_cron=None)
        async with app.open_async(pool=pool):
            job_id = await app.configure_task(RETRY_TASK, queue=QUEUE).defer_async(
                instance_id=instance_id, by=by, reply=reply
            )
        with suppress(TimeoutError):
            async with asyncio.timeout(wait):
                async for notice in listener.notifies():
                    key, _, outcome = notice.payload.partition("\n")
                    if key == reply:
                        return HandedRetry(job_id, json.loads(outcome))
        return HandedRetry(job_id, None)


async def workers_serving(database_url: str) -> bool:
    """Whether ``journeys worker`` processes serve the database now (a live heartbeat), to hand work to."""
    target = conninfo(database_url)
    try:
        conn = await psycopg.AsyncConnection.connect(target, autocommit=True)
    except psycopg.OperationalError as exc:
        raise unavailable(target, exc) from exc
    async with conn:
        return await _workers_serve(conn)


async def _workers_serve(conn: psycopg.AsyncConnection[Any]) -> bool:
    installed = await (await conn.execute(QUEUE_INSTALLED)).fetchone()
    if not (installed and installed[0]):
        return False
    serving = await (await conn.execute(WORKERS_SERVING, (SERVING_HEARTBEAT_S,))).fetchone()
    return bool(serving and serving[0])


def workers_enqueuer(database_url: str) -> Enqueue:
    """How a run created outside any server (an operator's command) reaches the workers: its job deferred with it."""
    return enqueuer(build_app(database_url, retention_cron=None))


def ensure_schema(database_url: str) -> None:
    """Install procrastinate's schema, or apply the migrations a newer procrastinate brought."""
    migrate_queue_schema(conninfo(database_url))


def enqueuer(app: procrastinate.App) -> Enqueue:
    """Defers a run's job in the statement that creates the run (:data:`~checkpoints.schema.queue.DEFER_JOB`),
    so the run and its job commit together. The job is procrastinate's own, as ``defer`` would write it: its
    task, queue and per-thread ``lock`` come from ``configure_task``."""

    def params(run: RunRow) -> dict[str, Any]:
        due = (run.options or {}).get("not_before")  # a delayed run (after_seconds): no worker waits for it
        job = app.configure_task(
            RUN_TASK,
            lock=f"thread:{run.thread_id}",
            queue=QUEUE,
            schedule_at=datetime.fromisoformat(due) if due else None,
        ).make_new_job(run_id=run.run_id)
        return {
            "job_queue": job.queue,
            "job_task": job.task_name,
            "job_priority": job.priority,
            "job_lock": job.lock,
            "job_queueing_lock": job.queueing_lock,
            "job_args": job.task_kwargs,
            "job_scheduled_at": job.scheduled_at,
        }

    return Enqueue(DEFER_JOB, params)


async def cancel_queued(app: procrastinate.App, job_id: int) -> bool:
    """Cancel ``job_id`` if no worker has taken it yet; False when it has started (or is gone)."""
    return await app.job_manager.cancel_job_by_id_async(job_id)


async def abort_run(app: procrastinate.App, job_id: int) -> bool:
    """Ask the worker running ``job_id`` to stop it (procrastinate cancels the job's asyncio task there)."""
    return await app.job_manager.cancel_job_by_id_async(job_id, abort=True)


class ProcrastinateQueue(RunQueue):
    """The run queue of a server whose runs ``journeys worker`` processes execute: each run is deferred as
    a job in the transaction that creates it, and a worker's notifications wake this process's waiters."""

    def __init__(self, app: procrastinate.App) -> None:
        self.app = app

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        database_url: str,
        watch: RunWatch,
        *,
        pool: AsyncConnectionPool[Any] | None = None,
        poll: float | None = None,
    ) -> AsyncIterator[ProcrastinateQueue]:
        """Open on ``pool`` (the store's psycopg pool: one bounded set of connections per process, see the
        README) or, without one, a pool of the queue's own. ``poll``: the waiters' fallback re-read, which the
        listener's probes spare them (see :mod:`server.runs.watch`); None: no probes."""
        ensure_schema(database_url)
        app = build_app(database_url)
        # Workers notify when a run finishes or streams: wake this process's waiting requests.
        probe_every = poll / 2 if poll is not None else None
        async with app.open_async(pool=pool), listening(conninfo(database_url), watch, probe_every=probe_every):
            yield cls(app)

    @property
    def enqueue(self) -> Enqueue:
        return enqueuer(self.app)

    async def withdraw(self, run: RunRow) -> bool:
        if run.job_id is None:
            return run.status == "pending"
        # Asked of the queue, not of our copy of the status: a worker may have taken the job since.
        return await cancel_queued(self.app, run.job_id)

    async def stop(self, run: RunRow) -> None:
        if run.job_id is not None:  # the cancel is recorded (see ServerServices.cancel): holds if its worker dies
            await abort_run(self.app, run.job_id)  # its executor marks the run interrupted


async def stop_runs_elsewhere(runtime: JourneyRuntime, database_url: str, instance_id: str) -> None:
    """For a process that executes no runs (``journeys instances terminate``): cancel the runs moving the journey
    ``instance_id``, as the API's cancel does (``ServerServices.stop_runs``), each thread's in its
    ``thread_control`` lock: recorded, then a run the workers execute (it has a job) withdrawn from the queue if no
    worker has taken it, else aborted in the worker running it; a run an embedded server executes is stopped there
    once that server sees the cancel recorded, and one it has not taken up yet (a delayed run) ends at once
    (:class:`ElsewhereQueue`)."""
    runs = RunStore(runtime.store.backend, runtime.store.clock, runtime.store.sealer)
    active = await runs.active_of_instance(instance_id)
    if not active:
        return
    async with AsyncExitStack() as stack:
        elsewhere: RunQueue = ElsewhereQueue(runs)
        workers = elsewhere
        if any(run.job_id is not None for run in active):  # PostgreSQL with workers: their queue aborts them
            app = build_app(database_url, retention_cron=None)
            await stack.enter_async_context(app.open_async(pool=runtime.store.pg_pool))
            workers = ProcrastinateQueue(app)
        for thread_id in sorted({run.thread_id for run in active}):
            async with runtime.engine.exclusive(thread_control_key(thread_id)):  # read again inside, as the API does
                for run in await runs.active_of_instance(instance_id):
                    if run.thread_id == thread_id:
                        # The API's waiters learn of a run ended here from the finish's notice (or its poll).
                        queue = workers if run.job_id is not None else elsewhere
                        await cancel_run(queue, runs, run, lambda _run_id, _row: None)

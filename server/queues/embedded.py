"""The embedded queue: runs execute in the API process, one driver task per thread taking its runs in
order. Timers fire in this process too (unless turned off), and checkpoint retention runs here
periodically (:mod:`checkpoints.retention`)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Callable

import psycopg
import structlog

from checkpoints.background import in_background
from checkpoints.database import OUTAGE, lost_database
from checkpoints.errors import ConcurrentUpdateError, StoreError
from checkpoints.locks import InstanceLocks, Kept, open_instance_locks
from checkpoints.runs import CANCELS_KEY, LISTEN_CANCELS
from checkpoints.url import StoreURL, opened_target, parse_store_url
from server.problems import EmbeddedServerRunningError
from server.queues.base import RunQueue
from server.runs.executor import RunExecutor
from server.runs.store import RunRow
from server.runs.watch import RunWatch, listening

log = structlog.get_logger("journeys.embedded")
# Seconds between an embedded server's looks for runs it executes whose cancel another process recorded.
CANCEL_CHECK_S = 1.0


class EmbeddedRunner:
    """Runs runs in this process: one driver task per thread takes its runs in order, and at most
    ``concurrency`` runs execute at once (a burst of runs queues instead of contending for the pools)."""

    def __init__(self, executor: RunExecutor, *, concurrency: int = 8) -> None:
        self.executor = executor
        self._slots = asyncio.Semaphore(concurrency)
        self._drivers: dict[str, asyncio.Task[None]] = {}  # only live drivers: a finished one removes itself
        self._queued: set[str] = set()  # threads given a run since their driver last looked
        self._current: dict[str, str] = {}  # thread id -> run id being executed
        self._woken: dict[str, asyncio.Event] = {}  # thread id -> set when its driver's delayed run is cancelled
        # Runs whose driver this runner cancelled, until that driver has ended: the watch of cancels recorded
        # elsewhere (watch_cancels) does not cancel them again.
        self._stopping: set[str] = set()

    def submit(self, run: RunRow) -> None:
        self._queued.add(run.thread_id)
        if run.thread_id not in self._drivers:
            self._drivers[run.thread_id] = asyncio.create_task(self._drive(run.thread_id), name=f"runs:{run.thread_id}")

    async def resume_unfinished(self) -> None:
        """Runs a previous process left pending or running (it stopped or crashed) are taken up again."""
        for run in await self.executor.runs.unfinished():
            self.submit(run)

    async def _drive(self, thread_id: str) -> None:
        try:
            while True:
                self._queued.discard(thread_id)
                # Armed before the read: a cancel recorded after the read still wakes the wait below.
                woken = self._woken[thread_id] = asyncio.Event()
                run = await self.executor.runs.next_pending(thread_id)
                if run is None:
                    if thread_id in self._queued:  # submitted while we looked: look again
                        continue
                    return  # and unregister at once, before any await: a later submit starts a new driver
                if await self._until_due(woken, run):  # a delayed run waits without holding a slot
                    continue  # woken by a cancel: the runs behind it need not wait out its delay
                async with self._slots:
                    self._current[thread_id] = run.run_id
                    try:
                        await self._outlasting_the_database(run.run_id)
                    finally:
                        self._current.pop(thread_id, None)
        finally:
            if self._drivers.get(thread_id) is asyncio.current_task():
                del self._drivers[thread_id]
                self._woken.pop(thread_id, None)

    async def _outlasting_the_database(self, run_id: str) -> None:
        """Execute the run (its due time waited for above); again when the database went away under it (a
        restart, a failover), after 1 s, then twice as long each time up to ``LONGEST_WAIT_S``: the run did
        not fail, and without this its driver ended with it left "running" until the server restarted."""
        wait = 1.0
        while True:
            try:
                await self.executor.execute(run_id, due=True)
                return
            except Exception as exc:
                if (lost := lost_database(exc)) is None:
                    raise
                log.warning(
                    "a run was cut short by the database going away; it is executed again once it answers",
                    run_id=run_id,
                    error=lost.message,
                    retry_in=wait,
                )
            await asyncio.sleep(wait)
            wait = min(wait * 2, LONGEST_WAIT_S)

    async def _until_due(self, woken: asyncio.Event, run: RunRow) -> bool:
        """Wait for the run's due time; True when ``woken`` before it (a cancel: the driver looks again)."""
        delay = self.executor.delay(run)
        if delay <= 0:
            return False
        try:
            await asyncio.wait_for(woken.wait(), delay)
        except TimeoutError:
            return False
        return True

    def wake(self, thread_id: str) -> None:
        """The thread's driver, if it waits for a delayed run's due time, looks at its runs again."""
        if (woken := self._woken.get(thread_id)) is not None:
            woken.set()

    def executing(self, run: RunRow) -> bool:
        """Whether a driver has taken the run up (it may not have claimed it yet)."""
        driver = self._drivers.get(run.thread_id)
        return driver is not None and self._current.get(run.thread_id) == run.run_id and not driver.done()

    def cancel(self, run: RunRow) -> bool:
        if self.executing(run):
            driver = self._drivers[run.thread_id]
            driver.cancel()
            self._stopping.add(run.run_id)
            asyncio.create_task(self._restart(driver, run), name=f"runs-restart:{run.thread_id}")  # noqa: RUF006
            return True
        return False

    async def _restart(self, cancelled: asyncio.Task[None], run: RunRow) -> None:
        # A cancel can be lost on its way: the driver is cancelled again while it executes the run and has not taken
        # the cancel.
        await self.executor.cancel_again_while_lost(
            cancelled, run.run_id, lambda: self._current.get(run.thread_id) == run.run_id
        )
        # The cancelled driver may leave runs queued behind the cancelled one: a fresh driver takes them.
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await cancelled
        self._stopping.discard(run.run_id)
        self.submit(run)

    async def watch_cancels(self, every: float = CANCEL_CHECK_S, heard: asyncio.Event | None = None) -> None:
        """Every ``every`` seconds while runs execute here, and at once when ``heard`` is set (a cancel recorded,
        noticed on PostgreSQL), stop those whose cancel another process recorded (``journeys instances
        terminate``: no queue reaches this process from it, see ``ElsewhereQueue``) as a cancel of this process
        stops them. One read a round, none while no run executes."""
        while True:
            if heard is None:
                await asyncio.sleep(every)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(heard.wait(), every)
                heard.clear()  # before the read: a cancel recorded during it wakes the next round
            if not self._current:
                continue
            try:
                cancelled = await self.executor.runs.running_cancelled()
            except Exception as exc:  # the database away: looked at again next round
                if lost_database(exc) is None:
                    log.warning("could not look for runs cancelled elsewhere", error=repr(exc))
                continue
            for run in cancelled:
                if run.run_id not in self._stopping and self.cancel(run):
                    log.info("a run cancelled by another process is stopped", run_id=run.run_id)

    async def close(self) -> None:
        drivers = list(self._drivers.values())
        for driver in drivers:
            driver.cancel()
        for driver in drivers:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await driver
        self._drivers.clear()

    @property
    def drivers(self) -> int:
        return len(self._drivers)


# The lock an embedded server holds while it serves: the runs of a database are executed by one process, which
# takes up at startup every run left pending or running, as only the last executor's crash could have left them.
EXECUTOR_LOCK = "journeys:embedded-executor"
HANDOVER_S = 15.0  # seconds a starting server waits for one stopping (a restart) to let the database go
LONGEST_WAIT_S = 30.0  # longest wait between a run's executions the database cut short
KEPT_CHECK_S = 2.0  # seconds between checks that the lock is held still (PostgreSQL ends it with its connection)


def stop_serving() -> None:
    """End this process as a signal from its operator would (``journeys serve`` shuts down gracefully)."""
    signal.raise_signal(signal.SIGTERM)


@contextlib.asynccontextmanager
async def sole_executor(
    locks: InstanceLocks, *, wait: float = HANDOVER_S, on_lost: Callable[[], None] = stop_serving
) -> AsyncIterator[None]:
    """Hold the database's embedded-executor lock for the block; :class:`EmbeddedServerRunningError` if another
    process holds it past ``wait`` seconds. A second embedded server would execute the runs the first is
    executing (it takes up every unfinished run), each agent call twice.

    PostgreSQL releases the lock when its connection drops (an outage, a terminated backend), and a second
    server could then start: the lock is checked every ``KEPT_CHECK_S`` seconds and taken again once lost;
    should another process have taken it meanwhile, this one stops executing (``on_lost``: the process ends),
    and says so."""
    async with contextlib.AsyncExitStack() as stack:
        try:
            kept = await stack.enter_async_context(
                locks.watched(EXECUTOR_LOCK, asyncio.get_running_loop().time() + wait)
            )
        except ConcurrentUpdateError:
            raise EmbeddedServerRunningError(
                "another journeys serve executes this database's runs in embedded mode, and a second would "
                "execute them too: serve it from one process, or with --distributed and journeys worker processes "
                "(PostgreSQL), which share its runs"
            ) from None
        await stack.enter_async_context(in_background(_keep(locks, kept, on_lost), "embedded-executor-lock"))
        yield


async def _keep(locks: InstanceLocks, kept: Kept, on_lost: Callable[[], None]) -> None:
    """Check the executor lock every ``KEPT_CHECK_S`` seconds; take it again once lost (holding it until
    cancelled), or call ``on_lost`` when another process holds it now."""
    async with contextlib.AsyncExitStack() as stack:
        while True:
            await asyncio.sleep(KEPT_CHECK_S)
            try:
                if await kept():
                    continue
            except (StoreError, psycopg.OperationalError):  # no answer, the connection still open: check again
                continue
            lost_at = asyncio.get_running_loop().time()
            log.warning("the embedded-executor lock was lost with its database connection; taking it again")
            while True:
                try:
                    await stack.aclose()  # the lost hold (its unlock is skipped: its connection is gone)
                    deadline = asyncio.get_running_loop().time() + 2 * KEPT_CHECK_S
                    kept = await stack.enter_async_context(locks.watched(EXECUTOR_LOCK, deadline))
                except ConcurrentUpdateError:
                    log.error(
                        "another journeys serve took this database's runs while this one's lock was lost: this "
                        "server stops, so that one process executes them (restart it once the other stops, or "
                        "serve with --distributed and journeys worker processes)"
                    )
                    on_lost()
                    return
                except (StoreError, psycopg.OperationalError) as exc:  # still away: try again
                    OUTAGE.say_away("the embedded-executor lock, to take again", str(exc))
                    await asyncio.sleep(KEPT_CHECK_S)
                    continue
                # A warning, not an error: an ordinary outage does it, and no other server took the lock meanwhile.
                log.warning(
                    "the embedded-executor lock was lost with its database connection, and taken again",
                    lost_for_s=round(asyncio.get_running_loop().time() - lost_at, 1),
                )
                break


async def check_sole_executor(database_url: str) -> None:
    """Refuse (:class:`EmbeddedServerRunningError`) as an embedded server's startup would, before it starts:
    ``journeys serve`` says so in one line rather than as a failed startup."""
    async with (
        opened_target(parse_store_url(database_url)) as url,
        open_instance_locks(url, wait_limit=HANDOVER_S) as locks,
        sole_executor(locks),
    ):
        pass


@contextlib.asynccontextmanager
async def _cancels_heard(url: StoreURL) -> AsyncIterator[asyncio.Event | None]:
    """On PostgreSQL, an event set as each cancel recorded is noticed (see ``RunStore.request_cancel``); None
    elsewhere, where the runner's look every ``CANCEL_CHECK_S`` finds them."""
    if url.kind != "postgres":
        yield None
        return
    cancels = RunWatch()
    async with listening(url.target, cancels, listen=LISTEN_CANCELS):
        with cancels.watching(CANCELS_KEY) as heard:
            yield heard


class EmbeddedQueue(RunQueue):
    """The run queue of a server that executes its runs itself."""

    def __init__(self, runner: EmbeddedRunner) -> None:
        self.runner = runner

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls, executor: RunExecutor, *, concurrency: int = 8, timers: bool = True, retention_every: float = 0.0
    ) -> AsyncIterator[EmbeddedQueue]:
        """Takes up the runs a previous process left unfinished, fires due timers while open, and applies
        the runtime's checkpoint retention every ``retention_every`` seconds (0: never)."""
        runner = EmbeddedRunner(executor, concurrency=concurrency)
        try:
            async with contextlib.AsyncExitStack() as stack:
                await stack.enter_async_context(sole_executor(executor.runtime.store.locks))
                await runner.resume_unfinished()
                heard = await stack.enter_async_context(_cancels_heard(executor.runtime.store.url))
                await stack.enter_async_context(
                    in_background(runner.watch_cancels(CANCEL_CHECK_S, heard), "embedded-cancel-watch")
                )
                if timers:
                    await stack.enter_async_context(executor.runtime.processes.scheduler.running())
                if retention_every > 0:
                    await stack.enter_async_context(executor.runtime.retention.running(retention_every))
                yield cls(runner)
        finally:
            await runner.close()

    def submit(self, run: RunRow) -> None:
        self.runner.submit(run)

    async def withdraw(self, run: RunRow) -> bool:
        # ``run`` may be an older copy: a driver that took it up since is stopped instead. One that takes it
        # up after this finds the cancel recorded (see ServerServices.cancel) and ends it interrupted; one
        # waiting for its due time (after_seconds) is woken to do so, not to hold the runs behind it.
        if run.status == "pending" and not self.runner.executing(run):
            self.runner.wake(run.thread_id)
            return True
        return False

    async def stop(self, run: RunRow) -> None:
        if self.runner.cancel(run):
            await asyncio.sleep(0)  # let the cancelled driver see its cancellation

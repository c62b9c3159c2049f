"""How a waiting request learns that a run changed (finished, or wrote a stream chunk), without polling.

The executor that runs the run tells :class:`RunWatch` directly when it is in this process (embedded
mode). On PostgreSQL, :class:`~server.runs.store.RunStore` also notifies the channel
:data:`~checkpoints.runs.RUN_CHANNEL` with the run's id (the statement lives in :mod:`checkpoints.runs`) in the
transaction that finishes a run or appends a chunk (and with its thread's key when a run is created on an
existing thread), and an API process whose runs execute elsewhere
(distributed mode) forwards those notifications to its watch with :func:`listening`. A finished run comes
with the change (its row, or its notice's copy of it), so its waiters do not read it back. A slow fallback
read still runs (``poll``), so a notification lost while the listening connection reconnects costs
latency, never a hung request.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import psycopg
import structlog

from checkpoints.runs import LISTEN_RUNS, split_notice
from graphs.errors import JourneyNotFoundError
from server.runs.store import TERMINAL, RunRow, RunStore

log = structlog.get_logger("journeys.watch")


class Change(asyncio.Event):
    """A waiter's wake-up: set when its run changes, holding the run once it has finished (``finished``: the
    row its executor wrote, or its notice's JSON copy, which :meth:`RunStore.noticed_run` reads), else None."""

    def __init__(self) -> None:
        super().__init__()
        self.finished: RunRow | str | None = None


class RunWatch:
    """Wakes the requests waiting on a run. A waiter registers *before* it reads the run, so a change
    that lands between its read and its wait still wakes it."""

    def __init__(self) -> None:
        self._waiters: dict[str, set[Change]] = {}

    def changed(self, run_id: str, finished: RunRow | str | None = None) -> None:
        """Wake ``run_id``'s waiters; ``finished``: the run has finished, as this row (see :class:`Change`)."""
        for event in self._waiters.get(run_id, ()):
            if finished is not None:
                event.finished = finished
            event.set()

    def changed_all(self) -> None:
        """Wake every waiter (they re-read): changes may have been missed, e.g. while reconnecting."""
        for events in self._waiters.values():
            for event in events:
                event.set()

    @contextlib.contextmanager
    def watching(self, run_id: str) -> Iterator[Change]:
        event = Change()
        waiters = self._waiters.setdefault(run_id, set())
        waiters.add(event)
        try:
            yield event
        finally:
            waiters.discard(event)
            if not waiters:
                self._waiters.pop(run_id, None)

    @property
    def watched(self) -> int:
        return len(self._waiters)


async def next_change(event: asyncio.Event, poll: float) -> None:
    """Wait for ``event`` (at most ``poll`` seconds), then re-arm it for the next change."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), poll)
    event.clear()


async def wait_for_run(runs: RunStore, watch: RunWatch, run_id: str, poll: float) -> RunRow:
    with watch.watching(run_id) as changed:
        return await until_finished(runs, run_id, changed, poll)


async def until_finished(runs: RunStore, run_id: str, changed: Change, poll: float, *, fresh: bool = False) -> RunRow:
    """The run once it has finished: as its change brought it, else re-read each time ``changed`` (its watch)
    fires or ``poll`` passes; not found when it was deleted before it was seen finished (a rollback deletes
    the runs it cancels).

    ``fresh``: the run was created after its watch was registered, so it is pending and any change to it
    will fire ``changed``: the first read waits for one (reading it at once would only find it pending)."""
    if fresh:
        await next_change(changed, poll)
    while True:
        if changed.finished is not None:
            finished = changed.finished
            return finished if isinstance(finished, RunRow) else runs.noticed_run(finished)
        run = await runs.get_run(run_id)
        if run is None:
            raise JourneyNotFoundError(f"run {run_id!r} was deleted (rolled back) before it finished", run_id=run_id)
        if run.status in TERMINAL:
            return run
        await next_change(changed, poll)


@contextlib.asynccontextmanager
async def listening(conninfo: str, watch: RunWatch, *, retry: float = 1.0) -> AsyncIterator[None]:
    """Forward the database's run notifications to ``watch`` while the context is open.

    The first ``LISTEN`` is in place when the context is entered; a dropped connection is reopened
    (every waiter is then woken to re-read what it may have missed).
    """
    first = await _listen(conninfo)
    task = asyncio.create_task(_forward(conninfo, watch, first, retry), name="journeys-run-notifications")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _listen(conninfo: str) -> psycopg.AsyncConnection[tuple[object, ...]]:
    conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
    try:
        await conn.execute(LISTEN_RUNS)
    except BaseException:  # cancelled (the watch is closing) or dropped: not left open behind us
        await conn.close()
        raise
    return conn


async def _forward(
    conninfo: str, watch: RunWatch, conn: psycopg.AsyncConnection[tuple[object, ...]] | None, retry: float
) -> None:
    while True:
        try:
            if conn is None:
                conn = await _listen(conninfo)
                watch.changed_all()
            async with conn:
                async for notice in conn.notifies():
                    watch.changed(*split_notice(notice.payload))
        except Exception as exc:  # the connection dropped (or could not open): listen again on a new one
            log.warning("run notifications interrupted; reconnecting", error=repr(exc))
            await asyncio.sleep(retry)
        conn = None

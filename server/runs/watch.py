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

That fallback is needed only while the listener may have missed a notice. While waiters wait, the listener
probes its own connection every half ``poll`` (:data:`~checkpoints.runs.PROBE_KEY`): PostgreSQL delivers a
channel's notices in commit order, so once the probe comes back every change committed before it has been
forwarded, and a waiter whose poll passed with a probe heard since its last check does not re-read its run
(:meth:`Change.confirmed`). One statement a half second for the process, not one read a second per waiter: once
journeys took longer than the poll, the waiters' re-reads were 12 % of a busy API's CPU. A listener dead or stuck
hears no probe, and its waiters re-read as before.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import psycopg
import structlog

from checkpoints.background import in_background
from checkpoints.runs import LISTEN_RUNS, PROBE, PROBE_KEY, split_notice
from graphs.errors import JourneyNotFoundError
from server.runs.store import TERMINAL, RunRow, RunStore

log = structlog.get_logger("journeys.watch")
# With no waiter, the listener looks whether one has come this many times as seldom as it probes: woken each half
# poll, an idle API spent 0.07 s of CPU a minute more (a first waiter re-reads until the listener looks).
IDLE_LOOKS = 10


class Change(asyncio.Event):
    """A waiter's wake-up: set when its run changes, holding the run once it has finished (``finished``: the
    row its executor wrote, or its notice's JSON copy, which :meth:`RunStore.noticed_run` reads), else None."""

    def __init__(self, watch: RunWatch) -> None:
        super().__init__()
        self.finished: RunRow | str | None = None
        self._watch = watch
        # The last probe that proved nothing of this waiter's was lost; one sent before it registered proves nothing.
        self._proved = watch.probes_sent

    def confirmed(self) -> bool:
        """Whether a probe sent since this waiter registered (or since its last confirmation) has been heard
        back: every notice committed before it has been forwarded, so none of this waiter's was lost and a
        re-read would find nothing new. False without a listener (in-process notices only: re-read)."""
        heard = self._watch.probes_heard
        if heard <= self._proved:
            return False
        self._proved = heard
        return True


class RunWatch:
    """Wakes the requests waiting on a run. A waiter registers *before* it reads the run, so a change
    that lands between its read and its wait still wakes it."""

    def __init__(self) -> None:
        self._waiters: dict[str, set[Change]] = {}
        # The listener's probes (see the module docstring), numbered in the order they were sent: how many were
        # sent, and the last one it heard back.
        self.probes_sent = 0
        self.probes_heard = 0

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
        event = Change(self)
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


async def next_change(changed: Change, poll: float) -> None:
    """Wait for ``changed``, then re-arm it for the next change; or return after ``poll`` seconds without one,
    for the caller to re-read, unless the listener proved meanwhile that no notice was lost
    (:meth:`Change.confirmed`): then wait on."""
    while True:
        try:
            await asyncio.wait_for(changed.wait(), poll)
        except TimeoutError:
            if changed.confirmed():
                continue
        changed.clear()
        return


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
async def listening(
    conninfo: str,
    watch: RunWatch,
    *,
    retry: float = 1.0,
    probe_every: float | None = None,
    listen: str = LISTEN_RUNS,
) -> AsyncIterator[None]:
    """Forward the database's run notifications to ``watch`` while the context is open.

    The first ``LISTEN`` is in place when the context is entered; a dropped connection is reopened
    (every waiter is then woken to re-read what it may have missed). ``probe_every``: while waiters wait,
    probe the connection this often (half the waiters' poll, see the module docstring); None: never (they
    re-read at each poll). ``listen``: the channel's LISTEN (the runs', whose probes these are; or
    :data:`~checkpoints.runs.LISTEN_CANCELS`, the recorded cancels, without probes).
    """
    first = await _listen(conninfo, listen)
    forwarding = _forward(conninfo, watch, first, retry, probe_every, listen)
    async with in_background(forwarding, "journeys-run-notifications"):
        yield


async def _listen(conninfo: str, listen: str) -> psycopg.AsyncConnection[tuple[object, ...]]:
    conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
    try:
        await conn.execute(listen)
    except BaseException:  # cancelled (the watch is closing) or dropped: not left open behind us
        await conn.close()
        raise
    return conn


async def _forward(
    conninfo: str,
    watch: RunWatch,
    conn: psycopg.AsyncConnection[tuple[object, ...]] | None,
    retry: float,
    probe_every: float | None,
    listen: str,
) -> None:
    while True:
        try:
            if conn is None:
                conn = await _listen(conninfo, listen)
                watch.changed_all()
            async with conn:
                ours = conn.info.backend_pid  # the probes this connection sends come back from its own backend
                while True:
                    quiet = None if probe_every is None else probe_every * (1 if watch.watched else IDLE_LOOKS)
                    async for notice in conn.notifies(timeout=quiet):
                        if notice.pid == ours:
                            watch.probes_heard = int(notice.payload.removeprefix(PROBE_KEY))
                        else:
                            watch.changed(*split_notice(notice.payload))
                    if watch.watched:  # a quiet half poll (or a busy one) with waiters: probe
                        watch.probes_sent += 1
                        await conn.execute(PROBE, (f"{PROBE_KEY}{watch.probes_sent}",))
        except Exception as exc:  # the connection dropped (or could not open): listen again on a new one
            log.warning("run notifications interrupted; reconnecting", error=repr(exc))
            await asyncio.sleep(retry)
        conn = None

"""How a thread ends: deleted by a caller (``DELETE /threads/{id}``), or by the TTL sweep once its time-to-live
has passed (the Agent Server's thread TTL: ``threads.create(ttl=…)``, ``threads.update(ttl=…)``).

Either way the same work is done (:func:`delete_thread_data`): the thread's row, runs and crons go, its journey
is terminated if it has not ended, ``thread.deleted`` is logged (the event log stays: the audit trail) and its
checkpoints are deleted.

A thread with a time-to-live expires that many minutes after its last activity: its creation, an update of it
(metadata or ttl), of its state, or its latest run (created, or ended). Expired, it is deleted (strategy
``delete``) or pruned to its latest checkpoint and kept (``keep_latest``, as ``threads.prune`` does; looked at
again a TTL later). Its row keeps the earliest moment it can expire (``expires_at``, indexed), written with its
metadata or TTL; a run moves the row's ``updated_at``, not its expiry. The sweep (:class:`ThreadTTLSweep`) runs
every few minutes (the Agent Server's ``sweep_interval_minutes``, 5 by default: the embedded server's loop,
``journeys serve --thread-ttl-sweep``; the workers' periodic job, ``journeys worker --thread-ttl-cron``), one
pass at a time across processes; it reads the threads due by then and, for each, counts its latest run: still
active or active since, its expiry moves to when it now falls; otherwise its strategy is applied.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import structlog

from checkpoints.errors import ConcurrentUpdateError
from checkpoints.events import NewEvent
from checkpoints.runs import ThreadRow, thread_key
from graphs.runtime import JourneyRuntime
from server.problems import ApiError
from server.runs.store import RunStore

log = structlog.get_logger("journeys.threads")

THREAD_DELETED = "thread.deleted"
SWEEP_BATCH = 100  # due threads read at a time
# The name a sweep holds the store's instance lock under (as the retention pass's PASS_LOCK): no instance id is it.
SWEEP_LOCK = "\x00journeys-thread-ttl-sweep"
# A due thread that cannot go yet (a run under way) is looked at again no sooner than this: a time-to-live of 0
# would otherwise be due again at once, in the same pass.
RECHECK = timedelta(seconds=1)


def thread_control_key(thread_id: str) -> str:
    """The store lock a thread's delete, copy, interrupts and rollbacks take (``ServerServices.thread_control``)."""
    return f"runs-of-thread:{thread_id}"


async def delete_thread_data(
    runtime: JourneyRuntime, runs: RunStore, thread_id: str, instance_id: str | None, by: str, *, changed: Any = None
) -> None:
    """Delete the thread (refused while a run is active: 409 ThreadBusy), its runs and crons; terminate its
    journey, log ``thread.deleted`` and delete its checkpoints. Call it holding :func:`thread_control_key`'s
    lock. ``changed``: this process's run watch, told at once (its streams of the thread end)."""
    await runs.delete_thread(thread_id)  # first: refused while a run is active, its crons with it
    if changed is not None:
        changed(thread_key(thread_id))  # elsewhere, the delete's notice does
    if instance_id is not None:
        deleted = NewEvent(THREAD_DELETED, {"thread_id": thread_id, "by": by}, None, THREAD_DELETED)
        await runtime.instances.terminate(instance_id, "its thread was deleted", then=[deleted])
        await runtime.store.saver.adelete_thread(instance_id)


class ThreadTTLSweep:
    """Deletes (or prunes: ``keep_latest``) the threads whose time-to-live has passed, a sweep at a time
    (:meth:`run`): the embedded server's loop, the workers' periodic job."""

    def __init__(self, runtime: JourneyRuntime, runs: RunStore, *, changed: Any = None) -> None:
        self._runtime = runtime
        self._runs = runs
        self._changed = changed

    async def run(self, now: datetime | None = None) -> int:
        """One sweep of the threads expired by ``now`` (None: the store's clock's now); how many were deleted or
        pruned. One sweep at a time across processes: one that waited out the store's lock timeout for another
        does nothing (the next goes on)."""
        try:
            async with self._runtime.engine.exclusive(SWEEP_LOCK):
                return await self._sweep(now or self._runtime.store.clock.now())
        except ConcurrentUpdateError:
            return 0

    async def _sweep(self, now: datetime) -> int:
        deleted = 0
        while True:
            due = await self._runs.due_threads(now, SWEEP_BATCH)
            for row in due:
                deleted += await self._expire(row, now)
            if len(due) < SWEEP_BATCH:  # each one read was deleted or is due later: none comes back
                return deleted

    async def _expire(self, row: ThreadRow, now: datetime) -> int:
        ttl = row.ttl
        if ttl is None:  # its TTL was taken off since it was read
            return 0
        async with self._runtime.engine.exclusive(thread_control_key(row.thread_id)):
            last = await self._runs.last_run(row.thread_id)
            active = await self._runs.active_count(row.thread_id)
            if active:  # it expires that long after its run ends, at the earliest
                await self._runs.postpone_expiry(row.thread_id, max(ttl.expiry(now), now + RECHECK))
                return 0
            expires = ttl.expiry(max(row.updated_at, last.updated_at) if last is not None else row.updated_at)
            if expires > now:  # active since its expiry was written (a run)
                await self._runs.postpone_expiry(row.thread_id, expires)
                return 0
            if ttl.strategy == "keep_latest":  # it stays, with its latest checkpoint; looked at again a TTL on
                if row.instance_id is not None and not await self._runtime.retention.prune_to_latest([row.instance_id]):
                    return 0  # its journey's lock was busy: the next sweep finds it due still
                await self._runs.postpone_expiry(row.thread_id, ttl.expiry(now))
                log.info("thread pruned", thread_id=row.thread_id, ttl_minutes=ttl.minutes, strategy=ttl.strategy)
                return 1
            try:
                await delete_thread_data(
                    self._runtime, self._runs, row.thread_id, row.instance_id, "ttl", changed=self._changed
                )
            except ApiError as exc:
                if exc.status != 409:  # a run created on it meanwhile: it is active again
                    raise
                await self._runs.postpone_expiry(row.thread_id, max(ttl.expiry(now), now + RECHECK))
                return 0
        log.info("thread expired", thread_id=row.thread_id, ttl_minutes=ttl.minutes, strategy=ttl.strategy)
        return 1

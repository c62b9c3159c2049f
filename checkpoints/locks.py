"""One writer per journey instance across processes: the store's instance locks.

``JourneyEngine.exclusive`` takes an in-process ``asyncio.Lock`` per instance first (cheap, and fair
between this process's callers), then the store's lock for the instance, which the database or the
operating system releases by itself when the holding process dies:

- PostgreSQL: session-level advisory locks (``pg_try_advisory_lock`` on a stable 64-bit hash of the
  instance id), all held on one connection of the store's own. A process needs no pooled connection
  per journey in flight, so the lock cannot starve the saver's or the event log's pool, and a killed
  process's locks vanish with its connection. Should that connection drop while the process lives
  (a restarted server, a terminated backend), PostgreSQL releases every lock held on it, and another
  process may enter the same instances at once: each holder of a lock taken on that connection is
  stopped (its task cancelled, :class:`InstanceLockLostError` raised from its block) as soon as the drop
  is seen, which a watch of the idle connection's socket sees within ``FENCE_CHECK_S``, so that it
  writes no more under a lock it no longer has; its work is taken again, under a new lock, as after an
  outage. What holds for a write already on the wire then is what holds for a crash: keyed agent calls
  and keyed events are logged once. Session
  locks need a session of their own: connect directly or through a session-mode pooler, not a
  transaction-mode one.
- SQLite: POSIX record locks (``fcntl.lockf``) on one byte per instance, at an offset hashed from its
  id, of the sidecar file ``<database>.locks``. They belong to the process, so the file is opened
  once per process and shared by every store on it (closing any descriptor of the file would drop
  them all), and this process's own holders of an offset are counted: two instances whose offsets
  collide share the byte, while one instance held by another store of this process is waited for.
  (Windows has no POSIX record locks: there a SQLite store has the in-process lock only.)
- ``memory://``: the in-process lock is all there is (one process by construction).

A lock another holder has is polled for with a short, growing backoff, never blocking the event
loop, until the store's wait limit; then :class:`ConcurrentUpdateError`. Between processes that is
not first come, first served: a journey kept busy without pause by one process can make another's
caller wait out its limit, and be refused. A filelock-style library
was not used: those lock a whole file per lock and wait by sleeping threads, where one byte per
instance of one file and a poll on the loop fit.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import hashlib
import os
import random
import socket
import sys
import threading
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol

import psycopg
import structlog

from checkpoints.database import ended_by_server
from checkpoints.errors import ConcurrentUpdateError, InstanceLockLostError, StartedElsewhereError, StoreError
from checkpoints.url import StoreURL

if sys.platform != "win32":
    import fcntl

log = structlog.get_logger("journeys.locks")

DEFAULT_LOCK_TIMEOUT_S = 30.0  # a step's agent may take seconds (retries, a model call); a waiter gives up after this
FIRST_BACKOFF_S = 0.002
MAX_BACKOFF_S = 0.05
SIDECAR_SUFFIX = ".locks"
FENCE_CHECK_S = 0.2  # how often the PostgreSQL lock connection is looked at (a poll, no round trip) while held
# A path to the server can die without a word (a failover, a NAT's dropped mapping): nothing arrives, and a poll sees
# nothing. While locks are held, a lock connection that answered nothing for PROOF_AFTER_S is asked SELECT 1, and one
# that leaves any statement unanswered for ANSWER_LIMIT_S (nothing to read) is given up as lost (its holders stopped).
PROOF_AFTER_S = 1.0
ANSWER_LIMIT_S = 5.0
# New journeys' ids whose locks the PostgreSQL locks take ahead, this many in one statement, when a start asks
# for one and none is left (see PgAdvisoryLocks.fresh); one handed out and not entered within AHEAD_UNUSED_S
# (its start failed before it took the lock) is unlocked by the next call of fresh after that.
AHEAD = 8
AHEAD_UNUSED_S = 60.0
# The server's side of the lock session: a client gone silent is noticed by the server's TCP keepalives after about
# 25 s (10 + 3 x 5; tcp_user_timeout for an answer never acknowledged), which ends the session and releases its
# locks, well after the holder gave them up (PROOF_AFTER_S + ANSWER_LIMIT_S), not hours later (the kernel's default).
SERVER_KEEPALIVES = (
    ("tcp_keepalives_idle", "10"),
    ("tcp_keepalives_interval", "5"),
    ("tcp_keepalives_count", "3"),
    ("tcp_user_timeout", "25000"),
)


@dataclass(slots=True)
class Lease:
    """A holder's claim on the journeys it locked, seen by every task its work starts (LangGraph writes a
    checkpoint from a task of its own): ``lost`` once the connection its locks were taken on is lost, after which
    its writes are refused (:func:`refuse_if_lost`), since another process may hold the journey now."""

    instance_id: str
    lost: bool = False


# The lease of the hold the current task works under (copied into the tasks it starts, as context is).
_LEASE: ContextVar[Lease | None] = ContextVar("journeys_lock_lease", default=None)


def current_lease() -> Lease | None:
    """The lease of the hold the current task works under (None: it holds no journey's lock)."""
    return _LEASE.get()


def refuse_if_lost() -> None:
    """Refuse a write made under a lock this process has lost (:class:`InstanceLockLostError`): the fencing of
    the checkpoint writes, which LangGraph makes even as a cancelled run unwinds."""
    lease = _LEASE.get()
    if lease is not None and lease.lost:
        raise PgAdvisoryLocks.lost(lease.instance_id)


def lock_key(instance_id: str) -> int:
    """A stable signed 64-bit hash of the instance id (Python's ``hash`` differs between processes)."""
    digest = hashlib.blake2b(instance_id.encode(), digest_size=8, person=b"journeys-lock").digest()
    return int.from_bytes(digest, "big", signed=True)


def held_elsewhere(error: BaseException) -> bool:
    """Whether ``error`` is a caller giving up its wait for a journey another holder kept (see :func:`busy`), or a
    start run's attempt whose journey another attempt started (:class:`StartedElsewhereError`)."""
    return isinstance(error, ConcurrentUpdateError) and (
        "waited_s" in error.details or isinstance(error, StartedElsewhereError)
    )


def busy(instance_id: str, timeout: float) -> ConcurrentUpdateError:
    return ConcurrentUpdateError(
        f"journey run {instance_id!r} is busy: another call is changing it, and this one gave up after waiting "
        f"{timeout:g} s for it; nothing was done, try again",
        instance_id=instance_id,
        waited_s=timeout,
    )


class InstanceLocks(Protocol):
    """The store's cross-process lock per journey instance (taken after the engine's in-process lock)."""

    timeout: float  # seconds a caller waits for an instance before ConcurrentUpdateError

    def hold(self, instance_id: str, deadline: float) -> AbstractAsyncContextManager[None]:
        """Hold the instance's lock for the block; wait for it until ``deadline`` (the loop's clock)."""
        ...

    def watched(self, name: str, deadline: float) -> AbstractAsyncContextManager[Kept]:
        """Hold the lock ``name`` as :meth:`hold` does, for a long block: yields a check of whether it is held
        still (a PostgreSQL lock ends with its connection, which an outage or a terminated backend ends)."""
        ...

    def fresh(self, kind: str, make_id: Callable[[str], str]) -> str:
        """An id for a new journey instance of ``kind``, made by ``make_id(kind)``, that its caller is about to
        enter with :meth:`hold`. PostgreSQL may answer one whose lock this process took ahead (see
        :meth:`PgAdvisoryLocks.fresh`); the others answer a new one."""
        ...


Kept = Callable[[], Awaitable[bool]]  # whether a watched lock is held still


async def _always_kept() -> bool:
    return True  # the operating system's and the process's locks end only with the process


class InProcessLocks:
    """``memory://``: the engine's in-process lock is the whole guarantee."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout

    @asynccontextmanager
    async def hold(self, instance_id: str, deadline: float) -> AsyncIterator[None]:
        yield

    @asynccontextmanager
    async def watched(self, name: str, deadline: float) -> AsyncIterator[Kept]:
        yield _always_kept

    def fresh(self, kind: str, make_id: Callable[[str], str]) -> str:
        return make_id(kind)


class _PolledLocks(ABC):
    """Acquire by trying without blocking, with a growing backoff in between, until the deadline."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout

    @abstractmethod
    async def _try(self, instance_id: str) -> Any:
        """A token for :meth:`_release` when the lock was taken, else None."""

    @abstractmethod
    async def _release(self, instance_id: str, token: Any) -> None: ...

    async def _kept(self, name: str, token: Any) -> bool:
        """Whether the lock ``name`` taken with ``token`` is held still (see :meth:`watched`)."""
        return True

    def fresh(self, kind: str, make_id: Callable[[str], str]) -> str:
        return make_id(kind)

    async def _acquire(self, instance_id: str, deadline: float) -> Any:
        loop = asyncio.get_running_loop()
        delay = FIRST_BACKOFF_S
        while (token := await self._try(instance_id)) is None:
            left = deadline - loop.time()
            if left <= 0:
                raise busy(instance_id, self.timeout)
            await asyncio.sleep(min(delay * random.uniform(0.5, 1.0), left))
            delay = min(delay * 2, MAX_BACKOFF_S)
        return token

    @asynccontextmanager
    async def hold(self, instance_id: str, deadline: float) -> AsyncIterator[None]:
        token = await self._acquire(instance_id, deadline)
        try:
            yield
        finally:
            await self._release(instance_id, token)

    @asynccontextmanager
    async def watched(self, name: str, deadline: float) -> AsyncIterator[Kept]:
        token = await self._acquire(name, deadline)
        try:
            yield functools.partial(self._kept, name, token)
        finally:
            await self._release(name, token)


# --- PostgreSQL ---------------------------------------------------------------------------------


class PgAdvisoryLocks(_PolledLocks):
    """Session-level advisory locks on one connection of the store's own (see the module doc)."""

    def __init__(self, conninfo: str, timeout: float) -> None:
        super().__init__(timeout)
        self._conninfo = conninfo
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._generation = 0  # bumped at each reconnect: a lock taken on an earlier connection is gone
        self._pids: dict[int, int] = {}  # each generation's backend (see _kept)
        self._connecting = asyncio.Lock()
        self._background: set[asyncio.Task[Any]] = set()
        # What callers asked for while the connection was busy, sent together by one flusher task.
        self._tries: list[tuple[int, asyncio.Future[int | None]]] = []
        self._unlocks: list[tuple[str, int, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None
        # The lock connection's cursor per statement, used again: psycopg then keeps its adapters (a cursor
        # built per call builds them again); one of a connection since lost is replaced on its next use.
        self._cursors: dict[str, psycopg.AsyncRawCursor[Any]] = {}
        # The tasks in a hold, by the generation of the connection their lock was taken on (a task may hold
        # several: a count each), those stopped because that connection was lost, and the watch of it.
        self._holders: dict[int, dict[asyncio.Task[Any], int]] = {}
        self._fenced: set[asyncio.Task[Any]] = set()
        self._leases: dict[asyncio.Task[Any], Lease] = {}  # each holding task's (see Lease)
        self._watch: asyncio.Task[None] | None = None
        # Statements asked of the lock connection and not answered yet, since when, and its last answer (the loop's
        # clock): what tells a connection gone silent (see _silent), and the watch's SELECT 1 asking it (_proof).
        self._asked = 0
        self._asked_at = 0.0
        self._answered_at = 0.0
        self._proof: asyncio.Task[None] | None = None
        # Ids of new journeys locked ahead (see fresh), by kind, each with the generation it was locked on; those
        # handed out and not entered yet, with the loop's time they were handed out at; the kinds being refilled.
        self._ahead: dict[str, list[tuple[str, int]]] = {}
        self._handed: dict[str, tuple[int, float]] = {}
        self._filling: set[str] = set()

    async def open(self) -> None:
        await self._connection()

    async def close(self) -> None:
        # The watch goes on meanwhile: it gives up a connection gone silent, on which these would wait for ever.
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        if self._proof is not None:
            await asyncio.gather(self._proof, return_exceptions=True)
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
        if self._conn is not None:
            await self._conn.close()  # what is still held is released with the session

    async def _connection(self) -> tuple[psycopg.AsyncConnection[Any], int]:
        conn = self._conn
        if conn is not None and not conn.closed:
            return conn, self._generation
        async with self._connecting:
            if self._conn is None or self._conn.closed:
                if self._conn is not None:
                    self._fence(self._generation)  # before connecting: the database may be away for a while
                    self._generation += 1
                    log.warning("instance lock connection lost; reconnecting (its locks were released)")
                try:
                    conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
                except psycopg.OperationalError as exc:
                    raise StoreError(f"cannot open the journey lock connection: {exc}") from exc
                # It sits idle while a step runs under its locks; a server-wide idle limit must not end it.
                with contextlib.suppress(psycopg.errors.UndefinedObject):  # before PostgreSQL 14
                    await conn.execute("SET idle_session_timeout = 0")
                await conn.execute(
                    SET_KEEPALIVES, [[name for name, _ in SERVER_KEEPALIVES], [v for _, v in SERVER_KEEPALIVES]]
                )
                self._answered_at = asyncio.get_running_loop().time()
                self._conn = conn
                self._pids[self._generation] = conn.info.backend_pid
            return self._conn, self._generation

    @asynccontextmanager
    async def hold(self, instance_id: str, deadline: float) -> AsyncIterator[None]:
        """:meth:`_PolledLocks.hold`, stopping the block with :class:`InstanceLockLostError` should the
        connection the lock was taken on be lost meanwhile (see the module doc)."""
        token = await self._acquire(instance_id, deadline)
        task = asyncio.current_task()
        assert task is not None
        holding = self._holders.setdefault(int(token), {})
        holding[task] = holding.get(task, 0) + 1
        lease = self._leases.setdefault(task, Lease(instance_id))
        leased = _LEASE.set(lease)
        self._watching()
        try:
            try:
                yield
            except asyncio.CancelledError:
                if task in self._fenced and task.uncancel() == 0:  # cancelled by the fence alone
                    raise self.lost(instance_id) from None
                raise
            except InstanceLockLostError:  # a write on the way out was refused (refuse_if_lost)
                if task in self._fenced:
                    task.uncancel()
                raise
            if task in self._fenced:  # the cancel was swallowed inside: the block still ran on without its lock
                task.uncancel()
                raise self.lost(instance_id)
        finally:
            _LEASE.reset(leased)
            if (count := holding.get(task, 0)) > 1:
                holding[task] = count - 1
            else:
                holding.pop(task, None)
                self._fenced.discard(task)
                if not any(task in held for held in self._holders.values()):
                    self._leases.pop(task, None)
                if not holding and self._holders.get(int(token)) is holding:
                    del self._holders[int(token)]
            await self._release(instance_id, token)

    @staticmethod
    def lost(instance_id: str) -> InstanceLockLostError:
        return InstanceLockLostError(
            f"the lock of journey {instance_id!r} was lost with its database connection while this process worked "
            "on it, so another process may be working on it now: this work stopped, and is taken again once the "
            "database answers",
            instance_id=instance_id,
        )

    def _fence(self, generation: int) -> None:
        """Stop every holder of a lock taken on the connection of ``generation``, which is lost: PostgreSQL
        released those locks with the connection's session, and other processes may take them now."""
        holding = self._holders.pop(generation, {})
        stopped = [task for task in holding if task not in self._fenced and not task.done()]
        for task in stopped:
            self._fenced.add(task)
            if (lease := self._leases.get(task)) is not None:
                lease.lost = True
            task.cancel("the journey's lock was lost with its database connection")
        if stopped:
            log.warning(
                "instance locks were lost with their database connection: the work under them stopped, to be "
                "taken again under new locks",
                stopped=len(stopped),
            )

    def _watching(self) -> None:
        if self._watch is None or self._watch.done():
            self._watch = asyncio.ensure_future(self._watch_connection())

    async def _watch_connection(self) -> None:
        """While locks are held or a statement waits for its answer, look at the lock connection every
        ``FENCE_CHECK_S`` seconds: one the server ended (a restart, a terminated backend: its message and end of
        stream wait on the idle socket) is found then, not at its next statement; one gone silent (a failover or
        a dropped NAT mapping: no end of stream ever comes) is found by its unanswered statements, a SELECT 1 when
        it answered nothing for ``PROOF_AFTER_S``, and is given up. Either way its locks' holders are stopped
        (:meth:`_fence`), and the next statement reconnects."""
        loop = asyncio.get_running_loop()
        while self._holders or self._asked:
            await asyncio.sleep(FENCE_CHECK_S)
            conn = self._conn
            if conn is not None and not conn.closed:
                if self._silent(conn):
                    _give_up(conn)  # the statement waiting on it fails now, as on a connection the server ended
                    continue
                if conn.lock.locked():
                    continue  # a statement on the wire reads the socket itself, and sees a drop (timed by _silent)
                if ended_by_server(conn) or (self._holders and loop.time() - self._answered_at >= PROOF_AFTER_S):
                    self._prove(conn)  # a notice (rare) is read, and the connection is fine; else it is closed now
                continue
            if conn is not None:
                with contextlib.suppress(StoreError, psycopg.Error):  # fences the lost locks first; away: next round
                    await self._connection()

    def _silent(self, conn: psycopg.AsyncConnection[Any]) -> bool:
        """Whether the lock connection has left a statement unanswered for ``ANSWER_LIMIT_S``, with nothing to
        read (not an event loop that was kept from reading it): the path to the server is gone."""
        if not self._asked:
            return False
        waited = asyncio.get_running_loop().time() - max(self._asked_at, self._answered_at)
        return waited > ANSWER_LIMIT_S and not ended_by_server(conn)

    def _prove(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Ask the lock connection a SELECT 1 (from a task: the watch times it, see :meth:`_silent`)."""
        if self._proof is None or self._proof.done():
            self._proof = asyncio.ensure_future(self._select_one(conn))

    async def _select_one(self, conn: psycopg.AsyncConnection[Any]) -> None:
        with contextlib.suppress(psycopg.Error), self._asking():  # one that fails is closed: the watch sees it
            await conn.execute("SELECT 1")

    @contextlib.contextmanager
    def _asking(self) -> Iterator[None]:
        """Count a statement on the lock connection for the block (sent, or waiting for its turn to be) until
        its answer, and watch the connection meanwhile: see :meth:`_silent`."""
        loop = asyncio.get_running_loop()
        if not self._asked:
            self._asked_at = loop.time()
        self._asked += 1
        self._watching()
        try:
            yield
        finally:
            self._asked -= 1
            self._answered_at = loop.time()

    async def _kept(self, name: str, token: Any) -> bool:
        # PostgreSQL releases a session's locks when the session ends: held still while the connection the
        # lock was taken on is the lock connection still, and answers.
        conn = self._conn
        if conn is not None and not conn.closed and token == self._generation:
            try:
                with self._asking():
                    await conn.execute("SELECT 1")
                return True
            except psycopg.OperationalError:
                if not conn.closed:
                    raise
        # That connection is gone here; its session may live on in PostgreSQL (a network break it has not
        # noticed yet), and holds the lock as long as it does: no other process can take it meanwhile.
        conn, _generation = await self._connection()
        key = lock_key(name) & 0xFFFFFFFFFFFFFFFF  # pg_locks shows a bigint key as two unsigned halves
        with self._asking():
            found = await conn.execute(HOLDER, (key >> 32, key & 0xFFFFFFFF))
            holder = await found.fetchone()
        return holder is not None and holder[0] == self._pids.get(int(token))

    def fresh(self, kind: str, make_id: Callable[[str], str]) -> str:
        """A new journey's id whose lock this process holds already when one is left of those taken ahead: its
        start then enters it without a round trip to the database (its :meth:`hold` takes the lock as held). The
        ids of a kind are locked :data:`AHEAD` at a time, in one statement with any other tries queued then, when
        the last one is handed out (the first call answers an id to be locked as any other). Nobody else can name
        an id before its journey is registered, so a lock taken ahead keeps no one out. One of a connection lost
        since is dropped (its lock went with the session); one handed out and not entered within
        :data:`AHEAD_UNUSED_S` is unlocked by the next call after that."""
        now = asyncio.get_running_loop().time()
        self._unlock_unused(now)
        kept = self._ahead.setdefault(kind, [])
        instance_id = None
        while kept and instance_id is None:
            ahead, generation = kept.pop()
            if generation == self._generation:
                instance_id = ahead
                self._handed[instance_id] = (generation, now)
        if not kept and kind not in self._filling:
            self._fill(kind, make_id)
        return instance_id if instance_id is not None else make_id(kind)

    def _fill(self, kind: str, make_id: Callable[[str], str]) -> None:
        """Lock :data:`AHEAD` new ids of ``kind`` (with the next tries sent), kept for :meth:`fresh` once taken."""
        ids = [make_id(kind) for _ in range(AHEAD)]
        attempts = [self._queue_try(lock_key(instance_id)) for instance_id in ids]
        self._filling.add(kind)
        task = asyncio.ensure_future(self._filled(kind, ids, attempts))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _filled(self, kind: str, ids: list[str], attempts: list[asyncio.Future[int | None]]) -> None:
        try:
            taken = await asyncio.gather(*attempts, return_exceptions=True)  # a failed batch: none kept
            locked = [(i, generation) for i, generation in zip(ids, taken, strict=True) if isinstance(generation, int)]
            self._ahead.setdefault(kind, []).extend(locked)
        finally:
            self._filling.discard(kind)

    def _unlock_unused(self, now: float) -> None:
        """Unlock the ids handed out by :meth:`fresh` more than :data:`AHEAD_UNUSED_S` ago and never entered."""
        unused = [i for i, (_generation, handed_at) in self._handed.items() if now - handed_at > AHEAD_UNUSED_S]
        for instance_id in unused:
            generation, _handed_at = self._handed.pop(instance_id)
            if generation == self._generation:  # else its lock went with its connection's session
                self._queue_unlock(instance_id, generation)

    async def _try(self, instance_id: str) -> int | None:
        handed = self._handed.pop(instance_id, None)
        if handed is not None and handed[0] == self._generation:  # locked ahead (see fresh), on this connection
            return handed[0]
        # Shielded: a caller cancelled while the query is on the wire must not leave a lock it never learns of.
        attempt = self._queue_try(lock_key(instance_id))
        try:
            return await asyncio.shield(attempt)
        except asyncio.CancelledError:
            attempt.add_done_callback(lambda done: self._undo(instance_id, done))
            raise

    def _queue_try(self, key: int) -> asyncio.Future[int | None]:
        attempt: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._tries.append((key, attempt))
        self._flush_soon()
        return attempt

    def _flush_soon(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush())

    async def _flush(self) -> None:
        """Send what callers queued meanwhile: every unlock in one statement, then every try in one.

        One connection carries every lock, so its statements go one after another anyway; a caller that
        comes while one is on the wire joins the next, and a burst of journeys (a batch of fired timers)
        costs a round trip per batch, not one per journey. Each key is still locked and unlocked on its
        own, exactly as if sent alone.
        """
        while self._tries or self._unlocks:
            unlocks, self._unlocks = self._unlocks, []
            tries, self._tries = self._tries, []
            if unlocks:
                await self._settle(unlocks, self._send_unlocks(unlocks))
            if tries:
                await self._settle(tries, self._send_tries(tries))

    @staticmethod
    async def _settle(queued: Sequence[tuple[Any, ...]], sent: Awaitable[None]) -> None:
        """Await ``sent``; should it fail, its error goes to every caller of ``queued`` still waiting."""
        try:
            await sent
        except BaseException as exc:
            for *_request, future in queued:
                if not future.done():
                    if isinstance(exc, asyncio.CancelledError):
                        future.cancel()
                    else:
                        future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise

    async def _send_tries(self, tries: Sequence[tuple[int, asyncio.Future[int | None]]]) -> None:
        keys = [key for key, _attempt in tries]
        for _attempt in range(2):  # once more on a fresh connection if the lock connection dropped
            conn, generation = await self._connection()
            try:
                rows = await self._run(conn, TRY_LOCKS, keys)
            except psycopg.OperationalError:
                if not conn.closed:
                    raise
                continue
            taken = {int(i): bool(ok) for i, ok in rows}
            for i, (_key, attempt) in enumerate(tries, start=1):
                if not attempt.done():
                    attempt.set_result(generation if taken[i] else None)
            return
        raise StoreError("the journey lock connection keeps dropping")

    async def _run(self, conn: psycopg.AsyncConnection[Any], sql: str, keys: list[int]) -> list[tuple[Any, ...]]:
        """The rows of ``sql`` (one of this class's statements) for ``keys``, on the lock connection's cursor
        for it (every row is read, so a kept cursor holds no result of more than a batch of keys)."""
        cursor = self._cursors.get(sql)
        if cursor is None or cursor.connection is not conn:
            cursor = self._cursors[sql] = psycopg.AsyncRawCursor(conn)
        with self._asking():
            await cursor.execute(sql, [keys], prepare=True)
            return await cursor.fetchall()

    def _undo(self, instance_id: str, done: asyncio.Future[int | None]) -> None:
        if done.cancelled() or done.exception() is not None or done.result() is None:
            return
        task = asyncio.ensure_future(self._release(instance_id, done.result()))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _release(self, instance_id: str, token: Any) -> None:
        """Unlock, with every other unlock and try queued meanwhile (:meth:`_flush` sends unlocks first), and
        return once it is done: the journey is free when the call that held it returns, whatever the caller
        does next (a caller blocking its event loop would otherwise keep other processes out until the loop
        ran again). A failed unlock is logged, not raised: the session's end releases the lock anyway."""
        released = self._queue_unlock(instance_id, int(token))
        with contextlib.suppress(Exception):  # a failure is logged by the callback
            await asyncio.shield(released)  # a cancelled caller still unlocks

    def _queue_unlock(self, instance_id: str, token: int) -> asyncio.Future[None]:
        released: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        released.add_done_callback(functools.partial(_report_failed_unlock, instance_id))
        self._unlocks.append((instance_id, token, released))
        self._flush_soon()
        return released

    async def _send_unlocks(self, unlocks: Sequence[tuple[str, int, asyncio.Future[None]]]) -> None:
        conn = self._conn
        live = conn is not None and not conn.closed
        held = [(instance_id, released) for instance_id, gen, released in unlocks if live and gen == self._generation]
        if len(held) < len(unlocks):
            for instance_id, gen, released in unlocks:
                if not (live and gen == self._generation):
                    log.warning("instance lock was lost while held (its connection dropped)", instance_id=instance_id)
                    released.set_result(None)
        if not held:
            return
        assert conn is not None
        try:
            await self._run(conn, UNLOCKS, [lock_key(instance_id) for instance_id, _released in held])
        except psycopg.OperationalError:
            if not conn.closed:
                raise
            for instance_id, _released in held:
                log.warning("instance lock was lost while held (its connection dropped)", instance_id=instance_id)
        for _instance_id, released in held:
            if not released.done():
                released.set_result(None)


TRY_LOCKS = "SELECT t.i, pg_try_advisory_lock(t.k) FROM unnest($1::bigint[]) WITH ORDINALITY AS t(k, i)"
UNLOCKS = "SELECT pg_advisory_unlock(t.k) FROM unnest($1::bigint[]) AS t(k)"
SET_KEEPALIVES = "SELECT set_config(s.name, s.setting, false) FROM unnest(%s::text[], %s::text[]) AS s(name, setting)"
HOLDER = (
    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = %s::bigint::oid "
    "AND objid = %s::bigint::oid AND objsubid = 1"
)


def _give_up(conn: psycopg.AsyncConnection[Any]) -> None:
    """Shut the socket of a lock connection gone silent: the statement waiting on it reads the end of the stream at
    once, and psycopg closes the connection as one the server ended (a cancel would wait for the server, seconds)."""
    log.warning(
        "the instance lock connection went silent: taken as lost (a failover, a dropped network path)",
        unanswered_s=ANSWER_LIMIT_S,
    )
    with contextlib.suppress(OSError), socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:
        sock.shutdown(socket.SHUT_RDWR)


def _report_failed_unlock(instance_id: str, released: asyncio.Future[None]) -> None:
    if not released.cancelled() and (error := released.exception()) is not None:
        log.error("instance lock could not be released", instance_id=instance_id, error=str(error))


# --- SQLite -------------------------------------------------------------------------------------


@dataclass
class _LockFile:
    """The one open descriptor of a sidecar lock file in this process, and who here holds which byte."""

    path: str
    fd: int
    stores: int = 0
    held: dict[int, set[str]] = field(default_factory=dict)  # offset -> instance ids holding it here


_files: dict[str, _LockFile] = {}
_files_mutex = threading.Lock()  # stores on other threads' event loops share the files


def _forget_files_after_fork() -> None:
    # A forked child holds none of its parent's record locks (they are per process): start afresh.
    global _files_mutex
    _files_mutex = threading.Lock()
    for lock_file in _files.values():
        os.close(lock_file.fd)
    _files.clear()


if sys.platform != "win32":
    os.register_at_fork(after_in_child=_forget_files_after_fork)

OFFSETS = 1 << 62  # byte offsets stay within a signed 64-bit off_t


class FileRecordLocks(_PolledLocks):
    """POSIX record locks on one byte per instance of ``<database>.locks`` (see the module doc)."""

    def __init__(self, database: str, timeout: float) -> None:
        super().__init__(timeout)
        self._path = os.path.realpath(database + SIDECAR_SUFFIX)
        self._file: _LockFile | None = None

    def open(self) -> None:
        with _files_mutex:
            lock_file = _files.get(self._path)
            if lock_file is None:
                lock_file = _LockFile(self._path, os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600))
                _files[self._path] = lock_file
            lock_file.stores += 1
            self._file = lock_file

    def close(self) -> None:
        with _files_mutex:
            lock_file, self._file = self._file, None
            if lock_file is None:
                return
            lock_file.stores -= 1
            if lock_file.stores == 0 and _files.get(lock_file.path) is lock_file:
                del _files[lock_file.path]
                os.close(lock_file.fd)

    async def _try(self, instance_id: str) -> int | None:
        lock_file = self._file
        if lock_file is None:
            raise StoreError("the store is closed")
        offset = lock_key(instance_id) % OFFSETS
        with _files_mutex:
            holders = lock_file.held.get(offset)
            if holders is not None:  # this process holds the byte already
                if instance_id in holders:
                    return None  # for the same instance, through another store: wait for it
                holders.add(instance_id)
                return offset
            try:
                fcntl.lockf(lock_file.fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset, os.SEEK_SET)
            except OSError as exc:
                if exc.errno in (errno.EACCES, errno.EAGAIN):
                    return None  # another process holds it
                raise
            lock_file.held[offset] = {instance_id}
            return offset

    async def _release(self, instance_id: str, token: Any) -> None:
        lock_file = self._file
        if lock_file is None:
            return
        offset = int(token)
        with _files_mutex:
            holders = lock_file.held.get(offset, set())
            holders.discard(instance_id)
            if not holders:
                lock_file.held.pop(offset, None)
                fcntl.lockf(lock_file.fd, fcntl.LOCK_UN, 1, offset, os.SEEK_SET)


SETUP_TURN = "journeys:setup-turn"  # the sidecar's byte for schema setups (see setup_turn)
SETUP_WAIT_LIMIT_S = 120.0  # a setup is DDL on a local file: seconds at most, however many openers wait


@asynccontextmanager
async def setup_turn(url: StoreURL) -> AsyncIterator[None]:
    """The turn of this opener, among every store opening the SQLite file ``url`` names (in this process
    and in others), to run an official saver's or store's ``setup()``. Those read their schema version,
    then migrate, in separate transactions, so two openers at once would both apply a migration ("duplicate
    column name"). A record lock of the sidecar, taken and waited for as an instance's is; nothing to do
    for ``memory://`` (a file of one process's own), PostgreSQL (see ``checkpoints.savers``) or on Windows."""
    if url.kind != "sqlite" or sys.platform == "win32":
        yield
        return
    files = await asyncio.to_thread(FileRecordLocks, url.target, SETUP_WAIT_LIMIT_S)
    await asyncio.to_thread(files.open)
    try:
        async with files.hold(SETUP_TURN, asyncio.get_running_loop().time() + SETUP_WAIT_LIMIT_S):
            yield
    finally:
        await asyncio.to_thread(files.close)


@asynccontextmanager
async def open_instance_locks(
    url: StoreURL, *, wait_limit: float = DEFAULT_LOCK_TIMEOUT_S
) -> AsyncIterator[InstanceLocks]:
    """The instance locks for the store at ``url``, released when the block ends."""
    if not wait_limit > 0:
        raise StoreError(f"the lock wait limit must be a positive number of seconds, got {wait_limit!r}")
    if url.kind == "postgres":
        pg = PgAdvisoryLocks(url.target, wait_limit)
        try:
            await pg.open()
            yield pg
        finally:
            await pg.close()
    elif url.kind == "sqlite" and sys.platform != "win32":
        # Opening and closing the sidecar touch the file system: off the event loop.
        files = await asyncio.to_thread(FileRecordLocks, url.target, wait_limit)
        await asyncio.to_thread(files.open)
        try:
            yield files
        finally:
            await asyncio.to_thread(files.close)
    else:  # memory://, and SQLite on Windows (no POSIX record locks): one process's lock only
        yield InProcessLocks(wait_limit)

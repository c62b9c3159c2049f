"""The SQLAlchemy engine for our tables, on the same database as the checkpointer."""

from __future__ import annotations

import asyncio
import json
import select
import sqlite3
import time
from collections.abc import Iterator
from functools import partial
from typing import Any

import aiosqlite
import psycopg
import structlog
from psycopg_pool import PoolTimeout
from sqlalchemy import event
from sqlalchemy.engine import Dialect, ExceptionContext
from sqlalchemy.exc import DisconnectionError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from checkpoints.errors import ConcurrentUpdateError, DatabaseUnavailableError, InstanceLockLostError
from checkpoints.url import StoreURL

log = structlog.get_logger("journeys.database")


def sqlite_pragmas(url: StoreURL) -> tuple[str, ...]:
    """The pragmas of every connection to a store's SQLite file (ours and the saver's).

    WAL lets the checkpointer's connection and ours write the same file; busy_timeout makes the second
    writer wait instead of failing with "database is locked". A ``memory://`` store is a throwaway file
    that need not survive a crash of the machine, so it never waits for the disk."""
    synchronous = "OFF" if url.kind == "memory" else "NORMAL"
    return ("PRAGMA journal_mode=WAL", "PRAGMA busy_timeout=30000", f"PRAGMA synchronous={synchronous}")


_CLOSING: set[asyncio.Task[None]] = set()  # closes of connections whose opener was cancelled, held until done


async def connect_sqlite(target: str, **kwargs: Any) -> aiosqlite.Connection:
    """``aiosqlite.connect(target, **kwargs)``, every connection of ours to a SQLite file (the saver's, the
    store's, the engine's), closed again if the caller is cancelled while it opens.

    aiosqlite opens the file in its own thread whatever the caller does, and a cancelled opener dropped the
    opened ``sqlite3.Connection`` unclosed: the file stayed open until the garbage collector found it, and Python
    3.13 warns of it there (a ResourceWarning in whichever test was running). Its thread is a daemon, as
    SQLAlchemy makes it, so that a connection left open never keeps the interpreter from exiting."""
    pending = aiosqlite.connect(target, **kwargs)
    pending._thread.daemon = True
    opening = asyncio.ensure_future(_opened(pending))
    try:
        return await asyncio.shield(opening)
    except asyncio.CancelledError:
        closing = asyncio.ensure_future(_close_once_open(opening))
        _CLOSING.add(closing)
        closing.add_done_callback(_CLOSING.discard)
        raise


async def _opened(pending: aiosqlite.Connection) -> aiosqlite.Connection:
    return await pending


async def _close_once_open(opening: asyncio.Future[aiosqlite.Connection]) -> None:
    try:
        conn = await asyncio.shield(opening)
    except Exception:  # it never opened: nothing to close
        return
    await conn.close()


def _set_pragmas(pragmas: tuple[str, ...], dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    for pragma in pragmas:
        cursor.execute(pragma)
    cursor.close()


_COMPACT = json.JSONEncoder(separators=(",", ":"))  # one encoder: json.dumps with options builds one per call


def compact_json(value: Any) -> str:
    """JSON as our tables store it: no blanks after separators (JSON text columns keep every byte given)."""
    return _COMPACT.encode(value)


_DECODER = json.JSONDecoder()


def json_value(data: bytes) -> Any:
    """A JSON column's value from the bytes PostgreSQL sends (UTF-8): what ``json.loads`` gives, without its
    checks of the argument's type and look for another encoding, made for every JSON value read (about 13 a run)."""
    return _DECODER.decode(data.decode("utf-8", "surrogatepass"))


def create_engine_for(url: StoreURL, *, pool_size: int = 10) -> AsyncEngine:
    """The engine of ``url``'s database: one connection on SQLite (a single writer), at most ``pool_size``
    on PostgreSQL (see the README's connection budget)."""
    if url.kind == "postgres":
        engine = create_async_engine(
            url.sqlalchemy_url, pool_size=pool_size, max_overflow=0, pool_pre_ping=False, json_serializer=compact_json
        )
        event.listen(engine.sync_engine, "checkin", _note_checkin)
        event.listen(engine.sync_engine, "checkout", partial(_probe_after_outage, engine.sync_engine.dialect))
        return engine
    engine = create_async_engine(
        url.sqlalchemy_url,
        pool_size=1,
        max_overflow=0,
        json_serializer=compact_json,
        # SQLAlchemy's own arguments for the file (its dialect's create_connect_args), opened cancel-safely
        async_creator=partial(connect_sqlite, url.target, check_same_thread=False),
    )
    event.listen(engine.sync_engine, "connect", partial(_set_pragmas, sqlite_pragmas(url)))
    event.listen(engine.sync_engine, "handle_error", _cancelled_rolls_back)
    return engine


def _cancelled_rolls_back(context: ExceptionContext) -> None:
    """A statement on SQLite whose caller was cancelled (LangGraph cancels a step's other tasks when one fails)
    leaves its connection to be rolled back and pooled again, not invalidated.

    SQLAlchemy treats a cancellation as a disconnect and closes the connection without a rollback. An
    ``INSERT ... RETURNING`` cancelled before its rows were fetched is still active then, and SQLite keeps a
    connection closed with an active statement open (a "zombie") until that statement is collected: its write
    lock with it, so every other writer of the file waited out the busy timeout and failed with "database is
    locked". aiosqlite runs the statement to its end in its own thread whatever the caller does, so the
    connection is sound: the transaction's rollback aborts the statement and frees the lock at once."""
    if isinstance(context.original_exception, asyncio.CancelledError):
        context.is_disconnect = False


# What a call raises when the database went away under it (see lost_database): the driver's error, the pool's,
# or SQLAlchemy's wrapping the driver's.
DATABASE_ERRORS: tuple[type[Exception], ...] = (psycopg.OperationalError, PoolTimeout, OperationalError)


class OutageMark:
    """When this process last saw the database go away: a pooled connection last used before then may be one
    the outage ended, so it is probed on its next checkout (``checkpoints.backends.postgres.probe_if_idle``)
    instead of failing the call that takes it.

    ``refused`` and ``answered``: when a new connection to it last failed and last succeeded. While the last
    attempt failed the database is known to be away (:meth:`away`), and a caller waiting for a pooled
    connection is answered at once instead of at the pool's timeout."""

    at: float = float("-inf")
    refused: float = float("-inf")
    answered: float = float("-inf")
    warned: float = float("-inf")  # when this process last warned that the database is away

    def away(self) -> bool:
        """Whether the last new connection to the database failed (and none succeeded since)."""
        return self.refused > self.answered

    def say_away(self, where: str, error: str) -> None:
        """Log that the database is away, met ``where`` (a request, a timer pass, a lock check) with ``error``:
        a warning the first time since it last answered, and once per ``OUTAGE_REMINDER_S`` while it stays away;
        at info (-v) otherwise, since every request, timer pass and lock check meets the same outage."""
        now = time.monotonic()
        said = log.info
        if self.warned <= self.answered or now - self.warned >= OUTAGE_REMINDER_S:
            self.warned, said = now, log.warning
        said("database unavailable", where=where, error=error, meanwhile=AWAY_MEANWHILE)


OUTAGE_REMINDER_S = 60.0  # a long outage is said again once a minute, not at every call that meets it
AWAY_MEANWHILE = "requests are answered 503 (Retry-After), timers and runs wait; all go on once it answers"
OUTAGE = OutageMark()


def _note_checkin(_dbapi_conn: Any, record: ConnectionPoolEntry) -> None:
    record.info["checked_in"] = time.monotonic()


def ended_by_server(conn: psycopg.BaseConnection[Any]) -> bool:
    """Whether an idle connection has something to read: the server ended it (a restart, a failover, an
    administrator: its FATAL message, then the end of the stream), or, rarely, sent a notice. Nothing is
    read: the socket is polled, no round trip. An idle pooled connection ended while this process sent
    nothing on it (a restart it never saw) is told apart from a live one this way, at checkout."""
    if conn.closed:
        return True
    fd = conn.pgconn.socket
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLERR | select.POLLHUP)
        return bool(poller.poll(0))
    return bool(select.select([fd], [], [], 0)[0])  # Windows: no poll


def _probe_after_outage(dialect: Dialect, dbapi_conn: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
    """Probe a pooled connection of the engine last used before the process last saw the database away
    (:data:`OUTAGE`, noted by any of its pools), or one the server has ended (:func:`ended_by_server`): the
    call taking it would fail with it. A dead one makes the pool replace it (``DisconnectionError``). Others
    are not probed: a ping per checkout (``pool_pre_ping``) is a round trip per query."""
    before_outage = record.info.get("checked_in", float("inf")) <= max(OUTAGE.at, OUTAGE.refused)
    if not before_outage and not ended_by_server(dbapi_conn.driver_connection):
        return
    try:
        dialect.do_ping(dbapi_conn)
    except dialect.loaded_dbapi.Error as exc:
        raise DisconnectionError("a connection the database outage ended") from exc


def lost_database(error: BaseException) -> DatabaseUnavailableError | None:
    """The typed error for ``error`` when it, or what it was raised from, says PostgreSQL is not reachable now
    or cannot take work now (a connection refused or dropped, a shutdown, too many connections, a full disk:
    see :func:`unreachable`), whichever layer raised it (ours, SQLAlchemy's, the official saver's); None
    otherwise. Seeing one marks the outage (:data:`OUTAGE`), so the pool's connections from before it are
    probed."""
    cause = unreachable(error)
    if cause is None:
        return None
    OUTAGE.at = time.monotonic()
    if isinstance(cause, InstanceLockLostError):
        return cause
    reason = " ".join(str(cause).split())
    return DatabaseUnavailableError(f"the database is not reachable now ({reason}); try again shortly")


# SQLSTATEs saying the database is away or cannot take work now, whatever the statement: class 08 (connection
# exception), class 53 (insufficient resources: a full disk, no memory, too many connections: an operator's to
# fix, after which the same work succeeds) and the server ending sessions (57P01 admin shutdown, 57P02 crash
# shutdown, 57P03 cannot connect now, 57P05 idle session timeout). A driver error with no SQLSTATE is the
# connection's own failure (refused, dropped, timed out). Any other SQLSTATE is an answer about the statement.
_AWAY_CLASSES = ("08", "53")
_AWAY_STATES = frozenset({"57P01", "57P02", "57P03", "57P05"})
# The database rolled the transaction back for racing another (a deadlock, a serialization failure) or would
# not wait for another's lock (lock_timeout, NOWAIT): the same work may succeed when tried again, a few times.
_CONFLICT_STATES = frozenset({"40P01", "40001", "55P03"})


def _driver_errors(error: BaseException) -> Iterator[BaseException]:
    """``error`` and what it was raised from, each once."""
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        yield cause
        cause = cause.__cause__ or cause.__context__


def unreachable(error: BaseException) -> BaseException | None:
    """The error in ``error``'s chain (itself, or what it was raised from) saying PostgreSQL is not reachable
    now (see :func:`lost_database`): the pool's ``PoolTimeout``, or psycopg's ``OperationalError`` for a lost
    connection or with an outage's SQLSTATE; None otherwise. A cancelled statement, a deadlock, a lock timeout
    are the database's answers, not an outage (retried for ever as one, they would be repeated for ever).
    Marks nothing: for callers that only look, as log filters do."""
    for cause in _driver_errors(error):
        if isinstance(cause, PoolTimeout | InstanceLockLostError):  # the latter: its lock's connection was lost
            return cause
        if isinstance(cause, psycopg.OperationalError):
            state = cause.sqlstate
            if state is None or state[:2] in _AWAY_CLASSES or state in _AWAY_STATES:
                return cause
            return None  # the database answered: the statement's error, not an outage
    return None


def violated(error: BaseException, constraint: str) -> bool:
    """Whether ``error``, or what it was raised from, is PostgreSQL refusing a write that breaks ``constraint``."""
    return any(
        isinstance(cause, psycopg.errors.IntegrityError) and cause.diag.constraint_name == constraint
        for cause in _driver_errors(error)
    )


def conflicted(error: BaseException) -> BaseException | None:
    """The driver error in ``error``'s chain saying PostgreSQL rolled the transaction back for a conflict with
    another (a deadlock, a serialization failure, a lock it would not wait for), or None: work that may succeed
    when run again, but a bounded number of times (two callers that keep deadlocking would do so for ever)."""
    for cause in _driver_errors(error):
        if isinstance(cause, psycopg.Error) and cause.sqlstate is not None:
            return cause if cause.sqlstate in _CONFLICT_STATES else None
    return None


def refusal(error: BaseException) -> BaseException | None:
    """The driver's error in ``error``'s chain (psycopg's or sqlite3's): what the database itself answered, without
    the statement and parameters SQLAlchemy adds to its message (a failure's text is shown to users and kept in
    the log, and the parameters may be large or private); None for an error that did not come from the driver."""
    for cause in _driver_errors(error):
        if isinstance(cause, psycopg.Error | sqlite3.Error):
            return cause
    return None


def database_conflict(error: BaseException) -> ConcurrentUpdateError | None:
    """The typed error for ``error`` when it is a conflict (:func:`conflicted`), else None."""
    cause = conflicted(error)
    if cause is None:
        return None
    reason = " ".join(str(cause).split())
    return ConcurrentUpdateError(
        f"the database rolled this call back for a conflict with another one at the same time ({reason}); try again"
    )

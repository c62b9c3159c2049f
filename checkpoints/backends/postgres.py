"""PostgreSQL: the hot paths in plain psycopg, on the pool the saver shares.

Every step of every journey appends an event, and every run is created, claimed and finished: those
statements run as cheaply as the database allows, on a psycopg pool of autocommit connections (a lone
statement: no BEGIN/COMMIT round trips), prepared on first use per connection, with no ORM layer in
between (SQLAlchemy's async adapter costs several times the driver's own CPU per execute). Several
statements that must commit together become one statement of data-modifying CTEs: one round trip.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, ClassVar, Self, cast

import psycopg
from psycopg.errors import NotNullViolation, UniqueViolation
from psycopg.pq import ExecStatus
from psycopg.rows import dict_row, tuple_row
from psycopg.types.json import JsonLoadsFunction, set_json_dumps, set_json_loads
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from sqlalchemy import CTE, ColumnElement, Executable, func, select
from sqlalchemy.dialects.postgresql.psycopg import PGDialectAsync_psycopg
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.dml import UpdateBase

from checkpoints.backends.base import Backend, Params, Row, Transaction
from checkpoints.database import OUTAGE, compact_json, ended_by_server, json_value
from checkpoints.url import StoreURL

PROBE_AFTER_IDLE_S = 5.0  # seconds a pooled connection may sit unused before it is probed on checkout
# When each pooled connection was last checked out (or returned, by pools that return through ``note_return``).
_last_used: weakref.WeakKeyDictionary[psycopg.AsyncConnection[Any], float] = weakref.WeakKeyDictionary()


async def autocommit(conn: psycopg.AsyncConnection[Any]) -> None:
    await conn.set_autocommit(True)
    set_json_dumps(compact_json, conn)  # JSON text columns (the event log's payloads) keep every byte given
    set_json_loads(cast("JsonLoadsFunction", json_value), conn)  # psycopg's loaders hand it bytes, never str


async def note_return(conn: psycopg.AsyncConnection[Any]) -> None:
    _last_used[conn] = time.monotonic()


async def probe_if_idle(conn: psycopg.AsyncConnection[Any]) -> None:
    """Probe a connection on checkout only if it sat idle: one used moments ago is alive, and probing
    every checkout (procrastinate's default) costs a round trip per query.

    Idle counts from the connection's last checkout (or return, where the pool notes returns): a
    connection held long and given back moments ago is probed once more, never one less. One last used
    before the database was last seen away (``OUTAGE``) is probed too: the outage may have ended it; and so
    is one the server has ended, though this process saw nothing of it (a fast restart: ``ended_by_server``)."""
    now = time.monotonic()
    last = _last_used.get(conn)
    if last is None or now - last > PROBE_AFTER_IDLE_S or last <= OUTAGE.at or ended_by_server(conn):
        await AsyncConnectionPool.check_connection(conn)
    _last_used[conn] = now


KEPT_CURSORS = 100  # per connection, as psycopg's prepared_max: statements built per call never pile up


class PooledConnection(psycopg.AsyncConnection[Any]):
    """A connection of the process's pool, which keeps a cursor per hot-path statement it ran (see
    :meth:`PostgresBackend._run`). A connection has one user at a time (whoever checked it out, or the
    transaction on it), so its cursors have too. Each new one notes whether the database answered (``OUTAGE``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cursors: dict[str, psycopg.AsyncRawCursor[Any]] = {}  # by the statement's SQL text

    @classmethod
    async def connect(cls, *args: Any, **kwargs: Any) -> Self:
        try:
            conn = await super().connect(*args, **kwargs)
        except psycopg.OperationalError:
            OUTAGE.refused = time.monotonic()
            raise
        OUTAGE.answered = time.monotonic()
        return conn


AWAY_WAIT_S = 1.0  # how often a caller waiting for a pooled connection looks whether the database is away


class OutagePool(AsyncConnectionPool[Any]):
    """The pool, answering a caller that waits for a connection with :class:`PoolTimeout` within about
    ``AWAY_WAIT_S`` once the pool's last new connection failed (``OUTAGE.away()``): with the database away
    there is nothing to wait for, and its 503 comes then, not at the pool's timeout (30 s)."""

    async def getconn(self, timeout: float | None = None) -> Any:  # noqa: ASYNC109 (the pool's own signature)
        wait = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        while True:
            left = deadline - time.monotonic()
            try:
                return await super().getconn(max(min(left, AWAY_WAIT_S), 0.0))
            except PoolTimeout:
                if OUTAGE.away():
                    raise PoolTimeout("no connection to the database: its last new connection failed") from None
                if left <= AWAY_WAIT_S:
                    raise PoolTimeout(f"couldn't get a connection after {wait:.2f} sec") from None


@asynccontextmanager
async def open_pool(url: StoreURL, pool_size: int) -> AsyncIterator[AsyncConnectionPool[Any]]:
    """The process's psycopg pool: at most ``pool_size`` connections, shared by the LangGraph saver, the
    hot paths of our tables and the procrastinate queue. As the saver's docs build it: autocommit, dict
    rows (our statements and procrastinate ask for their own row shape per cursor). Autocommit is set by
    ``configure``, not passed as a connection argument: procrastinate opens its listening connection with
    the pool's arguments and an ``autocommit`` of its own."""
    pool: AsyncConnectionPool[Any] = OutagePool(
        url.target,
        connection_class=PooledConnection,
        min_size=1,
        max_size=pool_size,
        open=False,
        kwargs={"prepare_threshold": 0, "row_factory": dict_row},
        configure=autocommit,
        # No ``reset``: with one, psycopg_pool hands every returned connection to a worker task, so it is
        # back in the pool only once the loop gets to that task (a wait per query for the next caller).
        check=probe_if_idle,
    )
    async with pool:
        yield pool


class PostgresBackend(Backend):
    """The base backend, with writes and prebuilt reads on the shared psycopg pool."""

    unique_violations: ClassVar[tuple[type[BaseException], ...]] = (IntegrityError, UniqueViolation)

    def null_refused(self, error: BaseException) -> tuple[str, str] | None:
        cause = error.orig if isinstance(error, IntegrityError) else error  # SQLAlchemy's wrapper of psycopg's
        if isinstance(cause, NotNullViolation):
            return cause.diag.table_name or "", cause.diag.column_name or ""
        return None

    def __init__(self, engine: AsyncEngine, pool: AsyncConnectionPool[Any]) -> None:
        super().__init__(engine)
        self._pool = pool
        # The hot paths' text is compiled with ``$n`` placeholders for psycopg's raw cursor (see ``_run``).
        self._raw_dialect = PGDialectAsync_psycopg(  # type: ignore[no-untyped-call]
            paramstyle="numeric_dollar", json_serializer=compact_json
        )
        self._combined: dict[tuple[Executable, ...], Executable] = {}

    @property
    def pool(self) -> AsyncConnectionPool[Any]:
        """The process's psycopg pool, shared by the saver, these hot paths and the queue."""
        return self._pool

    def notifying(self, statement: Any, channel: str, payload: Callable[[CTE], ColumnElement[str]]) -> Executable:
        # The notice goes out when the write commits, so a woken waiter reads the change.
        written = statement.cte("written")
        return select(written, func.pg_notify(channel, payload(written)).label("notified"))

    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
        return self._pool_transaction()

    @asynccontextmanager
    async def _pool_transaction(self) -> AsyncIterator[Transaction]:
        async with self._pool.connection() as conn, conn.transaction():
            yield _PoolTransaction(self, conn)

    async def _run(self, conn: psycopg.AsyncConnection[Any], statement: Executable, params: Params | None) -> list[Row]:
        """Run ``statement`` on ``conn``: planned once per connection; on a raw cursor, whose ``$n`` text and
        list of values psycopg sends as they are (a named query is parsed and its values reordered per call),
        and rows are read when the result has some (``description`` would build its column objects first).

        A pooled connection runs each statement on the cursor it ran it on before: psycopg then keeps that
        cursor's adapters and their dumpers, which a new cursor builds again on every call (a quarter of a
        statement's driver CPU). A cursor keeps its last result until its next call, so one whose result had
        more than one row is not kept (at most a row per statement and connection stays in memory)."""
        compiled = self.compiled(statement, self._raw_dialect)
        kept = conn.cursors if isinstance(conn, PooledConnection) else None
        cursor = kept.pop(compiled.sql, None) if kept is not None else None
        if cursor is None:
            cursor = psycopg.AsyncRawCursor(conn, row_factory=tuple_row)
        await cursor.execute(compiled.sql, compiled.bind(params), prepare=True)
        result = cursor.pgresult
        fetched = await cursor.fetchall() if result is not None and result.status == ExecStatus.TUPLES_OK else []
        if kept is not None and len(fetched) <= 1 and len(kept) < KEPT_CURSORS:
            kept[compiled.sql] = cursor  # given back only once it succeeded: a failed call's cursor is dropped
        return compiled.rows(fetched) if fetched else []

    async def write(self, statements: Sequence[Executable], params: Params) -> list[Row]:
        statement = statements[0] if len(statements) == 1 else self._one_statement(tuple(statements))
        return await self._pooled(statement, params)

    def _one_statement(self, statements: tuple[Executable, ...]) -> Executable:
        """The first statement, with the others as data-modifying CTEs: one statement, so one transaction."""
        found = self._combined.get(statements)
        if found is None:
            first, *rest = statements
            others = [other.cte(f"also_{n}") for n, other in enumerate(rest)]  # type: ignore[attr-defined]
            if isinstance(first, UpdateBase) and first._returning:
                found = select(first.cte("main")).add_cte(*others)
            else:
                found = first.add_cte(*others)  # type: ignore[attr-defined]
            self._combined[statements] = found
        return found

    async def read(self, statement: Executable, params: Params | None = None) -> list[Row]:
        return await self._pooled(statement, params)

    async def _pooled(self, statement: Executable, params: Params | None) -> list[Row]:
        """Run ``statement`` on a connection of the pool, taken with ``getconn`` and given back with ``putconn``.
        Not the pool's ``connection()``: that also enters the connection's own context, whose commit on the
        way out is a no-op on an autocommit connection that still costs a lock, a wait and a generator (a
        seventh of a statement's driver CPU, on every step's event). ``putconn`` does what matters on the
        way back: a connection given back mid-statement (a cancelled caller) or broken is closed and
        replaced, one left in a transaction is rolled back."""
        conn = await self._pool.getconn()
        try:
            return await self._run(conn, statement, params)
        finally:
            await self._pool.putconn(conn)


class _PoolTransaction:
    def __init__(self, backend: PostgresBackend, conn: psycopg.AsyncConnection[Any]) -> None:
        self._backend = backend
        self._conn = conn

    async def execute(self, statement: Executable, params: Params | None = None) -> list[Row]:
        return await self._backend._run(self._conn, statement, params)

    async def driver_connection(self) -> Any:
        return self._conn

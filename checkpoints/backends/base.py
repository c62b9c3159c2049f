"""The one persistence seam: every query of our tables is defined once, with SQLAlchemy, and runs here.

:class:`Backend` executes those definitions through the SQLAlchemy engine, on either dialect. The
dialect subclasses (:mod:`checkpoints.backends.sqlite`, :mod:`checkpoints.backends.postgres`) override
hooks only: where a hot path runs (the saver's SQLite connection, a psycopg pool), how several
statements become one round trip, how a write announces itself. A hot path on a raw driver runs the
same definition, compiled once for that driver (:class:`CompiledStatement`): there is never a second,
hand-written text of a query.

Statements handed to :meth:`Backend.write`, :meth:`Backend.read` and a :class:`Transaction` are
compiled once and cached by identity, so they are built once (module level or in ``__init__``) with
their per-call values as bind parameters. Ad-hoc statements built per call go through
:meth:`Backend.query` (SQLAlchemy's own statement cache).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, cast

from sqlalchemy import CTE, ColumnElement, Executable, Table, literal, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import BindParameter
from sqlalchemy.sql.visitors import replacement_traverse

Row = dict[str, Any]
Params = Mapping[str, Any]
# A prebuilt statement and its values, handed to a store method to run inside its own transaction.
Statement = tuple[Executable, Params]


_PING = select(literal(1).label("answered"))  # Backend.ping


class Transaction(Protocol):
    """Statements run in one transaction of a backend (committed when its context exits cleanly)."""

    async def execute(self, statement: Executable, params: Params | None = None) -> list[Row]: ...

    async def driver_connection(self) -> Any:
        """The driver's own connection of this transaction (procrastinate defers a job on it)."""
        ...


@dataclass(frozen=True, slots=True)
class CompiledStatement:
    """One SQLAlchemy definition compiled for a raw driver: its text, the values it binds itself (already
    converted), the converters of its per-call values, and the names and converters of its result columns.
    Conversions are SQLAlchemy's own type processors, so rows read the same on every path.

    Compiled for a positional paramstyle (``$1``: psycopg sends the text as it is, with no per-call parsing
    of named placeholders), ``order`` names the value of each placeholder, and :meth:`bind` gives a list."""

    sql: str
    constants: dict[str, Any]
    binders: tuple[tuple[str, Callable[[Any], Any]], ...]
    columns: tuple[str, ...]
    readers: tuple[Callable[[Any], Any] | None, ...]
    order: tuple[str, ...] | None = None

    @classmethod
    def of(cls, statement: ClauseElement, dialect: Dialect) -> CompiledStatement:
        # Rendered whole (IN lists expanded), so its per-call values must not be required at compile time.
        no_options: dict[str, Any] = {}
        rendered = replacement_traverse(cast(Any, statement), no_options, _optional)
        assert isinstance(rendered, ClauseElement)
        done = rendered.compile(dialect=dialect, compile_kwargs={"render_postcompile": True})
        assert isinstance(done, SQLCompiler)
        processors: dict[str, Callable[[Any], Any]] = {}
        for bind, name in done.bind_names.items():
            process = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if process is not None:
                processors[name] = process
        constants = {
            name: (processors[name](value) if name in processors and value is not None else value)
            for name, value in done.params.items()
        }
        exported = list(getattr(statement, "exported_columns", ()))
        readers = tuple(column.type.dialect_impl(dialect).result_processor(dialect, None) for column in exported)
        return cls(
            sql=str(done),
            constants=constants,
            binders=tuple(processors.items()),
            columns=tuple(column.key for column in exported),
            readers=readers,
            order=tuple(done.positiontup) if done.positional and done.positiontup is not None else None,
        )

    def bind(self, params: Params | None) -> dict[str, Any] | list[Any]:
        values = dict(self.constants)
        if params:
            values.update(params)
            for name, process in self.binders:
                if name in params and params[name] is not None:
                    values[name] = process(params[name])
        return values if self.order is None else [values[name] for name in self.order]

    def rows(self, fetched: Sequence[Sequence[Any]]) -> list[Row]:
        columns, readers = self.columns, self.readers
        return [
            {
                name: (read(value) if read is not None else value)
                for name, read, value in zip(columns, readers, row, strict=False)
            }
            for row in fetched
        ]


def _optional(element: Any, **_: Any) -> Any:
    """A per-call bind parameter made optional, so that its statement compiles without a value for it."""
    if isinstance(element, BindParameter) and element.required:
        optional = element._clone()
        optional.required = False
        return optional
    return None


class Backend:
    """Our tables on one database, executed through SQLAlchemy (the dialect subclasses add hot paths).

    Concrete: on its own it runs every statement through the engine's pool, on either dialect."""

    # Errors by which the database refuses a duplicate key, whichever path ran the statement.
    unique_violations: ClassVar[tuple[type[BaseException], ...]] = (IntegrityError,)

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._dialect = engine.dialect
        self._compiled: dict[Executable, CompiledStatement] = {}

    @property
    def engine(self) -> AsyncEngine:
        """The SQLAlchemy engine: multi-statement transactions of the other stores, and read-only views."""
        return self._engine

    @property
    def postgres(self) -> bool:
        return self._dialect.name == "postgresql"

    # --- statement shape (dialect hooks) ------------------------------------------------------------

    def insert(self, table: Table) -> postgresql.Insert | sqlite.Insert:
        """An INSERT that can say ``ON CONFLICT``, in this database's dialect."""
        return postgresql.insert(table) if self.postgres else sqlite.insert(table)

    def notifying(self, statement: Any, channel: str, payload: Callable[[CTE], ColumnElement[str]]) -> Executable:
        """``statement`` (a DML statement with RETURNING), which on PostgreSQL also notifies ``channel`` when it
        commits, once per row written, with ``payload`` (built from the statement as a CTE: its returned
        columns, or its whole row). Elsewhere: the statement itself."""
        return statement  # type: ignore[no-any-return]

    def is_unique_violation(self, error: BaseException) -> bool:
        return isinstance(error, self.unique_violations) and self.null_refused(error) is None

    def null_refused(self, error: BaseException) -> tuple[str, str] | None:
        """The table and column whose NOT NULL constraint ``error`` is, when it is the database refusing a NULL
        (a statement's guard: see ``checkpoints.runs._BIND``); None for any other error."""
        return None

    # --- execution (hooks; the base runs everything through SQLAlchemy) -----------------------------

    def compiled(self, statement: Executable, dialect: Dialect) -> CompiledStatement:
        """``statement`` compiled for a raw driver of ``dialect``, once."""
        found = self._compiled.get(statement)
        if found is None:
            assert isinstance(statement, ClauseElement)
            found = self._compiled[statement] = CompiledStatement.of(statement, dialect)
        return found

    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
        """A transaction for statements that must commit together."""
        return self._engine_transaction()

    @asynccontextmanager
    async def _engine_transaction(self) -> AsyncIterator[Transaction]:
        async with self._engine.begin() as conn:
            yield _EngineTransaction(conn)

    async def write(self, statements: Sequence[Executable], params: Params) -> list[Row]:
        """Run ``statements`` (all bound from ``params``) in one transaction; the rows the first returns."""
        async with self.transaction() as tx:
            rows = await tx.execute(statements[0], params)
            for statement in statements[1:]:
                await tx.execute(statement, params)
            return rows

    async def write_each(self, statements: Sequence[Executable], params: Sequence[Params]) -> list[list[Row]]:
        """:meth:`write` once per entry of ``params``, all in one transaction; the rows the first statement
        returned for each."""
        async with self.transaction() as tx:
            found = []
            for values in params:
                found.append(await tx.execute(statements[0], values))
                for statement in statements[1:]:
                    await tx.execute(statement, values)
            return found

    async def ping(self) -> None:
        """One round trip to the database, on the connections the hot paths use: raises if it does not answer
        (a readiness probe: the server's ``/ok?check_db=1``)."""
        await self.read(_PING)

    async def read(self, statement: Executable, params: Params | None = None) -> list[Row]:
        """The rows of a prebuilt query (see the module docstring)."""
        return await self.query(statement, params)

    async def query(self, statement: Executable, params: Params | None = None) -> list[Row]:
        """The rows of any query, built per call, through SQLAlchemy."""
        async with self._engine.connect() as conn:
            return _rows(await conn.execute(statement, params or {}))

    async def execute(self, statement: Executable, params: Params | None = None) -> list[Row]:
        """Run any statement, built per call, in a transaction of its own through SQLAlchemy."""
        async with self._engine.begin() as conn:
            return _rows(await conn.execute(statement, params or {}))


class _EngineTransaction:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def execute(self, statement: Executable, params: Params | None = None) -> list[Row]:
        return _rows(await self._conn.execute(statement, params or {}))

    async def driver_connection(self) -> Any:
        raw = await self._conn.get_raw_connection()
        return raw.driver_connection


def _rows(result: Any) -> list[Row]:
    return [dict(row._mapping) for row in result] if result.returns_rows else []

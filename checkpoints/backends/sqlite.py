"""SQLite (and ``memory://``, a throwaway SQLite file): writes of the hot path on the saver's connection.

SQLite has one writer at a time. With our writes on a connection of their own, every step's append
and the checkpointer's writes fight over the file lock, and the loser sleeps in SQLite's busy handler.
On the saver's connection, under the saver's lock, they simply take turns. Reads stay on SQLAlchemy's
connection (WAL readers never wait for the writer).
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, ClassVar

import aiosqlite
from sqlalchemy import Executable
from sqlalchemy.dialects.sqlite.aiosqlite import SQLiteDialect_aiosqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from checkpoints.backends.base import Backend, Params, Row, Transaction
from checkpoints.database import compact_json

# sqlite3 tells a NOT NULL violation only by its message (its extended error code says no more than which kind).
_NOT_NULL = re.compile(r"NOT NULL constraint failed: (?P<table>\w+)\.(?P<column>\w+)")


class SqliteBackend(Backend):
    """The base backend, with transactions of written statements on the saver's aiosqlite connection."""

    unique_violations: ClassVar[tuple[type[BaseException], ...]] = (IntegrityError, sqlite3.IntegrityError)

    def __init__(self, engine: AsyncEngine, conn: aiosqlite.Connection, lock: asyncio.Lock) -> None:
        super().__init__(engine)
        self._conn = conn
        self._lock = lock
        self._raw_dialect = SQLiteDialect_aiosqlite(paramstyle="named", json_serializer=compact_json)

    def null_refused(self, error: BaseException) -> tuple[str, str] | None:
        cause = error.orig if isinstance(error, IntegrityError) else error  # SQLAlchemy's wrapper of sqlite3's
        if isinstance(cause, sqlite3.IntegrityError) and (found := _NOT_NULL.fullmatch(str(cause))) is not None:
            return found["table"], found["column"]
        return None

    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
        return self._saver_transaction()

    @asynccontextmanager
    async def _saver_transaction(self) -> AsyncIterator[Transaction]:
        async with self._lock:
            try:
                yield _SaverTransaction(self)
                await self._conn.commit()
            except BaseException:
                await self._conn.rollback()
                raise

    async def _run(self, statement: Executable, params: Params | None) -> list[Row]:
        compiled = self.compiled(statement, self._raw_dialect)
        async with self._conn.execute(compiled.sql, compiled.bind(params)) as cursor:
            return compiled.rows(list(await cursor.fetchall()))

    async def write(self, statements: Sequence[Executable], params: Params) -> list[Row]:
        async with self.transaction():  # the transaction holds the saver's lock: run on its connection
            rows = await self._run(statements[0], params)
            for statement in statements[1:]:
                await self._run(statement, params)
            return rows


class _SaverTransaction:
    def __init__(self, backend: SqliteBackend) -> None:
        self._backend = backend

    async def execute(self, statement: Executable, params: Params | None = None) -> list[Row]:
        return await self._backend._run(statement, params)

    async def driver_connection(self) -> Any:
        return self._backend._conn

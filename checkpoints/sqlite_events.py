"""The event log's appends on SQLite, on the checkpointer's own connection.

SQLite has one writer at a time. With the log on a connection of its own, every step's append and
the checkpointer's writes fight over the file lock, and the loser sleeps in SQLite's busy handler.
On the saver's connection, under the saver's lock, they simply take turns. Values are bound with the
very SQLAlchemy type processors the rest of the code reads them back with, so rows look the same
whichever path wrote them; reads stay on SQLAlchemy (WAL readers never wait for the writer).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from datetime import datetime
from typing import Any

import aiosqlite
from sqlalchemy.engine import Dialect

from checkpoints.seq_race import SEQ_ATTEMPTS, after_lost_race
from checkpoints.tables import journey_events

_APPEND = """
INSERT INTO journey_events (instance_id, seq, type, step, payload, idempotency_key, created_at)
VALUES (:instance_id, (SELECT coalesce(max(seq), 0) + 1 FROM journey_events WHERE instance_id = :instance_id),
        :type, :step, :payload, :key, :created_at)
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING seq
"""
_SET_STATUS = "UPDATE journey_instances SET status = :status, updated_at = :created_at WHERE instance_id = :instance_id"
_REGISTER_INSTANCE = """
INSERT INTO journey_instances (instance_id, journey_id, pattern, user_id, status, created_at, updated_at)
VALUES (:instance_id, :journey_id, :pattern, :user_id, 'in_progress', :created_at, :created_at)
"""
_FIRST_EVENT = """
INSERT INTO journey_events (instance_id, seq, type, step, payload, idempotency_key, created_at)
VALUES (:instance_id, 1, :type, :step, :payload, :key, :created_at)
"""


def _processor(column: Any, dialect: Dialect) -> Callable[[Any], Any]:
    bind = column.type.bind_processor(dialect)
    return bind if bind is not None else (lambda value: value)


class SqliteEventStatements:
    """Appends to ``journey_events`` (and instance registration) on the saver's aiosqlite connection."""

    def __init__(self, conn: aiosqlite.Connection, lock: asyncio.Lock, dialect: Dialect) -> None:
        self._conn = conn
        self._lock = lock
        self._payload = _processor(journey_events.c.payload, dialect)
        self._time = _processor(journey_events.c.created_at, dialect)

    async def append(
        self,
        instance_id: str,
        type_: str,
        step: str | None,
        payload: dict[str, Any],
        key: str | None,
        created_at: datetime,
        status: str | None,
    ) -> bool:
        """Append one event (and set the instance's status) in one transaction; False when its key was there."""
        values = {
            "instance_id": instance_id,
            "type": type_,
            "step": step,
            "payload": self._payload(payload),
            "key": key,
            "created_at": self._time(created_at),
            "status": status,
        }
        for attempt in range(SEQ_ATTEMPTS):
            async with self._lock:
                try:
                    async with self._conn.execute(_APPEND, values) as cursor:
                        written = await cursor.fetchone() is not None
                    if status is not None:
                        await self._conn.execute(_SET_STATUS, values)
                    await self._conn.commit()
                    return written
                except sqlite3.IntegrityError:
                    # A writer on another connection took this seq first (keys conflict silently).
                    await self._conn.rollback()
                    if attempt == SEQ_ATTEMPTS - 1:
                        raise
                except BaseException:
                    await self._conn.rollback()
                    raise
            await after_lost_race(attempt)
        raise AssertionError("unreachable")

    async def register(
        self,
        instance: dict[str, Any],
        type_: str,
        step: str | None,
        payload: dict[str, Any],
        key: str | None,
        created_at: datetime,
    ) -> None:
        """Insert an instance and its first event in one transaction; IntegrityError if it exists."""
        values = {
            **instance,
            "type": type_,
            "step": step,
            "payload": self._payload(payload),
            "key": key,
            "created_at": self._time(created_at),
        }
        async with self._lock:
            try:
                await self._conn.execute(_REGISTER_INSTANCE, values)
                await self._conn.execute(_FIRST_EVENT, values)
                await self._conn.commit()
            except BaseException:
                await self._conn.rollback()
                raise

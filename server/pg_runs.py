"""The run queue's hot path on PostgreSQL, in plain psycopg.

Every run is created, claimed, bound and finished once, and read by whoever waits on it: a handful of
statements per run, each paid in full by the API or the worker. Like the event log's appends
(:mod:`checkpoints.pg_events`), they skip SQLAlchemy's async adapter, which costs several times the
driver's own CPU per execute. They write the tables :mod:`checkpoints.tables` defines; every other
query of :class:`server.runs.RunStore` keeps going through SQLAlchemy. A statement defined with
SQLAlchemy (the claim) runs here too, compiled once for psycopg: one definition for both dialects.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import ClauseElement

RUN_COLUMNS = (
    "run_id, thread_id, assistant_id, status, kind, input, command, stream_modes, multitask_strategy, metadata, "
    "principal, base_checkpoint, attempts, error, created_at, updated_at, output, job_id, cancel_requested_at, "
    "durability"
)
_ACTIVE = "status IN ('pending', 'running')"
# The notice goes out when the write commits (one statement: at once), so a woken waiter reads it.
_FINISH = f"""
WITH finished AS (
    UPDATE server_runs SET status = %(status)s, error = %(error)s, output = %(output)s, updated_at = %(now)s
    WHERE run_id = %(run_id)s AND {_ACTIVE}
    RETURNING {RUN_COLUMNS}
)
SELECT finished.*, pg_notify(%(channel)s, finished.run_id) FROM finished
"""
_BIND = """
UPDATE server_threads SET assistant_id = %(assistant_id)s, instance_id = %(instance_id)s, updated_at = %(now)s
WHERE thread_id = %(thread_id)s
"""
_GET = f"SELECT {RUN_COLUMNS} FROM server_runs WHERE run_id = %(run_id)s"
_INSERT_THREAD = """
INSERT INTO server_threads (thread_id, assistant_id, instance_id, owner, metadata, created_at, updated_at)
VALUES (%(thread_id)s, %(assistant_id)s, %(instance_id)s, %(owner)s, %(metadata)s, %(created_at)s, %(updated_at)s)
"""
_INSERT_RUN = (
    f"INSERT INTO server_runs ({RUN_COLUMNS}) VALUES ({', '.join(f'%({c.strip()})s' for c in RUN_COLUMNS.split(','))})"
)
_JSON_COLUMNS = ("input", "command", "stream_modes", "metadata", "error", "output")

Row = dict[str, Any]
# Puts the new run's job on the queue, on the creating transaction's connection; answers the job's id.
JobDeferral = Callable[[psycopg.AsyncConnection[Any]], Awaitable[int | None]]


class PgRunStatements:
    """Finishes, binds, reads and creates runs (and executes statements defined with SQLAlchemy, such as
    the claim) through a psycopg pool of autocommit connections."""

    def __init__(self, pool: AsyncConnectionPool[Any], channel: str, dialect: Dialect) -> None:
        self._pool = pool
        self._channel = channel
        self._dialect = dialect  # the engine's (psycopg's paramstyle): statements defined with SQLAlchemy
        self._compiled: dict[ClauseElement, _Compiled] = {}

    async def finish(self, run_id: str, status: str, error: Any, output: Any, now: datetime) -> Row | None:
        found = await self._one(
            _FINISH,
            {
                "run_id": run_id,
                "status": status,
                "error": _json(error),
                "output": _json(output),
                "now": now,
                "channel": self._channel,
            },
        )
        if found is not None:
            found.pop("pg_notify", None)
        return found

    async def bind(self, thread_id: str, assistant_id: str, instance_id: str, now: datetime) -> None:
        async with self._pool.connection() as conn:
            values = {"thread_id": thread_id, "assistant_id": assistant_id, "instance_id": instance_id, "now": now}
            await conn.execute(_BIND, values, prepare=True)

    async def get(self, run_id: str) -> Row | None:
        return await self._one(_GET, {"run_id": run_id})

    async def create_with_thread(
        self, thread: Mapping[str, Any], run: Mapping[str, Any], defer: JobDeferral | None
    ) -> int | None:
        """Insert a new thread, its first run and the run's queue job in one transaction; the job's id."""
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute(_INSERT_THREAD, {**thread, "metadata": Jsonb(thread["metadata"])}, prepare=True)
            job_id = await defer(conn) if defer is not None else None
            values = {k: (_json(v) if k in _JSON_COLUMNS else v) for k, v in run.items()}
            await conn.execute(_INSERT_RUN, {**values, "job_id": job_id}, prepare=True)
        return job_id

    async def one(self, statement: ClauseElement, params: Mapping[str, Any]) -> Row | None:
        """Execute the one definition of a statement, written with SQLAlchemy, on the raw driver; its
        first row. Its per-call values are bind parameters declared ``required=False``, and must be
        values psycopg adapts itself (no JSON)."""
        compiled = self._compiled.get(statement)
        if compiled is None:  # once per statement: psycopg then prepares it once per connection
            done = statement.compile(dialect=self._dialect, compile_kwargs={"render_postcompile": True})
            compiled = self._compiled[statement] = _Compiled(str(done), dict(done.params))
        return await self._one(compiled.sql, {**compiled.constants, **params})

    async def _one(self, query: str, params: Mapping[str, Any]) -> Row | None:
        async with self._pool.connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(query, params, prepare=True)  # parsed and planned once per connection
            row: Row | None = await cursor.fetchone()
            return row


@dataclass(frozen=True, slots=True)
class _Compiled:
    """A SQLAlchemy statement compiled for psycopg: its SQL, and the values it binds itself."""

    sql: str
    constants: dict[str, Any]


def _json(value: Any) -> Jsonb | None:
    return None if value is None else Jsonb(value)

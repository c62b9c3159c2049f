"""The event log's hot path on PostgreSQL, in plain psycopg.

Every step of every journey appends an event, so the append is as cheap as the database allows:
one statement (autocommit, no BEGIN/COMMIT round trips), prepared on first use per connection, and
no ORM layer in between (SQLAlchemy's async adapter costs several times the driver's own CPU per
execute). The statements write the very tables SQLAlchemy defines in ``checkpoints.tables``, and
every other query keeps going through SQLAlchemy.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from psycopg.errors import UniqueViolation
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from checkpoints.seq_race import SEQ_ATTEMPTS, after_lost_race
from checkpoints.tables import EVENTS_PRIMARY_KEY

# The next seq of the instance is taken in the insert itself; a concurrent writer of the same instance
# makes one of the two fail on the (instance_id, seq) primary key, and that one simply goes again.
_INSERT = """
INSERT INTO journey_events (instance_id, seq, type, step, payload, idempotency_key, created_at)
VALUES (%(instance_id)s::varchar,
        (SELECT coalesce(max(seq), 0) + 1 FROM journey_events WHERE instance_id = %(instance_id)s::varchar),
        %(type)s, %(step)s, %(payload)s, %(key)s, %(created_at)s)
"""
_APPEND = _INSERT + "ON CONFLICT (idempotency_key) DO NOTHING RETURNING seq"
# With a status: the event and the instance's new status in one statement, so in one transaction.
_APPEND_WITH_STATUS = f"""
WITH appended AS ({_APPEND}),
     moved AS (UPDATE journey_instances SET status = %(status)s::varchar, updated_at = %(created_at)s
               WHERE instance_id = %(instance_id)s::varchar)
SELECT seq FROM appended
"""
_REGISTER = """
WITH registered AS (
    INSERT INTO journey_instances (instance_id, journey_id, pattern, user_id, status, created_at, updated_at)
    VALUES (%(instance_id)s::varchar, %(journey_id)s, %(pattern)s, %(user_id)s, 'in_progress',
            %(created_at)s, %(created_at)s)
)
INSERT INTO journey_events (instance_id, seq, type, step, payload, idempotency_key, created_at)
VALUES (%(instance_id)s::varchar, 1, %(type)s, %(step)s, %(payload)s, %(key)s, %(created_at)s)
"""
_SAVE_DESIGN = """
INSERT INTO journey_designs (journey_id, pattern, journey_type, spec, created_at)
VALUES (%(journey_id)s, %(pattern)s, %(journey_type)s, %(spec)s, %(created_at)s)
"""
_COLUMNS = "instance_id, seq, type, step, payload, idempotency_key, created_at"
_BY_KEY = f"SELECT {_COLUMNS} FROM journey_events WHERE idempotency_key = %(key)s"
_OF_INSTANCE = f"SELECT {_COLUMNS} FROM journey_events WHERE instance_id = %(instance_id)s::varchar AND seq > %(after)s"


class PgEventStatements:
    """Appends and reads of ``journey_events`` through a psycopg pool of autocommit connections."""

    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self._pool = pool

    @property
    def pool(self) -> AsyncConnectionPool[Any]:
        return self._pool

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
        """Append one event (and set the instance's status); False when its key was already there."""
        values = {
            "instance_id": instance_id,
            "type": type_,
            "step": step,
            "payload": Jsonb(payload),
            "key": key,
            "created_at": created_at,
            "status": status,
        }
        statement = _APPEND if status is None else _APPEND_WITH_STATUS
        for attempt in range(SEQ_ATTEMPTS):
            try:
                async with self._pool.connection() as conn:
                    cursor = await conn.execute(statement, values, prepare=True)
                    return await cursor.fetchone() is not None
            except UniqueViolation as exc:
                if exc.diag.constraint_name != EVENTS_PRIMARY_KEY or attempt == SEQ_ATTEMPTS - 1:
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
        """Insert an instance and its first event in one statement; UniqueViolation if it exists."""
        values = {**instance, "type": type_, "step": step, "payload": Jsonb(payload), "key": key}
        async with self._pool.connection() as conn:
            await conn.execute(_REGISTER, {**values, "created_at": created_at}, prepare=True)

    async def save_design(
        self, journey_id: str, pattern: str, journey_type: str, spec: dict[str, Any], created_at: datetime
    ) -> None:
        """A new design: most runs through the server design the journey they start."""
        values = {"journey_id": journey_id, "pattern": pattern, "journey_type": journey_type, "spec": Jsonb(spec)}
        async with self._pool.connection() as conn:
            await conn.execute(_SAVE_DESIGN, {**values, "created_at": created_at}, prepare=True)

    async def find_by_key(self, key: str) -> dict[str, Any] | None:
        async with self._pool.connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(_BY_KEY, {"key": key}, prepare=True)
            row: dict[str, Any] | None = await cursor.fetchone()
            return row

    async def list(self, instance_id: str, *, types: Sequence[str] | None, after_seq: int) -> list[dict[str, Any]]:
        query = _OF_INSTANCE + (" AND type = ANY(%(types)s)" if types else "") + " ORDER BY seq"
        async with self._pool.connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(query, {"instance_id": instance_id, "after": after_seq, "types": list(types or [])})
            rows: list[dict[str, Any]] = await cursor.fetchall()
            return rows

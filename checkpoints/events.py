"""The append-only event log: every agent call, step, navigation and status change of a journey.

Growing history lives here, not in checkpointed graph state (which is re-stored at every step).
Rows are never updated or deleted by the runtime; views such as milestones and analytics are
derived from them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from checkpoints.clock import Clock
from checkpoints.tables import journey_events, journey_instances


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to append. ``key`` makes the append idempotent: a second append with it is a no-op."""

    type: str
    payload: dict[str, Any] = field(default_factory=dict)
    step: str | None = None
    key: str | None = None


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    instance_id: str
    seq: int
    type: str
    step: str | None
    payload: dict[str, Any]
    key: str | None
    created_at: datetime


def _event_from_row(row: Any) -> Event:
    return Event(
        id=row.id,
        instance_id=row.instance_id,
        seq=row.seq,
        type=row.type,
        step=row.step,
        payload=row.payload,
        key=row.idempotency_key,
        created_at=row.created_at,
    )


class EventLog:
    def __init__(self, engine: AsyncEngine, clock: Clock) -> None:
        self._engine = engine
        self._clock = clock
        dialect = engine.dialect.name
        self._insert = postgresql.insert if dialect == "postgresql" else sqlite.insert

    async def append(self, instance_id: str, events: Sequence[NewEvent], *, status: str | None = None) -> list[bool]:
        """Append ``events`` (and optionally set the instance's status) in one transaction.

        Returns, per event, whether it was written (False: its key was already there).
        """
        for attempt in range(5):
            try:
                async with self._engine.begin() as conn:
                    written = [await self._append_one(conn, instance_id, e) for e in events]
                    if status is not None:
                        await conn.execute(
                            update(journey_instances)
                            .where(journey_instances.c.instance_id == instance_id)
                            .values(status=status, updated_at=self._clock.now())
                        )
                    return written
            except IntegrityError:
                # Two writers raced for the same sequence number; the loser simply goes again.
                if attempt == 4:
                    raise
        raise AssertionError("unreachable")

    async def _append_one(self, conn: AsyncConnection, instance_id: str, event: NewEvent) -> bool:
        next_seq = (
            select(func.coalesce(func.max(journey_events.c.seq), 0) + 1)
            .where(journey_events.c.instance_id == instance_id)
            .scalar_subquery()
        )
        stmt = self._insert(journey_events).values(
            instance_id=instance_id,
            seq=next_seq,
            type=event.type,
            step=event.step,
            payload=event.payload,
            idempotency_key=event.key,
            created_at=self._clock.now(),
        )
        if event.key is not None:
            stmt = stmt.on_conflict_do_nothing(index_elements=["idempotency_key"])
        result = await conn.execute(stmt)
        return bool(result.rowcount)

    async def find_by_key(self, key: str) -> Event | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(journey_events).where(journey_events.c.idempotency_key == key))).first()
        return _event_from_row(row) if row else None

    async def list(self, instance_id: str, *, types: Sequence[str] | None = None, after_seq: int = 0) -> list[Event]:
        query = (
            select(journey_events)
            .where(journey_events.c.instance_id == instance_id, journey_events.c.seq > after_seq)
            .order_by(journey_events.c.seq)
        )
        if types:
            query = query.where(journey_events.c.type.in_(list(types)))
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_event_from_row(r) for r in rows]

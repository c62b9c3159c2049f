"""Journey designs and the instance index: what exists, which pattern, whose, and in what status."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.errors import UniqueViolation
from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from checkpoints.clock import Clock
from checkpoints.errors import DuplicateDesignError, DuplicateInstanceError
from checkpoints.events import EventWriter, NewEvent
from checkpoints.pg_events import PgEventStatements
from checkpoints.tables import journey_designs, journey_events, journey_instances


@dataclass(frozen=True, slots=True)
class Design:
    """A saved journey design: its spec under an id, for one pattern."""

    journey_id: str
    pattern: str
    journey_type: str
    spec: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Instance:
    """A journey instance as indexed: its design, pattern, user and status."""

    instance_id: str
    journey_id: str
    pattern: str
    user_id: str
    status: str
    created_at: datetime
    updated_at: datetime


class JourneyIndex:
    """Saved designs and the index of journey instances (what exists, whose, in what status)."""

    def __init__(
        self,
        engine: AsyncEngine,
        clock: Clock,
        *,
        writer: EventWriter | None = None,
        pg: PgEventStatements | None = None,
    ) -> None:
        self._engine = engine
        self._clock = clock
        self._writer = writer  # registering an instance is on the hot path of every start
        self._pg = pg  # PostgreSQL: saving a design too (most server runs design what they start)

    async def save_design(self, journey_id: str, pattern: str, journey_type: str, spec: dict[str, Any]) -> Design:
        """Store a design under ``journey_id``; DuplicateDesignError when one is stored already (on every
        backend alike: a design stored under its content's id may be saved by two starts at once)."""
        now = self._clock.now()
        try:
            if self._pg is not None:
                await self._pg.save_design(journey_id, pattern, journey_type, spec, now)
            else:
                async with self._engine.begin() as conn:
                    await conn.execute(
                        insert(journey_designs).values(
                            journey_id=journey_id,
                            pattern=pattern,
                            journey_type=journey_type,
                            spec=spec,
                            created_at=now,
                        )
                    )
        except (IntegrityError, UniqueViolation) as exc:
            raise DuplicateDesignError(f"design {journey_id!r} is stored already", journey_id=journey_id) from exc
        return Design(journey_id, pattern, journey_type, spec, now)

    async def get_design(self, journey_id: str) -> Design | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(select(journey_designs).where(journey_designs.c.journey_id == journey_id))
            ).first()
        if row is None:
            return None
        return Design(row.journey_id, row.pattern, row.journey_type, row.spec, row.created_at)

    async def create_instance(
        self, instance_id: str, journey_id: str, pattern: str, user_id: str, *, first_event: NewEvent
    ) -> Instance:
        """Register a new instance and its first event in one transaction."""
        now = self._clock.now()
        try:
            if self._writer is not None:
                instance = {
                    "instance_id": instance_id,
                    "journey_id": journey_id,
                    "pattern": pattern,
                    "user_id": user_id,
                }
                first = first_event
                await self._writer.register(instance, first.type, first.step, first.payload, first.key, now)
                return Instance(instance_id, journey_id, pattern, user_id, "in_progress", now, now)
            async with self._engine.begin() as conn:
                await conn.execute(
                    insert(journey_instances).values(
                        instance_id=instance_id,
                        journey_id=journey_id,
                        pattern=pattern,
                        user_id=user_id,
                        status="in_progress",
                        created_at=now,
                        updated_at=now,
                    )
                )
                await conn.execute(
                    insert(journey_events).values(
                        instance_id=instance_id,
                        seq=1,
                        type=first_event.type,
                        step=first_event.step,
                        payload=first_event.payload,
                        idempotency_key=first_event.key,
                        created_at=now,
                    )
                )
        except (IntegrityError, UniqueViolation, sqlite3.IntegrityError) as exc:
            raise DuplicateInstanceError(
                f"journey {journey_id!r} is already running for user {user_id!r} (instance {instance_id!r})",
                instance_id=instance_id,
            ) from exc
        return Instance(instance_id, journey_id, pattern, user_id, "in_progress", now, now)

    async def get_instance(self, instance_id: str) -> Instance | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(select(journey_instances).where(journey_instances.c.instance_id == instance_id))
            ).first()
        return Instance(**row._mapping) if row else None

    async def get_instances(self, instance_ids: Sequence[str]) -> list[Instance]:
        """The instances with these ids (missing ones are left out), in one query per thousand ids."""
        ids = list(dict.fromkeys(instance_ids))
        found: list[Instance] = []
        async with self._engine.connect() as conn:
            for start in range(0, len(ids), 1000):
                chunk = ids[start : start + 1000]
                query = select(journey_instances).where(journey_instances.c.instance_id.in_(chunk))
                found += [Instance(**r._mapping) for r in (await conn.execute(query)).all()]
        return found

    async def list_instances(
        self, *, pattern: str | None = None, status: str | None = None, limit: int = 1000
    ) -> list[Instance]:
        query = select(journey_instances).order_by(journey_instances.c.created_at).limit(limit)
        if pattern is not None:
            query = query.where(journey_instances.c.pattern == pattern)
        if status is not None:
            query = query.where(journey_instances.c.status == status)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [Instance(**r._mapping) for r in rows]

    async def count_by_status(self, *, pattern: str | None = None) -> dict[str, int]:
        query = select(journey_instances.c.status, func.count()).group_by(journey_instances.c.status)
        if pattern is not None:
            query = query.where(journey_instances.c.pattern == pattern)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return {status: int(n) for status, n in rows}

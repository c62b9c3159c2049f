"""The append-only event log: every agent call, step, navigation and status change of a journey.

Growing history lives here, not in checkpointed graph state (which is re-stored at every step).
Rows are never updated or deleted by the runtime; views such as milestones and analytics are
derived from them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql import Executable

from checkpoints.clock import Clock
from checkpoints.pg_events import PgEventStatements
from checkpoints.seq_race import SEQ_ATTEMPTS, after_lost_race
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
    """One recorded event of a journey instance, in order (``seq``), keyed when it must be written once."""

    instance_id: str
    seq: int
    type: str
    step: str | None
    payload: dict[str, Any]
    key: str | None
    created_at: datetime


def _event_from_mapping(row: Mapping[str, Any]) -> Event:
    return Event(
        instance_id=row["instance_id"],
        seq=row["seq"],
        type=row["type"],
        step=row["step"],
        payload=row["payload"],
        key=row["idempotency_key"],
        created_at=row["created_at"].astimezone(UTC),
    )


def _event_from_row(row: Any) -> Event:
    return Event(
        instance_id=row.instance_id,
        seq=row.seq,
        type=row.type,
        step=row.step,
        payload=row.payload,
        key=row.idempotency_key,
        created_at=row.created_at,
    )


class EventWriter(Protocol):
    """The hot path of appends, in the database's own driver: psycopg, or the saver's SQLite connection."""

    async def append(
        self,
        instance_id: str,
        type_: str,
        step: str | None,
        payload: dict[str, Any],
        key: str | None,
        created_at: datetime,
        status: str | None,
    ) -> bool: ...

    async def register(
        self,
        instance: dict[str, Any],
        type_: str,
        step: str | None,
        payload: dict[str, Any],
        key: str | None,
        created_at: datetime,
    ) -> None: ...


class EventLog:
    """The append-only log of what happened to each journey instance; replays look up keyed events here."""

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
        self._writer = writer or pg  # single appends; everything else goes through SQLAlchemy
        self._pg = pg  # PostgreSQL: reads in plain psycopg too
        dialect = engine.dialect.name
        self._insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        # The statements of the hot path, built once with their values bound per call: an append or a
        # lookup then builds, hashes and compiles no new statement.
        columns = journey_events.c
        next_seq = (
            select(func.coalesce(func.max(columns.seq), 0) + 1)
            .where(columns.instance_id == bindparam("p_instance_id"))
            .scalar_subquery()
        )
        insert_event = self._insert(journey_events).values(
            instance_id=bindparam("p_instance_id", type_=columns.instance_id.type),
            seq=next_seq,
            type=bindparam("p_type", type_=columns.type.type),
            step=bindparam("p_step", type_=columns.step.type),
            payload=bindparam("p_payload", type_=columns.payload.type),
            idempotency_key=bindparam("p_key", type_=columns.idempotency_key.type),
            created_at=bindparam("p_created_at", type_=columns.created_at.type),
        )
        # Whether a row was written is read from RETURNING: with the RETURNING that SQLAlchemy adds for the
        # new id, psycopg reports a rowcount of -1, which made a skipped duplicate look written on PostgreSQL.
        self._insert_event = insert_event.returning(columns.seq)
        self._insert_keyed_event = insert_event.on_conflict_do_nothing(index_elements=["idempotency_key"]).returning(
            columns.seq
        )
        self._select_by_key = select(journey_events).where(columns.idempotency_key == bindparam("p_key"))
        # Keyed events written inside someone else's transaction, many at a time (no RETURNING, so the driver
        # runs one statement per row and each row's sequence number sees the rows before it).
        self._insert_keyed_quietly = insert_event.on_conflict_do_nothing(index_elements=["idempotency_key"])

    @property
    def engine(self) -> AsyncEngine:
        """The engine of the log's database, for read-only views over tables derived from it."""
        return self._engine

    async def append(
        self,
        instance_id: str,
        events: Sequence[NewEvent],
        *,
        status: str | None = None,
        also: Sequence[Executable] = (),
    ) -> list[bool]:
        """Append ``events`` (and optionally set the instance's status) in one transaction.

        ``also`` are statements that maintain tables derived from these events; they run in the same
        transaction, and only when every event was newly written, so a replayed append never applies
        them twice and the derived tables never diverge from the log.

        Returns, per event, whether it was written (False: its key was already there).
        """
        if self._writer is not None and len(events) == 1 and not also:
            event, now = events[0], self._clock.now()
            return [
                await self._writer.append(instance_id, event.type, event.step, event.payload, event.key, now, status)
            ]
        for attempt in range(SEQ_ATTEMPTS):
            try:
                async with self._engine.begin() as conn:
                    written = [await self._append_one(conn, instance_id, e) for e in events]
                    if also and all(written):
                        for statement in also:
                            await conn.execute(statement)
                    if status is not None:
                        await conn.execute(
                            update(journey_instances)
                            .where(journey_instances.c.instance_id == instance_id)
                            .values(status=status, updated_at=self._clock.now())
                        )
                    return written
            except IntegrityError:
                # Two writers raced for the same sequence number; the loser simply goes again.
                if attempt == SEQ_ATTEMPTS - 1:
                    raise
                await after_lost_race(attempt)
        raise AssertionError("unreachable")

    async def append_in(self, conn: AsyncConnection, entries: Sequence[tuple[str, NewEvent]]) -> None:
        """Append keyed events (``(instance_id, event)`` each) in the caller's transaction on ``conn``.

        The caller's statements and these events then commit or roll back together. An event whose key
        is already logged is skipped. A concurrent writer that takes the same sequence number makes this
        raise ``IntegrityError``, which rolls the caller's transaction back: it may simply go again.
        """
        if not entries:
            return
        now = self._clock.now()
        params = []
        for instance_id, event in entries:
            if event.key is None:
                raise ValueError(f"append_in takes keyed events only; {event.type!r} has no key")
            params.append(
                {
                    "p_instance_id": instance_id,
                    "p_type": event.type,
                    "p_step": event.step,
                    "p_payload": event.payload,
                    "p_key": event.key,
                    "p_created_at": now,
                }
            )
        await conn.execute(self._insert_keyed_quietly, params)

    async def _append_one(self, conn: AsyncConnection, instance_id: str, event: NewEvent) -> bool:
        stmt = self._insert_event if event.key is None else self._insert_keyed_event
        values = {
            "p_instance_id": instance_id,
            "p_type": event.type,
            "p_step": event.step,
            "p_payload": event.payload,
            "p_key": event.key,
            "p_created_at": self._clock.now(),
        }
        result = await conn.execute(stmt, values)
        return result.first() is not None

    async def find_by_key(self, key: str) -> Event | None:
        if self._pg is not None:
            found = await self._pg.find_by_key(key)
            return _event_from_mapping(found) if found else None
        async with self._engine.connect() as conn:
            row = (await conn.execute(self._select_by_key, {"p_key": key})).first()
        return _event_from_row(row) if row else None

    async def list(self, instance_id: str, *, types: Sequence[str] | None = None, after_seq: int = 0) -> list[Event]:
        if self._pg is not None:
            found = await self._pg.list(instance_id, types=types, after_seq=after_seq)
            return [_event_from_mapping(r) for r in found]
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

"""Crons: an assistant's runs on a schedule (the Agent Server's ``/runs/crons``).

A cron is a row of ``server_crons``; while it is enabled, its next firing is a durable process timer of
purpose ``cron`` (a cron :class:`~nodes.timer.TimerDefinition` in the cron's timezone), armed in the
transaction that creates, re-enables or reschedules the cron and cancelled in the one that disables or
deletes it. So a cron fires as the process timers do: claimed by one worker, never before it is due, and
once for the ticks missed while nothing ran.

A cron records who created it (:mod:`checkpoints.ownership`: the owner the server is acting for when it
is inserted); reads, changes and deletes take a ``viewer`` and filter by it in the query.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Executable, and_, bindparam, delete, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from checkpoints.backends.base import Statement
from checkpoints.clock import Clock
from checkpoints.ownership import DEFAULT_TENANT, Owner, Viewer, new_row_owner, visible_to
from checkpoints.process.timers import ARMED, FAILED, Timer, TimerStore, cancel_timers
from checkpoints.rows import JsonHolds
from checkpoints.schema.tables import process_timers, server_crons
from nodes.timer import TimerDefinition

CRON_PURPOSE = "cron"


def _failed_ticks(cron_ids: Any) -> ColumnElement[bool]:
    """The failed ticks (incidents) of the crons ``cron_ids`` (a column or subquery): kept as timers of their
    own, apart from each cron's timer (``TimerStore.incident_statement``); found through the status index."""
    t = process_timers.c
    return and_(t.status == FAILED, t.purpose == CRON_PURPOSE, t.element.in_(cron_ids))


def _delete_crons(which: Any) -> tuple[Executable, ...]:
    """Delete the crons ``which`` takes and cancel their timers and failed ticks: the statements, to run in one
    transaction."""
    armed = process_timers.c.timer_id.in_(select(server_crons.c.timer_id).where(which))
    return (
        cancel_timers(or_(armed, _failed_ticks(select(server_crons.c.cron_id).where(which)))),
        delete(server_crons).where(which),
    )


# A firing's run is created only while its cron is enabled on the timer that fired: run first in the run's
# transaction (checkpoints.runs.RunStore.create_run's guard), this write answers the cron and holds it until the
# run commits (its row locked; on SQLite the database's write lock), so a disable, reschedule or delete either
# waits for the run or is seen by it, never one without the other.
_FIRING = (
    update(server_crons)
    .where(
        server_crons.c.cron_id == bindparam("p_cron_id"),
        server_crons.c.enabled == 1,
        server_crons.c.timer_id == bindparam("p_timer_id"),
    )
    .values(cron_id=server_crons.c.cron_id)
    .returning(server_crons.c.cron_id)
)


def firing_guard(cron_id: str, timer_id: str) -> Statement:
    """The guard of a firing's run: the cron still enabled on ``timer_id`` when the run is written."""
    return _FIRING, {"p_cron_id": cron_id, "p_timer_id": timer_id}


# A thread's crons go with it (as on the Agent Server): statements of the thread's delete, run in its
# transaction (checkpoints.runs.RunStore.delete_thread), bound from ``p_thread_id``.
DELETE_THREAD_CRONS = _delete_crons(server_crons.c.thread_id == bindparam("p_thread_id"))


@dataclass(frozen=True, slots=True)
class CronRow:
    """A cron as stored, with its armed timer's due time (``next_run_date``)."""

    cron_id: str
    assistant_id: str
    thread_id: str | None
    schedule: str
    timezone: str
    end_time: datetime | None
    payload: dict[str, Any]
    metadata: dict[str, Any]
    enabled: bool
    on_run_completed: str | None
    user_id: str | None
    timer_id: str | None
    created_at: datetime
    updated_at: datetime
    next_run_date: datetime | None = None  # the armed timer's due time
    owner: str | None = None  # who created it, in which tenant, shared with which group
    tenant: str | None = None
    shared_group: str | None = None

    def owned_by(self) -> Owner | None:
        """Who the cron's runs belong to (None: a cron created outside any caller)."""
        return Owner(self.owner, self.tenant or DEFAULT_TENANT, self.shared_group) if self.owner else None

    def definition(self) -> TimerDefinition:
        return TimerDefinition(cron=self.schedule, timezone=self.timezone)


@dataclass(frozen=True, slots=True)
class CronFilter:
    """Which crons a search or count takes (None: any)."""

    assistant_id: str | None = None
    thread_id: str | None = None
    enabled: bool | None = None
    metadata: Mapping[str, Any] | None = None


def _row(mapping: Mapping[str, Any]) -> CronRow:
    values = dict(mapping)
    values["enabled"] = bool(values["enabled"])
    return CronRow(**values)


def _visible(viewer: Viewer | None) -> list[Any]:
    c = server_crons.c
    return [] if viewer is None else [visible_to(viewer, c.owner, c.tenant, c.shared_group)]


class CronStore:
    """The crons and their timers; every change to a cron and to its timer commits together."""

    def __init__(self, engine: AsyncEngine, clock: Clock, timers: TimerStore) -> None:
        self._engine = engine
        self._clock = clock
        self._timers = timers

    def _arm(self, cron: CronRow, now: datetime) -> tuple[CronRow, list[Executable]]:
        """The cron with a fresh timer (a new id: the old one's row keeps its history), and its statements."""
        if not cron.enabled:
            return replace(cron, timer_id=None), []
        definition = cron.definition()
        due = definition.first_due(now)
        if cron.end_time is not None and due > cron.end_time:
            return replace(cron, timer_id=None), []
        timer_id = f"cron:{cron.cron_id}:{uuid.uuid4().hex[:12]}"
        statement = self._timers.schedule_row(
            timer_id,
            element=cron.cron_id,
            purpose=CRON_PURPOSE,
            definition=definition.to_row(),
            due_at=due,
            origin=now,
            data={"cron_id": cron.cron_id, **({"until": cron.end_time.isoformat()} if cron.end_time else {})},
        ).statement(self._engine)
        return replace(cron, timer_id=timer_id, next_run_date=due), [statement]

    async def create(
        self,
        *,
        assistant_id: str,
        thread_id: str | None,
        schedule: str,
        timezone: str,
        end_time: datetime | None,
        payload: Mapping[str, Any],
        metadata: Mapping[str, Any],
        enabled: bool,
        on_run_completed: str | None,
        user_id: str | None,
    ) -> CronRow:
        """A new cron, owned by the caller the server acts for (:func:`checkpoints.ownership.current_owner`)."""
        now = self._clock.now().astimezone(UTC)
        cron = CronRow(
            str(uuid.uuid4()), assistant_id, thread_id, schedule, timezone, end_time, dict(payload), dict(metadata),
            enabled, on_run_completed, user_id, None, now, now, **new_row_owner(),
        )  # fmt: skip
        cron, statements = self._arm(cron, now)
        async with self._engine.begin() as conn:
            await conn.execute(insert(server_crons).values(**_columns(cron)))
            for statement in statements:
                await conn.execute(statement)
        return cron

    async def get(self, cron_id: str, *, viewer: Viewer | None = None) -> CronRow | None:
        """The cron, or None when there is none ``viewer`` may see."""
        found = await self.search(CronFilter(), cron_ids=[cron_id], viewer=viewer)
        return found[0] if found else None

    async def update(self, cron_id: str, changes: Mapping[str, Any], *, viewer: Viewer | None = None) -> CronRow | None:
        """Apply ``changes`` (columns of the cron); the timer is re-armed when the schedule, timezone,
        end time or enabled flag changed. A ``metadata`` change is merged into the cron's metadata and its
        runs' (its payload's), read under the row's lock, as the Agent Server merges it. None: no such cron
        that ``viewer`` may see."""
        async with self._engine.begin() as conn:
            mine = select(server_crons).where(server_crons.c.cron_id == cron_id, *_visible(viewer))
            row = (await conn.execute(mine.with_for_update())).first()
            if row is None:
                return None
            now = self._clock.now().astimezone(UTC)
            current = _row(dict(row._mapping))
            if "metadata" in changes:
                added = changes["metadata"]
                payload = changes.get("payload", current.payload)
                runs_metadata = {**payload.get("metadata", {}), **added}
                changes = {
                    **changes,
                    "metadata": {**current.metadata, **added},
                    "payload": {**payload, "metadata": runs_metadata},
                }
            cron = replace(current, **changes, updated_at=now)
            statements: list[Executable] = []
            if {"schedule", "timezone", "end_time", "enabled"} & changes.keys():
                if cron.timer_id is not None:
                    statements.append(self._timers.cancel_statement(cron.timer_id))
                cron, armed = self._arm(cron, now)
                statements += armed
            await conn.execute(update(server_crons).where(server_crons.c.cron_id == cron_id).values(**_columns(cron)))
            for statement in statements:
                await conn.execute(statement)
        return (await self.get(cron_id)) or cron

    async def delete(self, cron_id: str, *, viewer: Viewer | None = None) -> bool:
        """Delete the cron and cancel its timer; False when there is no such cron ``viewer`` may see."""
        async with self._engine.begin() as conn:
            mine = select(server_crons.c.timer_id).where(server_crons.c.cron_id == cron_id, *_visible(viewer))
            row = (await conn.execute(mine)).first()
            if row is None:
                return False
            for statement in _delete_crons(server_crons.c.cron_id == cron_id):
                await conn.execute(statement)
        return True

    async def failed_ticks(self, cron_id: str) -> list[Timer]:
        """The cron's ticks that failed for good (incidents), oldest first: each a failed timer whose data holds
        its ``incident``; :meth:`retry_statements` fires them again."""
        query = select(process_timers).where(_failed_ticks([cron_id])).order_by(process_timers.c.due_at)
        async with self._engine.connect() as conn:
            return [Timer(**row._mapping) for row in (await conn.execute(query)).all()]

    async def retry(self, ticks: Sequence[Timer]) -> None:
        """Fire these failed ticks again, each once (at the next pass: their due time is past)."""
        await self._timers.execute([self._timers.rearm_statement(tick) for tick in ticks])

    async def delete_of_assistant(self, assistant_id: str) -> None:
        """Delete the assistant's crons and cancel their timers (the assistant is deleted: as on the Agent
        Server, its crons go with it)."""
        async with self._engine.begin() as conn:
            for statement in _delete_crons(server_crons.c.assistant_id == assistant_id):
                await conn.execute(statement)

    async def search(
        self,
        where: CronFilter,
        *,
        limit: int = 10,
        offset: int = 0,
        sort_by: str = "created_at",
        descending: bool = True,
        cron_ids: Sequence[str] | None = None,
        viewer: Viewer | None = None,
    ) -> list[CronRow]:
        """The crons ``viewer`` may see (None: all) that ``where`` takes, in order, one page."""
        c, t = server_crons.c, process_timers.c
        armed = (t.timer_id == c.timer_id) & t.status.in_(ARMED)
        statement = select(*server_crons.c, t.due_at.label("next_run_date")).select_from(
            server_crons.outerjoin(process_timers, armed)
        )
        holds = self._holds(where)
        statement = statement.where(*self._conditions(where), *holds.conditions, *_visible(viewer))
        if cron_ids is not None:
            statement = statement.where(c.cron_id.in_(cron_ids))
        order = t.due_at if sort_by == "next_run_date" else c[sort_by]
        statement = statement.order_by(order.desc() if descending else order.asc(), c.cron_id)
        if holds.exact:
            statement = statement.limit(limit).offset(offset)
        async with self._engine.connect() as conn:
            found = [_row(dict(r._mapping)) for r in (await conn.execute(statement)).all()]
        return found if holds.exact else holds.page(found, lambda r: r.metadata, limit, offset)

    async def count(self, where: CronFilter, *, viewer: Viewer | None = None) -> int:
        """How many crons :meth:`search` would find, counted in the query."""
        holds = self._holds(where)
        conditions = [*self._conditions(where), *holds.conditions, *_visible(viewer)]
        async with self._engine.connect() as conn:
            if not holds.exact:
                found = await conn.execute(select(server_crons.c.metadata).where(*conditions))
                return sum(holds.holds(metadata) for (metadata,) in found.all())
            statement = select(func.count()).select_from(server_crons).where(*conditions)
            return int((await conn.execute(statement)).scalar_one())

    def _holds(self, where: CronFilter) -> JsonHolds:
        return JsonHolds.of(server_crons.c.metadata, where.metadata, postgres=self._engine.dialect.name == "postgresql")

    @staticmethod
    def _conditions(where: CronFilter) -> list[Any]:
        c = server_crons.c
        conditions: list[Any] = []
        if where.assistant_id is not None:
            conditions.append(c.assistant_id == where.assistant_id)
        if where.thread_id is not None:
            conditions.append(c.thread_id == where.thread_id)
        if where.enabled is not None:
            conditions.append(c.enabled == int(where.enabled))
        return conditions


def _columns(cron: CronRow) -> dict[str, Any]:
    values = {column.name: getattr(cron, column.name) for column in server_crons.columns}
    values["enabled"] = int(cron.enabled)
    return values

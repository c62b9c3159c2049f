"""Durable waits: one row per place a process instance parks (a user task, a timer, a message, a race).

The row is the single arbiter of who wins a wait. A timer firing, a message arriving and a human
completing a task all try to *resolve* it with one atomic ``UPDATE … WHERE status = 'waiting'``;
exactly one succeeds, and in the same transaction everything else the wait had armed (the losing
timers and message subscriptions, an open inbox task) is cancelled, so a loser can never fire later.

The resolution is stored on the row before the thread is resumed, and the thread marks the row
``done`` when it has consumed it. A resolution that a crash kept from being delivered is therefore
still there to deliver again (``undelivered``), and delivering twice is harmless: the thread only
takes a resolution for the wait it is parked on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Executable, Integer, String, any_, bindparam, exists, func, select, update
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

from checkpoints.backends.base import Backend
from checkpoints.clock import Clock
from checkpoints.encryption import Sealer
from checkpoints.events import NewEvent, is_first
from checkpoints.rows import IgnoredRow
from checkpoints.schema.tables import (
    journey_events,
    journey_instances,
    process_subscriptions,
    process_timers,
    process_waits,
    user_tasks,
)
from checkpoints.seq_race import again_if_lost

# The timers a wait's end (or its instance's) cancels: those that may still fire, and a failed one (an incident an
# operator would retry), which must not outlive what it was for.
LIVE_TIMERS = ("scheduled", "firing", "failed")


@dataclass(frozen=True, slots=True)
class Wait:
    """A place where a process instance waits (a task, timer or message), and how it was resolved."""

    wait_id: str
    instance_id: str
    element: str
    kind: str
    status: str
    resolution: dict[str, Any] | None
    created_at: datetime
    resolved_at: datetime | None
    interrupt_id: str | None = None  # the interrupt its thread parked on, once it has (see ``WaitStore.parked``)


@dataclass(frozen=True, slots=True)
class Delivery:
    """What delivering a wait's resolution needs, read in one query under the instance's lock."""

    resolution: dict[str, Any]
    interrupt_id: str | None  # the interrupt its thread parked on, if its wait node recorded it
    instance_failed: bool  # an element of the instance stands failed: the resolution is held for its retry
    # The instance's log has a ``variables.set``: the delivery first applies one a crash kept from its thread.
    variables_set: bool = False


def among(column: ColumnElement[Any], values: Sequence[str], *, postgres: bool) -> ColumnElement[bool]:
    """``column IN values``, for an id list of any length (a batch of fired timers: hundreds).

    PostgreSQL: ``column = ANY(ARRAY(SELECT jsonb_array_elements_text(ids)))``, one parameter, so the statement's
    text is the same whatever the list's length. An IN list has a placeholder per value: SQLAlchemy renders, and the
    driver parses, a new statement for every batch (a third of the CPU of firing a batch of 500 timers). The ids go
    as one JSON document: psycopg dumps a list of str as a text array in Python, escaping each element (~2.1 us an
    id, 6 arrays of 500 in each batch of fired timers), the JSON encoder in C (~0.2 us). ``ARRAY(SELECT ...)``, not
    ``IN (SELECT ...)``: an array the planner matches on the column's index, as it did the array parameter."""
    if postgres:
        ids = select(func.jsonb_array_elements_text(bindparam(None, list(values), type_=JSONB))).scalar_subquery()
        return column == any_(func.ARRAY(ids, type_=ARRAY(String)))
    return column.in_(list(values))


def cancel_siblings(
    wait_ids: Sequence[str],
    *,
    postgres: bool,
    keep_timers: Sequence[str] = (),
    keep_subscriptions: Sequence[str] = (),
    task_status: str = "cancelled",
) -> list[Executable]:
    """Once a wait is won: its other timers and subscriptions are cancelled, its inbox task closed.
    ``postgres``: the statements are for PostgreSQL (see :func:`among`)."""
    timers, subscriptions, tasks = process_timers.c, process_subscriptions.c, user_tasks.c
    return [
        update(process_timers)
        .where(
            among(timers.wait_id, wait_ids, postgres=postgres),
            timers.status.in_(LIVE_TIMERS),
            ~among(timers.timer_id, keep_timers, postgres=postgres),
        )
        .values(status="cancelled", claimed_by=None),
        update(process_subscriptions)
        .where(
            among(subscriptions.wait_id, wait_ids, postgres=postgres),
            subscriptions.status == "waiting",
            ~among(subscriptions.subscription_id, keep_subscriptions, postgres=postgres),
        )
        .values(status="cancelled"),
        update(user_tasks)
        .where(among(tasks.task_id, wait_ids, postgres=postgres), tasks.status == "open")
        .values(status=task_status),
    ]


def completed_event(
    element: str, wait_id: str, resolution: Mapping[str, Any], changes: Sequence[Mapping[str, Any]] = ()
) -> NewEvent:
    """The event that records how a wait ended (keyed by the wait: logged once however often it is written).

    The wait node writes it when it takes its resolution; for a timer, which assigns no variables, the
    scheduler writes it already in the transaction that fires the timer (and marks the resolution
    ``logged``, so the node writes nothing).
    """
    record = {
        "wait_id": wait_id,
        "option": resolution.get("option"),
        "resolution_kind": resolution.get("kind"),
        "by": resolution.get("by"),
        "payload": resolution.get("payload"),
        "changes": [dict(change) for change in changes],
    }
    return NewEvent("wait.completed", record, element, f"{wait_id}:completed")


class _Lost(Exception):
    """A claim in a resolve transaction found nothing to claim: roll the whole transaction back."""


_RESOLUTION = select(process_waits.c.status, process_waits.c.resolution).where(
    process_waits.c.wait_id == bindparam("wait_id")
)
# How many waits' deliveries one statement reads (``WaitStore.delivery``): a slot not asked for is NULL. As many as a
# wave of fired timers' continuations (``graphs.process.timers``: RESUME_CONCURRENCY // WAVES_IN_FLIGHT) asks for at
# once.
DELIVERIES_READ_TOGETHER = 64
_DELIVERY_SLOTS = [f"w{n}" for n in range(DELIVERIES_READ_TOGETHER)]
_first_event = journey_events.alias("first_event")
_set_event = journey_events.alias("set_event")
# Whether the wait's instance has set variables (graphs.process: SETS): read with its deliveries, one range of
# the log's primary key, so that an instance that never did costs no second read.
_VARIABLES_SET = (
    exists()
    .where(
        _set_event.c.instance_no
        == select(_first_event.c.instance_no)
        .where(_first_event.c.instance_id == process_waits.c.instance_id, is_first(_first_event.c.seq))
        .correlate(process_waits)
        .scalar_subquery(),
        _set_event.c.type == "variables.set",
    )
    .label("variables_set")
)
_DELIVERIES = (
    select(
        process_waits.c.wait_id,
        process_waits.c.resolution,
        process_waits.c.interrupt_id,
        (journey_instances.c.status == "failed").label("instance_failed"),
        _VARIABLES_SET,
    )
    .select_from(
        process_waits.outerjoin(journey_instances, journey_instances.c.instance_id == process_waits.c.instance_id)
    )
    .where(
        process_waits.c.wait_id.in_([bindparam(slot) for slot in _DELIVERY_SLOTS]),
        process_waits.c.status == "resolved",
    )
)
_INSTANCE_FAILED = select(journey_instances.c.instance_id).where(
    journey_instances.c.instance_id == process_waits.c.instance_id, journey_instances.c.status == "failed"
)
# WaitStore.undelivered, built once: every worker's timer pass reads it once a second.
_UNDELIVERED = (
    select(process_waits)
    .where(process_waits.c.status == "resolved", ~_INSTANCE_FAILED.exists())
    .order_by(process_waits.c.resolved_at)
    .limit(bindparam("p_limit", type_=Integer))
)
_UNDELIVERED_OF = _UNDELIVERED.where(process_waits.c.instance_id == bindparam("p_instance_id"))
_UNDELIVERED_BEFORE = _UNDELIVERED.where(
    process_waits.c.resolved_at <= bindparam("p_resolved_before", type_=process_waits.c.resolved_at.type)
)
_PARKED = (
    update(process_waits)
    .where(process_waits.c.wait_id == bindparam("w_id"))
    .values(interrupt_id=bindparam("w_interrupt_id"))
)


def cancel_pending(instance_id: str) -> list[Executable]:
    """Cancel everything an instance waits on (it ended, was cancelled or terminated, or compensates), answers
    not yet delivered included: an ended instance's thread must not be resumed (see ``WaitStore.delivery``)."""
    return [
        update(process_waits)
        .where(process_waits.c.instance_id == instance_id, process_waits.c.status.in_(("waiting", "resolved")))
        .values(status="cancelled"),
        update(process_timers)
        .where(process_timers.c.instance_id == instance_id, process_timers.c.status.in_(LIVE_TIMERS))
        .values(status="cancelled", claimed_by=None),
        update(process_subscriptions)
        .where(process_subscriptions.c.instance_id == instance_id, process_subscriptions.c.status == "waiting")
        .values(status="cancelled"),
        update(user_tasks)
        .where(user_tasks.c.instance_id == instance_id, user_tasks.c.status == "open")
        .values(status="cancelled"),
    ]


class WaitStore:
    """Durable waits: armed, resolved once, then finished when the thread has consumed the resolution."""

    def __init__(self, backend: Backend, clock: Clock, sealer: Sealer | None = None) -> None:
        self._backend = backend
        # A resolution's payload (a task's answer, a message's body) is sealed when the store has a key; its
        # kind, option and ids stay readable, since SQL matches on them (a message's id).
        self._sealer = sealer or Sealer(None)
        self._engine = backend.engine
        self._postgres = backend.engine.dialect.name == "postgresql"
        self._clock = clock
        # Deliveries asked for while a read of others was on the wire, read together by one reader task.
        self._asked: list[tuple[str, asyncio.Future[Delivery | None]]] = []
        self._reader: asyncio.Task[None] | None = None

    def _wait(self, row: Mapping[Any, Any]) -> Wait:
        resolution = row["resolution"]
        return Wait(**{**row, "resolution": self._sealer.open_in(resolution, "payload") if resolution else resolution})

    def arm_row(self, wait_id: str, instance_id: str, element: str, kind: str) -> IgnoredRow:
        """The wait's row, written with the event that arms it (``EventLog.append``'s ``also``)."""
        return IgnoredRow(
            process_waits,
            {
                "wait_id": wait_id,
                "instance_id": instance_id,
                "element": element,
                "kind": kind,
                "status": "waiting",
                "resolution": None,
                "created_at": self._clock.now().astimezone(UTC),
                "resolved_at": None,
            },
        )

    async def resolve(
        self,
        wait_id: str,
        resolution: dict[str, Any],
        *,
        keep_timer: str | None = None,
        keep_subscription: str | None = None,
        task_status: str = "cancelled",
        claims: Sequence[Executable] = (),
        also: Sequence[Executable] = (),
    ) -> bool:
        """Resolve a waiting wait with ``resolution``; False if it was not waiting (someone else won).

        In the same transaction: every other timer and subscription of the wait is cancelled, its
        inbox task (if any) is set to ``task_status``, each of ``claims`` must update exactly one row
        (else nothing is applied and False is returned), and ``also`` runs.
        """
        try:
            return await again_if_lost(
                lambda: self._resolve(wait_id, resolution, keep_timer, keep_subscription, task_status, claims, also)
            )
        except _Lost:
            return False

    async def _resolve(
        self,
        wait_id: str,
        resolution: dict[str, Any],
        keep_timer: str | None,
        keep_subscription: str | None,
        task_status: str,
        claims: Sequence[Executable],
        also: Sequence[Executable],
    ) -> bool:
        # One transaction: a task completion, a timer batch and a cancel take the same wait, task and timer
        # rows in different orders, and PostgreSQL may roll the loser back (a deadlock): it goes again.
        now = self._clock.now().astimezone(UTC)
        async with self._engine.begin() as conn:
            won = await conn.execute(
                update(process_waits)
                .where(process_waits.c.wait_id == wait_id, process_waits.c.status == "waiting")
                .values(status="resolved", resolution=self._sealer.seal_in(resolution, "payload"), resolved_at=now)
            )
            if won.rowcount != 1:
                raise _Lost
            for claim in claims:
                if (await conn.execute(claim)).rowcount != 1:
                    raise _Lost
            for statement in cancel_siblings(
                [wait_id],
                postgres=self._postgres,
                keep_timers=[keep_timer] if keep_timer else [],
                keep_subscriptions=[keep_subscription] if keep_subscription else [],
                task_status=task_status,
            ):
                await conn.execute(statement)
            for statement in also:
                await conn.execute(statement)
        return True

    async def finish(self, wait_ids: Sequence[str]) -> None:
        """The threads have consumed these resolutions (their checkpoints are written): nothing to deliver."""
        if wait_ids:
            await again_if_lost(lambda: self._finish(wait_ids))

    async def _finish(self, wait_ids: Sequence[str]) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                update(process_waits)
                .where(
                    among(process_waits.c.wait_id, wait_ids, postgres=self._postgres),
                    process_waits.c.status == "resolved",
                )
                .values(status="done")
            )

    async def get(self, wait_id: str) -> Wait | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(process_waits).where(process_waits.c.wait_id == wait_id))).first()
        return self._wait(row._mapping) if row else None

    async def resolution(self, wait_id: str) -> dict[str, Any] | None:
        """The resolution a wait was given, if it has been resolved (and not cancelled)."""
        rows = await self._backend.read(_RESOLUTION, {"wait_id": wait_id})
        if not rows or rows[0]["status"] not in ("resolved", "done"):
            return None
        return self._sealer.open_in(rows[0]["resolution"] or {}, "payload")

    async def parked(self, wait_id: str, interrupt_id: str) -> None:
        """The wait's thread parked on the interrupt ``interrupt_id``: its resolution is delivered by that id."""
        await self._backend.write([_PARKED], {"w_id": wait_id, "w_interrupt_id": interrupt_id})

    async def delivery(self, wait_id: str) -> Delivery | None:
        """The resolution a wait was given and its thread has not consumed yet, with the interrupt it is
        delivered to and whether its instance stands failed: None once it has been consumed (the wait is
        ``done``) or was cancelled with its instance (:func:`cancel_pending`), which must then not be resumed
        with it. Read under the instance's lock, which a cancel and a failing run hold too; once per delivery,
        so on the backend's hot path (prepared, no SQLAlchemy connection per call).

        Deliveries asked for at about the same time (a burst of continuations, each under its own lock)
        are read together, up to :data:`DELIVERIES_READ_TOGETHER` per statement: each by a statement sent
        after it was asked for, so still a read under its caller's lock."""
        asked: asyncio.Future[Delivery | None] = asyncio.get_running_loop().create_future()
        self._asked.append((wait_id, asked))
        if self._reader is None or self._reader.done():
            self._reader = asyncio.ensure_future(self._read_asked())
        return await asked

    async def _read_asked(self) -> None:
        """Read what callers asked for meanwhile, batch by batch, until nothing is left to read."""
        while self._asked:
            batch = self._asked[:DELIVERIES_READ_TOGETHER]
            del self._asked[:DELIVERIES_READ_TOGETHER]
            params = dict.fromkeys(_DELIVERY_SLOTS) | {f"w{n}": wait_id for n, (wait_id, _asked) in enumerate(batch)}
            try:
                rows = await self._backend.read(_DELIVERIES, params)
            except BaseException as exc:
                stopped = not isinstance(exc, Exception)  # the reader itself is cancelled: so is what is left
                if stopped:
                    batch += self._asked
                    self._asked.clear()
                for _wait_id, asked in batch:
                    if not asked.done():
                        asked.cancel() if stopped else asked.set_exception(exc)
                if stopped:
                    raise
                continue
            found = {
                row["wait_id"]: Delivery(
                    self._sealer.open_in(row["resolution"] or {}, "payload"),
                    row["interrupt_id"],
                    bool(row["instance_failed"]),
                    bool(row["variables_set"]),
                )
                for row in rows
            }
            for wait_id, asked in batch:
                if not asked.done():  # its caller may have been cancelled meanwhile
                    asked.set_result(found.get(wait_id))

    async def open_waits(self, instance_id: str) -> list[Wait]:
        """The instance's waits still waiting for an answer, oldest first."""
        w = process_waits.c
        query = select(process_waits).where(w.instance_id == instance_id, w.status == "waiting")
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query.order_by(w.created_at, w.wait_id))).all()
        return [self._wait(r._mapping) for r in rows]

    async def undelivered(
        self, *, resolved_before: datetime | None = None, instance_id: str | None = None, limit: int = 1000
    ) -> list[Wait]:
        """Resolved waits whose thread has not consumed the resolution yet (e.g. a crash came between, or the
        answer was handed to a worker), oldest first; ``instance_id``: that instance's only. Not those of a failed
        instance: its answers are held for its retry, which delivers them."""
        if instance_id is not None:
            rows = await self._backend.read(_UNDELIVERED_OF, {"p_limit": limit, "p_instance_id": instance_id})
        elif resolved_before is None:
            rows = await self._backend.read(_UNDELIVERED, {"p_limit": limit})
        else:
            params = {"p_limit": limit, "p_resolved_before": resolved_before.astimezone(UTC)}
            rows = await self._backend.read(_UNDELIVERED_BEFORE, params)
        return [self._wait(row) for row in rows]

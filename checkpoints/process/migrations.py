"""The rows of a process instance moving to another version of its process (``graphs/process/migration.py``).

Not the schema migrations (those are ``checkpoints/migrations.py``): each step of an instance's
migration is one transaction here, claimed on the instance's status so that two writers never both
apply a step, and logged with its keyed event in the same transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql import Executable

from checkpoints.clock import Clock
from checkpoints.events import DESIGN_KEY, EventLog, NewEvent, claimed_with_event, stamped
from checkpoints.process.timers import FAILED, RETRY_KEYS, TICK_OF
from checkpoints.schema.tables import (
    journey_instances,
    process_subscriptions,
    process_timers,
    process_waits,
    user_tasks,
)

SCHEDULED = "scheduled"  # a timer waiting for its due time


@dataclass(frozen=True, slots=True)
class RowMove:
    """One wait of the instance moving from ``element`` to ``to`` of the target version.

    ``boundaries``: when a user task moves to a user task, the boundary timers the target task has
    (the wait's other boundary and reminder timers are cancelled); None for any other move.
    ``keeps_sla``: whether the target task has an SLA timer (if not, the wait's SLA timer is cancelled).
    ``timer_data``: (element, data) of the target task's timers: a kept timer fires as the target says (its
    escalation, whom it notifies), not as the source did; a failed one (an incident) too, once retried.
    ``task``: the target task's title and response schema, which its inbox row takes (its answer is checked
    against the target's schema: the target's flows read it); who it is assigned to and who claimed it stay.
    ``messages``: (source message event, target message event, message name, correlation key) of each of the
    wait's subscriptions: it waits for the target's message under the target's key.
    """

    wait_id: str
    element: str
    to: str
    boundaries: tuple[str, ...] | None = None
    keeps_sla: bool = True
    timer_data: tuple[tuple[str, dict[str, Any]], ...] = ()
    task: TaskFields | None = None
    messages: tuple[tuple[str, str, str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class TaskFields:
    """What a migrated user task takes from the target version's task."""

    title: str
    response_schema: dict[str, Any] | None

    def as_row(self) -> dict[str, Any]:
        return {"title": self.title, "response_schema": self.response_schema}


@dataclass(frozen=True, slots=True)
class MigrationStep:
    """What one step writes: the instance, found in status ``expect``, gets ``status`` (and, with
    ``to_design``, that design), and the rows of ``moves`` follow their waits. ``unanswered``: waits that
    must not have been answered (a task completed, a timer fired, a message taken) for the step to apply:
    an answer is delivered on the version it was given on, so a wait that has one cannot be moved."""

    expect: str
    status: str
    to_design: str | None = None
    moves: Sequence[RowMove] = ()
    unanswered: Sequence[str] = ()


class MigrationRows:
    """The rows a process migration writes: each step's status change and its event, in one transaction."""

    def __init__(self, engine: AsyncEngine, clock: Clock, events: EventLog) -> None:
        self._engine = engine
        self._clock = clock
        self._events = events

    async def apply(self, instance_id: str, step: MigrationStep, event: NewEvent) -> bool:
        """``step`` and its ``event`` (keyed) in one transaction. False, with nothing applied, when the
        instance was not in status ``step.expect`` or one of ``step.unanswered`` has been answered."""
        values: dict[str, Any] = {"status": step.status, "updated_at": self._clock.now()}
        [event] = stamped([event], step.status)
        if step.to_design is not None:
            values["journey_id"] = step.to_design
            event = replace(event, payload={**event.payload, DESIGN_KEY: step.to_design})
        claim = (
            update(journey_instances)
            .where(journey_instances.c.instance_id == instance_id, journey_instances.c.status == step.expect)
            .values(**values)
        )
        # Each unanswered wait's row is claimed (locked on PostgreSQL) in the step's transaction: an answer
        # racing the step either commits first and fails the step, or waits for it and sees the step's status.
        waits = process_waits.c
        unanswered = [
            update(process_waits).where(waits.wait_id == wait_id, waits.status == "waiting").values(status="waiting")
            for wait_id in step.unanswered
        ]
        statements = [statement for move in step.moves for statement in _move_statements(move)]
        statements += await self._failed_timers_statements(step.moves)
        return await claimed_with_event(
            self._engine, self._events, [claim, *unanswered], statements, instance_id, event
        )

    async def _failed_timers_statements(self, moves: Sequence[RowMove]) -> list[Executable]:
        """The target's data for the failed timers (incidents) of the moved tasks that the target keeps: their
        retry fires them as the target says. Their data is kept whole but for it (what failed, a repeating
        timer's tick), so it is read first; the instance's lock, which a migration holds, keeps them as read
        (a retry, which re-arms them, takes it too). Run after :func:`_move_statements`, which cancels those the
        target lacks."""
        by_wait = {move.wait_id: move for move in moves if move.timer_data}
        if not by_wait:
            return []
        t = process_timers.c
        query = select(t.timer_id, t.wait_id, t.element, t.data).where(t.wait_id.in_(list(by_wait)), t.status == FAILED)
        async with self._engine.connect() as conn:
            failed = (await conn.execute(query)).all()
        statements: list[Executable] = []
        for timer in failed:
            move = by_wait[timer.wait_id]
            element = move.to if timer.element == move.element else timer.element
            target = dict(move.timer_data).get(element)
            if target is None:
                continue  # the target has no such timer: cancelled by the move's statements
            kept = {k: v for k, v in (timer.data or {}).items() if k in ("incident", TICK_OF, *RETRY_KEYS)}
            statements.append(
                update(process_timers)
                .where(t.timer_id == timer.timer_id, t.status == FAILED)
                .values(data={**target, **kept})
            )
        return statements


def _move_statements(move: RowMove) -> list[Executable]:
    statements: list[Executable] = []
    wait_id, element, to = move.wait_id, move.element, move.to
    timers, subscriptions = process_timers.c, process_subscriptions.c
    # Before the element's rename below, which would move a message event's subscription without its message.
    statements += [
        update(process_subscriptions)
        .where(subscriptions.wait_id == wait_id, subscriptions.element == was, subscriptions.status == "waiting")
        .values(element=event, message_name=name, correlation_key=key)
        for was, event, name, key in move.messages
    ]
    if to != element:
        statements += [
            update(process_waits).where(process_waits.c.wait_id == wait_id).values(element=to),
            update(user_tasks).where(user_tasks.c.task_id == wait_id).values(element=to),
            update(process_subscriptions)
            .where(process_subscriptions.c.wait_id == wait_id, process_subscriptions.c.element == element)
            .values(element=to),
            update(process_timers).where(timers.wait_id == wait_id, timers.element == element).values(element=to),
        ]
    if move.task is not None:
        statements.append(update(user_tasks).where(user_tasks.c.task_id == wait_id).values(**move.task.as_row()))
    if move.boundaries is not None:
        # Failed ones too: an incident of a timer the target lacks is nothing to retry.
        dropped = (SCHEDULED, FAILED)
        statements.append(
            update(process_timers)
            .where(
                timers.wait_id == wait_id,
                timers.purpose.in_(("boundary", "reminder")),
                timers.element.not_in(list(move.boundaries)),
                timers.status.in_(dropped),
            )
            .values(status="cancelled")
        )
        if not move.keeps_sla:
            statements.append(
                update(process_timers)
                .where(timers.wait_id == wait_id, timers.purpose == "sla", timers.status.in_(dropped))
                .values(status="cancelled")
            )
    statements += [
        update(process_timers)
        .where(timers.wait_id == wait_id, timers.element == element_of_timer, timers.status == SCHEDULED)
        .values(data=data)
        for element_of_timer, data in move.timer_data
    ]
    return statements

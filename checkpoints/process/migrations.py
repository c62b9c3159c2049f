"""The rows of a process instance moving to another version of its process (``graphs/process/migration.py``).

Not the schema migrations (those are ``checkpoints/migrations.py``): each step of an instance's
migration is one transaction here, claimed on the instance's status so that two writers never both
apply a step, and logged with its keyed event in the same transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql import Executable

from checkpoints.clock import Clock
from checkpoints.events import DESIGN_KEY, EventLog, NewEvent, claimed_with_event, stamped
from checkpoints.schema.tables import (
    journey_instances,
    process_subscriptions,
    process_timers,
    process_waits,
    user_tasks,
)


@dataclass(frozen=True, slots=True)
class RowMove:
    """One wait of the instance moving from ``element`` to ``to`` of the target version.

    ``boundaries``: when a user task moves to a user task, the boundary timers the target task has
    (the wait's other boundary and reminder timers are cancelled); None for any other move.
    ``keeps_sla``: whether the target task has an SLA timer (if not, the wait's SLA timer is cancelled).
    ``timer_data``: (element, data) of the target task's timers: a kept timer fires as the target says (its
    escalation, whom it notifies), not as the source did.
    """

    wait_id: str
    element: str
    to: str
    boundaries: tuple[str, ...] | None = None
    keeps_sla: bool = True
    timer_data: tuple[tuple[str, dict[str, Any]], ...] = ()


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
        return await claimed_with_event(
            self._engine, self._events, [claim, *unanswered], statements, instance_id, event
        )


def _move_statements(move: RowMove) -> list[Executable]:
    statements: list[Executable] = []
    wait_id, element, to = move.wait_id, move.element, move.to
    timers = process_timers.c
    if to != element:
        statements += [
            update(process_waits).where(process_waits.c.wait_id == wait_id).values(element=to),
            update(user_tasks).where(user_tasks.c.task_id == wait_id).values(element=to),
            update(process_subscriptions)
            .where(process_subscriptions.c.wait_id == wait_id, process_subscriptions.c.element == element)
            .values(element=to),
            update(process_timers).where(timers.wait_id == wait_id, timers.element == element).values(element=to),
        ]
    if move.boundaries is not None:
        statements.append(
            update(process_timers)
            .where(
                timers.wait_id == wait_id,
                timers.purpose.in_(("boundary", "reminder")),
                timers.element.not_in(list(move.boundaries)),
                timers.status == "scheduled",
            )
            .values(status="cancelled")
        )
        if not move.keeps_sla:
            statements.append(
                update(process_timers)
                .where(timers.wait_id == wait_id, timers.purpose == "sla", timers.status == "scheduled")
                .values(status="cancelled")
            )
    statements += [
        update(process_timers)
        .where(timers.wait_id == wait_id, timers.element == element_of_timer, timers.status == "scheduled")
        .values(data=data)
        for element_of_timer, data in move.timer_data
    ]
    return statements

"""The user-task inbox: one row per open human task, with its assignee, candidate groups and SLA.

Rows are written with the event that opens the task (``EventLog.append(…, also=…)``); a claim or release
commits with its event (``task.claimed``, ``task.released``); completing a task resolves its wait
(``checkpoints.process.waits``), which closes the row in the same transaction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

from sqlalchemy import Executable, Select, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from checkpoints.clock import Clock
from checkpoints.encryption import Sealer
from checkpoints.events import EventLog, NewEvent, claimed_with_event
from checkpoints.ownership import DEFAULT_TENANT
from checkpoints.rows import IgnoredRow, insert_ignore
from checkpoints.schema.tables import journey_instances, user_task_groups, user_tasks


@dataclass(frozen=True, slots=True)
class UserTaskRow:
    """A user task of a process instance as stored: who may act on it, and its status."""

    task_id: str
    instance_id: str
    element: str
    title: str
    assignee: str | None
    candidate_groups: list[str]
    claimed_by: str | None
    status: str
    response_schema: dict[str, Any] | None
    sla_due_at: datetime | None
    escalated_at: datetime | None
    escalation: str | None
    created_at: datetime
    completed_at: datetime | None
    completed_by: str | None
    result: dict[str, Any] | None

    def may_act(self, user: str, groups: Sequence[str]) -> bool:
        """The assignee, or a member of a candidate group, may claim and complete the task."""
        return user == self.assignee or bool(set(groups) & set(self.candidate_groups))

    def view(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "instance_id": self.instance_id,
            "element": self.element,
            "title": self.title,
            "assignee": self.assignee,
            "candidate_groups": list(self.candidate_groups),
            "claimed_by": self.claimed_by,
            "status": self.status,
            "response_schema": self.response_schema,
            "sla_due_at": self.sla_due_at.isoformat() if self.sla_due_at else None,
            "escalation": self.escalation,
            "escalated_at": self.escalated_at.isoformat() if self.escalated_at else None,
            "created_at": self.created_at.isoformat(),
            "completed_by": self.completed_by,
            "result": self.result,
        }


class InboxStore:
    """The user tasks of process instances: opened, claimed, released, completed and escalated."""

    def __init__(self, engine: AsyncEngine, clock: Clock, sealer: Sealer | None = None) -> None:
        self._engine = engine
        self._clock = clock
        self._sealer = sealer or Sealer(None)  # seals a completed task's result when the store has a key

    def open_rows(
        self,
        task_id: str,
        *,
        instance_id: str,
        element: str,
        title: str,
        assignee: str | None,
        candidate_groups: Sequence[str],
        response_schema: dict[str, Any] | None,
        sla_due_at: datetime | None,
    ) -> list[IgnoredRow]:
        """The task's row and its candidate groups', written with the event that opens it (``EventLog.append``'s
        ``also``)."""
        row = IgnoredRow(
            user_tasks,
            {
                "task_id": task_id,
                "instance_id": instance_id,
                "element": element,
                "title": title,
                "assignee": assignee,
                "candidate_groups": list(candidate_groups),
                "claimed_by": None,
                "status": "open",
                "response_schema": response_schema,
                "sla_due_at": sla_due_at.astimezone(UTC) if sla_due_at else None,
                "escalated_at": None,
                "escalation": None,
                "created_at": self._clock.now().astimezone(UTC),
                "completed_at": None,
                "completed_by": None,
                "result": None,
            },
        )
        groups = [IgnoredRow(user_task_groups, {"task_id": task_id, "group_name": g}) for g in candidate_groups]
        return [row, *groups]

    def _row(self, row: Mapping[Any, Any]) -> UserTaskRow:
        return UserTaskRow(**self._sealer.open_in(row, "result"))

    async def get(self, task_id: str) -> UserTaskRow | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(user_tasks).where(user_tasks.c.task_id == task_id))).first()
        return self._row(row._mapping) if row else None

    async def find(
        self,
        *,
        assignee: str | None = None,
        group: str | None = None,
        groups: Sequence[str] = (),
        status: str | None = "open",
        instance_id: str | None = None,
        tenant: str | None = None,
        limit: int = 1000,
    ) -> list[UserTaskRow]:
        """Tasks for ``assignee``, for a candidate ``group`` (or any of ``groups``), or both (either matches);
        with ``tenant``, only those of that tenant's instances (see :func:`of_tenant`)."""
        query = select(user_tasks).order_by(user_tasks.c.created_at, user_tasks.c.task_id).limit(limit)
        if tenant is not None:
            query = query.where(user_tasks.c.instance_id.in_(of_tenant(tenant)))
        wanted_groups = [*groups, *([group] if group else [])]
        who = []
        if assignee is not None:
            who.append(user_tasks.c.assignee == assignee)
        if wanted_groups:
            members = select(user_task_groups.c.task_id).where(user_task_groups.c.group_name.in_(wanted_groups))
            who.append(user_tasks.c.task_id.in_(members))
        if who:
            query = query.where(or_(*who))
        if status is not None:
            query = query.where(user_tasks.c.status == status)
        if instance_id is not None:
            query = query.where(user_tasks.c.instance_id == instance_id)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [self._row(r._mapping) for r in rows]

    async def claim(self, task_id: str, user: str, events: EventLog, instance_id: str, event: NewEvent) -> bool:
        """Claim an open, unclaimed task for ``user``, with its ``event``, in one transaction; False when
        someone holds it (or it is closed), and nothing is written."""
        t = user_tasks.c
        claim = (
            update(user_tasks)
            .where(t.task_id == task_id, t.status == "open", t.claimed_by.is_(None))
            .values(claimed_by=user)
        )
        return await self._changed(claim, events, instance_id, event)

    async def release(self, task_id: str, user: str, events: EventLog, instance_id: str, event: NewEvent) -> bool:
        """Release ``user``'s claim of an open task, with its ``event``, in one transaction; False (nothing
        written) when they do not hold it."""
        t = user_tasks.c
        release = (
            update(user_tasks)
            .where(t.task_id == task_id, t.status == "open", t.claimed_by == user)
            .values(claimed_by=None)
        )
        return await self._changed(release, events, instance_id, event)

    async def _changed(self, change: Executable, events: EventLog, instance_id: str, event: NewEvent) -> bool:
        """``change`` (a conditional update of one row) and the event that logs it commit together or not
        at all, so the inbox never holds a change its log lacks (``checkpoints.rebuild``)."""
        # A unique key: append_in writes keyed events (each claim or release is its own change).
        event = replace(event, key=f"{event.key or event.type}:{uuid4().hex[:16]}")
        return await claimed_with_event(self._engine, events, [change], (), instance_id, event)

    def completion_claim(
        self, task_id: str, *, by: str, result: dict[str, Any], claimed_by: str | None, reassigned: bool = False
    ) -> Executable:
        """Close an open task as completed; conditional on nobody having claimed it, nor its SLA having reassigned
        it, since it was checked (``claimed_by``, ``reassigned``: as it was then)."""
        t = user_tasks.c
        still = [t.claimed_by.is_(None) if claimed_by is None else t.claimed_by == claimed_by]
        if not reassigned:  # a reassign happens once (its SLA's): the one checked against is the one there now
            still.append(or_(t.escalation.is_(None), t.escalation != "reassign"))
        return (
            update(user_tasks)
            .where(t.task_id == task_id, t.status == "open", *still)
            .values(
                status="completed",
                completed_by=by,
                result=self._sealer.seal(result),
                completed_at=self._clock.now().astimezone(UTC),
            )
        )

    async def reassign(
        self,
        task_id: str,
        *,
        assignee: str | None,
        groups: Sequence[str],
        events: EventLog,
        event: NewEvent,
        instance_id: str,
        also: Sequence[Executable] = (),
    ) -> bool:
        """Give an open task to ``assignee`` and ``groups`` (an SLA's escalation), unclaimed, with its ``event``
        and ``also`` in one transaction; False, with nothing written, when the task is no longer open."""
        t = user_tasks.c
        moved = (
            update(user_tasks)
            .where(t.task_id == task_id, t.status == "open")
            .values(assignee=assignee, candidate_groups=list(groups), claimed_by=None)
        )
        statements: list[Executable] = [user_task_groups.delete().where(user_task_groups.c.task_id == task_id)]
        statements += [insert_ignore(self._engine, user_task_groups, task_id=task_id, group_name=g) for g in groups]
        return await claimed_with_event(self._engine, events, [moved], [*statements, *also], instance_id, event)

    def escalated_statement(self, task_id: str, action: str) -> Executable:
        """Mark a task as escalated by its SLA (``action``), once: an open task only (a notify that lost the race
        to a completion leaves the completed task as it was), or, for ``complete``, the task it just closed."""
        t = user_tasks.c
        # The SLA's completion runs in the same transaction, before this statement.
        still = t.completed_by == "sla-escalation" if action == "complete" else t.status == "open"
        return (
            update(user_tasks)
            .where(t.task_id == task_id, t.escalated_at.is_(None), still)
            .values(escalated_at=self._clock.now().astimezone(UTC), escalation=action)
        )


def of_tenant(tenant: str) -> Select[tuple[str]]:
    """The ids of ``tenant``'s journey instances: a user's and a group's work is in their tenant only, whatever
    names the people and groups of other tenants share. An instance started outside any caller (a timer's,
    the runtime's own) belongs to the default tenant."""
    instances = journey_instances.c
    return select(instances.instance_id).where(func.coalesce(instances.tenant, DEFAULT_TENANT) == tenant)

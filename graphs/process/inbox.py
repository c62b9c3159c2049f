"""The user-task inbox (SPEC B2): list open tasks by assignee or group, claim one, complete it.

Completion is checked before anything is written: the task must be open, the user must be the one
who claimed it (or, unclaimed, the assignee or a member of a candidate group), the payload must match
the task's response schema, and the runtime's policies must let it through. Only then is the task's
wait resolved and the instance resumed.

Claims and releases are logged (``task.claimed``, ``task.released``) like every other change of a task
(``task.created``, ``task.escalated``, ``wait.completed``), so the inbox can be rebuilt from the event log
(``checkpoints.rebuild.rebuild_inbox``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from checkpoints.clock import Clock
from checkpoints.events import EventLog, NewEvent
from checkpoints.process.inbox import InboxStore, UserTaskRow
from checkpoints.process.waits import WaitStore
from graphs.errors import TaskClosedError, TaskForbiddenError, TaskNotFoundError
from graphs.kernel.engine import DEFAULT_RUN, RunOptions
from graphs.process.context import Resumer
from graphs.process.spec import UserTask
from nodes.agent_call import AgentCaller
from nodes.errors import ResumeValueError
from nodes.user_task import validate_resume_value


class TaskInbox:
    """``runtime.processes.inbox``: the user tasks of every process instance, for the people who work on them."""

    def __init__(
        self,
        inbox: InboxStore,
        waits: WaitStore,
        clock: Clock,
        instances: Resumer,
        caller: AgentCaller,
        events: EventLog,
    ) -> None:
        self._events = events
        self._inbox = inbox
        self._caller = caller  # its policies run before a completion, as before every agent call
        self._waits = waits
        self._clock = clock
        self._instances = instances  # resumes the instance once its task is completed

    async def list_tasks(
        self,
        *,
        assignee: str | None = None,
        group: str | None = None,
        groups: Iterable[str] = (),
        status: str | None = "open",
        instance_id: str | None = None,
        tenant: str | None = None,
    ) -> list[dict[str, Any]]:
        """Tasks assigned to ``assignee`` or offered to ``group`` / any of ``groups`` (either matches); with
        ``tenant``, of that tenant's instances only (a server caller's)."""
        rows = await self._inbox.find(
            assignee=assignee, group=group, groups=tuple(groups), status=status, instance_id=instance_id, tenant=tenant
        )
        return [row.view() for row in rows]

    async def for_user(self, user: str, groups: Iterable[str] = (), tenant: str | None = None) -> list[dict[str, Any]]:
        """What ``user`` may work on: tasks assigned to them or offered to one of their groups (of ``tenant``'s
        instances, with one)."""
        return await self.list_tasks(assignee=user, groups=groups, tenant=tenant)

    async def get_task(self, task_id: str) -> dict[str, Any]:
        return (await self._row(task_id)).view()

    async def _row(self, task_id: str) -> UserTaskRow:
        row = await self._inbox.get(task_id)
        if row is None:
            raise TaskNotFoundError(f"no user task {task_id!r}", task_id=task_id)
        return row

    async def claim(self, task_id: str, user: str, *, groups: Iterable[str] = ()) -> dict[str, Any]:
        row = await self._open_row(task_id)
        if not row.may_act(user, tuple(groups)):
            raise self._forbidden(row, user)
        if row.claimed_by == user:
            return row.view()  # claimed by them already: nothing changes, nothing to log
        if not await self._inbox.claim(
            task_id, user, self._events, row.instance_id, _logged(row, "task.claimed", user)
        ):
            current = await self._row(task_id)
            if current.status != "open":
                raise TaskClosedError(f"task {task_id!r} is {current.status}", task_id=task_id)
            if current.claimed_by != user:
                raise TaskForbiddenError(
                    f"task {task_id!r} is already claimed by {current.claimed_by!r}", task_id=task_id
                )
        return await self.get_task(task_id)

    async def release(self, task_id: str, user: str) -> dict[str, Any]:
        row = await self._open_row(task_id)
        if row.claimed_by != user:
            raise TaskForbiddenError(f"task {task_id!r} is not claimed by {user!r}", task_id=task_id)
        await self._inbox.release(task_id, user, self._events, row.instance_id, _logged(row, "task.released", user))
        return await self.get_task(task_id)

    async def complete(
        self,
        task_id: str,
        *,
        user: str,
        payload: Mapping[str, Any],
        groups: Iterable[str] = (),
        run_options: RunOptions = DEFAULT_RUN,
    ) -> dict[str, Any]:
        """Complete a task with ``payload`` (checked against its response schema) and resume the instance."""
        row = await self._open_row(task_id)
        self._check_may_complete(row, user, tuple(groups))
        result = validate_resume_value(payload, row.response_schema, task=row.element)
        await self._check_assignments(row, result)
        await self._caller.authorize_completion(row.instance_id, row.element, result, user=user, groups=tuple(groups))
        resolution = {
            "option": row.element,
            "kind": "task",
            "payload": result,
            "by": user,
            "at": self._clock.now().isoformat(),
        }
        won = await self._waits.resolve(
            task_id,
            resolution,
            task_status="completed",
            claims=[
                self._inbox.completion_claim(
                    task_id, by=user, result=result, claimed_by=row.claimed_by, reassigned=row.escalation == "reassign"
                )
            ],
        )
        if not won:  # it was closed, claimed by someone else or reassigned by its SLA, since it was read
            current = await self._open_row(task_id)
            self._check_may_complete(current, user, tuple(groups))
            raise TaskClosedError(f"task {task_id!r} changed meanwhile; try again", task_id=task_id)
        return await self._instances.deliver_answering(row.instance_id, task_id, run_options=run_options)

    async def _check_assignments(self, row: UserTaskRow, result: dict[str, Any]) -> None:
        """Refuse (422, nothing changed) an answer that would give a variable a value the process's
        ``variables_schema`` refuses: an exclusive gateway relying on the schema could then never decide."""
        spec = await self._instances.instance_spec(row.instance_id)
        task = spec.element(row.element)
        misfit = spec.misfit(task.outputs if isinstance(task, UserTask) else None, result)
        if misfit is not None:
            where, why = misfit
            raise ResumeValueError(
                f"the result for task {row.element!r} does not fit the variables_schema of process {spec.name!r} "
                f"at {where}: {why}",
                task=row.element,
                path=where,
            )

    async def _open_row(self, task_id: str) -> UserTaskRow:
        row = await self._row(task_id)
        if row.status != "open":
            raise TaskClosedError(
                f"task {task_id!r} is {row.status}; only open tasks can be worked on", task_id=task_id
            )
        return row

    def _check_may_complete(self, row: UserTaskRow, user: str, groups: tuple[str, ...]) -> None:
        """Whoever claimed the open task may complete it; unclaimed, its assignee or a candidate group's member."""
        if row.claimed_by is not None and row.claimed_by != user:
            raise TaskForbiddenError(
                f"task {row.task_id!r} is claimed by {row.claimed_by!r}; only they can complete it", task_id=row.task_id
            )
        if row.claimed_by is None and not row.may_act(user, groups):
            raise self._forbidden(row, user)

    @staticmethod
    def _forbidden(row: UserTaskRow, user: str) -> TaskForbiddenError:
        offered = [f"assignee {row.assignee!r}"] if row.assignee else []
        offered += [f"groups {row.candidate_groups}"] if row.candidate_groups else []
        return TaskForbiddenError(
            f"{user!r} may not work on task {row.task_id!r}; it is for {' or '.join(offered)} (on journeys serve, the "
            'API key says who calls and its groups; with --no-auth the request names them: "user", "groups")',
            task_id=row.task_id,
            user=user,
        )


def _logged(row: UserTaskRow, event_type: str, user: str) -> NewEvent:
    """The event of a claim or release, committed with it (``InboxStore.claim``/``release``)."""
    return NewEvent(event_type, {"task_id": row.task_id, "by": user}, row.element, f"{row.task_id}:{event_type}")

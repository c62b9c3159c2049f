"""What the dashboard's pages show, read through the same services and views as the JSON API: the journey
list with its counts, one journey in full (status, graph, timeline, variables, waits, compensation), the
lifecycle board and the deployed processes."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from checkpoints.index import Instance, InstanceFilter
from checkpoints.ownership import Viewer
from checkpoints.redaction import redact
from checkpoints.retention import FINISHED_STATUSES
from graphs.errors import JourneyNotFoundError
from graphs.kernel.engine import failed_task
from graphs.kernel.forks import FORKED, FORKED_FROM
from graphs.kernel.instances import FINAL_STATUSES
from nodes.compensation import COMPLETED_STEP
from server.auth import Principal
from server.services import ServerServices
from server.ui.graph_svg import journey_picture

LIST_LIMIT = 500
# The actions each pattern offers (the orchestrator call behind each is in server/ui/pages.py).
CANCELLABLE = frozenset({"process", "lifecycle", "session", "mvp", "saga"})
# Lifecycles and sessions have no retry of their own: the task a journey stands failed at runs again
# (graphs.kernel.patterns.retry_failed_task, as the API's run without input).
RETRIED_AT_THEIR_TASK = frozenset({"lifecycle", "session", "mvp"})
RETRYABLE = frozenset({"structured", "saga", "process"}) | RETRIED_AT_THEIR_TASK
FORKABLE = frozenset({"structured", "saga"})  # patterns whose steps are in their log (graphs/kernel/forks.py)
# What the status views say about failures and undoing (sagas: *_steps; processes: compensated, failed_element).
COMPENSATION_KEYS = (
    "failure",
    "failed_step",
    "failed_element",
    "compensated_steps",
    "compensated",
    "compensation_failure",
)


@dataclass(frozen=True, slots=True)
class JourneyRow:
    """One line of the journey list."""

    instance: Instance
    stage: str | None
    incidents: int = 0  # failed timers its retry re-arms (a process instance's SLA or reminder notification)


@dataclass(frozen=True, slots=True)
class JourneyList:
    """The journeys a filter keeps (at most ``LIST_LIMIT``), and how many there are per pattern and status."""

    rows: list[JourneyRow]
    counts: dict[tuple[str, str], int]
    total: int


async def journey_list(svc: ServerServices, where: InstanceFilter) -> JourneyList:
    index = svc.runtime.store.index
    counts = await index.count_by_pattern_and_status(where)
    instances = await index.list_instances(where=where, limit=LIST_LIMIT, newest_first=True)
    stages = await _stages(svc, [i.instance_id for i in instances if i.pattern == "lifecycle"])
    incidents = await index.incidents([i.instance_id for i in instances if i.pattern == "process"])
    rows = [JourneyRow(i, stages.get(i.instance_id), incidents.get(i.instance_id, 0)) for i in instances]
    return JourneyList(rows, dict(sorted(counts.items())), sum(counts.values()))


async def _stages(svc: ServerServices, journey_ids: list[str]) -> dict[str, str]:
    return await svc.runtime.lifecycle.stages(journey_ids) if journey_ids else {}


@dataclass(frozen=True, slots=True)
class TimerLine:
    """A timer of the journey, with how it stands against the clock."""

    element: str
    purpose: str
    due_at: datetime
    status: str
    state: str  # "due in …", "overdue by …", or the timer's own status once it is no longer scheduled


@dataclass(frozen=True, slots=True)
class TaskLine:
    """A user task of the journey, with its SLA state."""

    task: dict[str, Any]
    sla: str  # "no SLA", "on time (due in …)", "breached … ago", "escalated: …", or the task's status once closed

    @property
    def skeleton(self) -> str:
        """A payload to start the completion form from: the response schema's properties, typed."""
        schema = self.task.get("response_schema")
        schema = schema if isinstance(schema, dict) else {}  # JSON Schema allows true/false as a schema
        blank = {"boolean": False, "integer": 0, "number": 0, "string": "", "array": [], "object": {}}
        found_properties, found_required = schema.get("properties"), schema.get("required")
        properties: dict[str, Any] = found_properties if isinstance(found_properties, dict) else {}
        required: list[Any] = found_required if isinstance(found_required, list) else []
        names = list(dict.fromkeys([*required, *properties]))

        def kind(name: str) -> str:
            found = properties.get(name)
            return str(found.get("type")) if isinstance(found, dict) else ""

        return json.dumps({name: blank.get(kind(name)) for name in names})


@dataclass
class JourneyPage:
    """One journey as its page shows it."""

    status: dict[str, Any]
    events: list[dict[str, Any]]
    graph_svg: str | None
    mermaid: str | None
    current_nodes: list[str]
    variables: dict[str, Any]
    timers: list[TimerLine]
    tasks: list[TaskLine]
    compensation: dict[str, Any]
    can_cancel: bool
    can_retry: bool
    can_terminate: bool
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    fork_points: dict[int, str] = field(default_factory=dict)  # timeline seq → the step a fork there goes on after
    forked_from: dict[str, Any] | None = None  # the journey (and step) this one was forked from
    forks: list[dict[str, Any]] = field(default_factory=list)  # the forks made of this one


def _delta(seconds: float) -> str:
    seconds = abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


async def journey_page(svc: ServerServices, principal: Principal, instance_id: str) -> JourneyPage:
    status = await svc.journey_status(principal, instance_id)
    pattern = status["pattern"]
    now = svc.runtime.store.clock.now()
    history = await svc.runtime.history(instance_id)
    events = [
        {"seq": e.seq, "type": e.type, "step": e.step, "payload": redact(e.payload), "created_at": e.created_at}
        for e in history
    ]
    svg = mermaid = None
    current: list[str] = []
    checkpoints: list[dict[str, Any]] = []
    try:
        picture = await journey_picture(svc.runtime, instance_id)
    except JourneyNotFoundError:  # a journey whose graph this server cannot build
        picture = None
    stands_failed = False  # at a failed task (a lifecycle's and a session's views do not say so)
    if picture is not None:
        svg, mermaid, current = picture.svg, picture.mermaid, picture.current
        if pattern in RETRIED_AT_THEIR_TASK and status["index_status"] == "failed":
            config = svc.runtime.engine.config(instance_id)
            stands_failed = failed_task(await picture.graph.aget_state(config)) is not None
        async for past in picture.graph.aget_state_history(svc.runtime.engine.config(instance_id), limit=50):
            checkpoints.append(
                {
                    "checkpoint_id": past.config["configurable"]["checkpoint_id"],
                    "step": (past.metadata or {}).get("step"),
                    "next": list(past.next),
                    "created_at": past.created_at,
                }
            )
    timers: list[TimerLine] = []
    tasks: list[TaskLine] = []
    if pattern == "process":
        for timer in await svc.runtime.processes.services.timers.find(instance_id=instance_id):
            if timer.status == "scheduled":
                left = (timer.due_at - now).total_seconds()
                state = f"due in {_delta(left)}" if left > 0 else f"overdue by {_delta(left)}"
            else:
                state = timer.status
            timers.append(TimerLine(timer.element, timer.purpose, timer.due_at, timer.status, state))
        for task in await svc.runtime.processes.inbox.list_tasks(instance_id=instance_id, status=None):
            tasks.append(TaskLine(task, sla_state(task, now)))
    variables = status.get("variables")
    if variables is None:
        variables = {k: v for k, v in status.items() if k in ("last_output", "metadata", "areas", "units")}
    variables = redact(variables)  # shown to people, as every answer of the server is (checkpoints.redaction)
    compensation = redact({k: status[k] for k in COMPENSATION_KEYS if status.get(k)})
    fork_points: dict[int, str] = {}
    if pattern in FORKABLE:  # a fork goes on after a step's last completion
        for event in history:
            if event.type == FORKED_FROM:  # a fork has checkpoints only from where it was forked on
                fork_points = dict(list(fork_points.items())[-1:])
            if event.type == COMPLETED_STEP and event.step:
                fork_points = {seq: step for seq, step in fork_points.items() if step != event.step}
                fork_points[event.seq] = event.step
    forked_from = next((e.payload for e in history if e.type == FORKED_FROM), None)
    forks = [e.payload for e in history if e.type == FORKED]
    return JourneyPage(
        status=status,
        events=events,
        graph_svg=svg,
        mermaid=mermaid,
        current_nodes=current,
        variables=variables,
        timers=timers,
        tasks=tasks,
        compensation=compensation,
        # Whatever a pattern calls its open statuses (a lifecycle journey's is its stage's: active, rollback).
        can_cancel=pattern in CANCELLABLE and status["index_status"] not in FINISHED_STATUSES,
        can_terminate=status["index_status"] not in FINAL_STATUSES,
        can_retry=pattern in RETRYABLE
        and bool(
            status.get("failed_step")
            or status.get("failed_element")
            or status.get("compensation_failure")
            or status.get("incidents")  # a process's failed timers: its retry re-arms them
            or stands_failed
        ),
        checkpoints=checkpoints,
        fork_points=fork_points,
        forked_from=forked_from,
        forks=forks,
    )


def sla_state(task: dict[str, Any], now: datetime) -> str:
    """A user task against its SLA: closed tasks say their status; open ones say how long is left."""
    if task["status"] != "open":
        return str(task["status"])
    if task.get("escalation"):
        return f"escalated: {task['escalation']}"
    due = task.get("sla_due_at")
    if not due:
        return "no SLA"
    left = (datetime.fromisoformat(due) - now).total_seconds()
    return f"on time (due in {_delta(left)})" if left > 0 else f"breached {_delta(left)} ago"


async def open_tasks(
    svc: ServerServices, user: str | None, groups: list[str] | None, tenant: str | None
) -> list[TaskLine]:
    """The inbox: every open task (``user`` None), or those assigned to ``user`` or offered to ``groups``; of
    ``tenant``'s instances only, with one."""
    inbox = svc.runtime.processes.inbox
    now = svc.runtime.store.clock.now()
    if user is None:
        tasks = await inbox.list_tasks(tenant=tenant)
    else:
        tasks = await inbox.for_user(user, groups or (), tenant)
    return [TaskLine(t, sla_state(t, now)) for t in tasks]


async def lifecycle_board(svc: ServerServices, viewer: Viewer) -> dict[str, Any]:
    """Client journeys ``viewer`` may see by stage, with the seed's metrics (stage durations, rollback rate,
    first-pass rate)."""
    lifecycle = svc.runtime.lifecycle
    instances = await svc.runtime.store.index.list_instances(pattern="lifecycle", limit=LIST_LIMIT, viewer=viewer)
    stages = await _stages(svc, [i.instance_id for i in instances])
    columns: dict[str, list[Instance]] = {}
    for instance in instances:
        columns.setdefault(stages.get(instance.instance_id, "pending"), []).append(instance)
    return {"columns": columns, "metrics": await lifecycle.dashboard(viewer=viewer)}


async def process_overview(svc: ServerServices, viewer: Viewer | None = None) -> list[dict[str, Any]]:
    """Each process ``viewer`` may start (its tenant's and the shared ones; None: every process): its versions
    with their rollout weights, and the instances it may see per version and status."""
    processes = svc.runtime.processes
    instances = await processes.instances(viewer=viewer)
    by_version: dict[tuple[str, int], dict[str, int]] = {}
    for found in instances:
        counts = by_version.setdefault((found["process"], found["version"]), {})
        counts[found["status"]] = counts.get(found["status"], 0) + 1
    overview = []
    for name in await processes.names(viewer):
        versions = await processes.versions(name)
        overview.append(
            {
                "name": name,
                "versions": [
                    {
                        **version,
                        "instances": by_version.get((name, version["version"]), {}),
                    }
                    for version in versions
                ],
            }
        )
    return overview

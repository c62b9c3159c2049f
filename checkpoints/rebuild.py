"""Rebuilding derived views from the event log (``journeys rebuild``).

The instance index is derived from the log: an instance's first event records its design, pattern and
owner (``DESIGN_KEY``, ``PATTERN_KEY``, ``USER_KEY``, or the payload's own ``journey_id`` and ``user_id``:
``first_row``); every append that sets its status records the
status on its last event (``STATUS_KEY``); a process migration records the design it moves the instance
to. An instance's row is then: registered when its first event was written, in the status its latest
such event recorded (``in_progress``, its status when registered, if none did), on the design its latest
migration recorded.

The client lifecycle's tables are derived from the same log (:func:`rebuild_lifecycle`): the journey-state
row by the next-state rule the live machine commits with; transitions, validations, metric samples, unit-of-
work runs and rollback history from the events they were written with (a run's task records by the same
rule, :func:`checkpoints.lifecycle.task_row`, with each task's output from its own completion event).
The log keeps values whole; a log written before it did holds them redacted, and a live row that agrees
with it up to redaction is left alone (an identity it hid is taken from the live row: :func:`as_live`). So is
the user-task inbox (:func:`rebuild_inbox`), from the task events of each process instance.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Integer, Table, bindparam, delete, exists, insert, select, update

from checkpoints.backends.base import Backend, Row, Transaction
from checkpoints.encryption import Sealer
from checkpoints.errors import ConcurrentUpdateError
from checkpoints.events import DESIGN_KEY, OF_INSTANCE, STATUS_KEY, Event, EventLog, first_row, is_first
from checkpoints.flow import ENDED_STATUSES, TERMINATED, TERMINATED_EVENT
from checkpoints.lifecycle import UNIT_UNDONE, next_position, opened, run_totals, sealed, task_row, tasks_undone
from checkpoints.redaction import redact
from checkpoints.schema.lifecycle_tables import (
    lifecycle_journey_states,
    lifecycle_metrics,
    lifecycle_rollback_history,
    lifecycle_transitions,
    lifecycle_units_of_work,
    lifecycle_validation_results,
)
from checkpoints.schema.tables import (
    journey_events,
    journey_instances,
    process_waits,
    user_task_groups,
    user_tasks,
)

_events, _instances = journey_events.c, journey_instances.c
# The first event names its instance.
_LOGGED = select(_events.instance_id).where(is_first(_events.seq)).order_by(_events.instance_id)
_EVENTS_OF = select(_events.seq, _events.payload, _events.created_at).where(OF_INSTANCE).order_by(_events.seq)
_ROW = select(journey_instances).where(_instances.instance_id == bindparam("p_instance_id"))
_ROW_VALUES = {
    "journey_id": bindparam("p_journey_id", type_=_instances.journey_id.type),
    "pattern": bindparam("p_pattern", type_=_instances.pattern.type),
    "user_id": bindparam("p_user_id", type_=_instances.user_id.type),
    "status": bindparam("p_status", type_=_instances.status.type),
    "created_at": bindparam("p_created_at", type_=_instances.created_at.type),
    "updated_at": bindparam("p_updated_at", type_=_instances.updated_at.type),
}
# A row is written only while the log holds nothing after the events it was derived from: an append that
# commits in between (its status written with it) is not overwritten with the older status.
_UNCHANGED = ~exists().where(OF_INSTANCE, _events.seq > bindparam("p_last_seq", type_=Integer))
# On PostgreSQL the row is locked first: an append that has written it commits before the check is made (the
# check then sees its event), one that writes it after waits for the rebuild's write and writes over it.
_LOCK = _ROW.with_for_update()  # SQLite has no row locks: there the conditional write is one statement, atomic
_INSERT = (
    insert(journey_instances)
    .from_select(
        ["instance_id", *_ROW_VALUES],
        select(bindparam("p_instance_id", type_=_instances.instance_id.type), *_ROW_VALUES.values()).where(
            _UNCHANGED, ~exists().where(_instances.instance_id == bindparam("p_instance_id"))
        ),
    )
    .returning(_instances.instance_id)
)
_UPDATE = (
    update(journey_instances)
    .where(_instances.instance_id == bindparam("p_instance_id"), _UNCHANGED)
    .values(**_ROW_VALUES)
    .returning(_instances.instance_id)
)
WRITE_ATTEMPTS = 20  # reads of an instance's log a rebuild makes while appends keep changing it
_COMPARED = ("journey_id", "pattern", "user_id", "status")


@dataclass(frozen=True, slots=True)
class Rebuilt:
    """What a rebuild did: the instances in the log, and the ids of those whose row it wrote."""

    instances: int
    corrected: list[str]
    underivable: list[str]  # logged before their first event recorded their row: left as they are
    busy: list[str] = field(default_factory=list)  # appended to at every read: left as they are, rebuild again


def derived_row(events: list[Row]) -> dict[str, Any] | None:
    """The index row of an instance, from its events in order (None: the first event predates the keys)."""
    recorded = first_row(events[0]["payload"] or {})
    if recorded is None:
        return None
    row = {
        "journey_id": recorded[0],
        "pattern": recorded[1],
        "user_id": recorded[2],
        "status": "in_progress",
        "created_at": events[0]["created_at"],
        "updated_at": events[0]["created_at"],
    }
    for event in events[1:]:
        payload = event["payload"] or {}
        if STATUS_KEY in payload:
            row["status"], row["updated_at"] = str(payload[STATUS_KEY]), event["created_at"]
        if DESIGN_KEY in payload:
            row["journey_id"] = str(payload[DESIGN_KEY])
    return row


def as_live(derived: dict[str, Any], live: Mapping[str, Any]) -> dict[str, Any]:
    """A row derived from the log, with each value the log kept redacted taken from the ``live`` row it
    redacts: logs written before the log was kept whole hold a user named by an e-mail address as
    ``[REDACTED]``, and a rebuild must not write that over the user."""
    return {
        key: live[key] if key in live and value != live[key] and redact(live[key]) == value else value
        for key, value in derived.items()
    }


async def rebuild_instance_index(backend: Backend) -> Rebuilt:
    """Write every instance's index row as its events say: a missing row is inserted, a differing one
    updated, one that agrees left alone (a few queries per instance). Safe on a live database: a row is
    written only if no event was appended since its events were read, else they are read again."""
    outcomes: dict[str, list[str]] = {"corrected": [], "agrees": [], "underivable": [], "busy": []}
    logged = [row["instance_id"] for row in await backend.query(_LOGGED)]
    for instance_id in logged:
        outcomes[await _rebuild_row(backend, instance_id)].append(instance_id)
    return Rebuilt(len(logged), outcomes["corrected"], outcomes["underivable"], outcomes["busy"])


async def _rebuild_row(backend: Backend, instance_id: str) -> str:
    """Bring one instance's row in line with its log: ``corrected``, ``agrees``, ``underivable``, or ``busy``
    (its log grew between each read and the write that followed, :data:`WRITE_ATTEMPTS` times)."""
    for _attempt in range(WRITE_ATTEMPTS):
        events = await backend.query(_EVENTS_OF, {"p_instance_id": instance_id})
        derived = derived_row(events)
        if derived is None:
            return "underivable"
        found = await backend.query(_ROW, {"p_instance_id": instance_id})
        if found:
            derived = as_live(derived, found[0])
            if all(found[0][name] == derived[name] for name in _COMPARED):
                return "agrees"
        params = {
            "p_instance_id": instance_id,
            "p_last_seq": events[-1]["seq"],
            **{f"p_{name}": value for name, value in derived.items()},
        }
        try:
            async with backend.transaction() as tx:
                await tx.execute(_LOCK, {"p_instance_id": instance_id})
                if await tx.execute(_UPDATE if found else _INSERT, params):
                    return "corrected"
        except Exception as exc:
            if not backend.is_unique_violation(exc):  # the row was inserted meanwhile: read again
                raise
    return "busy"


# --- the lifecycle tables ---------------------------------------------------------------------------

_MOVE = re.compile(r":m(\d+):[a-z_]+$")  # a transition event's key ends with its move and event
# Each rebuilt table, and the columns a row is compared on (its autoincrement id aside).
_LIFECYCLE_TABLES: dict[str, Table] = {
    "lifecycle_journey_states": lifecycle_journey_states,
    "lifecycle_transitions": lifecycle_transitions,
    "lifecycle_validation_results": lifecycle_validation_results,
    "lifecycle_metrics": lifecycle_metrics,
    "lifecycle_units_of_work": lifecycle_units_of_work,
    "lifecycle_rollback_history": lifecycle_rollback_history,
}
# Columns that may hold an agent's or a person's values: logs written before the log was kept whole have them
# redacted, so a live row is also compared with its redacted form (a row that agrees up to redaction stays).
_REDACTED_COLUMNS = ("tasks", "failure", "plan", "snapshot", "metadata")
_LIFECYCLE_IDS = (
    select(_instances.instance_id).where(_instances.pattern == "lifecycle").order_by(_instances.instance_id)
)


def _moment(value: str) -> datetime:
    return datetime.fromisoformat(value)


def lifecycle_rows(journey_id: str, events: list[Event]) -> dict[str, list[dict[str, Any]]]:
    """The rows of each lifecycle table for one journey, from its events in order: its state row by the
    same next-state rule the live machine commits with (:func:`checkpoints.lifecycle.next_position`), a
    transition row per ``lifecycle.transition``, a validation per ``lifecycle.validated``, the samples
    of each ``metric.recorded``, a unit-of-work run per ``uow.started`` (ended by its ``uow.<status>``)
    and a rollback per ``initiate_rollback`` transition (validated, completed or cancelled by later
    events). A table whose events predate what its rows need is left out (not derivable)."""
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in _LIFECYCLE_TABLES}
    created = next((e.payload for e in events if e.type == "lifecycle.created"), None)
    if created is None:
        return rows
    position: dict[str, Any] = {"metadata": dict(created.get("metadata") or {})}
    started_at: datetime | None = None
    runs = _Runs(journey_id, events)
    rollbacks = _Rollbacks(journey_id)
    for event in events:
        data = event.payload
        if event.type == "lifecycle.transition":
            at, entered = _moment(data["at"]), position.get("stage_started_at")
            found = _MOVE.search(event.key or "")
            rows["lifecycle_transitions"].append(
                {
                    "journey_id": journey_id,
                    "move": int(found.group(1)) if found else 0,
                    "event": data["event"],
                    "from_stage": data.get("from_stage"),
                    "to_stage": data["to_stage"],
                    "at": at,
                    "from_stage_seconds": (at - entered).total_seconds() if entered else None,
                }
            )
            position = next_position(position, data["event"], data["to_stage"], at, data.get("metadata"))
            started_at = started_at or at
            rollbacks.moved(data, at)
        elif event.type == "lifecycle.validated":
            rows["lifecycle_validation_results"].append(
                {
                    **{k: data.get(k) for k in ("validation_id", "kind", "event", "from_stage", "to_stage")},
                    "journey_id": journey_id,
                    "passed": bool(data["passed"]),
                    "checks": data["checks"],
                    "summary": data["summary"],
                    "evaluation_ms": float(data["evaluation_ms"]),
                    "evaluated_at": _moment(data["evaluated_at"]),
                }
            )
            if data.get("kind") == "rollback":
                rollbacks.validated(data)
                runs.rolled_back(data.get("undone") or [])
        elif event.type == "metric.recorded":
            at = _moment(data["at"])
            rows["lifecycle_metrics"] += [
                {"journey_id": journey_id, "metric": name, "value": float(value), "recorded_at": at}
                for name, value in data["values"].items()
            ]
        elif event.type.startswith("uow."):
            runs.apply(event)
        elif event.type == TERMINATED_EVENT:  # ended for good where it stood: a rollback it waited in too
            at = _moment(data["at"]) if "at" in data else event.created_at
            position = {**position, "status": TERMINATED}
            rollbacks.given_up(at)
    if started_at is not None:  # a journey whose start was refused has no state row yet
        identity = {"client_id": created["client_id"], "design_id": created["design_id"], "started_at": started_at}
        rows["lifecycle_journey_states"].append({"journey_id": journey_id, **identity, **position})
    for name, derived in (("lifecycle_units_of_work", runs), ("lifecycle_rollback_history", rollbacks)):
        if derived.derivable:
            rows[name] = list(derived.rows.values())
        else:
            del rows[name]
    return rows


class _Runs:
    """Unit-of-work runs as their events tell them: a row per ``uow.started``, ended by ``uow.<status>``
    (its tasks' outputs from their keyed completion events), undone by a validated rollback."""

    def __init__(self, journey_id: str, events: list[Event]) -> None:
        self.journey_id = journey_id
        self.rows: dict[str, dict[str, Any]] = {}
        self.bases: dict[str, dict[str, Any]] = {}
        self.derivable = True
        self.outputs = {e.key: e.payload.get("output") for e in events if e.type == "task.completed" and e.key}

    def apply(self, event: Event) -> None:
        data = event.payload
        run_id = str(data.get("run_id"))
        if event.type == "uow.started":
            if "tasks" not in data:  # logged before the started event recorded its tasks
                self.derivable = False
                return
            at = _moment(data["at"])
            self.bases[run_id] = data["tasks"]
            pending = {"status": "pending", "attempts": 0}
            self.rows[run_id] = {
                "run_id": run_id,
                "journey_id": self.journey_id,
                "uow_id": event.step,
                "stage": data["stage"],
                "purpose": data["purpose"],
                "status": "running",
                "dependencies": list(data["dependencies"]),
                "tasks": {t: task_row(base, pending) for t, base in data["tasks"].items()},
                **run_totals({}),
                "failure": None,
                "created_at": at,
                "started_at": at,
                "completed_at": None,
            }
            return
        row = self.rows.get(run_id)
        if event.type == UNIT_UNDONE:  # undone by a later run of its unit: its status stays
            if row is not None:
                row["tasks"] = tasks_undone(row["tasks"], data["undone"])
            return
        if row is None or "at" not in data:
            self.derivable = self.derivable and row is not None
            return
        entries = {}
        for task_id, entry in data["tasks"].items():
            key = f"{run_id}:{task_id}"
            entries[task_id] = {**entry, "output": self.outputs[key]} if key in self.outputs else dict(entry)
        row |= {
            "status": event.type.removeprefix("uow."),
            "tasks": {t: task_row(base, entries[t]) for t, base in self.bases[run_id].items()},
            **run_totals(entries),
            "failure": data.get("failure"),
            "completed_at": _moment(data["at"]),
        }

    def rolled_back(self, uow_ids: list[str]) -> None:
        """A validated rollback undoes the completed forward runs of ``uow_ids``."""
        for row in self.rows.values():
            if row["uow_id"] in uow_ids and row["status"] == "completed" and row["purpose"] != "rollback":
                row["status"] = "rolled_back"


class _Rollbacks:
    """Rollbacks as their events tell them: started by an ``initiate_rollback`` transition, validated (or
    failed) by their ``lifecycle.validated``, ended by the ``complete_rollback`` or ``cancel_journey``."""

    def __init__(self, journey_id: str) -> None:
        self.journey_id = journey_id
        self.rows: dict[str, dict[str, Any]] = {}
        self.open: dict[str, Any] | None = None
        self.derivable = True

    def moved(self, data: dict[str, Any], at: datetime) -> None:
        event = data["event"]
        if event == "initiate_rollback":
            started = data.get("rollback")
            if started is None:  # logged before transitions recorded their rollback
                self.derivable = False
                return
            self.open = self.rows[started["rollback_id"]] = {
                **{k: started[k] for k in ("rollback_id", "trigger", "reason", "automatic", "to_stage", "plan")},
                "snapshot": started.get("snapshot"),
                "journey_id": self.journey_id,
                "from_stage": data.get("from_stage"),
                "status": "running",
                "run_ids": [],
                "validation_id": None,
                "initiated_at": at,
                "validated_at": None,
                "completed_at": None,
            }
        elif event == "complete_rollback" and self.open is not None:
            self.open |= {"status": "completed", "completed_at": at}
            self.open = None
        elif event == "cancel_journey":
            self.given_up(at)

    def given_up(self, at: datetime) -> None:
        """The journey was cancelled or terminated: the rollback it waited in, if any, is cancelled then."""
        if self.open is not None:
            self.open |= {"status": "cancelled", "completed_at": at}
            self.open = None

    def validated(self, data: dict[str, Any]) -> None:
        if self.open is None:
            return
        if "run_ids" not in data:  # logged before validations recorded their runs
            self.derivable = False
            return
        self.open |= {
            "status": "validated" if data["passed"] else "failed",
            "validation_id": data["validation_id"],
            "validated_at": _moment(data["evaluated_at"]),
            "run_ids": list(data["run_ids"]),
        }


def _comparable(rows: list[dict[str, Any]], columns: list[str]) -> list[str]:
    """Rows as sorted JSON texts of ``columns``: moments in UTC, JSON values with sorted keys."""

    def text(value: Any) -> Any:
        return value.astimezone(UTC).isoformat() if isinstance(value, datetime) else value

    return sorted(json.dumps({c: text(r.get(c)) for c in columns}, sort_keys=True, default=str) for r in rows)


def _as_logged(rows: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """Live rows as the log may hold their values: whole (as it keeps them now), or redacted as logs written
    before kept them, with identities whole or redacted too (``checkpoints.redaction.IDENTITY_FIELDS``)."""
    yield rows
    for identities in (True, False):
        yield [
            {k: redact(v, identities=identities) if k in _REDACTED_COLUMNS else v for k, v in row.items()}
            for row in rows
        ]


async def lifecycle_views(
    backend: Backend, journey_id: str, sealer: Sealer | None = None
) -> dict[str, list[dict[str, Any]]]:
    """The live rows of each rebuilt lifecycle table for one journey (without their autoincrement ids),
    their sealed columns opened with ``sealer`` (the store's, when it has a key)."""
    found = {}
    for name, table in _LIFECYCLE_TABLES.items():
        rows = await backend.query(select(table).where(table.c.journey_id == journey_id))
        found[name] = [
            {k: v for k, v in opened(table, row, sealer or Sealer(None)).items() if k != "id"} for row in rows
        ]
    return found


# One writer per journey instance while the block runs (the runtime's ``engine.exclusive``).
Exclusive = Callable[[str], AbstractAsyncContextManager[None]]


async def rebuild_lifecycle(backend: Backend, events: EventLog, exclusive: Exclusive) -> Rebuilt:
    """Write every client lifecycle journey's rows in the lifecycle tables (journey states, transitions,
    validations, metric samples, unit-of-work runs, rollback history) as its events say: a journey whose
    rows differ from the log in a table has that table's rows replaced. ``corrected`` names
    ``table:journey_id``; ``underivable`` the tables of journeys logged before their events recorded what
    the rows need (left as they are); ``busy`` the journeys whose log grew between each read and the write
    that followed. Run after the instance index is rebuilt (it lists the journeys).

    Safe on a live database: a journey's tables are written only if its log did not grow since it was read
    (:func:`_unless_moved`), else it is read again; and each journey is rebuilt inside ``exclusive`` (the
    runtime's ``engine.exclusive``: one writer per journey, in this process and across processes), as the
    stage machine writes it (a transition waiting on a row the rebuild replaces would find it gone)."""
    corrected: list[str] = []
    underivable: list[str] = []
    busy: list[str] = []
    journey_ids = [row["instance_id"] for row in await backend.query(_LIFECYCLE_IDS)]
    for journey_id in journey_ids:
        try:
            async with exclusive(journey_id):
                outcome = await _rebuild_journey(backend, events, journey_id)
        except ConcurrentUpdateError:  # held by a writer throughout the wait
            outcome = None
        if outcome is None:
            busy.append(journey_id)
            continue
        corrected += outcome[0]
        underivable += outcome[1]
    return Rebuilt(len(journey_ids), corrected, underivable, busy)


async def _rebuild_journey(backend: Backend, events: EventLog, journey_id: str) -> tuple[list[str], list[str]] | None:
    """One journey's lifecycle tables as its log says: the tables written and those not derivable, or None
    when its log grew between each read and the write that followed (:data:`WRITE_ATTEMPTS` times)."""
    for _attempt in range(WRITE_ATTEMPTS):
        logged = await events.list(journey_id)
        derived = lifecycle_rows(journey_id, logged)
        live = await lifecycle_views(backend, journey_id, events.sealer)
        states = "lifecycle_journey_states"  # the one row of each journey, with its client's id
        if derived[states] and live[states]:
            derived[states] = [as_live(derived[states][0], live[states][0])]
        underivable = [f"{name}:{journey_id}" for name in _LIFECYCLE_TABLES if name not in derived]
        differing = []
        for name, table in _LIFECYCLE_TABLES.items():
            if name not in derived:
                continue
            columns = [c.name for c in table.columns if c.name != "id"]
            wanted = _comparable(derived[name], columns)
            if not any(_comparable(rows, columns) == wanted for rows in _as_logged(live[name])):
                differing.append(name)
        if not differing:
            return [], underivable
        try:
            async with backend.transaction() as tx:
                for name in differing:
                    table = _LIFECYCLE_TABLES[name]
                    await tx.execute(delete(table).where(table.c.journey_id == journey_id))
                    for row in derived[name]:
                        await tx.execute(insert(table).values(**sealed(table, row, events.sealer)))
                await _unless_moved(tx, journey_id, logged[-1].seq)
        except _Moved:
            continue
        return [f"{name}:{journey_id}" for name in differing], underivable
    return None


# --- the user-task inbox ----------------------------------------------------------------------------

_TASK_EVENTS = ["task.created", "task.claimed", "task.released", "task.escalated", "wait.completed", "process.migrated"]
# The columns a task is compared on; its moments (created, escalated, completed) are written from the
# events' times when a row is written, as the index's created_at is.
_TASK_COMPARED = (
    "instance_id",
    "element",
    "title",
    "assignee",
    "candidate_groups",
    "claimed_by",
    "status",
    "escalation",
    "completed_by",
    "result",
)
_PROCESSES = select(_instances.instance_id, _instances.status).where(_instances.pattern == "process")


def inbox_rows(instance_id: str, status: str, events: list[Event]) -> dict[str, dict[str, Any]]:
    """The user tasks of one process instance, by task id, from its task events in order: opened by
    ``task.created``, claimed and released, escalated (a reassignment moves it), closed by its wait's
    ``wait.completed`` (completed when a person or its SLA answered it, cancelled otherwise) or cancelled
    with the instance; a migration (``process.migrated``) moves its open tasks to their new elements, with the
    target version's titles and response schemas."""
    tasks: dict[str, dict[str, Any]] = {}
    for event in events:
        data = event.payload
        if event.type == "process.migrated":
            _migrated(tasks, data)
            continue
        if event.type == "task.created" and isinstance(data.get("task"), dict):
            task = data["task"]
            due = task.get("sla_due_at")
            tasks[str(task["task_id"])] = {
                "task_id": str(task["task_id"]),
                "instance_id": instance_id,
                "element": event.step,
                "title": task.get("title"),
                "assignee": task.get("assignee"),
                "candidate_groups": list(task.get("candidate_groups") or []),
                "claimed_by": None,
                "status": "open",
                "response_schema": task.get("response_schema"),
                "sla_due_at": _moment(due) if due else None,
                "escalated_at": None,
                "escalation": None,
                "created_at": event.created_at,
                "completed_at": None,
                "completed_by": None,
                "result": None,
                "_schema_logged": "response_schema" in task,
            }
            continue
        task_id = str(data.get("wait_id") if event.type == "wait.completed" else data.get("task_id"))
        row = tasks.get(task_id)
        if row is None or row["status"] != "open":
            continue
        if event.type == "task.claimed":
            row["claimed_by"] = data.get("by")
        elif event.type == "task.released":
            row["claimed_by"] = None
        elif event.type == "task.escalated" and "action" in data:
            if row["escalation"] is None:
                row["escalation"], row["escalated_at"] = data["action"], event.created_at
            if data["action"] == "reassign" and isinstance(data.get("to"), dict):
                row["assignee"] = data["to"].get("assignee")
                row["candidate_groups"] = list(data["to"].get("candidate_groups") or [])
                row["claimed_by"] = None
        elif event.type == "wait.completed":
            answered = data.get("resolution_kind") in ("task", "escalation")
            row["status"] = "completed" if answered else "cancelled"
            if answered:
                row |= {"completed_by": data.get("by"), "result": data.get("payload"), "completed_at": event.created_at}
            if data.get("resolution_kind") == "escalation" and row["escalation"] is None:  # its SLA completed it
                row["escalation"], row["escalated_at"] = "complete", event.created_at
    if status in ENDED_STATUSES:
        for row in tasks.values():
            if row["status"] == "open":
                row["status"] = "cancelled"
    return tasks


def _migrated(tasks: dict[str, dict[str, Any]], data: Mapping[str, Any]) -> None:
    """The open tasks a logged migration moved, as it moved them (logged before it logged their fields: element
    only)."""
    mapping = data.get("mapping") or {}
    fields = data.get("tasks") or {}
    for wait_id in data.get("waits") or []:
        row = tasks.get(str(wait_id))
        if row is None or row["status"] != "open":
            continue
        row["element"] = mapping.get(row["element"], row["element"])
        if isinstance(moved := fields.get(str(wait_id)), Mapping):
            row["title"] = moved.get("title", row["title"])
            if "response_schema" in moved:
                row["response_schema"] = moved["response_schema"]
                row["_schema_logged"] = True


def _same(live: Mapping[str, Any], derived: dict[str, Any]) -> bool:
    columns = [*_TASK_COMPARED, *(["response_schema"] if derived["_schema_logged"] else [])]
    return _comparable([dict(live)], columns) == _comparable([derived], columns)


async def rebuild_inbox(backend: Backend, events: EventLog) -> Rebuilt:
    """Write every process instance's user tasks (and their candidate groups) as its events say: a missing
    task is inserted, one that differs is rewritten. ``corrected`` names the tasks written; ``busy`` the
    instances whose log grew between each read and the write that followed (left as they are). Run after the
    instance index is rebuilt. Safe on a live database: an instance's tasks are written only if its log did
    not grow since it was read (:func:`_unless_moved`), else it is read again; a task that is rewritten is
    updated in place, so a claim or completion waiting on its row applies to the row written."""
    corrected: list[str] = []
    busy: list[str] = []
    processes = await backend.query(_PROCESSES)
    for process in processes:
        written = await _rebuild_tasks(backend, events, process["instance_id"])
        if written is None:
            busy.append(process["instance_id"])
        else:
            corrected += written
    return Rebuilt(len(processes), corrected, [], busy)


_RESOLVED_WAITS = select(process_waits.c.wait_id).where(
    process_waits.c.instance_id == bindparam("p_instance_id"), process_waits.c.status == "resolved"
)
_STATUS_OF = select(_instances.status).where(_instances.instance_id == bindparam("p_instance_id"))
# Whether the instance's log grew past the events a write was derived from (see _unless_moved).
_MOVED = select(exists().where(OF_INSTANCE, _events.seq > bindparam("p_last_seq", type_=Integer)))


class _Moved(Exception):
    """The log grew while the rows derived from it were written: the transaction is rolled back."""


async def _unless_moved(tx: Transaction, instance_id: str, last_seq: int) -> None:
    """Last in a rebuild's write transaction: roll it back (:class:`_Moved`) if an event was appended to
    ``instance_id`` after ``last_seq``, the last event the written rows were derived from. The transaction
    has written (and so locked) the rows first: a live writer of them that committed before is seen here,
    one that writes them after waits for the rebuild's commit and writes over what it wrote."""
    [row] = await tx.execute(_MOVED, {"p_instance_id": instance_id, "p_last_seq": last_seq})
    if next(iter(row.values())):
        raise _Moved


async def _rebuild_tasks(backend: Backend, events: EventLog, instance_id: str) -> list[str] | None:
    """Bring one process instance's tasks in line with its log: the ids of those written, or None when its
    log grew between each read and the write that followed (:data:`WRITE_ATTEMPTS` times)."""
    for _attempt in range(WRITE_ATTEMPTS):
        logged = await events.list(instance_id)
        status = await backend.query(_STATUS_OF, {"p_instance_id": instance_id})
        if not logged or not status:
            return []
        task_events = [e for e in logged if e.type in _TASK_EVENTS]
        derived = inbox_rows(instance_id, status[0]["status"], task_events)
        # A task closed with its wait's resolution, which its instance has not taken yet (it logs it then):
        # open in the log, rightly closed in the inbox.
        pending = {row["wait_id"] for row in await backend.query(_RESOLVED_WAITS, {"p_instance_id": instance_id})}
        live = {  # a result sealed at rest is compared, and written back, as the inbox keeps it
            row["task_id"]: events.sealer.open_in(row, "result")
            for row in await backend.query(select(user_tasks).where(user_tasks.c.instance_id == instance_id))
        }
        writes: dict[str, tuple[dict[str, Any], Mapping[str, Any] | None]] = {}
        for task_id, row in derived.items():
            found = live.get(task_id)
            if found is not None:
                row = as_live(row, found)
                if _same(found, row) or (row["status"] == "open" and task_id in pending):
                    continue
            values = {k: v for k, v in row.items() if not k.startswith("_")}
            values["result"] = events.sealer.seal(values["result"])
            if found is not None and not row["_schema_logged"]:
                values["response_schema"] = found["response_schema"]  # logged before tasks logged theirs
            writes[task_id] = (values, found)
        if not writes:
            return []
        try:
            async with backend.transaction() as tx:
                for task_id, (values, as_read) in writes.items():
                    await _write_task(tx, task_id, values, as_read)
                await _unless_moved(tx, instance_id, logged[-1].seq)
        except _Moved:
            continue
        except Exception as exc:
            if not backend.is_unique_violation(exc):  # a task inserted meanwhile: read again
                raise
            continue
        return list(writes)
    return None


async def _write_task(tx: Transaction, task_id: str, values: dict[str, Any], found: Mapping[str, Any] | None) -> None:
    """One task as derived, with its candidate groups: inserted when it had no row, else updated in place
    (its row lock is what a live claim or completion of it waits on) if it is still as ``found``, in what
    people change (a completion changes it without an event: it is logged when its instance takes it)."""
    t = user_tasks.c
    if found is None:
        await tx.execute(insert(user_tasks).values(**values))
    else:
        unchanged = [getattr(t, name).is_not_distinct_from(found[name]) for name in _LIVE_CHANGES]
        changes = {k: v for k, v in values.items() if k != "task_id"}
        update_it = update(user_tasks).where(t.task_id == task_id, *unchanged).values(**changes)
        if not await tx.execute(update_it.returning(t.task_id)):
            raise _Moved  # claimed, completed, escalated or deleted since it was read
    await tx.execute(delete(user_task_groups).where(user_task_groups.c.task_id == task_id))
    for group in values["candidate_groups"]:
        await tx.execute(insert(user_task_groups).values(task_id=task_id, group_name=group))


# A task's columns that people and timers change (claims, completions, reassignments, escalations).
_LIVE_CHANGES = ("status", "claimed_by", "assignee", "escalation")


async def rebuild_views(backend: Backend, events: EventLog, exclusive: Exclusive) -> tuple[Rebuilt, Rebuilt, Rebuilt]:
    """Every view derived from the event log, in order: the instance index, then the lifecycle tables and
    the inbox (which read the index for their journeys). ``exclusive``: the runtime's ``engine.exclusive``,
    which the rebuild holds per lifecycle journey (:func:`rebuild_lifecycle`)."""
    index = await rebuild_instance_index(backend)
    return index, await rebuild_lifecycle(backend, events, exclusive), await rebuild_inbox(backend, events)

"""The client lifecycle's rows: the statements written with its events, the reads of its views, its
metric samples, and the rollback requests that stop a running unit of work in any process.

Rows that project the event log are built here as statements and executed by the caller in the same
transaction as their event (``EventLog.append(..., also=...)``), so they never diverge from the log.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import RowMapping, Table, Text, and_, delete, func, insert, literal, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql import Executable

from checkpoints.encryption import Sealer
from checkpoints.schema.lifecycle_tables import (
    lifecycle_journey_states,
    lifecycle_metrics,
    lifecycle_rollback_history,
    lifecycle_rollback_requests,
    lifecycle_transitions,
    lifecycle_units_of_work,
    lifecycle_validation_results,
)
from checkpoints.schema.tables import UTCDateTime

# --- the next-state rule --------------------------------------------------------------------------

# Each stage's journey status, and the order of the active stages (a rollback forgets the stages past its
# target). The lifecycle machine (graphs.lifecycle.machine) commits with these, and the rebuild
# (checkpoints.rebuild) replays the transitions of the event log with them.
STAGE_STATUS = {
    "sandbox": "active",
    "pilot": "active",
    "production": "active",
    "rollback": "rollback",
    "completed": "completed",
    "cancelled": "cancelled",
}
STAGE_ORDER = {"sandbox": 0, "pilot": 1, "production": 2}
EXITS = ("promote_to_pilot", "promote_to_production", "mark_complete")  # events that complete their stage


def next_position(
    position: Mapping[str, Any], event: str, target: str, at: datetime, metadata: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The journey-state columns after ``event`` moved the journey to ``target`` at ``at``: the one rule for
    the live transition and for rebuilding the row from the log. ``position``: the columns before it
    (``current_stage``, ``completed_stages``, ``metadata``; empty before the start); ``metadata``: the
    metadata the event's request added."""
    source = position.get("current_stage")
    completed = list(position.get("completed_stages") or [])
    if event in EXITS and source not in completed:
        completed.append(str(source))
    elif event == "complete_rollback":
        completed = [stage for stage in completed if STAGE_ORDER[stage] < STAGE_ORDER[target]]
    return {
        "current_stage": target,
        "previous_stage": source,
        "status": STAGE_STATUS[target],
        "stage_started_at": at,
        "completed_stages": completed,
        "metadata": {**(position.get("metadata") or {}), **(metadata or {})},
        "updated_at": at,
    }


# --- a unit-of-work run's task records -----------------------------------------------------------

TASK_FIELDS = ("task_id", "name", "agent_id", "intent", "input_data", "max_retries")  # fixed by the spec


def task_row(base: Mapping[str, Any], entry: Mapping[str, Any]) -> dict[str, Any]:
    """A task as a unit-of-work run stores it: the seed's ``Task`` fields (``name, agent_id,
    input_data, status, output_data, retry_count, max_retries``), with its attempts and, when it
    failed or was undone, why and by what. ``base``: the :data:`TASK_FIELDS` its spec fixes (the
    ``uow.started`` event records them); ``entry``: where the run has it (status, attempts, the
    input it was given, its output). The one rule for the live row and for rebuilding it from the log."""
    attempts = int(entry.get("attempts") or 0)
    record = {
        **{k: base[k] for k in TASK_FIELDS},
        "input_data": entry.get("input", base["input_data"]),
        "status": entry["status"],
        "output_data": entry.get("output"),
        "retry_count": max(attempts - 1, 0),
        "attempts": attempts,
    }
    record.update({k: entry[k] for k in ("error", "error_type", "compensation") if k in entry})
    return record


# A later run of a unit undid what an earlier run's failed undo left: the earlier run's id, and the handler of each
# task undone (``undone``); its row's tasks change by :func:`tasks_undone`, its status stays ``failed``.
UNIT_UNDONE = "uow.undone"


def tasks_undone(records: Mapping[str, Mapping[str, Any]], undone: Mapping[str, str | None]) -> dict[str, Any]:
    """A run's task records once ``undone`` (task id → the handler that undid it, None for a task with nothing
    to undo) have been undone after the run ended (``uow.undone``: a later run of its unit undid what its own
    failed undo left). The one rule for the live row and for rebuilding it from the log."""
    return {
        task_id: {**record, "status": "rolled_back", "compensation": undone[task_id]} if task_id in undone else record
        for task_id, record in records.items()
    }


def run_totals(entries: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
    """A finished run's counts from its tasks' entries: tasks that ran, failed, and their attempts."""
    ran = [e for e in entries.values() if e["status"] != "pending"]
    return {
        "tasks_total": len(ran),
        "tasks_failed": sum(1 for e in ran if e["status"] == "failed"),
        "task_attempts": sum(int(e.get("attempts") or 0) for e in ran),
    }


# --- sealed columns -----------------------------------------------------------------------------

# The columns that keep what callers and agents gave (a journey's metadata, a rollback's reason and
# snapshot, a unit's task inputs and outputs, a failure's text): sealed at rest when the store has a key
# (checkpoints.encryption). Stages, statuses, ids and moments stay readable: the views filter on them.
SEALED_COLUMNS: dict[Table, tuple[str, ...]] = {
    lifecycle_journey_states: ("metadata",),
    lifecycle_units_of_work: ("tasks", "failure"),
    lifecycle_rollback_history: ("reason", "snapshot"),
    lifecycle_rollback_requests: ("reason",),
}


def sealed(table: Table, values: Mapping[str, Any], sealer: Sealer | None) -> dict[str, Any]:
    """``values`` of a row of ``table`` with its sealed columns sealed by ``sealer``; a sealed column given
    without a sealer is a programming error (it would be written in clear when the store has a key)."""
    row = dict(values)
    for name in SEALED_COLUMNS.get(table, ()):
        if row.get(name) is None:
            continue
        if sealer is None:
            raise ValueError(f"{table.name}.{name} is sealed at rest: write it with the store's sealer")
        is_text = isinstance(table.c[name].type, Text)
        row[name] = sealer.seal_text(row[name]) if is_text else sealer.seal(row[name])
    return row


def opened(table: Table, row: Mapping[Any, Any], sealer: Sealer) -> dict[str, Any]:
    """A row of ``table`` as read, with its sealed columns opened (values kept in clear read as they are)."""
    found = dict(row)
    for name in SEALED_COLUMNS.get(table, ()):
        if name in found:
            value = found[name]
            found[name] = sealer.open_text(value) if isinstance(table.c[name].type, Text) else sealer.open(value)
    return found


# --- statements written with an event -------------------------------------------------------------


def journey_started(
    journey_id: str, client_id: str, design_id: str, started_at: datetime, *, sealer: Sealer, **values: Any
) -> Executable:
    """The journey's state row, on its start (``values``: the columns every move sets)."""
    return insert(lifecycle_journey_states).values(
        journey_id=journey_id,
        client_id=client_id,
        design_id=design_id,
        started_at=started_at,
        **sealed(lifecycle_journey_states, values, sealer),
    )


def journey_moved(journey_id: str, *, sealer: Sealer | None = None, **values: Any) -> Executable:
    """The journey's state row after a move (``sealer``: needed when the move writes its metadata)."""
    states = lifecycle_journey_states
    return update(states).where(states.c.journey_id == journey_id).values(**sealed(states, values, sealer))


def transition_row(**values: Any) -> Executable:
    """One stage transition (journey_id, move, event, from_stage, to_stage, at, from_stage_seconds)."""
    return insert(lifecycle_transitions).values(**values)


def rollback_started(*, sealer: Sealer, **values: Any) -> Executable:
    """A rollback's history row, as it starts."""
    return insert(lifecycle_rollback_history).values(**sealed(lifecycle_rollback_history, values, sealer))


def rollbacks_given_up(journey_id: str, at: datetime) -> Executable:
    """The journey's rollbacks that had not ended, cancelled (the journey was terminated while one waited)."""
    table = lifecycle_rollback_history
    open_ones = table.c.status.not_in(("completed", "cancelled"))
    return update(table).where(table.c.journey_id == journey_id, open_ones).values(status="cancelled", completed_at=at)


def rollback_changed(rollback_id: str, **values: Any) -> Executable:
    """A rollback's history row as it validates, fails, completes or is cancelled (never its sealed columns)."""
    table = lifecycle_rollback_history
    return update(table).where(table.c.rollback_id == rollback_id).values(**sealed(table, values, None))


def units_rolled_back(journey_id: str, uow_ids: Sequence[str]) -> Executable:
    """The completed forward runs of ``uow_ids`` are undone by a validated rollback."""
    u = lifecycle_units_of_work
    return (
        update(u)
        .where(
            and_(
                u.c.journey_id == journey_id,
                u.c.uow_id.in_(list(uow_ids)),
                u.c.status == "completed",
                u.c.purpose != "rollback",
            )
        )
        .values(status="rolled_back")
    )


def unit_started(*, sealer: Sealer, **values: Any) -> Executable:
    """A unit-of-work run's row, as it starts."""
    return insert(lifecycle_units_of_work).values(**sealed(lifecycle_units_of_work, values, sealer))


def unit_finished(run_id: str, *, sealer: Sealer, **values: Any) -> Executable:
    """A unit-of-work run's row, as it ends."""
    u = lifecycle_units_of_work
    return update(u).where(u.c.run_id == run_id).values(**sealed(u, values, sealer))


def validation_row(**values: Any) -> Executable:
    """One criteria-gate validation (the columns of ``lifecycle_validation_results``)."""
    return insert(lifecycle_validation_results).values(**values)


def metric_rows(journey_id: str, values: Mapping[str, float], at: datetime) -> Executable:
    """Recorded metric values (written with their ``metric.recorded`` event)."""
    return insert(lifecycle_metrics).values(
        [{"journey_id": journey_id, "metric": k, "value": float(v), "recorded_at": at} for k, v in values.items()]
    )


# --- reads and rollback requests ------------------------------------------------------------------


class LifecycleStore:
    """Reads of the lifecycle tables for one journey at a time, and the rollback requests."""

    def __init__(self, engine: AsyncEngine, sealer: Sealer | None = None) -> None:
        self._engine = engine
        self._sealer = sealer or Sealer(None)  # opens the sealed columns (a sealed one read without a key raises)

    async def position(self, journey_id: str) -> tuple[str, str] | None:
        """(current stage, status) as last committed, or None for a journey that never started."""
        s = lifecycle_journey_states
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(select(s.c.current_stage, s.c.status).where(s.c.journey_id == journey_id))
            ).first()
        return None if row is None else (str(row.current_stage), str(row.status))

    async def stages(self, journey_ids: Sequence[str]) -> dict[str, str]:
        """Journey id → its current stage as last committed (journeys that never started are left out)."""
        s = lifecycle_journey_states
        found: dict[str, str] = {}
        ids = list(dict.fromkeys(journey_ids))
        async with self._engine.connect() as conn:
            for start in range(0, len(ids), 1000):
                query = select(s.c.journey_id, s.c.current_stage).where(s.c.journey_id.in_(ids[start : start + 1000]))
                found.update({row.journey_id: str(row.current_stage) for row in await conn.execute(query)})
        return found

    async def validations(self, journey_id: str) -> list[dict[str, Any]]:
        """Every validation of the journey, oldest first."""
        return await self._rows(lifecycle_validation_results, journey_id)

    async def rollbacks(self, journey_id: str) -> list[dict[str, Any]]:
        """Every rollback of the journey, oldest first."""
        return await self._rows(lifecycle_rollback_history, journey_id)

    async def rollback(self, journey_id: str, rollback_id: str) -> dict[str, Any] | None:
        r = lifecycle_rollback_history
        query = select(r).where(r.c.journey_id == journey_id, r.c.rollback_id == rollback_id)
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return None if row is None else self._without_id(r, row._mapping)

    async def units_of_work(self, journey_id: str) -> list[dict[str, Any]]:
        """Every unit-of-work run of the journey, oldest first."""
        return await self._rows(lifecycle_units_of_work, journey_id)

    async def unit_outputs(self, journey_id: str, uow_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Task outputs of each unit's latest completed run, by unit and task."""
        u = lifecycle_units_of_work
        query = (
            select(u.c.uow_id, u.c.tasks)
            .where(u.c.journey_id == journey_id, u.c.uow_id.in_(list(uow_ids)), u.c.status == "completed")
            .order_by(u.c.completed_at)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        tasks = [(r.uow_id, self._sealer.open(r.tasks)) for r in rows]
        # output_data: the seed's name; rows written before it carry output.
        return {uow: {t: v.get("output_data", v.get("output")) or {} for t, v in found.items()} for uow, found in tasks}

    async def latest_metrics(
        self, journey_id: str, metrics: Collection[str], at: datetime
    ) -> list[tuple[str, float, datetime]]:
        """(metric, value, recorded_at) of the last sample of each metric recorded at or before ``at``."""
        m = lifecycle_metrics
        ranked = (
            select(
                m.c.metric,
                m.c.value,
                m.c.recorded_at,
                func.row_number()
                .over(partition_by=m.c.metric, order_by=(m.c.recorded_at.desc(), m.c.id.desc()))
                .label("rank"),
            )
            .where(m.c.journey_id == journey_id, m.c.metric.in_(list(metrics)), m.c.recorded_at <= at)
            .subquery()
        )
        query = select(ranked.c.metric, ranked.c.value, ranked.c.recorded_at).where(ranked.c.rank == 1)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [(r.metric, float(r.value), r.recorded_at) for r in rows]

    async def metric_window(
        self, journey_id: str, metrics: Collection[str], since: datetime, until: datetime
    ) -> list[tuple[str, float, datetime]]:
        """(metric, value, recorded_at) of every sample with ``since < recorded_at <= until``, oldest first."""
        m = lifecycle_metrics
        query = (
            select(m.c.metric, m.c.value, m.c.recorded_at)
            .where(
                m.c.journey_id == journey_id,
                m.c.metric.in_(list(metrics)),
                m.c.recorded_at > since,
                m.c.recorded_at <= until,
            )
            .order_by(m.c.recorded_at, m.c.id)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [(r.metric, float(r.value), r.recorded_at) for r in rows]

    # Rollback requests. A rollback waits for the journey's lock, which a running unit of work holds;
    # its request stops that unit between waves, whichever process runs it. A request names the runs
    # that were running when it was made, so one left behind by a crashed caller stops no later run.

    async def request_rollback(self, journey_id: str, reason: str, at: datetime) -> None:
        """Ask every forward unit-of-work run of the journey running now to stop for a rollback."""
        u, r = lifecycle_units_of_work, lifecycle_rollback_requests
        sealed_reason = self._sealer.seal_text(reason)
        running = select(u.c.run_id, u.c.journey_id, literal(sealed_reason), literal(at, UTCDateTime())).where(
            u.c.journey_id == journey_id,
            u.c.status == "running",
            u.c.purpose != "rollback",
            u.c.run_id.not_in(select(r.c.run_id).where(r.c.journey_id == journey_id)),
        )
        statement = insert(r).from_select(["run_id", "journey_id", "reason", "requested_at"], running)
        try:
            async with self._engine.begin() as conn:
                await conn.execute(statement)
        except IntegrityError:
            pass  # another caller asked to stop the same run at the same moment: it is asked

    async def left_undone(self, journey_id: str, uow_id: str) -> list[dict[str, Any]]:
        """The runs of a unit that failed with tasks still done (their undo failed for good), oldest first: each
        run's id and its task records, which a new run of the unit undoes before its own tasks start."""
        u = lifecycle_units_of_work
        query = (
            select(u.c.run_id, u.c.tasks)
            .where(u.c.journey_id == journey_id, u.c.uow_id == uow_id, u.c.status == "failed")
            .order_by(u.c.id)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        runs = [{"run_id": row.run_id, "tasks": self._sealer.open(row.tasks)} for row in rows]
        return [run for run in runs if any(t["status"] == "completed" for t in run["tasks"].values())]

    async def rollback_reason(self, run_id: str) -> str | None:
        """Why the run was asked to stop for a rollback, or None."""
        r = lifecycle_rollback_requests
        async with self._engine.connect() as conn:
            reason = (await conn.execute(select(r.c.reason).where(r.c.run_id == run_id))).scalar()
        return None if reason is None else self._sealer.open_text(str(reason))

    async def rollback_requests(self, journey_id: str) -> dict[str, str]:
        """The journey's open rollback requests: reason by run id."""
        r = lifecycle_rollback_requests
        async with self._engine.connect() as conn:
            rows = (await conn.execute(select(r.c.run_id, r.c.reason).where(r.c.journey_id == journey_id))).all()
        return {row.run_id: str(self._sealer.open_text(row.reason)) for row in rows}

    async def clear_rollback_requests(self, journey_id: str) -> None:
        """Forget the journey's requests (its rollback holds the journey now: no unit of it runs)."""
        r = lifecycle_rollback_requests
        async with self._engine.begin() as conn:
            await conn.execute(delete(r).where(r.c.journey_id == journey_id))

    async def _rows(self, table: Any, journey_id: str) -> list[dict[str, Any]]:
        query = select(table).where(table.c.journey_id == journey_id).order_by(table.c.id)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [self._without_id(table, row._mapping) for row in rows]

    def _without_id(self, table: Table, row: RowMapping) -> dict[str, Any]:
        return {k: v for k, v in opened(table, row, self._sealer).items() if k != "id"}

"""Tables of the client lifecycle (SPEC L5): journey states, stage transitions, units of work,
validation results, rollback history and recorded metrics.

They are projections of the event log: every row is written in the same transaction as the event it
derives from (``EventLog.append(..., also=...)``), so they never diverge from it. Graph state stays
in the checkpointer; these are what must be queried across journeys.
"""

from __future__ import annotations

from sqlalchemy import Boolean, Column, Connection, Float, Index, Integer, String, Table, Text, UniqueConstraint

from checkpoints.schema.tables import EventId, JsonType, UTCDateTime, metadata

lifecycle_journey_states = Table(
    "lifecycle_journey_states",
    metadata,
    Column("journey_id", String(200), primary_key=True),
    Column("client_id", String(100), nullable=False),
    Column("design_id", String(100), nullable=False),
    Column("current_stage", String(20), nullable=False),
    Column("previous_stage", String(20), nullable=True),
    Column("status", String(20), nullable=False),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("stage_started_at", UTCDateTime(), nullable=False),
    Column("completed_stages", JsonType, nullable=False),
    Column("metadata", JsonType, nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Index("ix_lifecycle_states_stage", "status", "current_stage"),
    Index("ix_lifecycle_states_client", "client_id"),
)

lifecycle_transitions = Table(
    "lifecycle_transitions",
    metadata,
    Column("id", EventId, primary_key=True, autoincrement=True),
    Column("journey_id", String(200), nullable=False),
    Column("move", Integer, nullable=False),
    Column("event", String(40), nullable=False),
    Column("from_stage", String(20), nullable=True),
    Column("to_stage", String(20), nullable=False),
    Column("at", UTCDateTime(), nullable=False),
    # Time spent in from_stage, so stage durations are one GROUP BY.
    Column("from_stage_seconds", Float, nullable=True),
    UniqueConstraint("journey_id", "move", "event", name="uq_lifecycle_transitions_move"),
    Index("ix_lifecycle_transitions_to", "to_stage"),
)

lifecycle_units_of_work = Table(
    "lifecycle_units_of_work",
    metadata,
    # An autoincrement id orders rows written at the same (virtual) instant.
    Column("id", EventId, primary_key=True, autoincrement=True),
    Column("run_id", String(250), nullable=False, unique=True),
    Column("journey_id", String(200), nullable=False),
    Column("uow_id", String(100), nullable=False),
    Column("stage", String(20), nullable=False),
    Column("purpose", String(20), nullable=False),
    Column("status", String(20), nullable=False),
    Column("dependencies", JsonType, nullable=False),
    Column("tasks", JsonType, nullable=False),
    Column("tasks_total", Integer, nullable=False, default=0),
    Column("tasks_failed", Integer, nullable=False, default=0),
    Column("task_attempts", Integer, nullable=False, default=0),
    Column("failure", JsonType, nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("started_at", UTCDateTime(), nullable=True),
    Column("completed_at", UTCDateTime(), nullable=True),
    Index("ix_lifecycle_uow_journey", "journey_id", "uow_id"),
)

lifecycle_validation_results = Table(
    "lifecycle_validation_results",
    metadata,
    Column("id", EventId, primary_key=True, autoincrement=True),
    Column("validation_id", String(250), nullable=False, unique=True),
    Column("journey_id", String(200), nullable=False),
    Column("kind", String(20), nullable=False),
    Column("event", String(40), nullable=False),
    Column("from_stage", String(20), nullable=True),
    Column("to_stage", String(20), nullable=True),
    Column("passed", Boolean, nullable=False),
    Column("checks", JsonType, nullable=False),
    Column("summary", Text, nullable=False),
    Column("evaluation_ms", Float, nullable=False),
    Column("evaluated_at", UTCDateTime(), nullable=False),
    Index("ix_lifecycle_validations_journey", "journey_id", "evaluated_at"),
)

lifecycle_rollback_history = Table(
    "lifecycle_rollback_history",
    metadata,
    Column("id", EventId, primary_key=True, autoincrement=True),
    Column("rollback_id", String(250), nullable=False, unique=True),
    Column("journey_id", String(200), nullable=False),
    Column("trigger", String(40), nullable=False),
    Column("reason", Text, nullable=False),
    Column("automatic", Boolean, nullable=False),
    Column("from_stage", String(20), nullable=False),
    Column("to_stage", String(20), nullable=False),
    Column("status", String(20), nullable=False),
    Column("plan", JsonType, nullable=False),
    Column("snapshot", JsonType, nullable=True),
    Column("run_ids", JsonType, nullable=False),
    Column("validation_id", String(250), nullable=True),
    Column("initiated_at", UTCDateTime(), nullable=False),
    Column("validated_at", UTCDateTime(), nullable=True),
    Column("completed_at", UTCDateTime(), nullable=True),
    Index("ix_lifecycle_rollbacks_journey", "journey_id", "initiated_at"),
)

lifecycle_metrics = Table(
    "lifecycle_metrics",
    metadata,
    Column("id", EventId, primary_key=True, autoincrement=True),
    Column("journey_id", String(200), nullable=False),
    Column("metric", String(100), nullable=False),
    Column("value", Float, nullable=False),
    Column("recorded_at", UTCDateTime(), nullable=False),
    Index("ix_lifecycle_metrics_series", "journey_id", "metric", "recorded_at"),
)

# Rollbacks asked for while a unit of work runs, one row per run to stop: the unit reads its run's row
# between waves, in whichever process runs it. Created by migration 9 (not part of LIFECYCLE_TABLES,
# which migration 2 creates).
lifecycle_rollback_requests = Table(
    "lifecycle_rollback_requests",
    metadata,
    Column("run_id", String(250), primary_key=True),
    Column("journey_id", String(200), nullable=False),
    Column("reason", Text, nullable=False),
    Column("requested_at", UTCDateTime(), nullable=False),
    Index("ix_lifecycle_rollback_requests_journey", "journey_id"),
)

LIFECYCLE_TABLES = (
    lifecycle_journey_states,
    lifecycle_transitions,
    lifecycle_units_of_work,
    lifecycle_validation_results,
    lifecycle_rollback_history,
    lifecycle_metrics,
)


def create_lifecycle_tables(conn: Connection) -> None:
    for table in LIFECYCLE_TABLES:
        table.create(conn, checkfirst=True)

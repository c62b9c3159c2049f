"""Our own tables. Graph state lives in the official LangGraph checkpointer; these hold what must be
queried across journeys: designs, the instance index and the append-only event log."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeDecorator

from checkpoints.ownership import TENANT_WIDTH, owner_columns

metadata = MetaData()


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on every dialect and every read path: SQLite hands back naive values, and
    PostgreSQL values in the session's time zone; both come back as UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        # SQLite's DATETIME keeps the wall clock and drops the offset: a moment given at +05:00 came back
        # 5 hours late as UTC. Stored as UTC, it comes back the same moment.
        return value.astimezone(UTC) if value is not None and value.tzinfo is not None else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# JSONB on Postgres (compact, indexable), plain JSON text elsewhere.
JsonType = JSON().with_variant(JSONB(), "postgresql")
# The event log's payloads: JSON text on both dialects (migration 16). Rows are only ever read whole, never
# queried inside, and written once per step, so JSONB's binary form (its per-key offsets, about a third larger
# than the compact text of a step's small payload) bought nothing but bytes.
EventPayloadType = JSON()
# SQLite only auto-increments INTEGER PRIMARY KEY.
EventId = BigInteger().with_variant(Integer(), "sqlite")
# A journey instance's number in the event log (journey_events.instance_no).
InstanceNo = BigInteger().with_variant(Integer(), "sqlite")

schema_migrations = Table(
    "journeys_schema_migrations",
    metadata,
    Column("version", Integer, primary_key=True),
    Column("name", String(200), nullable=False),
    Column("applied_at", UTCDateTime(), nullable=False),
)

journey_designs = Table(
    "journey_designs",
    metadata,
    Column("journey_id", String(100), primary_key=True),
    Column("pattern", String(30), nullable=False),
    Column("journey_type", String(100), nullable=False),
    Column("spec", JsonType, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("tenant", String(100), nullable=True),  # whose design it is (migration 32; None: shared)
    Index("ix_journey_designs_type", "pattern", "journey_type"),  # migration 29
)

journey_instances = Table(
    "journey_instances",
    metadata,
    Column("instance_id", String(200), primary_key=True),
    Column("journey_id", String(100), nullable=False),
    Column("pattern", String(30), nullable=False),
    Column("user_id", String(200), nullable=False),
    Column("status", String(30), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    *owner_columns(),  # who started it (migration 12): see checkpoints.ownership
    # What holds its continuation back (migration 31): the agents no process serving it has; NULL: nothing.
    Column("held", JsonType, nullable=True),
    Index("ix_journey_instances_pattern_status", "pattern", "status"),
    Index("ix_journey_instances_owner", "tenant", "owner"),
    Index("ix_journey_instances_created", "created_at", "instance_id"),  # listed newest first (migration 29)
    # Checkpoint retention's pass reads the instances finished since its mark in this order (migration 20). On
    # PostgreSQL a BRIN index: a fraction of a byte per journey where a B-tree costs 20-36 (rows lie roughly in
    # the order they last changed), for a pass that reads a few more pages (2 ms, not 0.14, at 200,000 instances).
    Index("ix_journey_instances_updated", "updated_at", postgresql_using="brin"),
)

# Keyed by (instance_no, seq): every step writes a row, and each index is paid per step, so an instance's
# events name it by a number (8 bytes, where its id took 30-40: migration 21). Its first event (seq 1) alone
# holds the id, and gives the number (checkpoints.events); the log stays whole by itself. The fixed-width
# columns come first (PostgreSQL pads each to its alignment).
EVENTS_PRIMARY_KEY = "pk_journey_events"
INSTANCE_NO_SEQUENCE = "journey_events_instance_no"  # PostgreSQL's source of new instance numbers
journey_events = Table(
    "journey_events",
    metadata,
    Column("instance_no", InstanceNo, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("seq", Integer, nullable=False, autoincrement=False),
    Column("type", String(60), nullable=False),
    Column("step", String(100), nullable=True),
    Column("payload", EventPayloadType, nullable=False),
    # Unique per instance (migration 20), stored without the instance's id it starts with (checkpoints.events).
    Column("idempotency_key", Text, nullable=True),
    Column("instance_id", String(200), nullable=True),  # on the first event only
    PrimaryKeyConstraint("instance_no", "seq", name=EVENTS_PRIMARY_KEY),
    # An instance's number, found from its id; and one first event per instance. (On PostgreSQL the log's
    # B-trees, its primary key too, are filled whole: fillfactor 100, migration 21; its rows never change.)
    Index(
        "uq_journey_events_instance",
        "instance_id",
        unique=True,
        postgresql_where=text("seq = 1"),
        sqlite_where=text("seq = 1"),
        postgresql_with={"fillfactor": 100},
    ),
    Index(
        "uq_journey_events_key",
        "instance_no",
        "idempotency_key",
        unique=True,
        postgresql_where=text("idempotency_key IS NOT NULL"),
        sqlite_where=text("idempotency_key IS NOT NULL"),
        postgresql_with={"fillfactor": 100},
    ),
)

# How far checkpoint retention has gone (migration 17): one row per mark, "pruned" and "deleted", each the
# latest ``updated_at`` of the finished instances done so far (checkpoints.retention). Two rows in all, so
# retention costs no bytes per journey.
journey_retention = Table(
    "journey_retention",
    metadata,
    Column("mark", String(20), primary_key=True),
    Column("upto", UTCDateTime(), nullable=True),
)

# The encryption key's proof (migration 24): a value sealed with the key the database was first encrypted
# with, so a process given another key, or none, is refused as it opens (checkpoints.encryption.check_key).
encryption_canary = Table(
    "journeys_encryption",
    metadata,
    Column("name", String(20), primary_key=True),
    Column("sealed", Text, nullable=False),
    Column("written_at", UTCDateTime(), nullable=False),
)

# --- processes (BPMN-style): deployments, rollouts, and the durable waits a process instance parks on.
# Waits, timers, inbox tasks, subscriptions and buffered messages are operational rows (claimed by atomic
# UPDATE … WHERE status=…), so that two workers never fire or complete the same thing.

process_deployments = Table(
    "process_deployments",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("design_id", String(100), nullable=False, unique=True),
    Column("digest", String(64), nullable=False),
    Column("deployed_at", UTCDateTime(), nullable=False),
    Column("tenant", String(100), nullable=True),  # whose process name this is (migration 26; None: default)
)

process_rollouts = Table(
    "process_rollouts",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("entries", JsonType, nullable=False),  # [{"version": 2, "weight": 10.0, "variant": "B" | None}, …]
    Column("updated_at", UTCDateTime(), nullable=False),
)

process_waits = Table(
    "process_waits",
    metadata,
    Column("wait_id", String(300), primary_key=True),
    Column("instance_id", String(200), nullable=False),
    Column("element", String(100), nullable=False),
    Column("kind", String(20), nullable=False),  # user_task | timer | message | race
    Column("status", String(20), nullable=False),  # waiting | resolved | done | cancelled
    Column("resolution", JsonType, nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("resolved_at", UTCDateTime(), nullable=True),
    # The interrupt the thread parked on for this wait (migration 23), once its wait node has run.
    Column("interrupt_id", String(64), nullable=True),
    Index("ix_process_waits_instance", "instance_id", "status"),
    Index("ix_process_waits_status", "status", "resolved_at"),
)

process_timers = Table(
    "process_timers",
    metadata,
    Column("timer_id", String(300), primary_key=True),
    Column("instance_id", String(200), nullable=True),  # None: a start timer (it creates instances)
    Column("wait_id", String(300), nullable=True),
    Column("element", String(100), nullable=False),
    Column("purpose", String(20), nullable=False),  # catch | boundary | reminder | sla | start
    Column("definition", JsonType, nullable=False),
    Column("due_at", UTCDateTime(), nullable=False),
    Column("origin", UTCDateTime(), nullable=False),  # when it was armed: cycles count from here
    Column("ticks", Integer, nullable=False),
    Column("status", String(20), nullable=False),  # scheduled | firing | fired | cancelled | failed (an incident)
    Column("data", JsonType, nullable=False),
    Column("claimed_by", String(200), nullable=True),
    Column("claimed_at", UTCDateTime(), nullable=True),
    Column("fired_at", UTCDateTime(), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Index("ix_process_timers_due", "status", "due_at"),
    Index("ix_process_timers_wait", "wait_id"),
    Index("ix_process_timers_instance", "instance_id"),
)

user_tasks = Table(
    "process_user_tasks",
    metadata,
    Column("task_id", String(300), primary_key=True),  # the wait id
    Column("instance_id", String(200), nullable=False),
    Column("element", String(100), nullable=False),
    Column("title", String(300), nullable=False),
    Column("assignee", String(200), nullable=True),
    Column("candidate_groups", JsonType, nullable=False),
    Column("claimed_by", String(200), nullable=True),
    Column("status", String(20), nullable=False),  # open | completed | cancelled
    Column("response_schema", JsonType, nullable=True),
    Column("sla_due_at", UTCDateTime(), nullable=True),
    Column("escalated_at", UTCDateTime(), nullable=True),
    Column("escalation", String(20), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("completed_at", UTCDateTime(), nullable=True),
    Column("completed_by", String(200), nullable=True),
    Column("result", JsonType, nullable=True),
    Index("ix_process_user_tasks_assignee", "status", "assignee"),
    Index("ix_process_user_tasks_instance", "instance_id"),
)

user_task_groups = Table(
    "process_user_task_groups",
    metadata,
    Column("task_id", String(300), primary_key=True),
    Column("group_name", String(200), primary_key=True),
    Index("ix_process_user_task_groups_group", "group_name"),
)

process_subscriptions = Table(
    "process_subscriptions",
    metadata,
    Column("subscription_id", String(300), primary_key=True),
    Column("wait_id", String(300), nullable=False),
    Column("instance_id", String(200), nullable=False),
    Column("element", String(100), nullable=False),
    Column("message_name", String(200), nullable=False),
    Column("correlation_key", String(300), nullable=False),
    Column("status", String(20), nullable=False),  # waiting | consumed | cancelled
    Column("created_at", UTCDateTime(), nullable=False),
    Index("ix_process_subscriptions_match", "message_name", "correlation_key", "status"),
    Index("ix_process_subscriptions_wait", "wait_id"),
)

process_messages = Table(
    "process_messages",
    metadata,
    Column("message_id", String(100), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("correlation_key", String(300), nullable=False),
    Column("payload", JsonType, nullable=False),
    Column("status", String(20), nullable=False),  # buffered | consumed | expired
    Column("received_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
    Column("consumed_by", String(300), nullable=True),
    # The tenant it was sent for (migration 25): only that tenant's waits take it (EVERY_TENANT: any tenant's).
    Column("tenant", String(TENANT_WIDTH), primary_key=True),
    Index("ix_process_messages_match", "name", "correlation_key", "status"),
)

# Messages sent with the sender's message id (``send_message(message_id=...)``): what each was and, once its
# send is done, what it answered, so that a repeat within the window answers the same and changes nothing.
process_message_ids = Table(
    "process_message_ids",
    metadata,
    Column("message_id", String(100), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("correlation_key", String(300), nullable=False),
    Column("payload", JsonType, nullable=False),
    Column("outcome", JsonType, nullable=True),  # None while its send is under way
    Column("claimed_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
    Column("tenant", String(TENANT_WIDTH), primary_key=True),  # ids are unique per tenant (migration 25)
)

# Message start events by message name, written with their deployment, so that send_message finds the
# processes a message starts by index instead of reading every deployed definition.
process_message_starts = Table(
    "process_message_starts",
    metadata,
    Column("message_name", String(200), primary_key=True),
    Column("name", String(100), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("start_id", String(100), primary_key=True),
)

PROCESS_TABLES = (
    process_deployments,
    process_rollouts,
    process_waits,
    process_timers,
    user_tasks,
    user_task_groups,
    process_subscriptions,
    process_messages,
    process_message_ids,
)

# --- the HTTP server (Agent Server API subset): threads bound to journey instances, and runs on them.
# A thread is bound to the journey instance its first run starts; runs are rows a runner (in-process or
# a procrastinate worker) claims by atomic UPDATE, one at a time per thread.

server_threads = Table(
    "server_threads",
    metadata,
    Column("thread_id", String(200), primary_key=True),
    Column("assistant_id", String(100), nullable=True),
    Column("instance_id", String(200), nullable=True),  # the journey instance (checkpoint thread) it drives
    Column("owner", String(200), nullable=True),
    Column("metadata", JsonType, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("tenant", String(100), nullable=True),  # with owner, who may see it (migration 12)
    Column("shared_group", String(200), nullable=True),
    # How many runs were ever created on it: the next run's ordinal (migration 27).
    Column("runs_created", Integer, nullable=False, server_default="0"),
    # Its time-to-live (migration 29), the Agent Server's thread TTL: what happens when it expires ("delete"), after
    # how many seconds without activity, and the earliest it can expire (the TTL sweep's index; activity that moves
    # it later, a run, is counted when the sweep finds it due: see server.thread_ends).
    Column("ttl_strategy", String(20), nullable=True),
    Column("ttl_seconds", BigInteger, nullable=True),
    Column("expires_at", UTCDateTime(), nullable=True),
    Index("ix_server_threads_instance", "instance_id"),
    Index("ix_server_threads_owner", "tenant", "owner"),
    Index("ix_server_threads_expires", "expires_at"),
)

server_runs = Table(
    "server_runs",
    metadata,
    Column("run_id", String(64), primary_key=True),
    Column("thread_id", String(200), nullable=False),
    Column("assistant_id", String(100), nullable=False),
    Column("status", String(20), nullable=False),  # pending | running | success | error | interrupted
    Column("kind", String(20), nullable=False),  # start | resume | continue
    Column("input", JsonType, nullable=True),
    Column("command", JsonType, nullable=True),
    Column("stream_modes", JsonType, nullable=False),
    Column("multitask_strategy", String(20), nullable=False),
    Column("metadata", JsonType, nullable=False),
    Column("principal", String(200), nullable=True),
    Column("base_checkpoint", String(100), nullable=True),  # the checkpoint a resume applies to
    Column("attempts", Integer, nullable=False),
    Column("error", JsonType, nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    # The thread's values when the run finished, written by its executor: waiting clients read this one
    # row instead of rebuilding the state from checkpoints and the event log (migration 7).
    Column("output", JsonType, nullable=True),
    Column("job_id", BigInteger, nullable=True),  # distributed mode: its procrastinate job (to abort it)
    # Set when a cancel reached a run already executing: a retry of its job (its worker died) then does not
    # run it again but ends it interrupted (migration 8).
    Column("cancel_requested_at", UTCDateTime(), nullable=True),
    Column("durability", String(10), nullable=True),  # what its client asked for: sync | async | exit
    # With principal (its owner), who may see it; what the journey it starts is owned by (migration 12).
    Column("tenant", String(100), nullable=True),
    Column("shared_group", String(200), nullable=True),
    # The run's Agent Server options (migration 15): the graph its assistant runs, config, context,
    # interrupt_before/after, webhook, checkpoint_id, on_completion, when it may start.
    Column("options", JsonType, nullable=True),
    # The run's place among all the runs ever created on its thread (1, 2, …), fixed at creation and never
    # reused: the v3 thread stream numbers its events from it, so a deleted run shifts no other's (migration 27).
    Column("ordinal", Integer, nullable=False, server_default="0"),
    Index("ix_server_runs_thread_status", "thread_id", "status"),
)

server_run_events = Table(
    "server_run_events",
    metadata,
    Column("run_id", String(64), primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("event", String(40), nullable=False),
    Column("data", JsonType, nullable=True),
)

# Assistants (migration 15): a graph with its config, context and metadata, versioned. The built-in patterns
# are system assistants and have no rows; these are the ones callers create.
server_assistants = Table(
    "server_assistants",
    metadata,
    Column("assistant_id", String(200), primary_key=True),
    Column("graph_id", String(100), nullable=False),
    Column("name", String(200), nullable=False),
    Column("description", Text, nullable=True),
    Column("config", JsonType, nullable=False),
    Column("context", JsonType, nullable=False),
    Column("metadata", JsonType, nullable=False),
    Column("version", Integer, nullable=False),  # the version in use (set_latest may go back)
    Column("owner", String(200), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("tenant", String(100), nullable=True),  # with owner, who may see it (migration 19)
    Column("shared_group", String(200), nullable=True),
    # The name case-folded (str.casefold): what a search by name compares, so it ignores case for every
    # script on every backend (SQLite's lower() folds ASCII only, PostgreSQL's follows the database's locale).
    Column("name_key", Text, nullable=False, server_default=""),  # migration 28
    Index("ix_server_assistants_graph", "graph_id"),
    Index("ix_server_assistants_owner", "tenant", "owner"),
)

server_assistant_versions = Table(
    "server_assistant_versions",
    metadata,
    Column("assistant_id", String(200), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("graph_id", String(100), nullable=False),
    Column("name", String(200), nullable=False),
    Column("description", Text, nullable=True),
    Column("config", JsonType, nullable=False),
    Column("context", JsonType, nullable=False),
    Column("metadata", JsonType, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
)

# A cron: runs of an assistant on a schedule (migration 14). Its firings are a process timer of purpose
# "cron" (``timer_id``, re-armed as the schedule changes), so they are claimed, never early and caught
# up after downtime exactly as the process timers are.
server_crons = Table(
    "server_crons",
    metadata,
    Column("cron_id", String(64), primary_key=True),
    Column("assistant_id", String(100), nullable=False),
    Column("thread_id", String(200), nullable=True),  # None: every firing runs on a new thread
    Column("schedule", String(200), nullable=False),
    Column("timezone", String(64), nullable=False),
    Column("end_time", UTCDateTime(), nullable=True),
    Column("payload", JsonType, nullable=False),  # what each firing's run gets: input, metadata, config…
    Column("metadata", JsonType, nullable=False),
    Column("enabled", Integer, nullable=False),  # 1 or 0 (one spelling on both dialects)
    Column("on_run_completed", String(16), nullable=True),
    Column("user_id", String(200), nullable=True),
    Column("timer_id", String(250), nullable=True),  # the armed timer; None while disabled
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("owner", String(200), nullable=True),  # who may see it (migration 19; checkpoints.ownership)
    Column("tenant", String(100), nullable=True),
    Column("shared_group", String(200), nullable=True),
    Index("ix_server_crons_assistant", "assistant_id"),
    Index("ix_server_crons_thread", "thread_id"),
    Index("ix_server_crons_owner", "tenant", "owner"),
)

SERVER_TABLES = (
    server_threads,
    server_runs,
    server_run_events,
    server_assistants,
    server_assistant_versions,
    server_crons,
)

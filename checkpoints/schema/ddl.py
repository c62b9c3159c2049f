"""The DDL of each schema migration, frozen as it was written: never edit a version once released.

Generated once from the table definitions of the day each migration was written (SQLAlchemy's
``CreateTable`` / ``CreateIndex`` for SQLite and PostgreSQL), then kept as text, so a later change to
:mod:`checkpoints.schema.tables` can never change what an old migration does. A change to a table is a new
migration here, and ``tests/test_migrations.py`` checks that the migrations, applied in order, give
exactly the tables :mod:`checkpoints.schema.tables` defines.
"""

from __future__ import annotations

Dialect = str  # "sqlite" | "postgresql"
DDL = dict[Dialect, tuple[str, ...]]

SCHEMA_MIGRATIONS: DDL = {
    "sqlite": (
        """\
CREATE TABLE IF NOT EXISTS journeys_schema_migrations (
    version INTEGER NOT NULL,
    name VARCHAR(200) NOT NULL,
    applied_at DATETIME NOT NULL,
    PRIMARY KEY (version)
)
""",
    ),
    "postgresql": (
        """\
CREATE TABLE IF NOT EXISTS journeys_schema_migrations (
    version SERIAL NOT NULL,
    name VARCHAR(200) NOT NULL,
    applied_at TIMESTAMP WITH TIME ZONE NOT NULL,
    PRIMARY KEY (version)
)
""",
    ),
}
V1_CORE: DDL = {
    "sqlite": (
        """\
CREATE TABLE journey_designs (
    journey_id VARCHAR(100) NOT NULL,
    pattern VARCHAR(30) NOT NULL,
    journey_type VARCHAR(100) NOT NULL,
    spec JSON NOT NULL,
    created_at DATETIME NOT NULL,
    PRIMARY KEY (journey_id)
)
""",
        """\
CREATE TABLE journey_instances (
    instance_id VARCHAR(200) NOT NULL,
    journey_id VARCHAR(100) NOT NULL,
    pattern VARCHAR(30) NOT NULL,
    user_id VARCHAR(200) NOT NULL,
    status VARCHAR(30) NOT NULL,
    created_at DATETIME NOT NULL,
    updated_at DATETIME NOT NULL,
    PRIMARY KEY (instance_id)
)
""",
        """\
CREATE INDEX ix_journey_instances_journey_user ON journey_instances (journey_id, user_id)
""",
        """\
CREATE INDEX ix_journey_instances_pattern_status ON journey_instances (pattern, status)
""",
        """\
CREATE TABLE journey_events (
    id INTEGER NOT NULL,
    instance_id VARCHAR(200) NOT NULL,
    seq INTEGER NOT NULL,
    type VARCHAR(60) NOT NULL,
    step VARCHAR(100),
    payload JSON NOT NULL,
    idempotency_key TEXT,
    created_at DATETIME NOT NULL,
    PRIMARY KEY (id),
    CONSTRAINT uq_journey_events_instance_seq UNIQUE (instance_id, seq),
    UNIQUE (idempotency_key)
)
""",
        """\
CREATE INDEX ix_journey_events_type ON journey_events (type)
""",
    ),
    "postgresql": (
        """\
CREATE TABLE journey_designs (
    journey_id VARCHAR(100) NOT NULL,
    pattern VARCHAR(30) NOT NULL,
    journey_type VARCHAR(100) NOT NULL,
    spec JSONB NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL,
    PRIMARY KEY (journey_id)
)
""",
        """\
CREATE TABLE journey_instances (
    instance_id VARCHAR(200) NOT NULL,
    journey_id VARCHAR(100) NOT NULL,
    pattern VARCHAR(30) NOT NULL,
    user_id VARCHAR(200) NOT NULL,
    status VARCHAR(30) NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL,
    updated_at TIMESTAMP WITH TIME ZONE NOT NULL,
    PRIMARY KEY (instance_id)
)
""",
        """\
CREATE INDEX ix_journey_instances_journey_user ON journey_instances (journey_id, user_id)
""",
        """\
CREATE INDEX ix_journey_instances_pattern_status ON journey_instances (pattern, status)
""",
        """\
CREATE TABLE journey_events (
    id BIGSERIAL NOT NULL,
    instance_id VARCHAR(200) NOT NULL,
    seq INTEGER NOT NULL,
    type VARCHAR(60) NOT NULL,
    step VARCHAR(100),
    payload JSONB NOT NULL,
    idempotency_key TEXT,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL,
    PRIMARY KEY (id),
    CONSTRAINT uq_journey_events_instance_seq UNIQUE (instance_id, seq),
    UNIQUE (idempotency_key)
)
""",
        """\
CREATE INDEX ix_journey_events_type ON journey_events (type)
""",
    ),
}
V2_LIFECYCLE: DDL = {
    "sqlite": (
        """\
CREATE TABLE lifecycle_journey_states (
    journey_id VARCHAR(200) NOT NULL,
    client_id VARCHAR(100) NOT NULL,
    design_id VARCHAR(100) NOT NULL,
    current_stage VARCHAR(20) NOT NULL,
    previous_stage VARCHAR(20),
    status VARCHAR(20) NOT NULL,
    started_at DATETIME NOT NULL,
    stage_started_at DATETIME NOT NULL,
    completed_stages JSON NOT NULL,
    metadata JSON NOT NULL,
    updated_at DATETIME NOT NULL,
    PRIMARY KEY (journey_id)
)
""",
        """\
CREATE INDEX ix_lifecycle_states_client ON lifecycle_journey_states (client_id)
""",
        """\
CREATE INDEX ix_lifecycle_states_stage ON lifecycle_journey_states (status, current_stage)
""",
        """\
CREATE TABLE lifecycle_transitions (
    id INTEGER NOT NULL,
    journey_id VARCHAR(200) NOT NULL,
    move INTEGER NOT NULL,
    event VARCHAR(40) NOT NULL,
    from_stage VARCHAR(20),
    to_stage VARCHAR(20) NOT NULL,
    at DATETIME NOT NULL,
    from_stage_seconds FLOAT,
    PRIMARY KEY (id),
    CONSTRAINT uq_lifecycle_transitions_move UNIQUE (journey_id, move, event)
)
""",
        """\
CREATE INDEX ix_lifecycle_transitions_to ON lifecycle_transitions (to_stage)
""",
        """\
CREATE TABLE lifecycle_units_of_work (
    id INTEGER NOT NULL,
    run_id VARCHAR(250) NOT NULL,
    journey_id VARCHAR(200) NOT NULL,
    uow_id VARCHAR(100) NOT NULL,
    stage VARCHAR(20) NOT NULL,
    purpose VARCHAR(20) NOT NULL,
    status VARCHAR(20) NOT NULL,
    dependencies JSON NOT NULL,
    tasks JSON NOT NULL,
    tasks_total INTEGER NOT NULL,
    tasks_failed INTEGER NOT NULL,
    task_attempts INTEGER NOT NULL,
    failure JSON,
    created_at DATETIME NOT NULL,
    started_at DATETIME,
    completed_at DATETIME,
    PRIMARY KEY (id),
    UNIQUE (run_id)
)
""",
        """\
CREATE INDEX ix_lifecycle_uow_journey ON lifecycle_units_of_work (journey_id, uow_id)
""",
        """\
CREATE TABLE lifecycle_validation_results (
    id INTEGER NOT NULL,
    validation_id VARCHAR(250) NOT NULL,
    journey_id VARCHAR(200) NOT NULL,
    kind VARCHAR(20) NOT NULL,
    event VARCHAR(40) NOT NULL,
    from_stage VARCHAR(20),
    to_stage VARCHAR(20),
    passed BOOLEAN NOT NULL,
    checks JSON NOT NULL,
    summary TEXT NOT NULL,
    evaluation_ms FLOAT NOT NULL,
    evaluated_at DATETIME NOT NULL,
    PRIMARY KEY (id),
    UNIQUE (validation_id)
)
""",
        """\
CREATE INDEX ix_lifecycle_validations_journey ON lifecycle_validation_results (journey_id, evaluated_at)
""",
        """\
CREATE TABLE lifecycle_rollback_history (
    id INTEGER NOT NULL,
    rollback_id VARCHAR(250) NOT NULL,
    journey_id VARCHAR(200) NOT NULL,
    "trigger" VARCHAR(40) NOT NULL,
    reason TEXT NOT NULL,
    automatic BOOLEAN NOT NULL,
    from_stage VARCHAR(20) NOT NULL,
    to_stage VARCHAR(20) NOT NULL,
    status VARCHAR(20) NOT NULL,
    "plan" JSON NOT NULL,
    snapshot JSON,
    run_ids JSON NOT NULL,
    validation_id VARCHAR(250),
    initiated_at DATETIME NOT NULL,
    validated_at DATETIME,
    completed_at DATETIME,
    PRIMARY KEY (id),
    UNIQUE (rollback_id)
)
""",
        """\
CREATE INDEX ix_lifecycle_rollbacks_journey ON lifecycle_rollback_history (journey_id, initiated_at)
""",
        """\
CREATE TABLE lifecycle_metrics (
    id INTEGER NOT NULL,
    journey_id VARCHAR(200) NOT NULL,
    metric VARCHAR(100) NOT NULL,
    value FLOAT NOT NULL,
    recorded_at DATETIME NOT NULL,
    PRIMARY KEY (id)
)
""",
        """\
CREATE INDEX ix_lifecycle_metrics_series ON lifecycle_metrics (journey_id, metric, recorded_at)
""",
    ),
    "postgresql": (
        """\
CREATE TABLE lifecycle_journey_states (
    journey_id VARCHAR(200) NOT NULL,
    client_id VARCHAR(100) NOT NULL,
    design_id VARCHAR(100) NOT NULL,
    current_stage VARCHAR(20) NOT NULL,
    previous_stage VARCHAR(20),
    status VARCHAR(20) NOT NULL,
    started_at TIMESTAMP WITH TIME ZONE NOT NULL,
    stage_started_at TIMESTAMP WITH TIME ZONE NOT NULL,
    completed_stages JSONB NOT NULL,
    metadata JSONB NOT NULL,
    updated_at TIMESTAMP WITH TIME ZONE NOT NULL,
    PRIMARY KEY (journey_id)
)
""",
        """\
CREATE INDEX ix_lifecycle_states_client ON lifecycle_journey_states (client_id)
""",
        """\
CREATE INDEX ix_lifecycle_states_stage ON lifecycle_journey_states (status, current_stage)
""",
        """\
CREATE TABLE lifecycle_transitions (
    id BIGSERIAL NOT NULL,
    journey_id VARCHAR(200) NOT NULL,
    move INTEGER NOT NULL,
    event VARCHAR(40) NOT NULL,
    from_stage VARCHAR(20),
    to_stage VARCHAR(20) NOT NULL,
    at TIMESTAMP WITH TIME ZONE NOT NULL,
    from_stage_seconds FLOAT,
    PRIMARY KEY (id),
    CONSTRAINT uq_lifecycle_transitions_move UNIQUE (journey_id, move, event)
)
""",
        """\
CREATE INDEX ix_lifecycle_transitions_to ON lifecycle_transitions (to_stage)
""",
        """\
CREATE TABLE lifecycle_units_of_work (
    id BIGSERIAL NOT NULL,
    run_id VARCHAR(250) NOT NULL,
    journey_id VARCHAR(200) NOT NULL,
    uow_id VARCHAR(100) NOT NULL,
    stage VARCHAR(20) NOT NULL,
    purpose VARCHAR(20) NOT NULL,
    status VARCHAR(20) NOT NULL,
    dependencies JSONB NOT NULL,
    tasks JSONB NOT NULL,
    tasks_total INTEGER NOT NULL,
    tasks_failed INTEGER NOT NULL,
    task_attempts INTEGER NOT NULL,
    failure JSONB,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL,
    started_at TIMESTAMP WITH TIME ZONE,
    completed_at TIMESTAMP WITH TIME ZONE,
    PRIMARY KEY (id),
    UNIQUE (run_id)
)
""",
        """\
CREATE INDEX ix_lifecycle_uow_journey ON lifecycle_units_of_work (journey_id, uow_id)
""",
        """\
CREATE TABLE lifecycle_validation_results (
    id BIGSERIAL NOT NULL,
    validation_id VARCHAR(250) NOT NULL,
    journey_id VARCHAR(200) NOT NULL,
    kind VARCHAR(20) NOT NULL,
    event VARCHAR(40) NOT NULL,
    from_stage VARCHAR(20),
    to_stage VARCHAR(20),
    passed BOOLEAN NOT NULL,
    checks JSONB NOT NULL,
    summary TEXT NOT NULL,
    evaluation_ms FLOAT NOT NULL,
    evaluated_at TIMESTAMP WITH TIME ZONE NOT NULL,
    PRIMARY KEY (id),
    UNIQUE (validation_id)
)
""",
        """\
CREATE INDEX ix_lifecycle_validations_journey ON lifecycle_validation_results (journey_id, evaluated_at)
""",
        """\
CREATE TABLE lifecycle_rollback_history (
    id BIGSERIAL NOT NULL,
    rollback_id VARCHAR(250) NOT NULL,
    journey_id VARCHAR(200) NOT NULL,
    trigger VARCHAR(40) NOT NULL,
    reason TEXT NOT NULL,
    automatic BOOLEAN NOT NULL,
    from_stage VARCHAR(20) NOT NULL,
    to_stage VARCHAR(20) NOT NULL,
    status VARCHAR(20) NOT NULL,
    plan JSONB NOT NULL,
    snapshot JSONB,
    run_ids JSONB NOT NULL,
    validation_id VARCHAR(250),
    initiated_at TIMESTAMP WITH TIME ZONE NOT NULL,
    validated_at TIMESTAMP WITH TIME ZONE,
    completed_at TIMESTAMP WITH TIME ZONE,
    PRIMARY KEY (id),
    UNIQUE (rollback_id)
)
""",
        """\
CREATE INDEX ix_lifecycle_rollbacks_journey ON lifecycle_rollback_history (journey_id, initiated_at)
""",
        """\
CREATE TABLE lifecycle_metrics (
    id BIGSERIAL NOT NULL,
    journey_id VARCHAR(200) NOT NULL,
    metric VARCHAR(100) NOT NULL,
    value FLOAT NOT NULL,
    recorded_at TIMESTAMP WITH TIME ZONE NOT NULL,
    PRIMARY KEY (id)
)
""",
        """\
CREATE INDEX ix_lifecycle_metrics_series ON lifecycle_metrics (journey_id, metric, recorded_at)
""",
    ),
}
V3_PROCESS: DDL = {
    "sqlite": (
        """\
CREATE TABLE process_deployments (
    name VARCHAR(100) NOT NULL,
    version INTEGER NOT NULL,
    design_id VARCHAR(100) NOT NULL,
    digest VARCHAR(64) NOT NULL,
    deployed_at DATETIME NOT NULL,
    PRIMARY KEY (name, version),
    UNIQUE (design_id)
)
""",
        """\
CREATE TABLE process_rollouts (
    name VARCHAR(100) NOT NULL,
    entries JSON NOT NULL,
    updated_at DATETIME NOT NULL,
    PRIMARY KEY (name)
)
""",
        """\
CREATE TABLE process_waits (
    wait_id VARCHAR(300) NOT NULL,
    instance_id VARCHAR(200) NOT NULL,
    element VARCHAR(100) NOT NULL,
    kind VARCHAR(20) NOT NULL,
    status VARCHAR(20) NOT NULL,
    resolution JSON,
    created_at DATETIME NOT NULL,
    resolved_at DATETIME,
    PRIMARY KEY (wait_id)
)
""",
        """\
CREATE INDEX ix_process_waits_instance ON process_waits (instance_id, status)
""",
        """\
CREATE INDEX ix_process_waits_status ON process_waits (status, resolved_at)
""",
        """\
CREATE TABLE process_timers (
    timer_id VARCHAR(300) NOT NULL,
    instance_id VARCHAR(200),
    wait_id VARCHAR(300),
    element VARCHAR(100) NOT NULL,
    purpose VARCHAR(20) NOT NULL,
    definition JSON NOT NULL,
    due_at DATETIME NOT NULL,
    origin DATETIME NOT NULL,
    ticks INTEGER NOT NULL,
    status VARCHAR(20) NOT NULL,
    data JSON NOT NULL,
    claimed_by VARCHAR(200),
    claimed_at DATETIME,
    fired_at DATETIME,
    created_at DATETIME NOT NULL,
    PRIMARY KEY (timer_id)
)
""",
        """\
CREATE INDEX ix_process_timers_due ON process_timers (status, due_at)
""",
        """\
CREATE INDEX ix_process_timers_instance ON process_timers (instance_id)
""",
        """\
CREATE INDEX ix_process_timers_wait ON process_timers (wait_id)
""",
        """\
CREATE TABLE process_user_tasks (
    task_id VARCHAR(300) NOT NULL,
    instance_id VARCHAR(200) NOT NULL,
    element VARCHAR(100) NOT NULL,
    title VARCHAR(300) NOT NULL,
    assignee VARCHAR(200),
    candidate_groups JSON NOT NULL,
    claimed_by VARCHAR(200),
    status VARCHAR(20) NOT NULL,
    response_schema JSON,
    sla_due_at DATETIME,
    escalated_at DATETIME,
    escalation VARCHAR(20),
    created_at DATETIME NOT NULL,
    completed_at DATETIME,
    completed_by VARCHAR(200),
    result JSON,
    PRIMARY KEY (task_id)
)
""",
        """\
CREATE INDEX ix_process_user_tasks_assignee ON process_user_tasks (status, assignee)
""",
        """\
CREATE INDEX ix_process_user_tasks_instance ON process_user_tasks (instance_id)
""",
        """\
CREATE TABLE process_user_task_groups (
    task_id VARCHAR(300) NOT NULL,
    group_name VARCHAR(200) NOT NULL,
    PRIMARY KEY (task_id, group_name)
)
""",
        """\
CREATE INDEX ix_process_user_task_groups_group ON process_user_task_groups (group_name)
""",
        """\
CREATE TABLE process_subscriptions (
    subscription_id VARCHAR(300) NOT NULL,
    wait_id VARCHAR(300) NOT NULL,
    instance_id VARCHAR(200) NOT NULL,
    element VARCHAR(100) NOT NULL,
    message_name VARCHAR(200) NOT NULL,
    correlation_key VARCHAR(300) NOT NULL,
    status VARCHAR(20) NOT NULL,
    created_at DATETIME NOT NULL,
    PRIMARY KEY (subscription_id)
)
""",
        """\
CREATE INDEX ix_process_subscriptions_match ON process_subscriptions (message_name, correlation_key, status)
""",
        """\
CREATE INDEX ix_process_subscriptions_wait ON process_subscriptions (wait_id)
""",
        """\
CREATE TABLE process_messages (
    message_id VARCHAR(100) NOT NULL,
    name VARCHAR(200) NOT NULL,
    correlation_key VARCHAR(300) NOT NULL,
    payload JSON NOT NULL,
    status VARCHAR(20) NOT NULL,
    received_at DATETIME NOT NULL,
    expires_at DATETIME NOT NULL,
    consumed_by VARCHAR(300),
    PRIMARY KEY (message_id)
)
""",
        """\
CREATE INDEX ix_process_messages_match ON process_messages (name, correlation_key, status)
""",
    ),
    "postgresql": (
        """\
CREATE TABLE process_deployments (
    name VARCHAR(100) NOT NULL,
    version INTEGER NOT NULL,
    design_id VARCHAR(100) NOT NULL,
    digest VARCHAR(64) NOT NULL,
    deployed_at TIMESTAMP WITH TIME ZONE NOT NULL,
    PRIMARY KEY (name, version),
    UNIQUE (design_id)
)
""",
        """\
CREATE TABLE process_rollouts (
    name VARCHAR(100) NOT NULL,
    entries JSONB NOT NULL,
    updated_at TIMESTAMP WITH TIME ZONE NOT NULL,
    PRIMARY KEY (name)
)
""",
        """\
CREATE TABLE process_waits (
    wait_id VARCHAR(300) NOT NULL,
    instance_id VARCHAR(200) NOT NULL,
    element VARCHAR(100) NOT NULL,
    kind VARCHAR(20) NOT NULL,
    status VARCHAR(20) NOT NULL,
    resolution JSONB,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL,
    resolved_at TIMESTAMP WITH TIME ZONE,
    PRIMARY KEY (wait_id)
)
""",
        """\
CREATE INDEX ix_process_waits_instance ON process_waits (instance_id, status)
""",
        """\
CREATE INDEX ix_process_waits_status ON process_waits (status, resolved_at)
""",
        """\
CREATE TABLE process_timers (
    timer_id VARCHAR(300) NOT NULL,
    instance_id VARCHAR(200),
    wait_id VARCHAR(300),
    element VARCHAR(100) NOT NULL,
    purpose VARCHAR(20) NOT NULL,
    definition JSONB NOT NULL,
    due_at TIMESTAMP WITH TIME ZONE NOT NULL,
    origin TIMESTAMP WITH TIME ZONE NOT NULL,
    ticks INTEGER NOT NULL,
    status VARCHAR(20) NOT NULL,
    data JSONB NOT NULL,
    claimed_by VARCHAR(200),
    claimed_at TIMESTAMP WITH TIME ZONE,
    fired_at TIMESTAMP WITH TIME ZONE,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL,
    PRIMARY KEY (timer_id)
)
""",
        """\
CREATE INDEX ix_process_timers_due ON process_timers (status, due_at)
""",
        """\
CREATE INDEX ix_process_timers_instance ON process_timers (instance_id)
""",
        """\
CREATE INDEX ix_process_timers_wait ON process_timers (wait_id)
""",
        """\
CREATE TABLE process_user_tasks (
    task_id VARCHAR(300) NOT NULL,
    instance_id VARCHAR(200) NOT NULL,
    element VARCHAR(100) NOT NULL,
    title VARCHAR(300) NOT NULL,
    assignee VARCHAR(200),
    candidate_groups JSONB NOT NULL,
    claimed_by VARCHAR(200),
    status VARCHAR(20) NOT NULL,
    response_schema JSONB,
    sla_due_at TIMESTAMP WITH TIME ZONE,
    escalated_at TIMESTAMP WITH TIME ZONE,
    escalation VARCHAR(20),
    created_at TIMESTAMP WITH TIME ZONE NOT NULL,
    completed_at TIMESTAMP WITH TIME ZONE,
    completed_by VARCHAR(200),
    result JSONB,
    PRIMARY KEY (task_id)
)
""",
        """\
CREATE INDEX ix_process_user_tasks_assignee ON process_user_tasks (status, assignee)
""",
        """\
CREATE INDEX ix_process_user_tasks_instance ON process_user_tasks (instance_id)
""",
        """\
CREATE TABLE process_user_task_groups (
    task_id VARCHAR(300) NOT NULL,
    group_name VARCHAR(200) NOT NULL,
    PRIMARY KEY (task_id, group_name)
)
""",
        """\
CREATE INDEX ix_process_user_task_groups_group ON process_user_task_groups (group_name)
""",
        """\
CREATE TABLE process_subscriptions (
    subscription_id VARCHAR(300) NOT NULL,
    wait_id VARCHAR(300) NOT NULL,
    instance_id VARCHAR(200) NOT NULL,
    element VARCHAR(100) NOT NULL,
    message_name VARCHAR(200) NOT NULL,
    correlation_key VARCHAR(300) NOT NULL,
    status VARCHAR(20) NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL,
    PRIMARY KEY (subscription_id)
)
""",
        """\
CREATE INDEX ix_process_subscriptions_match ON process_subscriptions (message_name, correlation_key, status)
""",
        """\
CREATE INDEX ix_process_subscriptions_wait ON process_subscriptions (wait_id)
""",
        """\
CREATE TABLE process_messages (
    message_id VARCHAR(100) NOT NULL,
    name VARCHAR(200) NOT NULL,
    correlation_key VARCHAR(300) NOT NULL,
    payload JSONB NOT NULL,
    status VARCHAR(20) NOT NULL,
    received_at TIMESTAMP WITH TIME ZONE NOT NULL,
    expires_at TIMESTAMP WITH TIME ZONE NOT NULL,
    consumed_by VARCHAR(300),
    PRIMARY KEY (message_id)
)
""",
        """\
CREATE INDEX ix_process_messages_match ON process_messages (name, correlation_key, status)
""",
    ),
}
V4_SERVER: DDL = {
    "sqlite": (
        """\
CREATE TABLE server_threads (
    thread_id VARCHAR(200) NOT NULL,
    assistant_id VARCHAR(100),
    instance_id VARCHAR(200),
    owner VARCHAR(200),
    metadata JSON NOT NULL,
    created_at DATETIME NOT NULL,
    updated_at DATETIME NOT NULL,
    PRIMARY KEY (thread_id)
)
""",
        """\
CREATE INDEX ix_server_threads_instance ON server_threads (instance_id)
""",
        """\
CREATE TABLE server_runs (
    run_id VARCHAR(64) NOT NULL,
    thread_id VARCHAR(200) NOT NULL,
    assistant_id VARCHAR(100) NOT NULL,
    status VARCHAR(20) NOT NULL,
    kind VARCHAR(20) NOT NULL,
    input JSON,
    command JSON,
    stream_modes JSON NOT NULL,
    multitask_strategy VARCHAR(20) NOT NULL,
    metadata JSON NOT NULL,
    principal VARCHAR(200),
    base_checkpoint VARCHAR(100),
    attempts INTEGER NOT NULL,
    error JSON,
    created_at DATETIME NOT NULL,
    updated_at DATETIME NOT NULL,
    PRIMARY KEY (run_id)
)
""",
        """\
CREATE INDEX ix_server_runs_thread_status ON server_runs (thread_id, status)
""",
        """\
CREATE TABLE server_run_events (
    run_id VARCHAR(64) NOT NULL,
    seq INTEGER NOT NULL,
    event VARCHAR(40) NOT NULL,
    data JSON,
    PRIMARY KEY (run_id, seq)
)
""",
    ),
    "postgresql": (
        """\
CREATE TABLE server_threads (
    thread_id VARCHAR(200) NOT NULL,
    assistant_id VARCHAR(100),
    instance_id VARCHAR(200),
    owner VARCHAR(200),
    metadata JSONB NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL,
    updated_at TIMESTAMP WITH TIME ZONE NOT NULL,
    PRIMARY KEY (thread_id)
)
""",
        """\
CREATE INDEX ix_server_threads_instance ON server_threads (instance_id)
""",
        """\
CREATE TABLE server_runs (
    run_id VARCHAR(64) NOT NULL,
    thread_id VARCHAR(200) NOT NULL,
    assistant_id VARCHAR(100) NOT NULL,
    status VARCHAR(20) NOT NULL,
    kind VARCHAR(20) NOT NULL,
    input JSONB,
    command JSONB,
    stream_modes JSONB NOT NULL,
    multitask_strategy VARCHAR(20) NOT NULL,
    metadata JSONB NOT NULL,
    principal VARCHAR(200),
    base_checkpoint VARCHAR(100),
    attempts INTEGER NOT NULL,
    error JSONB,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL,
    updated_at TIMESTAMP WITH TIME ZONE NOT NULL,
    PRIMARY KEY (run_id)
)
""",
        """\
CREATE INDEX ix_server_runs_thread_status ON server_runs (thread_id, status)
""",
        """\
CREATE TABLE server_run_events (
    run_id VARCHAR(64) NOT NULL,
    seq INTEGER NOT NULL,
    event VARCHAR(40) NOT NULL,
    data JSONB,
    PRIMARY KEY (run_id, seq)
)
""",
    ),
}
V6_MESSAGE_STARTS: DDL = {
    "sqlite": (
        """\
CREATE TABLE process_message_starts (
    message_name VARCHAR(200) NOT NULL,
    name VARCHAR(100) NOT NULL,
    version INTEGER NOT NULL,
    start_id VARCHAR(100) NOT NULL,
    PRIMARY KEY (message_name, name, version, start_id)
)
""",
    ),
    "postgresql": (
        """\
CREATE TABLE process_message_starts (
    message_name VARCHAR(200) NOT NULL,
    name VARCHAR(100) NOT NULL,
    version INTEGER NOT NULL,
    start_id VARCHAR(100) NOT NULL,
    PRIMARY KEY (message_name, name, version, start_id)
)
""",
    ),
}
# Migration 5: fewer bytes per step. PostgreSQL rekeys the log by (instance_id, seq); SQLite kept its `id`
# (its rowid) until migration 9.
V5_LEAN: DDL = {
    "sqlite": (
        "DROP INDEX IF EXISTS ix_journey_events_type",
        "DROP INDEX IF EXISTS ix_journey_instances_journey_user",
    ),
    "postgresql": (
        "DROP INDEX IF EXISTS ix_journey_events_type",
        "DROP INDEX IF EXISTS ix_journey_instances_journey_user",
        "ALTER TABLE journey_events DROP COLUMN id, DROP CONSTRAINT uq_journey_events_instance_seq, "
        "ADD CONSTRAINT pk_journey_events PRIMARY KEY (instance_id, seq)",
    ),
}

# Migration 6 fills the message-start index from the deployments made before it existed.
V6_DEPLOYED_SPECS = (
    "SELECT d.name, d.version, j.spec FROM process_deployments AS d "
    "JOIN journey_designs AS j ON j.journey_id = d.design_id"
)
V6_INSERT_START = (
    "INSERT INTO process_message_starts (message_name, name, version, start_id) "
    "VALUES (:message_name, :name, :version, :start_id)"
)

V7_RUN_OUTPUTS: DDL = {
    "sqlite": (
        "ALTER TABLE server_runs ADD COLUMN output JSON",
        "ALTER TABLE server_runs ADD COLUMN job_id BIGINT",
    ),
    "postgresql": (
        "ALTER TABLE server_runs ADD COLUMN output JSONB",
        "ALTER TABLE server_runs ADD COLUMN job_id BIGINT",
    ),
}

V8_RUN_REQUESTS: DDL = {
    "sqlite": (
        "ALTER TABLE server_runs ADD COLUMN cancel_requested_at DATETIME",
        "ALTER TABLE server_runs ADD COLUMN durability VARCHAR(10)",
    ),
    "postgresql": (
        "ALTER TABLE server_runs ADD COLUMN cancel_requested_at TIMESTAMP WITH TIME ZONE",
        "ALTER TABLE server_runs ADD COLUMN durability VARCHAR(10)",
    ),
}

# Migration 9: SQLite's log keyed by (instance_id, seq) too, as PostgreSQL's is since migration 5. SQLite
# cannot change a primary key in place: the table is rebuilt (whichever shape it had) and its rows copied.
V9_SQLITE_EVENTS_REKEYED: DDL = {
    "sqlite": (
        """\
CREATE TABLE journey_events_rekeyed (
    instance_id VARCHAR(200) NOT NULL,
    seq INTEGER NOT NULL,
    type VARCHAR(60) NOT NULL,
    step VARCHAR(100),
    payload JSON NOT NULL,
    idempotency_key TEXT,
    created_at DATETIME NOT NULL,
    CONSTRAINT pk_journey_events PRIMARY KEY (instance_id, seq),
    UNIQUE (idempotency_key)
)
""",
        "INSERT INTO journey_events_rekeyed (instance_id, seq, type, step, payload, idempotency_key, created_at) "
        "SELECT instance_id, seq, type, step, payload, idempotency_key, created_at FROM journey_events",
        "DROP TABLE journey_events",
        "ALTER TABLE journey_events_rekeyed RENAME TO journey_events",
    ),
    "postgresql": (),
}
V10_ROLLBACK_REQUESTS: DDL = {
    "sqlite": (
        """\
CREATE TABLE lifecycle_rollback_requests (
    run_id VARCHAR(250) NOT NULL,
    journey_id VARCHAR(200) NOT NULL,
    reason TEXT NOT NULL,
    requested_at DATETIME NOT NULL,
    PRIMARY KEY (run_id)
)
""",
        "CREATE INDEX ix_lifecycle_rollback_requests_journey ON lifecycle_rollback_requests (journey_id)",
    ),
    "postgresql": (
        """\
CREATE TABLE lifecycle_rollback_requests (
    run_id VARCHAR(250) NOT NULL,
    journey_id VARCHAR(200) NOT NULL,
    reason TEXT NOT NULL,
    requested_at TIMESTAMP WITH TIME ZONE NOT NULL,
    PRIMARY KEY (run_id)
)
""",
        "CREATE INDEX ix_lifecycle_rollback_requests_journey ON lifecycle_rollback_requests (journey_id)",
    ),
}
V11_AGENT_GUARDS: DDL = {
    "sqlite": (
        """\
CREATE TABLE agent_circuits (
    intent VARCHAR(200) NOT NULL,
    state VARCHAR(20) NOT NULL,
    consecutive_failures INTEGER NOT NULL,
    window_calls INTEGER NOT NULL,
    window_failures INTEGER NOT NULL,
    window_started_at DATETIME NOT NULL,
    changed_at DATETIME NOT NULL,
    trials INTEGER NOT NULL,
    trial_successes INTEGER NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (intent)
)
""",
        """\
CREATE TABLE agent_rate_limits (
    intent VARCHAR(200) NOT NULL,
    next_call_at DATETIME NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (intent)
)
""",
    ),
    "postgresql": (
        """\
CREATE TABLE agent_circuits (
    intent VARCHAR(200) NOT NULL,
    state VARCHAR(20) NOT NULL,
    consecutive_failures INTEGER NOT NULL,
    window_calls INTEGER NOT NULL,
    window_failures INTEGER NOT NULL,
    window_started_at TIMESTAMP WITH TIME ZONE NOT NULL,
    changed_at TIMESTAMP WITH TIME ZONE NOT NULL,
    trials INTEGER NOT NULL,
    trial_successes INTEGER NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (intent)
)
""",
        """\
CREATE TABLE agent_rate_limits (
    intent VARCHAR(200) NOT NULL,
    next_call_at TIMESTAMP WITH TIME ZONE NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (intent)
)
""",
    ),
}

# Migration 12: who owns each journey instance, server thread and run (checkpoints.ownership).
_V12_COLUMNS = (
    "ALTER TABLE journey_instances ADD COLUMN owner VARCHAR(200)",
    "ALTER TABLE journey_instances ADD COLUMN tenant VARCHAR(100)",
    "ALTER TABLE journey_instances ADD COLUMN shared_group VARCHAR(200)",
    "CREATE INDEX ix_journey_instances_owner ON journey_instances (tenant, owner)",
    "ALTER TABLE server_threads ADD COLUMN tenant VARCHAR(100)",
    "ALTER TABLE server_threads ADD COLUMN shared_group VARCHAR(200)",
    "CREATE INDEX ix_server_threads_owner ON server_threads (tenant, owner)",
    "ALTER TABLE server_runs ADD COLUMN tenant VARCHAR(100)",
    "ALTER TABLE server_runs ADD COLUMN shared_group VARCHAR(200)",
)
V12_OWNERSHIP: DDL = {"sqlite": _V12_COLUMNS, "postgresql": _V12_COLUMNS}

# Migration 13: instance-level flow control (checkpoints.schema.flow_tables).
V13_FLOW_CONTROL: DDL = {
    dialect: (
        f"""\
CREATE TABLE journey_start_keys (
    start_key VARCHAR(200) NOT NULL,
    instance_id VARCHAR(200) NOT NULL,
    expires_at {moment} NOT NULL,
    created_at {moment} NOT NULL,
    PRIMARY KEY (start_key)
)
""",
        f"""\
CREATE TABLE journey_concurrency_slots (
    concurrency_key VARCHAR(200) NOT NULL,
    slot INTEGER NOT NULL,
    instance_id VARCHAR(200) NOT NULL,
    taken_at {moment} NOT NULL,
    CONSTRAINT pk_journey_concurrency_slots PRIMARY KEY (concurrency_key, slot)
)
""",
        "CREATE INDEX ix_journey_concurrency_slots_instance ON journey_concurrency_slots (instance_id)",
        f"""\
CREATE TABLE journey_queued_starts (
    instance_id VARCHAR(200) NOT NULL,
    concurrency_key VARCHAR(200) NOT NULL,
    "limit" INTEGER NOT NULL,
    queued_at {moment} NOT NULL,
    PRIMARY KEY (instance_id)
)
""",
        "CREATE INDEX ix_journey_queued_starts_key ON journey_queued_starts (concurrency_key, queued_at)",
    )
    for dialect, moment in (("sqlite", "DATETIME"), ("postgresql", "TIMESTAMP WITH TIME ZONE"))
}

# Migration 15: assistants as objects (versioned), and the Agent Server options of each run.
V15_ASSISTANTS: DDL = {
    "sqlite": (
        "ALTER TABLE server_runs ADD COLUMN options JSON",
        """\
CREATE TABLE server_assistants (
    assistant_id VARCHAR(200) NOT NULL,
    graph_id VARCHAR(100) NOT NULL,
    name VARCHAR(200) NOT NULL,
    description TEXT,
    config JSON NOT NULL,
    context JSON NOT NULL,
    metadata JSON NOT NULL,
    version INTEGER NOT NULL,
    owner VARCHAR(200),
    created_at DATETIME NOT NULL,
    updated_at DATETIME NOT NULL,
    PRIMARY KEY (assistant_id)
)
""",
        "CREATE INDEX ix_server_assistants_graph ON server_assistants (graph_id)",
        """\
CREATE TABLE server_assistant_versions (
    assistant_id VARCHAR(200) NOT NULL,
    version INTEGER NOT NULL,
    graph_id VARCHAR(100) NOT NULL,
    name VARCHAR(200) NOT NULL,
    description TEXT,
    config JSON NOT NULL,
    context JSON NOT NULL,
    metadata JSON NOT NULL,
    created_at DATETIME NOT NULL,
    PRIMARY KEY (assistant_id, version)
)
""",
    ),
    "postgresql": (
        "ALTER TABLE server_runs ADD COLUMN options JSONB",
        """\
CREATE TABLE server_assistants (
    assistant_id VARCHAR(200) NOT NULL,
    graph_id VARCHAR(100) NOT NULL,
    name VARCHAR(200) NOT NULL,
    description TEXT,
    config JSONB NOT NULL,
    context JSONB NOT NULL,
    metadata JSONB NOT NULL,
    version INTEGER NOT NULL,
    owner VARCHAR(200),
    created_at TIMESTAMP WITH TIME ZONE NOT NULL,
    updated_at TIMESTAMP WITH TIME ZONE NOT NULL,
    PRIMARY KEY (assistant_id)
)
""",
        "CREATE INDEX ix_server_assistants_graph ON server_assistants (graph_id)",
        """\
CREATE TABLE server_assistant_versions (
    assistant_id VARCHAR(200) NOT NULL,
    version INTEGER NOT NULL,
    graph_id VARCHAR(100) NOT NULL,
    name VARCHAR(200) NOT NULL,
    description TEXT,
    config JSONB NOT NULL,
    context JSONB NOT NULL,
    metadata JSONB NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL,
    PRIMARY KEY (assistant_id, version)
)
""",
    ),
}

# Migration 14: crons (the Agent Server's /runs/crons); their firings are process timers.
V14_CRONS: DDL = {
    "sqlite": (
        """\
CREATE TABLE server_crons (
    cron_id VARCHAR(64) NOT NULL,
    assistant_id VARCHAR(100) NOT NULL,
    thread_id VARCHAR(200),
    schedule VARCHAR(200) NOT NULL,
    timezone VARCHAR(64) NOT NULL,
    end_time DATETIME,
    payload JSON NOT NULL,
    metadata JSON NOT NULL,
    enabled INTEGER NOT NULL,
    on_run_completed VARCHAR(16),
    user_id VARCHAR(200),
    timer_id VARCHAR(250),
    created_at DATETIME NOT NULL,
    updated_at DATETIME NOT NULL,
    PRIMARY KEY (cron_id)
)
""",
        "CREATE INDEX ix_server_crons_assistant ON server_crons (assistant_id)",
        "CREATE INDEX ix_server_crons_thread ON server_crons (thread_id)",
    ),
    "postgresql": (
        """\
CREATE TABLE server_crons (
    cron_id VARCHAR(64) NOT NULL,
    assistant_id VARCHAR(100) NOT NULL,
    thread_id VARCHAR(200),
    schedule VARCHAR(200) NOT NULL,
    timezone VARCHAR(64) NOT NULL,
    end_time TIMESTAMP WITH TIME ZONE,
    payload JSONB NOT NULL,
    metadata JSONB NOT NULL,
    enabled INTEGER NOT NULL,
    on_run_completed VARCHAR(16),
    user_id VARCHAR(200),
    timer_id VARCHAR(250),
    created_at TIMESTAMP WITH TIME ZONE NOT NULL,
    updated_at TIMESTAMP WITH TIME ZONE NOT NULL,
    PRIMARY KEY (cron_id)
)
""",
        "CREATE INDEX ix_server_crons_assistant ON server_crons (assistant_id)",
        "CREATE INDEX ix_server_crons_thread ON server_crons (thread_id)",
    ),
}

# Migration 16: event payloads as compact JSON text (JSONB stores each row's keys and offsets: larger rows).
V16_EVENT_PAYLOAD_TEXT: DDL = {
    "sqlite": (),  # SQLite's JSON is text already
    "postgresql": ("ALTER TABLE journey_events ALTER COLUMN payload TYPE JSON USING payload::json",),
}

# Migration 17: checkpoint retention's progress marks (how far it has pruned, how far deleted).
V17_RETENTION: DDL = {
    "sqlite": (
        """\
CREATE TABLE journey_retention (
    mark VARCHAR(20) NOT NULL,
    upto DATETIME,
    PRIMARY KEY (mark)
)
""",
        "INSERT INTO journey_retention (mark, upto) VALUES ('pruned', NULL), ('deleted', NULL)",
    ),
    "postgresql": (
        """\
CREATE TABLE journey_retention (
    mark VARCHAR(20) NOT NULL,
    upto TIMESTAMP WITH TIME ZONE,
    PRIMARY KEY (mark)
)
""",
        "INSERT INTO journey_retention (mark, upto) VALUES ('pruned', NULL), ('deleted', NULL)",
    ),
}

# Migration 19: owners of the assistants and crons callers create (checkpoints.ownership), filtered in SQL.
_V19_COLUMNS = (
    "ALTER TABLE server_assistants ADD COLUMN tenant VARCHAR(100)",
    "ALTER TABLE server_assistants ADD COLUMN shared_group VARCHAR(200)",
    "CREATE INDEX ix_server_assistants_owner ON server_assistants (tenant, owner)",
    "ALTER TABLE server_crons ADD COLUMN owner VARCHAR(200)",
    "ALTER TABLE server_crons ADD COLUMN tenant VARCHAR(100)",
    "ALTER TABLE server_crons ADD COLUMN shared_group VARCHAR(200)",
    "CREATE INDEX ix_server_crons_owner ON server_crons (tenant, owner)",
)
V19_OWNED_ASSISTANTS_CRONS: DDL = {"sqlite": _V19_COLUMNS, "postgresql": _V19_COLUMNS}

# Migration 20: smaller event rows. An idempotency key is unique per instance (a partial index: unkeyed events
# have no entry) and stored without the instance id it starts with; an instance's first event no longer
# repeats the design and user its payload names already (``journey_id``, ``user_id``): checkpoints.events.
_V20_KEY_STORED = "substr(idempotency_key, length(instance_id) + 1)"
_V20_KEY_PREFIXED = "substr(idempotency_key, 1, length(instance_id) + 1) = instance_id || ':'"
_V20_KEY_INDEX = (
    "CREATE UNIQUE INDEX uq_journey_events_key ON journey_events (instance_id, idempotency_key) "
    "WHERE idempotency_key IS NOT NULL"
)
# And checkpoint retention's pass, which reads the instances finished since its mark, oldest first, gets an index
# (a scan of every instance per batch before: 84 ms at 200,000 instances; 1.9 ms with PostgreSQL's BRIN index,
# which costs 0.1 B per instance where a B-tree costs 20-36 B for 0.14 ms; SQLite has B-trees only).
_V20_UPDATED_INDEX = "CREATE INDEX ix_journey_instances_updated ON journey_instances {}(updated_at)"
V20_LEAN_EVENT_ROWS: DDL = {
    # SQLite cannot drop the table's UNIQUE (idempotency_key): the table is rebuilt and its rows copied.
    "sqlite": (
        """\
CREATE TABLE journey_events_v20 (
    instance_id VARCHAR(200) NOT NULL,
    seq INTEGER NOT NULL,
    type VARCHAR(60) NOT NULL,
    step VARCHAR(100),
    payload JSON NOT NULL,
    idempotency_key TEXT,
    created_at DATETIME NOT NULL,
    CONSTRAINT pk_journey_events PRIMARY KEY (instance_id, seq)
)
""",
        "INSERT INTO journey_events_v20 (instance_id, seq, type, step, payload, idempotency_key, created_at) "
        f"SELECT instance_id, seq, type, step, payload, CASE WHEN {_V20_KEY_PREFIXED} THEN {_V20_KEY_STORED} "
        "ELSE idempotency_key END, created_at FROM journey_events",
        "DROP TABLE journey_events",
        "ALTER TABLE journey_events_v20 RENAME TO journey_events",
        _V20_KEY_INDEX,
        _V20_UPDATED_INDEX.format(""),
        *(
            f"UPDATE journey_events SET payload = json_remove(payload, '$.{mark}') WHERE seq = 1 AND "
            f"json_type(payload) = 'object' AND json_extract(payload, '$.{mark}') = json_extract(payload, '$.{said}')"
            for mark, said in (("instance_design", "journey_id"), ("instance_user", "user_id"))
        ),
    ),
    # The payload is JSON text: the copy is cut out of it as the runtime wrote it (compact), which leaves a row
    # written otherwise as it is (it stays correct: the copy is only redundant).
    "postgresql": (
        "ALTER TABLE journey_events DROP CONSTRAINT journey_events_idempotency_key_key",
        f"UPDATE journey_events SET idempotency_key = {_V20_KEY_STORED} WHERE {_V20_KEY_PREFIXED}",
        _V20_KEY_INDEX,
        _V20_UPDATED_INDEX.format("USING brin "),
        *(
            f"UPDATE journey_events SET payload = replace(payload::text, ',\"{mark}\":' || "
            f"to_json(payload->>'{said}')::text, '')::json WHERE seq = 1 AND json_typeof(payload) = 'object' "
            f"AND payload->>'{mark}' = payload->>'{said}'"
            for mark, said in (("instance_design", "journey_id"), ("instance_user", "user_id"))
        ),
    ),
}

# Migration 21: an instance's events are keyed by a number, not its id (8 bytes in each event row and in each
# entry of both its indexes, where the id took 30-40), with the fixed-width columns first (no alignment
# padding). The first event (seq 1) keeps the id, and the number is found from it (a unique index on the first
# events: one per instance); new numbers come from a sequence on PostgreSQL (checkpoints.events). Every event is
# copied, its key unchanged; existing instances are numbered in the order of their ids.
_V21_EVENTS = """\
CREATE TABLE journey_events_v21 (
    instance_no {number} NOT NULL,
    created_at {moment} NOT NULL,
    seq INTEGER NOT NULL,
    type VARCHAR(60) NOT NULL,
    step VARCHAR(100),
    payload JSON NOT NULL,
    idempotency_key TEXT,
    instance_id VARCHAR(200),
    CONSTRAINT {pk} PRIMARY KEY (instance_no, seq){full}
)
"""
_V21_COPY = (
    "INSERT INTO journey_events_v21 (instance_no, created_at, seq, type, step, payload, idempotency_key, "
    "instance_id) SELECT dense_rank() OVER (ORDER BY instance_id), created_at, seq, type, step, payload, "
    "idempotency_key, CASE WHEN seq = 1 THEN instance_id END FROM journey_events"
)
# PostgreSQL's B-trees leave 10% of each page free when built (and when their rightmost page splits) for rows
# updated in place later: the log's rows never are, and an instance's entries are appended after its last one.
_V21_FULL = " WITH (fillfactor = 100)"
_V21_INDEXES = (
    "CREATE UNIQUE INDEX uq_journey_events_key ON journey_events (instance_no, idempotency_key){full} "
    "WHERE idempotency_key IS NOT NULL",
    "CREATE UNIQUE INDEX uq_journey_events_instance ON journey_events (instance_id){full} WHERE seq = 1",
)
V21_EVENTS_BY_INSTANCE_NO: DDL = {
    "sqlite": (
        _V21_EVENTS.format(number="INTEGER", moment="DATETIME", pk="pk_journey_events", full=""),
        _V21_COPY,
        "DROP TABLE journey_events",
        "ALTER TABLE journey_events_v21 RENAME TO journey_events",
        *(index.format(full="") for index in _V21_INDEXES),
    ),
    "postgresql": (
        _V21_EVENTS.format(
            number="BIGINT", moment="TIMESTAMP WITH TIME ZONE", pk="pk_journey_events_v21", full=_V21_FULL
        ),
        _V21_COPY,
        "DROP TABLE journey_events",
        "ALTER TABLE journey_events_v21 RENAME TO journey_events",
        "ALTER TABLE journey_events RENAME CONSTRAINT pk_journey_events_v21 TO pk_journey_events",
        *(index.format(full=_V21_FULL) for index in _V21_INDEXES),
        "CREATE SEQUENCE journey_events_instance_no AS BIGINT",
        "SELECT setval('journey_events_instance_no', (SELECT max(instance_no) FROM journey_events))",
    ),
}

# Migration 22: the message ids of sent messages (checkpoints.process.messages), so a repeated send changes nothing.
V22_MESSAGE_IDS: DDL = {
    dialect: (
        f"""\
CREATE TABLE process_message_ids (
    message_id VARCHAR(100) NOT NULL,
    name VARCHAR(200) NOT NULL,
    correlation_key VARCHAR(300) NOT NULL,
    payload {json} NOT NULL,
    outcome {json},
    claimed_at {moment} NOT NULL,
    expires_at {moment} NOT NULL,
    PRIMARY KEY (message_id)
)
""",
    )
    for dialect, json, moment in (("sqlite", "JSON", "DATETIME"), ("postgresql", "JSONB", "TIMESTAMP WITH TIME ZONE"))
}

# Migration 23: the interrupt a parked wait's thread waits on (``WaitStore.parked``), so a resolution is delivered by
# that id without reading the thread's state first.
V23_WAIT_INTERRUPTS: DDL = {
    dialect: ("ALTER TABLE process_waits ADD COLUMN interrupt_id VARCHAR(64)",) for dialect in ("sqlite", "postgresql")
}

# Migration 24: the encryption key's proof: a value sealed with the key the database was first encrypted with
# (``checkpoints.encryption.check_key``), so a process given another key, or none, is refused as it opens.
V24_ENCRYPTION_CANARY: DDL = {
    "sqlite": (
        """\
CREATE TABLE journeys_encryption (
    name VARCHAR(20) NOT NULL,
    sealed TEXT NOT NULL,
    written_at DATETIME NOT NULL,
    PRIMARY KEY (name)
)
""",
    ),
    "postgresql": (
        """\
CREATE TABLE journeys_encryption (
    name VARCHAR(20) NOT NULL,
    sealed TEXT NOT NULL,
    written_at TIMESTAMP WITH TIME ZONE NOT NULL,
    PRIMARY KEY (name)
)
""",
    ),
}

# Migration 25: a message is sent for a tenant (checkpoints.process.messages): its buffered copy is taken by that
# tenant's waits only, and its id is unique within that tenant. Messages and ids kept before it were sent for every
# tenant ('*', EVERY_TENANT). SQLite cannot change a primary key in place: its two tables are rebuilt.
_V25_MESSAGES = """\
CREATE TABLE process_messages_v25 (
    message_id VARCHAR(100) NOT NULL,
    name VARCHAR(200) NOT NULL,
    correlation_key VARCHAR(300) NOT NULL,
    payload JSON NOT NULL,
    status VARCHAR(20) NOT NULL,
    received_at DATETIME NOT NULL,
    expires_at DATETIME NOT NULL,
    consumed_by VARCHAR(300),
    tenant VARCHAR(100) NOT NULL,
    PRIMARY KEY (message_id, tenant)
)
"""
_V25_IDS = """\
CREATE TABLE process_message_ids_v25 (
    message_id VARCHAR(100) NOT NULL,
    name VARCHAR(200) NOT NULL,
    correlation_key VARCHAR(300) NOT NULL,
    payload JSON NOT NULL,
    outcome JSON,
    claimed_at DATETIME NOT NULL,
    expires_at DATETIME NOT NULL,
    tenant VARCHAR(100) NOT NULL,
    PRIMARY KEY (message_id, tenant)
)
"""
_V25_COLUMNS = {
    "process_messages": "message_id, name, correlation_key, payload, status, received_at, expires_at, consumed_by",
    "process_message_ids": "message_id, name, correlation_key, payload, outcome, claimed_at, expires_at",
}
V25_MESSAGE_TENANTS: DDL = {
    "sqlite": (
        _V25_MESSAGES,
        _V25_IDS,
        *(
            statement
            for table, columns in _V25_COLUMNS.items()
            for statement in (
                f"INSERT INTO {table}_v25 ({columns}, tenant) SELECT {columns}, '*' FROM {table}",
                f"DROP TABLE {table}",
                f"ALTER TABLE {table}_v25 RENAME TO {table}",
            )
        ),
        "CREATE INDEX ix_process_messages_match ON process_messages (name, correlation_key, status)",
    ),
    "postgresql": tuple(
        statement
        for table in _V25_COLUMNS
        for statement in (
            f"ALTER TABLE {table} ADD COLUMN tenant VARCHAR(100) NOT NULL DEFAULT '*'",
            f"ALTER TABLE {table} ALTER COLUMN tenant DROP DEFAULT",
            f"ALTER TABLE {table} DROP CONSTRAINT {table}_pkey, ADD PRIMARY KEY (message_id, tenant)",
        )
    ),
}

V26_PROCESS_TENANTS: DDL = dict.fromkeys(
    ("sqlite", "postgresql"), ("ALTER TABLE process_deployments ADD COLUMN tenant VARCHAR(100)",)
)

# Each run's fixed place on its thread, and each thread's count of runs created: the runs made before are
# numbered in creation order (ties by id), as the thread stream numbered them until then.
V27_RUN_ORDINALS: DDL = dict.fromkeys(
    ("sqlite", "postgresql"),
    (
        "ALTER TABLE server_threads ADD COLUMN runs_created INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE server_runs ADD COLUMN ordinal INTEGER NOT NULL DEFAULT 0",
        """UPDATE server_runs SET ordinal = numbered.n FROM (
    SELECT run_id, row_number() OVER (PARTITION BY thread_id ORDER BY created_at, run_id) AS n FROM server_runs
) AS numbered WHERE numbered.run_id = server_runs.run_id""",
        """UPDATE server_threads SET runs_created = (
    SELECT coalesce(max(ordinal), 0) FROM server_runs WHERE server_runs.thread_id = server_threads.thread_id
)""",
    ),
)

# Each assistant's name case-folded, for searches by name; filled for the assistants made before it by the
# migration's data step (str.casefold, which neither dialect has).
V28_ASSISTANT_NAME_KEYS: DDL = dict.fromkeys(
    ("sqlite", "postgresql"), ("ALTER TABLE server_assistants ADD COLUMN name_key TEXT NOT NULL DEFAULT ''",)
)
V28_ASSISTANT_NAMES = "SELECT assistant_id, name FROM server_assistants"
V28_SET_NAME_KEY = "UPDATE server_assistants SET name_key = :name_key WHERE assistant_id = :assistant_id"

# Migration 29: a thread's time-to-live (the Agent Server's thread TTL), and the index its sweep finds due ones by.
V29_THREAD_TTL: DDL = {
    dialect: (
        "ALTER TABLE server_threads ADD COLUMN ttl_strategy VARCHAR(20)",
        "ALTER TABLE server_threads ADD COLUMN ttl_seconds BIGINT",
        f"ALTER TABLE server_threads ADD COLUMN expires_at {moment}",
        "CREATE INDEX ix_server_threads_expires ON server_threads (expires_at)",
    )
    for dialect, moment in (("sqlite", "DATETIME"), ("postgresql", "TIMESTAMP WITH TIME ZONE"))
}

# Migration 30: indexes for two reads that scanned a whole table. An operator's and the dashboard's listing of
# journeys, newest first (`journeys instances list`, /ui): at 100,000 instances a top-N sort of every row, 56-97 ms,
# against 0.1 ms read backwards from the index. A shared design's look-up by (pattern, journey_type) after an upgrade
# (DesignBook._stored_by_older_release): a scan of every design, 48 ms at 100,000, against 0.07 ms.
V30_LISTING_INDEXES: DDL = dict.fromkeys(
    ("sqlite", "postgresql"),
    (
        "CREATE INDEX ix_journey_instances_created ON journey_instances (created_at, instance_id)",
        "CREATE INDEX ix_journey_designs_type ON journey_designs (pattern, journey_type)",
    ),
)

# Migration 31: what holds a journey instance's continuation (a fired timer, a task's answer) back: the agents its
# process calls that no process serving the database has (``graphs.process.timers._held``), so the views show why it
# stands still; cleared once it goes on. NULL: nothing holds it.
V31_HELD: DDL = {
    "sqlite": ("ALTER TABLE journey_instances ADD COLUMN held JSON",),
    "postgresql": ("ALTER TABLE journey_instances ADD COLUMN held JSONB",),
}

# Migration 32: the tenant whose caller saved a journey design (a structured journey's, a saga's, a process
# version's); no other tenant starts it. NULL: shared, as every design stored before it and those the runtime saves
# itself (in-process, a plugin) are.
V32_DESIGN_TENANTS: DDL = dict.fromkeys(
    ("sqlite", "postgresql"), ("ALTER TABLE journey_designs ADD COLUMN tenant VARCHAR(100)",)
)

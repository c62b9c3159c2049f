"""Tables of the agent path's shared guards (migration 11): one circuit breaker and one rate-limit
bucket per intent, read and written by every process on the store, so one process's failures open
the circuit for all and the calls per second are counted across workers.

Each row carries a ``version`` that every write compares and bumps (optimistic concurrency): two
processes that change one circuit at once never lose an update, on SQLite as on PostgreSQL.
"""

from __future__ import annotations

from sqlalchemy import Column, Integer, String, Table

from checkpoints.schema.tables import UTCDateTime, metadata

agent_circuits = Table(
    "agent_circuits",
    metadata,
    Column("intent", String(200), primary_key=True),
    Column("state", String(20), nullable=False),  # closed | open | half_open
    Column("consecutive_failures", Integer, nullable=False),
    Column("window_calls", Integer, nullable=False),  # the failure-rate window's calls and failures
    Column("window_failures", Integer, nullable=False),
    Column("window_started_at", UTCDateTime(), nullable=False),
    Column("changed_at", UTCDateTime(), nullable=False),  # when the state last changed
    Column("trials", Integer, nullable=False),  # half-open trial calls admitted
    Column("trial_successes", Integer, nullable=False),
    Column("version", Integer, nullable=False),
)

# The generic cell rate algorithm: one timestamp per intent (the theoretical arrival time of the next call).
agent_rate_limits = Table(
    "agent_rate_limits",
    metadata,
    Column("intent", String(200), primary_key=True),
    Column("next_call_at", UTCDateTime(), nullable=False),
    Column("version", Integer, nullable=False),
)

RESILIENCE_TABLES = (agent_circuits, agent_rate_limits)

"""Tables of instance-level flow control: idempotent start keys, concurrency slots and queued starts.

Each guarantee is a unique constraint, so it holds across processes on every backend: a start key names
one instance per window (``journey_start_keys``), and a concurrency key has at most ``limit`` slots
(``journey_concurrency_slots``, keyed by ``(concurrency_key, slot)`` with ``slot < limit``).
"""

from __future__ import annotations

from sqlalchemy import Column, Index, Integer, PrimaryKeyConstraint, String, Table

from checkpoints.schema.tables import UTCDateTime, metadata

journey_start_keys = Table(
    "journey_start_keys",
    metadata,
    Column("start_key", String(200), primary_key=True),
    Column("instance_id", String(200), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
)

journey_concurrency_slots = Table(
    "journey_concurrency_slots",
    metadata,
    Column("concurrency_key", String(200), nullable=False),
    Column("slot", Integer, nullable=False),
    Column("instance_id", String(200), nullable=False),
    Column("taken_at", UTCDateTime(), nullable=False),
    PrimaryKeyConstraint("concurrency_key", "slot", name="pk_journey_concurrency_slots"),
    Index("ix_journey_concurrency_slots_instance", "instance_id"),
)

# Starts above their key's limit wait here, oldest first, until a slot frees.
journey_queued_starts = Table(
    "journey_queued_starts",
    metadata,
    Column("instance_id", String(200), primary_key=True),
    Column("concurrency_key", String(200), nullable=False),
    Column("limit", Integer, nullable=False),
    Column("queued_at", UTCDateTime(), nullable=False),
    Index("ix_journey_queued_starts_key", "concurrency_key", "queued_at"),
)

FLOW_TABLES = (journey_start_keys, journey_concurrency_slots, journey_queued_starts)

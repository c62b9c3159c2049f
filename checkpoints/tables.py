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
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeDecorator

metadata = MetaData()


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on every dialect (SQLite hands back naive values otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


# JSONB on Postgres (compact, indexable), plain JSON text elsewhere.
JsonType = JSON().with_variant(JSONB(), "postgresql")
# SQLite only auto-increments INTEGER PRIMARY KEY.
EventId = BigInteger().with_variant(Integer(), "sqlite")

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
    Index("ix_journey_instances_journey_user", "journey_id", "user_id"),
    Index("ix_journey_instances_pattern_status", "pattern", "status"),
)

journey_events = Table(
    "journey_events",
    metadata,
    Column("id", EventId, primary_key=True, autoincrement=True),
    Column("instance_id", String(200), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("type", String(60), nullable=False),
    Column("step", String(100), nullable=True),
    Column("payload", JsonType, nullable=False),
    Column("idempotency_key", Text, nullable=True, unique=True),
    Column("created_at", UTCDateTime(), nullable=False),
    UniqueConstraint("instance_id", "seq", name="uq_journey_events_instance_seq"),
    Index("ix_journey_events_type", "type"),
)

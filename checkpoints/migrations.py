"""Ordered schema migrations for our tables, applied when a store opens.

A tiny runner rather than Alembic: the runtime migrates itself at open on three dialects, with no
migration scripts directory or CLI step for users to run. Each migration is a numbered function that
receives a synchronous connection inside one transaction; Postgres serialises concurrent openers with
an advisory lock.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, insert, inspect, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from checkpoints.clock import SystemClock
from checkpoints.errors import MigrationError
from checkpoints.lifecycle_tables import create_lifecycle_tables
from checkpoints.tables import journey_designs, journey_events, journey_instances, schema_migrations

_ADVISORY_LOCK_ID = 7_310_512_001  # arbitrary, stable: "journeys schema"


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    apply: Callable[[Connection], None]


def _create_core_tables(conn: Connection) -> None:
    for table in (journey_designs, journey_instances, journey_events):
        table.create(conn, checkfirst=True)


MIGRATIONS: tuple[Migration, ...] = (Migration(1, "core tables: designs, instances, events", _create_core_tables),)
MIGRATIONS += (
    Migration(
        2,
        "lifecycle tables: journey states, transitions, units of work, validations, rollbacks, metrics",
        create_lifecycle_tables,
    ),
)


def _create_process_tables(conn: Connection) -> None:
    from checkpoints.tables import PROCESS_TABLES  # here, not above: keeps this edit to one block of the file

    for table in PROCESS_TABLES:
        table.create(conn, checkfirst=True)


MIGRATIONS += (
    Migration(
        3,
        "process tables: deployments, rollouts, waits, timers, user tasks, subscriptions, buffered messages",
        _create_process_tables,
    ),
)


def _migrate(conn: Connection) -> list[int]:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _ADVISORY_LOCK_ID})
    schema_migrations.create(conn, checkfirst=True)
    applied = set(conn.execute(select(schema_migrations.c.version)).scalars())
    known = {m.version for m in MIGRATIONS}
    if applied - known:
        raise MigrationError(
            f"the database has schema versions {sorted(applied - known)} that this runtime does not know; "
            "upgrade the journeys package",
        )
    done = []
    for migration in sorted(MIGRATIONS, key=lambda m: m.version):
        if migration.version in applied:
            continue
        migration.apply(conn)
        conn.execute(
            insert(schema_migrations).values(
                version=migration.version, name=migration.name, applied_at=SystemClock().now()
            )
        )
        done.append(migration.version)
    return done


async def migrate(engine: AsyncEngine) -> list[int]:
    """Bring the schema up to date; returns the versions applied now."""
    async with engine.begin() as conn:
        return await conn.run_sync(_migrate)


def _create_server_tables(conn: Connection) -> None:
    from checkpoints.tables import SERVER_TABLES  # here, not above: keeps this edit to one block of the file

    for table in SERVER_TABLES:
        table.create(conn, checkfirst=True)


MIGRATIONS += (Migration(4, "server tables: threads, runs, run stream events", _create_server_tables),)


def _lean_journey_tables(conn: Connection) -> None:
    """Fewer bytes per step: every step of every journey writes an event row, and each index is paid per row.

    - No index on event type, nor on instances by (journey_id, user_id): no query reads through either
      (aggregates by type read most rows anyway).
    - PostgreSQL: the events' surrogate id goes; (instance_id, seq), unique already, becomes the primary
      key. SQLite keeps its `id`, which is its rowid, stored anyway. Databases created from this migration
      on have the new shape from migration 1, which creates the tables as they are defined now.
    """
    conn.execute(text("DROP INDEX IF EXISTS ix_journey_events_type"))
    conn.execute(text("DROP INDEX IF EXISTS ix_journey_instances_journey_user"))
    if conn.dialect.name != "postgresql":
        return
    old_id = conn.execute(
        text("SELECT 1 FROM information_schema.columns WHERE table_name = 'journey_events' AND column_name = 'id'")
    ).first()
    if old_id is not None:
        conn.execute(
            text(
                "ALTER TABLE journey_events DROP COLUMN id, DROP CONSTRAINT uq_journey_events_instance_seq, "
                "ADD CONSTRAINT pk_journey_events PRIMARY KEY (instance_id, seq)"
            )
        )


MIGRATIONS += (
    Migration(
        5, "lean journey tables: events keyed by (instance_id, seq), two unused indexes gone", _lean_journey_tables
    ),
)


def _index_message_starts(conn: Connection) -> None:
    """Create the message-start index and fill it from the process deployments made before it existed."""
    from checkpoints.tables import process_deployments, process_message_starts  # keeps this edit to one block

    process_message_starts.create(conn, checkfirst=True)
    d, j = process_deployments.c, journey_designs.c
    rows = conn.execute(select(d.name, d.version, j.spec).join(journey_designs, j.journey_id == d.design_id)).all()
    entries = [
        {"message_name": start["message"], "name": name, "version": version, "start_id": start["id"]}
        for name, version, spec in rows
        for start in message_starts_of(spec)
    ]
    if entries:
        conn.execute(insert(process_message_starts), entries)


def message_starts_of(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The message start events of a process definition (as stored: the spec's JSON form)."""
    return [e for e in spec.get("elements") or [] if e.get("type") == "start" and e.get("message")]


MIGRATIONS += (
    Migration(6, "process message starts: an index of the processes each message starts", _index_message_starts),
)


def _run_outputs(conn: Connection) -> None:
    """Runs keep their output and (distributed mode) their queue job. Databases whose server tables
    migration 4 created from the current definitions have both columns already."""
    present = {column["name"] for column in inspect(conn).get_columns("server_runs")}
    json_type = "JSONB" if conn.dialect.name == "postgresql" else "JSON"
    if "output" not in present:
        conn.execute(text(f"ALTER TABLE server_runs ADD COLUMN output {json_type}"))
    if "job_id" not in present:
        conn.execute(text("ALTER TABLE server_runs ADD COLUMN job_id BIGINT"))


MIGRATIONS += (Migration(7, "server runs keep their output and queue job", _run_outputs),)


def _run_requests(conn: Connection) -> None:
    """Runs remember a cancel that reached them while executing, and the durability their client asked for."""
    present = {column["name"] for column in inspect(conn).get_columns("server_runs")}
    if "cancel_requested_at" not in present:
        kind = "TIMESTAMP WITH TIME ZONE" if conn.dialect.name == "postgresql" else "DATETIME"
        conn.execute(text(f"ALTER TABLE server_runs ADD COLUMN cancel_requested_at {kind}"))
    if "durability" not in present:
        conn.execute(text("ALTER TABLE server_runs ADD COLUMN durability VARCHAR(10)"))


MIGRATIONS += (Migration(8, "server runs remember a cancel while executing, and their durability", _run_requests),)


def _rollback_requests(conn: Connection) -> None:
    """Rollback requests become rows, so a unit of work running in another process sees them."""
    from checkpoints.lifecycle_tables import lifecycle_rollback_requests  # keeps this edit to one block

    lifecycle_rollback_requests.create(conn, checkfirst=True)


MIGRATIONS += (Migration(9, "lifecycle rollback requests: seen by a unit of work in any process", _rollback_requests),)

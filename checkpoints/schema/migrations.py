"""Ordered schema migrations for our tables, applied when a store opens.

A tiny runner rather than Alembic: the runtime migrates itself at open on both dialects, with no
migration scripts directory or CLI step for users to run, and each migration is DDL frozen as it was
written (:mod:`checkpoints.schema.ddl`), so no migration probes what an earlier one happened to create.
All run inside one transaction with the rows that record them; concurrent openers take turns (an
advisory lock on PostgreSQL, SQLite's write lock).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from checkpoints.clock import SystemClock
from checkpoints.errors import MigrationError
from checkpoints.schema import ddl
from checkpoints.schema.tables import schema_migrations

_ADVISORY_LOCK_ID = 7_310_512_001  # arbitrary, stable: "journeys schema"


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema version: its frozen DDL per dialect, then (rarely) a data step run after it."""

    version: int
    name: str
    statements: ddl.DDL
    then: Callable[[Connection], None] | None = None

    def apply(self, conn: Connection) -> None:
        for statement in self.statements[conn.dialect.name]:
            conn.execute(text(statement))
        if self.then is not None:
            self.then(conn)


def message_starts_of(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The message start events of a process definition (as stored: the spec's JSON form)."""
    return [e for e in spec.get("elements") or [] if e.get("type") == "start" and e.get("message")]


def _fill_message_starts(conn: Connection) -> None:
    """Index the message starts of the process deployments made before the index existed."""
    entries = []
    for name, version, spec in conn.execute(text(ddl.V6_DEPLOYED_SPECS)).all():
        parsed = spec if isinstance(spec, dict) else json.loads(spec)
        entries += [
            {"message_name": start["message"], "name": name, "version": version, "start_id": start["id"]}
            for start in message_starts_of(parsed)
        ]
    if entries:
        conn.execute(text(ddl.V6_INSERT_START), entries)


def _fill_assistant_name_keys(conn: Connection) -> None:
    """Case-fold the names of the assistants made before the column held them."""
    keys = [
        {"assistant_id": assistant_id, "name_key": name.casefold()}
        for assistant_id, name in conn.execute(text(ddl.V28_ASSISTANT_NAMES)).all()
    ]
    if keys:
        conn.execute(text(ddl.V28_SET_NAME_KEY), keys)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "core tables: designs, instances, events", ddl.V1_CORE),
    Migration(
        2,
        "lifecycle tables: journey states, transitions, units of work, validations, rollbacks, metrics",
        ddl.V2_LIFECYCLE,
    ),
    Migration(
        3,
        "process tables: deployments, rollouts, waits, timers, user tasks, subscriptions, buffered messages",
        ddl.V3_PROCESS,
    ),
    Migration(4, "server tables: threads, runs, run stream events", ddl.V4_SERVER),
    Migration(5, "lean journey tables: events keyed by (instance_id, seq), two unused indexes gone", ddl.V5_LEAN),
    Migration(
        6,
        "process message starts: an index of the processes each message starts",
        ddl.V6_MESSAGE_STARTS,
        _fill_message_starts,
    ),
    Migration(7, "server runs keep their output and queue job", ddl.V7_RUN_OUTPUTS),
    Migration(8, "server runs remember a cancel while executing, and their durability", ddl.V8_RUN_REQUESTS),
    Migration(9, "SQLite event log keyed by (instance_id, seq) like PostgreSQL's", ddl.V9_SQLITE_EVENTS_REKEYED),
    Migration(10, "lifecycle rollback requests: seen by a unit of work in any process", ddl.V10_ROLLBACK_REQUESTS),
    Migration(11, "agent guards: a circuit breaker and a rate-limit bucket per intent", ddl.V11_AGENT_GUARDS),
    Migration(12, "owners: who created each journey instance, thread and run, in which tenant", ddl.V12_OWNERSHIP),
    Migration(13, "flow control: idempotent start keys, concurrency slots, queued starts", ddl.V13_FLOW_CONTROL),
    Migration(14, "server crons: runs on a schedule, fired through process timers", ddl.V14_CRONS),
    Migration(15, "server assistants with versions; run options", ddl.V15_ASSISTANTS),
    Migration(16, "event payloads as compact JSON text, not JSONB: smaller rows", ddl.V16_EVENT_PAYLOAD_TEXT),
    Migration(17, "checkpoint retention marks: how far finished journeys were pruned, deleted", ddl.V17_RETENTION),
    Migration(19, "owners of server assistants and crons, in which tenant", ddl.V19_OWNED_ASSISTANTS_CRONS),
    Migration(20, "smaller event rows (keys per instance); an index for retention passes", ddl.V20_LEAN_EVENT_ROWS),
    Migration(
        21, "events keyed by the instance's number, not its id: smaller rows and indexes", ddl.V21_EVENTS_BY_INSTANCE_NO
    ),
    Migration(22, "process message ids: a message sent again with its id changes nothing", ddl.V22_MESSAGE_IDS),
    Migration(23, "process waits keep the interrupt id their thread is parked on", ddl.V23_WAIT_INTERRUPTS),
    Migration(24, "the encryption key's proof: another key, or none, is refused on open", ddl.V24_ENCRYPTION_CANARY),
    Migration(25, "process messages are sent for a tenant: buffered and with ids per tenant", ddl.V25_MESSAGE_TENANTS),
    Migration(26, "process names belong to the tenant that deployed them", ddl.V26_PROCESS_TENANTS),
    Migration(27, "server runs keep their place on their thread: the thread stream's numbers", ddl.V27_RUN_ORDINALS),
    Migration(
        28,
        "server assistants keep their name case-folded: searched by name whatever the script",
        ddl.V28_ASSISTANT_NAME_KEYS,
        _fill_assistant_name_keys,
    ),
    Migration(29, "server threads may have a time-to-live: deleted once they expire", ddl.V29_THREAD_TTL),
    Migration(30, "indexes for journeys listed newest first and designs looked up by type", ddl.V30_LISTING_INDEXES),
    Migration(31, "journey instances say what holds them back: agents no process serving them has", ddl.V31_HELD),
    Migration(32, "journey designs belong to the tenant that saved them", ddl.V32_DESIGN_TENANTS),
)
LATEST = MIGRATIONS[-1].version


def _migrate(conn: Connection, upto: int) -> list[int]:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _ADVISORY_LOCK_ID})
    else:
        # Python's sqlite3 begins a transaction only before a DML statement, so each CREATE would commit on
        # its own: another process opening the file meanwhile would create the same tables, and a failure
        # would leave half a migration. The write lock, taken first, makes the migration one transaction and
        # makes a second opener wait (busy_timeout), then find the versions applied.
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    for statement in ddl.SCHEMA_MIGRATIONS[conn.dialect.name]:
        conn.execute(text(statement))
    applied = set(conn.execute(select(schema_migrations.c.version)).scalars())
    known = {m.version for m in MIGRATIONS}
    if applied - known:
        raise MigrationError(
            f"the database has schema versions {sorted(applied - known)} that this runtime does not know; "
            "upgrade the journeys package",
        )
    done = []
    for migration in MIGRATIONS:
        if migration.version in applied or migration.version > upto:
            continue
        migration.apply(conn)
        conn.execute(
            insert(schema_migrations).values(
                version=migration.version, name=migration.name, applied_at=SystemClock().now()
            )
        )
        done.append(migration.version)
    return done


async def migrate(engine: AsyncEngine, *, upto: int = LATEST) -> list[int]:
    """Bring the schema up to date (or up to version ``upto``); returns the versions applied now."""
    async with engine.begin() as conn:
        return await conn.run_sync(_migrate, upto)

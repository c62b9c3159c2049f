"""Schema migrations that reshape tables existing databases already hold."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
import pytest
from procrastinate.schema import SchemaManager
from sqlalchemy import Connection, UniqueConstraint, inspect, text
from sqlalchemy.exc import DBAPIError

from checkpoints.assistants import AssistantFilter, AssistantStore
from checkpoints.database import create_engine_for
from checkpoints.events import NewEvent
from checkpoints.ownership import Owner, acting_as
from checkpoints.rebuild import rebuild_instance_index
from checkpoints.schema import ddl, lifecycle_tables, migrations, resilience_tables  # noqa: F401  (their tables join the metadata checked here)
from checkpoints.schema.migrations import LATEST, MIGRATIONS, Migration, migrate
from checkpoints.schema.queue import migrate_queue_schema
from checkpoints.schema.tables import metadata
from checkpoints.url import parse_store_url
from graphs.runtime import JourneyRuntime
from server.queues.procrastinate import conninfo, ensure_schema
from server.runs.store import RunStore

pytestmark = pytest.mark.fresh_database  # every test here is about what opening an empty database does

# journey_events as migration 1 created it before migration 6, with one event already in it.
OLD_EVENTS_TABLE = """
CREATE TABLE journey_events (
    id BIGSERIAL PRIMARY KEY,
    instance_id VARCHAR(200) NOT NULL,
    seq INTEGER NOT NULL,
    type VARCHAR(60) NOT NULL,
    step VARCHAR(100),
    payload JSONB NOT NULL,
    idempotency_key TEXT UNIQUE,
    created_at TIMESTAMPTZ NOT NULL,
    CONSTRAINT uq_journey_events_instance_seq UNIQUE (instance_id, seq)
);
CREATE INDEX ix_journey_events_type ON journey_events (type);
CREATE INDEX ix_journey_instances_journey_user ON journey_instances (journey_id, user_id);
"""
# What migrations 6 and later added, taken away again: their DDL is frozen, so it runs on the schema before them.
UNDO_MIGRATIONS_FROM_6 = """
DROP TABLE process_message_starts;
ALTER TABLE server_runs DROP COLUMN output, DROP COLUMN job_id, DROP COLUMN cancel_requested_at, DROP COLUMN durability;
DROP TABLE lifecycle_rollback_requests;
DROP TABLE agent_circuits;
DROP TABLE agent_rate_limits;
DROP INDEX ix_journey_instances_owner;
ALTER TABLE journey_instances DROP COLUMN owner, DROP COLUMN tenant, DROP COLUMN shared_group;
DROP INDEX ix_server_threads_owner;
ALTER TABLE server_threads DROP COLUMN tenant, DROP COLUMN shared_group;
ALTER TABLE server_runs DROP COLUMN tenant, DROP COLUMN shared_group;
ALTER TABLE server_threads DROP COLUMN runs_created;
ALTER TABLE server_runs DROP COLUMN ordinal;
DROP TABLE journey_start_keys, journey_concurrency_slots, journey_queued_starts;
DROP TABLE server_crons;
DROP TABLE journey_retention;
DROP INDEX ix_journey_instances_updated;
DROP SEQUENCE journey_events_instance_no;
DROP INDEX ix_journey_instances_created;
DROP INDEX ix_journey_designs_type;
ALTER TABLE journey_instances DROP COLUMN held;
ALTER TABLE journey_designs DROP COLUMN tenant;
"""
# Migrations 30 to 32 taken away again.
UNDO_MIGRATIONS_FROM_30 = (
    "DROP INDEX ix_journey_instances_created",
    "DROP INDEX ix_journey_designs_type",
    "ALTER TABLE journey_instances DROP COLUMN held",
    "ALTER TABLE journey_designs DROP COLUMN tenant",
)
# Migration 21 taken away again on PostgreSQL (an empty event log): keyed by (instance_id, seq) as before it.
UNDO_MIGRATION_21 = (
    "DROP SEQUENCE journey_events_instance_no",
    "DROP INDEX uq_journey_events_instance",
    "ALTER TABLE journey_events DROP COLUMN instance_no",
    "ALTER TABLE journey_events ADD CONSTRAINT pk_journey_events PRIMARY KEY (instance_id, seq)",
)
UNDO_MIGRATION_15 = ("server_assistant_versions", "server_assistants")  # and server_runs.options
# Migration 29 undone: the threads' time-to-live (its index first: SQLite drops no indexed column).
UNDO_MIGRATION_29 = (
    "DROP INDEX ix_server_threads_expires",
    *(f"ALTER TABLE server_threads DROP COLUMN {column}" for column in ("ttl_strategy", "ttl_seconds", "expires_at")),
)


def undo_migration_25(dialect: str) -> list[str]:
    """process_messages as migration 3 made it (process_message_ids goes with migration 22)."""
    return ["DROP TABLE process_messages", *(s for s in ddl.V3_PROCESS[dialect] if "process_messages (" in s)]


# A journey instance as a database made before today's migrations holds it (created and updated at :at).
OLD_INSTANCE = text(
    "INSERT INTO journey_instances (instance_id, journey_id, pattern, user_id, status, created_at, "
    "updated_at) VALUES ('old-1', 'j-1', 'structured', 'ana', 'in_progress', :at, :at)"
)


async def test_an_old_postgres_event_log_is_rekeyed_and_keeps_its_events(postgres_url: str) -> None:
    async with JourneyRuntime.open(postgres_url):  # then make it look as migrations 1-4 left it
        pass
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("DROP TABLE journey_events")
        conn.execute(OLD_EVENTS_TABLE)
        conn.execute(UNDO_MIGRATIONS_FROM_6)
        conn.execute("ALTER TABLE server_runs DROP COLUMN options")
        for table in UNDO_MIGRATION_15:
            conn.execute(f"DROP TABLE {table}")
        conn.execute("DROP TABLE process_message_ids")  # migration 22
        conn.execute("ALTER TABLE process_waits DROP COLUMN interrupt_id")  # migration 23
        conn.execute("DROP TABLE journeys_encryption")  # migration 24
        conn.execute("ALTER TABLE process_deployments DROP COLUMN tenant")  # migration 26
        for statement in UNDO_MIGRATION_29:
            conn.execute(statement)
        for statement in undo_migration_25("postgresql"):
            conn.execute(statement)
        conn.execute("DELETE FROM journeys_schema_migrations WHERE version >= 5")
        conn.execute(
            "INSERT INTO journey_events (instance_id, seq, type, payload, idempotency_key, created_at) "
            "VALUES ('i-1', 1, 'journey.started', '{}', 'i-1:started', %s)",
            (datetime(2026, 1, 1, tzinfo=UTC),),
        )

    async with JourneyRuntime.open(postgres_url) as rt:
        written = await rt.store.events.append("i-1", [NewEvent("step.completed", {"n": 1}, "a", "i-1:a:1")])
        again = await rt.store.events.append("i-1", [NewEvent("step.completed", {"n": 2}, "a", "i-1:a:1")])
        assert (written, again) == ([True], [False])
        events = await rt.history("i-1")
        assert [(e.seq, e.type, e.key) for e in events] == [
            (1, "journey.started", "i-1:started"),
            (2, "step.completed", "i-1:a:1"),
        ]

    with psycopg.connect(postgres_url) as conn:
        instance_indexes = {
            r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'journey_instances'")
        }
        columns = {
            r[0]
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'journey_events'"
            )
        }
        indexes = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'journey_events'")}
        primary = conn.execute(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
            "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = 'journey_events'::regclass AND i.indisprimary"
        ).fetchall()
    assert "id" not in columns
    assert indexes == {"pk_journey_events", "uq_journey_events_key", "uq_journey_events_instance"}
    assert {r[0] for r in primary} == {"instance_no", "seq"}
    assert instance_indexes == {
        "journey_instances_pkey",
        "ix_journey_instances_pattern_status",
        "ix_journey_instances_owner",
        "ix_journey_instances_updated",
        "ix_journey_instances_created",
    }


async def test_a_fresh_store_has_the_lean_event_log(store_url: str) -> None:
    async with JourneyRuntime.open(store_url) as rt:
        assert await rt.store.events.append("i-2", [NewEvent("a", {}, None, "k")]) == [True]
        assert await rt.store.events.append("i-2", [NewEvent("b", {})]) == [True]
        assert [(e.seq, e.type) for e in await rt.history("i-2")] == [(1, "a"), (2, "b")]


async def test_runs_made_before_outputs_were_kept_get_the_new_columns(durable_url: str) -> None:
    """Migration 7 adds server_runs.output and job_id to a database whose runs table predates them; its
    old runs still read, and new runs keep their output."""
    async with JourneyRuntime.open(durable_url) as rt:  # then make server_runs look as migration 4 left it
        async with rt.store.engine.begin() as conn:
            for column in ("output", "job_id", "cancel_requested_at", "durability", "options"):  # migrations 7, 8, 15
                await conn.execute(text(f"ALTER TABLE server_runs DROP COLUMN {column}"))
            await conn.execute(text("DROP TABLE lifecycle_rollback_requests"))  # migration 10
            for table in ("agent_circuits", "agent_rate_limits"):  # migration 11
                await conn.execute(text(f"DROP TABLE {table}"))
            for column in ("tenant", "shared_group"):  # migration 12
                await conn.execute(text(f"ALTER TABLE server_runs DROP COLUMN {column}"))
            await conn.execute(text("DROP INDEX ix_journey_instances_owner"))
            await conn.execute(text("DROP INDEX ix_server_threads_owner"))
            for table, columns in (
                ("journey_instances", ("owner", "tenant", "shared_group")),
                ("server_threads", ("tenant", "shared_group")),
            ):
                for column in columns:
                    await conn.execute(text(f"ALTER TABLE {table} DROP COLUMN {column}"))
            for table in ("journey_start_keys", "journey_concurrency_slots", "journey_queued_starts"):  # 13
                await conn.execute(text(f"DROP TABLE {table}"))
            for table in UNDO_MIGRATION_15:
                await conn.execute(text(f"DROP TABLE {table}"))
            await conn.execute(text("DROP TABLE server_crons"))  # migration 14
            await conn.execute(text("DROP TABLE journey_retention"))  # migration 17
            await conn.execute(text("DROP TABLE process_message_ids"))  # migration 22
            await conn.execute(text("ALTER TABLE process_waits DROP COLUMN interrupt_id"))  # migration 23
            await conn.execute(text("DROP TABLE journeys_encryption"))  # migration 24
            await conn.execute(text("ALTER TABLE process_deployments DROP COLUMN tenant"))  # migration 26
            await conn.execute(text("ALTER TABLE server_runs DROP COLUMN ordinal"))  # migration 27
            await conn.execute(text("ALTER TABLE server_threads DROP COLUMN runs_created"))
            for statement in UNDO_MIGRATION_29:
                await conn.execute(text(statement))
            for statement in undo_migration_25(conn.dialect.name):
                await conn.execute(text(statement))
            await conn.execute(text("DROP INDEX ix_journey_instances_updated"))  # migration 20
            for statement in UNDO_MIGRATIONS_FROM_30:
                await conn.execute(text(statement))
            if conn.dialect.name == "postgresql":  # (SQLite's rebuilds the event table whatever it was)
                await conn.execute(text("DROP INDEX uq_journey_events_key"))
                for statement in UNDO_MIGRATION_21:
                    await conn.execute(text(statement))
                await conn.execute(text("ALTER TABLE journey_events ADD UNIQUE (idempotency_key)"))
            await conn.execute(text("DELETE FROM journeys_schema_migrations WHERE version >= 7"))
        async with rt.store.engine.begin() as conn:
            now = rt.store.clock.now()
            await conn.execute(
                text(
                    "INSERT INTO server_runs (run_id, thread_id, assistant_id, status, kind, stream_modes, "
                    "multitask_strategy, metadata, attempts, created_at, updated_at) VALUES ('old-run', 't-1', "
                    "'structured', 'success', 'start', '[]', 'reject', '{}', 1, :now, :now)"
                ),
                {"now": now},
            )

    async with JourneyRuntime.open(durable_url) as rt:
        runs = RunStore(rt.store.backend, rt.store.clock)
        found = await runs.get_run("old-run")
        assert found is not None and found.status == "success" and found.output is None and found.job_id is None
        new = await runs.create_run(
            thread_id=None,
            assistant_id="structured",
            kind="start",
            input={"journey_type": "x"},
            command=None,
            stream_modes=[],
            multitask_strategy="reject",
            metadata={},
            principal="ana",
        )
        await runs.claim(new.run_id)
        finished = await runs.finish(new.run_id, "success", None, {"status": "completed"})
        assert finished is not None and finished.output == {"status": "completed"}
        assert (await runs.get_run(new.run_id)) == finished


def schema_drift(conn: Connection) -> list[str]:
    """How the database's tables differ from the definitions in checkpoints.schema.tables (names, nullability,
    primary keys, indexes and unique constraints); empty when the migrations built exactly those tables."""
    found = inspect(conn)
    drift = []
    for table in metadata.sorted_tables:
        if not found.has_table(table.name):
            drift.append(f"{table.name}: missing")
            continue
        columns = {c["name"]: c["nullable"] for c in found.get_columns(table.name)}
        wanted = {c.name: c.nullable for c in table.columns}
        if columns != wanted:
            drift.append(f"{table.name}: columns {columns} != {wanted}")
        primary = set(found.get_pk_constraint(table.name)["constrained_columns"])
        if primary != {c.name for c in table.primary_key.columns}:
            drift.append(f"{table.name}: primary key {primary}")
        indexes = {i["name"]: tuple(i["column_names"]) for i in found.get_indexes(table.name) if not i["unique"]}
        wanted_indexes = {str(i.name): tuple(c.name for c in i.columns) for i in table.indexes if not i.unique}
        if indexes != wanted_indexes:
            drift.append(f"{table.name}: indexes {indexes} != {wanted_indexes}")
        uniques = {frozenset(u["column_names"]) for u in found.get_unique_constraints(table.name)}
        uniques |= {frozenset(i["column_names"]) for i in found.get_indexes(table.name) if i["unique"]}
        wanted_uniques = {
            frozenset(c.name for c in u.columns) for u in table.constraints if isinstance(u, UniqueConstraint)
        }
        wanted_uniques |= {frozenset([c.name]) for c in table.columns if c.unique}
        wanted_uniques |= {frozenset(c.name for c in i.columns) for i in table.indexes if i.unique}
        if uniques != wanted_uniques:
            drift.append(f"{table.name}: unique {uniques} != {wanted_uniques}")
    return drift


async def test_a_fresh_store_has_exactly_the_defined_tables(store_url: str) -> None:
    """The migrations, applied in order on an empty database, give exactly the tables the code defines: a
    table changed without a migration (or a migration that drifts from its table) fails here."""
    async with JourneyRuntime.open(store_url) as rt, rt.store.engine.connect() as conn:
        assert await conn.run_sync(schema_drift) == []


async def test_a_database_made_by_the_oldest_migration_upgrades_to_todays_schema(durable_url: str) -> None:
    """A database that only migration 1 ever touched, with a journey in it, opens on today's runtime: every
    later migration applies as frozen, the schema is today's, and the journey's log reads and grows."""
    engine = create_engine_for(parse_store_url(durable_url))
    try:
        assert await migrate(engine, upto=1) == [1]
        async with engine.begin() as conn:
            inspector = await conn.run_sync(
                lambda sync: {c["name"] for c in inspect(sync).get_columns("journey_events")}
            )
            assert "id" in inspector  # the log as migration 1 made it, with its surrogate id
            created = datetime(2026, 1, 1, tzinfo=UTC)
            await conn.execute(OLD_INSTANCE, {"at": created})
            await conn.execute(
                text(
                    "INSERT INTO journey_events (instance_id, seq, type, payload, idempotency_key, created_at) "
                    "VALUES ('old-1', 1, 'journey.started', '{}', 'old-1:started', :at)"
                ),
                {"at": created},
            )
    finally:
        await engine.dispose()

    async with JourneyRuntime.open(durable_url) as rt:
        async with rt.store.engine.connect() as conn:
            assert await conn.run_sync(schema_drift) == []
            versions = (await conn.execute(text("SELECT version FROM journeys_schema_migrations"))).scalars()
            assert sorted(versions) == [m.version for m in MIGRATIONS]
        assert await rt.store.events.append("old-1", [NewEvent("step.completed", {"n": 1}, "a", "old-1:a")]) == [True]
        events = await rt.history("old-1")
        assert [(e.seq, e.type, e.key) for e in events] == [
            (1, "journey.started", "old-1:started"),
            (2, "step.completed", "old-1:a"),
        ]
        assert events[0].created_at == created
        instance = await rt.store.index.get_instance("old-1")
        assert instance is not None and instance.created_at == created


def test_procrastinate_migrations_are_applied_on_upgrade(postgres_url: str, tmp_path: Path) -> None:
    """The queue's schema is installed once and recorded. A schema installed before the record existed is
    recorded, not reinstalled, and a migration a newer procrastinate brings is then applied, once."""
    target = conninfo(postgres_url)
    ensure_schema(postgres_url)
    shipped = Path(SchemaManager.get_migrations_path())
    with psycopg.connect(target) as conn:
        recorded = {row[0] for row in conn.execute("SELECT name FROM journeys_queue_migrations")}
        assert recorded == {path.name for path in shipped.glob("*.sql")}
        conn.execute("DROP TABLE journeys_queue_migrations")  # as installed before the record existed
        conn.commit()

    newer = tmp_path / "migrations"
    shutil.copytree(shipped, newer)
    (newer / "99.00.00_01_pre_add_probe.sql").write_text(
        "CREATE TABLE procrastinate_probe (id integer); INSERT INTO procrastinate_probe VALUES (1);"
    )
    assert migrate_queue_schema(target, migrations=newer) == ["99.00.00_01_pre_add_probe.sql"]
    assert migrate_queue_schema(target, migrations=newer) == []
    ensure_schema(postgres_url)  # the shipped files: nothing left to apply
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT count(*) FROM procrastinate_probe").fetchone() == (1,)
        recorded = {row[0] for row in conn.execute("SELECT name FROM journeys_queue_migrations")}
    assert recorded == {path.name for path in newer.glob("*.sql")}


def test_processes_opening_a_fresh_database_together_all_start(durable_url: str) -> None:
    """API processes and workers (or two notebooks) start together on a new database: each runs the
    checkpointer's own ``setup()`` as well as ours. A second ``CREATE TABLE IF NOT EXISTS`` racing the first
    one fails in PostgreSQL (``type ... already exists``). On SQLite, unless openers take turns, a second
    opener's migration creates a table the first has just made (``table ... already exists``), and two
    official stores' ``setup()`` apply one migration twice (``duplicate column name``)."""
    script = (  # each child imports, says so, then opens when told: the openers race from one moment
        "import asyncio, sys\n"
        "from graphs.runtime import JourneyRuntime\n"
        "async def main() -> None:\n"
        "    async with JourneyRuntime.open(sys.argv[1], pool_size=2):\n"
        "        pass\n"
        "print('ready', flush=True)\n"
        "sys.stdin.readline()\n"
        "asyncio.run(main())\n"
    )
    children = [
        subprocess.Popen(
            [sys.executable, "-c", script, durable_url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    for child in children:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
    for child in children:
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
    failures = [err for child in children if (err := child.communicate(timeout=120)[1]) and child.returncode]
    assert failures == []


async def test_a_migration_that_fails_leaves_nothing_of_itself(
    durable_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A migration runs in one transaction with the row recording it: one that fails half-way (a crash, a
    statement the database refuses) leaves neither its tables nor its row, so the next open applies it whole.
    On SQLite each CREATE used to commit on its own, and the next open failed with "table ... already exists"."""
    broken = Migration(
        LATEST + 1, "a table, then a statement that fails", {d: _HALF_DONE for d in ("postgresql", "sqlite")}
    )
    monkeypatch.setattr(migrations, "MIGRATIONS", (*MIGRATIONS, broken))
    engine = create_engine_for(parse_store_url(durable_url))
    try:
        with pytest.raises(DBAPIError):
            await migrate(engine, upto=LATEST + 1)
        async with engine.connect() as conn:
            tables = await conn.run_sync(lambda sync: inspect(sync).get_table_names())
        assert "half_done" not in tables and "schema_migrations" not in tables  # nothing of the first open
        monkeypatch.setattr(migrations, "MIGRATIONS", MIGRATIONS)
        assert await migrate(engine) == [m.version for m in MIGRATIONS]  # the next open applies them all
    finally:
        await engine.dispose()


_HALF_DONE = ("CREATE TABLE half_done (id integer)", "INSERT INTO no_such_table VALUES (1)")


async def test_event_payloads_are_stored_as_compact_json_text_and_older_ones_read_the_same(durable_url: str) -> None:
    """Migration 16: the event log's payloads are JSON text, written without blanks (smaller rows than
    JSONB's); an event written before it reads as it did, and new events are stored compact."""
    url = parse_store_url(durable_url)
    engine = create_engine_for(url)
    older = {"agent": "noop", "output": {"ok": True, "items": [1, 2]}, "next_step": None}
    try:
        assert await migrate(engine, upto=15) == list(range(1, 16))
        async with engine.begin() as conn:
            at = datetime(2026, 1, 1, tzinfo=UTC)
            await conn.execute(OLD_INSTANCE, {"at": at})
            cast = "CAST(:payload AS JSONB)" if url.kind == "postgres" else ":payload"
            await conn.execute(
                text(
                    "INSERT INTO journey_events (instance_id, seq, type, payload, idempotency_key, created_at) "
                    f"VALUES ('old-1', 1, 'step.completed', {cast}, 'old-1:a', :at)"
                ),
                {"payload": json.dumps(older), "at": at},
            )
    finally:
        await engine.dispose()

    newer = {"intent": "bench.noop", "output": {"ok": True}, "attempts": 1, "duration_ms": 0.5}
    async with JourneyRuntime.open(durable_url) as rt:
        assert await rt.store.events.append("old-1", [NewEvent("step.completed", newer, "b", "old-1:b")]) == [True]
        assert [e.payload for e in await rt.history("old-1")] == [older, newer]
        async with rt.store.engine.connect() as conn:
            if url.kind == "postgres":
                kind = "SELECT data_type FROM information_schema.columns WHERE table_name = 'journey_events' "
                kind += "AND column_name = 'payload'"
                assert (await conn.execute(text(kind))).scalar_one() == "json"
            stored = (
                await conn.execute(text("SELECT CAST(payload AS TEXT) FROM journey_events WHERE seq = 2"))
            ).scalar_one()
        assert stored == json.dumps(newer, separators=(",", ":"))


async def test_event_rows_made_before_migration_20_are_shrunk_and_read_as_they_did(durable_url: str) -> None:
    """Migration 20: an event key is stored without the instance id it starts with and is unique per instance,
    and a first event drops the copies of the design and user its payload names; the log reads as before
    (keys, payloads), the index rebuilds from it, and a logged key still makes an append a no-op."""
    url = parse_store_url(durable_url)
    engine = create_engine_for(url)
    at = datetime(2026, 1, 1, tzinfo=UTC)
    first = {"journey_id": "j-1", "user_id": "ana", "context": {}}
    marks = {"instance_design": "j-1", "instance_pattern": "structured", "instance_user": "ana"}
    compact = partial(json.dumps, separators=(",", ":"))  # as the runtime writes payloads
    rows = [  # (instance, seq, type, payload as stored before, key)
        ("old-1", 1, "journey.started", {**first, **marks}, None),
        ("old-1", 2, "step.completed", {"output": {"ok": True}}, "old-1:a:1"),
        ("old-1", 3, "wait.completed", {}, "w-9:completed"),  # a key that does not start with its instance
        ("old-2", 1, "session.started", {"user_id": "bo", **marks, "instance_user": "bo"}, "old-2:started"),
    ]
    try:
        assert await migrate(engine, upto=19) == [m.version for m in MIGRATIONS if m.version <= 19]
        async with engine.begin() as conn:
            await conn.execute(OLD_INSTANCE, {"at": at})
            for instance_id, seq, kind, payload, key in rows:
                await conn.execute(
                    text(
                        "INSERT INTO journey_events (instance_id, seq, type, payload, idempotency_key, created_at) "
                        "VALUES (:i, :seq, :kind, :payload, :key, :at)"
                    ),
                    {"i": instance_id, "seq": seq, "kind": kind, "payload": compact(payload), "key": key, "at": at},
                )
    finally:
        await engine.dispose()

    async with JourneyRuntime.open(durable_url) as rt:
        async with rt.store.engine.connect() as conn:
            assert await conn.run_sync(schema_drift) == []
            stored = (
                await conn.execute(
                    text(  # each event with the id its instance's first event records (migration 21)
                        "SELECT f.instance_id, e.idempotency_key, CAST(e.payload AS TEXT) FROM journey_events e "
                        "JOIN journey_events f ON f.instance_no = e.instance_no AND f.seq = 1 "
                        "ORDER BY f.instance_id, e.seq"
                    )
                )
            ).all()
        assert [(i, k) for i, k, _ in stored] == [
            ("old-1", None),
            ("old-1", ":a:1"),
            ("old-1", "w-9:completed"),
            ("old-2", ":started"),
        ]
        assert json.loads(stored[0][2]) == {**first, "instance_pattern": "structured"}
        # A payload whose user is not the instance's user keeps the mark (it says something the payload does not).
        assert json.loads(stored[3][2]) == {"user_id": "bo", "instance_design": "j-1", "instance_pattern": "structured"}
        events = await rt.history("old-1")
        assert [(e.seq, e.key, e.payload) for e in events] == [
            (1, None, first),
            (2, "old-1:a:1", {"output": {"ok": True}}),
            (3, "w-9:completed", {}),
        ]
        found = await rt.store.events.find_by_key("old-1", "old-1:a:1")
        assert found is not None and found.seq == 2
        assert await rt.store.events.append("old-1", [NewEvent("step.completed", {}, "a", "old-1:a:1")]) == [False]
        # The same key on another instance is that instance's own.
        assert await rt.store.events.append("old-2", [NewEvent("step.completed", {}, "a", "w-9:completed")]) == [True]
        rebuilt = await rebuild_instance_index(rt.store.backend)
        assert rebuilt.underivable == [] and "old-1" not in rebuilt.corrected  # its row agrees with its log
        instance = await rt.store.index.get_instance("old-2")
        assert instance is not None and (instance.journey_id, instance.user_id) == ("j-1", "bo")


async def test_event_rows_made_before_migration_21_are_numbered_and_read_as_they_did(durable_url: str) -> None:
    """Migration 21: events name their instance by a number (the first event alone keeps the id); every event
    of a log made before it reads back as it did, appends go on after it, keys still deduplicate, a new
    instance gets a number of its own, and the instance index rebuilds from the log."""
    url = parse_store_url(durable_url)
    engine = create_engine_for(url)
    at = datetime(2026, 1, 1, tzinfo=UTC)
    rows = [  # (instance, seq, type, step, payload, stored key), two logs interleaved, one with no index row
        ("old-1", 1, "journey.started", None, {"journey_id": "j-1", "user_id": "ana"}, None),
        ("old-2", 1, "note", None, {"n": 1}, "k-1"),
        ("old-1", 2, "step.completed", "a", {"output": {"ok": True}}, ":a:1"),
        ("old-2", 2, "note", None, {"n": 2}, None),
        ("old-1", 3, "wait.completed", None, {}, "w-9:completed"),
    ]
    try:
        assert await migrate(engine, upto=20) == [m.version for m in MIGRATIONS if m.version <= 20]
        async with engine.begin() as conn:
            await conn.execute(OLD_INSTANCE, {"at": at})
            for instance_id, seq, kind, step, payload, key in rows:
                await conn.execute(
                    text(
                        "INSERT INTO journey_events (instance_id, seq, type, step, payload, idempotency_key, "
                        "created_at) VALUES (:i, :seq, :kind, :step, :payload, :key, :at)"
                    ),
                    {"i": instance_id, "seq": seq, "kind": kind, "step": step, "payload": json.dumps(payload)}
                    | {"key": key, "at": at},
                )
    finally:
        await engine.dispose()

    async with JourneyRuntime.open(durable_url) as rt:
        async with rt.store.engine.connect() as conn:
            assert await conn.run_sync(schema_drift) == []
            stored = (
                await conn.execute(text("SELECT instance_no, seq, instance_id FROM journey_events ORDER BY 1, 2"))
            ).all()
        numbers = {row[2]: row[0] for row in stored if row[1] == 1}
        assert sorted(numbers) == ["old-1", "old-2"] and len(set(numbers.values())) == 2
        assert [(no, seq, iid) for no, seq, iid in stored if iid is None] == [
            (numbers["old-1"], 2, None),
            (numbers["old-1"], 3, None),
            (numbers["old-2"], 2, None),
        ]
        assert [(e.instance_id, e.seq, e.type, e.step, e.key, e.payload) for e in await rt.history("old-1")] == [
            ("old-1", 1, "journey.started", None, None, {"journey_id": "j-1", "user_id": "ana"}),
            ("old-1", 2, "step.completed", "a", "old-1:a:1", {"output": {"ok": True}}),
            ("old-1", 3, "wait.completed", None, "w-9:completed", {}),
        ]
        assert [(e.seq, e.key) for e in await rt.history("old-2")] == [(1, "k-1"), (2, None)]
        found = await rt.store.events.find_by_key("old-1", "old-1:a:1")
        assert found is not None and found.seq == 2
        assert await rt.store.events.append("old-1", [NewEvent("step.completed", {}, "a", "old-1:a:1")]) == [False]
        assert await rt.store.events.append("old-1", [NewEvent("step.completed", {}, "b", "old-1:b:2")]) == [True]
        assert [e.seq for e in await rt.history("old-1")] == [1, 2, 3, 4]
        # A log begun after the migration gets a number no older log has.
        assert await rt.store.events.append("new-1", [NewEvent("note", {}, None, "k-1")]) == [True]
        assert [(e.seq, e.key) for e in await rt.history("new-1")] == [(1, "k-1")]
        assert [e.seq for e in await rt.history("old-2")] == [1, 2]
        rebuilt = await rebuild_instance_index(rt.store.backend)
        assert rebuilt.instances == 3 and "old-1" not in rebuilt.corrected


async def test_runs_made_before_migration_27_get_their_places_on_their_threads(durable_url: str) -> None:
    """Migration 27: each run keeps its place among its thread's runs (the v3 thread stream's numbers), those
    made before it numbered in creation order; the next run on an old thread comes after them."""
    engine = create_engine_for(parse_store_url(durable_url))
    made = datetime(2026, 1, 1, tzinfo=UTC)
    try:
        assert await migrate(engine, upto=26) == [m.version for m in MIGRATIONS if m.version <= 26]
        async with engine.begin() as conn:
            for thread_id in ("t-1", "t-2"):
                await conn.execute(
                    text(
                        "INSERT INTO server_threads (thread_id, metadata, created_at, updated_at) "
                        "VALUES (:t, '{}', :at, :at)"
                    ),
                    {"t": thread_id, "at": made},
                )
            # t-1's runs inserted out of order; two made at one instant are told apart by their ids.
            old_runs = [("r-b2", "t-1", 2), ("r-a", "t-1", 1), ("r-c", "t-1", 3), ("r-b1", "t-1", 2), ("r-x", "t-2", 5)]
            for run_id, thread_id, minute in old_runs:
                await conn.execute(
                    text(
                        "INSERT INTO server_runs (run_id, thread_id, assistant_id, status, kind, stream_modes, "
                        "multitask_strategy, metadata, attempts, created_at, updated_at) VALUES (:r, :t, 'guide', "
                        "'success', 'start', '[]', 'reject', '{}', 1, :at, :at)"
                    ),
                    {"r": run_id, "t": thread_id, "at": made.replace(minute=minute)},
                )
    finally:
        await engine.dispose()

    async with JourneyRuntime.open(durable_url) as rt:
        async with rt.store.engine.connect() as conn:
            assert await conn.run_sync(schema_drift) == []
        runs = RunStore(rt.store.backend, rt.store.clock)
        places = {r.run_id: r.ordinal for t in ("t-1", "t-2") for r in await runs.list_runs(t)}
        assert places == {"r-a": 1, "r-b1": 2, "r-b2": 3, "r-c": 4, "r-x": 1}
        await runs.delete_run("r-c")  # the last one gone: its place is not given again
        new = await runs.create_run(
            thread_id="t-1",
            assistant_id="guide",
            kind="start",
            input=None,
            command=None,
            stream_modes=[],
            multitask_strategy="enqueue",
            metadata={},
            principal=None,
        )
        assert new.ordinal == 5 and (await runs.get_run(new.run_id)) == new


async def test_assistants_made_before_migration_28_are_found_by_name_whatever_the_case(durable_url: str) -> None:
    """Migration 28: the names of assistants made before it are case-folded, so a search by name finds them."""
    engine = create_engine_for(parse_store_url(durable_url))
    made = datetime(2026, 1, 1, tzinfo=UTC)
    try:
        assert await migrate(engine, upto=27) == [m.version for m in MIGRATIONS if m.version <= 27]
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO server_assistants (assistant_id, graph_id, name, config, context, metadata, version, "
                    "created_at, updated_at) VALUES ('a-1', 'guide', 'ÉCOLE Straße', '{}', '{}', '{}', 1, :at, :at)"
                ),
                {"at": made},
            )
    finally:
        await engine.dispose()

    async with JourneyRuntime.open(durable_url) as rt:
        async with rt.store.engine.connect() as conn:
            assert await conn.run_sync(schema_drift) == []
        store = AssistantStore(rt.store.backend, rt.store.clock)
        for name in ("école", "STRASSE", "ole st"):
            assert [a.assistant_id for a in await store.search(AssistantFilter(name=name))] == ["a-1"], name


async def test_designs_stored_before_migration_32_stay_every_tenants(durable_url: str) -> None:
    """Migration 32: a design belongs to the tenant whose caller saved it; those stored before it belong to none, so
    every tenant starts them as before (the journeys of any tenant running them go on too)."""
    engine = create_engine_for(parse_store_url(durable_url))
    made = datetime(2026, 1, 1, tzinfo=UTC)
    spec = {"journey_type": "intake", "steps": [{"step_id": "collect"}, {"step_id": "review"}]}
    try:
        assert await migrate(engine, upto=31) == [m.version for m in MIGRATIONS if m.version <= 31]
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO journey_designs (journey_id, pattern, journey_type, spec, created_at) "
                    "VALUES ('journey_old', 'structured', 'intake', :spec, :at)"
                ),
                {"spec": json.dumps(spec), "at": made},
            )
    finally:
        await engine.dispose()

    async with JourneyRuntime.open(durable_url) as rt:
        async with rt.store.engine.connect() as conn:
            assert await conn.run_sync(schema_drift) == []
        design = await rt.store.index.get_design("journey_old")
        assert design is not None and design.tenant is None
        for owner in (Owner("ana", "acme"), Owner("bo", "globex"), None):
            with acting_as(owner):
                user = owner.principal if owner else "rt"
                assert (await rt.structured.execute_journey("journey_old", user))["current_step"] == "collect"
        with acting_as(Owner("ana", "acme")):
            mine = (await rt.structured.design_journey("intake", spec=spec))["journey_id"]
        assert (await rt.store.index.get_design(mine)).tenant == "acme"  # type: ignore[union-attr]


async def test_journeys_listed_newest_first_and_designs_looked_up_by_type_read_an_index(
    durable_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Migration 30: the dashboard's and `journeys instances list`'s newest journeys, and a shared design's look-up
    by its pattern and type, are read from an index, not from a scan and a sort of every row (100,000 instances:
    56-97 ms, 0.1 ms from the index on PostgreSQL)."""
    async with JourneyRuntime.open(durable_url) as rt:
        backend, sent, inner = rt.store.backend, [], [False]
        originals = {name: getattr(backend, name) for name in ("query", "read")}
        for name, original in originals.items():  # a backend's read may call its query: recorded once

            async def recorded(statement: Any, params: Any = None, *, _original: Any = original) -> Any:
                if inner[0]:
                    return await _original(statement, params)
                sent.append(statement.params(params or {}))
                inner[0] = True
                try:
                    return await _original(statement, params)
                finally:
                    inner[0] = False

            monkeypatch.setattr(backend, name, recorded)
        await rt.store.index.list_instances(limit=50, newest_first=True)
        await rt.store.index.designs_of_type("saga", "review")
        monkeypatch.undo()
        plans = []
        async with rt.store.engine.connect() as conn:
            if backend.postgres:
                await conn.exec_driver_sql("SET enable_seqscan = off")  # the plan of tables too big to scan
            for statement in sent:
                sql = str(statement.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
                explain = "EXPLAIN " if backend.postgres else "EXPLAIN QUERY PLAN "
                plans.append(" ".join(str(row[-1]) for row in await conn.exec_driver_sql(explain + sql)))
    listed, designs = plans
    assert "ix_journey_instances_created" in listed, listed
    assert "ix_journey_designs_type" in designs, designs

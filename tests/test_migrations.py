"""Schema migrations that reshape tables existing databases already hold."""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg
from sqlalchemy import text

from checkpoints.events import NewEvent
from graphs.runtime import JourneyRuntime
from server.runs import RunStore

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


async def test_an_old_postgres_event_log_is_rekeyed_and_keeps_its_events(postgres_url: str) -> None:
    async with JourneyRuntime.open(postgres_url):  # then make it look as migrations 1-4 left it
        pass
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("DROP TABLE journey_events")
        conn.execute(OLD_EVENTS_TABLE)
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
    assert indexes == {"pk_journey_events", "journey_events_idempotency_key_key"}
    assert {r[0] for r in primary} == {"instance_id", "seq"}
    assert instance_indexes == {"journey_instances_pkey", "ix_journey_instances_pattern_status"}


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
            await conn.execute(text("ALTER TABLE server_runs DROP COLUMN output"))
            await conn.execute(text("ALTER TABLE server_runs DROP COLUMN job_id"))
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

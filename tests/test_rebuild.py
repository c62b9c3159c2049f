"""Event sourcing: the instance index is derived from the event log, and `journeys rebuild` restores it
(status and design of every instance) after a mixed workload of every pattern."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from sqlalchemy import delete, select, text, update
from typer.testing import CliRunner

from agents import AgentCallFailedError, FailingAgent
from checkpoints import VirtualClock
from checkpoints import rebuild as rebuild_module
from checkpoints.database import OUTAGE
from checkpoints.index import Instance
from checkpoints.redaction import redact
from checkpoints.schema.lifecycle_tables import lifecycle_journey_states
from checkpoints.schema.tables import journey_instances
from graphs import READY_TO_START, JourneyRuntime
from server.cli import app as cli
from tests.test_server_database_outage import outage

pytestmark = pytest.mark.slow
SAGA_HANDLERS = {
    "upload_content": "delete_uploaded_content",
    "analyze_content": "revert_analysis",
    "transform_data": "revert_transformation",
}
EXPENSE = {
    "name": "expense",
    "elements": [
        {"type": "start", "id": "start"},
        {"type": "user_task", "id": "approve", "title": "Approve", "candidate_groups": ["finance"]},
        {"type": "end", "id": "end"},
    ],
    "flows": ["start -> approve", "approve -> end"],
}


async def mixed_workload(url: str) -> dict[str, tuple[str, ...]]:
    """Journeys of every pattern left in every kind of status; answers the index (status, design) by id."""
    async with JourneyRuntime.open(url, clock=VirtualClock()) as runtime:
        runtime.agents.register("transform_data", FailingAgent("transform_data", permanent=True), replace=True)
        saga = await runtime.saga.design_saga_journey("enterprise_migration", {}, compensation_handlers=SAGA_HANDLERS)
        execution = await runtime.saga.execute_saga_journey(saga["journey_id"], "u1", {})
        for result in ({"files": 3}, {"entities": 2}, {"rows": 10}):
            await runtime.saga.advance_saga_step(
                saga_id=execution["saga_id"], journey_id=saga["journey_id"], user_id="u1", step_result=result
            )
        journey = await runtime.structured.design_journey("content_migration", {})
        for user in ("waiting", "failing"):
            await runtime.structured.execute_journey(journey["journey_id"], user, {})
        for result in ({"files": 1}, {"entities": 1}):
            await runtime.structured.advance_journey_step(journey["journey_id"], "failing", result)
        with pytest.raises(AgentCallFailedError):
            await runtime.structured.advance_journey_step(journey["journey_id"], "failing", {"rows": 1})
        mvp = await runtime.mvp.start_mvp_journey(user_id="u2", initial_pillar="content")
        await runtime.mvp.navigate_to_pillar(session_id=mvp["session"]["session_id"], pillar_id="insights")
        await runtime.lifecycle.start_journey("client-1", metrics=READY_TO_START)
        await runtime.processes.deploy(EXPENSE)
        for key in ("approved", "open", "cancelled"):
            await runtime.processes.start("expense", business_key=key)
        tasks = await runtime.processes.inbox.list_tasks(group="finance")
        done = await runtime.processes.inbox.complete(
            tasks[0]["task_id"], user="ana", groups=["finance"], payload={"approved": True}
        )
        await runtime.processes.cancel(tasks[-1]["instance_id"], reason="withdrawn")
        await runtime.processes.deploy({**EXPENSE, "version": 2, "description": "second version"})
        moved = await runtime.processes.migrate(tasks[1]["instance_id"], to_version=2)  # on another design
        instances = await runtime.store.index.list_instances(limit=100)
    index = row_view(instances)
    statuses = sorted(i.status for i in instances)
    assert {"compensated", "failed", "completed", "cancelled", "in_progress"} <= set(statuses), statuses
    assert done["status"] == "completed" and moved["version"] == 2
    return index


async def corrupt_and_read(url: str, *, corrupt: bool) -> dict[str, tuple[str, ...]]:
    async with JourneyRuntime.open(url) as runtime:
        if corrupt:  # what a hand-edited or half-lost derived table looks like
            lost = update(journey_instances).values(status="lost", journey_id="lost", user_id="lost")
            await runtime.store.backend.write([lost], {})
            some = (await runtime.store.index.list_instances(limit=3))[::2]
            gone = delete(journey_instances).where(journey_instances.c.instance_id.in_([i.instance_id for i in some]))
            await runtime.store.backend.write([gone], {})
        return row_view(await runtime.store.index.list_instances(limit=100))


def row_view(instances: list[Instance]) -> dict[str, tuple[str, ...]]:
    return {i.instance_id: (i.journey_id, i.pattern, i.user_id, i.status, str(i.created_at)) for i in instances}


def test_journeys_rebuild_restores_the_instance_index_from_the_event_log(durable_url: str) -> None:
    live: dict[str, Any] = asyncio.run(mixed_workload(durable_url))
    corrupted = asyncio.run(corrupt_and_read(durable_url, corrupt=True))
    assert len(corrupted) == len(live) - 2 and {row[3] for row in corrupted.values()} == {"lost"}
    result = CliRunner().invoke(cli, ["rebuild", "--database-url", durable_url])
    assert result.exit_code == 0, result.output
    assert f"{len(live)} instances read, {len(live)} corrected" in result.output
    assert asyncio.run(corrupt_and_read(durable_url, corrupt=False)) == live
    again = CliRunner().invoke(cli, ["rebuild", "--database-url", durable_url])
    assert f"{len(live)} instances read, 0 corrected" in again.output  # the live index equals the rebuilt one


ODD_KEYS = ("ana@example.com", "order.4111111111111111", "acme@example.com")  # e-mail addresses, a card-like key


async def odd_identities(url: str) -> dict[str, Any]:
    """Identities that redaction would hide: a structured journey's user and a process task's assignee
    (who claims and completes it) named by an e-mail address, a process whose business key holds a number
    that passes as a card's, a lifecycle journey's client named by an e-mail address. Answers the index,
    the inbox and the lifecycle states."""
    async with JourneyRuntime.open(url, clock=VirtualClock()) as runtime:
        ana, order, acme = ODD_KEYS
        journey = await runtime.structured.design_journey("content_migration", {})
        await runtime.structured.execute_journey(journey["journey_id"], ana, {})
        await runtime.processes.deploy(EXPENSE)
        await runtime.processes.start("expense", business_key=order)
        [task] = await runtime.processes.inbox.list_tasks(group="finance")
        await runtime.processes.inbox.claim(task["task_id"], ana, groups=["finance"])
        await runtime.processes.start("expense", business_key="second")
        await runtime.lifecycle.start_journey(acme, metrics=READY_TO_START, metadata={"contact": "ops@example.com"})
        return await identities_of(runtime)


async def identities_of(runtime: JourneyRuntime) -> dict[str, Any]:
    """The index, the inbox's claims and the lifecycle states' clients, as they stand."""
    inbox = await runtime.processes.inbox.list_tasks(status=None)
    states = await runtime.store.backend.query(select(lifecycle_journey_states.c.client_id))
    return {
        "index": row_view(await runtime.store.index.list_instances(limit=100)),
        "inbox": sorted((t["task_id"], t["claimed_by"], t["status"]) for t in inbox),
        "clients": [row["client_id"] for row in states],
    }


async def forget_identities_in_the_log(url: str) -> None:
    """The log as a runtime before the fix wrote it: its first events recorded the identities redacted."""
    async with JourneyRuntime.open(url) as runtime, runtime.store.engine.begin() as conn:
        postgres = conn.dialect.name == "postgresql"
        replaced = (
            "CAST(REPLACE(CAST(payload AS TEXT), :key, :hidden) AS JSON)"
            if postgres
            else "REPLACE(payload, :key, :hidden)"
        )
        for key in ODD_KEYS:
            hidden = json.dumps(redact(key))[1:-1]
            await conn.execute(text(f"UPDATE journey_events SET payload = {replaced}"), {"key": key, "hidden": hidden})


def test_a_rebuild_keeps_identities_that_look_like_secrets(durable_url: str) -> None:
    """Events were stored redacted: a user, an assignee or a client named by an e-mail address was logged as
    ``[REDACTED]`` (so the audit trail could not say who claimed a task), and ``journeys rebuild`` then
    "corrected" the index, the inbox and the lifecycle states to it, cutting people off from their journeys
    and tasks. The log is kept whole now, and a log written before, with them redacted, no longer
    overwrites the views' (their rows agree up to redaction)."""
    live = asyncio.run(odd_identities(durable_url))
    assert {row[2] for row in live["index"].values()} >= {ODD_KEYS[0], ODD_KEYS[1]}
    assert ODD_KEYS[0] in {claimed for _task, claimed, _status in live["inbox"]} and live["clients"] == [ODD_KEYS[2]]
    for forget in (False, True):
        if forget:
            asyncio.run(forget_identities_in_the_log(durable_url))
        result = CliRunner().invoke(cli, ["rebuild", "--database-url", durable_url])
        assert "0 corrected" in result.output and "0 views corrected" in result.output, result.output
        assert result.output.count("0 views corrected") == 2, result.output
        assert asyncio.run(read_identities(durable_url)) == live


async def read_identities(url: str) -> dict[str, Any]:
    async with JourneyRuntime.open(url) as runtime:
        return await identities_of(runtime)


async def test_a_rebuild_on_a_live_database_keeps_a_status_appended_while_it_reads(store_url: str) -> None:
    """A process cancelled between the rebuild's read of its log and its write of the row: the row ends up
    cancelled (the rebuild reads the log again), not in the status the older events gave it."""
    async with JourneyRuntime.open(store_url, clock=VirtualClock()) as runtime:
        await runtime.processes.deploy(EXPENSE)
        started = await runtime.processes.start("expense", business_key="live")
        instance_id = started["instance_id"]
        backend = runtime.store.backend
        lost = update(journey_instances).values(status="lost").where(journey_instances.c.instance_id == instance_id)
        await backend.write([lost], {})
        query, cancelled = backend.query, []

        async def query_then_cancel(statement: Any, params: Any = None) -> Any:
            rows = await query(statement, params)
            if statement is rebuild_module._EVENTS_OF and not cancelled:  # the events are read: a live append
                cancelled.append(await runtime.processes.cancel(instance_id, reason="withdrawn"))
            return rows

        backend.query = query_then_cancel  # type: ignore[method-assign]
        try:
            rebuilt = await rebuild_module.rebuild_instance_index(backend)
        finally:
            del backend.query
        [row] = await backend.query(select(journey_instances).where(journey_instances.c.instance_id == instance_id))
        assert cancelled and row["status"] == "cancelled"
        assert rebuilt.corrected == [] and rebuilt.busy == []  # the cancel wrote the row itself, as the log says


def test_journeys_rebuild_says_in_one_line_that_the_database_went_away_under_it(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL going away while `journeys rebuild` ran (a restart, a failover) ended it with a rich
    traceback of a page or more, SQLAlchemy's and psycopg's frames, instead of saying what happened. It now
    exits 1 with one line: the database is not reachable, try again (a rebuild may be run again safely)."""
    asyncio.run(mixed_workload(postgres_url))
    lifecycle = rebuild_module.rebuild_lifecycle
    for mark in ("at", "refused", "answered"):  # the process's outage marks, as they were, after the test
        monkeypatch.setattr(OUTAGE, mark, getattr(OUTAGE, mark))

    async def lose_the_database(*args: Any) -> Any:
        with outage(postgres_url):  # after the index was rebuilt: the lifecycle tables' reads fail
            return await lifecycle(*args)

    monkeypatch.setattr(rebuild_module, "rebuild_lifecycle", lose_the_database)
    result = CliRunner().invoke(cli, ["rebuild", "--database-url", postgres_url])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert result.output.startswith("error: the database is not reachable now ("), result.output
    assert "Traceback" not in result.output and len(result.output.splitlines()) == 1, result.output

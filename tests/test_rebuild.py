"""Event sourcing: the instance index is derived from the event log, and `journeys rebuild` restores it
(status and design of every instance) after a mixed workload of every pattern."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import delete, update
from typer.testing import CliRunner

from agents import AgentCallFailedError, FailingAgent
from checkpoints import VirtualClock
from checkpoints.index import Instance
from checkpoints.schema.tables import journey_instances
from graphs import READY_TO_START, JourneyRuntime
from server.cli import app as cli

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

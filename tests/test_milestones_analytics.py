"""P5, shared by all four patterns: the milestone tracker and journey analytics, checked against a known
set of journeys run on a virtual clock. Every test runs on memory, SQLite and Postgres."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agents import AgentCallFailedError, FailingAgent, RetrySettings
from checkpoints import VirtualClock
from graphs import JourneyRuntime

FAST = RetrySettings(max_attempts=2, initial_delay=0.001, max_delay=0.01, jitter=0.001)
START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
MIGRATION = ["upload_content", "analyze_content", "transform_data", "validate_results"]
CHECKED = {
    "journey_type": "vendor_review",
    "steps": [
        {"step_id": "intake"},
        {"step_id": "internal_check", "milestone": False},
        {"step_id": "sign_off"},
    ],
}
IMPORT = {"journey_type": "bulk_import", "steps": [{"step_id": "import_data", "agent": "import_data"}]}
ROOMS = {
    "areas": [
        {"area_id": "lobby"},  # complete once visited
        {"area_id": "workshop", "completion": {"built": True}},
    ]
}


def milestone_names(milestones: list[dict[str, Any]]) -> list[str]:
    return [m["milestone"] for m in milestones]


async def run_known_journeys(rt: JourneyRuntime, clock: VirtualClock) -> dict[str, str]:
    """Six runs, one of each kind; returns their instance ids by name."""
    ids: dict[str, str] = {}
    migration = (await rt.structured.design_journey("content_migration", {}))["journey_id"]

    # ann: completes all four steps, 100 s after starting.
    ids["ann"] = (await rt.structured.execute_journey(migration, "ann", {}))["instance_id"]
    clock.advance(timedelta(seconds=40))
    for _ in MIGRATION[:3]:
        await rt.structured.advance_journey_step(migration, "ann", {})
    clock.advance(timedelta(seconds=60))
    await rt.structured.advance_journey_step(migration, "ann", {})

    # bob: one step done, still in progress.
    ids["bob"] = (await rt.structured.execute_journey(migration, "bob", {}))["instance_id"]
    await rt.structured.advance_journey_step(migration, "bob", {})

    # vendor review: completes in 20 s; its middle step is not a milestone.
    checked = (await rt.structured.design_journey("vendor_review", {}, spec=CHECKED))["journey_id"]
    ids["vendor"] = (await rt.structured.execute_journey(checked, "cy", {}))["instance_id"]
    clock.advance(timedelta(seconds=20))
    for _ in CHECKED["steps"]:
        await rt.structured.advance_journey_step(checked, "cy", {})

    # saga: the analysis fails for good 30 s in; the upload is compensated.
    rt.agents.register("analyze_content", FailingAgent("analyze_content", permanent=True), replace=True)
    saga = await rt.saga.design_saga_journey("enterprise_migration", {}, {"upload_content": "delete_uploaded_content"})
    ids["saga"] = (await rt.saga.execute_saga_journey(saga["journey_id"], "dee", {}))["saga_id"]
    clock.advance(timedelta(seconds=30))
    await rt.saga.advance_saga_step(ids["saga"], saga["journey_id"], "dee", {})
    await rt.saga.advance_saga_step(ids["saga"], saga["journey_id"], "dee", {})

    # import: its only agent fails after its retries; the run is failed.
    rt.agents.register("import_data", FailingAgent("import_data"))
    bulk = (await rt.structured.design_journey("bulk_import", {}, spec=IMPORT))["journey_id"]
    ids["import"] = (await rt.structured.execute_journey(bulk, "eve", {}))["instance_id"]
    with pytest.raises(AgentCallFailedError):
        await rt.structured.advance_journey_step(bulk, "eve", {})

    # session: both areas complete, then closed.
    ids["session"] = (await rt.session.start_session("fay", ROOMS))["session_id"]
    await rt.session.update_area_state(ids["session"], "workshop", {"built": True})
    await rt.session.close_session(ids["session"])
    return ids


async def test_milestones_and_analytics_after_known_journeys(store_url: str) -> None:
    clock = VirtualClock(START)
    async with JourneyRuntime.open(store_url, clock=clock, retry=FAST) as rt:
        empty = await rt.analytics.summary()
        assert empty == {
            "journeys": 0,
            "by_status": {},
            "completion_rate": 0.0,
            "mean_duration_seconds": None,
            "steps": {},
        }
        ids = await run_known_journeys(rt, clock)

        # --- the milestone tracker ---
        ann = await rt.milestones.milestones(ids["ann"])
        assert milestone_names(ann) == MIGRATION
        assert {m["type"] for m in ann} == {"step.completed"}
        assert [m["seq"] for m in ann] == sorted(m["seq"] for m in ann)
        reached = [datetime.fromisoformat(m["reached_at"]) for m in ann]
        assert reached == [START + timedelta(seconds=40)] * 3 + [START + timedelta(seconds=100)]

        assert milestone_names(await rt.milestones.milestones(ids["bob"])) == ["upload_content"]
        assert milestone_names(await rt.milestones.milestones(ids["vendor"])) == ["intake", "sign_off"]
        assert milestone_names(await rt.milestones.milestones(ids["saga"])) == ["upload_content", "saga.compensated"]
        assert await rt.milestones.milestones(ids["import"]) == []
        session = await rt.milestones.milestones(ids["session"])
        assert [(m["milestone"], m["type"]) for m in session] == [
            ("lobby", "area.completed"),
            ("workshop", "area.completed"),
            ("session.completed", "session.completed"),
        ]
        assert await rt.milestones.milestones("no_such_run") == []

        # --- analytics over everything ---
        summary = await rt.analytics.summary()
        assert summary["journeys"] == 6
        # A session closed with every area complete counts as completed (while open, it is in_progress).
        assert summary["by_status"] == {"completed": 3, "in_progress": 1, "compensated": 1, "failed": 1}
        assert summary["completion_rate"] == round(3 / 6, 4)
        # (100 + 20 + 30 + 0) / 4: completed and compensated runs (the session completed as it started)
        assert summary["mean_duration_seconds"] == 37.5
        assert summary["steps"] == {
            "upload_content": {"completed": 3, "failed": 0},
            "analyze_content": {"completed": 1, "failed": 1},
            "transform_data": {"completed": 1, "failed": 0},
            "validate_results": {"completed": 1, "failed": 0},
            "intake": {"completed": 1, "failed": 0},
            "internal_check": {"completed": 1, "failed": 0},
            "sign_off": {"completed": 1, "failed": 0},
            "import_data": {"completed": 0, "failed": 1},
            "lobby": {"completed": 1, "failed": 0},
            "workshop": {"completed": 1, "failed": 0},
        }

        # --- and by pattern ---
        saga = await rt.analytics.summary(pattern="saga")
        assert saga == {
            "journeys": 1,
            "by_status": {"compensated": 1},
            "completion_rate": 0.0,
            "mean_duration_seconds": 30.0,
            "steps": {
                "upload_content": {"completed": 1, "failed": 0},
                "analyze_content": {"completed": 0, "failed": 1},
            },
        }
        structured = await rt.analytics.summary(pattern="structured")
        assert structured["journeys"] == 4
        assert structured["by_status"] == {"completed": 2, "in_progress": 1, "failed": 1}
        assert structured["completion_rate"] == 0.5
        assert structured["mean_duration_seconds"] == 60.0
        assert structured["steps"]["upload_content"] == {"completed": 2, "failed": 0}
        assert "lobby" not in structured["steps"]
        sessions = await rt.analytics.summary(pattern="session")
        assert (sessions["journeys"], sessions["by_status"]) == (1, {"completed": 1})
        assert sessions["steps"] == {"lobby": {"completed": 1, "failed": 0}, "workshop": {"completed": 1, "failed": 0}}
        assert (await rt.analytics.summary(pattern="mvp"))["journeys"] == 0

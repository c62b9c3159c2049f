"""Helpers for the client lifecycle tests: a runtime on a virtual clock, journeys driven to any stage,
and a fingerprint of everything a move could write (to prove that refused moves change nothing)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from agents import RetrySettings
from checkpoints.clock import VirtualClock
from checkpoints.schema.lifecycle_tables import LIFECYCLE_TABLES
from graphs import JourneyRuntime
from graphs.errors import EntryCriteriaNotMetError
from graphs.lifecycle.catalog import READY_TO_START, default_lifecycle_spec
from graphs.lifecycle.machine import LifecycleSpec
from graphs.lifecycle.orchestrator import LifecycleOrchestrator

FAST = RetrySettings(max_attempts=3, initial_delay=0.001, max_delay=0.01, jitter=0.001)
DAY = timedelta(days=1)
START = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)

SANDBOX_EXIT = {"connector_sync_rate": 1.0, "search_precision": 0.86, "security_vulnerabilities": 0, "demo_approved": 1}
PILOT_ENTRY = {"pilot_cohort_size": 25, "production_infra_ready": 1}
PILOT_EXIT = {"search_precision": 0.88, "user_satisfaction": 4.2, "bug_count": 0, "p95_latency_ms": 420}
PRODUCTION_ENTRY = {"rollout_plan_approved": 1, "monitoring_configured": 1}
PRODUCTION_EXIT = {"user_adoption": 0.74, "search_satisfaction": 4.6, "query_volume_growth": 0.25}


@asynccontextmanager
async def lifecycle_runtime(url: str, **options: Any) -> AsyncIterator[tuple[JourneyRuntime, VirtualClock]]:
    clock = VirtualClock(START)
    async with JourneyRuntime.open(url, clock=clock, retry=FAST, **options) as runtime:
        yield runtime, clock


async def to_pilot(lc: LifecycleOrchestrator, journey_id: str) -> None:
    await lc.run_unit_of_work(journey_id, "test_dataset_provisioning")
    await lc.run_unit_of_work(journey_id, "search_quality_validation")
    await lc.record_metrics(journey_id, {**SANDBOX_EXIT, **PILOT_ENTRY})
    assert (await lc.promote(journey_id)).passed


async def to_production(lc: LifecycleOrchestrator, clock: VirtualClock, journey_id: str) -> None:
    await lc.run_unit_of_work(journey_id, "limited_user_rollout")
    await lc.run_unit_of_work(journey_id, "pilot_validation")
    await lc.record_metrics(journey_id, PILOT_EXIT)
    clock.advance(7 * DAY)  # precision must be stable for a whole week
    await lc.record_metrics(journey_id, {**PILOT_EXIT, **PRODUCTION_ENTRY})
    assert (await lc.promote(journey_id)).passed


async def to_completed(lc: LifecycleOrchestrator, journey_id: str) -> None:
    for unit in ("rollout_10", "rollout_50", "rollout_100"):
        await lc.run_unit_of_work(journey_id, unit)
    await lc.record_metrics(journey_id, PRODUCTION_EXIT)
    assert (await lc.mark_complete(journey_id)).passed


async def journey_at(
    runtime: JourneyRuntime, clock: VirtualClock, stage: str | None, *, client_id: str = "client-123", **start: Any
) -> str:
    """A new journey driven to ``stage`` (None: created, but its start was refused)."""
    lc = runtime.lifecycle
    if stage is None:
        try:
            await lc.start_journey(client_id, **start)
        except EntryCriteriaNotMetError as refused:
            return str(refused.validation.journey_id)
        raise AssertionError("the start should have been refused")
    journey_id = str((await lc.start_journey(client_id, metrics=READY_TO_START, **start))["journey_id"])
    if stage in ("pilot", "production", "completed", "rollback_from_pilot"):
        await to_pilot(lc, journey_id)
    if stage in ("production", "completed"):
        await to_production(lc, clock, journey_id)
    if stage == "completed":
        await to_completed(lc, journey_id)
    if stage == "rollback":
        await lc.initiate_rollback(journey_id, "hold for a decision")
    if stage == "cancelled":
        await lc.cancel(journey_id, "client walked away")
    return journey_id


async def fingerprint(runtime: JourneyRuntime, journey_id: str) -> tuple[Any, ...]:
    """Everything a lifecycle move could write for ``journey_id``."""
    events = [(e.seq, e.type, e.step, e.key, e.payload) for e in await runtime.history(journey_id)]
    rows = []
    async with runtime.store.engine.connect() as conn:
        for table in LIFECYCLE_TABLES:
            query = select(table).where(table.c.journey_id == journey_id)
            rows.append(sorted(map(str, (await conn.execute(query)).all())))
    saved = await runtime.store.saver.aget_tuple({"configurable": {"thread_id": journey_id, "checkpoint_ns": ""}})
    instance = await runtime.store.index.get_instance(journey_id)
    return events, rows, saved and saved.config, instance


def quiet_spec() -> LifecycleSpec:
    """The default lifecycle without automatic rollbacks, to exercise each criterion on its own."""
    spec = default_lifecycle_spec()
    stages = {
        s: spec.stage(s).model_copy(update={"rollback_thresholds": ()}) for s in ("sandbox", "pilot", "production")
    }
    return spec.model_copy(update=stages)

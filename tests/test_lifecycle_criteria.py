"""L2, entry and exit criteria: every criterion of the seed blocks its gate on its own, windowed checks
slide with the virtual clock, thresholds are configurable per journey, metric sources are pluggable,
and every validation is stored with the event log."""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import pytest
from langgraph.types import Command
from pydantic import ValidationError
from sqlalchemy import func, select

from checkpoints.schema.lifecycle_tables import lifecycle_validation_results
from checkpoints.schema.tables import journey_designs, journey_instances
from graphs import JourneyRuntime, SpecError
from graphs.errors import EntryCriteriaNotMetError, InvalidMetricError
from graphs.lifecycle.catalog import READY_TO_START, STAGE_METRICS, default_lifecycle_spec
from nodes.criteria_gate import MetricCriterion, MetricSample, evaluate_criteria
from server.assistants import instance_graph
from tests.lifecycle_support import (
    DAY,
    PILOT_ENTRY,
    PILOT_EXIT,
    PRODUCTION_ENTRY,
    PRODUCTION_EXIT,
    SANDBOX_EXIT,
    START,
    fingerprint,
    journey_at,
    lifecycle_runtime,
    quiet_spec,
)


async def blocked_by_exactly(
    rt: JourneyRuntime, journey_id: str, name: str, actual: Any, *, complete: bool = False
) -> None:
    """The gate fails on ``name`` alone, and the journey did not move."""
    stage = (await rt.lifecycle.get_journey_state(journey_id))["current_stage"]
    result = await (rt.lifecycle.mark_complete(journey_id) if complete else rt.lifecycle.promote(journey_id))
    assert not result.passed
    failed = result.failed_checks
    assert [c.name for c in failed] == [name], [c.message for c in failed]
    assert failed[0].actual == actual
    assert failed[0].expected and failed[0].message
    assert result.summary.endswith(f"failed: {name}")
    assert (await rt.lifecycle.get_journey_state(journey_id))["current_stage"] == stage


async def test_each_sandbox_entry_criterion_refuses_the_start_on_its_own(store_url: str) -> None:
    async with lifecycle_runtime(store_url) as (rt, _clock):
        lc = rt.lifecycle
        failing = {"contract_signed": 0, "infrastructure_provisioned": 0, "data_sources_identified": 0}
        names = {"contract_signed": "contract_signed", "infrastructure_provisioned": "infrastructure_provisioned"}
        for metric, bad in failing.items():
            with pytest.raises(EntryCriteriaNotMetError) as caught:
                await lc.start_journey(f"client-{metric}", metrics={**READY_TO_START, metric: bad})
            validation = caught.value.validation
            assert [c.name for c in validation.failed_checks] == [names.get(metric, metric)]
            assert validation.failed_checks[0].actual == bad
            assert validation.kind == "start" and validation.to_stage == "sandbox"
            state = await lc.get_journey_state(validation.journey_id)
            assert state["current_stage"] is None and state["allowed_events"] == ["start_journey"]
            # Recording what was missing lets the same journey start.
            started = await lc.start_journey(
                f"client-{metric}", journey_id=validation.journey_id, metrics={metric: READY_TO_START[metric]}
            )
            assert started["current_stage"] == "sandbox"
            assert [v.passed for v in await lc.validation_history(validation.journey_id)] == [False, True]

        with pytest.raises(EntryCriteriaNotMetError) as nothing:
            await lc.start_journey("client-empty")
        # The refusal says how to start: what to record, and the journey to start again.
        assert str(nothing.value) == (
            f"journey {nothing.value.validation.journey_id!r} cannot start: 3 of 3 checks failed: contract_signed, "
            "infrastructure_provisioned, data_sources_identified; record contract_signed == 1, "
            "infrastructure_provisioned == 1, data_sources_identified >= 1 in the start's metrics, and start it "
            f"again with journey_id {nothing.value.validation.journey_id!r}"
        )
        assert {c.message for c in nothing.value.validation.checks} == {
            "no value of contract_signed was recorded; needs == 1",
            "no value of infrastructure_provisioned was recorded; needs == 1",
            "no value of data_sources_identified was recorded; needs >= 1",
        }


async def test_each_sandbox_exit_and_pilot_entry_criterion_blocks_promotion_on_its_own(store_url: str) -> None:
    async with lifecycle_runtime(store_url) as (rt, _clock):
        lc = rt.lifecycle
        journey_id = await journey_at(rt, _clock, "sandbox", spec=quiet_spec())
        first = await lc.promote(journey_id)  # nothing recorded, no unit run: every check fails
        assert {c.name for c in first.failed_checks} == {
            "connectors_syncing",
            "search_quality",
            "security_scan",
            "demo_approved",
            "pilot_cohort_identified",
            "production_infrastructure_ready",
            "unit:test_dataset_provisioning",
            "unit:search_quality_validation",
        }
        assert [c.passed for c in first.checks if c.name == "unit:connector_installation"] == [True]
        await lc.run_unit_of_work(journey_id, "test_dataset_provisioning")
        await lc.run_unit_of_work(journey_id, "search_quality_validation")
        good = {**SANDBOX_EXIT, **PILOT_ENTRY}
        bad = {
            "connector_sync_rate": ("connectors_syncing", 0.9),
            "search_precision": ("search_quality", 0.79),
            "security_vulnerabilities": ("security_scan", 2.0),
            "demo_approved": ("demo_approved", 0.0),
            "pilot_cohort_size": ("pilot_cohort_identified", 8.0),
            "production_infra_ready": ("production_infrastructure_ready", 0.0),
        }
        for metric, (name, value) in bad.items():
            await lc.record_metrics(journey_id, {**good, metric: value})
            await blocked_by_exactly(rt, journey_id, name, value)
        await lc.record_metrics(journey_id, good)
        assert (await lc.promote(journey_id)).passed
        assert (await lc.get_journey_state(journey_id))["current_stage"] == "pilot"


async def test_each_pilot_exit_and_production_entry_criterion_blocks_promotion_on_its_own(store_url: str) -> None:
    async with lifecycle_runtime(store_url) as (rt, clock):
        lc = rt.lifecycle
        journey_id = await journey_at(rt, clock, "pilot", spec=quiet_spec())
        await lc.run_unit_of_work(journey_id, "limited_user_rollout")
        await lc.run_unit_of_work(journey_id, "pilot_validation")
        good = {**PILOT_EXIT, **PRODUCTION_ENTRY}
        await lc.record_metrics(journey_id, good)
        # Precision has only been watched since the sandbox: not yet a week of data.
        result = await lc.promote(journey_id)
        assert [c.name for c in result.failed_checks] == ["search_quality_stable"]
        assert "covers the start of its window (the last 7 days)" in result.failed_checks[0].message
        clock.advance(7 * DAY)
        await lc.record_metrics(journey_id, good)

        # Search quality stable above 85% for 7 days: one dip inside the window blocks until it leaves it.
        await lc.record_metric(journey_id, "search_precision", 0.84)
        clock.advance(timedelta(hours=1))
        await lc.record_metric(journey_id, "search_precision", 0.9)
        await blocked_by_exactly(rt, journey_id, "search_quality_stable", 0.84)
        clock.advance(6 * DAY)
        await blocked_by_exactly(rt, journey_id, "search_quality_stable", 0.84)
        clock.advance(DAY)

        # No critical bugs in a 7-day window: a bug blocks for a week, then slides out.
        await lc.record_metric(journey_id, "bug_count", 1)
        await blocked_by_exactly(rt, journey_id, "no_critical_bugs_7d", 1.0)
        clock.advance(6 * DAY + timedelta(hours=23))
        await blocked_by_exactly(rt, journey_id, "no_critical_bugs_7d", 1.0)
        clock.advance(timedelta(hours=1))

        bad = {
            "user_satisfaction": ("user_satisfaction", 3.9),
            "p95_latency_ms": ("performance_sla", 510.0),
            "rollout_plan_approved": ("rollout_plan_approved", 0.0),
            "monitoring_configured": ("monitoring_configured", 0.0),
        }
        for metric, (name, value) in bad.items():
            await lc.record_metrics(journey_id, {metric: value})
            await blocked_by_exactly(rt, journey_id, name, value)
            await lc.record_metrics(journey_id, {metric: good[metric]})
        result = await lc.promote(journey_id)
        assert result.passed, result.summary
        stable = next(c for c in result.checks if c.name == "search_quality_stable")
        assert stable.actual == 0.9 and "stayed >= 0.85 for the last 7 days" in stable.message


async def test_each_production_success_metric_blocks_completion_on_its_own(store_url: str) -> None:
    async with lifecycle_runtime(store_url) as (rt, clock):
        lc = rt.lifecycle
        journey_id = await journey_at(rt, clock, "production", spec=quiet_spec())
        for unit in ("rollout_10", "rollout_50"):
            await lc.run_unit_of_work(journey_id, unit)
        await lc.record_metrics(journey_id, PRODUCTION_EXIT)
        await blocked_by_exactly(rt, journey_id, "unit:rollout_100", "not run", complete=True)
        await lc.run_unit_of_work(journey_id, "rollout_100")
        bad = {"user_adoption": 0.69, "search_satisfaction": 4.4, "query_volume_growth": 0.19}
        for metric, value in bad.items():
            await lc.record_metric(journey_id, metric, value)
            await blocked_by_exactly(rt, journey_id, metric, value, complete=True)
            await lc.record_metric(journey_id, metric, PRODUCTION_EXIT[metric])
        assert (await lc.mark_complete(journey_id)).passed


async def test_every_validation_is_stored_with_its_event(store_url: str) -> None:
    async with lifecycle_runtime(store_url) as (rt, clock):
        lc = rt.lifecycle
        journey_id = await journey_at(rt, clock, "sandbox")
        refused = await lc.promote(journey_id)
        clock.advance(DAY)
        await lc.run_unit_of_work(journey_id, "test_dataset_provisioning")
        await lc.run_unit_of_work(journey_id, "search_quality_validation")
        await lc.record_metrics(journey_id, {**SANDBOX_EXIT, **PILOT_ENTRY})
        passed = await lc.promote(journey_id)
        history = await lc.validation_history(journey_id)
        assert [v.kind for v in history] == ["start", "promotion", "promotion"]
        assert [v.to_dict() for v in history[1:]] == [refused.to_dict(), passed.to_dict()]
        assert history[1].evaluated_at == START and history[2].evaluated_at == START + DAY
        events = [e for e in await rt.history(journey_id) if e.type == "lifecycle.validated"]
        assert [e.payload for e in events] == [v.to_dict() for v in history]
        assert [e.key for e in events] == [v.validation_id for v in history]
        for check in passed.checks:
            assert set(check.to_dict()) == {
                "name",
                "passed",
                "actual_value",
                "expected_value",
                "message",
                "actual",
                "expected",
            }


async def test_thresholds_are_configurable_per_journey(store_url: str) -> None:
    async with lifecycle_runtime(store_url) as (rt, clock):
        lc = rt.lifecycle
        strict = {"sandbox": {"search_precision": {"threshold": 0.9}, "uptime": {"threshold": 0.99, "operator": ">="}}}
        picky = await journey_at(rt, clock, "sandbox", client_id="picky", thresholds=strict)
        relaxed = await journey_at(rt, clock, "sandbox", client_id="relaxed")
        for journey_id in (picky, relaxed):
            await lc.run_unit_of_work(journey_id, "test_dataset_provisioning")
            await lc.run_unit_of_work(journey_id, "search_quality_validation")
            await lc.record_metrics(journey_id, {**SANDBOX_EXIT, **PILOT_ENTRY})
        assert (await lc.promote(relaxed)).passed
        result = await lc.promote(picky)
        assert {c.name: c.expected for c in result.failed_checks} == {"search_quality": ">= 0.9", "uptime": ">= 0.99"}
        await lc.record_metrics(picky, {"search_precision": 0.93, "uptime": 0.995})
        assert (await lc.promote(picky)).passed

        async def counts() -> tuple[int, int]:
            async with rt.store.engine.connect() as conn:
                designs = (await conn.execute(select(func.count()).select_from(journey_designs))).scalar_one()
                runs = (await conn.execute(select(func.count()).select_from(journey_instances))).scalar_one()
            return designs, runs

        before = await counts()
        for broken, expected in (
            ({"staging": {"x": {"threshold": 1}}}, "unknown stage 'staging'"),
            ({"pilot": {"user_satisfaction": {"operator": "≥"}}}, "thresholds.pilot.user_satisfaction"),
            ({"pilot": {"user_satisfaction": {"threshold": "high"}}}, "thresholds.pilot.user_satisfaction"),
            ({"pilot": {"search_precision": {"aggregate": "all", "window": None}}}, "needs a window"),
        ):
            with pytest.raises(SpecError) as caught:
                await lc.start_journey("client-x", metrics=READY_TO_START, thresholds=broken)
            assert expected in str(caught.value)
        assert await counts() == before


class Fixed:
    """A metric source that knows every value, e.g. a monitoring system's API."""

    def __init__(self, values: Mapping[str, float], at: datetime) -> None:
        self.values, self.at, self.reads = dict(values), at, 0

    async def latest(self, journey_id: str, metrics: Collection[str], at: datetime) -> Mapping[str, MetricSample]:
        self.reads += 1
        return {m: MetricSample(self.values[m], self.at) for m in metrics if m in self.values}

    async def window(
        self, journey_id: str, metrics: Collection[str], since: datetime, until: datetime
    ) -> Mapping[str, Sequence[MetricSample]]:
        return {m: [MetricSample(self.values[m], self.at)] for m in metrics if m in self.values and since < self.at}


async def test_a_pluggable_metric_source_feeds_the_gates(store_url: str) -> None:
    async with lifecycle_runtime(store_url) as (rt, _clock):
        source = Fixed({**READY_TO_START, **SANDBOX_EXIT, **PILOT_ENTRY}, START)
        rt.lifecycle.use_metric_source(source)
        started = await rt.lifecycle.start_journey("client-ext")  # nothing recorded: the source says yes
        journey_id = started["journey_id"]
        await rt.lifecycle.run_unit_of_work(journey_id, "test_dataset_provisioning")
        await rt.lifecycle.run_unit_of_work(journey_id, "search_quality_validation")
        assert (await rt.lifecycle.promote(journey_id)).passed
        assert source.reads >= 2
        source.values["user_satisfaction"] = 3.0
        rollback = await rt.lifecycle.check_rollback_triggers(journey_id)
        assert rollback is not None and rollback["trigger"] == "user_satisfaction_low"


async def test_the_server_runs_a_lifecycle_thread_on_the_runtimes_one_graph(store_url: str) -> None:
    """The graph the server reads and finishes a lifecycle thread with is the runtime's own: a run on
    it gates on the metric source the runtime was given, not on a second graph's default one."""
    async with lifecycle_runtime(store_url) as (rt, _clock):
        source = Fixed({**READY_TO_START, **SANDBOX_EXIT, **PILOT_ENTRY}, START)
        rt.lifecycle.use_metric_source(source)
        journey_id = (await rt.lifecycle.start_journey("client-srv"))["journey_id"]
        graph = await instance_graph(rt, journey_id)
        assert graph is rt.graph_for("lifecycle", default_lifecycle_spec())
        reads = source.reads
        snapshot = await rt.engine.run_to_state(
            graph, journey_id, Command(resume={"event": "promote_to_pilot", "metadata": {}})
        )
        assert source.reads > reads
        validation = snapshot.values["outcome"]["validation"]
        assert [c["name"] for c in validation["checks"] if not c["passed"]] == [
            "unit:test_dataset_provisioning",
            "unit:search_quality_validation",
        ]


BAD_METRICS: list[tuple[dict[str, Any], datetime | None, str]] = [
    ({"Search Precision": 0.9}, None, "must be lower_snake_case"),
    ({"search_precision": math.nan}, None, "finite number"),
    ({"search_precision": "high"}, None, "finite number"),
    ({"search_precision": None}, None, "finite number"),
    ({}, None, "non-empty mapping"),
    ({"search_precision": 0.9}, START + DAY, "not after now"),
    ({"search_precision": 0.9}, datetime(2026, 1, 1), "timezone-aware"),
]


async def test_bad_metrics_are_refused_and_nothing_is_written(store_url: str) -> None:
    async with lifecycle_runtime(store_url) as (rt, clock):
        journey_id = await journey_at(rt, clock, "sandbox")
        before = await fingerprint(rt, journey_id)
        for values, at, fragment in BAD_METRICS:
            with pytest.raises(InvalidMetricError) as caught:
                await rt.lifecycle.record_metrics(journey_id, values, at=at)
            assert fragment in str(caught.value)
            assert caught.value.category == "invalid"
            assert await fingerprint(rt, journey_id) == before
        with pytest.raises(InvalidMetricError):
            await rt.lifecycle.start_journey("client-bad", metrics={"contract_signed": "yes"})  # type: ignore[dict-item]  # the point
        async with rt.store.engine.connect() as conn:
            stored = (await conn.execute(select(func.count()).select_from(lifecycle_validation_results))).scalar_one()
        assert stored == 1  # the start's; the refused start wrote nothing at all


# --- the criteria engine on its own (no store involved) ---------------------------------------------


class Series:
    def __init__(self, samples: dict[str, list[tuple[float, float]]], now: datetime) -> None:
        # metric -> [(days before now, value)]
        self.samples = {m: [MetricSample(v, now - timedelta(days=d)) for d, v in s] for m, s in samples.items()}

    async def latest(self, journey_id: str, metrics: Collection[str], at: datetime) -> Mapping[str, MetricSample]:
        found = {}
        for m in metrics:
            before = [s for s in self.samples.get(m, []) if s.at <= at]
            if before:
                found[m] = max(before, key=lambda s: s.at)
        return found

    async def window(
        self, journey_id: str, metrics: Collection[str], since: datetime, until: datetime
    ) -> Mapping[str, Sequence[MetricSample]]:
        return {
            m: sorted((s for s in self.samples.get(m, []) if since < s.at <= until), key=lambda s: s.at)
            for m in metrics
        }


@pytest.mark.parametrize(
    ("operator", "threshold", "value", "holds"),
    [
        (">=", 4.0, 4.0, True),
        (">=", 4.0, 3.99, False),
        (">", 4.0, 4.0, False),
        (">", 4.0, 4.01, True),
        ("<=", 500, 500, True),
        ("<=", 500, 501, False),
        ("<", 500, 499, True),
        ("<", 500, 500, False),
        ("==", 0, 0, True),
        ("==", 0, 1, False),
        ("!=", 0, 1, True),
        ("!=", 0, 0, False),
    ],
)
async def test_each_operator(operator: str, threshold: float, value: float, holds: bool) -> None:
    criterion = MetricCriterion.model_validate({"metric": "m", "operator": operator, "threshold": threshold})
    [check] = await evaluate_criteria([criterion], Series({"m": [(1, value)]}, START), "j", START)
    assert (check.passed, check.actual, check.expected) == (holds, value, f"{operator} {threshold:g}")


async def test_aggregates_over_a_window() -> None:
    series = Series({"m": [(10, 100.0), (6, 1.0), (3, 2.0), (0, 3.0)], "bugs": [(9, 1.0)]}, START)

    async def actual(aggregate: str, window: str | None = "P7D", metric: str = "m") -> Any:
        criterion = MetricCriterion.model_validate(
            {"metric": metric, "operator": ">=", "threshold": 0, "aggregate": aggregate, "window": window}
        )
        [check] = await evaluate_criteria([criterion], series, "j", START)
        return check.actual

    assert await actual("latest") == 3.0
    assert await actual("min") == 1.0
    assert await actual("max") == 3.0
    assert await actual("mean") == 2.0
    assert await actual("sum") == 6.0
    assert await actual("count") == 3.0
    assert await actual("all") == 1.0  # worst value in effect over the window, 100 at its start included
    assert await actual("max", None) == 100.0  # no window: all history
    assert await actual("sum", metric="bugs") == 0.0  # nothing reported in the window: zero bugs


def test_criteria_definitions_are_checked() -> None:
    with pytest.raises(ValidationError, match="needs a window"):
        MetricCriterion.model_validate({"metric": "m", "operator": ">=", "threshold": 1, "aggregate": "all"})
    with pytest.raises(ValidationError, match="positive duration"):
        MetricCriterion.model_validate({"metric": "m", "operator": ">=", "threshold": 1, "window": "-P1D"})
    with pytest.raises(ValidationError, match="lower_snake_case"):
        MetricCriterion.model_validate({"metric": "Precision", "operator": ">=", "threshold": 1})
    with pytest.raises(ValidationError):
        MetricCriterion.model_validate({"metric": "m", "operator": "=>", "threshold": 1})


def test_the_defaults_follow_stage_metrics() -> None:
    spec = default_lifecycle_spec()
    for stage, metrics in STAGE_METRICS.items():
        exits = {c.metric: c for c in spec.stage(stage).exit_criteria}
        for metric, settings in metrics.items():
            assert (exits[metric].operator, exits[metric].threshold) == (settings["operator"], settings["threshold"])
    pilot = {c.metric: c for c in spec.pilot.exit_criteria}
    assert (pilot["search_precision"].aggregate, pilot["search_precision"].window) == ("all", timedelta(days=7))
    assert (pilot["bug_count"].aggregate, pilot["bug_count"].window) == ("sum", timedelta(days=7))

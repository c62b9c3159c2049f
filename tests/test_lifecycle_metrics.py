"""L5 and L6: the seed's 30-day example timeline on a virtual clock, the metrics that come out of it,
the metric queries over a mix of journeys, and the lifecycle tables as exact projections of the event
log. Memory, SQLite and Postgres."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from agents import FailingAgent
from checkpoints.events import NewEvent
from checkpoints.ownership import Owner, Viewer, acting_as
from checkpoints.schema.lifecycle_tables import (
    lifecycle_journey_states,
    lifecycle_metrics,
    lifecycle_rollback_history,
    lifecycle_transitions,
    lifecycle_units_of_work,
    lifecycle_validation_results,
)
from graphs import JourneyRuntime
from graphs.lifecycle.catalog import READY_TO_START
from server.ui.data import lifecycle_board
from tests.lifecycle_support import (
    DAY,
    PILOT_ENTRY,
    SANDBOX_EXIT,
    journey_at,
    lifecycle_runtime,
)

DAY_ONE = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)


def day(n: int) -> datetime:
    """Day ``n`` of the seed's timeline (day 1 is the start)."""
    return DAY_ONE + (n - 1) * DAY


async def test_the_seeds_30_day_timeline_and_its_metrics(store_url: str) -> None:
    async with lifecycle_runtime(store_url) as (rt, clock):
        lc = rt.lifecycle
        clock.set(day(1))  # journey initiated; UOW-001 (connector installation) runs as it starts
        journey_id = (await lc.start_journey("medtronic-healthcare", metrics=READY_TO_START))["journey_id"]
        clock.set(day(3))  # UOW-002: test dataset provisioning
        assert (await lc.run_unit_of_work(journey_id, "test_dataset_provisioning"))["status"] == "completed"
        clock.set(day(7))  # UOW-003: search quality validation passed
        await lc.run_unit_of_work(journey_id, "search_quality_validation")
        await lc.record_metrics(journey_id, {"search_precision": 0.86, "connector_sync_rate": 1.0})
        await lc.record_metrics(journey_id, {"security_vulnerabilities": 0})
        clock.set(day(9))
        await lc.record_metrics(journey_id, {"demo_approved": True, **PILOT_ENTRY})
        clock.set(day(10))  # exit criteria met, promoted to pilot
        assert (await lc.promote(journey_id)).passed

        clock.set(day(11))  # UOW-004: limited user rollout
        await lc.run_unit_of_work(journey_id, "limited_user_rollout")
        for n in range(11, 22):  # daily monitoring through the pilot
            clock.set(day(n))
            await lc.record_metrics(journey_id, {"search_precision": 0.86 + (n % 3) / 100, "bug_count": 0})
            if n == 14:  # user satisfaction collected
                await lc.record_metric(journey_id, "user_satisfaction", 4.2)
            if n == 18:  # performance SLA validated (P95 420 ms)
                await lc.run_unit_of_work(journey_id, "pilot_validation")
                await lc.record_metric(journey_id, "p95_latency_ms", 420)
            if n == 20:
                await lc.record_metrics(journey_id, {"rollout_plan_approved": 1, "monitoring_configured": 1})
        clock.set(day(21))  # exit criteria met, promoted to production
        assert (await lc.promote(journey_id)).passed

        for n, unit in ((22, "rollout_10"), (25, "rollout_50"), (28, "rollout_100")):  # 10% → 50% → 100%
            clock.set(day(n))
            assert (await lc.run_unit_of_work(journey_id, unit))["status"] == "completed"
        clock.set(day(30))
        await lc.record_metrics(
            journey_id, {"user_adoption": 0.74, "search_satisfaction": 4.6, "query_volume_growth": 0.25}
        )
        assert (await lc.mark_complete(journey_id)).passed

        state = await lc.get_journey_state(journey_id)
        assert state["current_stage"] == "completed"
        assert state["completed_stages"] == ["sandbox", "pilot", "production"]
        assert (state["started_at"], state["stage_started_at"]) == (day(1).isoformat(), day(30).isoformat())

        durations = await lc.metrics.stage_durations()
        assert {s: (d["count"], d["mean_days"]) for s, d in durations.items()} == {
            "sandbox": (1, 9.0),
            "pilot": (1, 11.0),
            "production": (1, 9.0),
        }
        assert (await lc.metrics.time_to_production())["mean_days"] == 20.0
        assert await lc.metrics.rollback_rate() == {"journeys": 1, "rolled_back": 0, "rate": 0.0}
        assert await lc.metrics.exit_criteria_first_pass_rate() == {"gates": 3, "passed_first_time": 3, "rate": 1.0}
        assert await lc.metrics.active_journeys_by_stage() == {"sandbox": 0, "pilot": 0, "production": 0, "rollback": 0}
        tasks = await lc.metrics.task_failure_rate()
        assert (tasks["units_of_work"], tasks["tasks"], tasks["failed"], tasks["rate"]) == (8, 12, 0, 0.0)
        assert (await lc.metrics.client_success_rate())["rate"] == 1.0

        # Against the seed's targets: sandbox and pilot under 15 days, production within 30 days.
        dashboard = await lc.dashboard()
        targets = dashboard["targets"]
        assert dashboard["stage_durations"]["sandbox"]["max_days"] < targets["sandbox_days"]
        assert dashboard["stage_durations"]["pilot"]["max_days"] < targets["pilot_days"]
        assert dashboard["time_to_production"]["max_days"] < targets["time_to_production_days"]
        assert (day(30) - day(1)).days + 1 == 30  # day 1 to day 30: the seed's "total time: 30 days"

        card = await lc.journey_card(journey_id)
        assert card["current_stage"] == "completed" and card["last_validation"]["kind"] == "completion"
        assert card["recent_activities"][-1]["type"] == "lifecycle.transition"


async def test_metric_queries_over_a_mix_of_journeys(store_url: str) -> None:
    async with lifecycle_runtime(store_url) as (rt, clock):
        lc = rt.lifecycle
        done = await journey_at(rt, clock, "completed", client_id="a")
        clock.advance(DAY)
        bumpy = await journey_at(rt, clock, "sandbox", client_id="b")
        assert not (await lc.promote(bumpy)).passed  # first attempt fails its gate
        rt.agents.register("run_security_scan", FailingAgent("run_security_scan", permanent=True), replace=True)
        assert (await lc.run_unit_of_work(bumpy, "test_dataset_provisioning"))["status"] == "failed"
        rt.agents.register("run_security_scan", lambda _r: {"scan_result": {}, "vulnerabilities": []}, replace=True)
        await lc.run_unit_of_work(bumpy, "test_dataset_provisioning")
        await lc.run_unit_of_work(bumpy, "search_quality_validation")
        await lc.record_metrics(bumpy, {**SANDBOX_EXIT, **PILOT_ENTRY})
        assert (await lc.promote(bumpy)).passed
        await lc.record_metric(bumpy, "user_satisfaction", 3.0)  # automatic rollback to the sandbox
        cancelled = await journey_at(rt, clock, "cancelled", client_id="c")
        piloting = await journey_at(rt, clock, "pilot", client_id="d")

        assert await lc.metrics.rollback_rate() == {"journeys": 4, "rolled_back": 1, "rate": 0.25}
        assert await lc.metrics.exit_criteria_first_pass_rate() == {"gates": 5, "passed_first_time": 4, "rate": 0.8}
        assert await lc.metrics.active_journeys_by_stage() == {"sandbox": 1, "pilot": 1, "production": 0, "rollback": 0}
        success = await lc.metrics.client_success_rate()
        assert success == {"reached_production": 1, "cancelled_before_production": 1, "rate": 0.5}
        tasks = await lc.metrics.task_failure_rate()
        assert tasks["failed"] == 1
        assert tasks["rate"] == round(1 / tasks["tasks"], 4)
        durations = await lc.metrics.stage_durations()
        # Ended stays: sandbox by a, b, c and d; pilot by a and b (rolled back); production by a.
        assert {s: d["count"] for s, d in durations.items()} == {"sandbox": 4, "pilot": 2, "production": 1}
        assert {done, bumpy, cancelled, piloting} == {r.journey_id for r in await _rows(rt, lifecycle_journey_states)}


async def _rows(rt: JourneyRuntime, table: Any) -> list[Any]:
    async with rt.store.engine.connect() as conn:
        return list((await conn.execute(select(table).order_by(*table.primary_key.columns))).all())


async def test_the_lifecycle_tables_are_projections_of_the_event_log(store_url: str) -> None:
    async with lifecycle_runtime(store_url) as (rt, clock):
        lc = rt.lifecycle
        journeys = [await journey_at(rt, clock, "completed", client_id="a")]
        journeys.append(await journey_at(rt, clock, "pilot", client_id="b"))
        await lc.record_metric(journeys[1], "bug_count", 2)  # automatic rollback
        journeys.append(await journey_at(rt, clock, None, client_id="c"))
        events = {j: await rt.history(j) for j in journeys}

        def of(kind: str) -> list[Any]:
            return [e for j in journeys for e in events[j] if e.type == kind]

        transitions = [
            (r.journey_id, r.event, r.from_stage, r.to_stage, r.at) for r in await _rows(rt, lifecycle_transitions)
        ]
        assert sorted(transitions, key=str) == sorted(
            (
                (e.instance_id, e.payload["event"], e.payload["from_stage"], e.payload["to_stage"], e.created_at)
                for e in of("lifecycle.transition")
            ),
            key=str,
        )
        validations = {r.validation_id: r for r in await _rows(rt, lifecycle_validation_results)}
        assert set(validations) == {e.key for e in of("lifecycle.validated")}
        for e in of("lifecycle.validated"):
            assert (validations[e.key].passed, validations[e.key].checks) == (e.payload["passed"], e.payload["checks"])
        units = {r.run_id: r for r in await _rows(rt, lifecycle_units_of_work)}
        finished = {e.payload["run_id"]: e.type.removeprefix("uow.") for e in of_prefix(events, "uow.")}
        assert set(units) == set(finished) == {e.payload["run_id"] for e in of("uow.started")}
        unwound = {
            e.instance_id for e in of("lifecycle.validated") if e.payload["kind"] == "rollback" and e.payload["passed"]
        }
        for run_id, row in units.items():
            # A passed rollback validation marks the completed units it unwound rolled_back, in its transaction.
            later = row.status == "rolled_back" and finished[run_id] == "completed" and row.journey_id in unwound
            assert row.status == finished[run_id] or later, (run_id, row.status, finished[run_id])
        recorded = sorted(
            (e.instance_id, metric, value, e.created_at)
            for e in of("metric.recorded")
            for metric, value in e.payload["values"].items()
        )
        assert recorded == sorted(
            (r.journey_id, r.metric, r.value, r.recorded_at) for r in await _rows(rt, lifecycle_metrics)
        )
        rollbacks = await _rows(rt, lifecycle_rollback_history)
        assert [(r.journey_id, r.trigger) for r in rollbacks] == [(journeys[1], "critical_bug")]
        states = {r.journey_id: r for r in await _rows(rt, lifecycle_journey_states)}
        for journey_id in journeys[:2]:
            last = [e for e in events[journey_id] if e.type == "lifecycle.transition"][-1]
            assert states[journey_id].current_stage == last.payload["to_stage"]
            assert states[journey_id].stage_started_at == last.created_at
        assert journeys[2] not in states  # never started: no journey state, only its refused validation


def of_prefix(events: dict[str, list[Any]], prefix: str) -> list[Any]:
    return [e for evs in events.values() for e in evs if e.type.startswith(prefix) and e.type != "uow.started"]


async def test_a_projection_that_cannot_be_written_takes_its_event_with_it(store_url: str) -> None:
    async with lifecycle_runtime(store_url) as (rt, clock):
        journey_id = await journey_at(rt, clock, "sandbox")
        before = len(await rt.history(journey_id))
        duplicate = insert(lifecycle_journey_states).values(
            journey_id=journey_id,
            client_id="x",
            design_id="x",
            current_stage="pilot",
            status="active",
            started_at=clock.now(),
            stage_started_at=clock.now(),
            completed_stages=[],
            metadata={},
            updated_at=clock.now(),
        )
        with pytest.raises(IntegrityError):
            await rt.store.events.append(journey_id, [NewEvent("lifecycle.transition", {})], also=[duplicate])
        assert len(await rt.history(journey_id)) == before
        assert (await rt.lifecycle.get_journey_state(journey_id))["current_stage"] == "sandbox"


async def test_the_lifecycle_board_counts_only_the_journeys_its_viewer_may_see(store_url: str) -> None:
    """The dashboard's lifecycle board (server/ui/data.py) filters its figures by viewer in the queries."""
    async with lifecycle_runtime(store_url) as (rt, _clock):
        lc = rt.lifecycle
        with acting_as(Owner("ana", "acme", "finance")):
            anas = (await lc.start_journey("client-a", metrics=READY_TO_START))["journey_id"]
            await lc.initiate_rollback(anas, "ana's client asked", rollback_to="sandbox", complete=True)
        with acting_as(Owner("bob", "acme")):
            bobs = (await lc.start_journey("client-b", metrics=READY_TO_START))["journey_id"]
            await lc.cancel(bobs, "bob's client left")
        unowned = (await lc.start_journey("client-c", metrics=READY_TO_START))["journey_id"]
        svc = SimpleNamespace(runtime=rt)
        boards = {
            who: await lifecycle_board(svc, viewer)  # type: ignore[arg-type]
            for who, viewer in {
                "ana": Viewer("ana", "acme"),
                "bob": Viewer("bob", "acme"),
                "cara": Viewer("cara", "acme", ("finance",)),
                "ana-elsewhere": Viewer("ana", "other"),
                "admin": Viewer("root", admin=True),
            }.items()
        }
        rollbacks = {who: board["metrics"]["rollback_rate"] for who, board in boards.items()}
        assert rollbacks["ana"] == rollbacks["cara"] == {"journeys": 1, "rolled_back": 1, "rate": 1.0}
        assert rollbacks["bob"] == {"journeys": 1, "rolled_back": 0, "rate": 0.0}
        assert rollbacks["ana-elsewhere"] == {"journeys": 0, "rolled_back": 0, "rate": None}
        assert rollbacks["admin"] == {"journeys": 3, "rolled_back": 1, "rate": round(1 / 3, 4)}
        active = {who: board["metrics"]["active_journeys_by_stage"]["sandbox"] for who, board in boards.items()}
        assert active == {"ana": 1, "bob": 0, "cara": 1, "ana-elsewhere": 0, "admin": 2}
        success = boards["bob"]["metrics"]["client_success_rate"]
        assert (success["cancelled_before_production"], boards["ana"]["metrics"]["client_success_rate"]["rate"]) == (
            1,
            None,
        )
        columns = {who: sorted(i.instance_id for c in b["columns"].values() for i in c) for who, b in boards.items()}
        assert columns["ana"] == [anas] and columns["bob"] == [bobs]
        assert columns["admin"] == sorted([anas, bobs, unowned])

"""L4, rollbacks: each of the seed's triggers on its own (automatic ones when a metric crosses its
stage's threshold, the client's request by hand), the flow plan → rollback units → validation →
notification, the snapshot to return to, failed rollbacks, and refused requests. Memory, SQLite, Postgres."""

from __future__ import annotations

from typing import Any

import pytest

from agents import AgentRequest, FailingAgent
from graphs import InvalidInputError
from graphs.errors import InvalidTransitionError, RollbackFailedError
from graphs.lifecycle.machine import RollbackTrigger
from tests.lifecycle_support import (
    DAY,
    PILOT_ENTRY,
    PILOT_EXIT,
    PRODUCTION_ENTRY,
    fingerprint,
    journey_at,
    lifecycle_runtime,
)

T = RollbackTrigger
# stage: (metric, value that does not cross, value that crosses, trigger, value to recover with)
THRESHOLDS: dict[str, list[tuple[str, float, float, RollbackTrigger, float]]] = {
    "sandbox": [
        ("security_vulnerabilities", 0, 1, T.SECURITY_VULNERABILITY, 0),
        ("data_quality_score", 0.8, 0.6, T.DATA_QUALITY_LOW, 0.9),
    ],
    "pilot": [
        ("user_satisfaction", 3.5, 3.4, T.USER_SATISFACTION_LOW, 4.2),
        ("bug_count", 0, 1, T.CRITICAL_BUG, 0),
        ("performance_degradation", 0.2, 0.25, T.PERFORMANCE_DEGRADATION, 0.0),
        ("security_vulnerabilities", 0, 2, T.SECURITY_VULNERABILITY, 0),
    ],
    "production": [
        ("major_incidents", 0, 1, T.MAJOR_INCIDENT, 0),
        ("user_satisfaction", 4.0, 3.9, T.USER_SATISFACTION_LOW, 4.6),
        ("service_outage_minutes", 60, 61, T.MAJOR_INCIDENT, 0),
        ("data_loss_incidents", 0, 1, T.MAJOR_INCIDENT, 0),
        ("performance_degradation", 0.5, 0.6, T.PERFORMANCE_DEGRADATION, 0.0),
        ("security_vulnerabilities", 0, 1, T.SECURITY_VULNERABILITY, 0),
    ],
}
BACK_TO = {"sandbox": "sandbox", "pilot": "sandbox", "production": "pilot"}


@pytest.mark.parametrize("stage", ["sandbox", "pilot", "production"])
async def test_each_automatic_trigger_rolls_back_on_its_own(store_url: str, stage: str) -> None:
    async with lifecycle_runtime(store_url) as (rt, clock):
        lc = rt.lifecycle
        journey_id = await journey_at(rt, clock, stage)
        for count, (metric, calm, crossing, trigger, recovered) in enumerate(THRESHOLDS[stage], start=1):
            clock.advance(DAY)
            quiet = await lc.record_metric(journey_id, metric, calm)
            assert quiet["rollback"] is None, f"{metric}={calm} must not cross its threshold"
            crossed = await lc.record_metric(journey_id, metric, crossing)
            rollback = crossed["rollback"]
            assert rollback is not None, f"{metric}={crossing} must start a rollback"
            assert (rollback["trigger"], rollback["automatic"]) == (trigger.value, True)
            assert (rollback["from_stage"], rollback["to_stage"]) == (stage, BACK_TO[stage])
            assert metric in rollback["reason"] and rollback["status"] == "completed"
            assert rollback["journey"]["current_stage"] == BACK_TO[stage]
            assert len(await lc.rollback_history(journey_id)) == count
            # Recover, and come back to the stage for the next trigger.
            await lc.record_metric(journey_id, metric, recovered)
            if stage != "sandbox":
                await lc.record_metrics(
                    journey_id, {**PILOT_ENTRY, **PRODUCTION_ENTRY, **PILOT_EXIT, metric: recovered}
                )
                assert (await lc.promote(journey_id)).passed
            assert (await lc.get_journey_state(journey_id))["current_stage"] == stage
        assert [r["trigger"] for r in await lc.rollback_history(journey_id)] == [t[3].value for t in THRESHOLDS[stage]]


async def test_a_client_request_rolls_back_through_plan_units_validation_and_notification(store_url: str) -> None:
    async with lifecycle_runtime(store_url) as (rt, clock):
        notes: list[dict[str, Any]] = []

        def notifier(request: AgentRequest) -> dict[str, Any]:
            notes.append(dict(request.payload))
            return {"delivered": True, "channel": "email"}

        lc = rt.lifecycle
        lc.use_notifier(notifier)
        journey_id = await journey_at(rt, clock, "pilot")
        await lc.run_unit_of_work(journey_id, "limited_user_rollout")
        clock.advance(3 * DAY)
        seq_before = len(await rt.history(journey_id))
        held = await lc.initiate_rollback(journey_id, "client requests a pause")
        assert (held["trigger"], held["automatic"], held["status"]) == ("client_request", False, "validated")
        assert held["journey"]["current_stage"] == "rollback"
        assert held["plan"] == {
            "unwind": ["pilot"],
            "units": ["pilot_rollback"],
            "notify": "notify_stakeholders",
            "then": "wait for complete_rollback",
        }
        assert held["notification"] == {"delivered": True, "intent": "notify_stakeholders"}
        assert notes == [
            {
                "journey_id": journey_id,
                "client_id": "client-123",
                "rollback_id": held["rollback_id"],
                "trigger": "client_request",
                "reason": "client requests a pause",
                "automatic": False,
                "from_stage": "pilot",
                "to_stage": "sandbox",
                "status": "validated",
                "summary": "all 1 checks passed",
            }
        ]
        # The flow, in the event log: enter ROLLBACK, run the rollback unit, validate, notify.
        flow = [(e.type, e.step) for e in (await rt.history(journey_id))[seq_before:]]
        assert flow == [
            ("lifecycle.transition", "rollback"),
            ("uow.started", "pilot_rollback"),
            ("task.completed", "pilot_rollback.disable-pilot-access"),
            ("task.completed", "pilot_rollback.restore-sandbox-configuration"),
            ("uow.completed", "pilot_rollback"),
            ("lifecycle.validated", "rollback"),
            ("lifecycle.notified", "rollback"),
        ]
        [validation] = [v for v in await lc.validation_history(journey_id) if v.kind == "rollback"]
        assert validation.validation_id == held["validation_id"] and validation.passed
        [run] = [u for u in await lc.units_of_work(journey_id) if u["purpose"] == "rollback"]
        assert held["run_ids"] == [run["run_id"]] and run["uow_id"] == "pilot_rollback"
        assert (
            next(u for u in await lc.units_of_work(journey_id) if u["uow_id"] == "limited_user_rollout")["status"]
            == "rolled_back"
        )

        # The snapshot is the checkpoint the journey returns to: its last settled state in the sandbox.
        snapshot = held["snapshot"]
        assert snapshot["stage"] == "sandbox" and snapshot["checkpoint_id"]
        past = await lc.state_at(journey_id, snapshot["checkpoint_id"])
        assert past["current_stage"] == "sandbox"
        assert past["units"]["search_quality_validation"] == "completed"
        assert past["units"]["limited_user_rollout"] == "pending"

        clock.advance(DAY)
        resumed = await lc.complete_rollback(journey_id)
        assert resumed["current_stage"] == "sandbox"
        assert resumed["rollback"]["status"] == "completed"
        assert resumed["rollback"]["completed_at"] == clock.now().isoformat()
        assert resumed["units"]["limited_user_rollout"] == "rolled_back"


async def test_a_rollback_that_fails_waits_in_rollback_until_it_completes(store_url: str) -> None:
    async with lifecycle_runtime(store_url) as (rt, clock):
        lc = rt.lifecycle
        journey_id = await journey_at(rt, clock, "production")
        rt.agents.register("halt_rollout", FailingAgent("halt_rollout", permanent=True), replace=True)
        failed = await lc.initiate_rollback(journey_id, "incident", trigger="major_incident", complete=True)
        assert failed["status"] == "failed"
        assert failed["journey"]["current_stage"] == "rollback"
        assert failed["notification"]["delivered"] is True
        with pytest.raises(RollbackFailedError) as caught:
            await lc.complete_rollback(journey_id)  # runs the rollback unit again: still failing
        assert caught.value.rollback["status"] == "failed"
        assert (await lc.get_journey_state(journey_id))["current_stage"] == "rollback"

        rt.agents.register("halt_rollout", lambda _r: {"reverted": True}, replace=True)
        done = await lc.complete_rollback(journey_id)
        assert done["current_stage"] == "pilot"
        assert [v.passed for v in await lc.validation_history(journey_id) if v.kind == "rollback"] == [
            False,
            False,
            True,
        ]
        [record] = await lc.rollback_history(journey_id)
        assert record["status"] == "completed" and len(record["run_ids"]) == 1


async def test_a_lost_notification_does_not_undo_a_rollback(store_url: str) -> None:
    async with lifecycle_runtime(store_url) as (rt, clock):
        rt.lifecycle.use_notifier(FailingAgent("notify_stakeholders", permanent=True))
        journey_id = await journey_at(rt, clock, "sandbox")
        await rt.lifecycle.run_unit_of_work(journey_id, "test_dataset_provisioning")
        rolled = await rt.lifecycle.initiate_rollback(journey_id, "reset", complete=True)
        assert rolled["status"] == "completed"
        assert rolled["journey"]["current_stage"] == "sandbox"
        assert rolled["notification"]["delivered"] is False
        assert "notify_stakeholders failed" in rolled["notification"]["error"]
        # Back in a fresh sandbox: its units were rolled back, and the entry unit ran again.
        assert rolled["journey"]["units"]["connector_installation"] == "completed"
        assert rolled["journey"]["units"]["test_dataset_provisioning"] == "rolled_back"
        runs = [(u["uow_id"], u["status"]) for u in await rt.lifecycle.units_of_work(journey_id)]
        assert runs == [
            ("connector_installation", "rolled_back"),
            ("test_dataset_provisioning", "rolled_back"),
            ("sandbox_rollback", "completed"),
            ("connector_installation", "completed"),
        ]


async def test_bad_rollback_requests_change_nothing(store_url: str) -> None:
    async with lifecycle_runtime(store_url) as (rt, clock):
        lc = rt.lifecycle
        journey_id = await journey_at(rt, clock, "pilot")
        before = await fingerprint(rt, journey_id)
        with pytest.raises(InvalidInputError):
            await lc.initiate_rollback(journey_id, "  ")
        with pytest.raises(InvalidInputError) as unknown:
            await lc.initiate_rollback(journey_id, "why not", trigger="boredom")
        assert unknown.value.details["allowed"] == [t.value for t in RollbackTrigger]
        with pytest.raises(InvalidTransitionError) as not_now:
            await lc.complete_rollback(journey_id)
        assert not_now.value.allowed == ["promote_to_production", "initiate_rollback", "cancel_journey"]
        assert await fingerprint(rt, journey_id) == before
        done = await journey_at(rt, clock, "cancelled", client_id="gone")
        with pytest.raises(InvalidTransitionError) as ended:
            await lc.initiate_rollback(done, "too late")
        assert ended.value.allowed == []

"""L1, the stage machine: every transition of the seed's table, valid and invalid, on memory, SQLite
and Postgres. A refused event raises InvalidTransitionError naming the current stage and the allowed
events, and changes nothing (event log, lifecycle tables, checkpoint, index)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from checkpoints.events import NewEvent
from checkpoints.schema.lifecycle_tables import lifecycle_journey_states, lifecycle_rollback_history
from graphs import InvalidInputError, JourneyNotFoundError, JourneyRuntime
from graphs.errors import InvalidRollbackTargetError, InvalidTransitionError
from graphs.lifecycle.catalog import READY_TO_START
from graphs.lifecycle.machine import TRANSITIONS, JourneyStage, TransitionEvent
from tests.lifecycle_support import (
    DAY,
    PILOT_ENTRY,
    SANDBOX_EXIT,
    START,
    fingerprint,
    journey_at,
    lifecycle_runtime,
    to_completed,
    to_pilot,
    to_production,
)

EVENTS = [e.value for e in TransitionEvent]
OPTIONS: dict[str, dict[str, Any]] = {
    "start_journey": {"metrics": READY_TO_START},
    "initiate_rollback": {"reason": "checking the table"},
    "cancel_journey": {"reason": "checking the table"},
}
ALLOWED = {
    None: ["start_journey"],
    "sandbox": ["promote_to_pilot", "initiate_rollback", "cancel_journey"],
    "pilot": ["promote_to_production", "initiate_rollback", "cancel_journey"],
    "production": ["initiate_rollback", "cancel_journey", "mark_complete"],
    "rollback": ["complete_rollback", "cancel_journey"],
    "completed": [],
    "cancelled": [],
}


async def refuses_every_other_event(rt: JourneyRuntime, journey_id: str, stage: str | None) -> None:
    allowed = ALLOWED[stage]
    state = await rt.lifecycle.get_journey_state(journey_id)
    assert state["current_stage"] == stage
    assert state["allowed_events"] == allowed
    for event in EVENTS:
        if event in allowed:
            continue
        before = await fingerprint(rt, journey_id)
        with pytest.raises(InvalidTransitionError) as caught:
            await rt.lifecycle.transition(journey_id, event, **OPTIONS.get(event, {}))
        error = caught.value
        assert (error.current_stage, error.event, error.allowed) == (stage, event, allowed)
        assert error.category == "conflict"
        assert error.details["allowed"] == allowed
        assert all(name in str(error) for name in allowed)
        assert await fingerprint(rt, journey_id) == before, f"{event} in {stage} changed something"


def test_the_transition_table_is_the_seeds_plus_cancel_from_rollback() -> None:
    s, e = JourneyStage, TransitionEvent
    seed = {
        (None, e.START_JOURNEY): s.SANDBOX,
        (s.SANDBOX, e.PROMOTE_TO_PILOT): s.PILOT,
        (s.PILOT, e.PROMOTE_TO_PRODUCTION): s.PRODUCTION,
        (s.PRODUCTION, e.MARK_COMPLETE): s.COMPLETED,
        (s.SANDBOX, e.INITIATE_ROLLBACK): s.ROLLBACK,
        (s.PILOT, e.INITIATE_ROLLBACK): s.ROLLBACK,
        (s.PRODUCTION, e.INITIATE_ROLLBACK): s.ROLLBACK,
        (s.ROLLBACK, e.COMPLETE_ROLLBACK): None,
        (s.SANDBOX, e.CANCEL_JOURNEY): s.CANCELLED,
        (s.PILOT, e.CANCEL_JOURNEY): s.CANCELLED,
        (s.PRODUCTION, e.CANCEL_JOURNEY): s.CANCELLED,
    }
    assert {k: v for k, v in TRANSITIONS.items() if k != (s.ROLLBACK, e.CANCEL_JOURNEY)} == seed
    assert TRANSITIONS[(s.ROLLBACK, e.CANCEL_JOURNEY)] == s.CANCELLED
    assert [st.value for st in JourneyStage] == ["sandbox", "pilot", "production", "rollback", "completed", "cancelled"]
    assert len(EVENTS) == 7


async def test_forward_path_takes_each_step_and_refuses_every_other_event(store_url: str) -> None:
    async with lifecycle_runtime(store_url) as (rt, clock):
        lc = rt.lifecycle
        journey_id = await journey_at(rt, clock, None, metadata={"account_manager": "ana"})
        await refuses_every_other_event(rt, journey_id, None)

        started = await lc.transition(journey_id, "start_journey", metrics=READY_TO_START)
        assert started["current_stage"] == "sandbox"
        assert started["previous_stage"] is None
        assert started["completed_stages"] == []
        assert started["started_at"] == started["stage_started_at"] == START.isoformat()
        assert started["metadata"] == {"account_manager": "ana"}
        assert started["units"]["connector_installation"] == "completed"  # the sandbox's entry unit
        assert started["units"]["test_dataset_provisioning"] == started["units"]["rollout_100"] == "pending"
        await refuses_every_other_event(rt, journey_id, "sandbox")

        clock.advance(10 * DAY)
        await to_pilot(lc, journey_id)
        pilot = await lc.get_journey_state(journey_id)
        assert (pilot["previous_stage"], pilot["completed_stages"]) == ("sandbox", ["sandbox"])
        assert pilot["stage_started_at"] == (START + 10 * DAY).isoformat()
        assert pilot["started_at"] == START.isoformat()
        await refuses_every_other_event(rt, journey_id, "pilot")

        clock.advance(4 * DAY)
        await to_production(lc, clock, journey_id)
        production = await lc.get_journey_state(journey_id)
        assert (production["previous_stage"], production["completed_stages"]) == ("pilot", ["sandbox", "pilot"])
        await refuses_every_other_event(rt, journey_id, "production")

        await to_completed(lc, journey_id)
        done = await lc.get_journey_state(journey_id)
        assert done["status"] == "completed"
        assert done["completed_stages"] == ["sandbox", "pilot", "production"]
        await refuses_every_other_event(rt, journey_id, "completed")

        # The journey-state table is the graph state's projection.
        async with rt.store.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(lifecycle_journey_states).where(lifecycle_journey_states.c.journey_id == journey_id)
                )
            ).one()
        assert (row.current_stage, row.previous_stage, row.status) == ("completed", "production", "completed")
        assert row.completed_stages == done["completed_stages"]
        assert row.started_at == START
        instance = await rt.store.index.get_instance(journey_id)
        assert instance is not None and instance.status == "completed"


async def test_promotion_metadata_is_merged_into_the_journey(store_url: str) -> None:
    async with lifecycle_runtime(store_url) as (rt, clock):
        lc = rt.lifecycle
        journey_id = await journey_at(rt, clock, "sandbox", metadata={"region": "eu"})
        await lc.run_unit_of_work(journey_id, "test_dataset_provisioning")
        await lc.run_unit_of_work(journey_id, "search_quality_validation")
        await lc.record_metrics(journey_id, {**SANDBOX_EXIT, **PILOT_ENTRY})
        moved = await lc.transition(journey_id, "promote_to_pilot", metadata={"approved_by": "cs-lead"})
        assert moved["current_stage"] == "pilot"
        assert moved["validation"]["passed"] is True
        assert moved["metadata"] == {"region": "eu", "approved_by": "cs-lead"}


async def test_rollback_from_each_active_stage_returns_to_the_previous_stage(store_url: str) -> None:
    async with lifecycle_runtime(store_url) as (rt, clock):
        lc = rt.lifecycle
        for stage, back_to, completed_after in (
            ("sandbox", "sandbox", []),
            ("pilot", "sandbox", []),
            ("production", "pilot", ["sandbox"]),
        ):
            journey_id = await journey_at(rt, clock, stage, client_id=f"client-{stage}")
            held = await lc.transition(journey_id, "initiate_rollback", reason="client asked for a pause")
            assert held["current_stage"] == "rollback"
            assert held["previous_stage"] == stage
            assert held["status"] == "rollback"
            assert held["rollback"]["to_stage"] == back_to
            assert held["rollback"]["status"] == "validated"
            await refuses_every_other_event(rt, journey_id, "rollback")

            clock.advance(DAY)
            resumed = await lc.transition(journey_id, "complete_rollback")
            assert resumed["current_stage"] == back_to
            assert resumed["previous_stage"] == "rollback"
            assert resumed["completed_stages"] == completed_after
            assert resumed["stage_started_at"] == clock.now().isoformat()
            assert resumed["rollback"]["status"] == "completed"
            await refuses_every_other_event(rt, journey_id, back_to)


async def test_rollback_to_a_named_stage_and_refused_targets(store_url: str) -> None:
    async with lifecycle_runtime(store_url) as (rt, clock):
        lc = rt.lifecycle
        pilot = await journey_at(rt, clock, "pilot", client_id="client-a")
        for target in ("production", "rollback", "completed", "moon"):
            before = await fingerprint(rt, pilot)
            with pytest.raises(InvalidRollbackTargetError) as caught:
                await lc.initiate_rollback(pilot, "bad target", rollback_to=target)
            assert caught.value.allowed == ["sandbox", "pilot"]
            assert await fingerprint(rt, pilot) == before

        production = await journey_at(rt, clock, "production", client_id="client-b")
        rolled = await lc.initiate_rollback(production, "start over", rollback_to="sandbox", complete=True)
        assert rolled["plan"]["unwind"] == ["production", "pilot"]
        assert rolled["plan"]["units"] == ["production_rollback", "pilot_rollback"]
        assert rolled["journey"]["current_stage"] == "sandbox"
        assert rolled["journey"]["completed_stages"] == []
        units = rolled["journey"]["units"]
        assert units["limited_user_rollout"] == units["pilot_validation"] == "rolled_back"
        assert units["connector_installation"] == "completed"


async def test_cancel_from_each_active_stage_and_from_rollback(store_url: str) -> None:
    async with lifecycle_runtime(store_url) as (rt, clock):
        lc = rt.lifecycle
        for stage in ("sandbox", "pilot", "production", "rollback"):
            journey_id = await journey_at(rt, clock, "pilot" if stage == "rollback" else stage, client_id=stage)
            if stage == "rollback":
                await lc.initiate_rollback(journey_id, "pause")
            cancelled = await lc.transition(journey_id, "cancel_journey", reason="budget cut")
            assert cancelled["current_stage"] == "cancelled"
            assert cancelled["previous_stage"] == stage
            assert cancelled["status"] == "cancelled"
            assert cancelled["metadata"]["cancel_reason"] == "budget cut"
            await refuses_every_other_event(rt, journey_id, "cancelled")
            instance = await rt.store.index.get_instance(journey_id)
            assert instance is not None and instance.status == "cancelled"
        # The open rollback was closed with the journey.
        assert [r["status"] for r in await lc.rollback_history(journey_id)] == ["cancelled"]
        async with rt.store.engine.connect() as conn:
            statuses = (await conn.execute(select(lifecycle_rollback_history.c.status))).scalars().all()
        assert statuses == ["cancelled"]


async def test_unknown_events_and_journeys_are_refused(store_url: str) -> None:
    async with lifecycle_runtime(store_url) as (rt, clock):
        journey_id = await journey_at(rt, clock, "sandbox")
        for event in ("promote", "launch", ""):
            before = await fingerprint(rt, journey_id)
            with pytest.raises(InvalidTransitionError) as caught:
                await rt.lifecycle.transition(journey_id, event)
            assert caught.value.current_stage == "sandbox"
            assert caught.value.allowed == ALLOWED["sandbox"]
            assert await fingerprint(rt, journey_id) == before
        production = await journey_at(rt, clock, "production", client_id="other")
        with pytest.raises(InvalidTransitionError) as promote_in_production:
            await rt.lifecycle.promote(production)
        assert promote_in_production.value.allowed == ALLOWED["production"]
        for call in (rt.lifecycle.get_journey_state("nope"), rt.lifecycle.promote("nope")):
            with pytest.raises(JourneyNotFoundError):
                await call


async def test_a_start_cut_short_before_its_first_checkpoint_runs_again(store_url: str) -> None:
    async with lifecycle_runtime(store_url) as (rt, _clock):
        lc = rt.lifecycle
        design = await lc.design()
        # As if the process died right after registering the journey, before its graph ran.
        created = NewEvent("lifecycle.created", {"client_id": "client-1"})
        await rt.store.index.create_instance("j-1", design["design_id"], "lifecycle", "client-1", first_event=created)
        started = await lc.start_journey("client-1", journey_id="j-1", metrics=READY_TO_START)
        assert started["current_stage"] == "sandbox"
        with pytest.raises(InvalidTransitionError) as again:
            await lc.start_journey("client-1", journey_id="j-1")
        assert again.value.allowed == ALLOWED["sandbox"]
        with pytest.raises(InvalidInputError):
            await lc.start_journey("someone-else", journey_id="j-1")

"""A terminated journey runs no more, whoever drives it: every acting method of every orchestrator refuses it
with :class:`JourneyFinishedError` under the instance's lock, and changes nothing; reads still answer. On
memory, SQLite and PostgreSQL.

The server terminates the journey of a deleted thread and then deletes its checkpoints; its own routes check
first, but a call that passed that check just before the deletion, or a run the worker picks up, reaches the
orchestrator after it. So the refusal belongs to the orchestrators, under the lock terminate takes too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from graphs import InvalidInputError, JourneyFinishedError, JourneyNotFoundError, JourneyRuntime
from graphs.lifecycle.catalog import READY_TO_START
from tests.lifecycle_support import SANDBOX_EXIT, journey_at, lifecycle_runtime

AREAS: list[dict[str, Any]] = [
    {"area_id": "content", "area_name": "Content", "completion": {"files_uploaded": True}},
    {"area_id": "insights", "area_name": "Insights"},
]


async def written(rt: JourneyRuntime, instance_id: str) -> tuple[Any, ...]:
    """Everything an acting call could write: the instance's events, its index row and its latest checkpoint."""
    events = [(e.seq, e.type, e.step) for e in await rt.history(instance_id)]
    saved = await rt.store.saver.aget_tuple({"configurable": {"thread_id": instance_id, "checkpoint_ns": ""}})
    instance = await rt.store.index.get_instance(instance_id)
    return events, instance and instance.status, saved and saved.config


async def refused(rt: JourneyRuntime, instance_id: str, *calls: Callable[[], Awaitable[Any]]) -> None:
    """Each call is refused as a finished journey, and none of them writes anything."""
    before = await written(rt, instance_id)
    assert before[1] == "terminated"
    for call in calls:
        with pytest.raises(JourneyFinishedError, match="terminated"):
            await call()
    assert await written(rt, instance_id) == before


async def test_a_terminated_structured_journey_is_neither_advanced_nor_retried(store_url: str) -> None:
    async with JourneyRuntime.open(store_url) as rt:
        journey = await rt.structured.design_journey("content_migration", {"source": "legacy"})
        journey_id = journey["journey_id"]
        started = await rt.structured.execute_journey(journey_id, "ana", {"migration_id": "m-1"})
        instance_id = started["instance_id"]
        assert await rt.instances.terminate(instance_id, "given up")

        await refused(
            rt,
            instance_id,
            lambda: rt.structured.advance_journey_step(journey_id, "ana", {}),
            lambda: rt.structured.retry_journey_step(journey_id, "ana"),
            lambda: rt.structured.execute_journey(journey_id, "ana", {"migration_id": "m-1"}),
        )
        assert (await rt.structured.get_journey_status(journey_id, "ana"))["status"] == "terminated"


async def test_a_terminated_journey_whose_checkpoints_were_deleted_is_not_started_again(store_url: str) -> None:
    """The server's thread deletion: terminated, then its checkpoints deleted. Executing the same journey for
    the same user names the same instance; with no checkpoint it looked like a start a crash cut short, and
    the whole journey ran again on the terminated instance."""
    async with JourneyRuntime.open(store_url) as rt:
        journey = await rt.structured.design_journey("content_migration", {"source": "legacy"})
        journey_id = journey["journey_id"]
        instance_id = (await rt.structured.execute_journey(journey_id, "ana", {"migration_id": "m-1"}))["instance_id"]
        assert await rt.instances.terminate(instance_id, "its thread was deleted")
        await rt.store.saver.adelete_thread(instance_id)

        await refused(
            rt,
            instance_id,
            lambda: rt.structured.execute_journey(journey_id, "ana", {"migration_id": "m-1"}),
            lambda: rt.structured.advance_journey_step(journey_id, "ana", {}),
        )


async def test_a_terminated_saga_is_neither_advanced_nor_retried(store_url: str) -> None:
    async with JourneyRuntime.open(store_url) as rt:
        journey_id = (await rt.saga.design_saga_journey("enterprise_migration", {"source": "legacy"}, {}))["journey_id"]
        saga_id = (await rt.saga.execute_saga_journey(journey_id, "ana", {"migration_id": "m-1"}))["saga_id"]
        assert await rt.instances.terminate(saga_id, "given up")

        await refused(
            rt,
            saga_id,
            lambda: rt.saga.advance_saga_step(saga_id, journey_id, "ana", {}),
            lambda: rt.saga.retry_saga_step(saga_id),
        )
        assert (await rt.saga.get_saga_status(saga_id))["status"] == "terminated"


async def test_a_terminated_session_takes_no_move(store_url: str) -> None:
    async with JourneyRuntime.open(store_url) as rt:
        session_id = (await rt.session.start_session("ana", {"areas": AREAS}))["session_id"]
        assert await rt.instances.terminate(session_id, "given up")

        await refused(
            rt,
            session_id,
            lambda: rt.session.navigate_to_area(session_id, "insights"),
            lambda: rt.session.update_area_state(session_id, "content", {"files_uploaded": True}),
            lambda: rt.session.close_session(session_id),
        )
        assert (await rt.session.get_session_progress(session_id))["current_area"] == "content"


async def test_a_terminated_lifecycle_takes_no_transition_unit_or_metric(store_url: str) -> None:
    async with lifecycle_runtime(store_url) as (rt, _clock):
        lc = rt.lifecycle
        journey_id = (await lc.start_journey("client-a", metrics=READY_TO_START))["journey_id"]
        assert await rt.instances.terminate(journey_id, "given up")

        await refused(
            rt,
            journey_id,
            lambda: lc.run_unit_of_work(journey_id, "test_dataset_provisioning"),
            lambda: lc.promote(journey_id),
            lambda: lc.transition(journey_id, "cancel_journey"),
            lambda: lc.cancel(journey_id, "late"),
            lambda: lc.initiate_rollback(journey_id, "late"),
            lambda: lc.record_metrics(journey_id, SANDBOX_EXIT),
            lambda: lc.check_rollback_triggers(journey_id),
        )
        assert (await lc.get_journey_state(journey_id))["current_stage"] == "sandbox"


async def test_the_runtime_terminates_any_journey_and_says_why_it_cannot(store_url: str) -> None:
    async with lifecycle_runtime(store_url) as (rt, _clock):
        lc = rt.lifecycle
        journey_id = (await lc.start_journey("client-a", metrics=READY_TO_START))["journey_id"]
        assert (await lc.dashboard())["active_journeys_by_stage"]["sandbox"] == 1
        for reason in ("", "  ", "x" * 1001, "\ud800", None):
            with pytest.raises(InvalidInputError):
                await rt.terminate(journey_id, reason)  # type: ignore[arg-type]
        assert (await rt.store.index.get_instance(journey_id)).status == "active"  # type: ignore[union-attr]

        view = await rt.terminate(journey_id, "the client left")

        assert (view["status"], view["allowed_events"], view["current_stage"]) == ("terminated", [], "sandbox")
        # Its own state row says it ended with it: the dashboard no longer counts it in its stage.
        assert (await lc.dashboard())["active_journeys_by_stage"]["sandbox"] == 0
        with pytest.raises(JourneyFinishedError, match="terminated"):
            await rt.terminate(journey_id, "again")
        with pytest.raises(JourneyNotFoundError):
            await rt.terminate("no-such-journey", "gone")
        session_id = (await rt.session.start_session("ana", {"areas": AREAS}))["session_id"]
        await rt.session.close_session(session_id)
        with pytest.raises(JourneyFinishedError, match="closed"):
            await rt.terminate(session_id, "late")


async def test_terminating_frees_its_concurrency_slot_and_a_queued_one_is_terminated_out_of_the_queue(
    store_url: str,
) -> None:
    async with JourneyRuntime.open(store_url) as rt:
        spec = {
            "journey_type": "review",
            "steps": [{"step_id": "draft"}, {"step_id": "approve"}],
            "concurrency": {"key": "$.tenant", "limit": 1, "on_limit": "queue"},
        }
        journey_id = (await rt.saga.design_saga_journey("review", spec=spec))["journey_id"]
        first = (await rt.saga.execute_saga_journey(journey_id, "u1", {"tenant": "acme"}))["saga_id"]
        second = (await rt.saga.execute_saga_journey(journey_id, "u2", {"tenant": "acme"}))["saga_id"]
        third = (await rt.saga.execute_saga_journey(journey_id, "u3", {"tenant": "acme"}))["saga_id"]

        assert (await rt.terminate(third, "not needed"))["status"] == "terminated"  # out of the queue
        assert (await rt.terminate(first, "given up"))["status"] == "terminated"  # its slot frees

        assert await rt.instances.dispatch_queued() == [second]
        assert (await rt.saga.get_saga_status(second))["status"] == "in_progress"
        assert (await rt.saga.get_saga_status(third))["status"] == "terminated"
        assert await rt.instances.dispatch_queued() == []


async def test_a_lifecycle_terminated_in_rollback_gives_its_open_rollback_up(store_url: str) -> None:
    async with lifecycle_runtime(store_url) as (rt, clock):
        journey_id = await journey_at(rt, clock, "rollback_from_pilot")
        await rt.lifecycle.initiate_rollback(journey_id, "hold for a decision")
        [open_rollback] = await rt.lifecycle.rollback_history(journey_id)
        assert open_rollback["status"] not in ("completed", "cancelled")

        await rt.terminate(journey_id, "the client left")

        [given_up] = await rt.lifecycle.rollback_history(journey_id)
        assert (given_up["rollback_id"], given_up["status"]) == (open_rollback["rollback_id"], "cancelled")
        assert given_up["completed_at"] is not None
        assert (await rt.lifecycle.dashboard())["active_journeys_by_stage"]["rollback"] == 0

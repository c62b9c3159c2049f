"""Bad calls to the client lifecycle: each gets a typed error under JourneyError that says what is wrong
(a missing or unknown option, a wrong type, an unknown event or journey), and changes nothing. On memory,
SQLite and Postgres; over HTTP each is a 4xx problem."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from checkpoints.errors import JourneyError
from graphs import (
    InvalidInputError,
    InvalidMetricError,
    InvalidTransitionError,
    JourneyFinishedError,
    JourneyNotFoundError,
    SpecError,
    TransitionOptionsError,
    UnknownTransitionEventError,
)
from graphs.lifecycle.catalog import READY_TO_START
from server.app import create_app
from server.settings import Settings
from tests.lifecycle_support import fingerprint, journey_at, lifecycle_runtime

SANDBOX_EVENTS = ["promote_to_pilot", "initiate_rollback", "cancel_journey"]
ROLLBACK_OPTIONS = ["reason", "trigger", "rollback_to", "complete", "from_stage"]


async def test_transition_names_a_missing_or_unknown_option(store_url: str) -> None:
    async with lifecycle_runtime(store_url) as (rt, clock):
        lc = rt.lifecycle
        journey_id = await journey_at(rt, clock, "sandbox")
        before = await fingerprint(rt, journey_id)

        with pytest.raises(TransitionOptionsError) as missing:
            await lc.transition(journey_id, "initiate_rollback")
        error = missing.value
        assert (error.event, error.missing, error.unknown, error.accepted) == (
            "initiate_rollback",
            ["reason"],
            [],
            ROLLBACK_OPTIONS,
        )
        assert "initiate_rollback needs the option 'reason'" in str(error)
        assert isinstance(error, InvalidInputError) and error.category == "invalid"
        assert error.details == {
            "event": "initiate_rollback",
            "missing": ["reason"],
            "unknown": [],
            "accepted": ROLLBACK_OPTIONS,
        }

        unknown: list[tuple[str, dict[str, Any], list[str], list[str]]] = [
            ("promote_to_pilot", {"metadta": {}}, ["metadta"], ["metadata"]),  # a typo is not ignored
            ("cancel_journey", {"reason": "x", "force": True}, ["force"], ["reason"]),
            ("complete_rollback", {"reason": "x"}, ["reason"], []),
            ("initiate_rollback", {"reason": "x", "automatic": True}, ["automatic"], ROLLBACK_OPTIONS),
            ("start_journey", {"metadata": {}}, ["metadata"], ["metrics"]),
            ("mark_complete", {"metadata": {}, "b": 1, "a": 2}, ["a", "b"], ["metadata"]),
        ]
        for event, options, names, accepted in unknown:
            with pytest.raises(TransitionOptionsError) as caught:
                await lc.transition(journey_id, event, **options)
            assert (caught.value.unknown, caught.value.accepted, caught.value.missing) == (names, accepted, []), event
            assert all(repr(name) in str(caught.value) for name in names)
        assert await fingerprint(rt, journey_id) == before


async def test_transition_options_of_the_wrong_type_are_refused(store_url: str) -> None:
    async with lifecycle_runtime(store_url) as (rt, clock):
        lc = rt.lifecycle
        journey_id = await journey_at(rt, clock, "sandbox")
        before = await fingerprint(rt, journey_id)
        wrong: list[tuple[str, dict[str, Any], str]] = [
            ("initiate_rollback", {"reason": 5}, "reason"),
            ("initiate_rollback", {"reason": "  "}, "reason"),
            ("initiate_rollback", {"reason": "x", "complete": "no"}, "complete"),  # a truthy string is not True
            ("initiate_rollback", {"reason": "x", "rollback_to": 5}, "rollback_to"),
            ("initiate_rollback", {"reason": "x", "trigger": "meteor"}, "trigger"),
            ("cancel_journey", {"reason": 5}, "reason"),
            ("promote_to_pilot", {"metadata": [1]}, "metadata"),
        ]
        for event, options, named in wrong:
            with pytest.raises(InvalidInputError, match=named):
                await lc.transition(journey_id, event, **options)
        assert await fingerprint(rt, journey_id) == before
        refused_start = await journey_at(rt, clock, None, client_id="client-2")
        before_start = await fingerprint(rt, refused_start)
        with pytest.raises(InvalidMetricError, match="contract_signed"):
            await lc.transition(refused_start, "start_journey", metrics={"contract_signed": "yes"})
        assert await fingerprint(rt, refused_start) == before_start
        # The methods behind the events check the same.
        with pytest.raises(InvalidInputError, match="complete"):
            await lc.initiate_rollback(journey_id, "x", complete=1)  # type: ignore[arg-type]
        with pytest.raises(InvalidInputError, match="automatic"):
            await lc.initiate_rollback(journey_id, "x", automatic="yes")  # type: ignore[arg-type]
        assert await fingerprint(rt, journey_id) == before


async def test_an_unknown_event_is_invalid_input_naming_the_events(store_url: str) -> None:
    async with lifecycle_runtime(store_url) as (rt, clock):
        journey_id = await journey_at(rt, clock, "sandbox")
        before = await fingerprint(rt, journey_id)
        for event in ("launch", "", 5, None, ["promote_to_pilot"]):
            with pytest.raises(UnknownTransitionEventError) as caught:
                await rt.lifecycle.transition(journey_id, event)  # type: ignore[arg-type]
            error = caught.value
            assert isinstance(error, InvalidTransitionError)  # as before, but a 422, not a 409
            assert error.category == "invalid"
            assert (error.current_stage, error.allowed) == ("sandbox", SANDBOX_EVENTS)
            assert "start_journey, promote_to_pilot" in str(error)
        assert await fingerprint(rt, journey_id) == before


async def test_every_journey_method_refuses_a_bad_or_unknown_journey_id(store_url: str) -> None:
    async with lifecycle_runtime(store_url) as (rt, clock):
        lc = rt.lifecycle
        journey_id = await journey_at(rt, clock, "sandbox")
        calls: dict[str, Callable[[Any], Awaitable[Any]]] = {
            "get_journey_state": lambda j: lc.get_journey_state(j),
            "journey_card": lambda j: lc.journey_card(j),
            "promote": lambda j: lc.promote(j),
            "mark_complete": lambda j: lc.mark_complete(j),
            "transition": lambda j: lc.transition(j, "cancel_journey"),
            "cancel": lambda j: lc.cancel(j, "x"),
            "initiate_rollback": lambda j: lc.initiate_rollback(j, "x"),
            "complete_rollback": lambda j: lc.complete_rollback(j),
            "run_unit_of_work": lambda j: lc.run_unit_of_work(j, "search_quality_validation"),
            "record_metric": lambda j: lc.record_metric(j, "search_precision", 0.9),
            "record_metrics": lambda j: lc.record_metrics(j, {"search_precision": 0.9}),
            "check_rollback_triggers": lambda j: lc.check_rollback_triggers(j),
            "state_at": lambda j: lc.state_at(j, "1f0"),
            "validation_history": lambda j: lc.validation_history(j),
            "rollback_history": lambda j: lc.rollback_history(j),
            "rollback": lambda j: lc.rollback(j, "rb"),
            "units_of_work": lambda j: lc.units_of_work(j),
        }
        for name, call in calls.items():
            for bad in (5, None, "", ["j"]):
                with pytest.raises(InvalidInputError, match="journey_id") as caught:
                    await call(bad)
                assert not isinstance(caught.value, JourneyNotFoundError), name
            with pytest.raises(JourneyNotFoundError, match="no client lifecycle journey 'lifecycle_nope'"):
                await call("lifecycle_nope")
        before = await fingerprint(rt, journey_id)
        known = await rt.store.index.list_instances(pattern="lifecycle")
        with pytest.raises(InvalidInputError, match="journey_id"):
            await lc.start_journey("client-9", journey_id=5)  # type: ignore[arg-type]
        assert await rt.store.index.list_instances(pattern="lifecycle") == known
        assert await fingerprint(rt, journey_id) == before


async def test_other_arguments_of_the_wrong_type_are_refused(store_url: str) -> None:
    async with lifecycle_runtime(store_url) as (rt, clock):
        lc = rt.lifecycle
        journey_id = await journey_at(rt, clock, "sandbox")
        before = await fingerprint(rt, journey_id)
        refused: list[tuple[Callable[[], Awaitable[Any]], type[JourneyError], str]] = [
            (lambda: lc.record_metrics(journey_id, {"bug_count": 1}, at="yesterday"), InvalidMetricError, "datetime"),  # type: ignore[arg-type]
            (lambda: lc.state_at(journey_id, 5), InvalidInputError, "checkpoint_id"),  # type: ignore[arg-type]
            (lambda: lc.rollback(journey_id, 5), InvalidInputError, "rollback_id"),  # type: ignore[arg-type]
            (lambda: lc.run_unit_of_work(journey_id, 5), InvalidInputError, "uow_id"),  # type: ignore[arg-type]
            (lambda: lc.promote(journey_id, metadata=5), InvalidInputError, "metadata"),  # type: ignore[arg-type]
            (lambda: lc.start_journey("c", thresholds={"sandbox": 5}), SpecError, "thresholds.sandbox"),  # type: ignore[dict-item]
            (lambda: lc.start_journey("c", thresholds=5), InvalidInputError, "thresholds"),  # type: ignore[arg-type]
            (lambda: lc.design(spec=5), SpecError, "mapping"),  # type: ignore[arg-type]
        ]
        for call, error, named in refused:
            with pytest.raises(error, match=named):
                await call()
        assert await fingerprint(rt, journey_id) == before
        with pytest.raises(InvalidInputError, match="latest"):
            lc.use_metric_source(5)  # type: ignore[arg-type]
        with pytest.raises(InvalidInputError, match="callable"):
            lc.use_notifier(5)  # type: ignore[arg-type]


async def test_bad_transition_calls_are_4xx_problems_over_http(store_url: str) -> None:
    app = create_app(Settings(database_url=store_url, auth=False, run_timers=False))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://journeys") as http:
            started = await http.post("/journeys/lifecycle", json={"client_id": "c1", "metrics": READY_TO_START})
            assert started.status_code == 200, started.text
            path = f"/journeys/lifecycle/{started.json()['journey_id']}/transitions"
            cases: list[tuple[dict[str, Any], int, str]] = [
                ({"event": "initiate_rollback"}, 422, "TransitionOptionsError"),
                (
                    {"event": "initiate_rollback", "options": {"reason": "x", "when": "now"}},
                    422,
                    "TransitionOptionsError",
                ),
                (
                    {"event": "initiate_rollback", "options": {"reason": "x", "complete": "yes"}},
                    422,
                    "InvalidInputError",
                ),
                ({"event": "launch"}, 422, "UnknownTransitionEventError"),
                ({"event": "complete_rollback"}, 409, "InvalidTransitionError"),
            ]
            for body, status, code in cases:
                answer = await http.post(path, json=body)
                assert (answer.status_code, answer.json()["code"]) == (status, code), answer.text
            missing = (await http.post(path, json={"event": "initiate_rollback"})).json()
            assert missing["details"]["missing"] == ["reason"]
            assert "reason" in missing["detail"]
            unknown = await http.post(
                "/journeys/lifecycle/lifecycle_nope/transitions", json={"event": "cancel_journey"}
            )
            assert (unknown.status_code, unknown.json()["code"]) == (404, "JourneyNotFoundError")
            state = (await http.get(f"/journeys/lifecycle/{started.json()['journey_id']}")).json()
            assert (state["current_stage"], state["status"]) == ("sandbox", "active")


@pytest.mark.parametrize("stage", ["cancelled", "completed"])
async def test_a_metric_for_an_ended_journey_is_refused_and_nothing_is_recorded(store_url: str, stage: str) -> None:
    """``record_metric`` on a cancelled (or completed) journey stored the value and answered as if it counted,
    though no gate or rollback threshold reads an ended journey's metrics: the caller's feed was wrong, and
    nothing said so. It is refused with JourneyFinishedError (409), naming the stage."""
    async with lifecycle_runtime(store_url) as (rt, clock):
        journey_id = await journey_at(rt, clock, stage)
        before = await fingerprint(rt, journey_id)
        for record in (
            lambda: rt.lifecycle.record_metric(journey_id, "user_satisfaction", 3.2),
            lambda: rt.lifecycle.record_metrics(journey_id, {"unwatched_metric": 1.0}),
        ):
            with pytest.raises(JourneyFinishedError, match=f"is {stage}: no metric is recorded for an ended journey"):
                await record()
        assert await fingerprint(rt, journey_id) == before

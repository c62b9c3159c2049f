"""P1, the Structured Journey Orchestrator: templates, enforced order, branching, explicit specs,
design errors, retries, policies and the event log. Every test runs on memory, SQLite and Postgres."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest
from sqlalchemy import func, select

from agents import (
    AgentCall,
    AgentCallFailedError,
    AgentRequest,
    FailingAgent,
    FlakyAgent,
    PolicyViolationError,
    RecordingAgent,
    RetrySettings,
    TaskCompletion,
)
from checkpoints.errors import DuplicateInstanceError
from checkpoints.schema.tables import journey_designs
from graphs import (
    InvalidInputError,
    JourneyFinishedError,
    JourneyNotFoundError,
    JourneyNotStartedError,
    JourneyRuntime,
    ResumeValueError,
    SpecError,
    StepFailedError,
    StepOrderError,
    UnknownTemplateError,
    WrongPatternError,
)
from graphs.structured.builder import Branch, StructuredSpec

FAST = RetrySettings(max_attempts=3, initial_delay=0.001, max_delay=0.01, jitter=0.001)
MIGRATION = ["upload_content", "analyze_content", "transform_data", "validate_results"]
# Everything a structured journey may keep in its checkpointed graph state: small, bounded values.
SMALL_KEYS = {
    "context",
    "status",
    "step_input",
    "failure",
    "compensated_steps",
    "compensation_failure",
}


async def snapshot(rt: JourneyRuntime, journey_id: str, user_id: str) -> tuple[Any, ...]:
    """Everything a move could write: the events, the status view, the index row and the latest checkpoint."""
    instance_id = f"{journey_id}:{user_id}"
    events = [(e.seq, e.type, e.step, e.key, e.payload) for e in await rt.history(instance_id)]
    try:
        status: Any = await rt.structured.get_journey_status(journey_id, user_id)
    except JourneyNotFoundError:
        status = None
    saved = await rt.store.saver.aget_tuple({"configurable": {"thread_id": instance_id, "checkpoint_ns": ""}})
    return events, status, await rt.store.index.get_instance(instance_id), saved and saved.config


async def start_migration(rt: JourneyRuntime, user_id: str = "user_123", **requirements: Any) -> str:
    journey = await rt.structured.design_journey("content_migration", requirements or {"source": "legacy"})
    await rt.structured.execute_journey(journey["journey_id"], user_id, {"migration_id": "mig_001"})
    return str(journey["journey_id"])


# --- templates and the happy path -------------------------------------------------------------


async def test_unknown_template_lists_the_available_ones(store_url: str) -> None:
    async with JourneyRuntime.open(store_url) as rt:
        with pytest.raises(UnknownTemplateError) as caught:
            await rt.structured.design_journey("content_migraton", {})
        available = ["client_onboarding", "content_migration", "enterprise_migration"]
        assert caught.value.details["available"] == available
        for journey_type in available:
            assert journey_type in str(caught.value)
        async with rt.store.engine.connect() as conn:
            assert (await conn.execute(select(func.count()).select_from(journey_designs))).scalar_one() == 0


async def test_content_migration_runs_its_four_steps_in_order_to_completed(store_url: str) -> None:
    async with JourneyRuntime.open(store_url) as rt:
        journey = await rt.structured.design_journey("content_migration", {"source": "legacy", "target": "new"})
        assert journey["status"] == "designed"
        assert [s["step_id"] for s in journey["steps"]] == MIGRATION
        assert [s["next_steps"] for s in journey["steps"]] == [[MIGRATION[1]], [MIGRATION[2]], [MIGRATION[3]], []]

        started = await rt.structured.execute_journey(journey["journey_id"], "user_123", {"migration_id": "m1"})
        assert started["status"] == "in_progress"
        assert started["current_step"] == "upload_content"
        assert started["awaiting_input"] is True
        assert started["completed_steps"] == []

        for position, step in enumerate(MIGRATION):
            moved = await rt.structured.advance_journey_step(journey["journey_id"], "user_123", {"n": position})
            assert moved["completed_step"] == step
            assert moved["completed_steps"] == MIGRATION[: position + 1]
            assert moved["progress"] == {"completed": position + 1, "total": 4}
            following = MIGRATION[position + 1] if position + 1 < len(MIGRATION) else None
            assert moved["current_step"] == following
        assert moved["status"] == "completed"
        assert moved["awaiting_input"] is False

        status = await rt.structured.get_journey_status(journey["journey_id"], "user_123")
        assert status["status"] == "completed"
        assert status["completed_steps"] == MIGRATION
        instance = await rt.store.index.get_instance(started["instance_id"])
        assert instance is not None and instance.status == "completed"


async def test_step_results_reach_the_agents_with_context_and_requirements(store_url: str) -> None:
    async with JourneyRuntime.open(store_url) as rt:
        upload, analyze = RecordingAgent("upload_content"), RecordingAgent("analyze_content")
        rt.agents.register("upload_content", upload, replace=True)
        rt.agents.register("analyze_content", analyze, replace=True)
        journey_id = await start_migration(rt, source="legacy_system", target="new_system")

        await rt.structured.advance_journey_step(journey_id, "user_123", {"files_uploaded": 150})
        await rt.structured.advance_journey_step(journey_id, "user_123", {"findings": ["pii"]})

        (key,) = [e.key for e in await rt.history(f"{journey_id}:user_123") if e.step == "upload_content"]
        assert key is not None and key.startswith(f"{journey_id}:user_123:upload_content:")
        assert dict(upload.calls) == {key: 1}
        assert upload.effects[key] == {
            "step_id": "upload_content",
            "step_result": {"files_uploaded": 150},
            "context": {"migration_id": "mig_001"},
            "requirements": {"source": "legacy_system", "target": "new_system"},
        }
        (payload,) = analyze.effects.values()
        assert payload["step_result"] == {"findings": ["pii"]}
        assert payload["context"] == {"migration_id": "mig_001"}


# --- enforced order and typed, trace-free errors -----------------------------------------------


async def test_a_later_step_cannot_be_advanced_and_nothing_is_written(store_url: str) -> None:
    async with JourneyRuntime.open(store_url) as rt:
        journey_id = await start_migration(rt)
        before = await snapshot(rt, journey_id, "user_123")
        with pytest.raises(StepOrderError) as caught:
            await rt.structured.advance_journey_step(journey_id, "user_123", {}, step_id="transform_data")
        assert caught.value.allowed == ["upload_content"]
        # The step id may also ride in the result itself.
        with pytest.raises(StepOrderError) as caught:
            await rt.structured.advance_journey_step(journey_id, "user_123", {"step_id": "validate_results"})
        assert caught.value.allowed == ["upload_content"]
        with pytest.raises(StepOrderError, match="not a step of this journey"):
            await rt.structured.advance_journey_step(journey_id, "user_123", {}, step_id="no_such_step")
        # Starting the same journey twice for the same user is refused, too.
        with pytest.raises(DuplicateInstanceError):
            await rt.structured.execute_journey(journey_id, "user_123", {})
        assert await snapshot(rt, journey_id, "user_123") == before

        # Naming the current step is fine.
        moved = await rt.structured.advance_journey_step(journey_id, "user_123", {}, step_id="upload_content")
        assert moved["current_step"] == "analyze_content"


async def test_a_finished_journey_cannot_be_advanced(store_url: str) -> None:
    async with JourneyRuntime.open(store_url) as rt:
        journey_id = await start_migration(rt)
        for _ in MIGRATION:
            await rt.structured.advance_journey_step(journey_id, "user_123", {})
        before = await snapshot(rt, journey_id, "user_123")
        with pytest.raises(JourneyFinishedError) as caught:
            await rt.structured.advance_journey_step(journey_id, "user_123", {})
        assert caught.value.allowed == []
        assert await snapshot(rt, journey_id, "user_123") == before


async def test_a_never_started_journey_cannot_be_advanced(store_url: str) -> None:
    async with JourneyRuntime.open(store_url) as rt:
        journey = await rt.structured.design_journey("content_migration", {})
        before = await snapshot(rt, journey["journey_id"], "user_123")
        assert before == ([], None, None, None)
        with pytest.raises(JourneyNotStartedError) as caught:
            await rt.structured.advance_journey_step(journey["journey_id"], "user_123", {})
        assert caught.value.allowed == ["execute_journey"]
        assert await snapshot(rt, journey["journey_id"], "user_123") == before


async def test_a_result_that_breaks_the_input_schema_is_refused_untouched(store_url: str) -> None:
    async with JourneyRuntime.open(store_url) as rt:
        journey_id = await start_migration(rt)
        before = await snapshot(rt, journey_id, "user_123")
        with pytest.raises(ResumeValueError, match="expects an object"):
            await rt.structured.advance_journey_step(journey_id, "user_123", ["not", "a", "mapping"])  # type: ignore[arg-type]
        assert await snapshot(rt, journey_id, "user_123") == before

        onboarding = await rt.structured.design_journey("client_onboarding", {})
        await rt.structured.execute_journey(onboarding["journey_id"], "u", {})
        await rt.structured.advance_journey_step(onboarding["journey_id"], "u", {})
        before = await snapshot(rt, onboarding["journey_id"], "u")
        with pytest.raises(ResumeValueError) as caught:
            await rt.structured.advance_journey_step(onboarding["journey_id"], "u", {"segment": "galactic"})
        assert caught.value.details["path"] == "segment"
        with pytest.raises(ResumeValueError, match="'segment' is a required property"):
            await rt.structured.advance_journey_step(onboarding["journey_id"], "u", {"tier": "gold"})
        assert await snapshot(rt, onboarding["journey_id"], "u") == before


# --- branching ---------------------------------------------------------------------------------


async def test_the_step_result_picks_the_onboarding_branch(store_url: str) -> None:
    async with JourneyRuntime.open(store_url) as rt:
        journey = await rt.structured.design_journey("client_onboarding", {"region": "eu"})
        journey_id = journey["journey_id"]
        assert journey["steps"][1]["next_steps"] == ["enterprise_setup", "standard_setup"]
        chosen = {}
        results = {
            "big": {"segment": "enterprise"},
            "small": {"segment": "standard"},
            "forced": {"segment": "enterprise", "next_step": "standard_setup"},
        }
        for user, result in results.items():
            await rt.structured.execute_journey(journey_id, user, {})
            kicked = await rt.structured.advance_journey_step(journey_id, user, {})
            assert kicked["current_step"] == "assess_fit"
            assert kicked["next_steps"] == ["enterprise_setup", "standard_setup"]
            chosen[user] = (await rt.structured.advance_journey_step(journey_id, user, result))["current_step"]
        assert chosen == {"big": "enterprise_setup", "small": "standard_setup", "forced": "standard_setup"}

        await rt.structured.advance_journey_step(journey_id, "big", {})
        done = await rt.structured.advance_journey_step(journey_id, "big", {})
        assert done["status"] == "completed"
        assert done["completed_steps"] == ["kickoff", "assess_fit", "enterprise_setup", "go_live"]


async def test_an_unknown_next_step_is_refused_untouched(store_url: str) -> None:
    async with JourneyRuntime.open(store_url) as rt:
        journey = await rt.structured.design_journey("client_onboarding", {})
        journey_id = journey["journey_id"]
        await rt.structured.execute_journey(journey_id, "u", {})
        before = await snapshot(rt, journey_id, "u")
        # kickoff has one way on; go_live exists but is not a branch of kickoff.
        with pytest.raises(InvalidInputError) as caught:
            await rt.structured.advance_journey_step(journey_id, "u", {"next_step": "go_live"})
        assert caught.value.details["allowed"] == ["assess_fit"]
        await rt.structured.advance_journey_step(journey_id, "u", {})
        before = await snapshot(rt, journey_id, "u")
        with pytest.raises(InvalidInputError) as caught:
            await rt.structured.advance_journey_step(journey_id, "u", {"segment": "standard", "next_step": "moon_base"})
        assert caught.value.details["allowed"] == ["enterprise_setup", "standard_setup"]
        assert await snapshot(rt, journey_id, "u") == before


# --- explicit specs ----------------------------------------------------------------------------


async def test_an_explicit_spec_with_auto_steps_runs_them_without_advance(store_url: str) -> None:
    async with JourneyRuntime.open(store_url) as rt:
        agents = {intent: RecordingAgent(intent) for intent in ("fetch_data", "review_data", "publish_report")}
        for intent, agent in agents.items():
            rt.agents.register(intent, agent)
        spec = {
            "journey_type": "report_pipeline",
            "name": "Weekly report",
            "requirements": {"format": "pdf"},
            "steps": [
                {"step_id": "fetch", "mode": "auto", "agent": "fetch_data"},
                {
                    "step_id": "review",
                    "agent": "review_data",
                    "input_schema": {
                        "type": "object",
                        "properties": {"approved": {"type": "boolean"}},
                        "required": ["approved"],
                    },
                },
                {"step_id": "publish", "mode": "auto", "agent": "publish_report"},
            ],
        }
        journey = await rt.structured.design_journey("report_pipeline", {"audience": "ops"}, spec=spec)
        assert journey["requirements"] == {"format": "pdf", "audience": "ops"}
        assert [s["mode"] for s in journey["steps"]] == ["auto", "user", "auto"]

        started = await rt.structured.execute_journey(journey["journey_id"], "u", {"week": 12})
        assert started["completed_steps"] == ["fetch"]
        assert started["current_step"] == "review"
        assert started["awaiting_input"] is True
        assert sum(agents["fetch_data"].calls.values()) == 1
        assert not agents["publish_report"].calls

        with pytest.raises(ResumeValueError):
            await rt.structured.advance_journey_step(journey["journey_id"], "u", {"approved": "yes"})
        done = await rt.structured.advance_journey_step(journey["journey_id"], "u", {"approved": True})
        assert done["status"] == "completed"
        assert done["completed_steps"] == ["fetch", "review", "publish"]
        (published,) = agents["publish_report"].effects.values()
        assert published["requirements"] == {"format": "pdf", "audience": "ops"}
        assert published["context"] == {"week": 12}
        (reviewed,) = agents["review_data"].effects.values()
        assert reviewed["step_result"] == {"approved": True}


def _steps(*steps: dict[str, Any]) -> dict[str, Any]:
    return {"journey_type": "custom", "steps": list(steps)}


DESIGN_ERRORS: dict[str, tuple[dict[str, Any], str]] = {
    "unknown next step": (
        _steps({"step_id": "a", "next_steps": ["nowhere"]}),
        "step 'a' lists unknown next step 'nowhere'; known steps: a",
    ),
    "unreachable step": (
        _steps({"step_id": "a", "next_steps": []}, {"step_id": "orphan"}),
        "step 'orphan' is unreachable from the first step 'a'; list it in some step's next_steps or remove it",
    ),
    "cycle without exit": (
        _steps({"step_id": "a"}, {"step_id": "b", "next_steps": ["a"]}),
        "step 'a' has no path to an end; give a step it leads to an empty next_steps",
    ),
    "branches without default": (
        _steps(
            {"step_id": "a", "next_steps": [{"to": "b", "when": {"all": [{"field": "ok", "value": True}]}}]},
            {"step_id": "b"},
        ),
        "step 'a' branches on conditions but has no default; add a branch without `when` for results that match none",
    ),
    "duplicate step ids": (
        _steps({"step_id": "a"}, {"step_id": "a"}),
        "step ids must be unique; rename the repeated ['a']",
    ),
    "unregistered agent": (
        _steps({"step_id": "a", "agent": "ghost_writer"}),
        "step 'a' needs an agent for intent 'ghost_writer'; register one with "
        "runtime.agents.register('ghost_writer', agent)",
    ),
    "invalid input schema": (
        _steps({"step_id": "a", "input_schema": {"type": "nonsense"}}),
        "step 'a' has an invalid input_schema:",
    ),
    "bad step id": (_steps({"step_id": "Step One"}), "must be lower_snake_case"),
    "typo field": (_steps({"step_id": "a", "nxt_steps": []}), "steps.0.nxt_steps: Extra inputs are not permitted"),
}


async def test_design_errors_are_reported_with_fixes(store_url: str) -> None:
    async with JourneyRuntime.open(store_url) as rt:
        for case, (spec, expected) in DESIGN_ERRORS.items():
            with pytest.raises(SpecError) as caught:
                await rt.structured.design_journey("custom", {}, spec=spec)
            assert any(expected in p for p in caught.value.problems), (case, caught.value.problems)
            assert expected in str(caught.value), case
        # The cycle names both of its steps; nothing was saved for any of the bad designs.
        with pytest.raises(SpecError) as caught:
            await rt.structured.design_journey("custom", {}, spec=DESIGN_ERRORS["cycle without exit"][0])
        assert len(caught.value.problems) == 2
        async with rt.store.engine.connect() as conn:
            assert (await conn.execute(select(func.count()).select_from(journey_designs))).scalar_one() == 0
        # A cycle with an exit is fine.
        loop = _steps(
            {"step_id": "draft"},
            {
                "step_id": "check",
                "next_steps": [{"to": "draft", "when": {"all": [{"field": "redo", "value": True}]}}, {"to": "done"}],
            },
            {"step_id": "done"},
        )
        journey = await rt.structured.design_journey("custom", {}, spec=loop)
        await rt.structured.execute_journey(journey["journey_id"], "u", {})
        for result in ({}, {"redo": True}, {}, {}):
            moved = await rt.structured.advance_journey_step(journey["journey_id"], "u", result)
        assert moved["completed_steps"] == ["draft", "check", "draft", "check"]
        assert moved["current_step"] == "done"


async def test_a_branch_takes_one_condition_as_a_process_flow_does(store_url: str) -> None:
    """A process flow's ``when`` may be one condition (``{"field", "op", "value"}``); a structured branch's
    was refused with four unrelated pydantic lines. Criteria now take a bare condition everywhere."""
    async with JourneyRuntime.open(store_url) as rt:
        spec = _steps(
            {
                "step_id": "review",
                "next_steps": [{"to": "fast", "when": {"field": "priority", "value": "high"}}, "slow"],
            },
            {"step_id": "fast"},
            {"step_id": "slow"},
        )
        journey = await rt.structured.design_journey("custom", {}, spec=spec)
        await rt.structured.execute_journey(journey["journey_id"], "u", {})
        moved = await rt.structured.advance_journey_step(journey["journey_id"], "u", {"priority": "high"})
        assert moved["current_step"] == "fast"


async def test_a_design_error_names_only_what_is_wrong() -> None:
    """One bad step was also reported as "steps: Tuple should have at least 1 item after validation, not 0"
    (the count of the steps that validated), and a bad branch as "Input should be a valid string" (the
    other side of ``str | Branch``): problems that are not the user's. Only the real ones are listed."""
    async with JourneyRuntime.open("memory://") as rt:
        cases = {
            "typo field": (
                _steps({"step_id": "a", "nxt_steps": []}),
                ["steps.0.nxt_steps: Extra inputs are not permitted"],
            ),
            "bad op": (
                _steps(
                    {"step_id": "a", "next_steps": [{"to": "b", "when": {"field": "x", "op": "="}}, "b"]},
                    {"step_id": "b"},
                ),
                [
                    "steps.0.next_steps.0.Branch.when.all.0.op: Input should be "
                    "'==', '!=', '>', '>=', '<', '<=', 'in', 'not_in', 'exists' or 'truthy'"
                ],
            ),
        }
        for case, (spec, problems) in cases.items():
            with pytest.raises(SpecError) as caught:
                await rt.structured.design_journey("custom", {}, spec=spec)
            assert caught.value.problems == problems, case


@pytest.mark.parametrize("requirements", [{...}, ["source"], "legacy"])
async def test_requirements_that_are_not_a_mapping_are_refused_with_a_typed_error(requirements: Any) -> None:
    """The seed writes ``requirements={...}``; copied as is, that is a set, and the design failed with a bare
    TypeError. It is now an InvalidInputError that says what requirements must be, as ``context`` is."""
    async with JourneyRuntime.open("memory://") as rt:
        for design in (
            lambda: rt.structured.design_journey(journey_type="content_migration", requirements=requirements),
            lambda: rt.structured.design_journey("x", requirements, spec=_steps({"step_id": "a"})),
            lambda: rt.saga.design_saga_journey("enterprise_migration", requirements, compensation_handlers={}),
        ):
            with pytest.raises(InvalidInputError, match="requirements must be a mapping"):
                await design()


async def test_an_advance_of_another_patterns_journey_names_its_orchestrator(store_url: str) -> None:
    """``advance_journey_step`` given a saga's or a session's id said the run "has not been started; execute
    the journey first", and executing it was then refused as another pattern's. It says so at once."""
    async with JourneyRuntime.open(store_url) as rt:
        saga = await rt.saga.design_saga_journey("enterprise_migration", {}, compensation_handlers={})
        await rt.saga.execute_saga_journey(saga["journey_id"], "u", {})
        session = await rt.session.start_session("u", {"areas": [{"area_id": "a"}]})
        for journey_id, pattern in ((saga["journey_id"], "saga"), (session["session_id"], "session")):
            with pytest.raises(WrongPatternError, match=f"is a {pattern} journey, not structured; use the {pattern}"):
                await rt.structured.advance_journey_step(journey_id, "u", {})
        with pytest.raises(JourneyNotFoundError):
            await rt.structured.advance_journey_step("journey_nope", "u", {})
        design = await rt.structured.design_journey("content_migration")
        with pytest.raises(JourneyNotStartedError, match="execute the journey first"):
            await rt.structured.advance_journey_step(design["journey_id"], "u", {})


# --- retries and failures ----------------------------------------------------------------------


async def test_a_flaky_agent_is_retried_and_the_attempts_are_recorded(store_url: str) -> None:
    async with JourneyRuntime.open(store_url, retry=FAST) as rt:
        flaky = FlakyAgent("upload_content", failures=2)
        rt.agents.register("upload_content", flaky, replace=True)
        journey_id = await start_migration(rt)
        moved = await rt.structured.advance_journey_step(journey_id, "user_123", {"files": 1})
        assert moved["current_step"] == "analyze_content"
        assert flaky.attempts == 3
        (completed,) = [e for e in await rt.history(f"{journey_id}:user_123") if e.type == "step.completed"]
        assert completed.payload["attempts"] == 3
        assert completed.payload["output"] == {"status": "complete", "intent": "upload_content", "attempts": 3}


async def test_a_failing_step_fails_the_journey_until_retried(store_url: str) -> None:
    async with JourneyRuntime.open(store_url, retry=FAST) as rt:
        failing = FailingAgent("analyze_content")
        rt.agents.register("analyze_content", failing, replace=True)
        journey_id = await start_migration(rt)
        await rt.structured.advance_journey_step(journey_id, "user_123", {})
        with pytest.raises(AgentCallFailedError) as caught:
            await rt.structured.advance_journey_step(journey_id, "user_123", {"depth": "full"})
        assert caught.value.details["attempts"] == 3
        assert failing.attempts == 3

        status = await rt.structured.get_journey_status(journey_id, "user_123")
        assert status["status"] == "failed"
        assert status["failed_step"] == "analyze_content"
        assert status["completed_steps"] == ["upload_content"]
        instance = await rt.store.index.get_instance(f"{journey_id}:user_123")
        assert instance is not None and instance.status == "failed"

        before = await snapshot(rt, journey_id, "user_123")
        with pytest.raises(StepFailedError) as refused:
            await rt.structured.advance_journey_step(journey_id, "user_123", {})
        assert refused.value.allowed == ["retry_journey_step"]
        assert await snapshot(rt, journey_id, "user_123") == before

        recovered = RecordingAgent("analyze_content")
        rt.agents.register("analyze_content", recovered, replace=True)
        retried = await rt.structured.retry_journey_step(journey_id, "user_123")
        assert retried["status"] == "in_progress"
        assert retried["completed_steps"] == ["upload_content", "analyze_content"]
        assert retried["current_step"] == "transform_data"
        # The retry re-used the result the user gave with the failed advance.
        (payload,) = recovered.effects.values()
        assert payload["step_result"] == {"depth": "full"}
        history = await rt.history(f"{journey_id}:user_123")
        types = [e.type for e in history]
        assert types[-4:] == ["agent.failed", "instance.failed", "step.retried", "step.completed"]
        assert (history[-3].payload["pattern"], history[-3].payload["cause"]) == ("structured", "step")


async def test_a_step_the_user_reports_failed_fails_the_journey_and_its_retry_asks_for_the_result_again(
    store_url: str,
) -> None:
    # It completed before: the agent was called with the report as its input, and the journey went on.
    async with JourneyRuntime.open(store_url) as rt:
        analyze = RecordingAgent("analyze_content")
        rt.agents.register("analyze_content", analyze, replace=True)
        journey_id = await start_migration(rt)
        await rt.structured.advance_journey_step(journey_id, "user_123", {"files": 1})
        reported = {"status": "failed", "error": "the analysis service refused the files"}
        answer = await rt.structured.advance_journey_step(journey_id, "user_123", reported)
        assert (answer["status"], answer.get("failed_step"), answer["completed_step"]) == (
            "failed",
            "analyze_content",
            None,
        )
        assert (answer["completed_steps"], analyze.calls) == (["upload_content"], {})
        instance = await rt.store.index.get_instance(f"{journey_id}:user_123")
        assert instance is not None and instance.status == "failed"
        with pytest.raises(StepFailedError):
            await rt.structured.advance_journey_step(journey_id, "user_123", {"depth": "full"})

        retried = await rt.structured.retry_journey_step(journey_id, "user_123")
        assert (retried["status"], retried["current_step"], retried["awaiting_input"]) == (
            "in_progress",
            "analyze_content",
            True,
        )
        assert analyze.calls == {}  # asked again, not run with the report
        moved = await rt.structured.advance_journey_step(journey_id, "user_123", {"depth": "full"})
        assert (moved["completed_step"], moved["current_step"]) == ("analyze_content", "transform_data")
        (payload,) = analyze.effects.values()
        assert payload["step_result"] == {"depth": "full"}
        history = await rt.history(f"{journey_id}:user_123")
        (failed,) = [e for e in history if e.type == "instance.failed"]
        assert failed.payload["error_type"] == "StepReportedFailedError"
        assert "the analysis service refused the files" in failed.payload["error"]
        assert [e.type for e in history].count("step.retried") == 1


COUNTED_FILES = {
    "journey_type": "file_count",
    "steps": [
        {
            "step_id": "count",
            "agent": "count_files",
            "input_schema": {
                "type": "object",
                "properties": {"files": {"type": "integer"}},
                "required": ["files"],
                "additionalProperties": False,
            },
        },
        {"step_id": "archive", "agent": "archive", "mode": "auto"},
    ],
}


async def test_a_step_whose_schema_requires_its_success_fields_takes_a_failure_report(store_url: str) -> None:
    """A user could not report such a step failed: the report was refused (ResumeValueError) for lacking the
    success fields. It is checked as a report (``error``, if given, a string) and fails the journey there."""
    async with JourneyRuntime.open(store_url) as rt:
        count = RecordingAgent("count_files")
        rt.agents.register("count_files", count, replace=True)
        rt.agents.register("archive", RecordingAgent("archive"), replace=True)
        design = await rt.structured.design_journey("file_count", spec=COUNTED_FILES)
        journey_id = design["journey_id"]
        await rt.structured.execute_journey(journey_id, "ana", {})
        before = await snapshot(rt, journey_id, "ana")
        with pytest.raises(ResumeValueError, match="at error"):  # a report is checked as one: nothing applied
            await rt.structured.advance_journey_step(journey_id, "ana", {"status": "failed", "error": 3})
        assert await snapshot(rt, journey_id, "ana") == before

        reported = await rt.structured.advance_journey_step(
            journey_id, "ana", {"status": "failed", "error": "the share is unreachable"}
        )
        assert (reported["status"], reported.get("failed_step"), count.calls) == ("failed", "count", {})
        retried = await rt.structured.retry_journey_step(journey_id, "ana")
        assert (retried["current_step"], retried["awaiting_input"]) == ("count", True)
        done = await rt.structured.advance_journey_step(journey_id, "ana", {"files": 4})
        assert done["status"] == "completed"
        (payload,) = count.effects.values()
        assert payload["step_result"] == {"files": 4}


async def test_an_agent_output_reporting_failure_is_a_failed_attempt_not_a_completion(store_url: str) -> None:
    # It completed before: {"status": "failed"} was logged as the step's output and the journey went on.
    outputs = iter([{"status": "failed", "error": "quota exceeded"}, {"status": "failed"}, {"status": "complete"}])

    def analyze(_request: AgentRequest) -> dict[str, Any]:
        return next(outputs)

    async with JourneyRuntime.open(store_url, retry=RetrySettings(max_attempts=2, initial_delay=0.001)) as rt:
        rt.agents.register("analyze_content", analyze, replace=True)
        journey_id = await start_migration(rt)
        await rt.structured.advance_journey_step(journey_id, "user_123", {"files": 1})
        with pytest.raises(AgentCallFailedError, match="reported that its work failed") as caught:
            await rt.structured.advance_journey_step(journey_id, "user_123", {"depth": "full"})
        assert caught.value.details["error_type"] == "AgentReportedFailureError"
        status = await rt.structured.get_journey_status(journey_id, "user_123")
        assert (status["status"], status.get("failed_step"), status["completed_steps"]) == (
            "failed",
            "analyze_content",
            ["upload_content"],
        )
        history = await rt.history(f"{journey_id}:user_123")
        attempts = [e.payload for e in history if e.type == "agent.attempt_failed"]
        assert [a["error"] for a in attempts] == [
            "agent for intent 'analyze_content' reported that its work failed: quota exceeded",
            "agent for intent 'analyze_content' reported that its work failed",
        ]
        retried = await rt.structured.retry_journey_step(journey_id, "user_123")  # the agent answers complete now
        assert (retried["status"], retried["current_step"]) == ("in_progress", "transform_data")


# --- policies ----------------------------------------------------------------------------------


async def test_a_policy_hook_sees_every_call_and_can_block_one(store_url: str) -> None:
    seen: list[tuple[str | None, str]] = []

    def no_analysis_on_weekends(call: AgentCall | TaskCompletion) -> None:
        if not isinstance(call, AgentCall):  # a person's answer: policies see those too
            return
        seen.append((call.step, call.agent.intent))
        if call.payload["step_result"].get("weekend"):
            raise PolicyViolationError("no analysis on weekends", intent=call.agent.intent)

    async with JourneyRuntime.open(store_url, policies=[no_analysis_on_weekends], retry=FAST) as rt:
        analyze = RecordingAgent("analyze_content")
        rt.agents.register("analyze_content", analyze, replace=True)
        journey_id = await start_migration(rt)
        await rt.structured.advance_journey_step(journey_id, "user_123", {})
        with pytest.raises(PolicyViolationError, match="no analysis on weekends"):
            await rt.structured.advance_journey_step(journey_id, "user_123", {"weekend": True})
        assert seen == [("upload_content", "upload_content"), ("analyze_content", "analyze_content")]
        assert not analyze.calls
        events = await rt.history(f"{journey_id}:user_123")
        assert [e.step for e in events if e.type == "step.completed"] == ["upload_content"]
        assert not [e for e in events if e.type == "agent.failed"]  # refused before the call, not failed in it
        status = await rt.structured.get_journey_status(journey_id, "user_123")
        assert status["status"] == "failed"
        assert status["failed_step"] == "analyze_content"


async def test_least_privilege_refuses_an_agent_needing_ungranted_scopes(store_url: str) -> None:
    async with JourneyRuntime.open(store_url) as rt:
        writer, reader = RecordingAgent("write_content"), RecordingAgent("read_profiles")
        rt.agents.register("write_content", writer, permissions={"content:write"})
        rt.agents.register("read_profiles", reader, permissions={"pii:read"})
        spec = {
            "journey_type": "publishing",
            "permissions": ["content:write"],
            "steps": [{"step_id": "write", "agent": "write_content"}, {"step_id": "enrich", "agent": "read_profiles"}],
        }
        journey = await rt.structured.design_journey("publishing", {}, spec=spec)
        await rt.structured.execute_journey(journey["journey_id"], "u", {})
        await rt.structured.advance_journey_step(journey["journey_id"], "u", {})
        assert sum(writer.calls.values()) == 1
        with pytest.raises(PolicyViolationError) as caught:
            await rt.structured.advance_journey_step(journey["journey_id"], "u", {})
        assert caught.value.details["missing"] == ["pii:read"]
        assert not reader.calls


# --- the event log and the checkpoint ----------------------------------------------------------


async def test_one_keyed_step_completed_event_per_step_with_increasing_seq(store_url: str) -> None:
    async with JourneyRuntime.open(store_url) as rt:
        journey = await rt.structured.design_journey("content_migration", {})
        journey_id = journey["journey_id"]
        for user in ("ann", "bob"):
            await rt.structured.execute_journey(journey_id, user, {})
        # Interleave the two runs: each keeps its own gap-free sequence.
        for _ in MIGRATION:
            for user in ("ann", "bob"):
                await rt.structured.advance_journey_step(journey_id, user, {"by": user})
        for user in ("ann", "bob"):
            instance_id = f"{journey_id}:{user}"
            events = await rt.history(instance_id)
            assert [e.seq for e in events] == list(range(1, len(events) + 1))
            assert {e.instance_id for e in events} == {instance_id}
            assert events[0].type == "journey.started"
            completed = [e for e in events if e.type == "step.completed"]
            assert [e.step for e in completed] == MIGRATION
            # Keyed by instance, step and the superstep it ran in: distinct, and the same on a replay.
            keys = [e.key or "" for e in completed]
            assert len(set(keys)) == len(MIGRATION)
            assert all(
                re.fullmatch(rf"{re.escape(instance_id)}:{s}:\d+", k) for s, k in zip(MIGRATION, keys, strict=True)
            )
            assert all(e.payload["step_result"] == {"by": user} for e in completed)
            assert [e.payload["next_step"] for e in completed] == [*MIGRATION[1:], None]


async def test_the_checkpoint_keeps_only_small_state_and_the_log_keeps_the_history(store_url: str) -> None:
    async with JourneyRuntime.open(store_url) as rt:

        def bulky(request: AgentRequest) -> dict[str, Any]:
            return {"step": request.step, "report": request.step * 500}  # type: ignore[operator]

        for intent in MIGRATION:
            rt.agents.register(intent, bulky, replace=True)
        journey_id = await start_migration(rt)
        for step in MIGRATION:
            await rt.structured.advance_journey_step(journey_id, "user_123", {"note": step * 300})

        saved = await rt.store.saver.aget_tuple(
            {"configurable": {"thread_id": f"{journey_id}:user_123", "checkpoint_ns": ""}}
        )
        assert saved is not None
        values = {k: v for k, v in saved.checkpoint["channel_values"].items() if not k.startswith("branch:")}
        assert set(values) <= SMALL_KEYS
        # Progress is not checkpointed: a step writes nothing but its route, and only the last user
        # step's answer (read by that step's work) stays.
        assert values["step_input"] == {"note": "validate_results" * 300}
        dumped = json.dumps(values)
        for earlier in MIGRATION:
            assert earlier * 500 not in dumped  # no agent output is carried along
        for earlier in MIGRATION[:-1]:
            assert earlier * 300 not in dumped  # nor are earlier users' results
        assert len(dumped) < 9000
        view = await rt.structured.get_journey_status(journey_id, "user_123")
        assert view["completed_steps"] == MIGRATION
        assert view["last_output"]["step"] == "validate_results"

        outputs = [
            e.payload["output"] for e in await rt.history(f"{journey_id}:user_123") if e.type == "step.completed"
        ]
        assert [o["report"] for o in outputs] == [s * 500 for s in MIGRATION]


RETRY = {"all": [{"field": "retry", "value": True}]}


def test_a_specs_branches_are_resolved_once_and_handed_out_as_new_lists() -> None:
    spec = StructuredSpec.model_validate(
        {
            "journey_type": "branching",
            "steps": [
                {"step_id": "a", "agent": "x"},
                {"step_id": "b", "agent": "x", "next_steps": ["c", {"to": "a", "when": RETRY}]},
                {"step_id": "c", "agent": "x", "next_steps": []},
            ],
        }
    )
    assert spec.branches("a") == [Branch(to="b")]
    assert spec.branches("b") == [Branch(to="c"), Branch.model_validate({"to": "a", "when": RETRY})]
    assert spec.branches("c") == []
    assert spec.choose_next("b", {"retry": True}) == "a" and spec.choose_next("b", {}) == "c"
    spec.branches("a").append(Branch(to="c"))  # a caller's list is its own
    assert spec.branches("a") == [Branch(to="b")]
    assert spec == StructuredSpec.model_validate(spec.model_dump())  # the cache is no part of the spec
    with pytest.raises(KeyError):
        spec.branches("missing")


async def test_a_run_nobody_streams_builds_no_per_node_updates_and_still_stops_at_its_user_step(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run without a stream sink asks LangGraph for its final state alone (``run_graph``): LangGraph's
    default ``ainvoke`` also streams every node's update, only to look for interrupts in them, which was a
    twentieth of a journey's CPU. The interrupt a run stops at must still reach the caller."""
    import langgraph.pregel._loop as pregel_loop

    built: list[object] = []
    original = pregel_loop.map_output_updates

    def counted(*args: Any, **kwargs: Any) -> Any:
        built.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(pregel_loop, "map_output_updates", counted)
    spec = {
        "journey_type": "auto_then_review",
        "steps": [
            {"step_id": "gather", "mode": "auto", "agent": "gather"},
            {"step_id": "check", "mode": "auto", "agent": "check"},
            {"step_id": "review", "mode": "user", "input_schema": {"type": "object", "required": ["ok"]}},
            {"step_id": "send", "mode": "auto", "agent": "send"},
        ],
    }
    async with JourneyRuntime.open(store_url) as rt:
        for intent in ("gather", "check", "send"):
            rt.agents.register(intent, lambda request, intent=intent: {"done": intent})
        journey_id = (await rt.structured.design_journey("auto_then_review", spec=spec))["journey_id"]
        users = [f"user-{n}" for n in range(3)]
        started = await asyncio.gather(*(rt.structured.execute_journey(journey_id, user) for user in users))
        for view in started:
            assert (view["status"], view["current_step"], view["awaiting_input"]) == ("in_progress", "review", True)
            assert view["completed_steps"] == ["gather", "check"]
        finished = await asyncio.gather(
            *(rt.structured.advance_journey_step(journey_id, user, {"ok": True}) for user in users)
        )
        for view in finished:
            assert (view["status"], view["completed_steps"]) == ("completed", ["gather", "check", "review", "send"])
        assert built == []


async def test_a_start_answers_the_view_a_status_read_gives_without_reading_the_log_back(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A start's view (completed steps in order, last output) was built from a read of the log's step
    completions right after the run that wrote them. The run that registered the journey knows them: the
    view is built from them, and is the one a status read (which reads the log) gives. Several users at
    once; a step visited twice in the start, one that completes in its start, and a saga that fails and
    compensates in its start; a start a crash cut short, run again, still reads the log."""
    from checkpoints.events import EventLog
    from nodes.compensation import COMPLETED_STEP

    reads: list[str] = []
    listed = EventLog.list

    async def counted(self: EventLog, instance_id: str, **kwargs: Any) -> Any:
        if kwargs.get("types") == [COMPLETED_STEP]:
            reads.append(instance_id)
        return await listed(self, instance_id, **kwargs)

    monkeypatch.setattr(EventLog, "list", counted)
    again = {"all": [{"field": "output.again", "value": True}]}
    looping = {
        "journey_type": "looping",
        "steps": [
            {"step_id": "draft", "mode": "auto", "agent": "draft"},
            {
                "step_id": "check",
                "mode": "auto",
                "agent": "check",
                "next_steps": [{"to": "draft", "when": again}, "review"],
            },
            {"step_id": "review", "mode": "user"},
            {"step_id": "send", "mode": "auto", "agent": "send"},
        ],
    }
    auto = {
        "journey_type": "auto",
        "steps": [{"step_id": "a", "mode": "auto", "agent": "draft"}, {"step_id": "b", "mode": "auto"}],
    }
    failing = {
        "journey_type": "failing",
        "steps": [
            {"step_id": "a", "mode": "auto", "agent": "draft"},
            {"step_id": "b", "mode": "auto", "agent": "broken"},
        ],
    }
    checks: dict[str, int] = {}

    def check(request: AgentRequest) -> dict[str, Any]:
        checks[request.instance_id] = checks.get(request.instance_id, 0) + 1
        return {"again": checks[request.instance_id] == 1, "round": checks[request.instance_id]}

    async with JourneyRuntime.open(store_url, retry=FAST) as rt:
        rt.agents.register("draft", lambda request: {"text": f"draft of {request.instance_id}"})
        rt.agents.register("check", check)
        rt.agents.register("send", lambda request: {"sent": True})
        rt.agents.register("broken", FailingAgent("broken"))
        rt.agents.register("undo", lambda request: {"undone": True})
        loop_id = (await rt.structured.design_journey("looping", spec=looping))["journey_id"]
        auto_id = (await rt.structured.design_journey("auto", spec=auto))["journey_id"]
        saga = await rt.saga.design_saga_journey("failing", {}, {"a": "undo"}, spec=failing)
        users = [f"user-{n}" for n in range(3)]
        started = await asyncio.gather(
            *(rt.structured.execute_journey(loop_id, user) for user in users),
            *(rt.structured.execute_journey(auto_id, user) for user in users),
            *(rt.saga.execute_saga_journey(saga["journey_id"], user) for user in users),
        )
        # No start read its completed steps back (a saga's compensation reads those it undoes).
        assert [r for r in reads if not r.startswith("saga_")] == []
        reads.clear()
        for view in started[:3]:
            assert view["completed_steps"] == ["draft", "check", "draft", "check"]
            assert (view["current_step"], view["last_output"]) == ("review", {"again": False, "round": 2})
        for view in started[3:6]:
            assert (view["status"], view["completed_steps"]) == ("completed", ["a", "b"])
        for view in started[6:]:
            assert (view["status"], view["completed_steps"], view["compensated_steps"]) == ("compensated", ["a"], ["a"])
            assert view["last_output"] == {"text": f"draft of {view['instance_id']}"}
        for view in started[:6]:
            assert await rt.structured.run_status(view["instance_id"]) == view
        for view in started[6:]:
            assert await rt.saga.get_saga_status(view["instance_id"]) == view
        assert len(reads) == len(started)  # status reads do read the log
        # A start a crash cut short before its first checkpoint (registered, one step logged) is run again.
        instance_id = "cut-short"
        await rt.structured.start_run(instance_id, loop_id, "user-9")
        await rt.store.saver.adelete_thread(instance_id)
        reads.clear()
        rerun = await rt.structured.start_run(instance_id, loop_id, "user-9")
        assert reads == [instance_id] and rerun == await rt.structured.run_status(instance_id)
        assert rerun["completed_steps"] == ["draft", "check", "draft", "check"]

"""P4, the Saga Journey Orchestrator: a structured journey whose failure compensates every completed
step in reverse order. Every test runs on memory, SQLite and Postgres."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from agents import AgentRequest, FailingAgent, RecordingAgent, RetrySettings, TransientAgentError
from graphs import (
    InvalidInputError,
    JourneyFinishedError,
    JourneyNotFoundError,
    JourneyRuntime,
    NothingToRetryError,
    SpecError,
)

FAST = RetrySettings(max_attempts=3, initial_delay=0.001, max_delay=0.01, jitter=0.001)
MIGRATION = ["upload_content", "analyze_content", "transform_data", "validate_results"]
HANDLERS = {
    "upload_content": "delete_uploaded_content",
    "analyze_content": "revert_analysis",
    "transform_data": "revert_transformation",
}


def recorders(rt: JourneyRuntime, order: list[str]) -> dict[str, RecordingAgent]:
    """A recording agent per compensation handler; ``order`` receives the handler intents as they run."""
    agents = {}
    for handler in HANDLERS.values():
        agents[handler] = RecordingAgent(handler)

        def agent(request: AgentRequest, rec: RecordingAgent = agents[handler]) -> Any:
            order.append(rec.intent)
            return rec(request)

        rt.agents.register(handler, agent, replace=True)
    return agents


async def start_saga(rt: JourneyRuntime, user_id: str = "user_123") -> tuple[str, str]:
    saga = await rt.saga.design_saga_journey("enterprise_migration", {"source": "legacy"}, HANDLERS)
    execution = await rt.saga.execute_saga_journey(saga["journey_id"], user_id, {"migration_id": "mig_001"})
    return saga["journey_id"], execution["saga_id"]


async def test_a_saga_that_succeeds_completes_without_compensation(store_url: str) -> None:
    async with JourneyRuntime.open(store_url) as rt:
        order: list[str] = []
        recorders(rt, order)
        saga = await rt.saga.design_saga_journey("enterprise_migration", {"source": "legacy"}, HANDLERS)
        assert saga["compensation_handlers"] == HANDLERS
        assert saga["pattern"] == "saga"
        assert [s["step_id"] for s in saga["steps"]] == MIGRATION
        execution = await rt.saga.execute_saga_journey(saga["journey_id"], "user_123", {"migration_id": "m"})
        saga_id = execution["saga_id"]
        assert execution["status"] == "in_progress"
        assert execution["current_step"] == "upload_content"
        for step in MIGRATION:
            moved = await rt.saga.advance_saga_step(saga_id, saga["journey_id"], "user_123", {"done": step})
            assert moved["completed_step"] == step
        status = await rt.saga.get_saga_status(saga_id)
        assert status["status"] == "completed"
        assert status["saga_id"] == saga_id
        assert status["completed_steps"] == MIGRATION
        assert status["compensated_steps"] == []
        assert (status["failure"], status["compensation_failure"]) == (None, None)
        assert order == []
        instance = await rt.store.index.get_instance(saga_id)
        assert instance is not None and (instance.status, instance.pattern) == ("completed", "saga")
        # Each execution is its own saga, also for the same user.
        again = await rt.saga.execute_saga_journey(saga["journey_id"], "user_123", {})
        assert again["saga_id"] != saga_id
        with pytest.raises(JourneyFinishedError):
            await rt.saga.advance_saga_step(saga_id, saga["journey_id"], "user_123", {})


async def test_a_failing_step_compensates_the_completed_steps_in_reverse(store_url: str) -> None:
    async with JourneyRuntime.open(store_url, retry=FAST) as rt:
        order: list[str] = []
        handlers = recorders(rt, order)
        statuses_during_undo: list[str] = []
        inner = handlers["delete_uploaded_content"]

        async def delete_uploaded_content(request: AgentRequest) -> Any:
            instance = await rt.store.index.get_instance(request.instance_id)
            statuses_during_undo.append(instance.status if instance else "?")
            order.append("delete_uploaded_content")
            return inner(request)

        rt.agents.register("delete_uploaded_content", delete_uploaded_content, replace=True)
        validator = FailingAgent("validate_results", permanent=True, message="checksums differ")
        rt.agents.register("validate_results", validator, replace=True)
        journey_id, saga_id = await start_saga(rt)
        for step in MIGRATION[:3]:
            await rt.saga.advance_saga_step(saga_id, journey_id, "user_123", {"files": [step]})

        result = await rt.saga.advance_saga_step(saga_id, journey_id, "user_123", {"files": ["validate"]})
        assert (result["status"], result["completed_step"]) == ("compensated", None)  # it named validate_results
        assert order == ["revert_transformation", "revert_analysis", "delete_uploaded_content"]
        assert result["compensated_steps"] == ["transform_data", "analyze_content", "upload_content"]
        assert result["failure"]["step"] == "validate_results"
        assert "checksums differ" in result["failure"]["error"]
        assert statuses_during_undo == ["compensating"]
        assert validator.attempts == 1  # a permanent failure is not retried

        events = await rt.history(saga_id)
        outputs = {e.step: e.payload["output"] for e in events if e.type == "step.completed"}
        assert outputs["upload_content"] == {"status": "complete", "intent": "upload_content", "received": ["files"]}
        for step, handler in HANDLERS.items():
            (key,) = handlers[handler].calls
            assert handlers[handler].calls[key] == 1
            payload = handlers[handler].effects[key]
            assert payload["step_id"] == step
            assert payload["original_output"] == outputs[step]
            assert payload["step_result"] == {"files": [step]}
            assert payload["context"] == {"migration_id": "mig_001"}
            assert payload["failure"]["step"] == "validate_results"

        tail = [(e.type, e.step) for e in events if e.type.startswith(("saga.", "compensation.", "instance."))]
        assert tail == [
            ("saga.compensating", "validate_results"),
            ("compensation.completed", "transform_data"),
            ("compensation.completed", "analyze_content"),
            ("compensation.completed", "upload_content"),
            ("saga.compensated", None),
        ]
        assert events[-1].payload == {"compensated_steps": ["transform_data", "analyze_content", "upload_content"]}
        assert [e.seq for e in events] == list(range(1, len(events) + 1))

        status = await rt.saga.get_saga_status(saga_id)
        assert (status["status"], status["current_step"]) == ("compensated", None)
        instance = await rt.store.index.get_instance(saga_id)
        assert instance is not None and instance.status == "compensated"
        with pytest.raises(JourneyFinishedError):
            await rt.saga.advance_saga_step(saga_id, journey_id, "user_123", {})
        assert order == ["revert_transformation", "revert_analysis", "delete_uploaded_content"]


async def test_a_step_the_user_reports_failed_compensates_the_completed_steps_in_reverse(store_url: str) -> None:
    # The seed's "advance saga steps (automatic compensation on failure)": a step result saying the step failed is
    # a failure, as its agent's would be; it completed before, with the default agent's "complete".
    async with JourneyRuntime.open(store_url) as rt:
        order: list[str] = []
        recorders(rt, order)
        transform = RecordingAgent("transform_data")
        rt.agents.register("transform_data", transform, replace=True)
        journey_id, saga_id = await start_saga(rt)
        for step in MIGRATION[:2]:
            await rt.saga.advance_saga_step(saga_id, journey_id, "user_123", {"files": [step]})

        reported = {"status": "failed", "error": "the target ran out of space"}
        result = await rt.saga.advance_saga_step(saga_id, journey_id, "user_123", reported)
        assert (result["status"], result["compensated_steps"]) == ("compensated", ["analyze_content", "upload_content"])
        assert result["completed_step"] is None  # it named transform_data, which failed
        assert order == ["revert_analysis", "delete_uploaded_content"]
        assert result["failure"] == {
            "step": "transform_data",
            "error": "the target ran out of space",
            "error_type": "StepReportedFailed",
        }
        assert transform.calls == {}  # the step's work is not done once the user says it failed
        events = [(e.type, e.step) for e in await rt.history(saga_id)]
        assert ("step.completed", "transform_data") not in events
        assert ("saga.compensating", "transform_data") in events


class FlakyCompensation:
    """Fails transiently ``failures`` times, then applies its effect, once per idempotency key."""

    def __init__(self, intent: str, failures: int) -> None:
        self.__name__ = f"flaky-undo:{intent}"
        self.failures = failures
        self.attempts = 0
        self.applied: Counter[str] = Counter()

    def __call__(self, request: AgentRequest) -> dict[str, Any]:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise TransientAgentError(f"undo unavailable ({self.attempts})")
        self.applied[str(request.idempotency_key)] += 1
        return {"reverted": request.payload["step_id"]}


async def test_a_transiently_failing_compensation_is_retried_and_applied_once(store_url: str) -> None:
    async with JourneyRuntime.open(store_url, retry=FAST) as rt:
        order: list[str] = []
        recorders(rt, order)
        flaky = FlakyCompensation("revert_analysis", failures=2)
        rt.agents.register("revert_analysis", flaky, replace=True)
        rt.agents.register("transform_data", FailingAgent("transform_data"), replace=True)  # transient, retried
        journey_id, saga_id = await start_saga(rt)
        for step in MIGRATION[:2]:
            await rt.saga.advance_saga_step(saga_id, journey_id, "user_123", {"step": step})
        # The seed's scenario: step 3 fails after its retries; its agent may have acted, so it is undone first
        # (told it did not complete), then steps 2 and 1.
        result = await rt.saga.advance_saga_step(saga_id, journey_id, "user_123", {"step": "transform_data"})
        assert result["status"] == "compensated"
        assert result["compensated_steps"] == ["transform_data", "analyze_content", "upload_content"]
        assert flaky.attempts == 3
        (analyzed,) = [
            e for e in await rt.history(saga_id) if e.type == "step.completed" and e.step == "analyze_content"
        ]
        assert dict(flaky.applied) == {f"{analyzed.key}:compensate": 1}
        assert order == ["revert_transformation", "delete_uploaded_content"]

        events = await rt.history(saga_id)
        failed = [e for e in events if e.type == "agent.failed"]
        assert [(e.step, e.payload["attempts"]) for e in failed] == [("transform_data", 3)]
        undo = [e for e in events if e.type == "compensation.completed"]
        assert [(e.step, e.payload["handler"], e.payload["attempts"]) for e in undo] == [
            ("transform_data", "revert_transformation", 1),
            ("analyze_content", "revert_analysis", 3),
            ("upload_content", "delete_uploaded_content", 1),
        ]
        assert undo[1].payload["output"] == {"reverted": "analyze_content"}
        # Reading the status later does not undo anything again.
        await rt.saga.get_saga_status(saga_id)
        assert flaky.attempts == 3


async def test_a_compensation_that_fails_for_good_leaves_the_saga_failed(store_url: str) -> None:
    async with JourneyRuntime.open(store_url, retry=FAST) as rt:
        order: list[str] = []
        handlers = recorders(rt, order)
        broken = FailingAgent("revert_analysis", permanent=True, message="analysis store is gone")
        rt.agents.register("revert_analysis", broken, replace=True)
        rt.agents.register("validate_results", FailingAgent("validate_results", permanent=True), replace=True)
        journey_id, saga_id = await start_saga(rt)
        for _ in MIGRATION[:3]:
            await rt.saga.advance_saga_step(saga_id, journey_id, "user_123", {})
        result = await rt.saga.advance_saga_step(saga_id, journey_id, "user_123", {})
        assert result["status"] == "failed"
        assert result["compensated_steps"] == ["transform_data"]
        failure = result["compensation_failure"]
        assert (failure["step"], failure["handler"]) == ("analyze_content", "revert_analysis")
        assert "analysis store is gone" in failure["error"]
        # The traversal stopped: upload_content was not undone past the broken handler.
        assert order == ["revert_transformation"]
        assert not handlers["delete_uploaded_content"].calls

        status = await rt.saga.get_saga_status(saga_id)
        assert status["status"] == "failed"
        assert status["compensation_failure"] == failure
        instance = await rt.store.index.get_instance(saga_id)
        assert instance is not None and instance.status == "failed"
        history = await rt.history(saga_id)
        types = [e.type for e in history]
        assert types[-1] == "instance.failed"
        assert (history[-1].payload["pattern"], history[-1].payload["cause"]) == ("saga", "compensation")
        assert "saga.compensated" not in types
        # Nothing is left to advance, and the refusal says what is: retrying the compensation (it said
        # "finished with status 'failed'; nothing is left", allowed nothing, as if the saga were over).
        with pytest.raises(JourneyFinishedError) as refused:
            await rt.saga.advance_saga_step(saga_id, journey_id, "user_123", {})
        assert refused.value.allowed == ["retry_saga_step"]
        assert "compensation stopped at step 'analyze_content'" in str(refused.value)
        assert "revert_analysis" in str(refused.value) and "retry_saga_step" in str(refused.value)


async def test_saga_design_errors(store_url: str) -> None:
    async with JourneyRuntime.open(store_url) as rt:
        with pytest.raises(SpecError) as caught:
            await rt.saga.design_saga_journey("enterprise_migration", {}, {**HANDLERS, "publish_results": "unpublish"})
        problems = caught.value.problems
        assert any(
            "compensation handler 'unpublish' is declared for unknown step 'publish_results'" in p for p in problems
        )
        assert any("unknown compensation handler 'unpublish'" in p for p in problems)
        assert len(problems) == 2

        with pytest.raises(SpecError) as caught:
            await rt.saga.design_saga_journey("enterprise_migration", {}, {"analyze_content": "forget_analysis"})
        assert caught.value.problems == [
            "unknown compensation handler 'forget_analysis' for step 'analyze_content'; register an agent for it "
            "with runtime.agents.register('forget_analysis', agent)"
        ]
        # Registering the handler makes the same design valid.
        rt.agents.register("forget_analysis", RecordingAgent("forget_analysis"))
        saga = await rt.saga.design_saga_journey("enterprise_migration", {}, {"analyze_content": "forget_analysis"})
        assert saga["compensation_handlers"] == {"analyze_content": "forget_analysis"}


async def test_advance_checks_the_saga_belongs_to_the_journey_and_user(store_url: str) -> None:
    async with JourneyRuntime.open(store_url) as rt:
        journey_id, saga_id = await start_saga(rt)
        other = await rt.saga.design_saga_journey("enterprise_migration", {}, HANDLERS)

        async def state() -> tuple[Any, ...]:
            return [(e.seq, e.type) for e in await rt.history(saga_id)], await rt.saga.get_saga_status(saga_id)

        before = await state()
        wrong: list[Callable[[], Any]] = [
            lambda: rt.saga.advance_saga_step(saga_id, journey_id, "someone_else", {}),
            lambda: rt.saga.advance_saga_step(saga_id, other["journey_id"], "user_123", {}),
        ]
        for call in wrong:
            with pytest.raises(JourneyNotFoundError, match=f"saga {saga_id!r} is not a saga of journey"):
                await call()
        with pytest.raises(JourneyNotFoundError):
            await rt.saga.advance_saga_step("saga_unknown", journey_id, "user_123", {})
        with pytest.raises(JourneyNotFoundError, match=r"^no saga journey run 'saga_unknown'$"):
            await rt.saga.get_saga_status("saga_unknown")
        assert await state() == before
        moved = await rt.saga.advance_saga_step(saga_id, journey_id, "user_123", {})
        assert moved["current_step"] == "analyze_content"


async def test_a_compensation_that_failed_for_good_is_retried_from_where_it_stopped(store_url: str) -> None:
    async with JourneyRuntime.open(store_url, retry=FAST) as rt:
        order: list[str] = []
        handlers = recorders(rt, order)
        working_revert_analysis = handlers["revert_analysis"]
        rt.agents.register(
            "revert_analysis", FailingAgent("revert_analysis", permanent=True, message="store offline"), replace=True
        )
        rt.agents.register("validate_results", FailingAgent("validate_results", permanent=True), replace=True)
        journey_id, saga_id = await start_saga(rt)
        for _ in MIGRATION[:3]:
            await rt.saga.advance_saga_step(saga_id, journey_id, "user_123", {})
        stopped = await rt.saga.advance_saga_step(saga_id, journey_id, "user_123", {})
        assert (stopped["status"], stopped["compensated_steps"]) == ("failed", ["transform_data"])
        assert order == ["revert_transformation"]

        # Retried while the handler is still broken: it fails again, says so, and nothing else runs.
        again = await rt.saga.retry_saga_step(saga_id)
        assert (again["status"], again["compensated_steps"]) == ("failed", ["transform_data"])
        assert again["compensation_failure"]["handler"] == "revert_analysis"
        assert order == ["revert_transformation"]

        # Once the handler works, the retry resumes where compensation stopped: the remaining undos, last first.
        def working(request: AgentRequest) -> Any:
            order.append("revert_analysis")
            return working_revert_analysis(request)

        rt.agents.register("revert_analysis", working, replace=True)
        done = await rt.saga.retry_saga_step(saga_id)
        assert done["status"] == "compensated"
        assert done["compensated_steps"] == ["transform_data", "analyze_content", "upload_content"]
        assert done["compensation_failure"] is None
        assert done["failure"]["step"] == "validate_results"  # why the saga compensates is kept
        assert order == ["revert_transformation", "revert_analysis", "delete_uploaded_content"]
        events = await rt.history(saga_id)
        completed = {e.step: e.key for e in events if e.type == "step.completed"}
        for step, handler in HANDLERS.items():
            # One call per idempotency key, the key of the step's own completion, whatever the retries.
            assert handlers[handler].calls == {f"{completed[step]}:compensate": 1}

        tail = [(e.type, e.step) for e in events if e.type.startswith(("saga.", "compensation.", "instance."))]
        assert tail == [
            ("saga.compensating", "validate_results"),
            ("compensation.completed", "transform_data"),
            ("instance.failed", "analyze_content"),
            ("compensation.retried", "analyze_content"),
            ("instance.failed", "analyze_content"),
            ("compensation.retried", "analyze_content"),
            ("compensation.completed", "analyze_content"),
            ("compensation.completed", "upload_content"),
            ("saga.compensated", None),
        ]
        retried = [e for e in events if e.type == "compensation.retried"]
        assert [e.payload["handler"] for e in retried] == ["revert_analysis", "revert_analysis"]
        assert "store offline" in retried[0].payload["previous_failure"]["error"]
        instance = await rt.store.index.get_instance(saga_id)
        assert instance is not None and instance.status == "compensated"
        assert (await rt.saga.get_saga_status(saga_id))["status"] == "compensated"

        # A compensated saga has nothing left to retry, and nothing else to do: the refusal named advancing it.
        with pytest.raises(NothingToRetryError) as refused:
            await rt.saga.retry_saga_step(saga_id)
        assert refused.value.allowed == [] and "it is compensated" in str(refused.value)
        assert len(await rt.history(saga_id)) == len(events)


async def test_a_saga_cancelled_where_it_waits_undoes_its_completed_steps_in_reverse(store_url: str) -> None:
    """A saga abandoned half-way (the customer cancelled) is cancelled its own way: its completed steps are
    compensated, last first, as when a step fails, and it ends compensated. There was no way to: terminate
    compensates nothing, and the dashboard answered that a saga cannot be cancelled."""
    async with JourneyRuntime.open(store_url, retry=FAST) as rt:
        order: list[str] = []
        handlers = recorders(rt, order)
        journey_id, saga_id = await start_saga(rt)
        for _ in MIGRATION[:2]:
            await rt.saga.advance_saga_step(saga_id, journey_id, "user_123", {})

        cancelled = await rt.saga.cancel_saga(saga_id, "the customer cancelled the migration")
        assert (cancelled["status"], cancelled["current_step"]) == ("compensated", None)
        assert cancelled["compensated_steps"] == ["analyze_content", "upload_content"]
        assert cancelled["failure"] == {
            "step": "transform_data",
            "error": "the customer cancelled the migration",
            "error_type": "SagaCancelled",
        }
        assert order == ["revert_analysis", "delete_uploaded_content"]
        assert not handlers["revert_transformation"].calls  # the step it waited at was never done
        types = [e.type for e in await rt.history(saga_id) if not e.type.startswith("agent.")]
        assert types[-5:] == [
            "saga.cancelled",
            "saga.compensating",
            "compensation.completed",
            "compensation.completed",
            "saga.compensated",
        ]
        instance = await rt.store.index.get_instance(saga_id)
        assert instance is not None and instance.status == "compensated"

        # Once ended, it is not cancelled again, nor advanced; nothing is undone twice.
        with pytest.raises(JourneyFinishedError):
            await rt.saga.cancel_saga(saga_id, "again")
        with pytest.raises(JourneyFinishedError):
            await rt.saga.advance_saga_step(saga_id, journey_id, "user_123", {})
        assert len(order) == 2
        with pytest.raises(InvalidInputError):
            await rt.saga.cancel_saga((await start_saga(rt, "user_9"))[1], "  ")


async def test_a_step_whose_agent_timed_out_is_compensated_first_told_it_did_not_complete(store_url: str) -> None:
    """A step whose agent was called and then timed out (or failed) may have acted, in part: as Temporal
    registers a compensation before its activity, its handler runs first, with ``completed: False``."""
    async with JourneyRuntime.open(store_url, retry=FAST) as rt:
        order: list[str] = []
        handlers = recorders(rt, order)
        acted: list[str] = []

        async def transform_data(request: AgentRequest) -> Any:
            acted.append(request.payload["step_id"])  # it acted on the world, then hung
            await asyncio.sleep(5)
            return {}

        rt.agents.register("transform_data", transform_data, replace=True)
        spec = rt.templates.get("enterprise_migration").build({"source": "legacy"}).model_dump()
        spec["steps"] = [
            {**step, "timeout": 0.05, "retry": {"max_attempts": 1}} if step["step_id"] == "transform_data" else step
            for step in spec["steps"]
        ]
        saga = await rt.saga.design_saga_journey("enterprise_migration", {}, HANDLERS, spec=spec)
        saga_id = (await rt.saga.execute_saga_journey(saga["journey_id"], "ana", {}))["saga_id"]
        for step in MIGRATION[:2]:
            await rt.saga.advance_saga_step(saga_id, saga["journey_id"], "ana", {"step": step})
        result = await rt.saga.advance_saga_step(saga_id, saga["journey_id"], "ana", {"step": "transform_data"})
        assert acted == ["transform_data"]
        assert result["status"] == "compensated", result
        assert result["compensated_steps"] == ["transform_data", "analyze_content", "upload_content"]
        assert order == ["revert_transformation", "revert_analysis", "delete_uploaded_content"]
        [(_key, payload)] = handlers["revert_transformation"].effects.items()
        assert payload["step_id"] == "transform_data" and payload["completed"] is False
        assert payload["original_output"] is None and payload["failure"]["step"] == "transform_data"
        [(_key, payload)] = handlers["revert_analysis"].effects.items()
        assert payload["completed"] is True
        # Reading it again undoes nothing again.
        await rt.saga.get_saga_status(saga_id)
        assert order == ["revert_transformation", "revert_analysis", "delete_uploaded_content"]


async def test_a_saga_design_id_given_for_its_run_says_which_id_to_pass(store_url: str) -> None:
    """``get_saga_status(journey_id)`` (the id ``design_saga_journey`` answers, which every other saga call
    takes beside the saga's) answered "no saga journey run", as for an id that names nothing. It says which
    id is wanted instead, on each call that takes the saga's id alone."""
    async with JourneyRuntime.open(store_url) as rt:
        journey_id, _saga_id = await start_saga(rt)
        wanted = f"{journey_id!r} is the id of a saga design, not of a run of it: pass the saga_id execute_saga_journey"
        for call in (rt.saga.get_saga_status, rt.saga.retry_saga_step, lambda j: rt.saga.cancel_saga(j, "x")):
            with pytest.raises(JourneyNotFoundError, match=wanted):
                await call(journey_id)

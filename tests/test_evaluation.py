"""Workflow tiers (issue 12, SPEC G7): each finished run is evaluated against its tier's thresholds,
with cost from the token usage langchain-core models report and quality from pluggable evaluators; the
result is logged and in the run's status, and a breach fails the run or holds it for review."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage

from agents import AgentRequest
from graphs import JourneyRuntime
from graphs.errors import EvaluatorError, InvalidInputError, NotInReviewError, RunInReviewError
from graphs.guide import MVPGuideBackend
from graphs.lifecycle.catalog import default_lifecycle_spec
from graphs.session.mvp import mvp_spec
from tests.lifecycle_support import journey_at, lifecycle_runtime

PRICES = {"fake-model": {"input_per_1k": 1.0, "output_per_1k": 2.0}}


async def summarise(request: AgentRequest) -> dict[str, Any]:
    """An agent backed by a langchain-core chat model: its output carries the usage the model reported."""
    reply = AIMessage(
        content="a summary",
        usage_metadata={"input_tokens": 1000, "output_tokens": 500, "total_tokens": 1500},
        response_metadata={"model_name": "fake-model"},
    )
    message = await GenericFakeChatModel(messages=iter([reply])).ainvoke("summarise")
    assert isinstance(message, AIMessage) and message.usage_metadata is not None
    return {
        "summary": message.content,
        "usage_metadata": dict(message.usage_metadata),
        "model": message.response_metadata.get("model_name", "fake-model"),
    }


def tiered(**evaluation: Any) -> dict[str, Any]:
    return {
        "journey_type": "summary",
        "steps": [{"step_id": "summarise", "agent": "llm.summarise"}, {"step_id": "publish"}],
        "evaluation": {"tier": "gold", **evaluation},
    }


async def run_once(rt: JourneyRuntime, spec: dict[str, Any], user: str) -> tuple[str, dict[str, Any]]:
    journey = await rt.structured.design_journey("summary", spec=spec)
    await rt.structured.execute_journey(journey["journey_id"], user, {})
    await rt.structured.advance_journey_step(journey["journey_id"], user, {"go": True})
    done = await rt.structured.advance_journey_step(journey["journey_id"], user, {"published": True})
    return journey["journey_id"], done


async def test_a_run_within_its_tier_records_cost_latency_and_scores(store_url: str) -> None:
    async with JourneyRuntime.open(store_url, prices=PRICES) as rt:
        rt.agents.register("llm.summarise", summarise)
        rt.evaluators.register("has_summary", lambda step, output: 1.0 if output.get("summary") else 0.0)
        spec = tiered(
            thresholds={"cost_per_run": 2.5, "p95_latency_s": 30, "completeness": 0.5},
            evaluators={"completeness": "has_summary"},
        )
        journey_id, done = await run_once(rt, spec, "ana")
        assert done["status"] == "completed"
        evaluation = done["evaluation"]
        assert (evaluation["passed"], evaluation["tier"], evaluation["breaches"]) == (True, "gold", [])
        figures = evaluation["figures"]
        assert figures["cost_per_run"] == 2.0  # 1,000 input tokens at 1.0 per 1k, 500 output tokens at 2.0 per 1k
        assert figures["completeness"] == 1.0 and 0 <= figures["p95_latency_s"] < 30
        status = await rt.structured.get_journey_status(journey_id, "ana")
        assert status["evaluation"] == {**evaluation}


async def test_a_breach_fails_the_run_or_holds_it_for_review(store_url: str) -> None:
    async with JourneyRuntime.open(store_url, prices=PRICES) as rt:
        rt.agents.register("llm.summarise", summarise)
        rt.evaluators.register("strict", lambda step, output: 0.5)
        failing = tiered(thresholds={"cost_per_run": 1.0}, on_breach="fail")
        _journey_id, failed = await run_once(rt, failing, "ana")
        assert failed["status"] == "failed"
        assert failed["evaluation"]["breaches"] == [{"metric": "cost_per_run", "value": 2.0, "threshold": 1.0}]

        reviewed = tiered(thresholds={"accuracy": 0.9}, evaluators={"accuracy": "strict"}, on_breach="review")
        journey_id, held = await run_once(rt, reviewed, "ben")
        assert held["status"] == "review" and held["evaluation"]["figures"]["accuracy"] == 0.5
        with pytest.raises(RunInReviewError):
            await rt.structured.advance_journey_step(journey_id, "ben", {})
        for nobody in ("", "  ", None):  # a decision nobody made was recorded as approved by ''
            with pytest.raises(InvalidInputError, match="a review names its reviewer"):
                await rt.structured.review_journey_run(journey_id, "ben", approved=True, by=nobody)  # type: ignore[arg-type]
        assert (await rt.structured.get_journey_status(journey_id, "ben"))["status"] == "review"
        approved = await rt.structured.review_journey_run(journey_id, "ben", approved=True, by="qa-lead")
        assert approved["status"] == "completed"
        assert approved["evaluation"]["review"] == {"approved": True, "by": "qa-lead", "note": ""}
        types = [e.type for e in await rt.history(approved["instance_id"])]
        assert types[-2:] == ["evaluation.recorded", "evaluation.reviewed"]


async def test_an_unregistered_evaluator_is_refused_before_the_run_starts(store_url: str) -> None:
    async with JourneyRuntime.open(store_url) as rt:
        rt.agents.register("llm.summarise", summarise)
        journey = await rt.structured.design_journey("summary", spec=tiered(evaluators={"accuracy": "nobody"}))
        with pytest.raises(EvaluatorError):
            await rt.structured.execute_journey(journey["journey_id"], "ana", {})
        assert await rt.store.index.count_by_status(pattern="structured") == {}


def summary_process(name: str, **evaluation: Any) -> dict[str, Any]:
    return {
        "name": name,
        "evaluation": {"tier": "gold", **evaluation},
        "elements": [
            {"type": "start", "id": "start"},
            {"type": "service_task", "id": "summarise", "agent": "llm.summarise", "output_variables": ["summary"]},
            {"type": "end", "id": "end"},
        ],
        "flows": ["start -> summarise", "summarise -> end"],
    }


async def test_a_process_is_judged_by_its_tier_through_the_same_kernel_hook(store_url: str) -> None:
    async with JourneyRuntime.open(store_url, prices=PRICES) as rt:
        rt.agents.register("llm.summarise", summarise)
        rt.evaluators.register("has_summary", lambda step, output: 1.0 if output.get("summary") else 0.0)
        await rt.processes.deploy(
            summary_process("digest", thresholds={"cost_per_run": 2.5}, evaluators={"completeness": "has_summary"})
        )
        passed = await rt.processes.status((await rt.processes.start("digest", business_key="d-1"))["instance_id"])
        assert passed["status"] == "completed"
        evaluation = passed["evaluation"]
        assert (evaluation["passed"], evaluation["figures"]["cost_per_run"], evaluation["figures"]["completeness"]) == (
            True,
            2.0,
            1.0,
        )

        await rt.processes.deploy(
            summary_process("strict-digest", thresholds={"cost_per_run": 1.0}, on_breach="review")
        )
        held = await rt.processes.start("strict-digest", business_key="d-2")
        held = await rt.processes.status(held["instance_id"])
        assert held["status"] == "review"
        assert held["evaluation"]["breaches"] == [{"metric": "cost_per_run", "value": 2.0, "threshold": 1.0}]
        rejected = await rt.processes.review_run(held["instance_id"], approved=False, by="qa-lead", note="too dear")
        assert rejected["status"] == "failed" and rejected["evaluation"]["review"]["note"] == "too dear"
        with pytest.raises(NotInReviewError):
            await rt.processes.review_run(held["instance_id"], approved=True, by="qa-lead")

        await rt.processes.deploy(summary_process("unscored", evaluators={"accuracy": "nobody"}))
        with pytest.raises(EvaluatorError):
            await rt.processes.start("unscored", business_key="d-3")


async def test_a_session_is_judged_by_its_tier_when_closed(store_url: str) -> None:
    async with JourneyRuntime.open(store_url, prices=PRICES) as rt:
        rt.evaluators.register("recorded", lambda step, output: 1.0 if output.get("area_complete") else 0.0)
        tier = {"tier": "silver", "thresholds": {"completeness": 0.9}, "evaluators": {"completeness": "recorded"}}
        guide = MVPGuideBackend(rt)
        sessions = rt.mvp.sessions

        async def session(on_breach: str, updates: dict[str, Any]) -> str:
            spec = {**mvp_spec("content").model_dump(), "evaluation": {**tier, "on_breach": on_breach}}
            session_id = str((await sessions.start_session("ana", spec))["session_id"])
            await guide.record(session_id, "content", updates, key=f"{session_id}:record")  # an agent call
            return session_id

        complete = await session("fail", {"files_uploaded": True, "files_parsed": True})
        closed = await sessions.close_session(complete)
        assert (closed["status"], closed["evaluation"]["passed"]) == ("closed", True)
        assert closed["evaluation"]["figures"]["completeness"] == 1.0

        partial = await session("fail", {"files_uploaded": True})
        failed = await sessions.close_session(partial)
        assert failed["status"] == "failed"
        assert failed["evaluation"]["breaches"] == [{"metric": "completeness", "value": 0.0, "threshold": 0.9}]
        assert (await rt.store.index.get_instance(partial)).status == "failed"  # type: ignore[union-attr]

        held = await sessions.close_session(await session("review", {"files_uploaded": True}))
        assert held["status"] == "review"
        approved = await sessions.review_session(held["session_id"], approved=True, by="coach")
        assert approved["status"] == "closed" and approved["evaluation"]["review"]["by"] == "coach"


async def test_a_client_lifecycle_is_judged_by_its_tier_when_it_completes(store_url: str) -> None:
    async with lifecycle_runtime(store_url, prices=PRICES) as (rt, clock):

        def quality(_request: AgentRequest) -> dict[str, Any]:  # a model-backed unit task: its usage is priced
            usage = {"input_tokens": 1000, "output_tokens": 500, "total_tokens": 1500}
            return {"precision": 0.91, "usage_metadata": usage, "model": "fake-model"}

        rt.agents.register("validate_search_quality", quality, replace=True)
        rt.evaluators.register("answered", lambda step, output: 1.0 if output else 0.0)
        base = default_lifecycle_spec().model_dump()

        def tier(**evaluation: Any) -> dict[str, Any]:
            return {**base, "evaluation": {"tier": "gold", **evaluation}}

        kept = tier(thresholds={"cost_per_run": 2.5, "completeness": 0.9}, evaluators={"completeness": "answered"})
        journey_id = await journey_at(rt, clock, "completed", spec=kept)
        state = await rt.lifecycle.get_journey_state(journey_id)
        assert (state["current_stage"], state["run_status"]) == ("completed", "completed")
        figures = state["evaluation"]["figures"]
        assert (state["evaluation"]["passed"], figures["cost_per_run"], figures["completeness"]) == (True, 2.0, 1.0)

        held_id = await journey_at(
            rt, clock, "completed", spec=tier(thresholds={"cost_per_run": 1.0}, on_breach="review"), client_id="c2"
        )
        held = await rt.lifecycle.get_journey_state(held_id)
        assert (held["current_stage"], held["run_status"]) == ("completed", "review")
        assert held["evaluation"]["breaches"] == [{"metric": "cost_per_run", "value": 2.0, "threshold": 1.0}]
        approved = await rt.lifecycle.review_journey(held_id, approved=True, by="qa-lead")
        assert approved["run_status"] == "completed" and approved["evaluation"]["review"]["by"] == "qa-lead"
        with pytest.raises(NotInReviewError):
            await rt.lifecycle.review_journey(held_id, approved=False, by="qa-lead")

        strict = tier(thresholds={"cost_per_run": 1.0}, on_breach="fail")
        failed_id = await journey_at(rt, clock, "completed", spec=strict, client_id="c3")
        assert (await rt.lifecycle.get_journey_state(failed_id))["run_status"] == "failed"
        assert [e.payload["cause"] for e in await rt.history(failed_id) if e.type == "instance.failed"] == [
            "evaluation"
        ]
        with pytest.raises(EvaluatorError):
            await rt.lifecycle.start_journey("c4", spec=tier(evaluators={"accuracy": "nobody"}))


async def test_an_evaluator_that_fails_is_a_breach_and_the_run_is_judged_all_the_same(store_url: str) -> None:
    """An evaluator that raised (or scored outside 0..1, or gave no number) made the run's last advance raise
    it, ZeroDivisionError and all, after the run had completed: no verdict was recorded and the run stood
    ``completed``, never judged, whatever its tier said. The metric is now unmeasured, a breach naming the
    error, and the tier decides (here: held for review, which a person can pass)."""
    async with JourneyRuntime.open(store_url, prices=PRICES) as rt:
        rt.agents.register("llm.summarise", summarise)
        for name, evaluator, error in (
            ("divides", lambda step, output: 1 / 0, "ZeroDivisionError: division by zero"),
            ("generous", lambda step, output: 7, "EvaluatorError: an evaluator scored step 'summarise' 7.0, outside"),
            ("wordy", lambda step, output: "good", "ValueError: could not convert string to float"),
        ):
            rt.evaluators.register(name, evaluator)
            spec = tiered(thresholds={"accuracy": 0.9}, evaluators={"accuracy": name}, on_breach="review")
            journey_id, held = await run_once(rt, spec, name)
            assert held["status"] == "review", held
            [breach] = held["evaluation"]["breaches"]
            assert (breach["metric"], breach["value"]) == ("accuracy", None) and breach["error"].startswith(error)
            assert held["evaluation"]["errors"]["accuracy"] == breach["error"]
            approved = await rt.structured.review_journey_run(journey_id, name, approved=True, by="qa-lead")
            assert approved["status"] == "completed"

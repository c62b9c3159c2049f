"""Resilience on the one agent-call path, through real journeys: time limits, retry policies from the
spec and the registration, non-retryable error types, fallback chains and bulkheads per agent pool."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import pytest

from agents import (
    AgentNotFoundError,
    AgentRegistry,
    AgentRequest,
    FailingAgent,
    FlakyAgent,
    RateLimit,
    ResilienceSettingError,
    RetryPolicy,
    RetrySettings,
)
from agents.resilience import seconds
from checkpoints.errors import InvalidInputError
from graphs import JourneyRuntime, SpecError

FAST = RetrySettings(max_attempts=3, initial_delay=0.001, max_delay=0.005, jitter=0.0)
UNDO = "undo_step"


def registry(**agents: Any) -> AgentRegistry:
    found = AgentRegistry()
    found.register(UNDO, lambda request: {"undone": request.payload["step_id"]})
    for intent, agent in agents.items():
        found.register(intent, agent)
    return found


async def run_saga(rt: JourneyRuntime, steps: list[Mapping[str, Any]], user: str = "u") -> dict[str, Any]:
    """Design a saga of auto steps (each undone by ``undo_step``) and run it to its end."""
    spec = {"journey_type": "resilient", "steps": [{"mode": "auto", **step} for step in steps]}
    handlers = {str(step["step_id"]): UNDO for step in steps}
    design = await rt.saga.design_saga_journey("resilient", {}, handlers, spec=spec)
    return await rt.saga.execute_saga_journey(design["journey_id"], user, {})


async def events_of(rt: JourneyRuntime, instance_id: str, kind: str) -> list[dict[str, Any]]:
    return [dict(e.payload) for e in await rt.history(instance_id) if e.type == kind]


def hangs_until(attempt: int) -> Callable[[AgentRequest], Awaitable[dict[str, Any]]]:
    """An agent that hangs on every attempt before ``attempt`` and answers from then on."""

    async def agent(request: AgentRequest) -> dict[str, Any]:
        if request.attempt < attempt:
            await asyncio.Event().wait()
        return {"attempt": request.attempt}

    return agent


def test_durations_are_seconds_or_iso_8601() -> None:
    assert [seconds(v) for v in (2, 2.5, "3", "PT1M30S", "PT0.05S", "P1D")] == [2, 2.5, 3, 90, 0.05, 86400]
    for bad in ("soon", "P1M", -1, True, None):
        with pytest.raises(ValueError):
            seconds(bad)
    # Not a number of seconds a wait can take: refused as such (an OverflowError was a 500; NaN timed out at once).
    not_finite: list[object] = ["NaN", "inf", "-inf", "1e400", float("nan"), float("inf"), "P99999999999D"]
    for wrong in [*not_finite, "PT1" + "0" * 30 + "S"]:
        with pytest.raises(ValueError, match=r"finite|too long"):
            seconds(wrong)


def test_backoff_is_exponential_or_linear_with_full_or_equal_jitter_and_a_cap() -> None:
    exponential = RetrySettings(initial_delay=1.0, max_delay=5.0, jitter=0.0)
    assert [exponential.delay(n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 5.0]
    linear = RetrySettings(backoff="linear", initial_delay=1.0, max_delay=2.5, jitter=0.0)
    assert [linear.delay(n) for n in (1, 2, 3)] == [1.0, 2.0, 2.5]
    full = RetrySettings(initial_delay=1.0, max_delay=8.0, jitter="full")
    equal = RetrySettings(initial_delay=1.0, max_delay=8.0, jitter="equal")
    full_waits = [full.delay(3) for _ in range(200)]
    equal_waits = [equal.delay(3) for _ in range(200)]
    assert all(0 <= w <= 4 for w in full_waits) and min(full_waits) < 2  # anywhere in [0, 4]
    assert all(2 <= w <= 4 for w in equal_waits)  # half fixed, half random
    with pytest.raises(ValueError):
        RetrySettings(jitter="half")  # type: ignore[arg-type]


async def test_a_resilience_setting_that_cannot_work_is_refused_with_a_typed_error_saying_what_to_give() -> None:
    """``register(..., rate_limit=0)`` raised a plain ValueError ("per_second must be positive and burst at least
    1"), outside the runtime's error root, and a retry policy took a ``max_delay`` below its ``initial_delay`` (every
    wait silently cut to ``max_delay``). Both are :class:`ResilienceSettingError` now (invalid input, still a
    ValueError), saying what to give instead; nothing is registered. A spec's policy is checked at design time,
    and a spec's first wait longer than the runtime's cap raises the cap for its calls, as it asked."""
    agents = AgentRegistry()
    with pytest.raises(ResilienceSettingError, match="positive number") as refused:
        agents.register("quote", lambda request: {}, rate_limit=0)
    assert isinstance(refused.value, InvalidInputError) and refused.value.category == "invalid"
    with pytest.raises(AgentNotFoundError):
        agents.resolve("quote")
    with pytest.raises(ResilienceSettingError, match="burst"):
        RateLimit(per_second=5, burst=0)
    with pytest.raises(ResilienceSettingError, match="raise max_delay or lower initial_delay"):
        RetrySettings(initial_delay=10.0, max_delay=5.0)
    with pytest.raises(ResilienceSettingError, match="at least 1"):
        agents.register("quote", lambda request: {}, concurrency=0)
    assert RetryPolicy.model_validate({"initial_delay": "PT10S"}).over(RetrySettings(max_delay=5.0)).max_delay == 10.0
    assert RetryPolicy(max_delay=0.01).over(RetrySettings(initial_delay=0.05)).initial_delay == 0.01
    agents = registry(quote=lambda request: {"price": 1})
    with pytest.raises(SpecError, match="raise max_delay or lower initial_delay"):
        async with JourneyRuntime.open("memory://", agents=agents) as rt:
            await run_saga(rt, [{"step_id": "quote", "agent": "quote", "retry": {"initial_delay": 2, "max_delay": 1}}])


@pytest.mark.parametrize("intent", ["", "   ", None])
def test_an_agent_registered_without_an_intent_is_refused_with_a_typed_error(intent: Any) -> None:
    """``register("")`` raised a plain ValueError, outside the runtime's error root (and ``register(None)`` an
    AttributeError); it is :class:`InvalidInputError` now, saying what an intent is, and nothing is registered."""
    agents = AgentRegistry()
    with pytest.raises(InvalidInputError, match="a non-empty string") as refused:
        agents.register(intent, lambda request: {})
    assert refused.value.category == "invalid" and agents.intents() == []


async def test_a_hanging_agent_times_out_as_a_retryable_error_and_the_next_attempt_completes() -> None:
    agents = registry()
    agents.register("slow", hangs_until(2), timeout=0.05)
    async with JourneyRuntime.open("memory://", agents=agents, retry=FAST) as rt:
        # The first attempt hangs for ever: only its timeout (0.05 s) lets the saga complete (a bound for a hang).
        status = await asyncio.wait_for(run_saga(rt, [{"step_id": "fetch", "agent": "slow"}]), 60)
        assert status["status"] == "completed"
        failed = await events_of(rt, status["saga_id"], "agent.attempt_failed")
        assert [(f["attempt"], f["error_type"]) for f in failed] == [(1, "AgentTimeoutError")]
        [done] = await events_of(rt, status["saga_id"], "step.completed")
        assert (done["attempts"], done["output"]) == (2, {"attempt": 2})


async def test_a_spec_timeout_in_iso_8601_overrides_the_registration_and_a_hang_compensates() -> None:
    agents = registry(first=lambda request: {"ok": True})
    agents.register("stuck", hangs_until(99), timeout=3600)  # the spec's limit wins
    async with JourneyRuntime.open("memory://", agents=agents, retry=FAST) as rt:
        steps = [
            {"step_id": "first", "agent": "first"},
            {"step_id": "stuck", "agent": "stuck", "timeout": "PT0.03S", "retry": {"max_attempts": 2}},
        ]
        status = await run_saga(rt, steps)
        # The hung step's agent was called (it may have acted): it is undone too, first.
        assert status["status"] == "compensated" and status["compensated_steps"] == ["stuck", "first"]
        [failed] = await events_of(rt, status["saga_id"], "agent.failed")
        assert (failed["error_type"], failed["attempts"]) == ("AgentTimeoutError", 2)
    with pytest.raises(SpecError, match="timeout"):
        async with JourneyRuntime.open("memory://", agents=agents) as rt:
            await run_saga(rt, [{"step_id": "stuck", "agent": "stuck", "timeout": "whenever"}])


async def test_the_runtime_timeout_applies_to_agents_registered_without_one() -> None:
    agents = registry(stuck=hangs_until(99))
    async with JourneyRuntime.open("memory://", agents=agents, retry=FAST, agent_timeout="PT0.02S") as rt:
        status = await run_saga(rt, [{"step_id": "stuck", "agent": "stuck"}])
        assert status["status"] == "compensated"
        [failed] = await events_of(rt, status["saga_id"], "agent.failed")
        assert (failed["error_type"], failed["attempts"]) == ("AgentTimeoutError", 3)


async def test_an_agents_own_timeout_error_without_a_time_limit_is_logged_as_itself(store_url: str) -> None:
    """No time limit anywhere (spec, registration, runtime): a TimeoutError the agent raises itself (its HTTP
    client's, say) is an ordinary failed attempt, retried and logged as a TimeoutError. It used to be caught as
    the time limit's and its message formatted with ``None``: a TypeError took its place in the log."""

    async def client_times_out(request: AgentRequest) -> dict[str, Any]:
        if request.attempt == 1:
            raise TimeoutError("the upstream read timed out")
        return {"attempt": request.attempt}

    async with JourneyRuntime.open(store_url, agents=registry(fetch=client_times_out), retry=FAST) as rt:
        status = await run_saga(rt, [{"step_id": "fetch", "agent": "fetch"}])
        assert status["status"] == "completed"
        failed = await events_of(rt, status["saga_id"], "agent.attempt_failed")
        assert [(f["attempt"], f["error_type"], f["error"]) for f in failed] == [
            (1, "TimeoutError", "the upstream read timed out")
        ]
        [done] = await events_of(rt, status["saga_id"], "step.completed")
        assert (done["attempts"], done["output"]) == (2, {"attempt": 2})


async def test_the_spec_retry_policy_sets_attempts_and_declared_error_types_are_not_retried() -> None:
    def broken(request: AgentRequest) -> dict[str, Any]:
        raise LookupError(f"no record (attempt {request.attempt})")

    agents = registry(flaky=FlakyAgent("flaky", failures=3), broken=broken, broken_again=broken)
    async with JourneyRuntime.open("memory://", agents=agents, retry=FAST) as rt:
        status = await run_saga(rt, [{"step_id": "flaky", "agent": "flaky", "retry": {"max_attempts": 4}}])
        assert status["status"] == "completed"
        [done] = await events_of(rt, status["saga_id"], "step.completed")
        assert done["attempts"] == 4

        # LookupError is retried by default (3 attempts); declared non-retryable, it fails at once.
        retried = await run_saga(rt, [{"step_id": "broken", "agent": "broken"}], user="a")
        declared = await run_saga(
            rt,
            [{"step_id": "broken", "agent": "broken_again", "retry": {"non_retryable": ["LookupError"]}}],
            user="b",
        )
        for status, attempts in ((retried, 3), (declared, 1)):
            assert status["status"] == "compensated"
            [failed] = await events_of(rt, status["saga_id"], "agent.failed")
            assert (failed["error_type"], failed["attempts"]) == ("LookupError", attempts)


async def test_the_registration_retry_policy_applies_with_linear_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    real_sleep = asyncio.sleep

    async def record_sleep(delay: float, *args: Any) -> None:
        slept.append(delay)
        await real_sleep(0)

    agents = registry()
    agents.register(
        "flaky",
        FlakyAgent("flaky", failures=3),
        retry=RetrySettings(max_attempts=5, backoff="linear", initial_delay=0.25, max_delay=0.6, jitter=0.0),
    )
    async with JourneyRuntime.open("memory://", agents=agents, retry=FAST) as rt:
        monkeypatch.setattr(asyncio, "sleep", record_sleep)
        status = await run_saga(rt, [{"step_id": "flaky", "agent": "flaky"}])
        monkeypatch.undo()
        assert status["status"] == "completed"
    assert [d for d in slept if d > 0] == pytest.approx([0.25, 0.5, 0.6])


async def test_a_fallback_chain_is_tried_in_order_and_each_switch_is_logged() -> None:
    agents = registry(
        primary=FailingAgent("primary", permanent=True),
        backup=FailingAgent("backup"),
        last_resort=lambda request: {"served_by": "last_resort"},
    )
    async with JourneyRuntime.open("memory://", agents=agents, retry=FAST) as rt:
        steps = [{"step_id": "quote", "agent": "primary", "fallbacks": ["backup", "last_resort"]}]
        status = await run_saga(rt, steps)
        assert status["status"] == "completed"
        switches = await events_of(rt, status["saga_id"], "agent.fallback")
        assert [(s["intent"], s["fallback"], s["error_type"]) for s in switches] == [
            ("primary", "backup", "PermanentAgentError"),
            ("backup", "last_resort", "TransientAgentError"),
        ]
        [done] = await events_of(rt, status["saga_id"], "step.completed")
        assert (done["intent"], done["fallback_from"], done["output"]) == (
            "last_resort",
            "primary",
            {"served_by": "last_resort"},
        )
        failed = await events_of(rt, status["saga_id"], "agent.failed")
        assert [(f["intent"], f["attempts"]) for f in failed] == [("primary", 1), ("backup", 3)]

        with pytest.raises(SpecError, match="missing_backup"):
            await run_saga(rt, [{"step_id": "quote", "agent": "primary", "fallbacks": ["missing_backup"]}])


async def test_a_stalled_agent_fills_only_its_own_pool_and_other_journeys_keep_moving() -> None:
    release = asyncio.Event()
    entered = asyncio.Event()

    async def stalled(request: AgentRequest) -> dict[str, Any]:
        entered.set()
        await release.wait()
        return {"finally": True}

    agents = registry(fast=lambda request: {"fast": True})
    agents.register("stalled", stalled, pool="legacy-erp", concurrency=1)
    agents.register("also_erp", lambda request: {"erp": True}, pool="legacy-erp")
    retry = RetrySettings(max_attempts=2, initial_delay=0.001, max_delay=0.001, jitter=0.0)
    async with JourneyRuntime.open("memory://", agents=agents, retry=retry, bulkhead_wait=0.05) as rt:
        held = asyncio.create_task(run_saga(rt, [{"step_id": "sync", "agent": "stalled"}], user="held"))
        await asyncio.wait_for(entered.wait(), 5)

        # Another pool's journeys are not held up by the stalled one: they complete while it holds its slot
        # (released below, after them), so held up they would wait for ever (a bound for a hang).
        moving = await asyncio.wait_for(
            asyncio.gather(*(run_saga(rt, [{"step_id": "go", "agent": "fast"}], user=f"f{n}") for n in range(5))), 60
        )
        assert [m["status"] for m in moving] == ["completed"] * 5 and not release.is_set()

        # The stalled pool refuses, with a typed error, once its wait for a slot runs out.
        refused = await run_saga(rt, [{"step_id": "sync", "agent": "also_erp"}], user="refused")
        assert refused["status"] == "compensated"
        [failed] = await events_of(rt, refused["saga_id"], "agent.failed")
        assert (failed["error_type"], failed["attempts"]) == ("BulkheadFullError", 2)

        release.set()
        assert (await asyncio.wait_for(held, 5))["status"] == "completed"
        after = await run_saga(rt, [{"step_id": "sync", "agent": "also_erp"}], user="after")
        assert after["status"] == "completed"

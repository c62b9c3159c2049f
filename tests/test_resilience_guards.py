"""The guards shared through the store: a circuit breaker per intent (closed, open, half-open; consecutive
failures or failure rate; cool-down on the store's clock; limited half-open trials) and a rate limit per
intent, on memory, SQLite and PostgreSQL, and across real processes."""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import timedelta
from pathlib import Path
from subprocess import PIPE
from typing import Any

import pytest

from agents import (
    AgentRegistry,
    AgentReportedFailureError,
    AgentRequest,
    CircuitOpenError,
    FailingAgent,
    RetrySettings,
)
from checkpoints.clock import VirtualClock
from checkpoints.guards import CircuitSettings, RateLimit
from checkpoints.store import open_store
from graphs import JourneyRuntime, SpecError
from nodes.errors import ResumeValueError

ROOT = Path(__file__).resolve().parents[1]
CHILD = ROOT / "tests" / "resilience_child.py"
FAST = RetrySettings(max_attempts=5, initial_delay=0.001, max_delay=0.005, jitter=0.0)
UNDO = "undo_step"


class Service:
    """An agent for one intent that fails while ``broken`` and counts every call it gets."""

    def __init__(self) -> None:
        self.broken = True
        self.calls = 0

    def __call__(self, request: AgentRequest) -> dict[str, Any]:
        self.calls += 1
        if self.broken:
            raise ConnectionError("service unavailable")
        return {"ok": True}


async def run_saga(rt: JourneyRuntime, intent: str, user: str, retry: dict[str, Any] | None = None) -> dict[str, Any]:
    step: dict[str, Any] = {"step_id": "call", "agent": intent, "mode": "auto", **({"retry": retry} if retry else {})}
    design = await rt.saga.design_saga_journey(
        "guarded", {}, {"call": UNDO}, spec={"journey_type": "guarded", "steps": [step]}
    )
    return await rt.saga.execute_saga_journey(design["journey_id"], user, {})


async def failures(rt: JourneyRuntime, saga_id: str) -> list[tuple[str, int]]:
    return [
        (e.payload["error_type"], e.payload["attempts"]) for e in await rt.history(saga_id) if e.type == "agent.failed"
    ]


async def test_the_circuit_opens_fails_fast_cools_down_and_closes_after_its_half_open_trials(store_url: str) -> None:
    clock = VirtualClock()
    service = Service()
    agents = AgentRegistry()
    agents.register(UNDO, lambda request: {"undone": True})
    circuit = CircuitSettings(failure_threshold=3, cool_down=30, half_open_trials=2)
    agents.register("payments", service, circuit=circuit)
    async with JourneyRuntime.open(store_url, agents=agents, retry=FAST, clock=clock) as rt:
        # Three failed attempts open the circuit mid-call: the fourth attempt fails fast, and stops the retries.
        first = await run_saga(rt, "payments", "a")
        assert first["status"] == "compensated"
        assert await failures(rt, first["saga_id"]) == [("CircuitOpenError", 4)]  # the 4th was refused
        assert first["failure"]["error_type"] == "CircuitOpenError"
        assert service.calls == 3
        [state] = await rt.store.circuits()
        assert (state.intent, state.state, state.consecutive_failures) == ("payments", "open", 3)

        # Open: no call reaches the agent, even when it works again, until the cool-down has passed.
        service.broken = False
        second = await run_saga(rt, "payments", "b")
        assert (second["status"], service.calls) == ("compensated", 3)
        clock.advance(timedelta(seconds=29))
        assert (await run_saga(rt, "payments", "c"))["status"] == "compensated" and service.calls == 3

        # Half-open after the cool-down: two trial calls, both fine, close it.
        clock.advance(timedelta(seconds=1))
        assert (await run_saga(rt, "payments", "d"))["status"] == "completed"
        assert (await rt.store.breakers.get("payments")).state == "half_open"  # type: ignore[union-attr]
        assert (await run_saga(rt, "payments", "e"))["status"] == "completed"
        [state] = await rt.store.circuits()
        assert (state.state, state.consecutive_failures, service.calls) == ("closed", 0, 5)


async def test_half_open_admits_its_trials_only_and_a_failed_trial_opens_it_again(store_url: str) -> None:
    clock = VirtualClock()
    settings = CircuitSettings(failure_threshold=1, cool_down=10, half_open_trials=2)
    async with open_store(store_url, clock=clock) as store:
        breakers = store.breakers
        assert (await breakers.admit("erp", settings)).allowed
        assert (await breakers.record("erp", settings, succeeded=False)).state == "open"
        refused = await breakers.admit("erp", settings)
        assert (refused.allowed, refused.state, refused.retry_after) == (False, "open", 10)
        clock.advance(timedelta(seconds=10))
        admitted = [await breakers.admit("erp", settings) for _ in range(3)]
        assert [(a.allowed, a.state) for a in admitted] == [
            (True, "half_open"),
            (True, "half_open"),
            (False, "half_open"),
        ]
        assert (await breakers.record("erp", settings, succeeded=False)).state == "open"
        assert not (await breakers.admit("erp", settings)).allowed
        # Trials whose process died never report: a cool-down later, new trials are admitted.
        clock.advance(timedelta(seconds=10))
        assert (await breakers.admit("erp", settings)).allowed
        assert (await breakers.admit("erp", settings)).allowed
        clock.advance(timedelta(seconds=10))
        assert (await breakers.admit("erp", settings)).allowed


async def test_a_failure_rate_over_a_window_opens_the_circuit(store_url: str) -> None:
    clock = VirtualClock()
    settings = CircuitSettings(failure_threshold=None, failure_rate=0.5, minimum_calls=4, window=60)
    async with open_store(store_url, clock=clock) as store:
        record = store.breakers.record
        # Alternating outcomes never make three failures in a row, but half of the calls fail.
        assert (await record("search", settings, succeeded=False)).state == "closed"
        assert (await record("search", settings, succeeded=True)).state == "closed"
        clock.advance(timedelta(seconds=61))  # a new window: the counts start again
        for outcome in (False, True, False):
            assert (await record("search", settings, succeeded=outcome)).state == "closed"
        opened = await record("search", settings, succeeded=True)
        assert opened.state == "closed" and (opened.window_calls, opened.window_failures) == (4, 2)
        assert (await record("search", settings, succeeded=False)).state == "open"
    with pytest.raises(ValueError):
        CircuitSettings(failure_threshold=None)


async def test_a_rate_limit_per_intent_is_shared_by_every_process_on_the_store(durable_url: str) -> None:
    clock = VirtualClock()
    limit = RateLimit(per_second=2, burst=2)
    async with open_store(durable_url, clock=clock) as one, open_store(durable_url, clock=clock) as two:
        assert [await one.rate_limits.acquire("geo", limit), await two.rate_limits.acquire("geo", limit)] == [0, 0]
        assert await one.rate_limits.acquire("geo", limit) == pytest.approx(0.5)
        assert await two.rate_limits.acquire("geo", limit) == pytest.approx(0.5)
        clock.advance(timedelta(seconds=0.5))
        assert await two.rate_limits.acquire("geo", limit) == 0
        assert await one.rate_limits.acquire("other", limit) == 0  # per intent


async def test_a_call_over_the_rate_limit_is_refused_with_a_typed_error(store_url: str) -> None:
    clock = VirtualClock()
    agents = AgentRegistry()
    agents.register(UNDO, lambda request: {"undone": True})
    agents.register("geo", lambda request: {"ok": True}, rate_limit=1)
    async with JourneyRuntime.open(store_url, agents=agents, retry=FAST, clock=clock) as rt:
        assert (await run_saga(rt, "geo", "a"))["status"] == "completed"
        refused = await run_saga(rt, "geo", "b", retry={"max_attempts": 2})
        assert refused["status"] == "compensated"
        assert await failures(rt, refused["saga_id"]) == [("RateLimitedError", 2)]
        clock.advance(timedelta(seconds=1))
        assert (await run_saga(rt, "geo", "c"))["status"] == "completed"


@pytest.mark.slow
async def test_one_process_failures_open_the_circuit_for_another(durable_url: str) -> None:
    child = await asyncio.create_subprocess_exec(
        sys.executable, str(CHILD), durable_url, "trip", "shared.payments", cwd=ROOT, stdout=PIPE, stderr=PIPE
    )
    out, err = await asyncio.wait_for(child.communicate(), 120)
    assert child.returncode == 0, err.decode()
    [line] = [ln for ln in out.decode().splitlines() if ln.startswith("STATUS ")]
    assert json.loads(line.removeprefix("STATUS "))["failure"]["error_type"] == "CircuitOpenError"

    # This process never saw a failure, and its agent works: the other's failures keep it from calling.
    service = Service()
    service.broken = False
    agents = AgentRegistry()
    agents.register(UNDO, lambda request: {"undone": True})
    agents.register("shared.payments", service, circuit=CircuitSettings(failure_threshold=3, cool_down=3600))
    async with JourneyRuntime.open(durable_url, agents=agents, retry=FAST) as rt:
        status = await run_saga(rt, "shared.payments", "parent")
        assert status["status"] == "compensated"
        assert await failures(rt, status["saga_id"]) == [("CircuitOpenError", 1)]
        assert service.calls == 0
        [state] = await rt.store.circuits()
        assert (state.intent, state.state) == ("shared.payments", "open")


async def test_a_rate_limited_call_waits_until_the_limit_lets_it_through() -> None:
    agents = AgentRegistry()
    agents.register(UNDO, lambda request: {"undone": True})
    agents.register("geo", lambda request: {"ok": True}, rate_limit=RateLimit(per_second=2, burst=1))
    # The backoff alone (1 ms) would come back too soon: the retry waits the up to 0.5 s the limit asks for.
    retry = RetrySettings(max_attempts=3, initial_delay=0.001, max_delay=1.0, jitter=0.0)
    async with JourneyRuntime.open("memory://", agents=agents, retry=retry) as rt:
        assert (await run_saga(rt, "geo", "a"))["status"] == "completed"
        second = await run_saga(rt, "geo", "b")
        assert second["status"] == "completed"
        history = await rt.history(second["saga_id"])
        # A loaded machine may wake a hair early; what matters is that the backoff did not spend the attempts.
        refused = [e.payload["error_type"] for e in history if e.type == "agent.attempt_failed"]
        [done] = [e.payload for e in history if e.type == "step.completed"]
        assert refused[:1] == ["RateLimitedError"] and done["attempts"] == len(refused) + 1 <= 3


async def test_an_open_circuit_routes_the_step_to_a_person_whose_answer_completes_it(store_url: str) -> None:
    quote = FailingAgent("quote")
    circuit = CircuitSettings(failure_threshold=1, cool_down=3600)
    agents = AgentRegistry()
    agents.register("quote", quote, circuit=circuit)
    steps = [
        {
            "step_id": "price",
            "agent": "quote",
            "mode": "auto",
            "on_circuit_open": "human",
            "output_schema": {"type": "object", "required": ["price"]},
        },
        {"step_id": "confirm"},
    ]
    async with JourneyRuntime.open(store_url, agents=agents) as rt:
        await rt.store.breakers.admit("quote", circuit)
        await rt.store.breakers.record("quote", circuit, succeeded=False)  # another process opened it
        design = await rt.structured.design_journey("pricing", spec={"journey_type": "pricing", "steps": steps})
        status = await rt.structured.execute_journey(design["journey_id"], "ana", {"sku": "x-1"})
        assert (status["status"], status["current_step"], status["awaiting_input"]) == ("in_progress", "price", True)
        assert quote.attempts == 0  # failed fast: the agent was not called
        history = await rt.history(status["instance_id"])
        [routed] = [e.payload for e in history if e.type == "agent.routed_to_human"]
        assert (routed["kind"], routed["intent"], routed["payload"]["context"]) == (
            "circuit_open",
            "quote",
            {"sku": "x-1"},
        )
        state = await rt.structured.get_journey_status(design["journey_id"], "ana")
        assert state["current_step"] == "price"  # it still waits, read back from the store

        with pytest.raises(ResumeValueError, match="price"):  # the answer stands in for the agent's output
            await rt.structured.advance_journey_step(design["journey_id"], "ana", {"cost": 1})
        # A person who answers that the work failed fails the step, as its agent's failure would (it completed
        # before); its retry starts the step over, not with that answer (it failed again on it before): the
        # circuit still open, a person is asked again.
        failed = {"price": 0, "status": "failed", "error": "no price today"}
        with pytest.raises(AgentReportedFailureError, match="no price today"):
            await rt.structured.advance_journey_step(design["journey_id"], "ana", failed)
        state = await rt.structured.get_journey_status(design["journey_id"], "ana")
        assert (state["status"], state["failed_step"], state["completed_steps"]) == ("failed", "price", [])
        state = await rt.structured.retry_journey_step(design["journey_id"], "ana")
        assert (state["status"], state["current_step"], state["awaiting_input"]) == ("in_progress", "price", True)
        asked = [e for e in await rt.history(status["instance_id"]) if e.type == "agent.routed_to_human"]
        assert len(asked) == 2
        status = await rt.structured.advance_journey_step(design["journey_id"], "ana", {"price": 90})
        assert (status["completed_steps"], status["current_step"]) == (["price"], "confirm")
        assert status["last_output"] == {"price": 90}
        [done] = [e.payload for e in await rt.history(status["instance_id"]) if e.type == "step.completed"]
        assert (done["intent"], done["agent"], done["output"]) == ("quote", "human", {"price": 90})
        assert quote.attempts == 0

        # Without the option, the open circuit fails the step at once, as before.
        plain = [{**steps[0], "on_circuit_open": "fail"}, steps[1]]
        design = await rt.structured.design_journey("pricing", spec={"journey_type": "pricing", "steps": plain})
        with pytest.raises(CircuitOpenError):
            await rt.structured.execute_journey(design["journey_id"], "ben", {})

        # A process's people work from its inbox: the human route is refused there, saying what to do.
        process = {
            "name": "priced",
            "elements": [
                {"type": "start", "id": "start"},
                {"type": "service_task", "id": "price", "agent": "quote", "on_circuit_open": "human"},
                {"type": "end", "id": "end"},
            ],
            "flows": ["start -> price", "price -> end"],
        }
        with pytest.raises(SpecError, match="on_circuit_open 'human' is for structured and saga steps"):
            await rt.processes.deploy(process)

"""Fault injection on SQLite and PostgreSQL: a four-step saga with transient and permanent failures at
every step, agents that hang past their time limit, a circuit that opens mid-run, and failures inside
the compensations themselves. Every journey must end consistent: completed, compensated in reverse
order, or failed with its reason recorded."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest

from agents import AgentRegistry, AgentRequest, FailingAgent, FlakyAgent, RetrySettings
from agents.protocol import Agent
from checkpoints.events import Event
from checkpoints.guards import CircuitSettings
from graphs import JourneyRuntime

STEPS = ["s1", "s2", "s3", "s4"]
FAST = RetrySettings(max_attempts=3, initial_delay=0.001, max_delay=0.005, jitter=0.0)
TIME_LIMIT = 0.02  # seconds: an agent that hangs past it is cut off
OPENS_AFTER = 2  # consecutive failures that open a circuit: less than the attempts, so it opens mid-call

# How a faulty forward step fails for good, as its call's last failure records it.
FORWARD_ERRORS = {
    "permanent": "PermanentAgentError",
    "exhausted": "TransientAgentError",
    "hang": "AgentTimeoutError",
    "circuit": "CircuitOpenError",
}


@dataclass(frozen=True)
class Scenario:
    name: str
    steps: dict[str, str] = field(default_factory=dict)  # step → fault of its agent
    undo: dict[str, str] = field(default_factory=dict)  # step → fault of its compensation handler
    expected: str = "completed"


def scenarios() -> list[Scenario]:
    found = [Scenario("clean")]
    for step in STEPS:
        found += [
            Scenario(f"transient@{step}", {step: "transient"}),
            Scenario(f"hang-once@{step}", {step: "hang_once"}),
            *(Scenario(f"{fault}@{step}", {step: fault}, expected="compensated") for fault in FORWARD_ERRORS),
        ]
    for step in STEPS[:-1]:  # the last step fails for good, so every earlier one is undone
        found += [
            Scenario(f"undo-transient@{step}", {"s4": "permanent"}, {step: "transient"}, "compensated"),
            Scenario(f"undo-permanent@{step}", {"s4": "permanent"}, {step: "permanent"}, "failed"),
            Scenario(f"undo-hang@{step}", {"s4": "hang"}, {step: "hang"}, "failed"),
        ]
    return found


def hanging(until: int) -> Agent:
    async def agent(request: AgentRequest) -> dict[str, Any]:
        if request.attempt < until:
            await asyncio.Event().wait()
        return {"done": request.step, "attempt": request.attempt}

    return agent


def faulty(intent: str, fault: str | None) -> Agent:
    if fault is None:
        return lambda request: {"done": request.step}
    return {
        "transient": lambda: FlakyAgent(intent, failures=2),
        "hang_once": lambda: hanging(2),
        "permanent": lambda: FailingAgent(intent, permanent=True),
        "exhausted": lambda: FailingAgent(intent),
        "circuit": lambda: FailingAgent(intent),
        "hang": lambda: hanging(99),
    }[fault]()


def register(agents: AgentRegistry, scenario: Scenario) -> tuple[dict[str, str], dict[str, str]]:
    """Register the scenario's agents under intents of its own; (step → intent, step → handler)."""
    intents, handlers = {}, {}
    for step in STEPS:
        intents[step], handlers[step] = f"{scenario.name}.{step}", f"{scenario.name}.undo_{step}"
        fault = scenario.steps.get(step)
        circuit = CircuitSettings(failure_threshold=OPENS_AFTER, cool_down=3600) if fault == "circuit" else None
        agents.register(intents[step], faulty(intents[step], fault), timeout=TIME_LIMIT, circuit=circuit)
        agents.register(handlers[step], faulty(handlers[step], scenario.undo.get(step)), timeout=TIME_LIMIT)
    return intents, handlers


def check_consistent(scenario: Scenario, status: dict[str, Any], history: list[Event], indexed: str) -> None:
    """The journey ended in one of the three consistent ways, and its log and index agree."""
    outcome = status["status"]
    assert outcome == scenario.expected == indexed, scenario
    completed = [e.step for e in history if e.type == "step.completed"]
    undone = [e.step for e in history if e.type == "compensation.completed"]
    if outcome == "completed":
        assert completed == STEPS and undone == [] and status["failure"] is None
        return
    failed_step = next(step for step in STEPS if scenario.steps.get(step) in FORWARD_ERRORS)
    assert completed == STEPS[: STEPS.index(failed_step)]
    assert status["failure"]["step"] == failed_step
    last_failure = [e for e in history if e.type == "agent.failed" and e.step == failed_step][-1]
    assert last_failure.payload["error_type"] == FORWARD_ERRORS[scenario.steps[failed_step]]
    # Each of these faults reached the failed step's agent, which may have acted: it is undone first (told it did
    # not complete), then the completed steps in reverse order.
    to_undo = [failed_step, *reversed(completed)]
    if outcome == "compensated":
        assert undone == to_undo == status["compensated_steps"]
        assert status["compensation_failure"] is None
        return
    # Failed: compensation ran in that order up to the handler that failed for good, which is named.
    [broken] = scenario.undo
    assert undone == to_undo[: to_undo.index(broken)]
    assert status["compensation_failure"]["step"] == broken
    assert any(e.type == "instance.failed" and e.payload.get("cause") == "compensation" for e in history)


@pytest.mark.slow
async def test_every_faulty_saga_ends_consistent(durable_url: str) -> None:
    agents = AgentRegistry()
    outcomes: Counter[str] = Counter()
    all_scenarios = scenarios()
    async with JourneyRuntime.open(durable_url, agents=agents, retry=FAST) as rt:
        for scenario in all_scenarios:
            intents, handlers = register(agents, scenario)
            spec = {
                "journey_type": "faulty",
                "steps": [{"step_id": step, "agent": intents[step], "mode": "auto"} for step in STEPS],
            }
            design = await rt.saga.design_saga_journey("faulty", {}, handlers, spec=spec)
            status = await rt.saga.execute_saga_journey(design["journey_id"], scenario.name, {})
            instance = await rt.store.index.get_instance(status["saga_id"])
            assert instance is not None
            check_consistent(scenario, status, await rt.history(status["saga_id"]), instance.status)
            outcomes[status["status"]] += 1
    print(f"fault injection on {durable_url.split(':')[0]}: {len(all_scenarios)} sagas, {dict(outcomes)}")
    assert outcomes == {"completed": 9, "compensated": 19, "failed": 6}
    circuits = [s for s in all_scenarios if "circuit" in s.steps.values()]
    assert len(circuits) == len(STEPS)

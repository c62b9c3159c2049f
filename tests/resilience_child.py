"""A process of its own for the resilience tests that need one.

    python tests/resilience_child.py STORE_URL trip INTENT
    python tests/resilience_child.py STORE_URL attempts start|resume LOG_FILE MAX_ATTEMPTS

``trip`` runs a saga whose one step's agent (``INTENT``) always fails, under the circuit settings of
:data:`CIRCUIT`: its failures open the intent's circuit in the database, and the process exits.

``attempts start`` runs a saga whose one step's agent fails on attempts 1 and 2 and hangs on attempt 3,
printing ``HANG`` for the parent to kill it there; ``attempts resume`` recovers the saga with an agent
that fails on every attempt but answers from attempt 4 on. Each attempt appends ``<pid> <attempt>`` to
LOG_FILE. Both print ``STATUS <json>`` when the saga settles.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents import AgentRegistry, AgentRequest, FailingAgent, RetrySettings, TransientAgentError
from checkpoints.guards import CircuitSettings
from graphs.runtime import JourneyRuntime

CIRCUIT = CircuitSettings(failure_threshold=3, cool_down=3600.0)
FAST = RetrySettings(max_attempts=5, initial_delay=0.001, max_delay=0.005, jitter=0.0)
UNDO = "undo_step"
SAGA_USER = "child"


def emit(*parts: object) -> None:
    print(*parts, flush=True)


async def saga(rt: JourneyRuntime, intent: str, retry: dict[str, Any] | None = None) -> dict[str, Any]:
    step: dict[str, Any] = {"step_id": "call", "agent": intent, "mode": "auto", **({"retry": retry} if retry else {})}
    design = await rt.saga.design_saga_journey(
        "child", {}, {"call": UNDO}, spec={"journey_type": "child", "steps": [step]}
    )
    return await rt.saga.execute_saga_journey(design["journey_id"], SAGA_USER, {}, saga_id="saga_child")


async def trip(url: str, intent: str) -> None:
    agents = AgentRegistry()
    agents.register(UNDO, lambda request: {"undone": True})
    agents.register(intent, FailingAgent(intent), circuit=CIRCUIT)
    async with JourneyRuntime.open(url, agents=agents, retry=FAST) as rt:
        emit("STATUS", json.dumps(await saga(rt, intent), sort_keys=True))


def note(log_file: str, attempt: int) -> None:
    with open(log_file, "a") as log:
        log.write(f"{os.getpid()} {attempt}\n")


def logged_agent(log_file: str, *, hang_on: int | None, answer_from: int) -> Any:
    async def agent(request: AgentRequest) -> dict[str, Any]:
        note(log_file, request.attempt)
        if request.attempt == hang_on:
            emit("HANG")
            await asyncio.Event().wait()
        if request.attempt < answer_from:
            raise TransientAgentError(f"attempt {request.attempt} failed")
        return {"attempt": request.attempt}

    return agent


async def attempts(url: str, phase: str, log_file: str, max_attempts: int) -> None:
    agents = AgentRegistry()
    agents.register(UNDO, lambda request: {"undone": True})
    agent = (
        logged_agent(log_file, hang_on=3, answer_from=99)
        if phase == "start"
        else logged_agent(log_file, hang_on=None, answer_from=4)
    )
    agents.register("counted", agent)
    async with JourneyRuntime.open(url, agents=agents, retry=FAST) as rt:
        if phase == "start":
            status = await saga(rt, "counted", {"max_attempts": max_attempts})
        else:
            await rt.recover()
            status = await rt.saga.get_saga_status("saga_child")
        emit("STATUS", json.dumps(status, sort_keys=True))


def main(argv: list[str]) -> None:
    url, command, *rest = argv
    if command == "trip":
        asyncio.run(trip(url, rest[0]))
    elif command == "attempts":
        asyncio.run(attempts(url, rest[0], rest[1], int(rest[2])))
    else:
        raise SystemExit(f"unknown command {command!r}; use trip or attempts")


if __name__ == "__main__":
    main(sys.argv[1:])

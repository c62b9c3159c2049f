"""A journey run in a process of its own, for ``test_crash_resume.py`` to SIGKILL and resume.

    python tests/crash_child.py STORE_URL EFFECTS_DB start auto|user [HOLD]
    python tests/crash_child.py STORE_URL EFFECTS_DB resume JOURNEY_ID
    python tests/crash_child.py STORE_URL EFFECTS_DB saga-start async|exit
    python tests/crash_child.py STORE_URL EFFECTS_DB saga-resume SAGA_ID async|exit
    python tests/crash_child.py STORE_URL EFFECTS_DB saga-compensate
    python tests/crash_child.py STORE_URL EFFECTS_DB unit-compensate
    python tests/crash_child.py STORE_URL EFFECTS_DB unit-rerun
    python tests/crash_child.py STORE_URL EFFECTS_DB unit-resume JOURNEY_ID

``test_crash_resume.py`` forks these from multiprocessing's forkserver, which imported this module once
(:func:`run`): each is a process of its own, started without a process's seconds of imports.

Every step's agent stands for an external service with side effects, kept in the SQLite file
EFFECTS_DB (not the journey store): each call appends ``invocations(key, pid)`` and does
``INSERT OR IGNORE INTO effects(key)`` with the request's idempotency key, committing each, and
then takes a little while, so that a kill lands mid-journey.

``start auto`` designs an eight-step journey of auto steps and runs it back to back; ``start user``
makes them user steps and advances them one by one, printing ``ADVANCED <n>`` after each
acknowledged advance.

``HOLD`` is ``<point>:<n>[+<slow>]``: the run freezes at an exact point of step ``s<n>`` for the
parent to kill it there. ``effect``: just after the agent's side effect, before its completion
event is written. ``event``: just after the step's completion event commits, before the node
returns (so before its checkpoint). ``+slow-checkpoint`` also holds back checkpoint saves, and
``+slow-store`` checkpoint saves and task writes alike, as a slow database would under
``durability="async"`` (LangGraph goes on to the next node while the last checkpoint is still being
saved); they are held back from the advance of ``s<n>`` on (user steps), or from the call of the
step before it on (auto steps); for ``s1`` of auto steps, from the start of the run, so that the
run is killed before its first checkpoint.

``resume`` recovers what the killed process left in flight, advances any remaining user steps and
prints the final status as JSON.

``saga-start`` runs a saga (with the given durability) whose last step fails and whose first
compensation (``revert_transformation``) fails for good, prints ``SAGA <saga_id>`` and ``FAILED
<json>``, then makes that handler work and retries the compensation; the compensations are the
external service, and the run holds just after the side effect of ``revert_analysis``, the second one
the retry runs. ``saga-resume`` recovers and prints the saga's status.

``saga-compensate`` runs a saga (durability "async") whose last step fails, so that its compensation
starts at once with handlers that work (the external service); the run holds just after the completion
event of ``revert_analysis``, the second compensation, commits (before its checkpoint).

``unit-compensate`` starts a client lifecycle journey and runs its unit of work ``setup`` (tasks t1 → t2 → t3,
each undone by ``undo_<task>``; t3 fails for good), so that its compensation starts at once with handlers that
work (the external service); the run holds just after the completion event of ``undo_t2``, the first undo,
commits. ``unit-rerun`` runs ``setup`` with ``undo_t1`` failing for good (its first run leaves t1 done), then makes
that handler work and runs the unit again: the run holds just after the completion event of ``undo_t1`` (the undo of
what the first run left, before anything of its own) commits. ``unit-resume`` recovers and prints the journey's
units of work as ``UNITS <json>``.

Output lines the parent reads: ``JOURNEY <journey_id> <instance_id>``, ``SAGA <saga_id>``,
``ADVANCED <n>``, ``FAILED <json>``, ``HOLD <point>``, ``RECOVERED <json>``, ``STATUS <json>``.
Anything else (logs) is to be ignored.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, cast

from langgraph.types import Durability

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.deterministic import FailingAgent
from agents.protocol import Agent, AgentRequest
from agents.registry import AgentRegistry
from graphs.lifecycle.machine import LifecycleSpec, StageSpec
from graphs.runtime import JourneyRuntime
from graphs.structured.orchestrator import structured_instance_id
from nodes.uow import TaskSpec, UnitOfWorkSpec

STEPS = [f"s{n}" for n in range(1, 9)]
USER_ID = "crash-user"
AGENT_LATENCY_S = 0.15  # after the side effect is committed: the window a kill lands in
PAUSE_BETWEEN_ADVANCES_S = 0.3  # user mode: a kill right after "ADVANCED n" lands between steps
HOLD_S = 3600.0  # a held run waits for its kill
SETTLE_S = 0.1  # before a hold: what the store is saving in the background (and not held back) lands


def emit(*parts: object) -> None:
    print(*parts, flush=True)


def init_effects_db(path: str) -> None:
    conn = sqlite3.connect(path, timeout=30)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE IF NOT EXISTS invocations (id INTEGER PRIMARY KEY, key TEXT NOT NULL, pid INTEGER)")
        conn.execute("CREATE TABLE IF NOT EXISTS effects (key TEXT PRIMARY KEY)")
        conn.commit()
    finally:
        conn.close()


class Hold:
    """Where to freeze the run for the parent's kill, and whether the store is slow (see the module doc)."""

    def __init__(self, spec: str | None) -> None:
        self.point: str | None = None
        self.step: str | None = None
        self.stall_from: str | None = None  # the step whose agent call starts the slow store (auto steps)
        self.slow: str | None = None
        self.stall = asyncio.Event()  # set: saves are held back
        if spec:
            spec, _, slow = spec.partition("+")
            if slow not in ("", "slow-checkpoint", "slow-store"):
                raise SystemExit(f"unknown hold suffix {slow!r}")
            self.slow = slow or None
            self.point, _, n = spec.partition(":")
            self.step = f"s{int(n)}"
            self.stall_from = f"s{int(n) - 1}"
        self.event = "step.completed"  # the event whose commit the "event" point follows

    async def reached(self, point: str, step: str | None) -> None:
        if point == self.point and step == self.step:
            await asyncio.sleep(SETTLE_S)  # let the saves in the background that are not held back land
            emit("HOLD", f"{point}:{step}")
            await asyncio.sleep(HOLD_S)


def external_service(effects_db: str, hold: Hold) -> Agent:
    """An agent with an external side effect: one invocation row per call, one effect row per key."""

    async def call(request: AgentRequest) -> dict[str, Any]:
        if hold.slow and request.step == hold.stall_from:
            hold.stall.set()
        conn = sqlite3.connect(effects_db, timeout=30)
        try:
            conn.execute("INSERT INTO invocations (key, pid) VALUES (?, ?)", (request.idempotency_key, os.getpid()))
            conn.commit()
            conn.execute("INSERT OR IGNORE INTO effects (key) VALUES (?)", (request.idempotency_key,))
            conn.commit()
        finally:
            conn.close()
        await hold.reached("effect", request.step)
        await asyncio.sleep(AGENT_LATENCY_S)
        return {"step": request.step, "pid": os.getpid()}

    return call


def register_agents(registry: AgentRegistry, effects_db: str, hold: Hold) -> None:
    service = external_service(effects_db, hold)
    for step in STEPS:
        registry.register(f"crash.{step}", service, name=f"external_{step}")


def install_event_hold(runtime: JourneyRuntime, hold: Hold) -> None:
    """Freeze right after a step's completion event commits (before the node returns, so before its checkpoint)."""
    events = runtime.store.events
    append, append_together = events.append, events.append_together

    async def append_then_hold(instance_id: str, new: Any, **options: Any) -> list[bool]:
        written = await append(instance_id, new, **options)
        for event in new:
            if event.type == hold.event:
                await hold.reached("event", event.step)
        return written

    async def together_then_hold(instance_id: str, event: Any, status: str | None = None) -> bool:
        written = await append_together(instance_id, event, status)  # a completion written behind its run
        if event.type == hold.event:
            await hold.reached("event", event.step)
        return written

    events.append = append_then_hold  # type: ignore[method-assign]
    events.append_together = together_then_hold  # type: ignore[method-assign]


def install_slow_store(runtime: JourneyRuntime, hold: Hold) -> None:
    """Hold back checkpoint saves (and with ``slow-store`` task writes too) once ``hold.stall`` is set."""
    saver = runtime.store.saver
    aput, aput_writes = saver.aput, saver.aput_writes

    async def slow_aput(config: Any, checkpoint: Any, metadata: Any, new_versions: Any) -> Any:
        if hold.stall.is_set():
            await asyncio.sleep(HOLD_S)
        return await aput(config, checkpoint, metadata, new_versions)

    async def slow_aput_writes(config: Any, writes: Any, task_id: str, task_path: str = "") -> None:
        if hold.stall.is_set() and hold.slow == "slow-store":
            await asyncio.sleep(HOLD_S)
        await aput_writes(config, writes, task_id, task_path)

    saver.aput = slow_aput  # type: ignore[method-assign]
    saver.aput_writes = slow_aput_writes  # type: ignore[method-assign]


async def start(url: str, effects_db: str, mode: str, hold: Hold) -> None:
    registry = AgentRegistry()
    register_agents(registry, effects_db, hold)
    async with JourneyRuntime.open(url, agents=registry) as runtime:
        install_event_hold(runtime, hold)
        if hold.slow:
            install_slow_store(runtime, hold)
        design = await runtime.structured.design_journey(
            "crash_test",
            spec={
                "journey_type": "crash_test",
                "name": "Crash test",
                "steps": [{"step_id": s, "agent": f"crash.{s}", "mode": mode} for s in STEPS],
            },
        )
        journey_id = design["journey_id"]
        emit("JOURNEY", journey_id, structured_instance_id(journey_id, USER_ID))
        if mode == "user":
            hold.stall_from = None  # the advance of the held step starts the slow store instead
        if hold.slow and hold.stall_from == "s0":
            hold.stall.set()  # nothing is checkpointed: the start is killed before its first checkpoint
        status = await runtime.structured.execute_journey(journey_id, USER_ID, {"crash": True})
        n = 0
        while status["status"] == "in_progress" and status["awaiting_input"]:
            if hold.slow and status["current_step"] == hold.step:
                hold.stall.set()
            status = await runtime.structured.advance_journey_step(journey_id, USER_ID, {"ack": True})
            n += 1
            emit("ADVANCED", n)
            await asyncio.sleep(PAUSE_BETWEEN_ADVANCES_S)
        emit("STATUS", json.dumps(status, sort_keys=True))


async def resume(url: str, effects_db: str, journey_id: str) -> None:
    registry = AgentRegistry()
    register_agents(registry, effects_db, Hold(None))
    async with JourneyRuntime.open(url, agents=registry) as runtime:
        emit("RECOVERED", json.dumps(await runtime.recover()))
        status = await runtime.structured.get_journey_status(journey_id, USER_ID)
        while status["status"] == "in_progress" and status["awaiting_input"]:
            status = await runtime.structured.advance_journey_step(journey_id, USER_ID, {"ack": True})
            emit("ADVANCED", len(status["completed_steps"]))
        emit("STATUS", json.dumps(status, sort_keys=True))


SAGA_USER = "crash-saga-user"
SAGA_HANDLERS = {
    "upload_content": "delete_uploaded_content",
    "analyze_content": "revert_analysis",
    "transform_data": "revert_transformation",
}


def register_undo(registry: AgentRegistry, effects_db: str, hold: Hold) -> None:
    service = external_service(effects_db, hold)
    for handler in SAGA_HANDLERS.values():
        registry.register(handler, service, name=f"external_{handler}", replace=True)


async def run_saga(runtime: JourneyRuntime) -> tuple[str, dict[str, Any]]:
    """Design and start the migration saga, print ``SAGA <saga_id>`` and advance every step (the last fails)."""
    design = await runtime.saga.design_saga_journey("enterprise_migration", {}, SAGA_HANDLERS)
    journey_id = design["journey_id"]
    saga_id = (await runtime.saga.execute_saga_journey(journey_id, SAGA_USER, {}))["saga_id"]
    emit("SAGA", saga_id)
    status: dict[str, Any] = {}
    for _ in design["steps"]:
        status = await runtime.saga.advance_saga_step(saga_id, journey_id, SAGA_USER, {})
    return saga_id, status


async def saga_start(url: str, effects_db: str, durability: Durability) -> None:
    hold = Hold(None)
    hold.point, hold.step = "effect", "analyze_content"  # the second compensation the retry runs
    async with JourneyRuntime.open(url, durability=durability) as runtime:
        register_undo(runtime.agents, effects_db, hold)
        for broken in ("validate_results", "revert_transformation"):
            runtime.agents.register(broken, FailingAgent(broken, permanent=True), replace=True)
        saga_id, status = await run_saga(runtime)
        emit("FAILED", json.dumps(status, sort_keys=True))
        register_undo(runtime.agents, effects_db, hold)
        status = await runtime.saga.retry_saga_step(saga_id)
        emit("STATUS", json.dumps(status, sort_keys=True))


async def saga_compensate(url: str, effects_db: str) -> None:
    hold = Hold(None)
    hold.point, hold.step, hold.event = "event", "analyze_content", "compensation.completed"
    async with JourneyRuntime.open(url) as runtime:
        install_event_hold(runtime, hold)
        register_undo(runtime.agents, effects_db, hold)
        runtime.agents.register("validate_results", FailingAgent("validate_results", permanent=True), replace=True)
        _saga_id, status = await run_saga(runtime)
        emit("STATUS", json.dumps(status, sort_keys=True))


async def saga_resume(url: str, effects_db: str, saga_id: str, durability: Durability) -> None:
    async with JourneyRuntime.open(url, durability=durability) as runtime:
        register_undo(runtime.agents, effects_db, Hold(None))
        emit("RECOVERED", json.dumps(await runtime.recover()))
        status = await runtime.saga.get_saga_status(saga_id)
        emit("STATUS", json.dumps(status, sort_keys=True))


UNIT_TASKS = ("t1", "t2", "t3")


def unit_spec() -> LifecycleSpec:
    """A lifecycle with no criteria and one unit of work in the sandbox, ``setup``: t1 → t2 → t3, each undone."""
    tasks = tuple(
        TaskSpec(task_id=t, intent=f"crash.{t}", depends_on=(p,) if p else (), compensation=f"undo_{t}")
        for p, t in zip((None, *UNIT_TASKS), UNIT_TASKS, strict=False)
    )
    unit = UnitOfWorkSpec(uow_id="setup", tasks=tasks)
    return LifecycleSpec(sandbox=StageSpec(units=(unit,)), pilot=StageSpec(), production=StageSpec())


def register_unit_agents(registry: AgentRegistry, effects_db: str, hold: Hold) -> None:
    service = external_service(effects_db, hold)
    for task in UNIT_TASKS:
        registry.register(f"crash.{task}", service, name=f"external_{task}", replace=True)
        registry.register(f"undo_{task}", service, name=f"external_undo_{task}", replace=True)
    registry.register("crash.t3", FailingAgent("crash.t3", permanent=True), replace=True)


async def unit_compensate(url: str, effects_db: str) -> None:
    hold = Hold(None)
    hold.point, hold.step, hold.event = "event", "setup.t2", "task.compensated"
    async with JourneyRuntime.open(url) as runtime:
        install_event_hold(runtime, hold)
        register_unit_agents(runtime.agents, effects_db, hold)
        journey = await runtime.lifecycle.start_journey("crash-client", spec=unit_spec())
        emit("JOURNEY", journey["journey_id"])
        await runtime.lifecycle.run_unit_of_work(journey["journey_id"], "setup")
        emit("STATUS", json.dumps(await runtime.lifecycle.units_of_work(journey["journey_id"]), default=str))


async def unit_rerun(url: str, effects_db: str) -> None:
    hold = Hold(None)
    hold.point, hold.step, hold.event = "event", "setup.t1", "task.compensated"
    async with JourneyRuntime.open(url) as runtime:
        install_event_hold(runtime, hold)
        register_unit_agents(runtime.agents, effects_db, hold)
        runtime.agents.register("undo_t1", FailingAgent("undo_t1", permanent=True), replace=True)
        journey = await runtime.lifecycle.start_journey("crash-client", spec=unit_spec())
        emit("JOURNEY", journey["journey_id"])
        first = await runtime.lifecycle.run_unit_of_work(journey["journey_id"], "setup")
        emit("FAILED", json.dumps(first["failure"], default=str))
        register_unit_agents(runtime.agents, effects_db, hold)
        await runtime.lifecycle.run_unit_of_work(journey["journey_id"], "setup")
        emit("STATUS", json.dumps(await runtime.lifecycle.units_of_work(journey["journey_id"]), default=str))


async def unit_resume(url: str, effects_db: str, journey_id: str) -> None:
    async with JourneyRuntime.open(url) as runtime:
        register_unit_agents(runtime.agents, effects_db, Hold(None))
        emit("RECOVERED", json.dumps(await runtime.recover()))
        state = await runtime.lifecycle.get_journey_state(journey_id)
        emit("STATE", json.dumps({"stage": state["current_stage"], "units": state["units"]}))
        emit("UNITS", json.dumps(await runtime.lifecycle.units_of_work(journey_id), default=str))


def main(argv: list[str]) -> None:
    url, effects_db, command, *rest = argv
    init_effects_db(effects_db)
    if command == "start":
        mode, *hold = rest
        asyncio.run(start(url, effects_db, mode, Hold(hold[0] if hold else None)))
    elif command == "resume":
        asyncio.run(resume(url, effects_db, rest[0]))
    elif command == "saga-start":
        asyncio.run(saga_start(url, effects_db, durability(rest[0])))
    elif command == "saga-compensate":
        asyncio.run(saga_compensate(url, effects_db))
    elif command == "saga-resume":
        asyncio.run(saga_resume(url, effects_db, rest[0], durability(rest[1])))
    elif command == "unit-compensate":
        asyncio.run(unit_compensate(url, effects_db))
    elif command == "unit-rerun":
        asyncio.run(unit_rerun(url, effects_db))
    elif command == "unit-resume":
        asyncio.run(unit_resume(url, effects_db, rest[0]))
    else:
        raise SystemExit(
            f"unknown command {command!r}; use start, resume, saga-start, saga-compensate, saga-resume, "
            "unit-compensate, unit-rerun or unit-resume"
        )


def run(argv: list[str], stdout: Connection, stderr: str) -> None:
    """:func:`main` in a process forked from the forkserver: what it prints goes to ``stdout`` (the parent's
    pipe), what it logs to the file ``stderr``."""
    os.dup2(stdout.fileno(), 1)
    stdout.close()
    with open(stderr, "ab") as log:
        os.dup2(log.fileno(), 2)
    main(argv)


def durability(value: str) -> Durability:
    if value not in ("async", "exit"):
        raise SystemExit(f"unknown durability {value!r}; use async or exit")
    return cast(Durability, value)


if __name__ == "__main__":
    main(sys.argv[1:])

"""One writer per journey instance, across runtimes and processes (issue 10, sections 2 and 4).

Two runtimes on one database, or two processes, advancing the same journeys: every advance either
is acknowledged, and then its result is in the event log exactly once, or is refused with a typed
error and left no trace. A holder killed mid-step releases the journey at once. Two concurrent
promotions promote once and never validate the next stage's gate.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from langgraph.checkpoint.base import empty_checkpoint
from psycopg.conninfo import conninfo_to_dict

from agents.protocol import AgentRequest
from agents.registry import AgentRegistry
from checkpoints import locks as locks_module
from checkpoints.database import lost_database
from checkpoints.errors import ConcurrentUpdateError, InstanceLockLostError, JourneyError
from graphs import InvalidInputError, JourneyFinishedError, JourneyRuntime, StepMovedOnError
from graphs.kernel.designs import new_instance_id
from graphs.lifecycle.catalog import READY_TO_START
from nodes.compensation import COMPLETED_STEP
from nodes.criteria_gate import ValidationResult
from server.app import create_app
from server.settings import Settings
from tests.lifecycle_support import PILOT_ENTRY, SANDBOX_EXIT, fingerprint, journey_at, lifecycle_runtime
from tests.process_support import runtime as process_runtime
from tests.server_support import on_server_loop, serving
from tests.test_process_versioning import onboarding

ROOT = Path(__file__).resolve().parents[1]
CHILD = ROOT / "tests" / "lock_child.py"
INTENT = "locks.step"  # the agent lock_child.py registers for every step


def slow_upload(calls: list[str]) -> Any:
    async def upload_content(request: AgentRequest) -> dict[str, Any]:
        calls.append(request.idempotency_key)
        await asyncio.sleep(0.3)
        return {"uploaded": True}

    return upload_content


async def logged_results(runtime: JourneyRuntime, instance_id: str) -> list[tuple[str, str]]:
    """(who, step) of every completed step in the instance's log, in order."""
    done = await runtime.store.events.list(instance_id, types=[COMPLETED_STEP])
    return [(str(e.payload["step_result"].get("who")), str(e.step)) for e in done]


async def test_two_runtimes_advancing_one_step_lose_no_acknowledged_result(durable_url: str) -> None:
    calls: list[str] = []
    registries = [AgentRegistry(), AgentRegistry()]
    for registry in registries:
        registry.register("upload_content", slow_upload(calls))
    async with (
        JourneyRuntime.open(durable_url, agents=registries[0]) as a,
        JourneyRuntime.open(durable_url, agents=registries[1]) as b,
    ):
        journey = await a.structured.design_journey("content_migration", {})
        journey_id = journey["journey_id"]
        started = await a.structured.execute_journey(journey_id, "u", {})
        answers = await asyncio.gather(
            a.structured.advance_journey_step(journey_id, "u", {"who": "A"}),
            b.structured.advance_journey_step(journey_id, "u", {"who": "B"}),
            return_exceptions=True,
        )
        logged = await logged_results(a, started["instance_id"])

    acknowledged = {who: answer for who, answer in zip("AB", answers, strict=True) if isinstance(answer, dict)}
    refused = [answer for answer in answers if not isinstance(answer, dict)]
    # The one that waits is refused: it gave up waiting, or it found the step it was for completed meanwhile.
    assert all(isinstance(answer, ConcurrentUpdateError | StepMovedOnError) for answer in refused), refused
    assert acknowledged, "one of the two advances must go through"
    # Each acknowledged result is logged exactly once, for the step its answer names; nothing else is.
    assert sorted(logged) == sorted((who, view["completed_step"]) for who, view in acknowledged.items())
    assert Counter(calls) == Counter(set(calls)), f"an agent ran twice under one idempotency key: {calls}"


def noting(read: Any, seen: list[Any], both: asyncio.Event) -> Any:
    """``read`` (a lifecycle's ``_stage_now``), noting each stage it reads; ``both`` is set at the second."""

    async def stage_now(graph: Any, journey_id: str) -> Any:
        stage = await read(graph, journey_id)
        seen.append(stage)
        if len(seen) == 2:
            both.set()
        return stage

    return stage_now


async def test_concurrent_promotes_promote_once_and_never_validate_the_next_stage(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with lifecycle_runtime(store_url) as (runtime, clock), lifecycle_runtime(store_url) as (other, _):
        # On a durable store the second promotion comes from a second runtime on the same database.
        second = runtime if store_url == "memory://" else other
        lc = runtime.lifecycle
        journey_id = await journey_at(runtime, clock, "sandbox")
        await lc.run_unit_of_work(journey_id, "test_dataset_provisioning")
        await lc.run_unit_of_work(journey_id, "search_quality_validation")
        await lc.record_metrics(journey_id, {**SANDBOX_EXIT, **PILOT_ENTRY})
        # Both are asked while the journey is in the sandbox: the journey's lock is held here until each has
        # read the stage it was asked in, so they race for the lock, not for that read (on a loaded machine,
        # one could otherwise be asked only once the other had promoted, and rightly go on from the pilot).
        seen: list[Any] = []
        both_read = asyncio.Event()
        for orchestrator in {id(o): o for o in (lc, second.lifecycle)}.values():
            monkeypatch.setattr(orchestrator, "_stage_now", noting(orchestrator._stage_now, seen, both_read))

        async with runtime.engine.exclusive(journey_id):
            promotes = asyncio.gather(
                lc.promote(journey_id), second.lifecycle.promote(journey_id), return_exceptions=True
            )
            await asyncio.wait_for(both_read.wait(), 30)
        answers = await promotes
        assert seen == ["sandbox", "sandbox"]

        promoted = [a for a in answers if isinstance(a, ValidationResult)]
        refused = [a for a in answers if not isinstance(a, ValidationResult)]
        assert [p.event for p in promoted] == ["promote_to_pilot"] and promoted[0].passed, answers
        assert len(refused) == 1 and isinstance(refused[0], ConcurrentUpdateError), refused
        assert "promote" in str(refused[0]) and refused[0].category == "conflict"
        history = await lc.validation_history(journey_id)
        assert [v.event for v in history if v.kind == "promotion"] == ["promote_to_pilot"]
        assert (await lc.get_journey_state(journey_id))["current_stage"] == "pilot"
        assert (await lc.metrics.exit_criteria_first_pass_rate())["rate"] == 1.0
        # A promotion asked for after the first one was answered goes on from the new stage, as before.
        later = await lc.promote(journey_id)
        assert later.event == "promote_to_production" and not later.passed


# --- real processes -------------------------------------------------------------------------------


class Child:
    """``lock_child.py`` in a process of its own."""

    def __init__(self, args: Sequence[str], log: Path) -> None:
        self._stderr = log.open("wb")
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, str(CHILD), *args],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )

    def wait_for(self, prefix: str, timeout: float = 30.0) -> str:
        assert self.proc.stdout is not None
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            line = self.proc.stdout.readline()
            if not line:
                break
            if line.startswith(prefix):
                return line.strip()
        self.close()
        pytest.fail(f"child never printed {prefix!r}:\n{self.log.read_text(errors='replace')[-4000:]}")

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def finish(self, timeout: float = 60.0) -> list[str]:
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        finally:
            self.close()
        assert self.proc.returncode == 0, self.log.read_text(errors="replace")[-4000:]
        return out.splitlines()

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        assert self.proc.wait(timeout=10) == -signal.SIGKILL

    def close(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        self._stderr.close()


def user_steps(count: int) -> dict[str, Any]:
    steps = [{"step_id": f"s{n}", "agent": INTENT, "mode": "user"} for n in range(1, count + 1)]
    return {"journey_type": "locks", "steps": steps}


def recorded_calls(effects_db: Path) -> list[str]:
    conn = sqlite3.connect(effects_db, timeout=30)
    try:
        return [key for (key,) in conn.execute("SELECT key FROM calls ORDER BY id")]
    finally:
        conn.close()


async def open_with_steps(url: str, effects_db: Path, **options: Any) -> Any:
    registry = AgentRegistry()

    def step(request: AgentRequest) -> dict[str, Any]:
        conn = sqlite3.connect(effects_db, timeout=30)
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS calls (id INTEGER PRIMARY KEY, key TEXT NOT NULL)")
            conn.execute("INSERT INTO calls (key) VALUES (?)", (request.idempotency_key,))
            conn.commit()
        finally:
            conn.close()
        return {"step": request.step}

    registry.register(INTENT, step)
    return JourneyRuntime.open(url, agents=registry, default_agents=False, **options)


@pytest.mark.slow
async def test_two_processes_hammering_the_same_journeys_lose_nothing(durable_url: str, tmp_path: Path) -> None:
    steps, users, advances = 12, ["u1", "u2", "u3"], 8  # 16 attempts per journey for 12 steps: some refusals
    effects_db = tmp_path / "effects.db"
    async with await open_with_steps(durable_url, effects_db) as runtime:
        journey_id = (await runtime.structured.design_journey("locks", spec=user_steps(steps)))["journey_id"]
        instances = {u: (await runtime.structured.execute_journey(journey_id, u, {}))["instance_id"] for u in users}

    # The second process waits only briefly for a journey the first is changing, so some of its advances
    # are refused with ConcurrentUpdateError, which must leave no trace.
    children = [
        Child(
            [durable_url, str(effects_db), "hammer", tag, journey_id, ",".join(users), str(advances), wait],
            tmp_path / tag,
        )
        for tag, wait in (("p1", "30"), ("p2", "0.02"))
    ]
    try:
        for child in children:
            child.wait_for("READY")
        for child in children:
            child.go()
        lines = [line for child in children for line in child.finish()]
    finally:
        for child in children:
            child.close()

    acknowledged = {who: step for kind, who, step in (line.split() for line in lines) if kind == "ACK"}
    refusals = Counter(code for kind, _who, code in (line.split() for line in lines) if kind == "REFUSED")
    assert len(acknowledged) + sum(refusals.values()) == 2 * len(users) * advances, lines
    # An advance that names no step and finds that step completed while it waited for the lock is refused too
    # (StepMovedOnError: two clients advancing one journey at once), and must leave no trace either.
    assert set(refusals) <= {"ConcurrentUpdateError", "JourneyFinishedError", "StepMovedOnError"}, refusals
    async with await open_with_steps(durable_url, effects_db) as runtime:
        for user in users:
            logged = await logged_results(runtime, instances[user])
            mine = sorted((who, step) for who, step in acknowledged.items() if f"-{user}-" in who)
            assert sorted(logged) == mine, (user, logged, mine)
            assert [step for _who, step in logged] == [f"s{n}" for n in range(1, len(logged) + 1)]
            status = await runtime.structured.get_journey_status(journey_id, user)
            assert status["completed_steps"] == [step for _who, step in logged]
    calls = recorded_calls(effects_db)
    assert Counter(calls) == Counter(set(calls)), "an agent ran twice under one idempotency key"


@pytest.mark.slow
async def test_a_holder_killed_mid_step_releases_the_journey(durable_url: str, tmp_path: Path) -> None:
    effects_db = tmp_path / "effects.db"
    async with await open_with_steps(durable_url, effects_db, lock_timeout=0.5) as runtime:
        journey_id = (await runtime.structured.design_journey("locks", spec=user_steps(3)))["journey_id"]
        await runtime.structured.execute_journey(journey_id, "u", {})
        holder = Child([durable_url, str(effects_db), "hold", journey_id, "u"], tmp_path / "holder")
        try:
            # Waited for off the loop: this process's unlock of its start (queued as the start returned) goes out.
            await asyncio.to_thread(holder.wait_for, "HOLD")
            # While the other process is mid-step, this one waits for the journey, then gives up: typed.
            with pytest.raises(ConcurrentUpdateError) as refused:
                await runtime.structured.advance_journey_step(journey_id, "u", {"who": "here"})
            assert refused.value.category == "conflict" and isinstance(refused.value, JourneyError)
            holder.kill()
        finally:
            holder.close()
        # Taken, not refused: this runtime gives up on a held journey after 0.5 s (lock_timeout), so the kill
        # released it by then (no wall-clock bound on the step itself: a loaded machine runs it slowly).
        view = await runtime.structured.advance_journey_step(journey_id, "u", {"who": "here"})
        assert view["completed_step"] in ("s1", "s2")


async def test_concurrent_rollbacks_roll_back_once(store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two rollbacks asked in the same stage at once: one rolls back, the other is told the journey moved. Both
    have looked at the journey (the stage each was asked in) before either acts: without that, on a loaded box
    ``gather``'s first call could be held before its look while the second ran to its end, and it was then a
    rollback asked in sandbox (both done, seen twice in CI), not the race this test is about."""
    async with lifecycle_runtime(store_url) as (runtime, clock):
        lc = runtime.lifecycle
        journey_id = await journey_at(runtime, clock, "pilot")
        both_asked = asyncio.Barrier(2)
        request = lc._rows.request_rollback

        async def asked_together(*args: Any, **kwargs: Any) -> None:
            async with asyncio.timeout(30):
                await both_asked.wait()
            await request(*args, **kwargs)

        monkeypatch.setattr(lc._rows, "request_rollback", asked_together)
        answers = await asyncio.gather(
            lc.initiate_rollback(journey_id, "first", complete=True),
            lc.initiate_rollback(journey_id, "second", complete=True),
            return_exceptions=True,
        )
        done = [a for a in answers if isinstance(a, dict)]
        refused = [a for a in answers if not isinstance(a, dict)]
        assert len(done) == 1 and done[0]["journey"]["current_stage"] == "sandbox", answers
        assert len(refused) == 1 and isinstance(refused[0], ConcurrentUpdateError), refused
        assert [r["reason"] for r in await lc.rollback_history(journey_id)] == [done[0]["reason"]]


async def test_automatic_rollbacks_of_two_metrics_recorded_at_once_roll_back_once(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two feeds record a pilot satisfaction below 3.5 at once. The second read the journey in pilot (its threshold
    fires there), then the first's rollback ran to its end (pilot -> sandbox) before the second acted: the second
    rolled the journey back again, sandbox -> sandbox, for a pilot threshold, as a second rollback in the history.
    An automatic rollback now rolls back only the stage whose threshold fired: the second finds the journey moved
    and does nothing."""
    async with lifecycle_runtime(store_url) as (runtime, clock):
        lc = runtime.lifecycle
        journey_id = await journey_at(runtime, clock, "pilot")
        looked, go_on = asyncio.Event(), asyncio.Event()
        position = lc._rows.position

        async def held_once(instance_id: str) -> tuple[str, str] | None:
            seen = await position(instance_id)
            if not looked.is_set():  # the second feed's look: held until the first feed's rollback has ended
                looked.set()
                async with asyncio.timeout(30):
                    await go_on.wait()
            return seen

        monkeypatch.setattr(lc._rows, "position", held_once)
        second = asyncio.create_task(lc.record_metric(journey_id, "user_satisfaction", 3.2))
        await asyncio.wait_for(looked.wait(), 30)
        first = await lc.record_metric(journey_id, "user_satisfaction", 3.1)
        assert first["rollback"] is not None and first["rollback"]["journey"]["current_stage"] == "sandbox"
        go_on.set()
        assert (await second)["rollback"] is None
        assert [r["from_stage"] for r in await lc.rollback_history(journey_id)] == ["pilot"]
        assert (await lc.get_journey_state(journey_id))["current_stage"] == "sandbox"


async def test_a_move_named_from_the_stage_seen_is_not_done_twice(store_url: str) -> None:
    """An operator clicks "roll back" twice (or two operators click it): the second call looked at the journey
    after the first had ended, so it rolled back again from where the first left it (sandbox -> sandbox).
    ``from_stage`` names the stage the caller saw: a rollback (or promotion) that finds the journey elsewhere is
    refused with ConcurrentUpdateError (409) and writes nothing; one asked of an ended journey with
    JourneyFinishedError."""
    async with lifecycle_runtime(store_url) as (runtime, clock):
        lc = runtime.lifecycle
        journey_id = await journey_at(runtime, clock, "pilot")
        done = await lc.initiate_rollback(journey_id, "first click", from_stage="pilot", complete=True)
        assert done["journey"]["current_stage"] == "sandbox"
        before = await fingerprint(runtime, journey_id)
        with pytest.raises(ConcurrentUpdateError, match="is in sandbox, not in pilot"):
            await lc.initiate_rollback(journey_id, "second click", from_stage="pilot", complete=True)
        with pytest.raises(ConcurrentUpdateError, match="is in sandbox, not in pilot"):
            await lc.transition(journey_id, "initiate_rollback", reason="second click", from_stage="pilot")
        assert await fingerprint(runtime, journey_id) == before
        await lc.record_metrics(journey_id, {**SANDBOX_EXIT, **PILOT_ENTRY})
        assert (await lc.promote(journey_id, from_stage="sandbox")).passed
        moved = await fingerprint(runtime, journey_id)
        with pytest.raises(ConcurrentUpdateError, match="is in pilot, not in sandbox"):
            await lc.promote(journey_id, from_stage="sandbox")
        assert await fingerprint(runtime, journey_id) == moved
        await lc.cancel(journey_id, "client left")
        with pytest.raises(JourneyFinishedError, match="cancelled"):
            await lc.initiate_rollback(journey_id, "late click", from_stage="pilot")
        with pytest.raises(InvalidInputError, match="from_stage"):
            await lc.initiate_rollback(journey_id, "typo", from_stage="pilott")
        assert [r["reason"] for r in await lc.rollback_history(journey_id)] == ["first click"]


def test_a_rollback_clicked_twice_over_http_is_refused_the_second_time(store_url: str) -> None:
    """The same double click over HTTP: the transition's options take ``from_stage``; the second POST answers 409
    ConcurrentUpdateError and the journey stays where the first left it, with one rollback."""
    app = create_app(Settings(database_url=store_url, auth=False, run_timers=False))
    with serving(app) as base, httpx.Client(base_url=base, timeout=60) as http:
        started = http.post("/journeys/lifecycle", json={"client_id": "c1", "metrics": READY_TO_START})
        assert started.status_code == 200, started.text
        path = f"/journeys/lifecycle/{started.json()['journey_id']}"
        for unit in ("test_dataset_provisioning", "search_quality_validation"):
            ran = http.post(f"{path}/transitions", json={"event": "run_unit_of_work", "options": {"uow_id": unit}})
            assert ran.status_code == 200, ran.text
        recorded = http.post(f"{path}/metrics", json={"values": {**SANDBOX_EXIT, **PILOT_ENTRY}})
        assert recorded.status_code == 200, recorded.text
        promoted = http.post(f"{path}/transitions", json={"event": "promote_to_pilot"})
        assert (promoted.status_code, promoted.json()["current_stage"]) == (200, "pilot"), promoted.text
        click = {
            "event": "initiate_rollback",
            "options": {"reason": "bad pilot", "from_stage": "pilot", "complete": True},
        }
        first = http.post(f"{path}/transitions", json=click)
        assert (first.status_code, first.json()["current_stage"]) == (200, "sandbox"), first.text
        second = http.post(f"{path}/transitions", json=click)
        assert (second.status_code, second.json()["code"]) == (409, "ConcurrentUpdateError"), second.text
        assert second.json()["details"]["current_stage"] == "sandbox"
        assert http.get(path).json()["current_stage"] == "sandbox"
        history = on_server_loop(
            app, app.state.services.runtime.lifecycle.rollback_history(started.json()["journey_id"])
        )
        assert [r["reason"] for r in history] == ["bad pilot"]


async def test_a_rollback_asked_while_another_is_under_way_is_told_so(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, a rollback asked while another one's run was mid-way (its checkpoint in stage ``rollback``,
    its notification under way) was refused at once from that passing state: "initiate_rollback is not allowed
    in stage 'rollback'". It now waits for the journey and answers that it moved meanwhile (a conflict: ask
    again), as when the other rollback finishes first."""
    async with lifecycle_runtime(store_url) as (runtime, _clock):
        lc = runtime.lifecycle
        journey_id = await journey_at(runtime, _clock, "pilot")
        notifying, go_on = asyncio.Event(), asyncio.Event()

        async def held_notifier(_request: AgentRequest) -> dict[str, Any]:
            notifying.set()
            await go_on.wait()
            return {"delivered": True}

        lc.use_notifier(held_notifier)
        engine, waits_for_it = runtime.engine, asyncio.Event()
        exclusive = engine.exclusive

        def noted(instance_id: str, *args: Any, **kwargs: Any) -> Any:
            waits_for_it.set()  # only the second call asks for the journey's lock while the first holds it
            return exclusive(instance_id, *args, **kwargs)

        first = asyncio.create_task(lc.initiate_rollback(journey_id, "first", complete=True))
        await asyncio.wait_for(notifying.wait(), 30)
        monkeypatch.setattr(engine, "exclusive", noted)
        second = asyncio.create_task(lc.initiate_rollback(journey_id, "second", complete=True))
        asked = asyncio.create_task(waits_for_it.wait())
        await asyncio.wait([second, asked], timeout=30, return_when=asyncio.FIRST_COMPLETED)
        asked.cancel()
        go_on.set()
        assert (await first)["journey"]["current_stage"] == "sandbox"
        with pytest.raises(ConcurrentUpdateError, match="moved from rollback to sandbox"):
            await second
        assert [r["reason"] for r in await lc.rollback_history(journey_id)] == ["first"]


async def test_a_rollback_that_waited_while_the_journey_was_cancelled_says_it_cannot_roll_back(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, a rollback that peeked at ``pilot`` and then waited for the journey while ``cancel_journey``
    cancelled it answered "moved from pilot to cancelled ...; nothing was done (ask again to roll back from
    cancelled)", which a cancelled journey cannot do. It now says the journey finished (nothing to ask again)."""
    async with lifecycle_runtime(store_url) as (runtime, clock):
        lc, engine = runtime.lifecycle, runtime.engine
        journey_id = await journey_at(runtime, clock, "pilot")
        exclusive, waiting = engine.exclusive, asyncio.Semaphore(0)

        def noted(instance_id: str, *args: Any, **kwargs: Any) -> Any:
            waiting.release()  # a call now queues for the journey's lock, which the test holds
            return exclusive(instance_id, *args, **kwargs)

        release = asyncio.Event()

        async def hold() -> None:
            async with exclusive(journey_id):
                await release.wait()

        holder = asyncio.create_task(hold())
        await asyncio.sleep(0)
        monkeypatch.setattr(engine, "exclusive", noted)
        cancel = asyncio.create_task(lc.cancel(journey_id, "client left"))
        await asyncio.wait_for(waiting.acquire(), 30)
        rollback = asyncio.create_task(lc.initiate_rollback(journey_id, "bad data", complete=True))
        await asyncio.wait_for(waiting.acquire(), 30)
        release.set()  # the lock goes first come first served: the cancel, then the rollback
        await holder
        assert (await cancel)["current_stage"] == "cancelled"
        with pytest.raises(JourneyFinishedError) as refused:
            await rollback
        assert "ask again" not in refused.value.message and "cancelled" in refused.value.message, refused.value
        assert refused.value.details.get("allowed") == [], refused.value.details
        assert await lc.rollback_history(journey_id) == []


async def test_concurrent_migrations_of_one_instance_migrate_it_once(store_url: str) -> None:
    async with process_runtime(store_url) as rt:
        for intent in ("activate", "welcome_call"):
            rt.agents.register(intent, lambda request: {})
        await rt.processes.deploy(onboarding(1))
        view = await rt.processes.start("onboarding", "cust-1")
        [task] = await rt.processes.inbox.list_tasks(assignee="ana")
        await rt.processes.inbox.complete(task["task_id"], user="ana", payload={})  # now waits at its timer
        await rt.processes.deploy(onboarding(2, extra_step=True))

        answers = await asyncio.gather(
            rt.processes.migrate(view["instance_id"], to_version=2),
            rt.processes.migrate(view["instance_id"], to_version=2),
            return_exceptions=True,
        )

        moved = [a for a in answers if isinstance(a, dict)]
        refused = [a for a in answers if not isinstance(a, dict)]
        assert len(moved) == 1 and moved[0]["version"] == 2, answers
        assert len(refused) == 1 and isinstance(refused[0], ConcurrentUpdateError), refused
        history = await rt.processes.history(view["instance_id"])
        assert [e.payload["from_version"] for e in history if e.type == "process.migrated"] == [1]


@pytest.mark.slow
async def test_an_advance_that_waited_too_long_is_a_409_over_http(sqlite_url: str) -> None:
    calls: list[str] = []
    registry = AgentRegistry()
    registry.register("upload_content", slow_upload(calls))
    app = create_app(
        Settings(database_url=sqlite_url, auth=False), runtime_options={"agents": registry, "lock_timeout": 0.1}
    )
    with serving(app) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            design = await client.post("/journeys/structured/designs", json={"journey_type": "content_migration"})
            journey_id = design.json()["journey_id"]
            await client.post(f"/journeys/structured/{journey_id}/executions", json={"user_id": "u", "context": {}})
            advance = f"/journeys/structured/{journey_id}/users/u/advance"
            answers = await asyncio.gather(
                client.post(advance, json={"step_result": {"who": "A"}}),
                client.post(advance, json={"step_result": {"who": "B"}}),
            )
    assert sorted(a.status_code for a in answers) == [200, 409], [a.text for a in answers]
    [refused] = [a for a in answers if a.status_code == 409]
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["type"] == "/problems/ConcurrentUpdateError"
    assert len(calls) == 1


# --- the lock seam itself -------------------------------------------------------------------------


async def test_a_holder_whose_lock_connection_drops_is_stopped_and_the_next_acquisition_reconnects(
    postgres_url: str,
) -> None:
    """The PostgreSQL lock's connection dropped (a restart, a failover, a terminated backend) while a call held a
    journey: PostgreSQL released the lock, another process entered the journey at once, and the holder only
    logged "instance lock was lost while held" and carried on writing (seen with two workers: each ran the
    journey's next steps, each step's agent twice). Now the holder is stopped as soon as the drop is seen, with
    InstanceLockLostError (an outage to its callers: its work is taken again), and the next acquisition
    reconnects."""
    async with JourneyRuntime.open(postgres_url) as a, JourneyRuntime.open(postgres_url, lock_timeout=0.2) as b:
        loop = asyncio.get_running_loop()
        writes: list[float] = []

        async def b_enters() -> bool:
            try:
                async with b.engine.exclusive("journey-x"):
                    return True
            except ConcurrentUpdateError:
                return False

        async def holder() -> None:
            async with a.engine.exclusive("journey-x"):
                while True:  # a long step, writing as it goes
                    writes.append(loop.time())
                    await asyncio.sleep(0.01)

        held = asyncio.create_task(holder())
        await asyncio.sleep(0.1)
        assert not await b_enters()
        locks: Any = a.store.locks
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (locks._conn.info.backend_pid,))
        dropped = loop.time()
        with pytest.raises(InstanceLockLostError) as lost:
            await asyncio.wait_for(held, 5)
        assert writes[-1] - dropped < 1.0  # stopped within a watch or two of the drop
        assert lost_database(lost.value) is lost.value  # the run's queue takes its work again, as after an outage
        assert "another process may be working on it now" in str(lost.value)
        assert await b_enters()
        async with a.engine.exclusive("journey-x"):
            assert not await b_enters()
        assert await b_enters()


@contextlib.asynccontextmanager
async def silencing_proxy(postgres_url: str) -> AsyncIterator[tuple[str, Callable[[], None]]]:
    """A TCP proxy in front of the PostgreSQL server at ``postgres_url``: yields its URL and a call that makes the
    path of every connection open now go silent, as a failover or a NAT's dropped mapping does: the server's end is
    closed (PostgreSQL ends those sessions, releasing their locks), while the client's gets nothing, not even an end
    of stream. Connections made afterwards go through (the database is reachable again, as after a failover)."""
    params = conninfo_to_dict(postgres_url)
    host, port = str(params.get("host") or "localhost"), int(params.get("port") or 5432)
    sessions: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter, list[asyncio.Future[Any]]]] = []
    handlers: set[asyncio.Task[Any]] = set()

    async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        while data := await source.read(65_536):
            sink.write(data)
            await sink.drain()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        if host.startswith("/"):
            up_reader, up_writer = await asyncio.open_unix_connection(f"{host}/.s.PGSQL.{port}")
        else:
            up_reader, up_writer = await asyncio.open_connection(host, port)
        pumps = [asyncio.ensure_future(pump(reader, up_writer)), asyncio.ensure_future(pump(up_reader, writer))]
        sessions.append((writer, up_writer, pumps))
        await asyncio.gather(*pumps, return_exceptions=True)

    def go_silent() -> None:
        for _client, upstream, pumps in sessions:
            for pumping in pumps:
                pumping.cancel()
            upstream.close()  # the client's end is left open, and is sent nothing more

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    listening = server.sockets[0].getsockname()[1]
    user, password, dbname = params.get("user", ""), params.get("password", ""), params.get("dbname", "")
    credentials = f"{user}:{password}@" if password else f"{user}@"
    try:
        yield f"postgresql://{credentials}127.0.0.1:{listening}/{dbname}", go_silent
    finally:
        server.close()
        go_silent()
        await asyncio.gather(*handlers, return_exceptions=True)
        for client, upstream, _pumps in sessions:
            for stream in (client, upstream):
                stream.close()
                await asyncio.gather(stream.wait_closed(), return_exceptions=True)
        await server.wait_closed()


async def test_a_holder_whose_lock_connection_goes_silent_is_stopped(postgres_url: str) -> None:
    """A failover, or a NAT that dropped the lock connection's mapping, ends the lock's session on the server (its
    locks released: another process may take the journey at once) without a word to the holder: no end of stream
    reaches its socket, and a poll of it sees nothing. The holder worked on for good (another process then
    worked on the same journey: two runs of its steps). Now a lock connection that leaves its SELECT 1 unanswered
    stops its holders within seconds (InstanceLockLostError), and the next acquisition reconnects; the lock's
    session asks the server to end it once its client goes silent (TCP keepalives), not hours later."""
    async with (
        silencing_proxy(postgres_url) as (behind, go_silent),
        JourneyRuntime.open(behind) as a,
        JourneyRuntime.open(postgres_url, lock_timeout=0.2) as b,
    ):
        loop = asyncio.get_running_loop()
        writes: list[float] = []

        async def b_enters() -> bool:
            try:
                async with b.engine.exclusive("journey-s"):
                    return True
            except ConcurrentUpdateError:
                return False

        async def holder() -> None:
            async with a.engine.exclusive("journey-s"):
                while True:  # a long step, working as it goes
                    writes.append(loop.time())
                    await asyncio.sleep(0.01)

        locks: Any = a.store.locks
        asked = await locks._conn.execute("SELECT name FROM pg_settings WHERE name LIKE 'tcp_%' AND source = 'session'")
        assert sorted(name for (name,) in await asked.fetchall()) == sorted(dict(locks_module.SERVER_KEEPALIVES))
        held = asyncio.create_task(holder())
        await asyncio.sleep(0.1)
        assert not await b_enters()
        go_silent()
        silent = loop.time()
        while not await b_enters():  # the server ended the holder's session: the journey is free
            assert loop.time() - silent < 5
        with pytest.raises(InstanceLockLostError):
            await asyncio.wait_for(held, 15)
        assert writes[-1] - silent < locks_module.PROOF_AFTER_S + locks_module.ANSWER_LIMIT_S + 3
        async with a.engine.exclusive("journey-s"):  # a new lock connection
            assert not await b_enters()
        assert await b_enters()


async def test_a_holder_stopped_by_its_lock_loss_writes_no_checkpoint_on_its_way_out(postgres_url: str) -> None:
    """LangGraph saves a run's checkpoint as its loop unwinds, even when the run was cancelled (durability
    "exit"; from a task of its own): a holder the lock loss had stopped still wrote one, milliseconds after
    another process could have entered the journey, which could fork its thread. Writes of a holder whose lock
    was lost are now refused (InstanceLockLostError) and nothing reaches the saver's tables."""
    async with JourneyRuntime.open(postgres_url) as a:
        saver = a.store.saver
        refused: list[BaseException] = []

        def config(thread: str) -> Any:
            return {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}

        async def save(thread: str) -> None:
            checkpoint = empty_checkpoint()
            await saver.aput(config(thread), checkpoint, {"source": "loop", "step": 1}, {})

        async def holder() -> None:
            async with a.engine.exclusive("journey-z"):
                await save("before")  # while the lock is held, writes go through
                try:
                    await asyncio.sleep(30)  # a long step
                except asyncio.CancelledError:
                    for write in (save("on-the-way-out"), asyncio.create_task(save("from-its-own-task"))):
                        try:
                            await write
                        except InstanceLockLostError as exc:
                            refused.append(exc)
                    raise

        held = asyncio.create_task(holder())
        await asyncio.sleep(0.2)
        locks: Any = a.store.locks
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (locks._conn.info.backend_pid,))
        with pytest.raises(InstanceLockLostError):
            await asyncio.wait_for(held, 5)
        assert len(refused) == 2, refused
        assert await saver.aget_tuple(config("before")) is not None
        for thread in ("on-the-way-out", "from-its-own-task"):
            assert await saver.aget_tuple(config(thread)) is None, thread
        await save("after")  # a write outside any hold is not fenced


async def test_a_journey_is_unlocked_when_the_call_that_held_it_returns(postgres_url: str) -> None:
    """Once a call on a journey has returned, another process may take the journey at once, even if this
    process does not give its event loop another turn (it waits on a subprocess, say): a lock released
    later, by a task of the loop, kept the other process out until its wait limit."""
    async with JourneyRuntime.open(postgres_url) as runtime:
        for _ in range(3):
            async with runtime.engine.exclusive("journey-y"):
                pass
            with psycopg.connect(postgres_url, autocommit=True) as other:  # blocking: the loop does not run
                taken = other.execute("SELECT pg_try_advisory_lock(%s)", (locks_module.lock_key("journey-y"),))
                assert taken.fetchone() == (True,)


async def test_a_burst_of_postgres_locks_shares_round_trips_and_each_lock_is_held_then_released(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twenty journeys entered at once (a batch of fired timers) take their locks in a few statements on the
    lock connection, not one each, and release them so; each lock is really held in PostgreSQL meanwhile."""
    async with JourneyRuntime.open(postgres_url) as runtime:
        locks: Any = runtime.store.locks
        conn = locks._conn
        sent: list[tuple[str, int]] = []  # each lock statement sent, with how many journeys' keys it carried
        send = locks._run

        async def counted(on: Any, sql: str, keys: list[int]) -> Any:
            sent.append((sql, len(keys)))
            return await send(on, sql, keys)

        monkeypatch.setattr(locks, "_run", counted)
        ids = [f"journey-{i}" for i in range(20)]
        all_in, leave = asyncio.Event(), asyncio.Event()
        inside: list[str] = []

        async def hold(instance_id: str) -> None:
            async with runtime.engine.exclusive(instance_id):
                inside.append(instance_id)
                if len(inside) == len(ids):
                    all_in.set()
                await leave.wait()

        def advisory_locks_held() -> int:
            with psycopg.connect(postgres_url, autocommit=True) as admin:
                row = admin.execute(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid = %s",
                    (conn.info.backend_pid,),
                ).fetchone()
            assert row is not None
            return int(row[0])

        holders = asyncio.gather(*(hold(i) for i in ids))
        await asyncio.wait_for(all_in.wait(), timeout=10)
        assert advisory_locks_held() == len(ids)
        leave.set()
        await holders
        assert advisory_locks_held() == 0
        # One statement per journey and direction would be 40; every key went in one of these.
        assert 2 <= len(sent) <= 4, sent
        assert sum(n for sql, n in sent if sql == locks_module.TRY_LOCKS) == len(ids), sent
        assert sum(n for sql, n in sent if sql == locks_module.UNLOCKS) == len(ids), sent


PROBE = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, int(sys.argv[2]), os.SEEK_SET)
except OSError:
    print("held")
else:
    print("free")
"""


def byte_is_held(path: str, offset: int) -> bool:
    """Whether another process could lock the byte (asked from a process of its own: POSIX locks are per process)."""
    probe = subprocess.run([sys.executable, "-c", PROBE, path, str(offset)], capture_output=True, text=True, check=True)
    return probe.stdout.strip() == "held"


async def test_sqlite_instances_whose_bytes_collide_share_them_within_a_process(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(locks_module, "lock_key", lambda instance_id: 42)  # every instance on one byte
    lock_file = sqlite_url.removeprefix("sqlite:///") + locks_module.SIDECAR_SUFFIX
    async with JourneyRuntime.open(sqlite_url) as a, JourneyRuntime.open(sqlite_url, lock_timeout=0.2) as b:
        async with a.engine.exclusive("journey-1"):
            async with b.engine.exclusive("journey-2"):  # another instance: shares the byte, no wait
                assert byte_is_held(lock_file, 42)
                with pytest.raises(ConcurrentUpdateError):  # the same instance from another store: waits
                    async with b.engine.exclusive("journey-1"):
                        pass
            assert byte_is_held(lock_file, 42)  # still held for journey-1
        assert not byte_is_held(lock_file, 42)
        async with b.engine.exclusive("journey-1"):
            assert byte_is_held(lock_file, 42)


async def test_a_caller_in_the_same_process_waits_up_to_the_limit_then_is_refused(store_url: str) -> None:
    async with JourneyRuntime.open(store_url, lock_timeout=0.2) as runtime:
        engine = runtime.engine
        async with engine.exclusive("journey-x"):
            began = time.monotonic()
            with pytest.raises(ConcurrentUpdateError) as refused:
                async with engine.exclusive("journey-x"):
                    pass
            # Waited its limit, and was refused at it: not after the default limit (30 s) nor never.
            assert 0.2 <= time.monotonic() - began < 10.0
            assert refused.value.details["instance_id"] == "journey-x"
            async with engine.exclusive("journey-y"):  # other journeys are not held up
                pass
        async with engine.exclusive("journey-x"):
            pass


# --- new journeys' ids locked ahead (PostgreSQL) ------------------------------------------------------------


def taken_elsewhere(postgres_url: str, instance_id: str) -> bool:
    """Whether another session can take the journey's lock now (it is left free again at once)."""
    key = locks_module.lock_key(instance_id)
    with psycopg.connect(postgres_url, autocommit=True) as other:
        row = other.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
        if row == (True,):
            other.execute("SELECT pg_advisory_unlock(%s)", (key,))
    return row == (True,)


async def test_new_journeys_take_their_locks_ahead_in_batches_not_one_round_trip_each(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each journey the server started (a structured or saga start run: a new id) took its lock with a statement of
    its own on the lock connection, a round trip before its first step: one of the 13 statements of an 8-step
    journey, at every start. On PostgreSQL the ids of new journeys are now locked ahead, AHEAD in one statement, and
    a start enters its id without a round trip; each lock is this process's from before the start to its end only.
    Elsewhere an id is a new one, as before."""
    async with JourneyRuntime.open(store_url) as runtime:
        locks: Any = runtime.store.locks
        tries: list[int] = []
        if runtime.store.url.kind == "postgres":
            send = locks._run

            async def counted(conn: Any, sql: str, keys: list[int]) -> Any:
                if sql == locks_module.TRY_LOCKS:
                    tries.append(len(keys))
                return await send(conn, sql, keys)

            monkeypatch.setattr(locks, "_run", counted)
        started = [new_instance_id(runtime.engine, "structured") for _ in range(1)]
        for n in range(16):
            instance_id = started[-1]
            assert instance_id.startswith("structured_")
            async with runtime.engine.exclusive(instance_id):
                if runtime.store.url.kind == "postgres":
                    assert not taken_elsewhere(store_url, instance_id), n
            if runtime.store.url.kind == "postgres":
                assert taken_elsewhere(store_url, instance_id), n  # released as the call that held it returned
            started.append(new_instance_id(runtime.engine, "structured"))
        assert len(set(started)) == len(started)
        if runtime.store.url.kind == "postgres":
            # The first start's own try (the ids ahead are asked for with it), then a batch of AHEAD per AHEAD starts.
            assert len(tries) <= 2 + 16 // locks_module.AHEAD, tries  # one per start before: 16
            assert sum(tries) <= 16 + 2 * locks_module.AHEAD, tries


async def test_ids_locked_ahead_on_a_lost_lock_connection_are_not_handed_out(postgres_url: str) -> None:
    """The ids locked ahead lose their locks with the lock connection's session: after it dropped, a start is given
    a new id, which it locks on the new connection as it enters it (held there, and released after)."""
    async with JourneyRuntime.open(postgres_url) as runtime:
        locks: Any = runtime.store.locks
        first = new_instance_id(runtime.engine, "structured")
        async with runtime.engine.exclusive(first):  # the ids ahead are locked with its try
            pass
        ahead = [instance_id for instance_id, _generation in locks._ahead["structured"]]
        assert ahead and not any(taken_elsewhere(postgres_url, i) for i in ahead)
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (locks._conn.info.backend_pid,))
        for _ in range(100):  # the session ends in the server a moment after it is told to
            if all(taken_elsewhere(postgres_url, i) for i in ahead):
                break
            await asyncio.sleep(0.05)
        async with runtime.engine.exclusive("journey-z"):  # the lock connection is found lost, and reopened
            pass
        instance_id = new_instance_id(runtime.engine, "structured")
        assert instance_id not in ahead
        async with runtime.engine.exclusive(instance_id):
            assert not taken_elsewhere(postgres_url, instance_id)
        assert taken_elsewhere(postgres_url, instance_id)


async def test_an_id_handed_out_and_never_entered_is_unlocked(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A start that failed between taking its new id and entering its journey (its design refused, say) leaves no
    lock held for the process's life: an id handed out and not entered within AHEAD_UNUSED_S is unlocked."""
    monkeypatch.setattr(locks_module, "AHEAD_UNUSED_S", 0.05)
    async with JourneyRuntime.open(postgres_url) as runtime:
        locks: Any = runtime.store.locks
        async with runtime.engine.exclusive(new_instance_id(runtime.engine, "saga")):  # fills the ids ahead
            pass
        unused = new_instance_id(runtime.engine, "saga")
        assert not taken_elsewhere(postgres_url, unused)  # locked ahead, handed out
        await asyncio.sleep(0.1)
        new_instance_id(runtime.engine, "saga")  # a later start looks at what was handed out before
        for _ in range(100):
            if taken_elsewhere(postgres_url, unused):
                break
            await asyncio.sleep(0.02)
        assert taken_elsewhere(postgres_url, unused)
        assert unused not in locks._handed

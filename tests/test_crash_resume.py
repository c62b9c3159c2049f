"""Durability across a real crash: a journey runs in a child process that is SIGKILLed mid-journey, and a
fresh process resumes it from SQLite or Postgres. Every step's side effect happens exactly once.

The side effects live in an "external service" of their own (a SQLite file, see ``crash_child.py``) that
counts every invocation and keeps one effect row per idempotency key. What is allowed is at-least-once
for the one call a kill can land in: the agent has done its side effect but its completion event is
not in the log yet, so a fresh process cannot know and calls again with the same idempotency key. Every
call whose completion event was written, and every step acknowledged to the caller, runs exactly once.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import queue
import signal
import sqlite3
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from checkpoints.events import Event
from graphs.runtime import JourneyRuntime
from graphs.structured.builder import StructuredSpec
from graphs.structured.steps import position
from tests import crash_child
from tests.forked import WARM

pytestmark = pytest.mark.slow

STEPS = [f"s{n}" for n in range(1, 9)]
CASE_BUDGET_S = 55.0  # everything in one case, both children included; a hang fails instead of waiting


@dataclass(frozen=True)
class Crash:
    mode: str  # "auto": steps run back to back; "user": the child advances them one by one
    kill_after_effects: int | None = None  # kill as soon as this many side effects exist (mid agent call)
    kill_after_advanced: int | None = None  # kill right after the child prints "ADVANCED <n>"
    hold: str | None = None  # kill where the child holds (see crash_child.Hold)
    repeated: frozenset[str] | None = None  # steps that must be invoked twice, when the kill point is exact
    recovers: bool | None = None  # whether runtime.recover() itself must find the run in flight


CRASHES = {
    # A timed kill from outside, while an agent call is in flight.
    "auto-kill-after-2-effects": Crash("auto", kill_after_effects=2, recovers=True),
    "auto-kill-after-5-effects": Crash("auto", kill_after_effects=5, recovers=True),
    # Between two acknowledged user advances (the run waits for the user: nothing to recover), and in one.
    "user-kill-after-3-advances": Crash("user", kill_after_advanced=3, repeated=frozenset(), recovers=False),
    "user-kill-mid-advance-6": Crash("user", kill_after_effects=6),
    # Exact points: after the side effect but before its event; after the event but before the checkpoint.
    "auto-kill-after-effect-4": Crash("auto", hold="effect:4", repeated=frozenset({"s4"}), recovers=True),
    # The last event already marked the instance completed, so only the status call settles the graph.
    "auto-kill-after-event-8": Crash("auto", hold="event:8", repeated=frozenset()),
    # A slow store: the kill comes while checkpoints (and maybe task writes) are still on their way.
    "auto-kill-after-effect-4-slow-checkpoint": Crash(
        "auto", hold="effect:4+slow-checkpoint", repeated=frozenset({"s4"}), recovers=True
    ),
    # A structured run checkpoints where it stops: the advance the kill cut short left its step logged but
    # nothing in flight, and advancing it again replays the logged step.
    "user-kill-after-event-4-slow-checkpoint": Crash(
        "user", hold="event:4+slow-checkpoint", repeated=frozenset(), recovers=False
    ),
    "user-kill-after-event-4-slow-store": Crash(
        "user", hold="event:4+slow-store", repeated=frozenset(), recovers=False
    ),
    # Killed before the start's first checkpoint (its first step's event is logged): recover() sees the
    # accepted start and runs it from its first event, replaying the logged step.
    "auto-kill-before-first-checkpoint": Crash(
        "auto", hold="event:1+slow-checkpoint", repeated=frozenset(), recovers=True
    ),
}


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


# The children are forked from the test process's forkserver (tests/forked.py), which imported crash_child
# (2.4-2.7 CPU-s of a child's start, ~5 of a case's ~6.5): each child is still a process of its own, started
# fresh from those imports and SIGKILLed for real, and the fresh process that resumes is another.


class Child:
    """``crash_child.main(args)`` in a process of its own, forked from the forkserver; its stdout lines are
    collected by a thread, its stderr goes to ``log``."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        self.args = args
        reader, writer = WARM.Pipe(duplex=False)
        self.proc = WARM.Process(target=crash_child.run, args=(args, writer, str(log)), daemon=True)
        self.proc.start()
        writer.close()  # the child's copy is its stdout: the pipe ends when it does
        self._stdout = open(os.dup(reader.fileno()), encoding="utf-8")  # noqa: SIM115 (closed by close())
        reader.close()
        self.pid = self.proc.pid
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self._stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def _next_line(self, deadline: Deadline, waiting_for: str) -> str | None:
        """The next stdout line; None at end of output; "" when nothing came for a while."""
        left = deadline.left()
        if left <= 0:
            self.fail(f"ran out of the case's time budget waiting for {waiting_for}")
        try:
            line = self._queue.get(timeout=min(left, 0.5))
        except queue.Empty:
            return ""
        if line is not None:
            self.lines.append(line)
        return line

    def wait_for_line(self, prefix: str, deadline: Deadline) -> str:
        while True:
            line = self._next_line(deadline, repr(prefix))
            if line is None:
                self.fail(f"exited before printing {prefix!r}")
            if line and line.startswith(prefix):
                return line

    def drain(self, deadline: Deadline) -> None:
        while self._next_line(deadline, "the end of its output") is not None:
            pass

    def wait_for_effects(self, effects_db: Path, count: int, deadline: Deadline) -> None:
        while count_effects(effects_db) < count:
            if not self.proc.is_alive():
                self.fail(f"exited before {count} side effects were done")
            if deadline.left() <= 0:
                self.fail(f"ran out of the case's time budget waiting for {count} side effects")
            time.sleep(0.005)

    def kill_when_held(self, deadline: Deadline) -> None:
        """Wait for the child to reach its hold (``HOLD``), SIGKILL it there and read what it printed."""
        self.wait_for_line("HOLD ", deadline)
        self.kill()
        self.drain(deadline)

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        self.proc.join(timeout=10)
        assert self.proc.exitcode == -signal.SIGKILL

    def finish(self, deadline: Deadline) -> None:
        self.drain(deadline)
        self.proc.join(timeout=max(deadline.left(), 0.1))
        if self.proc.exitcode is None:
            self.fail("did not exit within the case's time budget")
        if self.proc.exitcode != 0:
            self.fail(f"exited with {self.proc.exitcode}")

    def fail(self, why: str) -> None:
        self.close()
        output = "\n".join(self.lines[-30:])
        errors = self.log.read_text(errors="replace")[-4000:]
        pytest.fail(f"child {self.args} {why}\n--- stdout ---\n{output}\n--- stderr ---\n{errors}")

    def close(self) -> None:
        if self.proc.exitcode is None:
            os.kill(self.pid, signal.SIGKILL)
            self.proc.join(timeout=10)
        self._reader.join(timeout=10)
        self._stdout.close()
        self.proc.close()


def query(effects_db: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(effects_db, timeout=30)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def count_effects(effects_db: Path) -> int:
    try:
        return int(query(effects_db, "SELECT count(*) FROM effects")[0][0])
    except sqlite3.OperationalError:  # the child has not created the table yet
        return 0


@dataclass(frozen=True)
class StoreView:
    status: str
    events: list[Event]
    checkpointed_steps: list[str]


def look_at_store(url: str, journey_id: str, instance_id: str) -> StoreView:
    """What a fresh process finds in the store: the instance's status, its event log and its checkpoint."""

    async def look() -> StoreView:
        async with JourneyRuntime.open(url, default_agents=False) as runtime:
            instance = await runtime.store.index.get_instance(instance_id)
            design = await runtime.store.index.get_design(journey_id)
            assert instance is not None and design is not None
            graph = runtime.graph_for("structured", StructuredSpec.model_validate(design.spec))
            snapshot = await graph.aget_state({"configurable": {"thread_id": instance_id}})
            # Where the checkpoint stands: every step before the one it waits on or would run next (none
            # when there is no checkpoint yet).
            at = position(snapshot)
            completed = STEPS[: STEPS.index(at)] if at is not None else list(STEPS) if snapshot.created_at else []
            return StoreView(instance.status, await runtime.history(instance_id), completed)

    return asyncio.run(look())


@pytest.mark.parametrize("crash", list(CRASHES.values()), ids=list(CRASHES))
def test_journey_survives_sigkill(durable_url: str, crash: Crash, tmp_path: Path) -> None:
    deadline = Deadline(CASE_BUDGET_S)
    effects_db = tmp_path / "external_service.db"
    start_args = [durable_url, str(effects_db), "start", crash.mode, *([crash.hold] if crash.hold else [])]

    # 1. Start the journey in a child and SIGKILL it mid-journey.
    first = Child(start_args, tmp_path / "start.stderr")
    try:
        _, journey_id, instance_id = first.wait_for_line("JOURNEY ", deadline).split()
        if crash.kill_after_effects is not None:
            first.wait_for_effects(effects_db, crash.kill_after_effects, deadline)
        elif crash.kill_after_advanced is not None:
            first.wait_for_line(f"ADVANCED {crash.kill_after_advanced}", deadline)
        else:
            first.wait_for_line("HOLD ", deadline)
        first.kill()
        first.drain(deadline)
    finally:
        first.close()
    acknowledged = [int(line.split()[1]) for line in first.lines if line.startswith("ADVANCED ")]
    # It really died mid-journey: some but not all side effects happened, and nothing it printed says finished.
    effects_at_kill = count_effects(effects_db)
    assert 0 < effects_at_kill < len(STEPS) or crash.hold == "event:8", effects_at_kill
    assert not any(line.startswith("STATUS ") for line in first.lines)
    invoked_at_kill = [key for (key,) in query(effects_db, "SELECT key FROM invocations ORDER BY id")]
    before = look_at_store(durable_url, journey_id, instance_id)
    logged_before = {e.key for e in before.events if e.type == "step.completed"}

    # 2. A fresh process recovers the journey and finishes it.
    second = Child([durable_url, str(effects_db), "resume", journey_id], tmp_path / "resume.stderr")
    try:
        second.finish(deadline)
    finally:
        second.close()
    recovered = _value(second.lines, "RECOVERED ")
    final = _value(second.lines, "STATUS ")
    assert final["status"] == "completed", second.lines
    assert final["completed_steps"] == STEPS
    if crash.recovers is not None:
        assert recovered == ([instance_id] if crash.recovers else []), second.lines

    # Each step's work had one idempotency key, whichever process ran it: a replay reuses the key.
    invoked = [key for (key,) in query(effects_db, "SELECT key FROM invocations ORDER BY id")]
    keys_of = [sorted({k for k in invoked if k.startswith(f"{instance_id}:{step}:")}) for step in STEPS]
    assert all(len(found) == 1 for found in keys_of), keys_of
    keys = [found[0] for found in keys_of]

    # What the killed process left: the checkpoint is never ahead of the event log, and every
    # acknowledged advance is in both.
    assert len(logged_before) < len(STEPS) or crash.hold == "event:8"
    assert {keys[STEPS.index(s)] for s in before.checkpointed_steps} <= logged_before
    assert STEPS[: len(acknowledged)] == before.checkpointed_steps[: len(acknowledged)]
    if crash.hold:  # the kill landed exactly where it was meant to
        point, held = crash.hold.split("+")[0].split(":")
        held_key = keys[int(held) - 1]
        assert invoked_at_kill[-1] == held_key
        assert (held_key in logged_before) == (point == "event")
        assert STEPS[int(held) - 1] not in before.checkpointed_steps

    # 3. Every step's side effect exists exactly once.
    assert sorted(key for (key,) in query(effects_db, "SELECT key FROM effects")) == sorted(keys)

    # 4. Invoked exactly once, except at most the one call the kill landed in before its event was written.
    invocations = query(effects_db, "SELECT key, pid FROM invocations ORDER BY id")
    counts = Counter(key for key, _ in invocations)
    assert set(counts) == set(keys)
    for key in logged_before:
        assert counts[key] == 1, f"{key} ran again although its completion event was written before the kill"
    repeated = {key for key, n in counts.items() if n > 1}
    assert len(repeated) <= 1, counts
    for key in repeated:
        assert counts[key] == 2, counts
        assert key == invoked_at_kill[-1], f"{key} was not the call in flight at the kill ({invoked_at_kill[-1]})"
        assert key not in logged_before
        pids = [pid for k, pid in invocations if k == key]
        assert pids == [first.pid, second.pid]
    if crash.repeated is not None:
        assert repeated == {keys[STEPS.index(step)] for step in crash.repeated}
    # Nothing acknowledged before the kill was done again by the fresh process.
    assert all(pid == first.pid for key, pid in invocations if key in logged_before)

    # 5. The event log: one step.completed per step, in order, seq strictly increasing, and the
    #    events written before the kill untouched.
    after = look_at_store(durable_url, journey_id, instance_id)
    assert after.status == "completed"
    assert after.checkpointed_steps == STEPS
    completed = [e for e in after.events if e.type == "step.completed"]
    assert [e.step for e in completed] == STEPS
    assert [e.key for e in completed] == keys
    seqs = [e.seq for e in after.events]
    assert all(a < b for a, b in itertools.pairwise(seqs)), seqs
    assert [e.type for e in after.events].count("journey.started") == 1
    assert [(e.seq, e.type, e.key) for e in after.events[: len(before.events)]] == [
        (e.seq, e.type, e.key) for e in before.events
    ]


def _value(lines: list[str], prefix: str) -> Any:
    found = [line.removeprefix(prefix) for line in lines if line.startswith(prefix)]
    assert len(found) == 1, lines
    return json.loads(found[0])


@pytest.mark.parametrize("durability", ["async", "exit"])
def test_a_retried_compensation_survives_sigkill(durable_url: str, durability: str, tmp_path: Path) -> None:
    """A saga's compensation failed for good; its retry is SIGKILLed between two compensations (just after
    the second one's side effect). A fresh process finishes the compensation: every undo takes effect
    once, and only the one call the kill landed in is made twice, with the same idempotency key."""
    deadline = Deadline(CASE_BUDGET_S)
    effects_db = tmp_path / "external_service.db"
    first = Child([durable_url, str(effects_db), "saga-start", durability], tmp_path / "start.stderr")
    try:
        _, saga_id = first.wait_for_line("SAGA ", deadline).split()
        stopped = json.loads(first.wait_for_line("FAILED ", deadline).removeprefix("FAILED "))
        assert (stopped["status"], stopped["compensated_steps"]) == ("failed", [])
        assert stopped["compensation_failure"]["handler"] == "revert_transformation"
        first.kill_when_held(deadline)
    finally:
        first.close()
    assert not any(line.startswith("STATUS ") for line in first.lines)
    invoked_at_kill = [key for (key,) in query(effects_db, "SELECT key FROM invocations ORDER BY id")]
    assert len(invoked_at_kill) == 2  # revert_transformation, then revert_analysis: held just after its effect

    # The retry checkpointed the compensation as pending before running it: recover() finishes it.
    second, events, keys = _resume_compensation(durable_url, saga_id, durability, effects_db, deadline)
    invocations = query(effects_db, "SELECT key, pid FROM invocations ORDER BY id")
    assert [key for key, _ in invocations] == [keys[0], keys[1], keys[1], keys[2]]
    assert [pid for _, pid in invocations] == [first.pid, first.pid, second.pid, second.pid]
    undos = [(e.type, e.step) for e in events if e.type.startswith(("compensation.", "saga.", "instance."))]
    assert undos == [
        ("saga.compensating", "validate_results"),
        ("instance.failed", "transform_data"),
        ("compensation.retried", "transform_data"),
        *[("compensation.completed", step) for step in UNDONE],
        ("saga.compensated", None),
    ]
    assert all(a < b for a, b in itertools.pairwise(e.seq for e in events))


UNDONE = ["transform_data", "analyze_content", "upload_content"]  # the saga's compensation, in order


def _resume_compensation(
    url: str, saga_id: str, durability: str, effects_db: Path, deadline: Deadline
) -> tuple[Child, list[Event], list[str]]:
    """A fresh process recovers the saga killed mid-compensation: recover() resumes it, it ends compensated,
    and every undo took effect once. Returns the process, the saga's events and the undos' keys in order."""
    second = Child([url, str(effects_db), "saga-resume", saga_id, durability], effects_db.with_name("resume.stderr"))
    try:
        second.finish(deadline)
    finally:
        second.close()
    assert _value(second.lines, "RECOVERED ") == [saga_id]
    final = _value(second.lines, "STATUS ")
    assert (final["status"], final["compensated_steps"], final["compensation_failure"]) == ("compensated", UNDONE, None)
    events = asyncio.run(_history(url, saga_id))
    completed = {e.step: e.key for e in events if e.type == "step.completed"}
    keys = [f"{completed[step]}:compensate" for step in UNDONE]
    assert sorted(key for (key,) in query(effects_db, "SELECT key FROM effects")) == sorted(keys)
    return second, events, keys


async def _history(url: str, instance_id: str) -> list[Event]:
    async with JourneyRuntime.open(url, default_agents=False) as runtime:
        return await runtime.history(instance_id)


def test_a_compensation_survives_sigkill(durable_url: str, tmp_path: Path) -> None:
    """A saga's last step fails and its compensation starts; the run is SIGKILLed just after the second
    undo's completion event commits (before its checkpoint). A fresh process's recover() finishes the
    compensation: every undo takes effect and is invoked exactly once, and the saga is compensated."""
    deadline = Deadline(CASE_BUDGET_S)
    effects_db = tmp_path / "external_service.db"
    first = Child([durable_url, str(effects_db), "saga-compensate"], tmp_path / "start.stderr")
    try:
        _, saga_id = first.wait_for_line("SAGA ", deadline).split()
        first.kill_when_held(deadline)
    finally:
        first.close()
    assert not any(line.startswith("STATUS ") for line in first.lines)
    assert len(query(effects_db, "SELECT key FROM invocations")) == 2  # transform_data's undo, analyze_content's

    second, events, keys = _resume_compensation(durable_url, saga_id, "async", effects_db, deadline)
    invocations = query(effects_db, "SELECT key, pid FROM invocations ORDER BY id")
    assert [key for key, _ in invocations] == keys  # no undo ran twice
    assert [pid for _, pid in invocations] == [first.pid, first.pid, second.pid]
    undos = [(e.type, e.step) for e in events if e.type.startswith(("compensation.", "saga."))]
    assert undos == [
        ("saga.compensating", "validate_results"),
        *[("compensation.completed", step) for step in UNDONE],
        ("saga.compensated", None),
    ]
    assert all(a < b for a, b in itertools.pairwise(e.seq for e in events))


def test_a_units_compensation_survives_sigkill(durable_url: str, tmp_path: Path) -> None:
    """A lifecycle unit of work's last task fails for good and its compensation starts (t2's undo, then t1's); the
    run is SIGKILLed just after t2's undo's completion event commits. A fresh process's recover() finishes the
    unit: t1's undo takes effect, no undo or task is invoked twice, and the unit's run is failed with t1 and t2
    rolled back, as it would have ended without the kill."""
    deadline = Deadline(CASE_BUDGET_S)
    effects_db = tmp_path / "external_service.db"
    first = Child([durable_url, str(effects_db), "unit-compensate"], tmp_path / "start.stderr")
    try:
        _, journey_id = first.wait_for_line("JOURNEY ", deadline).split()
        first.kill_when_held(deadline)
    finally:
        first.close()
    assert not any(line.startswith("STATUS ") for line in first.lines)
    run = f"{journey_id}:u1"
    forward, undos = [f"{run}:t1", f"{run}:t2"], [f"{run}:t2:compensate", f"{run}:t1:compensate"]
    assert [key for (key,) in query(effects_db, "SELECT key FROM invocations ORDER BY id")] == [*forward, undos[0]]

    second = Child([durable_url, str(effects_db), "unit-resume", journey_id], tmp_path / "resume.stderr")
    try:
        second.finish(deadline)
    finally:
        second.close()
    assert _value(second.lines, "RECOVERED ") == [journey_id]
    assert _value(second.lines, "STATE ") == {"stage": "sandbox", "units": {"setup": "failed"}}
    [unit] = _value(second.lines, "UNITS ")
    statuses = {task: entry["status"] for task, entry in unit["tasks"].items()}
    assert (unit["status"], statuses) == ("failed", {"t1": "rolled_back", "t2": "rolled_back", "t3": "failed"})
    invocations = query(effects_db, "SELECT key, pid FROM invocations ORDER BY id")
    assert invocations == [
        (forward[0], first.pid),
        (forward[1], first.pid),
        (undos[0], first.pid),
        (undos[1], second.pid),
    ]


def test_a_units_undo_of_what_an_earlier_run_left_survives_sigkill(durable_url: str, tmp_path: Path) -> None:
    """A unit's first run left t1 done (undo_t1 failed for good); run again, it first undoes that, and the process
    is SIGKILLed just after undo_t1's completion event commits, before the run records it (uow.undone). A fresh
    process's recover() finishes the run: undo_t1 of the first run is not called again, the first run's row shows
    t1 rolled back, and only then does the second run's own work start (t1, t2; t3 fails again and is compensated)."""
    deadline = Deadline(CASE_BUDGET_S)
    effects_db = tmp_path / "external_service.db"
    first = Child([durable_url, str(effects_db), "unit-rerun"], tmp_path / "start.stderr")
    try:
        _, journey_id = first.wait_for_line("JOURNEY ", deadline).split()
        first.kill_when_held(deadline)
    finally:
        first.close()
    assert not any(line.startswith("STATUS ") for line in first.lines)
    run1, run2 = f"{journey_id}:u1", f"{journey_id}:u2"
    before = [f"{run1}:t1", f"{run1}:t2", f"{run1}:t2:compensate", f"{run1}:t1:compensate"]
    assert [key for (key,) in query(effects_db, "SELECT key FROM invocations ORDER BY id")] == before

    second = Child([durable_url, str(effects_db), "unit-resume", journey_id], tmp_path / "resume.stderr")
    try:
        second.finish(deadline)
    finally:
        second.close()
    assert _value(second.lines, "RECOVERED ") == [journey_id]
    runs = _value(second.lines, "UNITS ")
    assert [(r["run_id"], r["status"]) for r in runs] == [(run1, "failed"), (run2, "failed")]
    assert {t: e["status"] for t, e in runs[0]["tasks"].items()} == {
        "t1": "rolled_back",
        "t2": "rolled_back",
        "t3": "failed",
    }
    after = [f"{run2}:t1", f"{run2}:t2", f"{run2}:t2:compensate", f"{run2}:t1:compensate"]
    invocations = query(effects_db, "SELECT key, pid FROM invocations ORDER BY id")
    assert invocations == [*((k, first.pid) for k in before), *((k, second.pid) for k in after)]

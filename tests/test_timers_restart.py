"""Nothing that waits is lost across a process restart: a real-time timer parked by one process is
fired by the scheduler of the next one, never early; user tasks, timers and messages survive a
reopened store; and resolutions a crash kept from their thread are delivered on recovery.
SQLite and Postgres only: an in-memory store does not outlive its process."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from checkpoints.clock import VirtualClock
from checkpoints.process.messages import EVERY_TENANT
from tests.process_support import T0, linear, runtime, user_task, waiting_elements

CHILD = Path(__file__).with_name("timer_child.py")


def run_child(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(CHILD), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def read_line(child: subprocess.Popen[str], prefix: str) -> str:
    assert child.stdout is not None
    for line in child.stdout:
        if line.startswith(prefix):
            return line.strip()
    child.wait(timeout=30)
    raise AssertionError(f"child ended without a {prefix!r} line: {child.stderr.read() if child.stderr else ''}")


def finish(child: subprocess.Popen[str], *, kill: bool = False) -> None:
    if kill:
        child.send_signal(signal.SIGKILL)
    child.communicate(timeout=60)  # drains and closes the pipes


@pytest.mark.slow
def test_a_short_real_timer_parked_by_a_killed_process_fires_in_the_next(durable_url: str) -> None:
    parker = run_child(durable_url, "park", "2")
    try:
        _, instance_id, due = read_line(parker, "PARKED").split()
    finally:
        finish(parker, kill=True)
    firer = run_child(durable_url, "fire", instance_id)
    try:
        started = datetime.fromisoformat(read_line(firer, "STARTED").split()[1])
        result: dict[str, Any] = json.loads(read_line(firer, "FIRED").split(" ", 1)[1])
    finally:
        finish(firer)
    assert result["status"] == "completed" and result["timer_status"] == "fired"
    assert result["events"][-2:] == ["wait.completed", "process.completed"]
    due_at, fired_at = datetime.fromisoformat(due), datetime.fromisoformat(result["fired_at"])
    assert fired_at >= due_at  # never early
    assert fired_at - max(due_at, started) < timedelta(seconds=5)


async def test_waiting_user_tasks_timers_and_messages_survive_a_reopened_store(durable_url: str) -> None:
    clock = VirtualClock(T0)
    spec = {
        "name": "survivor",
        "elements": [
            {"type": "start", "id": "start"},
            {"type": "exclusive_gateway", "id": "kind"},
            user_task("review"),
            {"type": "timer", "id": "cool_off", "timer": {"duration": "P1D"}},
            {"type": "message", "id": "paid", "message": "invoice.paid"},
            {"type": "end", "id": "end"},
        ],
        "flows": [
            "start -> kind",
            {"source": "kind", "target": "review", "when": {"field": "kind", "op": "==", "value": "task"}},
            {"source": "kind", "target": "cool_off", "when": {"field": "kind", "op": "==", "value": "timer"}},
            {"source": "kind", "target": "paid", "default": True},
            "review -> end",
            "cool_off -> end",
            "paid -> end",
        ],
    }
    async with runtime(durable_url, clock) as rt:
        await rt.processes.deploy(spec)
        ids = {
            kind: (await rt.processes.start("survivor", f"k-{kind}", {"kind": kind}))["instance_id"]
            for kind in ("task", "timer", "message")
        }

    async with runtime(durable_url, clock) as rt:  # a new process, as far as the store can tell
        [task] = await rt.processes.inbox.list_tasks(assignee="ana")
        assert task["instance_id"] == ids["task"]
        await rt.processes.inbox.complete(task["task_id"], user="ana", payload={})
        clock.advance(timedelta(days=1))
        assert (await rt.processes.scheduler.run_due()).resumed == 1
        assert (await rt.processes.send_message("invoice.paid", "k-message", {}))["correlated"] == [ids["message"]]
        for instance_id in ids.values():
            assert (await rt.processes.status(instance_id))["status"] == "completed"


async def test_a_resolution_a_crash_kept_from_its_thread_is_delivered_on_recovery(durable_url: str) -> None:
    clock = VirtualClock(T0)
    spec = linear("payment", {"type": "message", "id": "paid", "message": "invoice.paid", "outputs": ["amount"]})
    async with runtime(durable_url, clock) as rt:
        await rt.processes.deploy(spec)
        views = [await rt.processes.start("payment", f"inv-{i}") for i in range(2)]
        for view in views:
            # What send_message does first; the "crash" comes before it resumes the thread.
            [subscription] = await rt.processes.services.messages.waiting(
                "invoice.paid", view["business_key"], EVERY_TENANT
            )
            resolution = {"option": "paid", "kind": "message", "payload": {"amount": 7}}
            messages = rt.processes.services.messages
            won = await rt.processes.services.waits.resolve(
                subscription.wait_id,
                resolution,
                keep_subscription=subscription.subscription_id,
                claims=[messages.consume_subscription_claim(subscription.subscription_id)],
            )
            assert won

    async with runtime(durable_url, clock) as rt:
        for view in views:
            assert waiting_elements(await rt.processes.status(view["instance_id"])) == ["paid"]
        assert sorted(await rt.recover()) == sorted(v["instance_id"] for v in views)
        for view in views:
            done = await rt.processes.status(view["instance_id"])
            assert done["status"] == "completed" and done["variables"]["amount"] == 7
        assert await rt.recover() == []

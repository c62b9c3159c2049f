"""A process that parks an instance on a short real-time timer, and one that fires it after a restart.

    python tests/timer_child.py STORE_URL park SECONDS   # prints PARKED <instance_id> <due_at>, then waits to be killed
    python tests/timer_child.py STORE_URL fire INSTANCE  # runs the scheduler loop until the instance completes

Used by ``test_timers_restart.py``. Output lines the parent reads: ``PARKED …`` and ``FIRED <json>``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from graphs.runtime import JourneyRuntime


def spec(seconds: float) -> dict[str, object]:
    return {
        "name": "short_timer",
        "elements": [
            {"type": "start", "id": "start"},
            {"type": "timer", "id": "wait", "timer": {"duration": f"PT{seconds}S"}},
            {"type": "end", "id": "end"},
        ],
        "flows": ["start -> wait", "wait -> end"],
    }


async def park(url: str, seconds: float) -> None:
    async with JourneyRuntime.open(url) as runtime:
        await runtime.processes.deploy(spec(seconds))
        view = await runtime.processes.start("short_timer", "restart-test")
        [timer] = await runtime.processes.services.timers.find(instance_id=view["instance_id"])
        print("PARKED", view["instance_id"], timer.due_at.isoformat(), flush=True)
        await asyncio.sleep(3600)  # the parent kills this process before the timer is due


async def fire(url: str, instance_id: str) -> None:
    async with JourneyRuntime.open(url) as runtime:
        print("STARTED", runtime.processes.clock.now().isoformat(), flush=True)
        async with runtime.processes.scheduler.running():
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                status = await runtime.processes.status(instance_id)
                if status["status"] != "in_progress":
                    break
                await asyncio.sleep(0.05)
        [timer] = await runtime.processes.services.timers.find(instance_id=instance_id)
        events = await runtime.processes.history(instance_id)
        print(
            "FIRED",
            json.dumps(
                {
                    "status": status["status"],
                    "timer_status": timer.status,
                    "due_at": timer.due_at.isoformat(),
                    "fired_at": timer.fired_at.isoformat() if timer.fired_at else None,
                    "events": [e.type for e in events],
                }
            ),
            flush=True,
        )


def main(argv: list[str]) -> None:
    url, command, argument = argv
    if command == "park":
        asyncio.run(park(url, float(argument)))
    elif command == "fire":
        asyncio.run(fire(url, argument))
    else:
        raise SystemExit(f"unknown command {command!r}; use park or fire")


if __name__ == "__main__":
    main(sys.argv[1:])

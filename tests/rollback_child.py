"""A runtime in a process of its own that runs a lifecycle unit of work, for ``test_lifecycle_rollback_processes.py``.

    python tests/rollback_child.py STORE_URL JOURNEY_ID UOW_ID

Runs the unit ``UOW_ID`` of the journey. Its ``slow`` task prints ``ENTERED`` and waits for a line on
stdin before it answers, so the test can ask for a rollback from another process while the unit runs.
Prints ``RESULT <json>``: the unit's result as ``run_unit_of_work`` returns it.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.protocol import AgentRequest
from agents.registry import AgentRegistry
from graphs.runtime import JourneyRuntime

QUICK_INTENTS = ("fast", "undo_fast", "undo_slow", "after", "last")


def emit(*parts: object) -> None:
    print(*parts, flush=True)


async def slow(_request: AgentRequest) -> dict[str, Any]:
    emit("ENTERED")
    await asyncio.to_thread(sys.stdin.readline)
    return {"ok": True}


async def run(url: str, journey_id: str, uow_id: str) -> None:
    registry = AgentRegistry()
    for intent in QUICK_INTENTS:
        registry.register(intent, lambda _request: {"ok": True}, name=intent)
    registry.register("slow", slow)
    async with JourneyRuntime.open(url, agents=registry) as runtime:
        result = await runtime.lifecycle.run_unit_of_work(journey_id, uow_id)
    emit("RESULT", json.dumps(result, default=str))


if __name__ == "__main__":
    store_url, journey, unit = sys.argv[1:]
    asyncio.run(run(store_url, journey, unit))

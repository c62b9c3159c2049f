"""An agent for the lock-loss tests, registered in the API and in every worker (``--plugin``).

``slow`` notes its start, waits ``$JOURNEYS_SLOW_S`` seconds without blocking its loop (a model call, as a
worker sees one), then notes its end: each line ``<start|done> <step> <pid>`` in the file
``$JOURNEYS_CALLS``, shared by the processes. A call stopped in its wait notes no end.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from agents import AgentRegistry, AgentRequest


def _note(what: str, step: str | None) -> None:
    with open(os.environ["JOURNEYS_CALLS"], "a") as calls:
        calls.write(f"{what} {step} {os.getpid()}\n")


async def slow(request: AgentRequest) -> dict[str, Any]:
    _note("start", request.step)
    await asyncio.sleep(float(os.environ.get("JOURNEYS_SLOW_S", "2")))
    _note("done", request.step)
    return {"done": request.step}


def register(registry: AgentRegistry) -> None:
    registry.register("slow", slow, replace=True)

"""An agent for the lock-loss tests, registered in the API and in every worker (``--plugin``).

``slow`` notes its start, waits ``$JOURNEYS_SLOW_S`` seconds without blocking its loop (a model call, as a
worker sees one), then notes its end: each line ``<start|done> <step> <pid>`` in the file
``$JOURNEYS_CALLS``, shared by the processes. A call stopped in its wait notes no end.

With ``$JOURNEYS_DROP_FIRST_CANCEL`` set, the process's first call loses the first cancel that lands in its wait,
as Python 3.11's ``asyncio.wait_for`` loses one that lands as its wait completes (psycopg_pool's wait for a pooled
connection uses it), and waits again: its task goes on as if nobody had cancelled it.
"""

from __future__ import annotations

import asyncio
import os
from contextlib import suppress
from typing import Any

from agents import AgentRegistry, AgentRequest


def _note(what: str, step: str | None) -> None:
    with open(os.environ["JOURNEYS_CALLS"], "a") as calls:
        calls.write(f"{what} {step} {os.getpid()}\n")


_DROPPED: list[str] = []  # the steps whose call lost a cancel (one per process at most)


async def slow(request: AgentRequest) -> dict[str, Any]:
    _note("start", request.step)
    wait = float(os.environ.get("JOURNEYS_SLOW_S", "2"))
    if os.environ.get("JOURNEYS_DROP_FIRST_CANCEL") and not _DROPPED:
        _DROPPED.append(str(request.step))
        with suppress(asyncio.CancelledError):  # lost, as wait_for loses it
            await asyncio.sleep(wait)
    await asyncio.sleep(wait)
    _note("done", request.step)
    return {"done": request.step}


def register(registry: AgentRegistry) -> None:
    registry.register("slow", slow, replace=True)

"""Agents for the crash test, registered in the API and in every worker (``--plugin``).

``side_effect`` stands for a call with an external effect: it counts its calls per idempotency key in
a table of its own, so the test can tell whether any step's effect happened twice, and records the process
that made each last (a test kills a worker once it is executing steps).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from agents import AgentRegistry, AgentRequest

COUNTER_TABLE = "crash_side_effects"


def ensure_counter(conninfo: str) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {COUNTER_TABLE} (key text PRIMARY KEY, calls int NOT NULL, pid int NOT NULL)"
        )


_POOL: AsyncConnectionPool | None = None


async def side_effect(request: AgentRequest) -> dict[str, Any]:
    global _POOL
    if _POOL is None:
        _POOL = AsyncConnectionPool(
            os.environ["JOURNEYS_CRASH_DB"], min_size=1, max_size=8, kwargs={"autocommit": True}, open=False
        )
        await _POOL.open()
    await asyncio.sleep(float(os.environ.get("JOURNEYS_CRASH_STEP_SECONDS", "0.003")))  # so kills land mid-run
    async with _POOL.connection() as conn:
        await conn.execute(
            f"INSERT INTO {COUNTER_TABLE} (key, calls, pid) VALUES (%s, 1, %s) "
            f"ON CONFLICT (key) DO UPDATE SET calls = {COUNTER_TABLE}.calls + 1, pid = excluded.pid",
            (request.idempotency_key, os.getpid()),
        )
    return {"done": request.step}


def register(registry: AgentRegistry) -> None:
    registry.register("side_effect", side_effect, replace=True)


EIGHT_STEPS = {
    "journey_type": "eight_steps",
    "steps": [{"step_id": f"step_{i}", "mode": "auto", "agent": "side_effect"} for i in range(8)],
}

# A human approval first, then seven steps with effects: the runs SIGKILLed are resumes.
APPROVED_SEVEN = {
    "journey_type": "approved_seven",
    "steps": [{"step_id": "approve"}]
    + [{"step_id": f"step_{i}", "mode": "auto", "agent": "side_effect"} for i in range(7)],
}

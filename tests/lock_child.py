"""A runtime in a process of its own that advances journeys, for ``test_instance_locks.py``.

    python tests/lock_child.py STORE_URL EFFECTS_DB hammer TAG JOURNEY_ID USERS ADVANCES LOCK_TIMEOUT
    python tests/lock_child.py STORE_URL EFFECTS_DB hold JOURNEY_ID USER

Every step's agent appends its request's idempotency key to ``calls`` in the SQLite file EFFECTS_DB
(not the journey store) and takes a little while.

``hammer`` prints ``READY`` once the runtime is open, waits for a line on stdin, then advances the
journey of every user in USERS (comma-separated) ADVANCES times, all users at once, each advance with
the result ``{"who": "<TAG>-<user>-<n>"}``, waiting at most LOCK_TIMEOUT seconds for a journey the
other process is changing. It prints ``ACK <who> <completed_step>`` for each
acknowledged advance and ``REFUSED <who> <error code>`` for each refused with a typed error; anything
else is a crash of the child.

``hold`` advances USER's journey with an agent that prints ``HOLD`` and then never returns, so the
child holds the journey's lock until it is killed.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.protocol import AgentRequest
from agents.registry import AgentRegistry
from checkpoints.errors import JourneyError
from graphs.runtime import JourneyRuntime

INTENT = "locks.step"
AGENT_LATENCY_S = 0.01
HOLD_S = 3600.0


def emit(*parts: object) -> None:
    print(*parts, flush=True)


def recording_agent(effects_db: str, latency: float) -> Any:
    async def step(request: AgentRequest) -> dict[str, Any]:
        conn = sqlite3.connect(effects_db, timeout=30)
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS calls (id INTEGER PRIMARY KEY, key TEXT NOT NULL)")
            conn.execute("INSERT INTO calls (key) VALUES (?)", (request.idempotency_key,))
            conn.commit()
        finally:
            conn.close()
        await asyncio.sleep(latency)
        return {"step": request.step}

    return step


async def hammer(
    url: str, effects_db: str, tag: str, journey_id: str, users: list[str], advances: int, lock_timeout: float
) -> None:
    registry = AgentRegistry()
    registry.register(INTENT, recording_agent(effects_db, AGENT_LATENCY_S))
    async with JourneyRuntime.open(url, agents=registry, default_agents=False, lock_timeout=lock_timeout) as runtime:
        emit("READY")
        await asyncio.to_thread(sys.stdin.readline)

        async def advance_all(user: str) -> None:
            for n in range(advances):
                who = f"{tag}-{user}-{n}"
                try:
                    view = await runtime.structured.advance_journey_step(journey_id, user, {"who": who})
                except JourneyError as refused:
                    emit("REFUSED", who, refused.code)
                else:
                    emit("ACK", who, view["completed_step"])

        await asyncio.gather(*(advance_all(user) for user in users))


async def hold(url: str, effects_db: str, journey_id: str, user: str) -> None:
    async def never_returns(request: AgentRequest) -> dict[str, Any]:
        emit("HOLD", request.step)
        await asyncio.sleep(HOLD_S)
        return {}

    registry = AgentRegistry()
    registry.register(INTENT, never_returns)
    async with JourneyRuntime.open(url, agents=registry, default_agents=False) as runtime:
        await runtime.structured.advance_journey_step(journey_id, user, {"who": "held"})


def main(argv: list[str]) -> None:
    url, effects_db, command, *rest = argv
    if command == "hammer":
        tag, journey_id, users, advances, lock_timeout = rest
        asyncio.run(hammer(url, effects_db, tag, journey_id, users.split(","), int(advances), float(lock_timeout)))
    elif command == "hold":
        journey_id, user = rest
        asyncio.run(hold(url, effects_db, journey_id, user))
    else:
        raise SystemExit(f"unknown command {command!r}; use hammer or hold")


if __name__ == "__main__":
    main(sys.argv[1:])

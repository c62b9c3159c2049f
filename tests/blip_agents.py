"""Agents for the database-blip tests, registered in the API and in every worker (``--plugin``).

``blip``, the first time it is called, has the database end the connection of the run's next write to the
event log while that write is in flight (a restart or a failover as a run sees it, the database answering
again at once): it locks the event log, waits for the write to queue behind the lock, ends that backend, and
lets the lock go. Later calls only answer. ``$JOURNEYS_BLIP_MARK`` names the file that says it was called
before (shared by the processes); ``$JOURNEYS_BLIP_DB`` the database.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

from agents import AgentRegistry, AgentRequest

_WAITING_WRITE = (
    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
    "AND wait_event_type = 'Lock' AND query ILIKE '%journey_instances%'"
)


def _end_the_next_write(database: str, locked: threading.Event) -> None:
    with psycopg.connect(database) as holder, psycopg.connect(database, autocommit=True) as admin:
        holder.execute("LOCK TABLE journey_instances IN EXCLUSIVE MODE")  # held until the rollback below
        locked.set()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            waiting = admin.execute(_WAITING_WRITE).fetchall()
            if waiting:
                admin.execute("SELECT pg_terminate_backend(%s)", (waiting[0][0],))
                break
            time.sleep(0.01)
        holder.rollback()


def blip(request: AgentRequest) -> dict[str, Any]:
    mark = Path(os.environ["JOURNEYS_BLIP_MARK"])
    if not mark.exists():
        mark.write_text(str(request.step))
        locked = threading.Event()
        threading.Thread(target=_end_the_next_write, args=(os.environ["JOURNEYS_BLIP_DB"], locked)).start()
        locked.wait(10)
    return {"done": request.step}


def register(registry: AgentRegistry) -> None:
    registry.register("blip", blip, replace=True)

"""``journeys serve --lock-timeout``: how long a request waits for a journey another call works on (a real server
process, its run's step stuck in a slow agent), on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from langgraph_sdk import get_client

from tests.server_support import journeys_serve
from tests.test_worker_shutdown import SLOW, steps_started

pytestmark = pytest.mark.slow
SHIPPING = {
    "name": "shipping",
    "elements": [
        {"type": "start", "id": "start"},
        {"type": "service_task", "id": "ship", "agent": "slow", "outputs": ["done"]},
        {"type": "end", "id": "end"},
    ],
    "flows": ["start -> ship", "ship -> end"],
}


async def test_a_request_waits_for_a_busy_journey_as_long_as_serve_is_told(durable_url: str, tmp_path: Path) -> None:
    """A request for a journey a run was moving (a step's agent call of minutes) waited 30 s before its 409: the
    worker had ``--lock-timeout`` and ``$JOURNEYS_LOCK_TIMEOUT_S``, ``journeys serve`` neither (usage error). It
    now waits the seconds it is given, then answers 409 ConcurrentUpdateError."""
    calls = tmp_path / "calls"
    env = {"JOURNEYS_CALLS": str(calls), "JOURNEYS_SLOW_S": "600"}
    with journeys_serve(
        durable_url, tmp_path / "serve.log", "--no-auth", *SLOW, "--lock-timeout", "1", env=env
    ) as base:
        async with get_client(url=base, api_key=None) as client:
            async with httpx.AsyncClient(base_url=base, timeout=30) as http:
                assert (await http.post("/processes", json=SHIPPING)).status_code == 200
            thread = await client.threads.create()
            await client.runs.create(
                thread["thread_id"], "process", input={"process": "shipping", "business_key": "o1"}
            )
            await steps_started(calls, 1)
        async with httpx.AsyncClient(base_url=base, timeout=60) as http:
            began = time.monotonic()
            # A change the run's lock holds off (a terminate would stop the run instead: it does not wait).
            answer = await http.post(
                f"/processes/instances/{thread['thread_id']}/variables", json={"variables": {"note": "stuck"}}
            )
            waited = time.monotonic() - began
    assert answer.status_code == 409, answer.text
    assert "ConcurrentUpdate" in answer.text, answer.text
    assert waited < 10, waited  # 1 s and the box's load, not 30

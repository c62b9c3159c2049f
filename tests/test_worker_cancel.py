"""Cancelling a run a ``journeys worker`` process executes (langgraph-sdk over real HTTP, real worker processes on
PostgreSQL), when the cancel is lost on its way to the run's task."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from langgraph_sdk import get_client

from tests.test_worker_shutdown import calls_of, distributed, run_row, wait_for_call

pytestmark = pytest.mark.slow
TWO_STEPS = {
    "journey_type": "slow2",
    "steps": [
        {"step_id": "s0", "mode": "auto", "agent": "slow"},
        {"step_id": "s1", "mode": "auto", "agent": "slow"},
    ],
}


async def test_a_cancelled_run_stops_though_its_job_lost_the_first_cancel(postgres_url: str, tmp_path: Path) -> None:
    """procrastinate cancels a cancelled run's job task once; a cancel lost on its way (Python 3.11's
    ``asyncio.wait_for``, which psycopg_pool's wait for a connection uses, drops one landing as its wait
    completes) left the run going on to its end: its step finished, the next one ran, and the run ended "success"
    though its cancel was asked for and answered. The worker now cancels the job again while the run has not
    taken the cancel."""
    with distributed(postgres_url, tmp_path) as (base, workers):
        worker = workers.start("a", JOURNEYS_SLOW_S="10", JOURNEYS_DROP_FIRST_CANCEL="1")
        async with get_client(url=base, api_key=None) as client:
            thread = await client.threads.create()
            start = {"journey_type": "slow2", "spec": TWO_STEPS, "user_id": "ana"}
            run = await client.runs.create(thread["thread_id"], "structured", input=start)
            wait_for_call(workers.calls, ("start", "s0", worker.pid))
            await client.runs.cancel(thread["thread_id"], run["run_id"])
            deadline = time.monotonic() + 20
            while (status := run_row(postgres_url, run["run_id"])[0]) in ("pending", "running"):
                assert time.monotonic() < deadline, f"still {status} 20 s after its cancel"
                await asyncio.sleep(0.1)
            await asyncio.sleep(6)  # past the end of the step's second wait (10 s), had it gone on
    assert status == "interrupted", workers.log("a").read_text()[-4000:]
    assert calls_of(workers.calls) == [("start", "s0", worker.pid)]  # s0 stopped, s1 never started

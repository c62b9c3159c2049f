"""Terminating a journey a run is moving (Temporal's terminate, DBOS's cancel): the run is stopped at once, in
the process executing it, its step in flight with it; no later step runs; the run ends ``interrupted`` and the
journey ``terminated``. Through the API and ``journeys instances terminate`` with real processes (an API in
distributed mode, a ``journeys worker``, PostgreSQL), and through a server executing its runs itself (embedded,
SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from langgraph_sdk import get_client
from langgraph_sdk.client import LangGraphClient

from server.app import create_app
from server.plugins import plugin_registry
from server.settings import Settings
from tests.forked import run_journeys
from tests.server_support import serving
from tests.test_worker_shutdown import SLOW, calls_of, distributed, steps_started, wait_for_call

pytestmark = pytest.mark.slow

# Every step's agent waits 600 s: the first blocks until the run is stopped, and a later one would be noted.
SPEC = {
    "journey_type": "four_steps",
    "steps": [{"step_id": step, "mode": "auto", "agent": "slow"} for step in ("a", "b", "c", "d")],
}


async def moving(client: LangGraphClient, user: str) -> tuple[str, str, str]:
    """A journey of ``SPEC`` whose run has started: its thread, its run and its instance id."""
    thread = (await client.threads.create())["thread_id"]
    start = {"journey_type": "four_steps", "spec": SPEC, "user_id": user}
    run = (await client.runs.create(thread, "structured", input=start))["run_id"]
    deadline = time.monotonic() + 60
    while (instance := (await client.threads.get(thread))["metadata"].get("instance_id")) is None:
        assert time.monotonic() < deadline, "the run did not start its journey"
        await asyncio.sleep(0.05)
    return thread, run, str(instance)


async def ended_as(client: LangGraphClient, thread: str, run: str) -> str:
    """How the run ended, once it has."""
    await client.runs.join(thread, run)
    ended: dict[str, Any] = dict(await client.runs.get(thread, run))
    return str(ended["status"])


async def terminated_over_http(base: str, client: LangGraphClient, thread: str, run: str, instance: str) -> None:
    """POST /journeys/{instance}/terminate of a journey whose run is in a step: it answers at once (the run's stop
    and the box's load, not the lock's 30 s), the journey terminated, and the run has ended interrupted."""
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        began = time.monotonic()
        answer = await http.post(f"/journeys/{instance}/terminate", json={"reason": "stuck"})
        waited = time.monotonic() - began
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "terminated", answer.json()
    assert waited < 10, waited
    assert await ended_as(client, thread, run) == "interrupted"


async def terminated_by_the_cli(url: str, client: LangGraphClient, thread: str, run: str, instance: str) -> None:
    """``journeys instances terminate`` of a journey whose run is in a step, from a process of its own: it answers
    within seconds (a process's start, the run's stop: not the lock's 30 s), terminated, the run interrupted."""
    began = time.monotonic()
    args = ["instances", "terminate", instance, "--reason", "stuck", "--database-url", url]
    ran = await asyncio.to_thread(run_journeys, args)
    waited = time.monotonic() - began
    assert ran.returncode == 0, (ran.stdout, ran.stderr)
    assert json.loads(ran.stdout)["status"] == "terminated", ran.stdout
    assert waited < 20, waited
    assert await ended_as(client, thread, run) == "interrupted"


async def test_a_journey_terminated_while_a_worker_runs_its_step_is_stopped_at_once(
    postgres_url: str, tmp_path: Path
) -> None:
    """A terminate of a journey whose run was in a step of minutes waited for the journey's lock (30 s) and
    answered 409 "busy", and could not succeed while the run went on (with a shorter step, the run finished its
    later steps first, then the terminate said it had ended). It now cancels the run first, wherever it runs."""
    with distributed(postgres_url, tmp_path) as (base, workers):
        worker = workers.start("a", JOURNEYS_SLOW_S="600")
        async with get_client(url=base, api_key=None) as client:
            thread, run, instance = await moving(client, "ana")
            wait_for_call(workers.calls, ("start", "a", worker.pid))
            await terminated_over_http(base, client, thread, run, instance)

            # The operator's command: it reaches the worker through the database, as the API does.
            thread, run, instance = await moving(client, "ben")
            await steps_started(workers.calls, 2)
            await terminated_by_the_cli(postgres_url, client, thread, run, instance)
    # Each run's step a was stopped in flight (no "done"), and no step after it started.
    assert [(what, step) for what, step, _pid in calls_of(workers.calls)] == [("start", "a"), ("start", "a")]


async def test_a_journey_an_embedded_server_runs_is_terminated_mid_step(
    durable_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same through a server that executes its runs itself (embedded): its run is cancelled in-process. The
    operator's command, another process with no queue to the server, waited for the run's lock (30 s) and failed
    "busy"; it records the cancel, which the server sees within a second and stops the run as its own cancel does."""
    calls = tmp_path / "calls"
    monkeypatch.setenv("JOURNEYS_CALLS", str(calls))  # the slow agent runs in this process
    monkeypatch.setenv("JOURNEYS_SLOW_S", "600")
    settings = Settings(database_url=durable_url, auth=False)
    with serving(create_app(settings, runtime_options={"agents": plugin_registry(SLOW[1])})) as base:
        async with get_client(url=base, api_key=None) as client:
            thread, run, instance = await moving(client, "ana")
            await steps_started(calls, 1)
            await terminated_over_http(base, client, thread, run, instance)

            thread, run, instance = await moving(client, "ben")
            await steps_started(calls, 2)
            await terminated_by_the_cli(durable_url, client, thread, run, instance)
    assert [(what, step) for what, step, _pid in calls_of(calls)] == [("start", "a"), ("start", "a")]


async def test_a_delayed_run_an_embedded_server_holds_ends_at_once_when_the_cli_terminates_its_journey(
    durable_url: str,
) -> None:
    """A run waiting for its ``after_seconds`` in an embedded server, its journey terminated by ``journeys instances
    terminate`` (another process): it stayed ``pending`` until it was due (ten minutes here), as no queue reaches
    the server from the command; the distributed path withdraws such a run from its queue at once. It now ends
    ``interrupted`` as the command answers, and nothing of it runs."""
    with serving(create_app(Settings(database_url=durable_url, auth=False))) as base:
        async with get_client(url=base, api_key=None) as client:
            thread = (await client.threads.create())["thread_id"]
            await client.runs.wait(thread, "structured", input={"journey_type": "content_migration", "user_id": "ana"})
            instance = str((await client.threads.get(thread))["metadata"]["instance_id"])
            resume = {"resume": {"files_uploaded": 1}}
            delayed = (await client.runs.create(thread, "structured", command=resume, after_seconds=600))["run_id"]
            assert (await client.runs.get(thread, delayed))["status"] == "pending"
            args = ["instances", "terminate", instance, "--reason", "stuck", "--database-url", durable_url]
            ran = await asyncio.to_thread(run_journeys, args)
            assert ran.returncode == 0, (ran.stdout, ran.stderr)
            assert json.loads(ran.stdout)["status"] == "terminated", ran.stdout
            assert (await client.runs.get(thread, delayed))["status"] == "interrupted"
            status = await client.http.get(f"/journeys/{instance}/status")
            assert status["completed_steps"] == [], status  # nothing of the delayed run ran

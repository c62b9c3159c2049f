"""In distributed mode the workers hold the agents (`journeys serve --distributed` may import none of them): a
process started, a task completed or a message sent over the API has its service tasks run by a worker, as a run
is, not inside the request. Real `journeys serve` (without the plugin) and `journeys worker` (with it) processes
on PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from graphs import JourneyRuntime
from tests.forked import journeys, run_journeys
from tests.process_support import linear, user_task
from tests.server_support import journeys_serve, stop_worker, workers_up
from tests.test_cli_run_on import left_mid_step

pytestmark = pytest.mark.slow

# The agents, in the workers only: each says which process did its work.
PLUGIN = """
import os

def register(registry):
    registry.register("drafter", lambda request: {"drafted_by": os.getpid()})
    registry.register("publisher", lambda request: {"published_by": os.getpid()})
    registry.register("preparer", lambda request: {"prepared": True})
"""

SPEC = linear(
    "handoff",
    {"type": "service_task", "id": "draft", "agent": "drafter", "outputs": ["drafted_by"]},
    user_task("approve"),
    {"type": "message", "id": "paid", "message": "invoice.paid", "correlation": "business_key"},
    {"type": "service_task", "id": "publish", "agent": "publisher", "outputs": ["published_by"]},
)


@contextmanager
def api_and_worker(url: str, where: Path) -> Iterator[tuple[str, int]]:
    """A distributed `journeys serve` without the agents' plugin (its base URL) and a `journeys worker` with it
    (its pid)."""
    (where / "handoff_agents.py").write_text(PLUGIN)
    worker = journeys(
        ["worker", "--database-url", url, "--plugin", "handoff_agents:register"], cwd=where, output=where / "worker.log"
    )
    try:
        with journeys_serve(url, where / "api.log", "--distributed", "--no-auth") as base:
            yield base, worker.pid
    finally:
        stop_worker(worker)


async def until(http: httpx.AsyncClient, instance_id: str, done: Any, seconds: float = 60) -> dict[str, Any]:
    """The instance's status once ``done(status)`` holds (within ``seconds``)."""
    deadline = time.monotonic() + seconds
    while True:
        view: dict[str, Any] = (await http.get(f"/processes/instances/{instance_id}")).json()
        if done(view):
            return view
        assert time.monotonic() < deadline, view
        await asyncio.sleep(0.05)


async def test_a_distributed_api_hands_a_process_start_an_answer_and_a_message_to_the_workers(
    postgres_url: str, tmp_path: Path
) -> None:
    """Before: the API ran the instance's service tasks inside `POST /processes/{name}/instances` (and a task's
    completion, and a message), with none of the workers' agents, so the start answered 200 with the instance
    ``failed`` (AgentNotFoundError for ``drafter``). Now each call stores its work and hands it to the workers as
    a run; ``wait=true`` answers once they have run it on."""
    with api_and_worker(postgres_url, tmp_path) as (base, worker_pid):
        await workers_up(postgres_url, 1)
        async with httpx.AsyncClient(base_url=base, timeout=120) as http:
            deployed = await http.post("/processes", json=SPEC)
            assert deployed.status_code == 200, deployed.text
            # At once: the instance as it stands, registered, its first run the workers'.
            started = await http.post("/processes/handoff/instances", json={"business_key": "inv-1"})
            assert started.status_code == 200, started.text
            first = started.json()
            assert first["status"] == "in_progress", first
            instance_id = first["instance_id"]
            view = await until(http, instance_id, lambda v: v["waiting"])
            assert view["status"] == "in_progress" and [w["element"] for w in view["waiting"]] == ["approve"], view
            assert view["variables"]["drafted_by"] == worker_pid, view

            # wait=true: answered once the worker has run it on, as an embedded server answers.
            waited = await http.post("/processes/handoff/instances?wait=true", json={"business_key": "inv-2"})
            assert waited.status_code == 200, waited.text
            assert [w["element"] for w in waited.json()["waiting"]] == ["approve"], waited.json()
            assert waited.json()["variables"]["drafted_by"] == worker_pid

            [task] = (await http.get("/tasks", params={"instance_id": instance_id})).json()
            done = await http.post(f"/tasks/{task['task_id']}/complete?wait=true", json={"user": "ana", "payload": {}})
            assert done.status_code == 200, done.text
            assert [w["element"] for w in done.json()["waiting"]] == ["paid"], done.json()

            sent = await http.post(
                "/messages", json={"name": "invoice.paid", "correlation_key": "inv-1", "payload": {}}
            )
            assert sent.status_code == 200, sent.text
            assert sent.json()["correlated"] == [instance_id], sent.json()
            ended = await until(http, instance_id, lambda v: v["status"] != "in_progress")
            assert ended["status"] == "completed", ended
            assert ended["variables"]["published_by"] == worker_pid, ended
    assert "AgentNotFoundError" not in (tmp_path / "api.log").read_text()


async def test_where_workers_serve_the_database_an_operators_run_on_is_handed_to_them(
    postgres_url: str, tmp_path: Path
) -> None:
    """`journeys instances run-on` from a shell without the agents, and `POST /journeys/{id}/run-on` on a
    distributed API without them, hand the journey left mid-step to the workers, who run it on with theirs."""
    with api_and_worker(postgres_url, tmp_path) as (base, _worker_pid):
        await workers_up(postgres_url, 1)
        shell = tmp_path / "shell"  # the operator's: the agents' module is not importable there
        shell.mkdir()
        stuck = await left_mid_step(postgres_url, "first")
        ran = await asyncio.to_thread(
            run_journeys, ["instances", "run-on", stuck, "--database-url", postgres_url], cwd=shell
        )
        assert ran.returncode == 0, ran.stderr
        assert ran.stderr.startswith("run on by a worker (run "), ran.stderr
        answered = json.loads(ran.stdout)
        assert [w["element"] for w in answered["waiting"]] == ["approve"] and answered["variables"]["prepared"], (
            answered
        )

        other = await left_mid_step(postgres_url, "second")
        async with httpx.AsyncClient(base_url=base, timeout=120) as http:
            handed = await http.post(f"/journeys/{other}/run-on")
            assert handed.status_code == 200 and handed.json()["status"] == "in_progress", handed.text
            view = await until(http, other, lambda v: v["waiting"])
            assert [w["element"] for w in view["waiting"]] == ["approve"] and view["variables"]["prepared"], view


QUEUED = linear(
    "queued_handoff",
    {"type": "service_task", "id": "draft", "agent": "drafter", "outputs": ["drafted_by"]},
    user_task("approve"),
    concurrency={"key": "$.tenant", "limit": 1},
)


async def test_a_queued_instance_a_distributed_api_dispatches_as_it_starts_is_handed_to_the_workers(
    postgres_url: str, tmp_path: Path
) -> None:
    """A starting API's recovery pass also starts the instances queued behind a concurrency limit whose slot has
    freed. Before: a distributed API (without the agents) ran such a process instance's first run itself, so its
    first service task failed it (AgentNotFoundError for ``drafter``). Now its first run is the workers'."""
    async with JourneyRuntime.open(postgres_url) as rt:
        rt.agents.register("drafter", lambda _request: {"drafted_by": 0})
        await rt.processes.deploy(QUEUED)
        first = await rt.processes.start("queued_handoff", "a", {"tenant": "acme"})
        queued = await rt.processes.start("queued_handoff", "b", {"tenant": "acme"})
        assert (first["status"], queued["status"]) == ("in_progress", "queued")
        await rt.terminate(first["instance_id"], "its slot frees; the next scheduler pass or start dispatches b")
        assert (await rt.processes.status(queued["instance_id"]))["status"] == "queued"
    (tmp_path / "handoff_agents.py").write_text(PLUGIN)
    with journeys_serve(postgres_url, tmp_path / "api.log", "--distributed", "--no-auth") as base:
        async with httpx.AsyncClient(base_url=base, timeout=120) as http:
            dispatched = await until(http, queued["instance_id"], lambda v: v["status"] != "queued")
            assert (dispatched["status"], dispatched["waiting"]) == ("in_progress", []), dispatched
            worker = journeys(
                ["worker", "--database-url", postgres_url, "--plugin", "handoff_agents:register"],
                cwd=tmp_path,
                output=tmp_path / "worker.log",
            )
            try:
                view = await until(http, queued["instance_id"], lambda v: v["waiting"] or v["status"] != "in_progress")
                assert [w["element"] for w in view["waiting"]] == ["approve"], view
                assert view["variables"]["drafted_by"] == worker.pid, view
            finally:
                stop_worker(worker)
    assert "AgentNotFoundError" not in (tmp_path / "api.log").read_text()

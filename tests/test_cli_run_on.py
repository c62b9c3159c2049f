"""An operator runs on a journey left `in_progress` with nothing running it (its process killed mid-step):
`journeys instances run-on` (a shell of its own, with a plugin's agents) and `POST /journeys/{id}/run-on`. One that
another process holds is refused, nothing done: it is running there, not stuck. Real processes, on SQLite and
PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx

from agents import AgentRegistry
from graphs import JourneyRuntime
from server.app import create_app
from server.settings import Settings
from tests.forked import run_journeys
from tests.process_support import linear, user_task
from tests.server_support import serving

# The agent, back up in the operator's process: it says it did the step.
PLUGIN = """
def register(registry):
    registry.register("preparer", lambda request: {"prepared": True})
"""
SPEC = linear(
    "stuck",
    {"type": "service_task", "id": "prepare", "agent": "preparer", "outputs": ["prepared"]},
    user_task("approve"),
)


async def left_mid_step(url: str, business_key: str) -> str:
    """A process instance whose process was killed while its service task's agent worked (the start's task cut,
    as a killed process's is): it stands `in_progress`, nothing running it. Its id."""
    working = asyncio.Event()

    async def hangs(request: Any) -> dict[str, Any]:
        working.set()
        await asyncio.Event().wait()  # until the process dies
        return {}

    async with JourneyRuntime.open(url) as rt:
        rt.agents.register("preparer", hangs)
        if business_key == "first":
            await rt.processes.deploy(SPEC)
        start = asyncio.ensure_future(rt.processes.start("stuck", business_key))
        await working.wait()
        [instance] = [i for i in await rt.store.index.list_instances(limit=100) if i.user_id == business_key]
        start.cancel()
        await asyncio.gather(start, return_exceptions=True)
    return instance.instance_id


def journeys(*args: str, cwd: Path) -> tuple[int, str, str]:
    ran = run_journeys(list(args), cwd=cwd)
    return ran.returncode, ran.stdout, ran.stderr


async def test_an_operator_runs_on_a_journey_left_mid_step_and_one_running_elsewhere_is_refused(
    durable_url: str, tmp_path: Path
) -> None:
    """Before: no command moved such an instance (`journeys instances retry` refused it: no failed node; the CLI
    had no `run-on`, exit 2 "No such command"), only a status read over the API did."""
    (tmp_path / "ops_agents.py").write_text(PLUGIN)
    db = ("--database-url", durable_url)
    stuck = await left_mid_step(durable_url, "first")
    async with JourneyRuntime.open(durable_url) as rt:
        assert (await rt.store.index.get_instance(stuck)).status == "in_progress"  # type: ignore[union-attr]
        # Held by another process (a run, a request): refused, nothing done.
        async with rt.engine.exclusive(stuck):
            code, out, err = await asyncio.to_thread(
                journeys, "instances", "run-on", stuck, "--plugin", "ops_agents:register", *db, cwd=tmp_path
            )
        assert code == 2 and "is running elsewhere" in err and "nothing was done" in err, (code, out, err)
        # Nothing done (no status read here: one would run the step on, with no agent in this process).
        assert (await rt.store.index.get_instance(stuck)).status == "in_progress"  # type: ignore[union-attr]
        assert not await rt.processes.inbox.list_tasks(instance_id=stuck)

    code, out, err = journeys("instances", "run-on", stuck, "--plugin", "ops_agents:register", *db, cwd=tmp_path)
    assert code == 0, (out, err)
    answered = json.loads(out)
    assert answered["status"] == "in_progress" and [w["element"] for w in answered["waiting"]] == ["approve"], out
    assert answered["variables"]["prepared"] is True
    assert err.strip() == "run on in this process: no journeys worker serves this database"
    # Run on again: it waits for a person, nothing to do; answered as it stands.
    code, out, err = journeys("instances", "run-on", stuck, *db, cwd=tmp_path)
    assert code == 0 and [w["element"] for w in json.loads(out)["waiting"]] == ["approve"], (out, err)

    # Over HTTP, on a server holding the agent; the instance left mid-step by another process while it serves.
    agents = AgentRegistry()
    agents.register("preparer", lambda request: {"prepared": True})
    with serving(
        create_app(Settings(database_url=durable_url, auth=False), runtime_options={"agents": agents})
    ) as base:
        other = await left_mid_step(durable_url, "second")
        async with httpx.AsyncClient(base_url=base, timeout=60) as http:
            answer = await http.post(f"/journeys/{other}/run-on")
            assert answer.status_code == 200, answer.text
            assert answer.json()["status"] == "in_progress", answer.json()
            view = (await http.get(f"/processes/instances/{other}")).json()
            assert [w["element"] for w in view["waiting"]] == ["approve"], view
            task = (await http.get("/tasks", params={"instance_id": other})).json()[0]
            done = await http.post(f"/tasks/{task['task_id']}/complete", json={"user": "ana", "payload": {}})
            assert done.json()["status"] == "completed", done.text
            ended = await http.post(f"/journeys/{other}/run-on")
            assert ended.status_code == 409 and ended.json()["type"].endswith("JourneyFinishedError"), ended.text

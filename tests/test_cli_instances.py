"""`journeys instances`: an operator lists a live database's journeys, shows one, retries a failed one with the
agents of a plugin and terminates one, from a shell (real processes, on SQLite and PostgreSQL), as DBOS's
`dbos workflow list/get/resume/cancel` and Temporal's `temporal workflow list/describe/reset/terminate` do."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agents import PermanentAgentError
from agents.errors import AgentCallFailedError
from checkpoints import VirtualClock
from graphs import JourneyRuntime
from tests.forked import journeys as journeys_process
from tests.forked import run_journeys
from tests.process_support import linear, user_task
from tests.server_support import stop_worker, workers_up

# The plugin an operator names for the retry: the agent is back up in that process.
PLUGIN = """
def register(registry):
    registry.register("flaky", lambda request: {"drafted": True})
"""


def down(request: Any) -> dict[str, Any]:
    raise PermanentAgentError("the service is [bold]down[/bold]")  # rich markup in a value is shown as it is


def journeys(*args: str, cwd: Path) -> tuple[int, str, str]:
    ran = run_journeys(list(args), cwd=cwd)
    return ran.returncode, ran.stdout, ran.stderr


async def failed_reviews(rt: JourneyRuntime, *users: str) -> tuple[str, list[str]]:
    """A review journey whose first step's agent (``flaky``) is down, and an instance of it per user, failed there."""
    rt.agents.register("flaky", down)
    spec = {"journey_type": "review", "steps": [{"step_id": "draft", "agent": "flaky"}, {"step_id": "approve"}]}
    journey_id = (await rt.structured.design_journey("review", spec=spec))["journey_id"]
    failed = []
    for user in users:
        failed.append((await rt.structured.execute_journey(journey_id, user, {}))["instance_id"])
        with pytest.raises(AgentCallFailedError):
            await rt.structured.advance_journey_step(journey_id, user, {})
    return journey_id, failed


async def test_an_operator_lists_shows_retries_and_terminates_journeys_from_a_shell(
    durable_url: str, tmp_path: Path
) -> None:
    async with JourneyRuntime.open(durable_url) as rt:
        journey_id, [ana] = await failed_reviews(rt, "ana")
        # A user id is anyone's input: this one's terminal escapes would erase the table's row above it.
        ben = (await rt.structured.execute_journey(journey_id, "ben\x1b[2K\x1b[1A", {}))["instance_id"]
        await rt.processes.deploy(
            linear("billing", {"type": "service_task", "id": "charge", "agent": "flaky"}, user_task("ok"))
        )
        billing = await rt.processes.start("billing", "b-1", {})
        assert billing["status"] == "failed"
    (tmp_path / "ops_agents.py").write_text(PLUGIN)
    db = ("--database-url", durable_url)

    code, out, err = journeys("instances", "list", "--status", "failed", "--json", *db, cwd=tmp_path)
    assert code == 0, err
    listed = {row["instance_id"]: row for row in json.loads(out)["instances"]}
    assert json.loads(out)["more"] is False
    assert set(listed) == {ana, billing["instance_id"]}
    assert (listed[ana]["pattern"], listed[ana]["status"], listed[ana]["user_id"]) == ("structured", "failed", "ana")

    code, out, err = journeys("instances", "list", "--limit", "2", *db, cwd=tmp_path)  # the table, newest first
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["instance_id", "pattern", "status"]
    shown_ben = ben.replace("\x1b", "\\x1b")  # its id ends with its user id: shown, not obeyed by the terminal
    assert [line.split()[0] for line in lines[1:-1]] == [billing["instance_id"], shown_ben]
    assert lines[-1].startswith("the newest 2 shown; more match")  # ana's: not read as all there is
    assert "\x1b" not in out and lines[2].split()[3] == "ben\\x1b[2K\\x1b[1A"

    code, out, err = journeys("instances", "show", ana, *db, cwd=tmp_path)
    assert code == 0, err
    assert "the service is [bold]down[/bold]" in out  # the failure as it was recorded, not rendered as markup
    code, out, err = journeys("instances", "show", ana, "--json", "--events", "2", *db, cwd=tmp_path)
    shown = json.loads(out)
    assert (shown["status"], shown["pattern"], shown["journey_id"]) == ("failed", "structured", journey_id)
    assert shown["events"] == 4 and [e["seq"] for e in shown["last_events"]] == [3, 4]
    assert shown["last_events"][-1]["type"] == "instance.failed"

    code, out, err = journeys("instances", "retry", ana, *db, cwd=tmp_path)  # no plugin: the agent is missing here
    assert code == 2 and "no agent is registered for intent 'flaky'" in err, out + err
    assert (await status_of(durable_url, ana)) == "failed"  # tried, and failed again where it stood
    for instance_id in (ana, billing["instance_id"]):
        code, out, err = journeys(
            "instances", "retry", instance_id, "--plugin", "ops_agents:register", "--by", "ops", *db, cwd=tmp_path
        )
        assert code == 0, err
        assert json.loads(out)["status"] == "in_progress"
    async with JourneyRuntime.open(durable_url) as rt:
        assert (await rt.structured.run_status(ana))["current_step"] == "approve"
        retried = [e for e in await rt.history(ana) if e.type == "step.retried"]
        assert [e.payload["by"].split(":")[0] for e in retried] == ["cli", "ops"]  # cli:<login> by default
        assert [w["element"] for w in (await rt.processes.status(billing["instance_id"]))["waiting"]] == ["ok"]

    code, out, err = journeys("instances", "terminate", ben, "--reason", "duplicate request", *db, cwd=tmp_path)
    assert code == 0, err
    assert json.loads(out)["status"] == "terminated"
    for refused in (
        ("instances", "terminate", ben, "--reason", "again"),  # it has ended
        ("instances", "retry", ben),  # so nothing of it runs again
        ("instances", "show", "no-such-journey"),
        ("instances", "list", "--pattern", "no-such-pattern"),
        ("instances", "list", "--status", "faild"),  # a typo, not "no journeys match"
    ):
        code, out, err = journeys(*refused, *db, cwd=tmp_path)
        assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, (refused, out, err)


async def status_of(url: str, instance_id: str) -> str:
    async with JourneyRuntime.open(url) as rt:
        instance = await rt.store.index.get_instance(instance_id)
        assert instance is not None
        return instance.status


async def test_where_workers_serve_the_database_a_retry_is_handed_to_them_and_runs_with_their_agents(
    postgres_url: str, tmp_path: Path
) -> None:
    # As DBOS's `workflow resume` and Temporal's reset hand the work to the workers: the shell has no agents.
    async with JourneyRuntime.open(postgres_url) as rt:
        _journey_id, [ana, ben] = await failed_reviews(rt, "ana", "ben")
    (tmp_path / "ops_agents.py").write_text(PLUGIN)
    shell = tmp_path / "shell"  # where the operator's command runs: ops_agents is not importable there
    shell.mkdir()
    db = ("--database-url", postgres_url)
    worker = journeys_process(
        ["worker", *db, "--plugin", "ops_agents:register"], cwd=tmp_path, output=tmp_path / "worker.log"
    )
    try:
        await workers_up(postgres_url, 1)
        code, out, err = journeys("instances", "retry", ana, "--by", "ops", *db, cwd=shell)
        assert code == 0, err + (tmp_path / "worker.log").read_text()
        assert json.loads(out)["status"] == "in_progress"
        assert err.startswith("retried by a worker (job "), err
        code, out, err = journeys("instances", "retry", ana, *db, cwd=shell)  # the worker refuses: told here
        assert code == 2 and "(retried by a worker, job " in err and len(err.strip().splitlines()) == 1, err
    finally:
        stop_worker(worker)
    async with JourneyRuntime.open(postgres_url) as rt:
        assert (await rt.structured.run_status(ana))["current_step"] == "approve"
        drafted = [e.payload["output"] for e in await rt.history(ana) if e.type == "step.completed"]
        assert drafted == [{"drafted": True}]  # the worker's agent did the step
        assert [e.payload["by"] for e in await rt.history(ana) if e.type == "step.retried"] == ["ops"]

    # No worker serves it now (a stopped one unregisters): the command retries here, with its plugin's agents.
    code, out, err = journeys("instances", "retry", ben, "--plugin", "ops_agents:register", *db, cwd=tmp_path)
    assert code == 0, err
    assert json.loads(out)["status"] == "in_progress"
    assert err.strip() == "retried in this process: no journeys worker serves this database"


async def test_an_instance_that_moved_on_without_changing_status_shows_when_it_last_moved(
    durable_url: str, tmp_path: Path
) -> None:
    """`instances list` called its `updated_at` the journey's last change, and `show` showed it beside the log:
    it is when its status last changed. A process answered two days after its start and waiting at its next task
    (still `in_progress`) showed its start's time, and one stuck mid-step for days looked no different. Each shows
    its last event's time too (`last_event_at`)."""
    start = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    clock = VirtualClock(start)
    async with JourneyRuntime.open(durable_url, clock=clock) as rt:
        await rt.processes.deploy(linear("two_tasks", user_task("first"), user_task("second")))
        moved = (await rt.processes.start("two_tasks", "t-1", {}))["instance_id"]
        idle = (await rt.processes.start("two_tasks", "t-2", {}))["instance_id"]
        clock.advance(timedelta(days=2))
        [task] = await rt.processes.inbox.list_tasks(assignee="ana", instance_id=moved)
        await rt.processes.inbox.complete(task["task_id"], user="ana", payload={})
    db = ("--database-url", durable_url)
    code, out, err = journeys("instances", "list", "--json", *db, cwd=tmp_path)
    assert code == 0, err
    listed = {row["instance_id"]: row for row in json.loads(out)["instances"]}
    assert listed[moved]["status"] == listed[idle]["status"] == "in_progress"
    assert listed[moved]["updated_at"] == listed[idle]["updated_at"] == start.isoformat()  # no status changed
    assert listed[moved]["last_event_at"] == (start + timedelta(days=2)).isoformat()
    assert listed[idle]["last_event_at"] == start.isoformat()
    code, out, err = journeys("instances", "list", *db, cwd=tmp_path)
    assert code == 0 and "last_event_at" in out.splitlines()[0], out + err
    code, out, err = journeys("instances", "show", moved, "--json", *db, cwd=tmp_path)
    assert code == 0, err
    assert json.loads(out)["last_event_at"] == (start + timedelta(days=2)).isoformat()

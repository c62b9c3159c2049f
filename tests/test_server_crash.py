"""Two workers run 200 journeys while one of them is SIGKILLed several times: every journey completes,
no completed step is executed again, and every step keeps one idempotency key across retries."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import httpx
import psycopg
import pytest
from langgraph_sdk import get_client

from agents import AgentRegistry
from server.app import create_app
from server.queues.procrastinate import ensure_schema
from server.settings import Settings
from tests.crash_agents import APPROVED_SEVEN, COUNTER_TABLE, EIGHT_STEPS, ensure_counter, register
from tests.forked import JourneysProcess, journeys
from tests.server_support import serving

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
JOURNEYS = 200
# How long the journeys may take to finish through the kills: about 50 s on a loaded two-core box, where a CI
# run's other tests share the cores; the loops end as soon as every run has ended.
FINISH_WITHIN = 300


def start_worker(url: str, name: str) -> JourneysProcess:
    command = [
        "worker",
        "--database-url",
        url,
        "--heartbeat",
        "0.5",
        "--stalled-after",
        "2",
        "--concurrency",
        "8",
        "--plugin",
        "tests.crash_agents:register",
    ]
    return journeys(command, env={"JOURNEYS_CRASH_DB": url})


def stop_workers(workers: list[JourneysProcess]) -> None:
    for worker in workers:
        worker.terminate()
    for worker in workers:
        try:
            worker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def run_statuses(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT status, count(*) FROM server_runs GROUP BY status").fetchall()
    return {status: int(n) for status, n in rows}


async def test_two_workers_one_killed_repeatedly(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    ensure_schema(postgres_url)
    ensure_counter(postgres_url)
    monkeypatch.setenv("JOURNEYS_CRASH_DB", postgres_url)
    # Journeys last long enough to be killed mid-run whatever the machine's speed: worker "b" alone ends at most 20
    # a second while "a" restarts after a kill (1-2 s, 6 s at load 11), and 16 at once at most 40.
    monkeypatch.setenv("JOURNEYS_CRASH_STEP_SECONDS", "0.05")
    registry = AgentRegistry()
    register(registry)
    app = create_app(
        Settings(database_url=postgres_url, auth=False, execution="distributed"), runtime_options={"agents": registry}
    )
    workers: list[JourneysProcess] = []
    try:
        with serving(app) as base:
            async with httpx.AsyncClient(base_url=base, timeout=30) as client:

                async def start(i: int) -> None:
                    response = await client.post(
                        "/runs",
                        json={
                            "assistant_id": "structured",
                            "input": {"journey_type": "eight_steps", "spec": EIGHT_STEPS, "user_id": f"u{i}"},
                            "on_completion": "keep",  # its thread tells which journey each retry was for
                        },
                    )
                    assert response.status_code == 200, response.text

                # Every run queued before the workers start: the kills are paced by the journeys' progress
                # alone, not by how long queueing 200 took (14 s under load, by when most had ended).
                await asyncio.gather(*(start(i) for i in range(JOURNEYS)))
            workers += [start_worker(postgres_url, "a"), start_worker(postgres_url, "b")]
            kills = await kill_while_running(postgres_url, workers, 0, JOURNEYS)
    finally:
        stop_workers(workers)
    statuses = run_statuses(postgres_url)
    ended = statuses.get("success", 0) + statuses.get("error", 0)
    assert ended == JOURNEYS, f"{JOURNEYS - ended} runs had not ended after {FINISH_WITHIN} s: {statuses}"
    assert kills >= 3, f"only {kills} kills happened before the journeys finished"
    assert runs_retried(postgres_url) >= kills  # each kill cut runs short, and they were retried
    with psycopg.connect(postgres_url) as conn:
        errors = conn.execute("SELECT run_id, error FROM server_runs WHERE status <> 'success'").fetchall()
    assert errors == []
    assert run_statuses(postgres_url) == {"success": JOURNEYS}
    with psycopg.connect(postgres_url) as conn:
        completed = conn.execute(
            "SELECT count(*) FROM journey_instances WHERE pattern = 'structured' AND status = 'completed'"
        ).fetchone()
        calls = dict(conn.execute(f"SELECT key, calls FROM {COUNTER_TABLE}").fetchall())
    assert completed == (JOURNEYS,)
    # Every step ran under one stable idempotency key (a retried run never made up a new one), so an
    # external system that honours the key (as payment APIs do) applied every effect exactly once.
    assert len(calls) == JOURNEYS * 8
    # Completed steps were not re-executed: only a step in flight when its worker died (its effect made,
    # its completion event not yet written — the documented window) can be delivered again, once per kill
    # that caught it in flight (a retried run killed again in the same step: three calls), and at most 8 steps
    # (a worker's runs) per kill.
    redelivered = {k: n for k, n in calls.items() if n != 1}
    assert len(redelivered) <= kills * 8, redelivered
    assert_only_in_flight_steps_repeated(postgres_url, calls)


def assert_only_in_flight_steps_repeated(url: str, calls: dict[str, int]) -> None:
    """A run's completed steps are replayed from the log, never executed again: each retry of a run (its
    worker was killed) may repeat at most the one step it had in flight, whose completion was not logged, once."""
    with psycopg.connect(url) as conn:
        retries = dict(
            conn.execute(
                "SELECT t.instance_id, sum(r.attempts - 1) FROM server_runs r "
                "JOIN server_threads t ON t.thread_id = r.thread_id GROUP BY t.instance_id"
            ).fetchall()
        )
    repeated: Counter[str] = Counter()  # each journey's calls beyond one a step
    for key, n in calls.items():
        repeated[key.rsplit(":", 2)[0]] += n - 1  # instance:step:superstep
    assert all(n <= retries.get(instance, 0) for instance, n in repeated.items()), (repeated, retries)


async def kill_while_running(url: str, workers: list[JourneysProcess], first: int, expected: int) -> int:
    """Until ``expected`` runs succeeded (or failed): SIGKILL the first worker (and restart it) 4 times, after every
    10% of those beyond the ``first`` that had succeeded already, each time once it is executing steps (it has made
    an effect since it started), so that every kill cuts runs short whatever the workers' speed and however long
    a restarted worker takes to start. Returns the kills made."""
    kills = 0
    deadline = time.monotonic() + FINISH_WITHIN
    while time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        statuses = await asyncio.to_thread(run_statuses, url)
        if statuses.get("success", 0) + statuses.get("error", 0) >= expected:
            break
        due = kills < 4 and statuses.get("success", 0) > first + (expected - first) // 10 * (kills + 1)
        if due and await asyncio.to_thread(made_effects, url, workers[0].pid):
            workers[0].send_signal(signal.SIGKILL)
            workers[0].wait()
            kills += 1
            workers[0] = start_worker(url, "a")
    return kills


def made_effects(url: str, pid: int) -> bool:
    """Whether the process ``pid`` has made a step's effect."""
    with psycopg.connect(url) as conn:
        row = conn.execute(f"SELECT EXISTS (SELECT FROM {COUNTER_TABLE} WHERE pid = %s)", (pid,)).fetchone()
    return bool(row and row[0])


def runs_retried(url: str) -> int:
    """The retries of runs (a kill cut each short)."""
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT coalesce(sum(attempts - 1), 0) FROM server_runs").fetchone()
    return int(row[0]) if row else 0


async def test_resumed_runs_survive_kills_without_repeating_steps(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Resumes are killed mid-run too: structured runs checkpoint only where they stop, so a retried
    resume starts again from the approval and replays the steps the log holds instead of executing them."""
    journeys = 100
    ensure_schema(postgres_url)
    ensure_counter(postgres_url)
    monkeypatch.setenv("JOURNEYS_CRASH_DB", postgres_url)
    monkeypatch.setenv("JOURNEYS_CRASH_STEP_SECONDS", "0.05")  # resumes last long enough to be killed mid-run
    app = create_app(Settings(database_url=postgres_url, auth=False, execution="distributed"))
    workers = [start_worker(postgres_url, "a"), start_worker(postgres_url, "b")]
    try:
        with serving(app) as base:
            async with httpx.AsyncClient(base_url=base, timeout=60) as client:
                threads = [(await client.post("/threads", json={})).json()["thread_id"] for _ in range(journeys)]
                # This API process holds none of the workers' agents: it takes their word for those (the specs
                # below name `side_effect`), while a design's own errors are refused before a run is queued.
                broken = {"journey_type": "broken", "steps": [{**APPROVED_SEVEN["steps"][1], "next_steps": ["gone"]}]}
                refused = await client.post(
                    f"/threads/{threads[0]}/runs",
                    json={"assistant_id": "structured", "input": {"journey_type": "broken", "spec": broken}},
                )
                assert refused.status_code == 422, refused.text
                assert "gone" in refused.text and "needs an agent" not in refused.text, refused.text
                started = await asyncio.gather(
                    *(
                        client.post(
                            f"/threads/{thread_id}/runs/wait",
                            json={
                                "assistant_id": "structured",
                                "input": {"journey_type": "approved_seven", "spec": APPROVED_SEVEN, "user_id": f"u{i}"},
                            },
                        )
                        for i, thread_id in enumerate(threads)
                    )
                )
                assert all(r.json()["current_step"] == "approve" for r in started)
                # The resumes are all queued before workers run them, as the first test's runs (see there).
                stop_workers(workers)
                workers.clear()
                for thread_id in threads:
                    response = await client.post(
                        f"/threads/{thread_id}/runs",
                        json={"assistant_id": "structured", "command": {"resume": {"approved": True}}},
                    )
                    assert response.status_code == 200, response.text
            workers += [start_worker(postgres_url, "a"), start_worker(postgres_url, "b")]
            kills = await kill_while_running(postgres_url, workers, journeys, 2 * journeys)
    finally:
        stop_workers(workers)
    assert kills >= 2, f"only {kills} kills happened before the journeys finished"
    assert runs_retried(postgres_url) >= kills
    assert run_statuses(postgres_url) == {"success": 2 * journeys}
    with psycopg.connect(postgres_url) as conn:
        completed = conn.execute("SELECT count(*) FROM journey_instances WHERE status = 'completed'").fetchone()
        calls = dict(conn.execute(f"SELECT key, calls FROM {COUNTER_TABLE}").fetchall())
        approvals = conn.execute(
            "SELECT count(*) FROM journey_events WHERE type = 'step.completed' AND step = 'approve'"
        ).fetchone()
    assert completed == (journeys,) and approvals == (journeys,)  # each approval applied once
    assert len(calls) == journeys * 7
    redelivered = {k: n for k, n in calls.items() if n != 1}
    assert len(redelivered) <= kills * 8, redelivered
    assert_only_in_flight_steps_repeated(postgres_url, calls)


async def test_one_users_first_runs_killed_mid_journey_each_finish_their_own_journey(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One user's threads of one journey share its design but are journeys of their own (the instance is
    the thread's): when the worker is SIGKILLed with every first run mid-journey, each retried first run
    finishes its own thread's journey, whose every step took effect under that journey's own keys."""
    threads = 6
    ensure_schema(postgres_url)
    ensure_counter(postgres_url)
    monkeypatch.setenv("JOURNEYS_CRASH_DB", postgres_url)
    monkeypatch.setenv("JOURNEYS_CRASH_STEP_SECONDS", "0.2")  # a first run lasts long enough to be killed mid-run
    app = create_app(Settings(database_url=postgres_url, auth=False, execution="distributed"))
    workers = [start_worker(postgres_url, "a")]
    try:
        with serving(app) as base:
            async with get_client(url=base, api_key=None) as sdk:
                runs = []
                for _ in range(threads):
                    thread_id = (await sdk.threads.create())["thread_id"]
                    start = {"journey_type": "eight_steps", "spec": EIGHT_STEPS}  # the caller's, as user
                    runs.append(await sdk.runs.create(thread_id, "structured", input=start))
                deadline = time.monotonic() + 60
                while len(await asyncio.to_thread(journeys_with_effects, postgres_url)) < threads:
                    assert time.monotonic() < deadline, "the first runs did not all get under way"
                    await asyncio.sleep(0.05)
                assert run_statuses(postgres_url) == {"running": threads}  # every one killed mid-journey
                workers[0].send_signal(signal.SIGKILL)
                workers[0].wait()
                workers[0] = start_worker(postgres_url, "a")
                ends = [await sdk.runs.join(run["thread_id"], run["run_id"]) for run in runs]
                retried = [(await sdk.runs.get(run["thread_id"], run["run_id"])) for run in runs]
    finally:
        stop_workers(workers)
    assert [(end["status"], len(end["completed_steps"])) for end in ends] == [("completed", 8)] * threads
    instance_ids = {end["instance_id"] for end in ends}
    assert len(instance_ids) == threads and {end["user_id"] for end in ends} == {ends[0]["user_id"]}
    assert {run["status"] for run in retried} == {"success"}
    with psycopg.connect(postgres_url) as conn:
        designs = conn.execute("SELECT count(*) FROM journey_designs").fetchone()
        attempts = conn.execute("SELECT min(attempts) FROM server_runs").fetchone()
        calls = dict(conn.execute(f"SELECT key, calls FROM {COUNTER_TABLE}").fetchall())
    assert designs == (1,) and attempts == (2,)  # one design for all; every first run was retried
    assert journeys_with_effects(postgres_url) == {i: 8 for i in instance_ids}  # each journey's own 8 steps
    assert all(n in (1, 2) for n in calls.values()), calls  # only a step in flight at the kill ran twice
    assert_only_in_flight_steps_repeated(postgres_url, calls)


def journeys_with_effects(url: str) -> dict[str, int]:
    """Each journey instance whose steps took effect, with the number of its steps that did."""
    with psycopg.connect(url) as conn:
        keys = [key for (key,) in conn.execute(f"SELECT key FROM {COUNTER_TABLE}").fetchall()]
    return dict(Counter(key.rsplit(":", 2)[0] for key in keys))  # instance:step:superstep

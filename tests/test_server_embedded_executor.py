"""One embedded server executes a database's runs: a second `journeys serve` (embedded) on the same SQLite file
or PostgreSQL database is refused in one line, since it would take up, and execute again, every run the first
is executing (each agent call twice); once the first stops, a new one starts in its place. A server starting
takes up the journeys a killed one left mid-step outside any run (embedded and distributed). Real processes."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg

from checkpoints.locks import lock_key
from server.queues.embedded import EXECUTOR_LOCK
from tests.forked import run_journeys
from tests.server_support import free_port, journeys_serve, start_serving, start_worker, stop_worker, workers_up

EIGHT_STEPS = {
    "journey_type": "one8",
    "steps": [{"step_id": f"s{i}", "mode": "auto", "agent": "bench_step"} for i in range(8)],
}
PLUGIN = ("--plugin", "benchmarks.server:register")


def completed(base: str, user: str) -> bool:
    answer = httpx.post(
        f"{base}/runs/wait",
        json={"assistant_id": "structured", "input": {"journey_type": "one8", "spec": EIGHT_STEPS, "user_id": user}},
        timeout=60,
    )
    return bool(answer.json()["status"] == "completed")


def test_a_second_embedded_server_on_a_database_is_refused_and_takes_over_once_the_first_stops(
    durable_url: str, tmp_path: Path
) -> None:
    with journeys_serve(durable_url, tmp_path / "first.log", "--no-auth", *PLUGIN) as first:
        assert completed(first, "a")
        second = run_journeys(
            ["serve", "--database-url", durable_url, "--no-auth", "--port", str(free_port()), *PLUGIN]
        )
        assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr
        [error] = [line for line in second.stderr.splitlines() if line.startswith("error:")]
        assert "another journeys serve executes this database's runs in embedded mode" in error, error
        assert "--distributed" in error
        assert completed(first, "b")  # the first serves on
    with journeys_serve(durable_url, tmp_path / "next.log", "--no-auth", *PLUGIN) as following:
        assert completed(following, "c")


def executor_lock_holder(admin: psycopg.Connection[Any]) -> int | None:
    """The backend holding the embedded-executor lock (a session-level advisory lock on its 64-bit key)."""
    key = lock_key(EXECUTOR_LOCK) & 0xFFFFFFFFFFFFFFFF
    found = admin.execute(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = %s::bigint::oid "
        "AND objid = %s::bigint::oid AND objsubid = 1",
        (key >> 32, key & 0xFFFFFFFF),
    ).fetchone()
    return None if found is None else int(found[0])


def taken_here(admin: psycopg.Connection[Any]) -> bool:
    """Whether ``admin`` took the embedded-executor lock (it was free: a second server could have started)."""
    row = admin.execute("SELECT pg_try_advisory_lock(%s)", (lock_key(EXECUTOR_LOCK),)).fetchone()
    return row is not None and bool(row[0])


def until(condition: Callable[[], bool], what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_an_embedded_server_whose_lock_connection_dropped_takes_the_lock_again(
    postgres_url: str, tmp_path: Path
) -> None:
    """PostgreSQL releases the embedded-executor lock when its connection drops (an outage, a terminated
    backend): a second embedded server could then start and execute the same runs. The first takes it again
    within seconds; the lock is not free for a second server. That is an ordinary outage's doing, and no other
    server took the lock: it was logged as an error, and is now a warning."""
    log = tmp_path / "first.log"
    with (
        journeys_serve(postgres_url, log, "--no-auth", *PLUGIN) as first,
        psycopg.connect(postgres_url, autocommit=True) as admin,
    ):
        assert completed(first, "a")
        holder = executor_lock_holder(admin)
        assert holder is not None
        admin.execute("SELECT pg_terminate_backend(%s)", (holder,))
        until(lambda: executor_lock_holder(admin) not in (None, holder), "the lock was not taken again", 15)
        assert not taken_here(admin)
        assert completed(first, "b")  # and it executes runs on
    said = [json.loads(line) for line in log.read_text().splitlines() if "executor lock" in line]
    assert said and {line["level"] for line in said} == {"warning"}, log.read_text()


def test_an_embedded_server_whose_lock_another_took_meanwhile_stops_and_says_so(
    postgres_url: str, tmp_path: Path
) -> None:
    """The lock connection dropped and another process took the lock before the first could take it again
    (a second server starting then): the first went on executing beside it. It stops, saying why."""
    log = tmp_path / "first.log"
    with (
        journeys_serve(postgres_url, log, "--no-auth", *PLUGIN) as first,
        psycopg.connect(postgres_url, autocommit=True) as admin,
    ):
        assert completed(first, "a")
        holder = executor_lock_holder(admin)
        admin.execute("SELECT pg_terminate_backend(%s)", (holder,))
        until(lambda: taken_here(admin), "the lock was never free", 5)

        def stopped() -> bool:
            try:
                httpx.get(f"{first}/ok", timeout=5)
            except httpx.TransportError:
                return True
            return False

        until(stopped, f"the first server serves on beside the lock's new holder:\n{log.read_text()}", 30)
    assert "another journeys serve took this database's runs while this one's lock was lost" in log.read_text()


SLOW_PROCESS = {
    "name": "killed_mid_step",
    "elements": [
        {"type": "start", "id": "start"},
        {"type": "service_task", "id": "prepare", "agent": "slow"},
        {"type": "user_task", "id": "approve", "title": "Approve", "candidate_groups": ["ops"]},
        {"type": "end", "id": "end"},
    ],
    "flows": ["start -> prepare", "prepare -> approve", "approve -> end"],
}


def test_a_process_instance_the_server_was_killed_in_is_taken_up_when_it_starts_again(
    durable_url: str, tmp_path: Path
) -> None:
    """A process started over HTTP runs in its request: `journeys serve` killed in its service task's call left
    it `in_progress` for good, its step never finished and no task made (``journeys instances list`` showed it
    like any other), until someone read it over the API. The next server takes it up as it starts, as it takes up
    the runs a crash left."""
    killed_mid_step_and_restarted(durable_url, tmp_path)


async def test_a_process_instance_a_distributed_api_starts_is_run_by_the_workers_whatever_becomes_of_the_api(
    postgres_url: str, tmp_path: Path
) -> None:
    """In distributed mode the API process ran a process's start (and its first service task) in the request, as
    the embedded one does: killed in that call, it left the instance mid-step for the next API process to take up,
    with agents the workers hold. The start is now handed to the workers and answered at once; the API killed while
    the worker's agent works changes nothing: the worker finishes the step, once, and the task is made."""
    calls = tmp_path / "calls"
    calls.touch()
    worker = start_worker(postgres_url, "--plugin", "tests.slow_agents", env=slow_env(tmp_path))
    try:
        await workers_up(postgres_url, 1)
        instance_id = await asyncio.to_thread(started_then_api_killed, postgres_url, tmp_path)
        until(lambda: "done prepare" in calls.read_text(), f"the step was never finished:\n{calls.read_text()}", 60)
        listed = run_journeys(["instances", "show", instance_id, "--database-url", postgres_url])
        assert "approve" in listed.stdout, listed.stdout + listed.stderr
    finally:
        stop_worker(worker)
    assert [line.split()[:2] for line in calls.read_text().splitlines()] == [["start", "prepare"], ["done", "prepare"]]
    assert {line.split()[2] for line in calls.read_text().splitlines()} == {str(worker.pid)}


def started_then_api_killed(url: str, tmp_path: Path) -> str:
    """Start a process instance of ``SLOW_PROCESS`` on a distributed `journeys serve` without agents, and kill it
    once the worker's agent works on its service task; the instance's id."""
    port = free_port()
    api = start_serving(url, port, tmp_path / "api.log", "--no-auth", "--distributed")
    base = f"http://127.0.0.1:{port}"
    try:
        assert httpx.post(f"{base}/processes", json=SLOW_PROCESS, timeout=30).status_code == 200
        started = httpx.post(f"{base}/processes/killed_mid_step/instances", json={"business_key": "k1"}, timeout=60)
        assert started.status_code == 200 and started.json()["status"] == "in_progress", started.text
        until(lambda: "start prepare" in (tmp_path / "calls").read_text(), "the service task was never called", 30)
    finally:
        api.kill()
        api.wait()
    return str(started.json()["instance_id"])


def slow_env(tmp_path: Path) -> dict[str, str]:
    """tests.slow_agents' settings: its calls noted in the test's directory, each taking 3 s."""
    return {"JOURNEYS_CALLS": str(tmp_path / "calls"), "JOURNEYS_SLOW_S": "3"}


def killed_mid_step_and_restarted(url: str, tmp_path: Path, *options: str) -> None:
    """Start a process instance on a `journeys serve` (``options``), kill the server while the instance's service
    task's agent works, start another, and check it finishes the step with no request naming the instance."""
    calls = tmp_path / "calls"
    calls.touch()
    plugin = ("--no-auth", "--plugin", "tests.slow_agents", *options)
    port = free_port()
    first = start_serving(url, port, tmp_path / "first.log", *plugin, env=slow_env(tmp_path))
    base = f"http://127.0.0.1:{port}"
    try:
        assert httpx.post(f"{base}/processes", json=SLOW_PROCESS, timeout=30).status_code == 200
        with ThreadPoolExecutor(1) as pool:
            started = pool.submit(
                httpx.post, f"{base}/processes/killed_mid_step/instances", json={"business_key": "k1"}, timeout=60
            )
            until(lambda: "start prepare" in calls.read_text(), "the service task was never called", 30)
            first.kill()
            first.wait()
            assert isinstance(started.exception(), httpx.TransportError)  # the start was never answered
    finally:
        first.kill()
        first.wait()
    with journeys_serve(url, tmp_path / "next.log", *plugin, env=slow_env(tmp_path)) as following:
        # No request names the instance: the server finishes its step by itself.
        until(lambda: "done prepare" in calls.read_text(), f"the step was never finished:\n{calls.read_text()}", 60)
        listed = run_journeys(["instances", "list", "--database-url", url])
        [instance_id] = [line.split()[0] for line in listed.stdout.splitlines() if " process " in line]
        view = httpx.get(f"{following}/processes/instances/{instance_id}", timeout=30).json()
        assert view["status"] == "in_progress" and [w["element"] for w in view["waiting"]] == ["approve"], view
    # The call the kill cut short, then the one that finished the step: once.
    assert [line.split()[:2] for line in calls.read_text().splitlines()] == [
        ["start", "prepare"],
        ["start", "prepare"],
        ["done", "prepare"],
    ]

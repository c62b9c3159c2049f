"""Stopping the processes that execute runs (a deploy, a scale-down: SIGTERM), as Temporal's and Hatchet's
workers are stopped: the process stops taking work, gives the runs under way a grace period, and a run still
under way then is left for another worker (or the restarted server), which finishes it as after a crash: not
ended "interrupted" as if a user had cancelled it, not taken by a second worker while the first still runs it,
and the process ends. Real processes, killed for real."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from langgraph_sdk import get_client
from langgraph_sdk.client import LangGraphClient
from langgraph_sdk.schema import Run, Thread

from server.app import create_app
from server.plugins import plugin_registry
from server.settings import Settings
from tests.forked import JourneysProcess
from tests.server_support import journeys_serve, serving, start_worker, stop_worker

pytestmark = pytest.mark.slow
SLOW = ("--plugin", "tests.slow_agents:register")
SPEC = {"journey_type": "slow1", "steps": [{"step_id": "s0", "mode": "auto", "agent": "slow"}]}
START = {"journey_type": "slow1", "spec": SPEC, "user_id": "ana"}
BEATS = ("--heartbeat", "0.5", "--stalled-after", "2")  # a worker whose heartbeat is 2 s late is taken as dead


def calls_of(path: Path) -> list[tuple[str, str, int]]:
    """The slow agent's notes: (start|done, step, pid) in order."""
    if not path.exists():
        return []
    return [(what, step, int(pid)) for what, step, pid in (line.split() for line in path.read_text().splitlines())]


def wait_for_call(path: Path, note: tuple[str, str, int], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while note not in calls_of(path):
        assert time.monotonic() < deadline, f"no {note} in {calls_of(path)}"
        time.sleep(0.05)


async def steps_started(path: Path, count: int, seconds: float = 60) -> None:
    """Return once the slow agent has noted ``count`` notes (its calls' starts, as a test that stops them sees)."""
    deadline = time.monotonic() + seconds
    while len(calls_of(path)) < count:
        assert time.monotonic() < deadline, f"{count} calls did not start: {calls_of(path)}"
        await asyncio.sleep(0.05)


def stopped_within(process: JourneysProcess, seconds: float, log: Path) -> int:
    """SIGTERM ``process``; its exit status once it has ended, within ``seconds`` (else the test fails)."""
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the process did not end within {seconds} s of SIGTERM:\n{log.read_text()[-4000:]}")


class Workers:
    """``journeys worker`` processes on one PostgreSQL database, with the slow agent (its notes in ``calls``),
    each logging to a file of the test's own: see :func:`distributed`."""

    def __init__(self, url: str, where: Path) -> None:
        self.url = url
        self.where = where
        self.calls = where / "calls"
        self.started: list[JourneysProcess] = []

    def start(self, name: str, *options: str, **env: str) -> JourneysProcess:
        """A worker with ``options`` and ``env`` (besides the slow agent's notes), its output in ``name``.log."""
        notes = {"JOURNEYS_CALLS": str(self.calls), **env}
        worker = start_worker(self.url, *SLOW, *options, env=notes, log=self.log(name))
        self.started.append(worker)
        return worker

    def log(self, name: str) -> Path:
        return self.where / f"{name}.log"


@contextmanager
def distributed(url: str, where: Path) -> Iterator[tuple[str, Workers]]:
    """An API server on ``url`` in distributed mode (its base URL) and the workers a test starts, each stopped
    (resumed first, if the test paused it) when the block ends."""
    workers = Workers(url, where)
    # The API has the workers' agents too, as `journeys serve --distributed --plugin ...`: it refuses a start
    # naming an agent it does not know.
    agents = {"agents": plugin_registry(SLOW[1])}
    settings = Settings(database_url=url, auth=False, execution="distributed")
    with serving(create_app(settings, runtime_options=agents)) as base:
        try:
            yield base, workers
        finally:
            for worker in workers.started:
                worker.send_signal(signal.SIGCONT)  # a paused process would not take its SIGTERM
                stop_worker(worker)


def run_row(url: str, run_id: str) -> tuple[str, int]:
    with psycopg.connect(url) as conn:
        found = conn.execute("SELECT status, attempts FROM server_runs WHERE run_id = %s", (run_id,)).fetchone()
    assert found is not None
    return str(found[0]), int(found[1])


async def test_a_worker_stopped_with_a_step_stuck_ends_after_its_grace_and_another_worker_finishes_the_run(
    postgres_url: str, tmp_path: Path
) -> None:
    """A worker was sent SIGTERM while a run's step was stuck in its agent: it waited for that run for ever
    (procrastinate's worker waits for its jobs with no limit), so a deploy hung until someone killed it -9.
    It now waits ``--shutdown-grace`` seconds, then stops the run and hands its job to another worker at once,
    which finishes the journey; the run is not ended "interrupted" (nobody cancelled it)."""
    with distributed(postgres_url, tmp_path) as (base, workers):
        first = workers.start("a", JOURNEYS_SLOW_S="600", JOURNEYS_SHUTDOWN_GRACE_S="2")
        async with get_client(url=base, api_key=None) as client:
            thread = await client.threads.create()
            run = await client.runs.create(thread["thread_id"], "structured", input=START)
            wait_for_call(workers.calls, ("start", "s0", first.pid))
            second = workers.start("b", JOURNEYS_SLOW_S="0.2")
            assert stopped_within(first, 30, workers.log("a")) == 0
            ended = await client.runs.join(thread["thread_id"], run["run_id"])
    assert run_row(postgres_url, run["run_id"]) == ("success", 2)  # taken again once, by the second worker
    assert ended["status"] == "completed", ended
    notes = calls_of(workers.calls)
    assert notes == [("start", "s0", first.pid), ("start", "s0", second.pid), ("done", "s0", second.pid)]
    assert "Traceback" not in workers.log("a").read_text(), workers.log("a").read_text()


async def test_a_worker_stopped_mid_step_finishes_the_run_within_its_grace_and_no_other_worker_takes_it(
    postgres_url: str, tmp_path: Path
) -> None:
    """A worker stopped while a run's step took longer than ``--stalled-after`` stopped heart-beating as it
    waited for the run to end, so another worker's reaper took the run as a dead worker's while the first
    still executed it: the run ran twice at once, the second waiting on the journey's lock. A stopping worker
    now heart-beats until it has ended: the run it finishes within its grace is its alone."""
    env = {"JOURNEYS_SLOW_S": "5", "JOURNEYS_SHUTDOWN_GRACE_S": "30"}
    with distributed(postgres_url, tmp_path) as (base, workers):
        first = workers.start("a", *BEATS, **env)
        async with get_client(url=base, api_key=None) as client:
            thread = await client.threads.create()
            run = await client.runs.create(thread["thread_id"], "structured", input=START)
            wait_for_call(workers.calls, ("start", "s0", first.pid))
            workers.start("b", *BEATS, **env)
            assert stopped_within(first, 30, workers.log("a")) == 0
            await client.runs.join(thread["thread_id"], run["run_id"])
    assert run_row(postgres_url, run["run_id"]) == ("success", 1)  # its first worker's, once
    assert calls_of(workers.calls) == [("start", "s0", first.pid), ("done", "s0", first.pid)]


async def test_a_server_stopped_mid_run_finishes_the_run_when_it_starts_again(durable_url: str, tmp_path: Path) -> None:
    """``journeys serve`` (embedded) stopped by its operator while a run's step was under way ended the run
    "interrupted" ("the run was cancelled") though nobody cancelled it, and the restarted server left the
    journey standing mid-step: the user's run was lost to a deploy. A stop now leaves the run unfinished, and
    the restarted server takes it up and finishes the journey, as after a crash."""
    calls = tmp_path / "calls"
    stuck = {"JOURNEYS_CALLS": str(calls), "JOURNEYS_SLOW_S": "600", "JOURNEYS_SHUTDOWN_GRACE_S": "1"}
    quick = {"JOURNEYS_CALLS": str(calls), "JOURNEYS_SLOW_S": "0.2"}
    with journeys_serve(durable_url, tmp_path / "first.log", "--no-auth", *SLOW, env=stuck) as base:
        async with get_client(url=base, api_key=None) as client:
            thread = await client.threads.create()
            run = await client.runs.create(thread["thread_id"], "structured", input=START)
            await steps_started(calls, 1)
    with journeys_serve(durable_url, tmp_path / "second.log", "--no-auth", *SLOW, env=quick) as base:
        async with get_client(url=base, api_key=None) as client:
            ended = await client.runs.join(thread["thread_id"], run["run_id"])
            finished = await client.runs.get(thread["thread_id"], run["run_id"])
    assert finished["status"] == "success", finished
    assert ended["status"] == "completed", ended
    assert [(what, step) for what, step, _pid in calls_of(calls)] == [("start", "s0"), ("start", "s0"), ("done", "s0")]


def registered_workers(url: str) -> int:
    with psycopg.connect(url) as conn:
        found = conn.execute("SELECT count(*) FROM procrastinate_workers").fetchone()
    return int(found[0]) if found else 0


async def test_a_worker_another_pruned_as_stalled_registers_again_and_takes_runs(
    postgres_url: str, tmp_path: Path
) -> None:
    """A live worker whose heartbeat was late past ``--stalled-after`` (a paused VM, a blocked loop) was pruned by
    a worker starting meanwhile (procrastinate deletes stalled workers' rows at a worker's start). Its next fetch
    of a job then failed on ``procrastinate_jobs_worker_id_fkey`` and the process died with a traceback: one
    worker fewer, silently. It now registers again and goes on taking runs."""
    with distributed(postgres_url, tmp_path) as (base, workers):
        paused = workers.start("a", *BEATS, JOURNEYS_SLOW_S="0.1")
        deadline = time.monotonic() + 60
        while registered_workers(postgres_url) < 1:
            assert time.monotonic() < deadline and paused.poll() is None, workers.log("a").read_text()
            await asyncio.sleep(0.1)
        paused.send_signal(signal.SIGSTOP)
        await asyncio.sleep(3)  # its heartbeat is late now
        pruner = workers.start("b", *BEATS, JOURNEYS_SLOW_S="0.1")
        with psycopg.connect(postgres_url) as conn:  # the pruner's row replaces the paused one's
            while conn.execute("SELECT count(*) FROM procrastinate_workers WHERE id > 1").fetchone() != (1,):
                assert time.monotonic() < deadline + 60, workers.log("b").read_text()
                await asyncio.sleep(0.1)
        assert registered_workers(postgres_url) == 1
        paused.send_signal(signal.SIGCONT)
        await asyncio.sleep(3)  # it fetches every half second meanwhile
        assert paused.poll() is None, workers.log("a").read_text()[-4000:]
        assert stopped_within(pruner, 30, workers.log("b")) == 0  # the paused worker alone takes the run now
        async with get_client(url=base, api_key=None) as client:
            thread = await client.threads.create()
            ended = await client.runs.wait(thread["thread_id"], "structured", input=START)
    assert ended["status"] == "completed", ended
    assert calls_of(workers.calls) == [("start", "s0", paused.pid), ("done", "s0", paused.pid)]


async def taken_from_a_paused_worker(
    client: LangGraphClient, workers: Workers, *, lock_timeout: str
) -> tuple[Thread, Run, JourneysProcess]:
    """A run whose worker ("a", returned) was paused mid-step and which another worker ("b", waiting
    ``lock_timeout`` seconds for a journey held elsewhere) has taken as a dead worker's since: its thread, itself."""
    paused = workers.start("a", *BEATS, "--lock-timeout", lock_timeout, JOURNEYS_SLOW_S="2")
    thread = await client.threads.create()
    run = await client.runs.create(thread["thread_id"], "structured", input=START)
    wait_for_call(workers.calls, ("start", "s0", paused.pid))
    paused.send_signal(signal.SIGSTOP)
    workers.start("b", *BEATS, "--lock-timeout", lock_timeout, JOURNEYS_SLOW_S="2")
    deadline = time.monotonic() + 60
    while run_row(workers.url, run["run_id"]) != ("running", 2):
        assert time.monotonic() < deadline, run_row(workers.url, run["run_id"])
        await asyncio.sleep(0.2)
    return thread, run, paused


async def test_a_run_taken_from_a_paused_worker_that_still_holds_its_journey_is_not_failed(
    postgres_url: str, tmp_path: Path
) -> None:
    """A worker paused mid-step (a paused VM, a blocked loop) past ``--stalled-after`` has its run taken by
    another worker, which waited 30 s for the journey the paused one still held and then ended the run
    "error" (ConcurrentUpdateError), while the paused worker, resumed, completed the journey: the user was told
    of a failure that did not happen. The second worker now gives the run back to its queue for later; the
    first worker's end of the run ends it, a success. (The taker waits ``--lock-timeout`` seconds, 30 unless
    given: the worker had no such option, and this test took 90 s.)"""
    with distributed(postgres_url, tmp_path) as (base, workers):
        async with get_client(url=base, api_key=None) as client:
            thread, run, paused = await taken_from_a_paused_worker(client, workers, lock_timeout="3")
            await asyncio.sleep(5)  # past the taker's 3 s wait for the journey
            paused.send_signal(signal.SIGCONT)
            ended = await client.runs.join(thread["thread_id"], run["run_id"])
            finished = await client.runs.get(thread["thread_id"], run["run_id"])
    assert finished["status"] == "success", finished
    assert ended["status"] == "completed", ended
    assert calls_of(workers.calls)[:2] == [("start", "s0", paused.pid), ("done", "s0", paused.pid)]


async def test_a_worker_resumed_while_another_waits_for_its_journey_ends_the_run_once_and_logs_no_error(
    postgres_url: str, tmp_path: Path
) -> None:
    """A worker paused mid-step past ``--stalled-after`` had its jobs taken by another (its run's, which waited for
    the journey the paused one held, and the timers' job it was running). Resumed, it ended a job the other had
    ended already, and procrastinate's end of it failed with 'Job was not found or not in "doing" or "todo"
    status', logged as an error with a traceback ("Task exception was never retrieved"). Whichever worker ends a
    job first ends it; the other's end of it is a normal race, said at info level."""
    with distributed(postgres_url, tmp_path) as (base, workers):
        async with get_client(url=base, api_key=None) as client:
            thread, run, paused = await taken_from_a_paused_worker(client, workers, lock_timeout="10")
            await asyncio.sleep(1)  # the taker waits for the journey (10 s at most)
            paused.send_signal(signal.SIGCONT)
            ended = await client.runs.join(thread["thread_id"], run["run_id"])
            await asyncio.sleep(3)  # both workers have ended the job their way
            with psycopg.connect(postgres_url) as conn:
                jobs = conn.execute(
                    "SELECT count(*) FROM procrastinate_jobs WHERE status <> 'succeeded' "
                    "AND task_name = 'journeys.execute_run'"
                ).fetchone()
    assert ended["status"] == "completed", ended
    assert run_row(postgres_url, run["run_id"])[0] == "success"
    assert calls_of(workers.calls) == [("start", "s0", paused.pid), ("done", "s0", paused.pid)]
    assert jobs == (0,)
    for name in ("a", "b"):
        text = workers.log(name).read_text()
        assert "Job was not found" not in text and "Traceback" not in text, text[-4000:]

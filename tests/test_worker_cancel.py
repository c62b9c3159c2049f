"""Cancelling a run a ``journeys worker`` process executes (langgraph-sdk over real HTTP, real worker processes on
PostgreSQL), when the cancel is lost on its way to the run's task, or lands before that task has started."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Coroutine, Mapping
from contextlib import suppress
from pathlib import Path
from typing import Any

import psycopg
import pytest
from langgraph_sdk import get_client

from graphs.runtime import JourneyRuntime
from server.app import create_app
from server.plugins import plugin_registry
from server.queues.procrastinate import QUEUE, RUN_JOBS, RUN_TASK, RunJobs, build_app, cancelled_again, handed_over
from server.runs.executor import RunExecutor
from server.runs.store import RunStore
from server.settings import Settings
from tests import slow_agents
from tests.server_support import serving
from tests.test_worker_shutdown import SLOW, calls_of, distributed, run_row, steps_started, wait_for_call
from tests.test_worker_terminate import ended_as, moving

pytestmark = pytest.mark.slow
Notify = Callable[[str, str], Coroutine[Any, Any, None]]  # how a listening connection hands on a NOTIFY
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


async def test_a_step_ending_after_its_runs_cancel_was_lost_starts_no_next_step(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancel lost in a step's work (as above) is made again only every 5 s (``LOST_CANCEL_S``): a step that
    ended meanwhile went on to the next one, which began its agent call before the cancel came again (and a run of
    short steps could end "success" first). A step of a run whose graph call was cancelled now never begins: the
    run stops at the next step boundary at the latest. A server executing its runs itself (the same engine as a
    worker's), steps of 2 s, the first call losing the cancel."""
    calls = tmp_path / "calls"
    monkeypatch.setenv("JOURNEYS_CALLS", str(calls))  # the slow agent runs in this process
    monkeypatch.setenv("JOURNEYS_SLOW_S", "2")  # ends its second wait before the cancel is made again (5 s)
    monkeypatch.setenv("JOURNEYS_DROP_FIRST_CANCEL", "1")
    monkeypatch.setattr(slow_agents, "_DROPPED", [])  # this process's first call loses it, whatever ran before
    settings = Settings(database_url=sqlite_url, auth=False)
    with serving(create_app(settings, runtime_options={"agents": plugin_registry(SLOW[1])})) as base:
        async with get_client(url=base, api_key=None) as client:
            thread, run, _instance = await moving(client, "ana")
            await steps_started(calls, 1)
            await client.runs.cancel(thread, run)
            assert await ended_as(client, thread, run) == "interrupted"
    assert [(what, step) for what, step, _pid in calls_of(calls)] == [("start", "a"), ("done", "a")]


async def test_a_run_whose_abort_lands_before_its_jobs_task_starts_ends_interrupted(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """procrastinate cancels an aborted job's asyncio task, and a task cancelled before its first step never runs
    its body: neither the run's executor, which ends a cancelled run interrupted, nor procrastinate's end of the
    job. An abort whose notification was handled in the loop pass that took the job (its fetch's answer and the
    NOTIFY read together) left the job "doing" and the run "running" for good, and every later run of its thread
    queued behind the job's per-thread lock. A real worker's procrastinate loop on a real API, the abort's NOTIFY
    held by the test until that pass: the run now ends interrupted, its step not run, its thread idle."""
    monkeypatch.setenv("JOURNEYS_CALLS", str(tmp_path / "calls"))
    monkeypatch.setenv("JOURNEYS_SLOW_S", "30")
    with distributed(postgres_url, tmp_path) as (base, _workers):
        async with (
            get_client(url=base, api_key=None) as client,
            JourneyRuntime.open(postgres_url, agents=plugin_registry(SLOW[1])) as runtime,
        ):
            runs = RunStore(runtime.store.backend, runtime.store.clock, runtime.store.sealer, jobs=RUN_JOBS)
            executor = RunExecutor(runtime, runs)

            async def execute(run_id: str) -> None:
                await executor.execute(run_id, due=True, taken=jobs.taken(run_id))

            app = build_app(postgres_url, {RUN_TASK: execute}, retention_cron=None)
            app.job_manager = jobs = RunJobs(app.connector, runs)
            held: asyncio.Queue[tuple[Notify, str, str]] = asyncio.Queue()
            listen = app.connector.listen_notify

            async def listen_holding_aborts(on_notification: Notify, channels: Any) -> None:
                async def holding(channel: str, payload: str) -> None:
                    if json.loads(payload)["type"] == "abort_job_requested":
                        held.put_nowait((on_notification, channel, payload))
                    else:
                        await on_notification(channel, payload)

                await listen(on_notification=holding, channels=channels)

            take = runs.take_job

            async def take_then_cancel(params: Mapping[str, Any]) -> Any:
                job, claimed = await take(params)
                if claimed is not None:  # the user cancels the run as the worker takes it
                    await client.runs.cancel(claimed[0].thread_id, claimed[0].run_id)
                    on_notification, channel, payload = await held.get()
                    # The abort's NOTIFY, read in the pass that goes on to start the job's task.
                    asyncio.create_task(on_notification(channel, payload))  # noqa: RUF006 (awaited by the loop)
                return job, claimed

            monkeypatch.setattr(app.connector, "listen_notify", listen_holding_aborts)
            monkeypatch.setattr(runs, "take_job", take_then_cancel)
            async with app.open_async():
                worker = asyncio.create_task(
                    app.run_worker_async(
                        queues=[QUEUE],
                        concurrency=2,
                        install_signal_handlers=False,
                        fetch_job_polling_interval=0.5,
                        delete_jobs="successful",
                        worker_middleware=[handed_over, cancelled_again(executor)],
                    )
                )
                try:
                    thread = await client.threads.create()
                    start = {"journey_type": "slow2", "spec": TWO_STEPS, "user_id": "ana"}
                    run = await client.runs.create(thread["thread_id"], "structured", input=start)
                    with suppress(TimeoutError):  # it stays running, before
                        async with asyncio.timeout(20):
                            await client.runs.join(thread["thread_id"], run["run_id"])
                    status = run_row(postgres_url, run["run_id"])[0]
                    idle = (await client.threads.get(thread["thread_id"]))["status"]
                finally:
                    worker.cancel()
                    with suppress(asyncio.CancelledError):
                        await worker
    with psycopg.connect(postgres_url) as conn:
        jobs_left = conn.execute(
            "SELECT status FROM procrastinate_jobs WHERE args ->> 'run_id' = %s", (run["run_id"],)
        ).fetchall()
    assert status == "interrupted", (status, jobs_left)
    assert [job_status for (job_status,) in jobs_left] in ([], ["aborted"])
    assert idle == "idle"
    # Its task takes the cancel at its first await (its claim's reads), well before its step ends (30 s).
    assert [what for what, _step, _pid in calls_of(tmp_path / "calls")] in ([], ["start"])

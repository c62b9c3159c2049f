"""The reaper every ``journeys worker`` runs: the jobs of a worker whose heartbeat stopped (it died mid-run) are
retried, once each, and never a job a live worker holds. Real PostgreSQL, procrastinate's own schema."""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest
import structlog.testing
from procrastinate.manager import JobManager

from server.queues.procrastinate import QUEUE, RUN_TASK, build_app, ensure_schema
from server.queues.worker import reap_stalled

pytestmark = pytest.mark.slow


def job_state(url: str, job_id: int) -> tuple[str, int | None, int]:
    with psycopg.connect(url) as conn:
        found = conn.execute("SELECT status, worker_id, attempts FROM procrastinate_jobs WHERE id = %s", (job_id,))
        row = found.fetchone()
    assert row is not None
    return str(row[0]), row[1], int(row[2])


def waiting_on_a_lock(url: str) -> bool:
    """Whether a session of the database waits for a row lock (the reaper's reset of the job the test holds)."""
    with psycopg.connect(url) as conn:
        found = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE NOT granted AND database = "
            "(SELECT oid FROM pg_database WHERE datname = current_database())"
        ).fetchone()
    return found is not None and found[0] > 0


async def heart_beating(jobs: JobManager, worker_id: int) -> None:
    """The live worker's heartbeat, as its process sends it."""
    while True:
        await jobs.update_heartbeat(worker_id)
        await asyncio.sleep(0.5)


async def test_a_stalled_job_a_live_worker_took_meanwhile_is_not_reset(postgres_url: str) -> None:
    """Each worker's reaper listed the stalled jobs, then retried them one by one: a job another worker's reaper
    retried and a live worker took in between was reset to "todo" under that worker, and taken again by another
    while the live one ran it (its run twice at once, one waiting out the journey's lock). A job is now retried
    only if it is still under way under a stalled worker as it is retried; a dead worker's other job is retried."""
    ensure_schema(postgres_url)
    app = build_app(postgres_url)
    async with app.open_async():
        jobs = app.job_manager
        dead = await jobs.register_worker()
        live = await jobs.register_worker()
        taken, other = [
            await app.configure_task(RUN_TASK, queue=QUEUE, lock=f"thread:{name}").defer_async(run_id=name)
            for name in ("taken", "other")
        ]
        for _ in range(2):
            assert await jobs.fetch_job(queues=None, worker_id=dead) is not None
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(
                "UPDATE procrastinate_workers SET last_heartbeat = now() - interval '1 hour' WHERE id = %s", (dead,)
            )
        beating = asyncio.create_task(heart_beating(jobs, live))
        with psycopg.connect(postgres_url) as held:  # the test's transaction, as another reaper's and a worker's
            held.execute("SELECT id FROM procrastinate_jobs WHERE id = %s FOR UPDATE", (taken,))
            reaper = asyncio.create_task(reap_stalled(app, stalled_after=2))
            deadline = time.monotonic() + 4
            while not waiting_on_a_lock(postgres_url) and time.monotonic() < deadline:  # noqa: ASYNC110 (another process)
                await asyncio.sleep(0.05)
            # Meanwhile another reaper retried the job and the live worker took it.
            held.execute(
                "UPDATE procrastinate_jobs SET status = 'doing', worker_id = %s, attempts = attempts + 1 WHERE id = %s",
                (live, taken),
            )
            held.commit()
            await asyncio.sleep(1.5)
        for task in (reaper, beating):
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    assert job_state(postgres_url, taken) == ("doing", live, 1)  # the live worker's still
    assert job_state(postgres_url, other) == ("todo", dead, 1)  # the dead worker's: retried once


async def test_a_stalled_job_retried_is_logged_with_its_run_and_its_dead_worker(postgres_url: str) -> None:
    """The reaper's warning named the procrastinate job's number and task only: an operator could not tell from the
    log which run (so which thread and journey) was taken from which dead worker, nor how long it had been silent,
    without querying procrastinate's tables."""
    ensure_schema(postgres_url)
    app = build_app(postgres_url)
    async with app.open_async():
        jobs = app.job_manager
        dead = await jobs.register_worker()
        job = await app.configure_task(RUN_TASK, queue=QUEUE, lock="thread:t-1").defer_async(run_id="run-1")
        assert await jobs.fetch_job(queues=None, worker_id=dead) is not None
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(
                "UPDATE procrastinate_workers SET last_heartbeat = now() - interval '1 hour' WHERE id = %s", (dead,)
            )
        with structlog.testing.capture_logs() as logged:
            reaper = asyncio.create_task(reap_stalled(app, stalled_after=2))
            deadline = time.monotonic() + 10
            # Until the reaper has logged: the job is reset in the database before its answer reaches the reaper.
            retried = lambda: [e for e in logged if e["event"] == "retrying a stalled job"]  # noqa: E731
            while not retried() and time.monotonic() < deadline:  # noqa: ASYNC110 (another process resets it)
                await asyncio.sleep(0.1)
            reaper.cancel()
            with pytest.raises(asyncio.CancelledError):
                await reaper
    assert job_state(postgres_url, job)[0] == "todo"
    [line] = retried()
    assert (line["job_id"], line["run_id"], line["worker_id"]) == (job, "run-1", dead), line
    assert 3_500 <= line["silent_s"] <= 3_700, line  # its worker's last heartbeat, an hour ago

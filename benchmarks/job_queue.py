"""The queue's ceiling: how many jobs per second procrastinate takes in on one PostgreSQL (not named
queue.py: run as a script, that would shadow the standard library's queue module).

Every run the server starts in distributed mode is one procrastinate job, deferred by the statement that
creates the run (``server.queues.procrastinate.enqueuer``). procrastinate's ``AFTER INSERT`` trigger sends
two NOTIFYs per job, and PostgreSQL serialises the commits of notifying transactions (one global lock on
the notification queue). This measures, at 1 and at N concurrent deferrers, for a fixed time each:

- ``api``: the job part of what the API does per run: the enqueuer's statement
  (:data:`checkpoints.schema.queue.DEFER_JOB`, which the run's INSERT takes as a CTE), one transaction per
  job, with the job built as procrastinate's ``defer`` builds it (the run's per-thread lock);
- ``sql``: the same insert as a bare ``procrastinate_defer_jobs_v1`` call on a prepared statement, one
  transaction per job: the database's own intake, without procrastinate's Python;
- ``batch``: ``batch_defer_async`` of 50 jobs per transaction;

each with the notify trigger on (as installed) and off (``ALTER TABLE … DISABLE TRIGGER``), and prints
jobs/s with the CPU per job of this (client) process and of PostgreSQL.

    python benchmarks/job_queue.py [--seconds 5] [--clients 16] [--database-url postgresql://…] [--quick]

Without --database-url (or $DATABASE_URL) a throwaway PostgreSQL is started with pgserver. Nothing takes
the jobs: no worker runs, so only the intake is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil
import psycopg
from psycopg_pool import AsyncConnectionPool
from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg

from benchmarks.overhead import fresh_database, postgres_server
from benchmarks.server import cpu_seconds, postmaster
from checkpoints.backends.base import CompiledStatement
from checkpoints.schema.queue import DEFER_JOB
from server.queues.procrastinate import QUEUE, RUN_TASK, build_app, enqueuer, ensure_schema
from server.runs.store import RunRow

TRIGGER = "procrastinate_jobs_notify_queue_job_inserted_v1"
BATCH = 50
SQL_DEFER = """
SELECT procrastinate_defer_jobs_v1(ARRAY[ROW(%s, %s, 0, %s, NULL, %s::jsonb, NULL)]::procrastinate_job_to_defer_v1[])
"""

Defer = Callable[[psycopg.AsyncConnection[Any]], Awaitable[int]]  # defers on the connection; how many jobs


def set_trigger(url: str, on: bool) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"ALTER TABLE procrastinate_jobs {'ENABLE' if on else 'DISABLE'} TRIGGER {TRIGGER}")
        conn.execute("TRUNCATE procrastinate_jobs CASCADE")


def deferrers(url: str) -> dict[str, Defer]:
    app = build_app(url)

    enqueue = enqueuer(app)
    statement = CompiledStatement.of(DEFER_JOB, PGDialect_psycopg())

    async def api(conn: psycopg.AsyncConnection[Any]) -> int:
        run_id = str(uuid.uuid4())
        now = datetime.now(UTC)
        run = RunRow(
            run_id, run_id, "structured", "pending", "start", {}, None, [], "reject", {}, None, None, 0, None, now, now
        )
        await conn.execute(statement.sql, statement.bind(enqueue.params(run)), prepare=True)
        return 1

    async def sql(conn: psycopg.AsyncConnection[Any]) -> int:
        run_id = str(uuid.uuid4())
        args = f'{{"run_id": "{run_id}"}}'
        await conn.execute(SQL_DEFER, (QUEUE, RUN_TASK, f"thread:{run_id}", args), prepare=True)
        return 1

    async def batch(conn: psycopg.AsyncConnection[Any]) -> int:
        async with conn.transaction():
            task = app.configure_task(RUN_TASK, queue=QUEUE, connection=conn)
            await task.batch_defer_async(*({"run_id": str(uuid.uuid4())} for _ in range(BATCH)))
        return BATCH

    return {"api": api, "sql": sql, "batch": batch}


async def measure(url: str, defer: Defer, clients: int, seconds: float) -> dict[str, float]:
    """Jobs/s deferred by ``clients`` concurrent deferrers over ``seconds``, and CPU ms per job; after a
    warm-up of the same length (connections opened, statements prepared, types loaded)."""
    database = postmaster(url)
    me = psutil.Process()
    async with AsyncConnectionPool(url, min_size=clients, max_size=clients, kwargs={"autocommit": True}) as pool:
        await pool.wait()
        window: dict[str, float] = {}
        done = 0

        async def client(stop_at: float) -> None:
            nonlocal done
            async with pool.connection() as conn:
                while time.perf_counter() < stop_at:
                    n = await defer(conn)
                    if "began" in window:
                        done += n

        async def measuring(at: float) -> None:
            await asyncio.sleep(at - time.perf_counter())
            window["cpu_db"] = cpu_seconds(database) if database else 0.0
            window["cpu_me"] = cpu_seconds(me)
            window["began"] = time.perf_counter()

        now = time.perf_counter()
        await asyncio.gather(measuring(now + seconds), *(client(now + 2 * seconds) for _ in range(clients)))
        elapsed = time.perf_counter() - window["began"]
        # Read while the pool's backends live: an exited one is counted only once the postmaster reaps it.
        cpu_me = cpu_seconds(me) - window["cpu_me"]
        cpu_db = cpu_seconds(database) - window["cpu_db"] if database else float("nan")
    per_job = 1000 / done if done else float("nan")  # none in the window: a stalled box
    return {"jobs_per_s": done / elapsed, "client_cpu_ms": cpu_me * per_job, "db_cpu_ms": cpu_db * per_job}


async def bench(url: str, *, clients: int, seconds: float) -> dict[str, dict[str, float]]:
    """``{"<form> <trigger on|off> x<clients>": figures}`` for every form, trigger setting and concurrency."""
    ensure_schema(url)
    forms = deferrers(url)
    results: dict[str, dict[str, float]] = {}
    try:
        for trigger in (True, False):  # one setting at a time (altering the table locks it)
            await asyncio.to_thread(set_trigger, url, trigger)
            for name, defer in forms.items():
                for n in (1, clients):
                    key = f"{name} trigger {'on' if trigger else 'off'} x{n}"
                    results[key] = await measure(url, defer, n, seconds)
    finally:
        await asyncio.to_thread(set_trigger, url, True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="how long each measurement lasts")
    parser.add_argument("--clients", type=int, default=16, help="concurrent deferrers (besides one)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 0.5 s each")
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL"))
    args = parser.parse_args()
    seconds = 0.5 if args.quick else args.seconds
    with postgres_server(args.database_url) as server, fresh_database(server, "queue") as url:
        results = asyncio.run(bench(url, clients=args.clients, seconds=seconds))
    print(f"procrastinate job intake, {seconds:g} s per line (CPU ms per job: this client process, PostgreSQL)")
    for key, r in results.items():
        print(
            f"  {key:<24} {r['jobs_per_s']:8.0f} jobs/s   client {r['client_cpu_ms']:.2f} ms   "
            f"PostgreSQL {r['db_cpu_ms']:.2f} ms"
        )
    for name in ("api", "sql", "batch"):
        on, off = results[f"{name} trigger on x{args.clients}"], results[f"{name} trigger off x{args.clients}"]
        print(f"  {name}: trigger off / on at {args.clients} deferrers: {off['jobs_per_s'] / on['jobs_per_s']:.2f}x")


if __name__ == "__main__":
    main()

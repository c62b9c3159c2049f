"""PostgreSQL going away under a running server (a restart, a failover): every request meanwhile is a 503
DatabaseUnavailableError with Retry-After, never a 500 or a dropped connection; ``/ok?check_db=1`` says so,
as the Agent Server's does; and once the database answers again the same API and worker processes carry on,
with no restart. Real processes; the outage is the test database refusing connections, its backends ended."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest
from procrastinate.jobs import Job
from psycopg import sql
from sqlalchemy import text
from sqlalchemy.exc import OperationalError as SQLAlchemyOperationalError

from checkpoints.database import OUTAGE, create_engine_for, database_conflict, lost_database
from checkpoints.url import parse_store_url
from graphs.kernel.engine import LOST_DATABASE_RETRY
from graphs.lifecycle.catalog import READY_TO_START
from server.queues.procrastinate import RETENTION_TASK, TIMER_TASK, OutageRetry, build_app
from tests.server_support import journeys_serve, start_worker, stop_worker

POOL_TIMEOUT_S = 30  # how long SQLAlchemy's pool and psycopg_pool's wait for a connection, by default
PLUGIN = ("--plugin", "benchmarks.server:register")  # the benchmark's no-op agent, bench_step
EIGHT_STEPS = {
    "journey_type": "outage8",
    "steps": [{"step_id": f"s{i}", "mode": "auto", "agent": "bench_step"} for i in range(8)],
}


# A step whose agent fails for good: bench_step's output lacks the field its schema requires.
FAILING = {
    "journey_type": "failing1",
    "steps": [
        {
            "step_id": "bill",
            "mode": "auto",
            "agent": "bench_step",
            "output_schema": {"type": "object", "required": ["invoice"]},
            "retry": {"max_attempts": 1},
        }
    ],
}


def journey(client: httpx.Client, user: str, spec: dict[str, Any] = EIGHT_STEPS) -> httpx.Response:
    return client.post(
        "/runs/wait",
        json={
            "assistant_id": "structured",
            "input": {"journey_type": spec["journey_type"], "spec": spec, "user_id": user},
        },
    )


def log_lines(log: Path, event: str) -> list[dict[str, Any]]:
    """The JSON lines of ``log`` (a server's or a worker's output: not a terminal) whose event is ``event``."""
    lines = (json.loads(line) for line in log.read_text().splitlines() if line.startswith("{"))
    return [line for line in lines if line.get("event") == event]


@contextmanager
def outage(url: str) -> Iterator[None]:
    """The database ``url`` names refuses new connections and its open ones are ended, until the block ends."""
    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    with psycopg.connect(parts._replace(path="/postgres").geturl(), autocommit=True) as admin:
        admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(name)))
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        try:
            yield
        finally:
            admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(name)))


@pytest.mark.parametrize("mode", ["embedded", "distributed"])
def test_a_database_outage_is_503_to_retry_and_the_processes_carry_on_after_it(
    mode: str, postgres_url: str, tmp_path: Path
) -> None:
    distributed = ["--distributed"] if mode == "distributed" else []
    api_log, worker_log = tmp_path / "api.log", tmp_path / "worker.log"
    with journeys_serve(postgres_url, api_log, "--no-auth", *distributed, *PLUGIN) as base:
        worker = start_worker(postgres_url, *PLUGIN, log=worker_log) if distributed else None
        client = httpx.Client(base_url=base, timeout=120)
        try:
            assert journey(client, "before").json()["status"] == "completed"
            failed = journey(client, "billed", FAILING).json()
            assert failed["__error__"]["error"] == "AgentCallFailedError", failed

            with outage(postgres_url), ThreadPoolExecutor(4) as pool:
                calls = [
                    pool.submit(journey, client, "during"),
                    pool.submit(client.get, "/threads/00000000-0000-4000-8000-000000000000"),
                    pool.submit(client.post, "/threads/search", json={"limit": 5}),
                    pool.submit(client.get, "/ok", params={"check_db": 1}),
                ]
                answers = [call.result() for call in calls]
                for answer in answers:
                    assert answer.status_code == 503, answer.text
                    assert answer.json()["code"] == "DatabaseUnavailableError", answer.text
                    assert answer.headers["retry-after"] == "5"
                assert client.get("/ok").json() == {"ok": True}  # alive, and says so without the database

            deadline = time.monotonic() + 90
            while client.get("/ok", params={"check_db": 1}).status_code != 200:
                assert time.monotonic() < deadline, "the server never saw the database again"
                time.sleep(0.2)
            if worker is not None:
                assert worker.poll() is None, "the worker exited when the database went away"
            with ThreadPoolExecutor(4) as pool:
                after = list(pool.map(lambda i: journey(client, f"after{i}"), range(4)))
            assert [a.json()["status"] for a in after] == ["completed"] * 4, [a.text for a in after]
        finally:
            client.close()
            if worker is not None:
                stop_worker(worker)
    log = api_log.read_text()
    assert "Exception in ASGI application" not in log, log
    # What an operator reads at the default log level. `journeys serve` logged errors only: an embedded server,
    # which runs the journeys, said nothing of an agent failing for good, nor of the database going away.
    [call_failed] = log_lines(worker_log if distributed else api_log, "agent call failed")
    assert (call_failed["intent"], call_failed["step"], call_failed["level"]) == ("bench_step", "bill", "warning")
    assert call_failed["instance_id"].startswith("structured_") and "'invoice'" in call_failed["error"], call_failed
    # The outage is said once, not per request that met it (four here, and every readiness probe after).
    said = [line["level"] for line in log_lines(api_log, "database unavailable")]
    assert said == ["warning"], log


def test_requests_during_an_outage_are_answered_503_in_seconds_not_at_the_pools_timeout(
    postgres_url: str, tmp_path: Path
) -> None:
    """Once the database has gone away, no connection is pooled: every request waited for the pool's 30 s
    timeout before its 503. The pool's last new connection failed, so each is answered at once."""
    with journeys_serve(postgres_url, tmp_path / "api.log", "--no-auth", *PLUGIN) as base:
        client = httpx.Client(base_url=base, timeout=120)
        try:
            assert journey(client, "before").json()["status"] == "completed"
            with outage(postgres_url):
                for call in (
                    lambda: client.get("/threads/00000000-0000-4000-8000-000000000000"),
                    lambda: client.post("/threads/search", json={"limit": 5}),
                    lambda: journey(client, "during"),
                    lambda: client.get("/ok", params={"check_db": 1}),
                    lambda: client.post("/threads/search", json={"limit": 5}),
                ):
                    began = time.monotonic()
                    answer = call()
                    took = time.monotonic() - began
                    assert answer.status_code == 503, answer.text
                    assert answer.json()["code"] == "DatabaseUnavailableError", answer.text
                    # Half the pool's timeout: a loaded machine's seconds pass, a wait for the pool does not.
                    assert took < POOL_TIMEOUT_S / 2, (
                        f"{answer.request.url} took {took:.1f} s to say the database is away"
                    )
            deadline = time.monotonic() + 60
            while client.get("/ok", params={"check_db": 1}).status_code != 200:
                assert time.monotonic() < deadline, "the server never saw the database again"
                time.sleep(0.2)
            assert journey(client, "after").json()["status"] == "completed"
        finally:
            client.close()


def test_a_worker_says_at_its_default_log_level_that_the_database_went_away_and_came_back(
    postgres_url: str, tmp_path: Path
) -> None:
    """`journeys worker` logged its "database unavailable" warning only with -v (its default level was
    ERROR): an operator saw nothing while it waited out an outage. It says so, and when it takes jobs again."""
    worker_log = tmp_path / "worker.log"
    with journeys_serve(postgres_url, tmp_path / "api.log", "--no-auth", "--distributed", *PLUGIN) as base:
        worker = start_worker(postgres_url, *PLUGIN, log=worker_log)
        client = httpx.Client(base_url=base, timeout=120)
        try:
            assert journey(client, "before").json()["status"] == "completed"
            with outage(postgres_url):
                deadline = time.monotonic() + 30
                while "database unavailable" not in worker_log.read_text():
                    assert time.monotonic() < deadline, worker_log.read_text()
                    time.sleep(0.2)
                time.sleep(8)  # the worker retries meanwhile (after 1, 2, 4 s): each try is no line of its own
            deadline = time.monotonic() + 60
            while "database available again" not in worker_log.read_text():
                assert time.monotonic() < deadline, worker_log.read_text()
                time.sleep(0.2)
            deadline = time.monotonic() + 60
            while client.get("/ok", params={"check_db": 1}).status_code != 200:
                assert time.monotonic() < deadline, "the server never saw the database again"
                time.sleep(0.2)
            assert journey(client, "after").json()["status"] == "completed"
            assert worker.poll() is None
        finally:
            client.close()
            stop_worker(worker)
    # The worker's first timer pass after the outage took an SQLAlchemy connection the outage had ended
    # and failed with its traceback: connections from before an outage are probed first.
    log = worker_log.read_text()
    assert "AdminShutdown" not in log, log
    assert "ended with status: Error" not in log, log
    # An outage was a flood: procrastinate's side tasks' tracebacks as its worker stopped, psycopg's pool's
    # "error connecting" per attempt, ours per retry. Now: the outage, one reason, its end; no traceback.
    assert "Traceback" not in log, log
    assert "Side task" not in log, log
    assert log.count("error connecting") <= 1, log
    assert log.count("database unavailable") == 1, log
    assert "database still unavailable" not in log, log
    assert log.count("database available again") == 1, log


async def test_an_engine_connection_the_outage_ended_is_replaced_not_handed_out(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Our SQLAlchemy engine does not probe its connections on every checkout (a round trip per query). When
    another part of the process saw the outage (procrastinate's pool, in a worker), a connection pooled
    before it was handed out dead afterwards, and the first call to take it (the worker's first timer pass)
    failed with AdminShutdown. A connection last used before the outage is now probed and replaced first."""
    for mark in ("at", "refused", "answered"):  # the process's outage marks, as they were, after the test
        monkeypatch.setattr(OUTAGE, mark, getattr(OUTAGE, mark))
    engine = create_engine_for(parse_store_url(postgres_url), pool_size=2)
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT 1"))).scalar() == 1
        with outage(postgres_url), pytest.raises(psycopg.OperationalError) as refused:
            await psycopg.AsyncConnection.connect(postgres_url)
        assert lost_database(refused.value) is not None  # as the worker's procrastinate pool reports it
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT 1"))).scalar() == 1
    finally:
        await engine.dispose()


def test_the_first_request_after_a_restart_nobody_saw_is_answered(postgres_url: str, tmp_path: Path) -> None:
    """A server idle through a fast database restart had no reason to think its pooled connections dead (used
    moments before, nothing sent on them since): the first request after it took one the restart had ended,
    and was answered 503 (AdminShutdown). A pooled connection the server ended has its end to read, so it
    is probed before it is handed out, in each of the process's pools, and replaced."""
    with journeys_serve(postgres_url, tmp_path / "api.log", "--no-auth", *PLUGIN) as base:
        client = httpx.Client(base_url=base, timeout=120)
        try:
            for attempt in range(3):
                assert journey(client, f"before{attempt}").json()["status"] == "completed"
                lifecycle = {"client_id": f"c{attempt}", "metrics": READY_TO_START}
                assert client.post("/journeys/lifecycle", json=lifecycle).status_code == 200
                with outage(postgres_url):
                    time.sleep(0.5)  # no request meanwhile: the server never sees the outage
                answer = journey(client, f"after{attempt}")
                assert answer.status_code == 200 and answer.json()["status"] == "completed", answer.text
                answer = client.post("/journeys/lifecycle", json={**lifecycle, "client_id": f"d{attempt}"})
                assert answer.status_code == 200, answer.text
        finally:
            client.close()


def test_a_worker_whose_listening_connection_is_ended_carries_on(postgres_url: str, tmp_path: Path) -> None:
    """A short outage, a failover or an administrator may end only the connection procrastinate's worker
    listens for new jobs on. Its side task failed, procrastinate stopped the worker as if asked to, and
    `journeys worker` exited 0, silently: jobs waited for a worker that was gone. It takes jobs again."""
    worker_log = tmp_path / "worker.log"
    with journeys_serve(postgres_url, tmp_path / "api.log", "--no-auth", "--distributed", *PLUGIN) as base:
        worker = start_worker(postgres_url, *PLUGIN, log=worker_log)
        client = httpx.Client(base_url=base, timeout=120)
        try:
            assert journey(client, "before").json()["status"] == "completed"
            parts = urlsplit(postgres_url)
            name = sql.Identifier(parts.path.lstrip("/"))
            with psycopg.connect(parts._replace(path="/postgres").geturl(), autocommit=True) as admin:
                # New connections refused for a moment, the listening one ended: the others carry on.
                admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(name))
                try:
                    listening = "datname = %s AND query ILIKE 'LISTEN%%procrastinate%%'"
                    ended = admin.execute(
                        f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE {listening}",
                        (parts.path.lstrip("/"),),
                    ).fetchall()
                    assert ended, "the worker listens for jobs"
                    time.sleep(2)
                finally:
                    admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(name))
            time.sleep(3)
            assert worker.poll() is None, worker_log.read_text()
            assert journey(client, "after").json()["status"] == "completed"
        finally:
            client.close()
            stop_worker(worker)


JOB: dict[str, Any] = {"id": 1, "queue": "journeys", "lock": None, "queueing_lock": None, "task_name": "t"}
BLIP = ("--plugin", "tests.blip_agents")  # blip: the run's next index write has its connection ended


@pytest.mark.parametrize("mode", ["embedded", "distributed"])
def test_a_run_the_database_blipped_under_finishes_its_journey(mode: str, postgres_url: str, tmp_path: Path) -> None:
    """A fast restart or a failover ended a connection while a run's step was writing on it, the database
    answering again at once. LangGraph recorded the driver's error (AdminShutdown) as the step's failure,
    and the run ended "error" with it: the user's journey stood failed at a step whose work was done. A worker
    whose job failed so while the database answered its end left the run "running" for good (procrastinate
    marked the job failed). Now the step runs again in the same run, and a run the database cut short is not
    finished as an error but executed again by its queue: the journey completes, each step once."""
    distributed = ["--distributed"] if mode == "distributed" else []
    mark = tmp_path / "blipped"
    env = {"JOURNEYS_BLIP_DB": postgres_url, "JOURNEYS_BLIP_MARK": str(mark)}
    steps = [{"step_id": f"s{i}", "mode": "auto", "agent": "blip"} for i in range(4)]
    spec = {"journey_type": "blip4", "steps": steps}
    worker_log = tmp_path / "worker.log"
    with journeys_serve(postgres_url, tmp_path / "api.log", "--no-auth", *distributed, *BLIP, env=env) as base:
        worker = start_worker(postgres_url, *BLIP, env=env, log=worker_log) if distributed else None
        try:
            with httpx.Client(base_url=base, timeout=120) as client:
                started = {"journey_type": "blip4", "spec": spec, "user_id": "u"}
                run = client.post("/runs/wait", json={"assistant_id": "structured", "input": started})
        finally:
            if worker is not None:
                stop_worker(worker)
    assert mark.exists()  # the blip happened
    answer = run.json()
    assert run.status_code == 200 and answer.get("status") == "completed", answer
    assert answer["completed_steps"] == ["s0", "s1", "s2", "s3"], answer
    with psycopg.connect(postgres_url) as conn:
        done = conn.execute("SELECT step FROM journey_events WHERE type = 'step.completed' ORDER BY seq").fetchall()
    assert [step for (step,) in done] == ["s0", "s1", "s2", "s3"]
    for log in (tmp_path / "api.log", worker_log):
        assert "Traceback" not in (log.read_text() if log.exists() else ""), log.read_text()


def run_statuses(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        return dict(conn.execute("SELECT status, count(*) FROM server_runs GROUP BY status").fetchall())


def test_an_outage_under_load_is_a_few_lines_in_the_worker_and_server_logs(postgres_url: str, tmp_path: Path) -> None:
    """PostgreSQL going away while a server and a worker were busy: psycopg's pool logged "discarding closed
    connection" for each pooled connection the outage ended, asyncio "Task exception was never retrieved" with
    a page of traceback for each procrastinate job whose end could not be saved (retried as stalled), and each
    run it cut short was logged "run failed" with its traceback. Now: one "discarding" line, the outage and its
    end, a cut-short job's line without traceback; every journey completes."""
    worker_log, api_log = tmp_path / "worker.log", tmp_path / "api.log"
    answers: list[int] = []
    stop = threading.Event()

    def load(client: httpx.Client) -> None:
        while not stop.is_set():
            try:
                answers.append(journey(client, "load").status_code)
            except httpx.HTTPError:
                answers.append(0)

    with journeys_serve(postgres_url, api_log, "--no-auth", "--distributed", *PLUGIN) as base:
        worker = start_worker(postgres_url, *PLUGIN, log=worker_log)
        client = httpx.Client(base_url=base, timeout=120)
        try:
            assert journey(client, "before").json()["status"] == "completed"
            with ThreadPoolExecutor(6) as pool:
                for _ in range(6):
                    pool.submit(load, client)
                time.sleep(2)
                with outage(postgres_url):
                    time.sleep(4)
                time.sleep(4)
                stop.set()
            deadline = time.monotonic() + 60
            while client.get("/ok", params={"check_db": 1}).status_code != 200:
                assert time.monotonic() < deadline, "the server never saw the database again"
                time.sleep(0.2)
            assert journey(client, "after").json()["status"] == "completed"
            deadline = time.monotonic() + 60  # the runs the outage cut short are executed again
            while set(statuses := run_statuses(postgres_url)) != {"success"}:
                assert time.monotonic() < deadline, statuses
                time.sleep(0.5)
        finally:
            client.close()
            stop_worker(worker)
    assert 200 in answers and set(answers) <= {200, 503}, answers
    for log in (worker_log.read_text(), api_log.read_text()):
        assert "Traceback" not in log, log
        assert "never retrieved" not in log, log
        assert log.count("discarding closed connection") <= 1, log


async def test_a_statement_timeout_is_the_runs_own_failure_not_an_outage_retried_for_ever(postgres_url: str) -> None:
    """PostgreSQL cancelling a statement (``statement_timeout``, ``pg_cancel_backend``) raises an
    ``OperationalError`` too, but the database answered: it is the run's failure, typed and ended, where a
    lost connection is an outage the run and its job wait out (their retries would repeat a timeout for ever)."""
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        await conn.execute("SET statement_timeout = 10")
        with pytest.raises(psycopg.errors.QueryCanceled) as cancelled:
            await conn.execute("SELECT pg_sleep(1)")
    before = OUTAGE.at
    assert lost_database(cancelled.value) is None
    assert OUTAGE.at == before  # no outage marked: the pool's connections are not probed for it
    assert not LOST_DATABASE_RETRY.retry_on(cancelled.value)  # type: ignore[operator]
    assert OutageRetry().get_retry_decision(exception=cancelled.value, job=None) is None  # type: ignore[arg-type]


async def test_deadlocks_and_lock_timeouts_are_conflicts_retried_a_few_times_not_outages_waited_out(
    postgres_url: str,
) -> None:
    """Every ``OperationalError`` counted as the database going away: a deadlock (40P01) or a lock timeout
    (55P03) was answered 503 "not reachable", and its run's job was retried with backoff for ever. They are the
    database's answers: conflicts, which a step retries a few times (``LOST_DATABASE_RETRY``'s attempts), a run's
    job three times at most, and HTTP answers 409 to try again. A connection ended (57P01) or refused for too many
    connections (53300) is still an outage."""
    conflicts: list[BaseException] = []
    async with (
        await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as one,
        await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as two,
    ):
        await one.execute("CREATE TABLE pair (id int PRIMARY KEY, n int)")
        await one.execute("INSERT INTO pair VALUES (1, 0), (2, 0)")

        async def cross(conn: psycopg.AsyncConnection[Any], first: int, second: int) -> None:
            async with conn.transaction():
                await conn.execute("UPDATE pair SET n = n + 1 WHERE id = %s", (first,))
                await asyncio.sleep(0.3)
                await conn.execute("UPDATE pair SET n = n + 1 WHERE id = %s", (second,))

        outcomes = await asyncio.gather(cross(one, 1, 2), cross(two, 2, 1), return_exceptions=True)
        [deadlock] = [o for o in outcomes if isinstance(o, BaseException)]
        assert isinstance(deadlock, psycopg.errors.DeadlockDetected)
        conflicts.append(deadlock)
        async with one.transaction():
            await one.execute("SELECT * FROM pair WHERE id = 1 FOR UPDATE")
            await two.execute("SET lock_timeout = 50")
            with pytest.raises(psycopg.errors.LockNotAvailable) as timed_out:
                await two.execute("UPDATE pair SET n = 0 WHERE id = 1")
        conflicts.append(timed_out.value)
    wrapped = create_engine_for(parse_store_url(postgres_url))
    try:
        async with wrapped.begin() as conn:  # through SQLAlchemy, as our tables' writes raise it
            await conn.execute(text("SET LOCAL lock_timeout = 50"))
            async with await psycopg.AsyncConnection.connect(postgres_url) as holder:
                await holder.execute("LOCK TABLE pair IN EXCLUSIVE MODE")
                with pytest.raises(SQLAlchemyOperationalError) as through_sqlalchemy:
                    await conn.execute(text("UPDATE pair SET n = 0"))
        conflicts.append(through_sqlalchemy.value)
    finally:
        await wrapped.dispose()
    before = OUTAGE.at
    for conflict in conflicts:
        assert lost_database(conflict) is None, conflict
        typed = database_conflict(conflict)
        assert typed is not None and typed.category == "conflict" and "try again" in typed.message
        assert LOST_DATABASE_RETRY.retry_on(conflict)  # type: ignore[operator]
        retries = [OutageRetry().get_retry_decision(exception=conflict, job=Job(attempts=n, **JOB)) for n in range(5)]
        assert [r is not None for r in retries] == [True, True, True, False, False]
    assert OUTAGE.at == before

    role = f"r_{uuid.uuid4().hex[:12]}"  # a superuser ignores connection limits: a role of its own has one
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN CONNECTION LIMIT 0").format(sql.Identifier(role)))
        try:
            with pytest.raises(psycopg.OperationalError) as too_many:
                parts = urlsplit(postgres_url)  # the same server (host and port, or a socket in the query), as the role
                psycopg.connect(parts._replace(netloc=f"{role}@{parts.netloc.rpartition('@')[2]}").geturl())
        finally:
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
    assert too_many.value.sqlstate == "53300" or "too many connections" in str(too_many.value)
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as ended:
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (ended.info.backend_pid,))
        with pytest.raises(psycopg.OperationalError) as shut_down:
            await ended.execute("SELECT 1")
    for outage_error in (too_many.value, shut_down.value):
        assert lost_database(outage_error) is not None, outage_error
        assert database_conflict(outage_error) is None
        assert OutageRetry().get_retry_decision(exception=outage_error, job=Job(attempts=9, **JOB)) is not None


async def test_a_periodic_pass_the_outage_cuts_ends_quietly_and_other_errors_still_fail_it(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker's timer pass (every second) or retention pass that met the outage ended its procrastinate job in
    error, with a traceback, in the worker's log beside its one "database unavailable" line (at load, on the
    worker test above: "ended with status: Error"). Its work is the next pass's: an outage ends it quietly. A
    pass that fails for another reason still fails, as it did."""
    for mark in ("at", "refused", "answered"):  # the process's outage marks, as they were, after the test
        monkeypatch.setattr(OUTAGE, mark, getattr(OUTAGE, mark))
    broken = False

    async def database_work() -> None:  # what a pass does first: take a connection
        if broken:
            raise ValueError("a bug in the pass")
        async with await psycopg.AsyncConnection.connect(postgres_url) as conn:
            await conn.execute("SELECT 1")

    app = build_app(postgres_url, {TIMER_TASK: database_work, RETENTION_TASK: database_work})
    for task in (TIMER_TASK, RETENTION_TASK):
        await app.tasks[task].func(timestamp=0)
        with outage(postgres_url):
            await app.tasks[task].func(timestamp=0)  # raised OperationalError before
    broken = True
    with pytest.raises(ValueError, match="a bug in the pass"):
        await app.tasks[TIMER_TASK].func(timestamp=0)

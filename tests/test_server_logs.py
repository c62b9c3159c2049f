"""The logging `journeys serve` and `journeys worker` set up: a failing request's traceback shows no local
variables (secrets in its input stayed out of the log), and rendering an event costs the same whatever
a request carried (it runs on the event loop)."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import structlog

from agents import AgentRequest
from checkpoints.redaction import REDACTED, mark_sensitive
from graphs import JourneyRuntime
from nodes.telemetry import trace_id_of
from server.logs import MAX_TRACEBACK_LINES, MAX_VALUE_CHARS, chosen_format, configure_logging
from server.runs.executor import RunExecutor
from server.runs.store import RunStore

SECRET = "sk-live-0123456789abcdef"


@pytest.fixture
def configured() -> Iterator[None]:
    saved = structlog.get_config()
    configure_logging(logging.INFO, "console")
    yield
    structlog.reset_defaults()
    structlog.configure(**saved)


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"token": SECRET, "blob": "x" * 100_000}
    for _ in range(depth):
        value = {"a": value}
    return value


def fail_deep(context: dict[str, Any], depth: int) -> None:
    secret = context  # a local holding the request's input, as LangGraph's frames hold it
    if depth:
        fail_deep(secret, depth - 1)
    raise TypeError("Recursion limit reached")


@pytest.mark.usefixtures("configured")
def test_a_failing_requests_traceback_shows_no_locals_and_is_bounded(capsys: pytest.CaptureFixture[str]) -> None:
    log = structlog.get_logger("journeys.runs")
    started = time.process_time()  # CPU time: a loaded box does not make the rendering look slow
    try:
        fail_deep(nested(255), 600)
    except TypeError:
        log.exception("run failed", run_id="r-1", context=nested(255), note="n" * 1_000_000)
    rendered = time.process_time() - started
    out = capsys.readouterr().out
    assert "run failed" in out and "r-1" in out
    assert "Traceback (most recent call last)" in out and "TypeError: Recursion limit reached" in out
    assert "fail_deep" in out  # the frames are there, their variables are not
    assert SECRET not in out and "secret =" not in out.replace("secret = context", "")
    assert "x" * 1000 not in out
    assert len(out) < 2 * (MAX_TRACEBACK_LINES + 10) * MAX_VALUE_CHARS // 10
    assert max(len(line) for line in out.splitlines()) < 4 * MAX_VALUE_CHARS  # the event line: three values
    assert rendered < 3.0  # it was 46 s with every local rendered


@pytest.mark.usefixtures("configured")
def test_levels_below_the_configured_one_are_dropped(capsys: pytest.CaptureFixture[str]) -> None:
    log = structlog.get_logger("journeys.server")
    log.debug("hidden")
    log.info("shown", value={"k": [1, 2, 3]})
    out = capsys.readouterr().out
    assert "hidden" not in out and "shown" in out and "{'k': [1, 2, 3]}" in out


@pytest.fixture
def json_logs() -> Iterator[None]:
    saved = structlog.get_config()
    configure_logging(logging.INFO, "json")
    yield
    structlog.reset_defaults()
    structlog.configure(**saved)


def test_json_lines_by_default_off_a_terminal_and_console_lines_in_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNEYS_LOG_FORMAT", raising=False)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False)
    assert chosen_format() == "json"
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert chosen_format() == "console"
    monkeypatch.setenv("JOURNEYS_LOG_FORMAT", "json")
    assert chosen_format() == "json"


@pytest.mark.usefixtures("json_logs")
def test_a_json_lines_traceback_has_no_locals_and_is_bounded(capsys: pytest.CaptureFixture[str]) -> None:
    try:
        fail_deep(nested(255), 600)
    except TypeError:
        structlog.get_logger("journeys.runs").exception("run failed", run_id="r-1", context=nested(255))
    [line] = capsys.readouterr().out.splitlines()
    event = json.loads(line)
    assert (event["event"], event["run_id"], event["level"]) == ("run failed", "r-1", "error")
    assert "TypeError: Recursion limit reached" in event["exception"] and "fail_deep" in event["exception"]
    assert SECRET not in line and len(line) < (MAX_TRACEBACK_LINES + 10) * MAX_VALUE_CHARS // 10


@pytest.mark.usefixtures("json_logs")
async def test_every_line_of_a_run_carries_its_journey_context(
    sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A line an agent logs, and the line the agent-call path logs when the agent fails, both carry the
    journey, instance, run, node, attempt and trace id; the run is executed by the server's executor."""

    def flaky(request: AgentRequest) -> dict[str, Any]:
        structlog.get_logger("my.agent").info("agent working", files=request.payload["step_result"]["files"])
        if request.attempt == 1:
            raise ConnectionError("flaky")
        return {"ok": True}

    async with JourneyRuntime.open(sqlite_url) as runtime:
        runtime.agents.register("upload_content", flaky, replace=True)
        journey = await runtime.structured.design_journey("content_migration", {})
        instance_id = (await runtime.structured.execute_journey(journey["journey_id"], "ana", {}))["instance_id"]
        runs = RunStore(runtime.store.backend, runtime.store.clock)
        thread = await runs.create_thread(None, {}, "local")
        await runs.bind(thread.thread_id, "structured", instance_id)
        run = await runs.create_run(
            thread_id=thread.thread_id,
            assistant_id="structured",
            kind="resume",
            input=None,
            command={"resume": {"files": 2}},
            stream_modes=(),
            multitask_strategy="reject",
            metadata={},
            principal="local",
        )
        capsys.readouterr()
        executed = await RunExecutor(runtime, runs).execute(run.run_id)
    assert executed is not None and executed.status == "success"
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    working = [line for line in lines if line["event"] == "agent working"]
    assert [line["attempt"] for line in working] == [1, 2]
    for line in working:
        assert line["instance_id"] == instance_id and line["journey_id"] == journey["journey_id"]
        assert (line["run_id"], line["node"], line["intent"]) == (run.run_id, "upload_content", "upload_content")
        assert line["trace_id"] == trace_id_of(instance_id) and line["pattern"] == "structured"
        assert line["files"] == 2 and line["level"] == "info"


@pytest.mark.usefixtures("json_logs")
def test_a_specs_sensitive_marks_spare_a_log_lines_own_fields(capsys: pytest.CaptureFixture[str]) -> None:
    """A design marking the names the server logs by (thread_id, status) blanks them inside the journey values
    a line carries, not the line's own fields, which every operator greps for."""
    mark_sensitive(["thread_id", "status"])
    structlog.get_logger("journeys.runs").info(
        "run finished", thread_id="t-1", status="success", context={"status": "vip", "token": SECRET}
    )
    [line] = capsys.readouterr().out.splitlines()
    event = json.loads(line)
    assert (event["thread_id"], event["status"]) == ("t-1", "success")
    assert event["context"] == repr({"status": REDACTED, "token": REDACTED})  # a value is shown by its repr


def test_a_job_the_database_outage_cut_short_is_one_line_with_its_reason(caplog: pytest.LogCaptureFixture) -> None:
    """procrastinate logs a failed job with its traceback: a job running when PostgreSQL went away (a timer
    pass, a run) printed a page of driver frames. Such a job keeps its line and the reason; a job failing
    for any other reason keeps its traceback."""
    configure_logging(logging.WARNING)
    worker = logging.getLogger("procrastinate.worker")
    for error in (psycopg.errors.AdminShutdown("terminating connection due to administrator command"), KeyError("x")):
        try:
            raise RuntimeError("the job failed") from error
        except RuntimeError as exc:
            worker.error(
                "Job journeys.fire_timers[4]() ended with status: Error", exc_info=exc, extra={"action": "job_error"}
            )
    lost, failed = caplog.records[-2:]
    assert lost.exc_info is None and lost.getMessage() == (
        "Job journeys.fire_timers[4]() ended with status: Error "
        "(the database went away: terminating connection due to administrator command)"
    )
    assert failed.exc_info is not None and failed.getMessage().endswith("status: Error")


async def test_the_connections_an_outage_ended_are_one_line_not_one_each(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An outage ends every pooled connection at once, and psycopg's pool logged "discarding closed
    connection" for each one in use as it went back (a busy server: a page of them). The first is shown,
    the rest of that burst not."""
    from checkpoints.backends.postgres import open_pool
    from checkpoints.url import parse_store_url

    configure_logging(logging.WARNING)
    async with open_pool(parse_store_url(postgres_url), 4) as pool:
        taken = [await pool.getconn() for _ in range(4)]
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            pids = [conn.info.backend_pid for conn in taken]
            admin.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (pids,))
        for conn in taken:
            with pytest.raises(psycopg.OperationalError):
                await conn.execute("SELECT 1")
            await pool.putconn(conn)
    discarded = [r for r in caplog.records if r.getMessage().startswith("discarding closed connection")]
    assert len(discarded) == 1, [r.getMessage() for r in caplog.records]


def test_a_job_task_whose_end_the_outage_kept_from_being_saved_is_no_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """procrastinate saves a job's end in a task of its own: when the database was away then, asyncio logged
    "Task exception was never retrieved" with a page of traceback per job (which is retried as stalled once
    the worker's heartbeat stops). That line is dropped when the error is the database being unreachable; any
    other task's lost exception still shows."""
    import asyncio

    from psycopg_pool import PoolTimeout

    configure_logging(logging.WARNING)

    async def lose(error: Exception) -> None:
        async def fail() -> None:
            raise error

        task = asyncio.get_running_loop().create_task(fail())
        await asyncio.sleep(0)
        del task  # never awaited: asyncio reports its exception as the task goes

    for error in (PoolTimeout("no connection to the database"), KeyError("x")):
        try:
            raise RuntimeError("Database error.") from error
        except RuntimeError as exc:
            asyncio.run(lose(exc))
    lost = [r for r in caplog.records if "never retrieved" in r.getMessage()]
    assert len(lost) == 1, [r.getMessage() for r in caplog.records]
    shown = lost[0].exc_info[1] if lost[0].exc_info else None
    assert shown is not None and isinstance(shown.__cause__, KeyError)

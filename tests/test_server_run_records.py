"""What a run row keeps and how it reaches the queue: its recorded output is the thread's output, a run
and its queue job are committed together or not at all, and a running run in a worker can be cancelled."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from agents import AgentRegistry, AgentRequest, EchoAgent
from graphs.guide import guide_graph
from graphs.runtime import JourneyRuntime
from server.app import create_app
from server.assistants import get_assistant, instance_graph
from server.queues.procrastinate import QUEUE, build_app, enqueuer, ensure_schema
from server.runs import executor as executor_module
from server.runs.executor import RunExecutor, thread_output
from server.runs.store import RunRow, RunStore
from server.settings import Settings
from tests.forked import JourneysProcess, journeys
from tests.server_support import serving, structured_run

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
MIGRATION = {"journey_type": "content_migration", "requirements": {"source": "a", "target": "b"}, "user_id": "ana"}


@pytest.fixture
async def runtime(durable_url: str) -> AsyncIterator[JourneyRuntime]:
    async with JourneyRuntime.open(durable_url) as opened:
        yield opened


async def test_a_runs_recorded_output_is_the_threads_output(runtime: JourneyRuntime) -> None:
    runs = RunStore(runtime.store.backend, runtime.store.clock)
    executor = RunExecutor(runtime, runs, durability="exit")
    first = await executor.execute((await structured_run(runs, None, "start", input=MIGRATION)).run_id)
    assert first is not None and first.status == "success"
    thread = await runs.get_thread(first.thread_id)
    assert thread is not None and thread.instance_id is not None
    structured = get_assistant("structured")
    # Stopped at the first human step: values, the interrupt and the journey's view, as read back fresh.
    assert first.output == await thread_output(runtime, structured, thread.instance_id)
    assert first.output["current_step"] == "upload_content" and first.output["__interrupt__"]
    answers = [{"files": 3}, {"entities": 2}, {"validated": True}, {"approved": True}, {"done": True}]
    for answer in answers:
        resumed = await executor.execute(
            (await structured_run(runs, first.thread_id, "resume", command={"resume": answer})).run_id
        )
        assert resumed is not None and resumed.status == "success", resumed
        assert resumed.output == await thread_output(runtime, structured, thread.instance_id)
        if resumed.output["status"] == "completed":
            break
    assert resumed.output["status"] == "completed" and "__interrupt__" not in resumed.output


async def test_a_run_and_its_queue_job_commit_together(postgres_url: str) -> None:
    ensure_schema(postgres_url)
    queue = build_app(postgres_url)
    async with queue.open_async(), JourneyRuntime.open(postgres_url) as runtime:
        runs = RunStore(runtime.store.backend, runtime.store.clock)
        enqueue = enqueuer(queue)

        async def create(
            thread_id: str | None,
            run_id: str | None = None,
            resume: bool = False,
            options: dict[str, Any] | None = None,
        ) -> RunRow:
            return await runs.create_run(
                thread_id=thread_id,
                assistant_id="structured",
                kind="resume" if resume else "start",
                input=None if resume else MIGRATION,
                command={"resume": {}} if resume else None,
                stream_modes=[],
                multitask_strategy="enqueue",
                metadata={},
                principal="ana",
                enqueue=enqueue,
                run_id=run_id,
                options=options,
            )

        first = await create(None)  # a new thread with its first run and its job: one statement
        assert first.job_id is not None
        stored = await runs.get_run(first.run_id)
        assert stored is not None and stored.job_id == first.job_id
        # The job is written, then the run's row is refused (its id is taken): nothing of it stays.
        with pytest.raises(psycopg.errors.UniqueViolation):
            await create(None, run_id=first.run_id)
        # A run on an existing thread goes through the other path (the thread is locked first).
        second = await create(first.thread_id, resume=True)
        assert second.job_id is not None and second.job_id != first.job_id
        with pytest.raises(psycopg.errors.UniqueViolation):
            await create(first.thread_id, run_id=second.run_id, resume=True)
        # A delayed run (after_seconds): its job waits in the queue until the run's due time.
        due = runtime.store.clock.now() + timedelta(hours=1)
        delayed = await create(None, options={"not_before": due.isoformat()})
    with psycopg.connect(postgres_url) as conn:
        jobs = conn.execute(
            "SELECT id, args->>'run_id', lock, queue_name FROM procrastinate_jobs ORDER BY id"
        ).fetchall()
        scheduled = conn.execute(
            "SELECT scheduled_at FROM procrastinate_jobs WHERE id = %s", (delayed.job_id,)
        ).fetchone()
        runs_left = conn.execute("SELECT run_id FROM server_runs ORDER BY created_at").fetchall()
        threads = conn.execute("SELECT count(*) FROM server_threads").fetchone()
    # Nothing of the failed ones: no job, no run, no thread. The jobs are procrastinate's, as its defer writes them.
    lock = f"thread:{first.thread_id}"
    assert jobs[:2] == [(first.job_id, first.run_id, lock, QUEUE), (second.job_id, second.run_id, lock, QUEUE)]
    assert jobs[2:] == [(delayed.job_id, delayed.run_id, f"thread:{delayed.thread_id}", QUEUE)]
    assert scheduled == (due,)
    assert runs_left == [(first.run_id,), (second.run_id,), (delayed.run_id,)] and threads == (2,)


async def blocking_step(request: AgentRequest) -> dict[str, Any]:
    await asyncio.sleep(600)  # until the run is cancelled
    return {"done": request.step}


def register_blocking(registry: AgentRegistry) -> None:
    registry.register("blocking_step", blocking_step, replace=True)


BLOCKING = {"journey_type": "blocking", "steps": [{"step_id": "wait", "mode": "auto", "agent": "blocking_step"}]}


def start_worker(url: str) -> JourneysProcess:
    return journeys(["worker", "--database-url", url, "--plugin", "tests.test_server_run_records:register_blocking"])


async def test_cancelling_a_run_a_worker_is_executing_stops_it(postgres_url: str) -> None:
    ensure_schema(postgres_url)
    worker = start_worker(postgres_url)
    app = create_app(Settings(database_url=postgres_url, auth=False, execution="distributed"))
    try:
        with serving(app) as base:
            async with httpx.AsyncClient(base_url=base, timeout=60) as client:
                created = await client.post(
                    "/runs",
                    json={
                        "assistant_id": "structured",
                        "input": {"journey_type": "blocking", "spec": BLOCKING, "user_id": "ana"},
                    },
                )
                run = created.json()
                path = f"/threads/{run['thread_id']}/runs/{run['run_id']}"
                deadline = time.monotonic() + 60
                while (await client.get(path)).json()["status"] != "running":
                    assert time.monotonic() < deadline, "the worker never took the run"
                    await asyncio.sleep(0.1)
                began = time.monotonic()
                cancelled = await client.post(f"{path}/cancel", params={"wait": True})
                assert cancelled.status_code == 202
                assert cancelled.json()["status"] == "interrupted"
                assert time.monotonic() - began < 30  # aborted, not waited out (the step sleeps 600 s)
                assert cancelled.json()["error"]["error"] == "Cancelled"
    finally:
        worker.terminate()
        worker.wait(timeout=60)


async def test_cancelling_a_queued_run_cancels_its_job(postgres_url: str) -> None:
    ensure_schema(postgres_url)
    app = create_app(Settings(database_url=postgres_url, auth=False, execution="distributed"))
    with serving(app) as base:  # no worker: the run stays queued
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:
            run = (
                await client.post(
                    "/runs", json={"assistant_id": "structured", "input": {"journey_type": "content_migration"}}
                )
            ).json()
            path = f"/threads/{run['thread_id']}/runs/{run['run_id']}"
            cancelled = await client.post(f"{path}/cancel")
            assert cancelled.status_code == 202 and cancelled.json()["status"] == "interrupted"
    with psycopg.connect(postgres_url) as conn:
        jobs = conn.execute("SELECT status FROM procrastinate_jobs WHERE args->>'run_id' = %s", (run["run_id"],))
        assert [status for (status,) in jobs] == ["cancelled"]  # no worker will ever take it


@pytest.mark.parametrize("assistant_id", ["structured", "saga"])
async def test_a_start_refused_for_bad_input_leaves_the_thread_free(runtime: JourneyRuntime, assistant_id: str) -> None:
    runs = RunStore(runtime.store.backend, runtime.store.clock)
    executor = RunExecutor(runtime, runs, durability="exit")

    async def start(thread_id: str | None, context: Any) -> RunRow:
        run = await runs.create_run(
            thread_id=thread_id,
            assistant_id=assistant_id,
            kind="start",
            input={**MIGRATION, "context": context},
            command=None,
            stream_modes=[],
            multitask_strategy="reject",
            metadata={},
            principal="ana",
        )
        done = await executor.execute(run.run_id)
        assert done is not None
        return done

    refused = await start(None, ["not", "a", "mapping"])
    assert refused.status == "error" and refused.error["error"] == "InvalidInputError"
    thread = await runs.get_thread(refused.thread_id)
    assert thread is not None and thread.instance_id is None  # not bound to a journey that never started
    started = await start(refused.thread_id, {"team": "a"})
    assert started.status == "success" and started.output["current_step"] == "upload_content"


async def test_run_executors_sharing_a_runtime_hear_each_status_change_once(
    runtime: JourneyRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each RunExecutor registered the event log's status listener again: a process with several over one runtime
    (an embedded app with two, tests) called it once per executor for every status a node committed."""
    heard: list[tuple[str, str]] = []
    note = executor_module._note_status

    async def counted(instance_id: str, status: str) -> None:
        heard.append((instance_id, status))
        await note(instance_id, status)

    monkeypatch.setattr(executor_module, "_note_status", counted)
    runtime.agents.register("echo", EchoAgent("echo", {"ok": True}), replace=True)
    runs = RunStore(runtime.store.backend, runtime.store.clock)
    executors = [RunExecutor(runtime, runs, durability="exit") for _ in range(2)]
    three = {"journey_type": "three", "spec": THREE_AUTO, "user_id": "ana"}
    started = await executors[0].execute((await structured_run(runs, None, "start", input=three)).run_id)
    assert started is not None and started.status == "success"
    thread = await runs.get_thread(started.thread_id)
    assert thread is not None and thread.instance_id is not None
    assert heard == [(thread.instance_id, "completed")]


async def test_a_cancel_that_reached_a_run_whose_worker_died_holds_on_retry(runtime: JourneyRuntime) -> None:
    """The cancel of an executing run is remembered on the run: when its worker died before stopping it
    and the queue retries its job, the retry ends it interrupted instead of running it."""
    runs = RunStore(runtime.store.backend, runtime.store.clock)
    executor = RunExecutor(runtime, runs, durability="exit")
    run = await structured_run(runs, None, "start", input=MIGRATION)
    assert await runs.claim(run.run_id) is not None  # a worker took it, then died
    await runs.request_cancel(run.run_id)  # the cancel arrives (the abort reaches no one)
    retried = await executor.execute(run.run_id)  # the reaper's retry
    assert retried is not None and retried.status == "interrupted"
    thread = await runs.get_thread(run.thread_id)
    assert thread is not None and thread.instance_id is None  # nothing of the journey ran
    assert await runtime.store.index.list_instances(limit=10) == []


async def test_a_retry_after_the_run_deleted_its_thread_does_not_start_again(store_url: str) -> None:
    """A stateless run deletes its thread as it ends (``on_completion="delete"``); when its worker died after
    that and before recording the end, the queue's retry finds no thread: the run ends as done, and its journey
    is not started a second time."""
    async with JourneyRuntime.open(store_url) as runtime:
        runs = RunStore(runtime.store.backend, runtime.store.clock)
        run = await runs.create_run(
            thread_id=None,
            assistant_id="structured",
            kind="start",
            input=MIGRATION,
            command=None,
            stream_modes=[],
            multitask_strategy="reject",
            metadata={},
            principal="ana",
            options={"on_completion": "delete"},
        )
        assert await runs.claim(run.run_id) is not None  # a worker took it ...
        await runs.delete_thread(run.thread_id, runs=False)  # ... did its work, deleted its thread, and died
        retried = await RunExecutor(runtime, runs, durability="exit").execute(run.run_id)  # the queue's retry
        assert retried is not None and retried.status == "success"
        assert await runtime.store.index.list_instances(limit=10) == []
        assert await runs.get_thread(run.thread_id) is None


class DiesAtTheEnd(RunStore):
    """A worker's run store that dies as it would record a run's end: the run's work is committed, its end not."""

    async def finish(self, *args: Any, **kwargs: Any) -> RunRow | None:
        raise WorkerDied("the worker died before the run's end was recorded")


class WorkerDied(Exception):
    """A worker's death (:class:`DiesAtTheEnd`)."""


@pytest.mark.parametrize("turns_before", [0, 1])
async def test_a_chat_run_retried_after_its_worker_died_at_its_end_takes_its_turn_once(
    store_url: str, turns_before: int
) -> None:
    """A guide run whose worker (or embedded server) died after the turn was committed and before the run's end
    was recorded: the queue's retry (the restarted server's) took the turn again, the user's message and the
    guide's answer twice on the thread. The retry sees the thread moved on from the base the first attempt noted
    and finishes what it left in flight instead; on a fresh thread and on one with turns before alike."""
    async with JourneyRuntime.open(store_url) as runtime:
        runs = RunStore(runtime.store.backend, runtime.store.clock)
        thread_id = None
        for _ in range(turns_before):
            earlier = await runs.create_run(**guide_run(thread_id, "what next?"))
            thread_id = earlier.thread_id
            assert (await RunExecutor(runtime, runs).execute(earlier.run_id) or earlier).status == "success"
        run = await runs.create_run(**guide_run(thread_id, "where am I?"))
        dying = DiesAtTheEnd(runtime.store.backend, runtime.store.clock)
        with pytest.raises(WorkerDied):
            await RunExecutor(runtime, dying).execute(run.run_id)
        said = await guide_messages(runtime, run.thread_id)
        assert said[-4][1] == "where am I?" and len(said) == 4 * (turns_before + 1), said
        retried = await RunExecutor(runtime, runs).execute(run.run_id)  # the queue's retry
        assert retried is not None and retried.status == "success", retried
        assert await guide_messages(runtime, run.thread_id) == said
        assert retried.output is not None and len(retried.output["messages"]) == len(said)


def guide_run(thread_id: str | None, said: str) -> dict[str, Any]:
    """``RunStore.create_run``'s arguments for a guide turn saying ``said`` (on a new thread: ``thread_id`` None)."""
    return {
        "thread_id": thread_id,
        "assistant_id": "guide",
        "kind": "start",
        "input": {"messages": [said]},
        "command": None,
        "stream_modes": [],
        "multitask_strategy": "reject",
        "metadata": {},
        "principal": "ana",
    }


async def guide_messages(runtime: JourneyRuntime, thread_id: str) -> list[tuple[str, Any]]:
    """The guide thread's messages, by type and content."""
    state = await guide_graph(runtime).aget_state(runtime.engine.config(thread_id))
    return [(m.type, m.content) for m in state.values["messages"]]


THREE_AUTO = {
    "journey_type": "three",
    "steps": [{"step_id": f"s{i}", "mode": "auto", "agent": "echo"} for i in range(3)],
}


@pytest.mark.parametrize(("requested", "per_step"), [(None, False), ("exit", False), ("async", True), ("sync", True)])
async def test_a_run_checkpoints_as_its_client_asked(
    runtime: JourneyRuntime, requested: str | None, per_step: bool
) -> None:
    runtime.agents.register("echo", EchoAgent("echo", {"ok": True}), replace=True)
    runs = RunStore(runtime.store.backend, runtime.store.clock)
    executor = RunExecutor(runtime, runs, durability="exit")  # the server's default
    run = await runs.create_run(
        thread_id=None,
        assistant_id="structured",
        kind="start",
        input={"journey_type": "three", "spec": THREE_AUTO, "user_id": "ana"},
        command=None,
        stream_modes=[],
        multitask_strategy="reject",
        metadata={},
        principal="ana",
        durability=requested,
    )
    done = await executor.execute(run.run_id)
    assert done is not None and done.status == "success" and done.output["status"] == "completed"
    assert done.view()["kwargs"]["durability"] == requested
    thread = await runs.get_thread(run.thread_id)
    assert thread is not None and thread.instance_id is not None
    graph = await instance_graph(runtime, thread.instance_id)
    checkpoints = [c async for c in graph.aget_state_history(runtime.engine.config(thread.instance_id))]
    # After every step: input, start and one per step; where it stops: the one it ended with.
    assert (len(checkpoints) > 3) is per_step, len(checkpoints)

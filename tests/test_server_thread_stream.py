"""A thread's stream (``threads.join_stream``) as the Agent Server serves it, through langgraph-sdk over real HTTP:
it goes on from run to run (``metadata`` ``{"status": "run_done"}`` between them) instead of ending with the
first, is live without ``Last-Event-ID``, and resumes after any event with it, across runs."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import httpx
import pytest
from langgraph_sdk import get_client
from langgraph_sdk.client import LangGraphClient
from langgraph_sdk.errors import UnprocessableEntityError
from langgraph_sdk.schema import StreamPart

from checkpoints.clock import VirtualClock
from server import thread_stream
from server.app import create_app
from server.queues.procrastinate import ensure_schema
from server.settings import Settings
from tests.server_support import StreamsOpened, serving, start_worker, stop_worker, v3_events

pytestmark = pytest.mark.slow

HELLO = {"messages": [{"role": "user", "content": "what next?"}]}


def run_done(part: StreamPart) -> bool:
    return part.event == "metadata" and isinstance(part.data, dict) and part.data.get("status") == "run_done"


async def until_runs_done(client: LangGraphClient, thread_id: str, runs: int, **options: Any) -> list[StreamPart]:
    """The thread's stream until ``runs`` runs have ended on it (the stream itself never ends)."""
    parts: list[StreamPart] = []
    async for part in await client.threads.join_stream(thread_id, **options):
        parts.append(part)
        assert part.event != "end", parts  # the thread's stream goes on after a run
        if sum(map(run_done, parts)) == runs:
            return parts
    raise AssertionError(f"the thread's stream ended: {parts}")


async def chat_run(client: LangGraphClient, thread_id: str) -> str:
    """One message to the guide on the thread, its values recorded; its run's id once it has ended."""
    run = await client.runs.create(thread_id, "guide", input=HELLO, stream_mode="values")
    await client.runs.join(thread_id, run["run_id"])
    return str(run["run_id"])


def per_run(parts: Sequence[StreamPart]) -> list[tuple[str, list[str]]]:
    """The stream as (run id, its events in order), checking each run opens with its metadata and ends with
    run_done."""
    found: list[tuple[str, list[str]]] = []
    for part in parts:
        if part.event == "metadata" and "attempt" in part.data:
            found.append((part.data["run_id"], ["metadata"]))
        else:
            found[-1][1].append("run_done" if run_done(part) else part.event)
            if run_done(part):
                assert part.data["run_id"] == found[-1][0]
    return found


async def test_a_threads_stream_goes_on_from_run_to_run_and_resumes_after_any_event(
    sdk_client: LangGraphClient,
) -> None:
    """The stream served one run, then ``end``: a UI following a thread missed every later message."""
    tid = (await sdk_client.threads.create())["thread_id"]
    opened = StreamsOpened(sdk_client)
    following = asyncio.ensure_future(until_runs_done(sdk_client, tid, 2))
    await opened.reach(1)  # the stream is open: it serves what comes from now on
    first, second = [await chat_run(sdk_client, tid) for _ in range(2)]
    live = await asyncio.wait_for(following, 60)
    assert [(run_id, events[0], events[-1]) for run_id, events in per_run(live)] == [
        (first, "metadata", "run_done"),
        (second, "metadata", "run_done"),
    ]
    assert all(set(events[1:-1]) == {"values"} for _, events in per_run(live)), per_run(live)
    ids = [int(p.id) for p in live if p.id is not None]
    assert len(ids) == len(live) and ids == sorted(set(ids)), ids  # unique in the thread, in order

    # Replayed from the start, the thread's stream is the same; resumed after any event, what came after it.
    assert [(p.event, p.id, p.data) for p in await until_runs_done(sdk_client, tid, 2, last_event_id="-1")] == [
        (p.event, p.id, p.data) for p in live
    ]
    for i in (0, 1, len(live) // 2, [run_done(p) for p in live].index(True)):
        after = await until_runs_done(sdk_client, tid, sum(map(run_done, live[i + 1 :])), last_event_id=live[i].id)
        assert [(p.event, p.id) for p in after] == [(p.event, p.id) for p in live[i + 1 :]]


async def test_a_threads_stream_is_live_without_last_event_id(sdk_client: LangGraphClient) -> None:
    """Joined after a run ended, the stream does not replay it (the Agent Server's is live too): it serves the
    next run, and with ``stream_mode="lifecycle"`` only the runs' metadata."""
    tid = (await sdk_client.threads.create())["thread_id"]
    earlier = await chat_run(sdk_client, tid)
    opened = StreamsOpened(sdk_client)
    following = asyncio.ensure_future(until_runs_done(sdk_client, tid, 1))
    lifecycle = asyncio.ensure_future(until_runs_done(sdk_client, tid, 1, stream_mode="lifecycle"))
    await opened.reach(2)
    later = await chat_run(sdk_client, tid)
    parts, ends = await asyncio.wait_for(asyncio.gather(following, lifecycle), 60)
    assert [run_id for run_id, _ in per_run(parts)] == [later] != [earlier]
    assert [(p.event, p.data) for p in ends] == [
        ("metadata", {"run_id": later, "attempt": 1}),
        ("metadata", {"status": "run_done", "run_id": later}),
    ]


async def test_a_threads_stream_serves_a_run_created_once_its_headers_came(store_url: str) -> None:
    """A client that has a live stream's headers and then creates a run is served that run: the stream fixed
    where it starts only after its headers went out, so a run created meanwhile that ended (or began) before
    that was skipped (or cut). Here the stream's start is held until the run has ended (or 3 s)."""
    app = create_app(Settings(database_url=store_url, auth=False))
    with serving(app) as base:
        runs = app.state.services.runs
        ended = threading.Event()
        last_run = runs.last_run

        async def held(thread_id: str) -> Any:
            await asyncio.to_thread(ended.wait, 3)
            return await last_run(thread_id)

        runs.last_run = held
        async with get_client(url=base, api_key=None) as client:
            tid = (await client.threads.create())["thread_id"]
            opened = StreamsOpened(client)
            following = asyncio.ensure_future(until_runs_done(client, tid, 1))
            await opened.reach(1)
            ran = await chat_run(client, tid)
            ended.set()
            assert [run_id for run_id, _ in per_run(await asyncio.wait_for(following, 30))] == [ran]


async def test_a_threads_stream_mode_that_is_no_threads_is_refused(sdk_client: LangGraphClient) -> None:
    """A run's stream mode given to a thread's stream is refused, naming the thread's (it was ignored)."""
    tid = (await sdk_client.threads.create())["thread_id"]
    with pytest.raises(UnprocessableEntityError, match="run_modes"):
        async for _ in await sdk_client.threads.join_stream(tid, stream_mode="values"):  # type: ignore[arg-type]
            pass


async def test_a_threads_stream_hears_each_run_without_polling(store_url: str) -> None:
    """With the fallback re-read an hour away, every run's events still come as they happen: the stream watches
    a run it has just found before it reads it again (a run that ran between the two was heard only at the
    next poll, a second later by default)."""
    app = create_app(Settings(database_url=store_url, auth=False, poll_interval=3600))
    with serving(app) as base:
        async with get_client(url=base, api_key=None) as client:
            tid = (await client.threads.create())["thread_id"]
            opened = StreamsOpened(client)
            following = asyncio.ensure_future(until_runs_done(client, tid, 3))
            await opened.reach(1)
            ran = [await chat_run(client, tid) for _ in range(3)]
            assert [run_id for run_id, _ in per_run(await asyncio.wait_for(following, 60))] == ran


async def test_a_threads_stream_hears_a_run_created_through_another_api_process(postgres_url: str) -> None:
    """Two API processes on one PostgreSQL and a worker (distributed mode), each process's fallback re-read an
    hour away: the runs created through one reach a stream of their thread opened on the other as they happen
    (the run's creation is noticed like its chunks and its end; it was heard only at the next poll)."""
    ensure_schema(postgres_url)
    worker = start_worker(postgres_url)
    try:
        settings = Settings(database_url=postgres_url, auth=False, execution="distributed", poll_interval=3600)
        with serving(create_app(settings)) as first, serving(create_app(settings)) as second:
            async with get_client(url=first, api_key=None) as one, get_client(url=second, api_key=None) as other:
                tid = (await one.threads.create())["thread_id"]
                opened = StreamsOpened(other)
                following = asyncio.ensure_future(until_runs_done(other, tid, 2))
                await opened.reach(1)  # open on the other process (a 3 s sleep was too short at load ~8: CI)
                ran = [await chat_run(one, tid) for _ in range(2)]
                assert [run_id for run_id, _ in per_run(await asyncio.wait_for(following, 30))] == ran
    finally:
        stop_worker(worker)


async def _thread_events(client: LangGraphClient, thread_id: str) -> list[str]:
    return [p.event async for p in await client.threads.join_stream(thread_id)]


async def test_a_threads_stream_ends_as_its_thread_is_deleted_without_polling(store_url: str) -> None:
    """The fallback re-read an hour away: a stream waiting on a thread ends as soon as the thread is deleted (the
    delete was noticed by nobody: the stream ended only at its next re-read, a second later by default)."""
    with serving(create_app(Settings(database_url=store_url, auth=False, poll_interval=3600))) as base:
        async with get_client(url=base, api_key=None) as client:
            tid = (await client.threads.create())["thread_id"]
            opened = StreamsOpened(client)
            following = asyncio.ensure_future(_thread_events(client, tid))
            await opened.reach(1)
            await client.threads.delete(tid)
            assert await asyncio.wait_for(following, 10) == ["end"]


async def test_a_threads_stream_ends_as_its_thread_is_deleted_through_another_api_process(postgres_url: str) -> None:
    """Two API processes on one PostgreSQL, each one's fallback re-read an hour away: a stream of a thread opened
    on one ends as soon as the thread is deleted through the other (the delete notifies, as a run's creation
    does)."""
    ensure_schema(postgres_url)
    settings = Settings(database_url=postgres_url, auth=False, execution="distributed", poll_interval=3600)
    with serving(create_app(settings)) as first, serving(create_app(settings)) as second:
        async with get_client(url=first, api_key=None) as one, get_client(url=second, api_key=None) as other:
            tid = (await one.threads.create())["thread_id"]
            opened = StreamsOpened(other)
            following = asyncio.ensure_future(_thread_events(other, tid))
            await opened.reach(1)
            await one.threads.delete(tid)
            assert await asyncio.wait_for(following, 10) == ["end"]


async def test_an_idle_threads_stream_does_not_read_its_thread_at_every_poll(store_url: str) -> None:
    """A stream of a thread with no run under way waits for notices (every change it waits for is noticed): it
    re-read the thread's runs at every fallback poll (every second by default, for each of up to a hundred
    streams per caller), and now does so thirty times as seldom; a run still starts it at once."""
    app = create_app(Settings(database_url=store_url, auth=False, poll_interval=0.05))
    with serving(app) as base:
        runs = app.state.services.runs
        reads = 0
        list_runs = runs.list_runs

        async def counted(*args: Any, **kwargs: Any) -> Any:
            nonlocal reads
            reads += 1
            return await list_runs(*args, **kwargs)

        runs.list_runs = counted
        async with get_client(url=base, api_key=None) as client:
            tid = (await client.threads.create())["thread_id"]
            opened = StreamsOpened(client)
            following = asyncio.ensure_future(until_runs_done(client, tid, 1))
            await opened.reach(1)
            before = reads
            await asyncio.sleep(1)  # twenty polls of 0.05 s: how many reads they make is what is measured
            assert reads - before <= 2, reads - before  # its first read, and one more at most
            ran = await chat_run(client, tid)
            assert [run_id for run_id, _ in per_run(await asyncio.wait_for(following, 30))] == [ran]


async def test_a_threads_stream_in_state_update_mode_sends_each_update_of_its_state(store_url: str) -> None:
    """``stream_mode="state_update"`` (langgraph-sdk's third thread stream mode) was refused (422). As on the
    Agent Server, it now sends ``state_update`` (the thread's state after the update, and its id) each time
    ``threads.update_state`` writes the thread's state, and none of its runs' events; ``run_modes`` sends no
    state update. Noticed, not polled: the fallback re-read is an hour away."""
    with serving(create_app(Settings(database_url=store_url, auth=False, poll_interval=3600))) as base:
        async with get_client(url=base, api_key=None) as client:
            tid = (await client.threads.create())["thread_id"]
            await chat_run(client, tid)

            told = 0  # state updates the two streams have sent so far
            first_told = asyncio.Event()  # both streams have sent the first

            async def two_updates(mode: Any) -> list[StreamPart]:
                nonlocal told
                parts: list[StreamPart] = []
                async for part in await client.threads.join_stream(tid, stream_mode=mode):
                    parts.append(part)
                    told += part.event == "state_update"
                    if told == 2:
                        first_told.set()
                    if [p.event for p in parts].count("state_update") == 2:
                        break
                return parts

            opened = StreamsOpened(client)
            updates = asyncio.ensure_future(two_updates("state_update"))
            both = asyncio.ensure_future(two_updates(["run_modes", "state_update"]))
            runs_only = asyncio.ensure_future(until_runs_done(client, tid, 1))
            await opened.reach(3)  # live: an update before would not be theirs
            before = await client.threads.get(tid)
            await client.threads.update_state(tid, {"progress": {"note": 1}})
            state = await client.threads.get_state(tid)
            await asyncio.wait_for(first_told.wait(), 30)  # both sent that state before a run moves it on
            run_id = await chat_run(client, tid)
            await client.threads.update_state(tid, {"progress": {"note": 2}})
            first, second = await asyncio.wait_for(updates, 30)
            assert (first.event, first.data) == ("state_update", {"state": state, "thread_id": tid})
            assert second.data["state"]["values"]["progress"] == {"note": 2}
            events = [p.event for p in await asyncio.wait_for(both, 30)]
            assert events[0] == events[-1] == "state_update" and events[1] == "metadata" and "values" in events
            served = await asyncio.wait_for(runs_only, 30)
            assert [r for r, _ in per_run(served)] == [run_id] and "state_update" not in [p.event for p in served]
            assert (await client.threads.get(tid))["updated_at"] > before["updated_at"]


# --- the v3 thread stream (client.threads.stream: POST /threads/{id}/stream/events) --------------------------

JOURNEY = {"journey_type": "content_migration", "requirements": {"source": "a", "target": "b"}, "user_id": "ana"}


async def _v3_until_end(
    base: str, thread_id: str, body: dict[str, Any], told: asyncio.Event, count: int
) -> list[dict[str, Any]]:
    """Every event of a raw v3 thread stream, until the server ends it; ``told`` is set once ``count`` came."""
    found: list[dict[str, Any]] = []
    async with (
        httpx.AsyncClient(base_url=base, timeout=None) as raw,
        raw.stream("POST", f"/threads/{thread_id}/stream/events", json=body) as answer,
    ):
        assert answer.status_code == 200
        async for line in answer.aiter_lines():
            if line.startswith("data: "):
                found.append(json.loads(line.removeprefix("data: ")))
                if len(found) == count:
                    told.set()
    return found


async def test_a_v3_thread_stream_ends_as_its_thread_is_deleted(store_url: str) -> None:
    """The fallback re-read an hour away: the v3 stream of a thread (client.threads.stream) never ended when its
    thread was deleted, holding the client (and one of its stream slots) for good; it now ends at once, as the
    Agent Server's does (its v3 stream ends with the thread's stream), having told the run it served."""
    with serving(create_app(Settings(database_url=store_url, auth=False, poll_interval=3600))) as base:
        async with get_client(url=base, api_key=None) as client:
            tid = (await client.threads.create())["thread_id"]
            await chat_run(client, tid)
            body = {"channels": ["lifecycle"], "since": 0}
            told = asyncio.Event()
            following = asyncio.ensure_future(_v3_until_end(base, tid, body, told, 2))
            await asyncio.wait_for(told.wait(), 30)  # the run it replays (deleted with the thread, else untold)
            await client.threads.delete(tid)
            events = await asyncio.wait_for(following, 10)
            assert [e["params"]["data"]["event"] for e in events] == ["running", "completed"]


async def test_a_v3_thread_stream_tells_the_values_of_a_run_that_recorded_no_chunks(store_url: str) -> None:
    """A run created without stream_mode (a cron's, one created over plain HTTP) records no chunks: on the v3
    stream it had no values at all (the SDK's values and output projections stayed empty), while the v2 thread
    stream and a join tell its output as values. The v3 stream now tells it too, before the run's end."""
    with serving(create_app(Settings(database_url=store_url, auth=False))) as base:
        async with get_client(url=base, api_key=None) as client:
            tid = (await client.threads.create())["thread_id"]
            run = await client.http.post(f"/threads/{tid}/runs", json={"assistant_id": "structured", "input": JOURNEY})
            output = await client.runs.join(tid, run["run_id"])
            events = await v3_events(base, tid, {"channels": ["values", "lifecycle", "input"], "since": 0}, 4)
            assert [e["method"] for e in events] == ["lifecycle", "values", "input.requested", "lifecycle"]
            assert events[1]["params"]["data"] == output and output["current_step"] == "upload_content", events[1]
            assert events[3]["params"]["data"]["event"] == "interrupted"
            seqs = [e["seq"] for e in events]
            assert seqs == sorted(set(seqs)), seqs


async def test_a_v3_thread_stream_reads_only_the_runs_it_still_serves(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At each wake (each chunk of a run it follows) the v3 stream read every run its thread ever had: a thread
    of a thousand turns, a thousand rows per chunk. It now reads them newest first, a page at a time, down to
    the oldest run it still serves, as the v2 thread stream does (pages of 2 here, runs of earlier turns
    finished long ago)."""
    monkeypatch.setattr(thread_stream, "RUNS_PAGE", 2, raising=False)
    monkeypatch.setattr(thread_stream, "RECENT", timedelta(0))  # the earlier turns are not replayed
    app = create_app(Settings(database_url=store_url, auth=False))
    with serving(app) as base:
        async with get_client(url=base, api_key=None) as client:
            tid = (await client.threads.create())["thread_id"]
            for _ in range(4):
                await chat_run(client, tid)
            runs = app.state.services.runs
            read: list[int] = []
            list_runs = runs.list_runs

            async def counted(*args: Any, **kwargs: Any) -> Any:
                found = await list_runs(*args, **kwargs)
                read.append(len(found))
                return found

            runs.list_runs = counted
            opened = asyncio.Event()
            following = asyncio.ensure_future(v3_events(base, tid, {"channels": ["lifecycle"]}, 2, opened))
            await asyncio.wait_for(opened.wait(), 30)
            ran = await chat_run(client, tid)
            events = await asyncio.wait_for(following, 30)
    assert [(e["event_id"].split(":")[0], e["params"]["data"]["event"]) for e in events] == [
        (ran, "running"),
        (ran, "completed"),
    ]
    assert read and max(read) <= 2, read


async def test_a_v3_session_opened_after_a_runs_end_answers_its_own_runs_output(store_url: str) -> None:
    """Opened without ``since``, the Agent Server's v3 stream replays what it retains of the thread's runs (each
    run's stream for RESUMABLE_STREAM_TTL_SECONDS, 120 s; all of them in langgraph dev), and langgraph-sdk's
    lifecycle watcher, opened as a session on a known thread begins, takes the first run's end it meets for the
    session's own: a session opened that soon after a run ended answers ``thread.output`` with the thread as it
    was before its run. This server replays the active runs and one created in the last ``RECENT`` (5 s: the SDK
    opens its stream just after ``run.start`` answers), so a session opened later gets its own run's output."""
    clock = VirtualClock()
    with serving(create_app(Settings(database_url=store_url, auth=False), clock=clock)) as base:
        async with get_client(url=base, api_key=None) as client:
            tid = (await client.threads.create())["thread_id"]
            await client.runs.wait(tid, "guide", input={"messages": [{"role": "user", "content": "first"}]})
            clock.advance(thread_stream.RECENT + timedelta(seconds=1))
            async with client.threads.stream(tid, assistant_id="guide") as chat:
                await chat.run.start(input={"messages": [{"role": "user", "content": "second"}]})
                output = await chat.output.with_timeout(30)
    said = [m["content"] for m in output["messages"] if m["type"] == "human"]
    assert said == ["first", "second"], said


def _run_ended(event: dict[str, Any]) -> bool:
    return event["method"] == "lifecycle" and event["params"]["data"]["event"] in ("completed", "interrupted", "failed")


async def test_a_v3_thread_stream_resumed_after_any_event_of_a_run_gets_exactly_the_rest(store_url: str) -> None:
    """A client whose stream is replaced or dropped reopens it with ``since`` (langgraph-sdk's shared stream, as
    it rotates to a wider filter or reconnects): cut after any event of a chat run that called a tool, its
    tokens and its end included, it gets exactly the events that came after, the run's end last. (The SDK's
    projections of test_threads_surface waited for that end now and then: the server had sent it, see
    tests/test_server_sdk_surface.py; this pins the server's side of it.)"""
    every = {"channels": list(thread_stream.CHANNELS)}
    with serving(create_app(Settings(database_url=store_url, auth=False))) as base:
        async with get_client(url=base, api_key=None) as client:
            tid = (await client.threads.create())["thread_id"]
            async with client.threads.stream(tid, assistant_id="guide") as chat:
                await chat.run.start(input=HELLO)
                await chat.output.with_timeout(60)
            events: list[dict[str, Any]] = []
            async with (
                httpx.AsyncClient(base_url=base, timeout=30) as raw,
                raw.stream("POST", f"/threads/{tid}/stream/events", json={**every, "since": 0}) as answer,
            ):
                async for line in answer.aiter_lines():
                    if line.startswith("data: "):
                        events.append(json.loads(line.removeprefix("data: ")))
                        if _run_ended(events[-1]):
                            break
            methods = {e["method"] for e in events}
            assert {"messages", "tools", "values", "updates"} <= methods and _run_ended(events[-1]), methods
            for i, cut in enumerate(events[:-1]):
                rest = await v3_events(base, tid, {**every, "since": cut["seq"]}, len(events) - i - 1)
                assert rest == events[i + 1 :], (i, cut["method"])

"""Joining streams as the Agent Server's resumable streams are joined, through langgraph-sdk over real HTTP:
a thread's stream opened before its first run, a run's stream replayed from the start (``Last-Event-ID: -1``),
and the ids a client resumes from."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langgraph_sdk.client import LangGraphClient
from langgraph_sdk.schema import StreamPart

from graphs.errors import UnknownProcessError
from graphs.process.orchestrator import ProcessOrchestrator
from tests.server_support import APPROVAL_PROCESS, StreamsOpened

pytestmark = pytest.mark.slow

CONTENT_MIGRATION = {"journey_type": "content_migration", "requirements": {"source": "a", "target": "b"}}


async def test_a_threads_stream_joined_before_its_first_run_serves_that_run(sdk_client: LangGraphClient) -> None:
    tid = (await sdk_client.threads.create())["thread_id"]

    async def joined() -> list[StreamPart]:
        parts = []
        async for part in await sdk_client.threads.join_stream(tid):  # it goes on after the run: until its end
            parts.append(part)
            if part.event == "metadata" and part.data.get("status") == "run_done":
                return parts
        return parts

    opened = StreamsOpened(sdk_client)
    joining = asyncio.ensure_future(joined())
    await opened.reach(1)  # the stream is open (it was a 404 before the thread had a run)
    assert not joining.done()
    run = await sdk_client.runs.create(
        tid, "structured", input={**CONTENT_MIGRATION, "user_id": "ana"}, stream_mode="values"
    )
    parts = await asyncio.wait_for(joining, 60)
    events = [p.event for p in parts]
    assert events[0] == "metadata" and "values" in events, events
    assert (await sdk_client.runs.join(tid, run["run_id"]))["current_step"] == "upload_content"


async def test_a_threads_stream_waiting_for_a_run_ends_when_the_thread_is_deleted(sdk_client: LangGraphClient) -> None:
    tid = (await sdk_client.threads.create())["thread_id"]
    opened = StreamsOpened(sdk_client)
    joining = asyncio.ensure_future(_events(sdk_client, tid))
    await opened.reach(1)
    await sdk_client.threads.delete(tid)
    assert await asyncio.wait_for(joining, 30) == ["end"]


async def _events(client: LangGraphClient, thread_id: str) -> list[str]:
    return [p.event async for p in await client.threads.join_stream(thread_id)]


async def test_a_runs_stream_replayed_from_minus_one_starts_with_its_metadata(sdk_client: LangGraphClient) -> None:
    tid = (await sdk_client.threads.create())["thread_id"]
    live = [
        p
        async for p in sdk_client.runs.stream(
            tid, "structured", input={**CONTENT_MIGRATION, "user_id": "ana"}, stream_mode=["values", "updates"]
        )
    ]
    assert live[0].event == "metadata" and live[-1].event == "end"
    ids = [p.id for p in live]
    assert None not in ids and len(set(ids)) == len(ids), ids  # the end has its own id, not the last chunk's
    run_id = live[0].data["run_id"]

    replayed = [p async for p in sdk_client.runs.join_stream(tid, run_id, last_event_id="-1")]
    assert [(p.event, p.id, p.data) for p in replayed] == [(p.event, p.id, p.data) for p in live]
    # Resuming after the metadata (its id) gives the chunks; after the end, only the end.
    after_metadata = [p async for p in sdk_client.runs.join_stream(tid, run_id, last_event_id=live[0].id)]
    assert [p.data for p in after_metadata] == [p.data for p in live[1:]]
    after_end = [p.event async for p in sdk_client.runs.join_stream(tid, run_id, last_event_id=live[-1].id)]
    assert after_end == ["end"]


async def test_a_run_created_without_stream_mode_tells_a_joining_stream_how_it_ended(
    sdk_client: LangGraphClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run created over plain HTTP without ``stream_mode`` (the Agent Server streams ``values`` then) records
    no chunks as it goes; its run stream and its thread's stream gave only its metadata and end, not its values,
    not even its error. They now end with its output as ``values`` (or its ``error``), from its row: numbered
    as a chunk would be, so a client resuming after it does not get it twice."""
    client, http = sdk_client, sdk_client.http.client
    tid = (await client.threads.create())["thread_id"]
    start = {"assistant_id": "structured", "input": {**CONTENT_MIGRATION, "user_id": "ana"}}
    run = (await http.post(f"/threads/{tid}/runs", json=start)).json()
    output = await client.runs.join(tid, run["run_id"])
    assert output["current_step"] == "upload_content"

    joined = [p async for p in client.runs.join_stream(tid, run["run_id"], last_event_id="-1")]
    assert [(p.event, p.id) for p in joined] == [("metadata", "0"), ("values", "1"), ("end", "2")]
    assert joined[1].data == output
    again = [p.event async for p in client.runs.join_stream(tid, run["run_id"], last_event_id="1")]
    assert again == ["end"]
    thread = []
    async for part in await client.threads.join_stream(tid, last_event_id="-1"):
        thread.append((part.event, part.data))
        if part.event == "metadata" and part.data.get("status") == "run_done":
            break
    assert [event for event, _data in thread] == ["metadata", "values", "metadata"]
    assert thread[1][1] == output

    # A start that fails as it runs (one the API cannot foresee: a process start it checked, failing in the run).
    async def failing_start(*_args: Any, **_kwargs: Any) -> Any:
        raise UnknownProcessError("no process named 'approval' is deployed", name="approval")

    assert (await http.post("/processes", json=APPROVAL_PROCESS)).status_code == 200
    monkeypatch.setattr(ProcessOrchestrator, "start", failing_start)
    failing = {"assistant_id": "process", "input": {"process": "approval", "business_key": "k1"}}
    failed = (await http.post(f"/threads/{(await client.threads.create())['thread_id']}/runs", json=failing)).json()
    answer = await client.runs.join(failed["thread_id"], failed["run_id"])
    assert "__error__" in answer, answer
    parts = [p async for p in client.runs.join_stream(failed["thread_id"], failed["run_id"])]
    assert [p.event for p in parts] == ["error", "end"]
    assert parts[0].data == answer["__error__"]

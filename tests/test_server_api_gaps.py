"""Agent Server API parity over real HTTP through langgraph-sdk, on SQLite and PostgreSQL: cancel with
``action="rollback"``, and the v3 thread stream (``client.threads.stream``) driving a journey."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
from langgraph_sdk import get_client
from langgraph_sdk.client import LangGraphClient
from langgraph_sdk.errors import NotFoundError, UnprocessableEntityError

from server.app import create_app
from server.settings import ApiKey, Settings
from tests import test_server_streaming as streaming
from tests.server_support import serving, v3_events
from tests.test_server_sdk_surface import SCOPES
from tests.test_server_streaming import ANSWER, _said, _slow_run

pytestmark = pytest.mark.slow
# The streaming tests' server (a guide on langchain-core's streaming fake model, on both backends) and client.
server_url, client = streaming.server_url, streaming.client
CONTENT_MIGRATION = {"journey_type": "content_migration", "requirements": {"source": "a", "target": "b"}}


def _hello(text: str = "hello") -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}]}


# --- cancel(action="rollback") --------------------------------------------------------------------------


async def test_cancel_with_rollback_deletes_the_run_and_puts_the_thread_back(client: LangGraphClient) -> None:
    tid = (await client.threads.create())["thread_id"]
    await client.runs.wait(tid, "guide", input=_hello())
    before = await client.threads.get_state(tid)
    slow = await _slow_run(client, tid)
    await client.runs.cancel(tid, slow, action="rollback")
    with pytest.raises(NotFoundError):  # the run is gone, not kept as interrupted
        await client.runs.get(tid, slow)
    state = await client.threads.get_state(tid)
    assert state["values"] == before["values"] and _said(state) == ["hello"]
    # The thread goes on from there.
    await client.runs.wait(tid, "guide", input=_hello("again"))
    assert _said(await client.threads.get_state(tid)) == ["hello", "again"]

    # cancel_many rolls back each thread's runs the same way.
    slow = await _slow_run(client, tid)
    await client.runs.cancel_many(thread_id=tid, action="rollback")
    with pytest.raises(NotFoundError):
        await client.runs.get(tid, slow)
    assert _said(await client.threads.get_state(tid)) == ["hello", "again"]

    # A finished run has nothing to roll back: 404 (RunNotActiveError, as the Agent Server answers), and it stays.
    last = (await client.runs.list(tid, limit=1))[0]
    with pytest.raises(NotFoundError):
        await client.runs.cancel(tid, last["run_id"], action="rollback")
    assert (await client.runs.get(tid, last["run_id"]))["status"] == "success"


async def test_cancel_with_rollback_refuses_journey_threads(client: LangGraphClient, server_url: str) -> None:
    """A journey's completed steps are in its event log and may have acted on the world: a typed 422, as for
    multitask rollback; the run and the journey stay as they were."""
    tid = (await client.threads.create())["thread_id"]
    run = await client.runs.create(tid, "structured", input=CONTENT_MIGRATION)
    await client.runs.join(tid, run["run_id"])
    before = await client.threads.get_state(tid)
    with pytest.raises(UnprocessableEntityError):
        await client.runs.cancel(tid, run["run_id"], action="rollback")
    async with httpx.AsyncClient(base_url=server_url) as raw:
        answer = await raw.post(f"/threads/{tid}/runs/{run['run_id']}/cancel", params={"action": "rollback"})
        assert answer.status_code == 422 and answer.json()["type"].endswith("/RollbackUnsupported")
    assert (await client.runs.get(tid, run["run_id"]))["status"] == "success"
    assert (await client.threads.get_state(tid))["checkpoint"] == before["checkpoint"]


async def test_cancel_many_by_ids_cancels_the_active_ones_and_is_404_when_none_is(store_url: str) -> None:
    """Listed runs that ended, are missing or someone else's are passed over, as on the Agent Server; when none
    of those listed was left to cancel it answered 204 as if it had cancelled them, where the Agent Server
    answers 404 (RunNotActiveError when they all ended, not found when none was there)."""
    keys = {"key-ana": ApiKey("ana", SCOPES), "key-bob": ApiKey("bob", SCOPES)}
    with serving(create_app(Settings(database_url=store_url, api_keys=keys))) as base:
        async with get_client(url=base, api_key="key-ana") as ana, get_client(url=base, api_key="key-bob") as bob:
            tid = (await ana.threads.create())["thread_id"]
            ended = (await ana.runs.create(tid, "structured", input={**CONTENT_MIGRATION, "user_id": "ana"}))["run_id"]
            await ana.runs.join(tid, ended)
            later = {"command": {"resume": {"files": 1}}, "after_seconds": 600}
            queued = (await ana.runs.create(tid, "structured", **later))["run_id"]
            bobs = (await bob.threads.create())["thread_id"]
            foreign = (await bob.runs.create(bobs, "structured", input=CONTENT_MIGRATION, after_seconds=600))["run_id"]
            elsewhere = (await ana.threads.create())["thread_id"]
            missing = str(uuid.uuid4())

            with pytest.raises(NotFoundError) as refused:
                await ana.runs.cancel_many(thread_id=tid, run_ids=[ended, missing, foreign])
            assert refused.value.response.json()["code"] == "RunNotActiveError", refused.value.response.text
            # None there: missing, bob's, or on another thread than the one named.
            for thread_id, ids in ((None, [missing]), (None, [foreign]), (elsewhere, [queued])):
                with pytest.raises(NotFoundError):
                    await ana.runs.cancel_many(thread_id=thread_id, run_ids=ids)
            assert (await ana.runs.get(tid, queued))["status"] == "pending"

            await ana.runs.cancel_many(thread_id=tid, run_ids=[ended, queued, missing, foreign])
            assert (await ana.runs.get(tid, queued))["status"] == "interrupted"
            assert (await ana.runs.get(tid, ended))["status"] == "success"
            assert (await bob.runs.get(bobs, foreign))["status"] == "pending"


async def test_cancel_many_by_status_is_404_when_none_matches_and_422_beside_a_thread_or_ids(store_url: str) -> None:
    """As the Agent Server answers ``runs.cancel_many``: a status alone cancels the caller's runs in it, 404 when
    there are none (it answered 204); a status with a thread_id or run_ids is refused, 422, and cancels nothing
    (it cancelled the listed runs in that status)."""
    keys = {"key-ana": ApiKey("ana", SCOPES), "key-bob": ApiKey("bob", SCOPES)}
    with serving(create_app(Settings(database_url=store_url, api_keys=keys))) as base:
        async with get_client(url=base, api_key="key-ana") as ana, get_client(url=base, api_key="key-bob") as bob:
            bobs = (await bob.threads.create())["thread_id"]
            foreign = (await bob.runs.create(bobs, "structured", input=CONTENT_MIGRATION, after_seconds=600))["run_id"]
            for status in ("pending", "running", "all"):  # bob's pending run is not ana's to see
                with pytest.raises(NotFoundError):
                    await ana.runs.cancel_many(status=status)
            tid = (await ana.threads.create())["thread_id"]
            journey = {**CONTENT_MIGRATION, "user_id": "ana"}
            queued = (await ana.runs.create(tid, "structured", input=journey, after_seconds=600))["run_id"]
            with pytest.raises(NotFoundError):
                await ana.runs.cancel_many(status="running")
            for named in ({"thread_id": tid}, {"run_ids": [queued]}, {"thread_id": tid, "run_ids": [queued]}):
                with pytest.raises(UnprocessableEntityError):
                    await ana.runs.cancel_many(status="pending", **named)
            assert (await ana.runs.get(tid, queued))["status"] == "pending"

            await ana.runs.cancel_many(status="pending")
            assert (await ana.runs.get(tid, queued))["status"] == "interrupted"
            assert (await bob.runs.get(bobs, foreign))["status"] == "pending"
            with pytest.raises(NotFoundError):  # a thread (this server's) with none left to cancel: 404 as well
                await ana.runs.cancel_many(thread_id=tid)


# --- the v3 thread stream ---------------------------------------------------------------------------------


async def _until(predicate: Any, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + 30
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_thread_stream_starts_a_journey_and_answers_its_interrupts(client: LangGraphClient) -> None:
    async with client.threads.stream(assistant_id="structured") as journey:
        started = await journey.run.start(input={**CONTENT_MIGRATION, "user_id": "ana"})
        assert started["run_id"]
        await _until(lambda: journey.interrupted, "the journey's first interrupt")
        [waiting] = journey.interrupts
        assert waiting["namespace"] == [] and waiting["value"]
        tid = journey.thread_id
        first = await client.threads.get_state(tid)
        assert first["interrupts"][0]["id"] == waiting["interrupt_id"]
        await journey.run.respond({"files": 3})
        await _until(lambda: len(journey.interrupts) > 1, "the journey's next interrupt")
        state = await client.threads.get_state(tid)
        assert state["interrupts"][0]["id"] == journey.interrupts[-1]["interrupt_id"] != waiting["interrupt_id"]
        assert [r["status"] for r in await client.runs.list(tid)] == ["success", "success"]


async def test_thread_stream_events_replay_after_since_and_refuse_bad_commands(
    client: LangGraphClient, server_url: str
) -> None:
    tid = (await client.threads.create())["thread_id"]
    async with client.threads.stream(tid, assistant_id="guide") as chat:
        await chat.run.start(input=_hello())
        values = await chat.output.with_timeout(60)
    assert values["messages"][-1]["content"] == ANSWER
    every = {"channels": ["lifecycle", "values", "messages", "custom", "updates"], "since": 0}
    events = await v3_events(server_url, tid, every, 6)
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert events[0]["method"] == "lifecycle" and events[0]["params"]["data"]["event"] == "running"
    # A client that saw the third event reconnects with since: it gets exactly what came after.
    again = await v3_events(server_url, tid, {**every, "since": seqs[2]}, 3)
    assert [e["seq"] for e in again] == seqs[3:6] and again == events[3:6]
    # The chat model's tokens come as messages, the run's end as one lifecycle event.
    everything = await v3_events(server_url, tid, {"channels": ["messages", "lifecycle"], "since": 0}, 2)
    assert everything[1]["params"]["data"] == {
        "event": "message-start",
        "role": "ai",
        "id": everything[1]["params"]["data"]["id"],
        "metadata": everything[1]["params"]["data"]["metadata"],
    }
    async with httpx.AsyncClient(base_url=server_url) as raw:
        unknown = await raw.post(f"/threads/{tid}/commands", json={"id": 7, "method": "agent.fly", "params": {}})
        assert unknown.json() == {
            "type": "error",
            "id": 7,
            "error": "unknown_command",
            "message": "'agent.fly' is not served here",
        }
        wrong = {"id": 8, "method": "input.respond", "params": {"interrupt_id": "nope", "response": 1}}
        assert (await raw.post(f"/threads/{tid}/commands", json=wrong)).json()["error"] == "no_such_interrupt"
        missing = await raw.post("/threads/no-such-thread/stream/events", json={"channels": ["lifecycle"]})
        assert missing.status_code == 404

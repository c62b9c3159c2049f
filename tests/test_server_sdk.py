"""The server driven by the official langgraph-sdk client over real HTTP (uvicorn on loopback)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from langgraph_sdk import get_client
from langgraph_sdk.client import LangGraphClient
from langgraph_sdk.errors import ConflictError, NotFoundError, UnprocessableEntityError

from agents import AgentRegistry, AgentRequest, EchoAgent
from server.app import create_app
from server.settings import Settings
from tests.server_support import serving

pytestmark = pytest.mark.slow
GATE = threading.Event()


async def gated(request: AgentRequest) -> dict[str, Any]:
    await asyncio.to_thread(GATE.wait, 10)
    return {"gated": True}


@pytest.fixture(params=["sqlite", "postgres"])
def server_url(request: pytest.FixtureRequest) -> Iterator[str]:
    url: str = request.getfixturevalue(f"{request.param}_url")
    registry = AgentRegistry()
    registry.register("gate", gated)
    registry.register("check_expense", EchoAgent("check_expense", {"within_policy": True}))
    app = create_app(Settings(database_url=url, auth=False), runtime_options={"agents": registry})
    with serving(app) as base:
        yield base


@pytest.fixture
async def client(server_url: str) -> AsyncIterator[LangGraphClient]:
    async with get_client(url=server_url, api_key=None) as sdk:
        yield sdk


CONTENT_MIGRATION = {"journey_type": "content_migration", "requirements": {"source": "a", "target": "b"}}


async def test_create_wait_stream_interrupt_resume_and_state(client: LangGraphClient) -> None:
    assistants = {a["assistant_id"] for a in await client.assistants.search(limit=50)}
    assert {"structured", "session", "mvp", "saga", "lifecycle", "process", "guide"} <= assistants
    graph = await client.assistants.get_graph("structured")
    assert any(n["id"] == "upload_content.await" for n in graph["nodes"])

    thread = await client.threads.create(metadata={"team": "migrations"})
    tid = thread["thread_id"]
    # First run: input designs and starts the journey; it stops at the first human step (an interrupt).
    out = await client.runs.wait(tid, "structured", input={**CONTENT_MIGRATION, "user_id": "ana"})
    assert out["current_step"] == "upload_content"
    assert out["__interrupt__"][0]["value"]["task"] == "upload_content"
    state = await client.threads.get_state(tid)
    assert state["next"] == ["upload_content.await"]
    assert state["interrupts"] and state["checkpoint"]["thread_id"] == tid
    assert (await client.threads.get(tid))["status"] == "interrupted"

    # Resume by streaming: values and updates chunks arrive as SSE events.
    parts = [
        p
        async for p in client.runs.stream(
            tid, "structured", command={"resume": {"files": 3}}, stream_mode=["values", "updates"]
        )
    ]
    events = [p.event for p in parts]
    assert events[0] == "metadata" and "values" in events and "updates" in events
    last_values = [p.data for p in parts if p.event == "values"][-1]
    assert last_values["step_input"] == {"files": 3}  # progress is in the run output and the event log

    # In the background, then join; the run record says success.
    run = await client.runs.create(tid, "structured", command={"resume": {"entities": 2}})
    joined = await client.runs.join(tid, run["run_id"])
    assert joined["completed_steps"] == ["upload_content", "analyze_content"]
    assert (await client.runs.get(tid, run["run_id"]))["status"] == "success"

    # A step result that breaks the step's schema or a wrong step is an error of the run, not of the server.
    # History: at least one checkpoint per run (a structured run checkpoints where it stops), newest first.
    history = await client.threads.get_history(tid, limit=50)
    assert (
        len(history) >= 3
        and history[0]["checkpoint"]["checkpoint_id"]
        == (await client.threads.get_state(tid))["checkpoint"]["checkpoint_id"]
    )

    # Update state (an operator's correction), read it back.
    await client.threads.update_state(tid, {"context": {"note": "fixed by ops"}})
    assert (await client.threads.get_state(tid))["values"]["context"] == {"note": "fixed by ops"}

    # A second journey on the same thread is refused; so is an unknown thread.
    with pytest.raises(ConflictError):
        await client.runs.create(tid, "structured", input=CONTENT_MIGRATION)
    with pytest.raises(NotFoundError):
        await client.threads.get_state("no-such-thread")
    with pytest.raises(UnprocessableEntityError):
        await client.runs.create(tid, "structured", command={"resume": {}}, multitask_strategy="rollback")


async def test_multitask_reject_and_enqueue(client: LangGraphClient) -> None:
    spec = {
        "journey_type": "gated",
        "steps": [{"step_id": "wait_for_gate", "mode": "auto", "agent": "gate"}, {"step_id": "review"}],
    }
    tid = (await client.threads.create())["thread_id"]
    GATE.clear()
    first = await client.runs.create(tid, "structured", input={"journey_type": "gated", "spec": spec})
    with pytest.raises(ConflictError):  # reject: the thread is busy
        await client.runs.create(tid, "structured", command={"resume": {}}, multitask_strategy="reject")
    # Without a strategy the run is queued behind the active one: enqueue is the Agent Server's default.
    queued = await client.runs.create(tid, "structured", command={"resume": {"ok": True}})
    assert queued["multitask_strategy"] == "enqueue"
    assert (await client.threads.get(tid))["status"] == "busy"
    GATE.set()
    await client.runs.join(tid, first["run_id"])
    done = await client.runs.join(tid, queued["run_id"])
    assert done["status"] == "completed" and done["completed_steps"] == ["wait_for_gate", "review"]
    assert [r["status"] for r in await client.runs.list(tid)] == ["success", "success"]


async def test_guide_suggests_the_next_pillar(client: LangGraphClient) -> None:
    tid = (await client.threads.create())["thread_id"]
    mvp = await client.runs.wait(tid, "mvp", input={"user_id": "ana"})
    assert mvp["current_area"] == "content"
    await client.runs.wait(
        tid,
        "mvp",
        command={
            "resume": {
                "type": "update",
                "area_id": "content",
                "updates": {"files_uploaded": True, "files_parsed": True},
            }
        },
    )
    guide = await client.runs.wait(
        None,
        "guide",
        input={
            "session_id": tid and (await client.threads.get(tid))["metadata"]["instance_id"],
            "messages": [{"role": "user", "content": "what next?"}],
        },
    )
    reply = guide["messages"][-1]
    assert reply["type"] == "ai" and "Insights Pillar" in reply["content"]


EXPENSE = {
    "name": "expense",
    "elements": [
        {"type": "start", "id": "start"},
        {"type": "service_task", "id": "check", "agent": "check_expense"},
        {"type": "user_task", "id": "approve", "title": "Approve", "candidate_groups": ["finance"]},
        {"type": "end", "id": "end"},
    ],
    "flows": ["start -> check", "check -> approve", "approve -> end"],
}


async def test_process_runs_stream_and_streams_end_and_can_be_joined(client: LangGraphClient, server_url: str) -> None:
    await client.http.post("/processes", json=EXPENSE)
    tid = (await client.threads.create())["thread_id"]
    parts = [
        p
        async for p in client.runs.stream(
            tid, "process", input={"process": "expense", "business_key": "exp-1"}, stream_mode="updates"
        )
    ]
    events = [p.event for p in parts]
    assert events[0] == "metadata" and events[-1] == "end"
    updates = [p for p in parts if p.event == "updates"]
    assert updates, events  # a process run streams like every other pattern
    run_id = parts[0].data["run_id"]
    # Joined later (or reconnecting after a drop): the same chunks, or those after Last-Event-ID, then end.
    joined = [p async for p in client.runs.join_stream(tid, run_id)]
    assert [p.data for p in joined if p.event == "updates"] == [p.data for p in updates]
    assert joined[-1].event == "end"
    first_id = updates[0].id
    assert first_id is not None
    rest = [p async for p in client.runs.join_stream(tid, run_id, last_event_id=first_id)]
    assert [p.data for p in rest if p.event == "updates"] == [p.data for p in updates[1:]]
    # With auth off no API key names the caller's groups: the answer names who gives it, as the inbox's body
    # does (it could not be answered over the Agent Server API at all: TaskForbiddenError for 'local').
    unnamed = await client.runs.create(tid, "process", command={"resume": {"payload": {"approved": True}}})
    await client.runs.join(tid, unnamed["run_id"])
    refused = (await client.http.get(f"/threads/{tid}/runs/{unnamed['run_id']}"))["error"]
    assert refused["error"] == "TaskForbiddenError"
    assert '--no-auth the request names them: "user", "groups"' in refused["message"], refused
    answer = {"payload": {"approved": True}, "user": "ana", "groups": ["finance"]}
    done = await client.runs.wait(tid, "process", command={"resume": answer})
    assert done["status"] == "completed", done
    task = await client.http.get(f"/tasks/{tid}:approve:1")
    assert (task["status"], task["completed_by"], task["result"]) == ("completed", "ana", {"approved": True})

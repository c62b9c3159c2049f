"""``POST /journeys/{instance_id}/terminate``: any journey ended for good where it stands, over real HTTP through
langgraph-sdk, with two users, on SQLite and PostgreSQL.

A journey of every pattern is terminated while it waits (a structured journey and a saga at a human step, a
session, a lifecycle journey in its sandbox, a process at a user task with a timer armed): its status says so,
its history ends with the reason, and every route that would run it on answers 409. The status of a terminated
journey answered 500 before (its views did not know the status), which also hit a deleted thread's journey."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from langgraph_sdk.client import LangGraphClient

from server.settings import ApiKey
from tests.process_support import boundary_spec

SCOPES = frozenset({"read", "runs", "journeys", "tasks"})
KEYS = {"key-ana": ApiKey("ana", SCOPES, ("finance",)), "key-bob": ApiKey("bob", SCOPES, ("finance",))}
LIFECYCLE_READY = {"contract_signed": 1, "infrastructure_provisioned": 1, "data_sources_identified": 3}
WAIT_OR_TIMEOUT = boundary_spec("wait_or_timeout")  # ana signs, unless a timer two days on ends it
INSTANT = {
    "name": "instant",
    "elements": [{"type": "start", "id": "start"}, {"type": "end", "id": "end"}],
    "flows": ["start -> end"],
}
STARTS: dict[str, dict[str, Any]] = {
    "structured": {"journey_type": "content_migration", "context": {"migration_id": "m-1"}},
    "saga": {"journey_type": "content_migration", "context": {"migration_id": "m-1"}},
    "session": {"session_config": {"areas": [{"area_id": "one"}, {"area_id": "two"}]}},
    "lifecycle": {"client_id": "client-1", "metrics": LIFECYCLE_READY},
    "process": {"process": "wait_or_timeout", "business_key": "order-1"},
}

RESUMES: dict[str, Any] = {  # a valid resume of each, as its assistant's resume schema asks
    "structured": {},
    "saga": {},
    "session": {"type": "navigate", "area_id": "two"},
    "lifecycle": {"metrics": {"search_precision": 0.9}},
    "process": {"payload": {"ok": True}},
}


async def started(client: LangGraphClient, assistant_id: str) -> tuple[str, str]:
    """A thread of ``assistant_id`` run to where its journey waits: (thread id, instance id)."""
    thread_id = (await client.threads.create())["thread_id"]
    await client.runs.wait(thread_id, assistant_id, input=STARTS[assistant_id])
    instance_id = (await client.threads.get(thread_id))["metadata"]["instance_id"]
    return thread_id, str(instance_id)


def acting(ana: LangGraphClient, assistant_id: str, instance_id: str, task: dict[str, Any]) -> Any:
    """A call of the journey endpoints that would run a waiting journey of ``assistant_id`` on."""
    if assistant_id == "process":  # its task is gone: not found (404) or closed (409)
        return ana.http.post(f"/tasks/{task['task_id']}/complete", json={"payload": {"ok": True}})
    if assistant_id == "saga":
        return ana.http.post(f"/journeys/sagas/{instance_id}/retry", json={})
    if assistant_id == "session":
        return ana.http.post(f"/journeys/sessions/{instance_id}/navigate", json={"area_id": "two"})
    if assistant_id == "lifecycle":
        return ana.http.post(f"/journeys/lifecycle/{instance_id}/metrics", json={"values": {"search_precision": 0.9}})
    # A structured thread's journey is its own run, named by the thread: the run below is its acting route.
    return ana.http.post(f"/journeys/{instance_id}/terminate", json={"reason": "again"})


async def refused(call: Any, status: int = 409) -> str:
    with pytest.raises(httpx.HTTPStatusError) as caught:
        await call
    assert caught.value.response.status_code == status, caught.value.response.text
    return caught.value.response.text


async def test_a_waiting_journey_of_every_pattern_is_terminated_and_runs_no_more(ana: LangGraphClient) -> None:
    await ana.http.post("/processes", json=WAIT_OR_TIMEOUT)
    for assistant_id in STARTS:
        thread_id, instance_id = await started(ana, assistant_id)
        [task] = (
            await ana.http.get("/tasks", params={"instance_id": instance_id}) if assistant_id == "process" else [{}]
        )

        view = await ana.http.post(f"/journeys/{instance_id}/terminate", json={"reason": "the client left"})

        where = f"{assistant_id}: {view}"
        assert (view["instance_id"], view["index_status"], view["status"]) == (instance_id, "terminated", "terminated")
        assert await ana.http.get(f"/journeys/{instance_id}/status") == view, where
        history = await ana.http.get(f"/journeys/{instance_id}/history")
        assert history[-1]["type"] == "journey.terminated" and history[-1]["payload"]["reason"] == "the client left"
        # Nothing more of it runs, by any route; terminating it again is refused too.
        assert "terminated" in await refused(acting(ana, assistant_id, instance_id, task)) or task, where
        assert "terminated" in await refused(ana.http.post(f"/journeys/{instance_id}/terminate", json={"reason": "x"}))
        with pytest.raises(Exception, match="JourneyFinishedError"):  # the run ends in that error
            await ana.runs.wait(thread_id, assistant_id, command={"resume": RESUMES[assistant_id]})
        assert await ana.http.get(f"/journeys/{instance_id}/history") == history, where
        # Its thread stays readable, and is no longer busy or interrupted: nothing of it waits any more.
        thread = await ana.threads.get(thread_id)
        assert thread["status"] in ("idle", "error"), (where, thread)
        assert (await ana.threads.get_state(thread_id))["checkpoint"]["thread_id"] == thread_id
        assert thread_id in {t["thread_id"] for t in await ana.threads.search(limit=100)}
        if assistant_id == "process":
            assert await ana.http.get("/tasks", params={"instance_id": instance_id}) == []
    # A journey that completed is refused, and refused whole: the run queued on its thread stays queued (the refused
    # terminate cancelled it before, then answered 409).
    await ana.http.post("/processes", json=INSTANT)
    thread_id = (await ana.threads.create())["thread_id"]
    await ana.runs.wait(thread_id, "process", input={"process": "instant", "business_key": "order-2"})
    instance_id = (await ana.threads.get(thread_id))["metadata"]["instance_id"]
    queued = await ana.runs.create(thread_id, "process", command={"resume": RESUMES["process"]}, after_seconds=600)
    assert "completed" in await refused(ana.http.post(f"/journeys/{instance_id}/terminate", json={"reason": "x"}))
    assert (await ana.runs.get(thread_id, queued["run_id"]))["status"] == "pending"


async def test_only_its_owner_terminates_a_journey_and_hostile_reasons_are_refused(
    ana: LangGraphClient, bob: LangGraphClient
) -> None:
    _thread_id, instance_id = await started(ana, "structured")
    path = f"/journeys/{instance_id}/terminate"
    await refused(bob.http.post(path, json={"reason": "not mine"}), 404)
    await refused(ana.http.post("/journeys/no-such-journey/terminate", json={"reason": "gone"}), 404)
    async with httpx.AsyncClient(base_url=str(ana.http.client.base_url), headers={"x-api-key": "key-ana"}) as raw:
        hostile = [
            b"{}",
            b'{"reason": ""}',
            b'{"reason": " \\t\\u3000 "}',
            b'{"reason": "\\ud800"}',
            b'{"reason": NaN}',
            b'{"reason": ["a"]}',
            b'{"reason": "' + b"x" * 1001 + b'"}',
            b'{"reason": "ok", "also": 1}',
            b"[" * 5000 + b"]" * 5000,
        ]
        answers = [
            (await raw.post(path, content=body, headers={"content-type": "application/json"})) for body in hostile
        ]
    assert [a.status_code for a in answers] == [422] * len(hostile), [(a.status_code, a.text[:200]) for a in answers]
    assert (await ana.http.get(f"/journeys/{instance_id}/status"))["index_status"] == "in_progress"


async def test_a_termination_racing_advances_leaves_no_step_after_it(ana: LangGraphClient) -> None:
    """Three advances and a termination at once: each advance either completed its step before the journey
    was terminated (200) or was refused (409); no step is logged after ``journey.terminated``."""
    design = await ana.http.post("/journeys/structured/designs", json={"journey_type": "content_migration"})
    base = f"/journeys/structured/{design['journey_id']}"
    instance_id = (await ana.http.post(f"{base}/executions", json={"user_id": "ana"}))["instance_id"]

    async def advance() -> int:
        try:
            await ana.http.post(f"{base}/users/ana/advance", json={"step_result": {}})
        except httpx.HTTPStatusError as error:
            return error.response.status_code
        return 200

    async def terminate() -> int:
        await asyncio.sleep(0)
        await ana.http.post(f"/journeys/{instance_id}/terminate", json={"reason": "stop"})
        return 200

    answers = await asyncio.gather(advance(), advance(), terminate(), advance())
    assert set(answers) <= {200, 409}, answers
    types = [e["type"] for e in await ana.http.get(f"/journeys/{instance_id}/history")]
    after = types[types.index("journey.terminated") + 1 :]
    assert "step.completed" not in after, types
    assert types.count("step.completed") == answers.count(200) - 1, (answers, types)
    assert (await ana.http.get(f"/journeys/{instance_id}/status"))["status"] == "terminated"


async def test_a_deleted_threads_journey_shows_its_status(ana: LangGraphClient) -> None:
    """Deleting a thread terminates its journey; the journey's status answered 500 before."""
    await ana.http.post("/processes", json=WAIT_OR_TIMEOUT)
    for assistant_id in STARTS:
        thread_id, instance_id = await started(ana, assistant_id)
        await ana.threads.delete(thread_id)
        view = await ana.http.get(f"/journeys/{instance_id}/status")
        assert view["index_status"] == "terminated", (assistant_id, view)

"""An answer to a journey's interrupt answers that interrupt only, over real HTTP with the official
langgraph-sdk client, two users at once, on memory, SQLite and PostgreSQL.

A human's answer names the interrupt it answers: ``input.respond`` of the thread stream, or LangGraph's
addressed ``command.resume`` (``{interrupt_id: answer}``). Sent twice (a double click, a client's retry
after a timeout), the second answer used to be applied to whatever the journey waited at by the time its
run executed: the next step's approval, with the first step's answer. It must fail instead, with the
next step left waiting."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from langgraph_sdk import get_client

from server.app import create_app
from server.settings import ApiKey, Settings
from tests.server_support import serving

pytestmark = pytest.mark.slow

WORK = frozenset({"read", "runs", "journeys", "tasks"})
KEYS = {"key-ana": ApiKey("ana", WORK, ("finance",)), "key-bob": ApiKey("bob", WORK, ("finance",))}
TWO_APPROVALS = {
    "journey_type": "two_approvals",
    "steps": [{"step_id": "legal"}, {"step_id": "finance"}],
}
TWO_TASKS = {
    "name": "two_signatures",
    "elements": [
        {"type": "start", "id": "start"},
        {"type": "user_task", "id": "first", "title": "First", "candidate_groups": ["finance"]},
        {"type": "user_task", "id": "second", "title": "Second", "candidate_groups": ["finance"]},
        {"type": "end", "id": "end"},
    ],
    "flows": ["start -> first", "first -> second", "second -> end"],
}


async def _interrupt(sdk: Any, thread_id: str) -> str:
    state = await sdk.threads.get_state(thread_id)
    interrupts = [i for task in state["tasks"] for i in task["interrupts"]]
    assert len(interrupts) == 1, state
    return str(interrupts[0]["id"])


async def _two_approvals(sdk: Any, user: str) -> tuple[str, str]:
    """A new thread of ``user`` whose journey waits for its legal approval, and that interrupt's id."""
    tid = str((await sdk.threads.create())["thread_id"])
    data = {"journey_type": "two_approvals", "spec": TWO_APPROVALS, "user_id": user, "context": {}}
    await sdk.runs.wait(tid, "structured", input=data)
    return tid, await _interrupt(sdk, tid)


async def _one_answer_failed(sdk: Any, thread_id: str) -> None:
    """Once the thread's runs have all ended: its start and one of the two answers succeeded, and the other
    answer failed, saying its interrupt is no longer pending."""
    for run in await sdk.runs.list(thread_id):
        if run["status"] in ("pending", "running"):
            await sdk.runs.join(thread_id, run["run_id"])
    runs = await sdk.runs.list(thread_id)
    assert sorted(r["status"] for r in runs) == ["error", "success", "success"], runs
    [failed] = [r for r in runs if r["status"] == "error"]
    error = (await sdk.http.get(f"/threads/{thread_id}/runs/{failed['run_id']}"))["error"]
    assert error["error"] == "InterruptNotPendingError", error


async def _respond_twice(base: str, key: str, thread_id: str, interrupt_id: str, response: Any) -> None:
    """The same ``input.respond`` sent twice at once, as a double click does; both are accepted (queued)."""
    command = {"id": 1, "method": "input.respond", "params": {"interrupt_id": interrupt_id, "response": response}}
    async with httpx.AsyncClient(base_url=base, headers={"x-api-key": key}, timeout=60) as http:
        answers = await asyncio.gather(*(http.post(f"/threads/{thread_id}/commands", json=command) for _ in "12"))
    assert [a.json()["type"] for a in answers] == ["success", "success"], [a.text for a in answers]


async def _structured_answered_once(base: str, user: str, addressed: bool) -> None:
    key = f"key-{user}"
    async with get_client(url=base, api_key=key) as sdk:
        tid, legal = await _two_approvals(sdk, user)
        answer = {"approved_by": user}
        if addressed:  # LangGraph's own form of an answer to one interrupt, sent twice at once
            resume = {"resume": {legal: answer}}
            runs = (sdk.runs.create(tid, "structured", command=resume, multitask_strategy="enqueue") for _ in "12")
            await asyncio.gather(*runs)
        else:
            await _respond_twice(base, key, tid, legal, answer)
        await _one_answer_failed(sdk, tid)
        async with httpx.AsyncClient(base_url=base, headers={"x-api-key": key}, timeout=30) as http:
            instance = (await sdk.threads.get(tid))["metadata"]["instance_id"]
            status = (await http.get(f"/journeys/{instance}/status")).json()
            history = (await http.get(f"/journeys/{instance}/history")).json()
        # The first answer completed the legal step with the answer as given (not the map addressing it);
        # the finance step still waits for its own answer.
        assert status["completed_steps"] == ["legal"] and status["current_step"] == "finance", status
        completions = [e for e in history if e["type"] == "step.completed"]
        assert [(e["step"], e["payload"]["step_result"]) for e in completions] == [("legal", answer)], history
        assert await _interrupt(sdk, tid) != legal


@pytest.mark.parametrize("addressed", [False, True], ids=["input.respond", "command.resume"])
async def test_a_structured_step_answered_twice_at_once_is_answered_once(store_url: str, addressed: bool) -> None:
    with serving(create_app(Settings(database_url=store_url, api_keys=dict(KEYS)))) as base:
        await asyncio.gather(*(_structured_answered_once(base, user, addressed) for user in ("ana", "bob")))


async def test_a_process_task_answered_twice_at_once_is_answered_once(store_url: str) -> None:
    with serving(create_app(Settings(database_url=store_url, api_keys=dict(KEYS)))) as base:
        async with httpx.AsyncClient(base_url=base, headers={"x-api-key": "key-ana"}, timeout=30) as http:
            assert (await http.post("/processes", json=TWO_TASKS)).status_code < 300

        async def one(user: str) -> None:
            async with get_client(url=base, api_key=f"key-{user}") as sdk:
                tid = str((await sdk.threads.create())["thread_id"])
                await sdk.runs.wait(tid, "process", input={"process": "two_signatures", "business_key": user})
                first = await _interrupt(sdk, tid)
                await _respond_twice(base, f"key-{user}", tid, first, {"payload": {"signed": user}})
                await _one_answer_failed(sdk, tid)
                instance = (await sdk.threads.get(tid))["metadata"]["instance_id"]
                tasks = await sdk.http.get(f"/tasks?instance_id={instance}")
                assert [t["element"] for t in tasks] == ["second"], tasks  # the next task waits for its answer
                history = await sdk.http.get(f"/journeys/{instance}/history")
                completed = [e for e in history if e["type"] == "wait.completed"]
                assert [(e["step"], e["payload"]["payload"]) for e in completed] == [("first", {"signed": user})]

        await asyncio.gather(one("ana"), one("bob"))


async def test_an_addressed_resume_answers_one_interrupt(store_url: str) -> None:
    """A resume addressing two interrupts at once is refused before anything is stored: a journey waits at
    one; an unknown interrupt id fails the run and leaves the journey waiting."""
    with serving(create_app(Settings(database_url=store_url, api_keys=dict(KEYS)))) as base:
        async with get_client(url=base, api_key="key-ana") as sdk:
            tid, legal = await _two_approvals(sdk, "ana")
            two = {"resume": {legal: {}, "0" * 32: {}}}
            with pytest.raises(httpx.HTTPStatusError) as refused:
                await sdk.runs.create(tid, "structured", command=two)
            assert refused.value.response.status_code == 422
            assert "one interrupt" in refused.value.response.text
            with pytest.raises(Exception, match="InterruptNotPendingError"):
                await sdk.runs.wait(tid, "structured", command={"resume": {"f" * 32: {}}})
            assert await _interrupt(sdk, tid) == legal
            await sdk.runs.wait(tid, "structured", command={"resume": {legal: {"ok": 1}}})
            assert await _interrupt(sdk, tid) != legal


async def test_a_run_that_cannot_move_the_journey_is_refused_when_created(store_url: str) -> None:
    """``command.update``/``command.goto`` (which the journey would not take: its pattern moves it) and a run
    with neither input nor ``command.resume`` on a journey's thread are refused at once, with what to send
    instead, and queue nothing; they used to be queued and then fail, or run with the update ignored."""
    with serving(create_app(Settings(database_url=store_url, api_keys=dict(KEYS)))) as base:
        async with get_client(url=base, api_key="key-ana") as sdk:
            tid, legal = await _two_approvals(sdk, "ana")
            before = await sdk.runs.list(tid)
            for command, status, says in (
                ({"update": {"status": "completed"}}, 422, "command.update cannot be taken"),
                ({"goto": "finance", "resume": {}}, 422, "command.goto cannot be taken"),
                ({}, 409, "advance it with command.resume"),
                (None, 409, "advance it with command.resume"),
            ):
                with pytest.raises(httpx.HTTPStatusError) as refused:
                    await sdk.runs.create(tid, "structured", command=command)  # type: ignore[arg-type]
                assert refused.value.response.status_code == status, refused.value.response.text
                assert says in refused.value.response.text
            assert await sdk.runs.list(tid) == before
            assert await _interrupt(sdk, tid) == legal


async def test_a_journey_is_answered_through_the_thread_stream_however_it_was_started(store_url: str) -> None:
    """``input.respond`` on the thread of a journey started through the journey endpoints (it has no run), and
    on one whose runs were deleted: both used to answer 500 (the server looked for the last run's assistant)."""
    with serving(create_app(Settings(database_url=store_url, api_keys=dict(KEYS)))) as base:
        async with get_client(url=base, api_key="key-ana") as sdk:
            design = await sdk.http.post(
                "/journeys/structured/designs", json={"journey_type": "two_approvals", "spec": TWO_APPROVALS}
            )
            started = await sdk.http.post(
                f"/journeys/structured/{design['journey_id']}/executions", json={"user_id": "ana", "context": {}}
            )
            by_endpoint = str(started["instance_id"])
            tid = str((await sdk.threads.create())["thread_id"])
            data = {"journey_type": "two_approvals", "spec": TWO_APPROVALS, "user_id": "ana", "context": {}}
            first = await sdk.runs.create(tid, "structured", input=data)
            await sdk.runs.join(tid, first["run_id"])
            await sdk.runs.delete(tid, first["run_id"])
            for thread in (by_endpoint, tid):
                command = {
                    "id": 1,
                    "method": "input.respond",
                    "params": {"interrupt_id": await _interrupt(sdk, thread), "response": {"by": "ana"}},
                }
                answer = await sdk.http.post(f"/threads/{thread}/commands", json=command)
                assert answer["type"] == "success", answer
                await sdk.runs.join(thread, answer["result"]["run_id"])
                instance = (await sdk.threads.get(thread))["metadata"]["instance_id"]
                status = await sdk.http.get(f"/journeys/{instance}/status")
                assert status["completed_steps"] == ["legal"], status


async def test_a_process_answer_beside_its_payload_is_refused_not_dropped(store_url: str) -> None:
    """A process task's answer goes in ``command.resume.payload``; an answer given as the resume itself
    (``{"signed": "ana"}``, as a chat UI sends a response) completed the task with an empty payload, the
    answer dropped. It is refused (422), and the task stays open."""
    with serving(create_app(Settings(database_url=store_url, api_keys=dict(KEYS)))) as base:
        async with get_client(url=base, api_key="key-ana") as sdk:
            await sdk.http.post("/processes", json=TWO_TASKS)
            tid = str((await sdk.threads.create())["thread_id"])
            await sdk.runs.wait(tid, "process", input={"process": "two_signatures", "business_key": "k"})
            first = await _interrupt(sdk, tid)
            for resume in ({"signed": "ana"}, {first: {"signed": "ana"}}):
                with pytest.raises(httpx.HTTPStatusError) as refused:
                    await sdk.runs.create(tid, "process", command={"resume": resume})
                assert refused.value.response.status_code == 422
                # It says where the answer goes, not only that 'signed' was unexpected.
                detail = refused.value.response.json()["detail"]
                assert "('signed' was unexpected); it takes groups, payload, task_id, user" in detail, detail
            tasks = await sdk.http.get(f"/tasks?instance_id={tid}")
            assert [t["element"] for t in tasks] == ["first"]
            # Who answers is the key's caller: the user an answer names is read with auth off only.
            answer = {"payload": {"signed": "ana"}, "user": "bob", "groups": ["audit"]}
            await sdk.runs.wait(tid, "process", command={"resume": {first: answer}})
            assert [t["element"] for t in await sdk.http.get(f"/tasks?instance_id={tid}")] == ["second"]
            assert (await sdk.http.get(f"/tasks/{tid}:first:1"))["completed_by"] == "ana"


async def test_a_journey_stopped_at_a_breakpoint_goes_on_with_a_run_without_input(store_url: str) -> None:
    """LangGraph's way on from ``interrupt_before``/``interrupt_after``: a run without input, which goes to the
    next breakpoint it names, or to where the journey stops. It was refused (409, and before that queued and
    failed), and a resume sent instead ran the journey to its end, then failed the run: no way on. And a mere
    read of the journey's status ran it to its end: a stop at a breakpoint was taken for a crash's leftovers."""
    three = {"journey_type": "three", "steps": [{"step_id": f"s{i}", "mode": "auto"} for i in range(3)]}
    with serving(create_app(Settings(database_url=store_url, api_keys=dict(KEYS)))) as base:
        async with get_client(url=base, api_key="key-ana") as sdk:
            tid = str((await sdk.threads.create())["thread_id"])
            data = {"journey_type": "three", "spec": three, "user_id": "ana", "context": {}}
            await sdk.runs.wait(tid, "structured", input=data, interrupt_before="*")
            instance = (await sdk.threads.get(tid))["metadata"]["instance_id"]
            stops = [(await sdk.threads.get_state(tid))["next"]]
            for _ in range(2):
                # A read of a journey parked at a breakpoint leaves it there (it used to run the journey to its end).
                status = await sdk.http.get(f"/journeys/{instance}/status")
                assert len(status["completed_steps"]) == len(stops) - 1, (stops, status)
                await sdk.runs.wait(tid, "structured", interrupt_before="*")
                stops.append((await sdk.threads.get_state(tid))["next"])
            assert len({tuple(s) for s in stops}) == 3 and all(stops), stops  # one node further each time
            await sdk.runs.wait(tid, "structured")  # the last one, without a breakpoint: to the end
            status = await sdk.http.get(f"/journeys/{instance}/status")
            assert status["status"] == "completed" and status["completed_steps"] == ["s0", "s1", "s2"], status
            assert all(r["status"] == "success" for r in await sdk.runs.list(tid))
            with pytest.raises(httpx.HTTPStatusError) as refused:  # nothing left to go on with
                await sdk.runs.wait(tid, "structured")
            assert refused.value.response.status_code == 409

"""Many threads of several assistants and two users, interleaved in one database and driven at once through
the official langgraph-sdk: every answer and every state read back is its own thread's (issue 10: on SQLite
every run was executed on the journey of the first thread ever bound)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from langgraph_sdk import get_client
from langgraph_sdk.client import LangGraphClient
from langgraph_sdk.errors import ConflictError, NotFoundError
from sqlalchemy import select

from agents import EchoAgent, FailingAgent
from checkpoints.backends.base import Backend
from checkpoints.clock import SystemClock
from checkpoints.schema.tables import journey_designs, process_timers
from graphs.errors import SpecError
from graphs.runtime import JourneyRuntime
from graphs.structured.builder import StructuredSpec
from graphs.structured.orchestrator import StructuredOrchestrator
from server.app import create_app
from server.queues.procrastinate import ensure_schema
from server.runs.store import RunStore
from server.settings import ApiKey, Settings
from tests.server_fixtures import served_app, served_sdk  # noqa: F401  (the fixtures app and sdk)
from tests.server_support import queued_run, serving, start_worker, stop_worker

SCOPES = frozenset({"read", "runs", "journeys", "tasks"})
KEYS = {"key-ana": ApiKey("ana", SCOPES, ("finance",)), "key-bob": ApiKey("bob", SCOPES, ("finance",))}
THREADS_PER_ASSISTANT = 3
MARKER = re.compile(r"mk\d{3}")  # thread ids and instance ids are hex: they never look like one
LIFECYCLE_READY = {"contract_signed": 1, "infrastructure_provisioned": 1, "data_sources_identified": 3}
TWO_TASKS = {
    "name": "two_tasks",
    "elements": [
        {"type": "start", "id": "start"},
        {"type": "user_task", "id": "approve", "title": "Approve", "candidate_groups": ["finance"]},
        {"type": "user_task", "id": "pay", "title": "Pay", "candidate_groups": ["finance"]},
        {"type": "end", "id": "end"},
    ],
    "flows": ["start -> approve", "approve -> pay", "pay -> end"],
}
WAIT_OR_TIMEOUT = {  # a user task with a boundary timer a day away
    "name": "wait_or_timeout",
    "elements": [
        {"type": "start", "id": "start"},
        {"type": "user_task", "id": "approve", "title": "Approve", "candidate_groups": ["finance"]},
        {"type": "boundary_timer", "id": "late", "attached_to": "approve", "timer": {"duration": "P1D"}},
        {"type": "end", "id": "end"},
        {"type": "end", "id": "timed_out"},
    ],
    "flows": ["start -> approve", "approve -> end", "late -> timed_out"],
}


@dataclass(frozen=True, slots=True)
class Journey:
    """How one assistant's thread is started and resumed with a thread's marker, and how far it got."""

    assistant_id: str
    start: Callable[[str], dict[str, Any]]
    resume: Callable[[str, int], Any]  # the marker and the resume's number (1, 2)
    progress: Callable[[dict[str, Any]], Any]
    expected: tuple[Any, Any, Any]  # progress after the start and after each resume
    chat: bool = False  # every run takes input (the guide) instead of command.resume


def _steps(answer: dict[str, Any]) -> tuple[str, list[str]]:
    return answer["current_step"], answer["completed_steps"]


def _task(answer: dict[str, Any]) -> tuple[str, str | None]:
    waiting = [i["value"]["element"] for i in answer.get("__interrupt__", [])]
    return answer["status"], waiting[0] if waiting else None


STEPS = (
    ("upload_content", []),
    ("analyze_content", ["upload_content"]),
    ("transform_data", ["upload_content", "analyze_content"]),
)
JOURNEYS = (
    Journey(
        "structured",
        lambda m: {"journey_type": "content_migration", "context": {"marker": m}},
        lambda m, n: {"marker": m, "n": n},
        _steps,
        STEPS,
    ),
    Journey(
        "saga",
        lambda m: {"journey_type": "content_migration", "context": {"marker": m}},
        lambda m, n: {"marker": m, "n": n},
        _steps,
        STEPS,
    ),
    Journey(
        "session",
        lambda m: {"session_config": {"areas": [{"area_id": "one"}, {"area_id": "two"}]}},
        lambda m, n: {"type": "update", "area_id": ("one", "two")[n - 1], "updates": {"marker": m}},
        lambda answer: answer["actions_applied"],
        (1, 2, 3),
    ),
    Journey(
        "process",
        lambda m: {"process": "two_tasks", "business_key": m, "variables": {"marker": m}},
        lambda m, n: {"payload": {f"answer_{n}": m}},
        _task,
        (("in_progress", "approve"), ("in_progress", "pay"), ("completed", None)),
    ),
    Journey(
        "lifecycle",
        lambda m: {"client_id": m, "metadata": {"marker": m}, "metrics": LIFECYCLE_READY},
        lambda m, n: {"metrics": {"search_precision": 0.5 + n / 10}},
        lambda answer: (answer["current_stage"], answer["status"]),
        (("sandbox", "active"),) * 3,
    ),
    Journey(
        "guide",
        lambda m: {"messages": [{"role": "user", "content": f"{m}: where do I start?"}]},
        lambda m, n: {"messages": [{"role": "user", "content": f"{m}: and then ({n})?"}]},
        lambda answer: len(answer["messages"]),
        (4, 6, 8),  # the first question makes a tool call (recommend_next_pillar) and its result
        chat=True,
    ),
)


def markers(document: Any) -> set[str]:
    return set(MARKER.findall(json.dumps(document)))


@pytest.fixture(params=["sqlite-embedded", "postgres-embedded", "postgres-distributed"])
def server_url(request: pytest.FixtureRequest) -> Iterator[str]:
    backend, execution = str(request.param).split("-")
    url: str = request.getfixturevalue(f"{backend}_url")
    worker = None
    if execution == "distributed":
        ensure_schema(url)
        worker = start_worker(url)
    settings = Settings(database_url=url, api_keys=dict(KEYS), execution="distributed" if worker else "embedded")
    try:
        with serving(create_app(settings)) as base:
            yield base
    finally:
        if worker is not None:
            stop_worker(worker)


@pytest.fixture
async def clients(server_url: str) -> AsyncIterator[dict[str, LangGraphClient]]:
    async with (
        get_client(url=server_url, api_key="key-ana") as ana,
        get_client(url=server_url, api_key="key-bob") as bob,
    ):
        yield {"ana": ana, "bob": bob}


async def drive(client: LangGraphClient, principal: str, journey: Journey, marker: str) -> dict[str, Any]:
    """Start a thread, resume it twice, read it back: each answer must be this thread's, and nobody else's."""
    thread_id = (await client.threads.create(metadata={"marker": marker}))["thread_id"]
    answers = [await client.runs.wait(thread_id, journey.assistant_id, input=journey.start(marker))]
    for n in (1, 2):
        value = journey.resume(marker, n)
        if journey.chat:
            answers.append(await client.runs.wait(thread_id, journey.assistant_id, input=value))
        else:
            answers.append(await client.runs.wait(thread_id, journey.assistant_id, command={"resume": value}))
    state = await client.threads.get_state(thread_id)
    thread = await client.threads.get(thread_id)
    runs = await client.runs.list(thread_id)
    where = f"{journey.assistant_id} thread {marker} of {principal}"
    assert [journey.progress(a) for a in answers] == list(journey.expected), (where, answers)
    for answer in answers:  # a session's start answer shows no marker yet: its areas are still empty
        assert markers(answer) <= {marker}, (where, answer)
    assert markers(answers[-1]) == markers(state["values"]) == {marker}, (where, state)
    assert state["checkpoint"]["thread_id"] == thread_id, where
    assert [(r["thread_id"], r["status"]) for r in runs] == [(thread_id, "success")] * 3, (where, runs)
    instance_id = thread["metadata"]["instance_id"]
    if journey.assistant_id in ("structured", "saga"):
        assert {a["instance_id"] for a in answers} == {instance_id}, where
        assert {a["user_id"] for a in answers} == {principal}, where  # the caller's, not another user's
    if journey.assistant_id == "lifecycle":
        assert {a["journey_id"] for a in answers} == {thread_id}, where
    return {"thread_id": thread_id, "instance_id": instance_id}


@pytest.mark.slow
async def test_interleaved_threads_of_six_assistants_and_two_users(clients: dict[str, LangGraphClient]) -> None:
    await clients["ana"].http.post("/processes", json=TWO_TASKS)
    # A guide thread bound before every other: it must not become everyone's journey.
    first = await drive(clients["bob"], "bob", JOURNEYS[-1], "mk999")
    work = []
    for index in range(THREADS_PER_ASSISTANT * len(JOURNEYS)):
        principal = ("ana", "bob")[index % 2]
        journey = JOURNEYS[index % len(JOURNEYS)]
        work.append(drive(clients[principal], principal, journey, f"mk{index:03d}"))
    threads = [first, *await asyncio.gather(*work)]
    assert len({t["instance_id"] for t in threads}) == len(threads)  # one journey per thread


async def test_a_claim_answers_the_claimed_runs_own_thread(store_url: str) -> None:
    """The run store alone, on every backend (on PostgreSQL both through the psycopg hot path and through
    SQLAlchemy): claiming a run answers the instance of that run's thread, whichever thread was bound first."""
    async with JourneyRuntime.open(store_url) as runtime:
        stores = [RunStore(runtime.store.backend, runtime.store.clock)]
        if runtime.store.pg_pool is not None:  # the same definitions, executed through SQLAlchemy
            stores.append(RunStore(Backend(runtime.store.engine), SystemClock()))
        for store in stores:
            created = []
            for n in range(4):
                run = await queued_run(store)
                if n:  # the first thread stays unbound
                    await store.bind(run.thread_id, "structured", f"instance-{n}")
                created.append(run)
            for n, run in reversed(list(enumerate(created))):
                claimed = await store.claim(run.run_id)
                assert claimed is not None
                row, instance_id = claimed
                assert (row.run_id, row.thread_id, row.status) == (run.run_id, run.thread_id, "running")
                assert instance_id == (f"instance-{n}" if n else None)


async def test_first_lifecycle_journeys_started_at_once_share_their_design(store_url: str) -> None:
    """The default lifecycle design is stored under its content's id by whichever start gets there first;
    the others (here: concurrent first starts in one process) take it as it is."""
    async with JourneyRuntime.open(store_url) as runtime:
        started = await asyncio.gather(
            *(runtime.lifecycle.start_journey(f"client-{n}", metrics=LIFECYCLE_READY) for n in range(4))
        )
        assert {journey["current_stage"] for journey in started} == {"sandbox"}
        instances = await runtime.store.index.get_instances([journey["journey_id"] for journey in started])
        assert len(instances) == 4 and len({instance.journey_id for instance in instances}) == 1  # one design


def specs_built(structured: StructuredOrchestrator, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The journey types ``structured`` builds a spec for from now on (parsed and merged: ``build_spec``), in order."""
    built: list[str] = []
    build = structured.build_spec

    def counted(journey_type: str, requirements: Any, given: Any) -> StructuredSpec:
        built.append(journey_type)
        return build(journey_type, requirements, given)

    monkeypatch.setattr(structured, "build_spec", counted)
    return built


async def test_an_inline_spec_asked_for_again_is_its_shared_design_without_parsing_it_again(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every first run of a client that sends its spec asks for the shared design of the same content: it is
    parsed, checked and hashed once per process, not on every run; other content is another design."""
    spec = {"journey_type": "mine", "steps": [{"step_id": "a", "mode": "auto"}, {"step_id": "b"}]}
    async with JourneyRuntime.open(store_url) as runtime:
        structured = runtime.structured
        built = specs_built(structured, monkeypatch)
        first = await structured.shared_design("mine", {"r": 1}, spec=spec)
        again = await structured.shared_design("mine", {"r": 1}, spec=json.loads(json.dumps(spec)))
        assert again == first and built == ["mine"]
        other = await structured.shared_design("mine", {"r": 2}, spec=spec)
        renamed = await structured.shared_design("yours", {"r": 1}, spec=spec)
        assert len({first, other, renamed}) == 3 and built == ["mine", "mine", "yours"]
        with pytest.raises(SpecError):  # a refused spec is refused each time it is asked for
            await structured.shared_design("mine", None, spec={"steps": []})
        with pytest.raises(SpecError):
            await structured.shared_design("mine", None, spec={"steps": []})
        started = await structured.start_run("structured_x1", again, "u1")
        assert started["journey_id"] == first and started["current_step"] == "b"


async def test_an_inline_spec_an_older_release_stored_is_the_same_shared_design_after_an_upgrade(
    store_url: str,
) -> None:
    """A shared design's id is its content's digest, and every spec field added since with a default changes the
    digest of an unchanged spec: after an upgrade, the spec a client sends on every first run made a second design
    (the release of 24 November, ff9c823, stored no concurrency, deadline nor evaluation), and a structured journey's
    instance id is made of its design's, so its user's journey was started again beside the one it had. The row is
    the one that release stored: its spec as it dumped it, under its digest."""
    spec = {"journey_type": "mine", "steps": [{"step_id": "a", "mode": "auto"}, {"step_id": "b"}]}
    async with JourneyRuntime.open(store_url) as runtime:
        structured = runtime.structured
        dumped = structured.build_spec("mine", {"r": 1}, spec).model_dump(mode="json")
        older = {k: v for k, v in dumped.items() if k not in ("concurrency", "deadline", "evaluation")}
        digest = hashlib.sha256(json.dumps(older, sort_keys=True).encode()).hexdigest()[:24]
        stored = await runtime.store.index.save_design(f"structured_design_{digest}", "structured", "mine", older)
        started = await structured.start_run("structured_u1", stored.journey_id, "u1")
        assert await structured.shared_design("mine", {"r": 1}, spec=spec) == stored.journey_id
        assert await structured.shared_design("mine", {"r": 1}, spec=spec) == stored.journey_id  # as remembered
        other = await structured.shared_design("mine", {"r": 2}, spec=spec)  # other content: another design
        assert other != stored.journey_id and started["journey_id"] == stored.journey_id


async def test_an_inline_spec_checked_again_is_not_parsed_again_and_a_refusal_is_not_remembered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The API checks every run's input before it queues the run (check_design): a spec found sound is not
    parsed, merged and hashed again when the same content comes again; a refused one is checked each time (an
    agent registered meanwhile makes it pass), and a spec checked without agents is checked again with them."""
    spec = {"journey_type": "mine", "steps": [{"step_id": "a", "mode": "auto", "agent": "later"}, {"step_id": "b"}]}
    async with JourneyRuntime.open("memory://") as runtime:
        structured = runtime.structured
        built = specs_built(structured, monkeypatch)
        structured.check_design("mine", {"r": 1}, spec=spec, agents=False)
        structured.check_design("mine", {"r": 1}, spec=json.loads(json.dumps(spec)), agents=False)
        assert built == ["mine"]
        structured.check_design("mine", {"r": 2}, spec=spec, agents=False)  # other content: checked
        assert built == ["mine", "mine"]
        for _ in range(2):  # refused each time: 'later' is no agent yet
            with pytest.raises(SpecError, match="later"):
                structured.check_design("mine", {"r": 1}, spec=spec)
        runtime.agents.register("later", EchoAgent("later"))
        structured.check_design("mine", {"r": 1}, spec=spec)
        structured.check_design("mine", {"r": 1}, spec=spec)
        assert built == ["mine"] * 5


FOUR_STEPS = ("upload_content", "analyze_content", "transform_data", "validate_results")


async def test_threads_of_one_journey_are_journeys_of_their_own_on_one_shared_design(
    durable_url: str, ana: LangGraphClient, bob: LangGraphClient
) -> None:
    """One user's threads of one journey type, started and driven at once, with another user's beside them:
    each thread is a journey of its own that completes with its own results, and every thread of an
    assistant shares one stored design (issue 15: every first run stored a design of its own, for ever)."""

    async def complete(client: LangGraphClient, principal: str, assistant_id: str, marker: str) -> dict[str, Any]:
        thread_id = (await client.threads.create())["thread_id"]
        start = {"journey_type": "content_migration", "requirements": {"source": "a"}, "context": {"marker": marker}}
        answers = [await client.runs.wait(thread_id, assistant_id, input=start)]
        for n in range(len(FOUR_STEPS)):
            resume = {"marker": marker, "n": n}
            answers.append(await client.runs.wait(thread_id, assistant_id, command={"resume": resume}))
        state = await client.threads.get_state(thread_id)
        where = f"{assistant_id} thread {marker} of {principal}"
        assert answers[-1]["status"] == "completed" and tuple(answers[-1]["completed_steps"]) == FOUR_STEPS, where
        assert len({a["instance_id"] for a in answers}) == 1 and {a["user_id"] for a in answers} == {principal}
        assert markers(state["values"]) == {marker}, (where, state["values"])  # its results, nobody else's
        return {"assistant_id": assistant_id, "instance_id": answers[0]["instance_id"], **state["values"]}

    work = [complete(ana, "ana", "structured", f"mk{n:03d}") for n in range(6)]
    work += [complete(bob, "bob", "structured", f"mk{n:03d}") for n in range(6, 8)]
    work += [complete(ana, "ana", "saga", f"mk{n:03d}") for n in range(8, 11)]
    finished = await asyncio.gather(*work)
    assert len({journey["instance_id"] for journey in finished}) == len(finished)  # one journey per thread
    async with JourneyRuntime.open(durable_url) as runtime:
        async with runtime.store.engine.connect() as conn:
            designs = (await conn.execute(select(journey_designs.c.pattern, journey_designs.c.journey_id))).all()
        instances = await runtime.store.index.get_instances([journey["instance_id"] for journey in finished])
    assert sorted(pattern for pattern, _id in designs) == ["saga", "structured"], designs
    assert {(i.pattern, i.status) for i in instances} == {("structured", "completed"), ("saga", "completed")}
    assert {i.journey_id for i in instances} == {journey_id for _pattern, journey_id in designs}


async def test_a_deleted_threads_id_is_gone_and_never_names_a_journey_again(
    ana: LangGraphClient, bob: LangGraphClient
) -> None:
    """A lifecycle (or process) journey's instance id is its thread's id, and the journey outlives the
    thread's deletion (its event log is the audit trail). Deleted, the thread is gone as on the Agent
    Server: every read of it answers 404, for its owner too. Its id is never a thread again: re-creating it
    is a conflict for everyone (a fresh thread on it would name the old journey), and nobody runs that
    journey again on it."""
    thread_id = (await ana.threads.create())["thread_id"]
    start = {"client_id": "mk001", "metrics": LIFECYCLE_READY}
    started = await ana.runs.wait(thread_id, "lifecycle", input=start)
    assert started["journey_id"] == thread_id
    await ana.threads.delete(thread_id)
    for read in (ana.threads.get, ana.threads.get_state, ana.threads.get_history):
        with pytest.raises(httpx.HTTPStatusError) as gone:
            await read(thread_id)
        assert gone.value.response.status_code == 404
    with pytest.raises(NotFoundError):  # deleting it again: it is gone
        await ana.threads.delete(thread_id)
    for client in (bob, ana):
        with pytest.raises(ConflictError, match="deleted"):
            await client.threads.create(thread_id=thread_id, if_exists="do_nothing")
    with pytest.raises(httpx.HTTPStatusError) as refused:
        await ana.runs.wait(thread_id, "lifecycle", input={"client_id": "mk002", "metrics": LIFECYCLE_READY})
    assert refused.value.response.status_code == 404
    assert thread_id not in {t["thread_id"] for t in await ana.threads.search(limit=100)}
    # The journey's history stays readable; nothing more of the journey runs, by any route.
    history = await ana.http.get(f"/journeys/{thread_id}/history")
    assert [e["type"] for e in history][-2:] == ["journey.terminated", "thread.deleted"]
    with pytest.raises(httpx.HTTPStatusError, match="terminated") as refused:
        await ana.http.post(f"/journeys/lifecycle/{thread_id}/metrics", json={"values": {"search_precision": 0.9}})
    assert refused.value.response.status_code == 409


async def test_deleting_a_waiting_process_thread_terminates_its_journey(ana: LangGraphClient, durable_url: str) -> None:
    """A process parked at a user task, with a timer armed, whose thread is deleted: its journey is
    terminated (logged, status ``terminated``), its task leaves the inbox and cannot be completed, and its
    timer is cancelled. Before, the task stayed open and completing it answered 200 while nothing ran: an
    acknowledged answer lost, and a journey ``in_progress`` for ever with no thread to show it."""
    await ana.http.post("/processes", json=WAIT_OR_TIMEOUT)
    thread_id = (await ana.threads.create())["thread_id"]
    started = await ana.runs.wait(thread_id, "process", input={"process": "wait_or_timeout", "business_key": "mk003"})
    assert _task(started) == ("in_progress", "approve")
    [task] = await ana.http.get("/tasks", params={"instance_id": thread_id})
    await ana.threads.delete(thread_id)
    assert await ana.http.get("/tasks", params={"instance_id": thread_id}) == []
    with pytest.raises(httpx.HTTPStatusError) as refused:
        await ana.http.post(f"/tasks/{task['task_id']}/complete", json={"payload": {"ok": True}})
    assert refused.value.response.status_code in (404, 409), refused.value.response.text
    async with JourneyRuntime.open(durable_url) as runtime:
        [instance] = await runtime.store.index.get_instances([thread_id])
        events = [e.type for e in await runtime.store.events.list(thread_id)]
        async with runtime.store.engine.connect() as conn:
            timers = (
                await conn.execute(select(process_timers.c.status).where(process_timers.c.instance_id == thread_id))
            ).scalars()
            assert set(timers) == {"cancelled"}
    assert instance.status == "terminated"
    assert events[-2:] == ["journey.terminated", "thread.deleted"], events


async def test_a_thread_deleted_by_several_requests_at_once_terminates_its_journey_once(
    ana: LangGraphClient, bob: LangGraphClient, durable_url: str, two_users_server: str
) -> None:
    """Four deletes of one waiting process thread at once (three by its owner, one by another user, to whom it
    is not found), beside hostile ids: the journey is terminated and its deletion logged exactly once, every
    answer is 204 or 404, and the server keeps answering."""
    await ana.http.post("/processes", json=WAIT_OR_TIMEOUT)
    thread_id = (await ana.threads.create())["thread_id"]
    await ana.runs.wait(thread_id, "process", input={"process": "wait_or_timeout", "business_key": "mk004"})

    async def delete(client: LangGraphClient, target: str) -> int:
        try:
            await client.threads.delete(target)
        except httpx.HTTPStatusError as refused:
            return refused.response.status_code
        return 204

    async def delete_raw(http: httpx.AsyncClient, path: str) -> int:
        return (await http.delete(f"/threads/{path}")).status_code

    # A lone surrogate as the UTF-8 bytes no client would encode, a huge id, and odd ones.
    hostile = ["%ED%A0%80", "x" * 60_000, "NaN", "..%2F" * 50]
    async with httpx.AsyncClient(base_url=two_users_server, headers={"x-api-key": "key-ana"}) as http:
        answers = await asyncio.gather(
            *(delete(ana, thread_id) for _ in range(3)),
            delete(bob, thread_id),
            *(delete_raw(http, h) for h in hostile),
        )
    assert 204 in answers[:3] and set(answers[:4]) <= {204, 404}, answers
    assert answers[3] == 404  # not bob's to delete
    assert set(answers[4:]) <= {404, 414, 422}, answers
    async with JourneyRuntime.open(durable_url) as runtime:
        [instance] = await runtime.store.index.get_instances([thread_id])
        events = [e.type for e in await runtime.store.events.list(thread_id)]
    assert instance.status == "terminated"
    assert events.count("journey.terminated") == 1 and events.count("thread.deleted") == 1, events
    assert (await ana.http.get("/ok"))["ok"] is True


async def test_deleting_threads_of_which_one_is_busy_deletes_none(ana: LangGraphClient) -> None:
    """``threads.prune(ids)`` and ``assistants.delete(id, delete_threads=True)`` deleted their threads one by one
    and stopped at the first with an active run (409 ThreadBusy): the threads before it were gone and their
    journeys terminated, the others (and the assistant) kept, under an answer saying the call was refused. Both
    refuse before deleting any now, naming the busy thread; once its run is cancelled, both go through."""

    async def threads(assistant_id: str, marker: str) -> tuple[list[str], str]:
        idle = []
        for n in range(3):
            thread_id = (await ana.threads.create())["thread_id"]
            start = {"client_id": f"{marker}{n}", "metrics": LIFECYCLE_READY}
            assert (await ana.runs.wait(thread_id, assistant_id, input=start))["current_stage"] == "sandbox"
            idle.append(thread_id)
        busy = (await ana.threads.create())["thread_id"]  # its run waits an hour to start: an active run
        await ana.runs.create(busy, assistant_id, input={"client_id": f"{marker}9"}, after_seconds=3600)
        return idle, busy

    async def cancel_runs(thread_id: str) -> None:
        for run in await ana.runs.list(thread_id):
            await ana.runs.cancel(thread_id, run["run_id"])

    async def kept(thread_ids: list[str]) -> None:
        for thread_id in thread_ids:
            assert (await ana.threads.get(thread_id))["thread_id"] == thread_id
            status = await ana.http.get(f"/journeys/{thread_id}/status")
            assert status["status"] != "terminated", status

    pruned_idle, pruned_busy = await threads("lifecycle", "mk2")
    with pytest.raises(ConflictError) as refused:
        await ana.threads.prune([*pruned_idle, pruned_busy])  # the busy one last: the others went first
    assert refused.value.response.json()["details"]["thread_id"] == pruned_busy
    await kept(pruned_idle)

    assistant = (await ana.assistants.create("lifecycle"))["assistant_id"]
    idle, busy = await threads(assistant, "mk3")
    with pytest.raises(ConflictError) as refused:
        await ana.assistants.delete(assistant, delete_threads=True)
    assert refused.value.response.json()["details"]["thread_id"] == busy
    await kept(idle)
    assert (await ana.assistants.get(assistant))["assistant_id"] == assistant

    await cancel_runs(pruned_busy)
    assert await ana.threads.prune([*pruned_idle, pruned_busy]) == {"pruned_count": 4}
    await cancel_runs(busy)
    await ana.assistants.delete(assistant, delete_threads=True)
    for thread_id in [*pruned_idle, pruned_busy, *idle, busy]:
        with pytest.raises(NotFoundError):
            await ana.threads.get(thread_id)


async def test_an_assistant_deleted_by_several_requests_at_once_is_deleted_once(ana: LangGraphClient) -> None:
    """Two deletes of one assistant at once both answered 204: each found it, then deleted what was left. As on the
    Agent Server, one deletes it and the others find none (404)."""
    for _ in range(3):
        assistant = (await ana.assistants.create("structured"))["assistant_id"]

        async def delete(assistant_id: str = assistant) -> int:
            try:
                await ana.assistants.delete(assistant_id)
            except httpx.HTTPStatusError as refused:
                return refused.response.status_code
            return 204

        answers = await asyncio.gather(*(delete() for _ in range(4)))
        assert sorted(answers) == [204, 404, 404, 404], answers
        with pytest.raises(NotFoundError):
            await ana.assistants.get(assistant)


async def test_a_structured_journey_whose_thread_was_deleted_is_not_executed_again(ana: LangGraphClient) -> None:
    """A structured journey started through ``/journeys`` is named by its journey and user, and its instance
    stands in for a thread. Deleted as a thread, it was terminated and its checkpoints deleted; executing the
    same journey for the same user then looked like a start a crash cut short, and ran the whole journey again
    on the terminated instance. It is refused (409), and nothing more is logged."""
    design = await ana.http.post("/journeys/structured/designs", json={"journey_type": "content_migration"})
    executions = f"/journeys/structured/{design['journey_id']}/executions"
    body = {"user_id": "ana", "context": {"migration_id": "m-1"}}
    instance_id = (await ana.http.post(executions, json=body))["instance_id"]
    await ana.threads.delete(instance_id)
    history = [e["type"] for e in await ana.http.get(f"/journeys/{instance_id}/history")]

    with pytest.raises(httpx.HTTPStatusError, match="terminated") as refused:
        await ana.http.post(executions, json=body)

    assert refused.value.response.status_code == 409
    assert [e["type"] for e in await ana.http.get(f"/journeys/{instance_id}/history")] == history
    assert history[-2:] == ["journey.terminated", "thread.deleted"]


async def test_a_first_run_refused_before_its_journey_registered_leaves_its_thread_free(store_url: str) -> None:
    """A structured or saga first run that is refused after its journey got an id but before the journey was
    registered (its spec names an evaluator nobody registered) left the thread bound to an instance that never
    existed: the thread's next start was refused as "already runs a journey", and it could never run one. The
    bind now commits with the registration (alone, or with a concurrency slot), so the refused run binds
    nothing, and the next start runs and binds its thread: a resume advances it."""
    unscored = {
        "journey_type": "summary",
        "steps": [{"step_id": "a"}, {"step_id": "b"}],
        "evaluation": {"tier": "gold", "evaluators": {"accuracy": "nobody"}},
    }
    limited = {
        "journey_type": "limited",
        "steps": [{"step_id": "upload_content"}, {"step_id": "analyze_content"}],
        "concurrency": {"key": "$.tenant", "limit": 5},
    }

    async def refused_then_started(client: LangGraphClient, assistant_id: str, marker: str, spec: Any) -> None:
        thread_id = (await client.threads.create())["thread_id"]
        refused = await client.runs.create(thread_id, assistant_id, input={"journey_type": "summary", "spec": unscored})
        await client.runs.join(thread_id, refused["run_id"])
        assert (await client.runs.get(thread_id, refused["run_id"]))["status"] == "error"
        context = {"marker": marker, "tenant": "acme"}
        start = {"journey_type": "limited" if spec else "content_migration", "spec": spec, "context": context}
        started = await client.runs.wait(thread_id, assistant_id, input={k: v for k, v in start.items() if v})
        assert started["current_step"] == "upload_content" and started["completed_steps"] == [], started
        moved = await client.runs.wait(thread_id, assistant_id, command={"resume": {"marker": marker}})
        assert (moved["instance_id"], moved["completed_steps"]) == (started["instance_id"], ["upload_content"])
        state = await client.threads.get_state(thread_id)
        assert markers(state["values"]) == {marker}, state["values"]

    with serving(create_app(Settings(database_url=store_url, api_keys=KEYS))) as base:
        async with get_client(url=base, api_key="key-ana") as ana, get_client(url=base, api_key="key-bob") as bob:
            await asyncio.gather(
                refused_then_started(ana, "structured", "mk001", None),
                refused_then_started(bob, "structured", "mk002", limited),
                refused_then_started(ana, "saga", "mk003", None),
                refused_then_started(bob, "saga", "mk004", limited),
            )


BROKEN_UNDO = {
    "journey_type": "broken_undo",
    "steps": [{"step_id": "reserve", "mode": "user"}, {"step_id": "charge", "mode": "auto", "agent": "charge"}],
}


async def test_a_saga_failed_in_its_compensation_reads_as_failed_on_its_thread_and_its_dashboard_page(
    app: tuple[FastAPI, str], sdk: LangGraphClient
) -> None:
    """A saga whose step failed and whose compensation then failed for good (advanced through the saga API, not a
    run) is ``failed``, retriable: its thread says ``error`` and the dashboard marks it failed. Before, the thread
    said ``idle`` (it looked for a failed task, and its last run, the start, had succeeded)."""
    agents = app[0].state.services.runtime.agents
    agents.register("charge", FailingAgent("charge", permanent=True), replace=True)
    agents.register("unreserve", FailingAgent("unreserve", permanent=True), replace=True)
    tid = (await sdk.threads.create())["thread_id"]
    start = {"journey_type": "broken_undo", "spec": BROKEN_UNDO, "user_id": "ana"}
    await sdk.runs.wait(tid, "saga", input=start | {"compensation_handlers": {"reserve": "unreserve"}})
    saga_id = (await sdk.threads.get(tid))["metadata"]["instance_id"]
    async with httpx.AsyncClient(base_url=app[1], timeout=30) as http:
        journey_id = (await http.get(f"/journeys/sagas/{saga_id}")).json()["journey_id"]
        move = {"journey_id": journey_id, "user_id": "ana", "step_result": {}}
        failed = (await http.post(f"/journeys/sagas/{saga_id}/advance", json=move)).json()
        page = await http.get(f"/ui/journeys/{saga_id}")
    assert failed["status"] == "failed" and failed["compensation_failure"]["handler"] == "unreserve", failed
    assert (await sdk.threads.get(tid))["status"] == "error"
    assert [t["thread_id"] for t in await sdk.threads.search(status="error")] == [tid]
    # The dashboard marks it failed, with its retry, by the same index status.
    assert '<span class="badge failed" id="status">failed</span>' in page.text and 'id="retry"' in page.text

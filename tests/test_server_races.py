"""Races between clients of one server over real HTTP (the official langgraph-sdk, uvicorn on loopback, on
SQLite and PostgreSQL): requests that are each valid alone must stay valid when they arrive together."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from langgraph_sdk import get_client
from langgraph_sdk.client import LangGraphClient

from graphs.errors import JourneyNotFoundError
from graphs.runtime import JourneyRuntime
from server.app import create_app
from server.runs.store import RunStore
from server.runs.watch import RunWatch, wait_for_run
from server.settings import ApiKey, Settings
from tests.server_support import queued_run, serving

pytestmark = pytest.mark.slow
SCOPES = frozenset({"read", "runs", "journeys", "tasks"})
KEYS = {"key-ana": ApiKey("ana", SCOPES), "key-bob": ApiKey("bob", SCOPES)}
TOGETHER = 6  # requests sent at once for one new id


def question(text: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}]}


@pytest.fixture
def server_url(durable_url: str) -> Iterator[str]:
    with serving(create_app(Settings(database_url=durable_url, api_keys=dict(KEYS)))) as url:
        yield url


@pytest.fixture
async def clients(server_url: str) -> AsyncIterator[dict[str, LangGraphClient]]:
    async with (
        get_client(url=server_url, api_key="key-ana") as ana,
        get_client(url=server_url, api_key="key-bob") as bob,
    ):
        yield {"ana": ana, "bob": bob}


async def test_threads_created_at_once_with_one_id_and_do_nothing_are_all_that_thread(
    clients: dict[str, LangGraphClient],
) -> None:
    """threads.create(if_exists="do_nothing") sent at once: every caller gets the one thread (a unique-key
    violation of the losers was a 500)."""
    ana = clients["ana"]
    for _ in range(3):
        tid = str(uuid.uuid4())
        created = await asyncio.gather(
            *[ana.threads.create(thread_id=tid, if_exists="do_nothing", metadata={"n": n}) for n in range(TOGETHER)]
        )
        assert {t["thread_id"] for t in created} == {tid}
        assert len({str(t["metadata"]) for t in created}) == 1  # the winner's thread, as it was created


async def test_runs_that_create_their_thread_at_once_all_run_on_it(clients: dict[str, LangGraphClient]) -> None:
    """runs.create(if_not_exists="create", multitask_strategy="enqueue") sent at once on one new thread id:
    the thread is created once and every run is queued on it and runs (the losers of the thread's creation
    were refused with 409 ThreadExists or a 500)."""
    ana = clients["ana"]
    tid = str(uuid.uuid4())
    runs = await asyncio.gather(
        *[
            ana.runs.create(tid, "guide", input=question(f"q{n}"), if_not_exists="create", multitask_strategy="enqueue")
            for n in range(TOGETHER)
        ]
    )
    assert {r["thread_id"] for r in runs} == {tid}
    for run in runs:
        await ana.runs.join(tid, run["run_id"])
        assert (await ana.runs.get(tid, run["run_id"]))["status"] == "success"
    asked = [m["content"] for m in (await ana.threads.get_state(tid))["values"]["messages"] if m["type"] == "human"]
    assert sorted(asked) == [f"q{n}" for n in range(TOGETHER)]


async def test_another_users_thread_created_at_once_stays_theirs(clients: dict[str, LangGraphClient]) -> None:
    """Two users name one new thread id at once: one gets it, the other is refused as for a thread of someone
    else's (404 for a run on it, 409 for threads.create), never a 500 and never the other's thread."""
    for _ in range(3):
        tid = str(uuid.uuid4())
        answers = await asyncio.gather(
            *[
                clients[who].runs.create(tid, "guide", input=question(who), if_not_exists="create")
                for who in ("ana", "bob") * (TOGETHER // 2)
            ],
            return_exceptions=True,
        )
        statuses = {getattr(getattr(a, "response", None), "status_code", 200) for a in answers}
        assert statuses <= {200, 404, 409}, answers
        owner = "ana" if any(isinstance(a, dict) and a for a in answers[0::2]) else "bob"
        other = "bob" if owner == "ana" else "ana"
        assert all(not isinstance(a, dict) for a in answers[("ana", "bob").index(other) :: 2])
        await clients[owner].runs.join(tid, (await clients[owner].runs.list(tid))[-1]["run_id"])


CONTENT_MIGRATION = {"journey_type": "content_migration", "requirements": {"source": "a", "target": "b"}}


async def test_a_second_journey_queued_behind_the_first_is_refused_not_dropped(
    clients: dict[str, LangGraphClient],
) -> None:
    """Two runs with input (each would start a journey) queued on one thread before the first has started:
    the thread runs the first journey, and the second run ends in error JourneyStarted (as it is refused when
    the thread is already bound). It used to end "success" with the first journey's output: the caller was
    told its journey ran, and it never did."""
    ana = clients["ana"]
    tid = (await ana.threads.create())["thread_id"]
    first = await ana.runs.create(tid, "structured", input={**CONTENT_MIGRATION, "user_id": "ana"}, after_seconds=1)
    other = {"journey_type": "content_migration", "requirements": {"source": "x", "target": "y"}}
    second = await ana.runs.create(tid, "structured", input={**other, "user_id": "ana"}, multitask_strategy="enqueue")
    await ana.runs.join(tid, first["run_id"])
    answer = await ana.runs.join(tid, second["run_id"])
    ended = await ana.runs.get(tid, second["run_id"])
    assert ended["status"] == "error" and ended["error"]["error"] == "JourneyStarted", ended
    assert answer["__error__"]["error"] == "JourneyStarted"
    assert (await ana.runs.get(tid, first["run_id"]))["status"] == "success"


async def test_a_resume_queued_behind_a_cancelled_start_ends_with_a_typed_error(
    clients: dict[str, LangGraphClient],
) -> None:
    """A resume queued behind the thread's first run, delayed for an hour and then cancelled: the resume runs
    at once (the thread's queue waited out the cancelled run's delay), and, nothing having been started, ends
    in error NothingToResume (it was an AssertionError with no message)."""
    ana = clients["ana"]
    tid = (await ana.threads.create())["thread_id"]
    first = await ana.runs.create(tid, "structured", input={**CONTENT_MIGRATION, "user_id": "ana"}, after_seconds=3600)
    queued = await ana.runs.create(tid, "structured", command={"resume": {"files": 1}}, multitask_strategy="enqueue")
    await ana.runs.cancel(tid, first["run_id"], wait=True)
    answer = await asyncio.wait_for(ana.runs.join(tid, queued["run_id"]), 30)
    assert answer["__error__"]["error"] == "NothingToResume", answer
    assert (await ana.runs.get(tid, queued["run_id"]))["status"] == "error"


async def test_a_wait_on_a_run_another_request_rolls_back_ends(clients: dict[str, LangGraphClient]) -> None:
    """Double texting: requests wait on a run (runs.join; runs.wait waits the same way) while the next
    message on the thread comes with multitask_strategy="rollback", which cancels and deletes that run. Each
    waiter ends, with the run's end or, when the run was deleted before it looked, a 404 (never a 500), and
    the new run runs."""
    ana = clients["ana"]
    tid = (await ana.threads.create())["thread_id"]
    await ana.runs.wait(tid, "guide", input=question("first"))
    typo = await ana.runs.create(tid, "guide", input=question("typo"), after_seconds=3600)
    waiting = asyncio.create_task(ana.runs.join(tid, typo["run_id"]))
    joining = asyncio.create_task(ana.runs.join(tid, typo["run_id"]))
    fixed = await ana.runs.create(tid, "guide", input=question("fixed"), multitask_strategy="rollback")
    for waiter in (waiting, joining):
        try:
            await asyncio.wait_for(waiter, 30)
        except Exception as exc:  # langgraph-sdk's join raises httpx's own error
            assert getattr(getattr(exc, "response", None), "status_code", None) == 404, exc
    await ana.runs.join(tid, fixed["run_id"])
    asked = [m["content"] for m in (await ana.threads.get_state(tid))["values"]["messages"] if m["type"] == "human"]
    assert asked == ["first", "fixed"]


async def test_waiting_on_a_run_deleted_before_it_is_read_is_not_found(store_url: str) -> None:
    """The order the test above cannot force: a waiter woken by a run's cancel reads it after the rollback
    deleted it. It is told the run is not found (it failed an assertion: a 500 to runs.wait and runs.join)."""
    async with JourneyRuntime.open(store_url) as runtime:
        runs = RunStore(runtime.store.backend, runtime.store.clock)
        run = await queued_run(runs, "guide")
        await runs.finish(run.run_id, "interrupted")
        await runs.delete_run(run.run_id)  # before the waiter's read, as when its wake-up came late
        with pytest.raises(JourneyNotFoundError):
            await asyncio.wait_for(wait_for_run(runs, RunWatch(), run.run_id, poll=30), 10)


async def test_rollbacks_at_once_all_queue_their_run(clients: dict[str, LangGraphClient]) -> None:
    """Six messages sent at once with multitask_strategy="rollback" on a thread with a delayed run: each rolls
    back what is active (maybe another's new run) and is queued; one that finds a run already deleted by
    another leaves it out (its request failed: a 500 at first, then a 404 for a run it never named)."""
    ana = clients["ana"]
    for _ in range(3):
        tid = (await ana.threads.create())["thread_id"]
        await ana.runs.wait(tid, "guide", input=question("first"))
        typo = await ana.runs.create(tid, "guide", input=question("typo"), after_seconds=3600)
        created = await asyncio.gather(
            *[ana.runs.create(tid, "guide", input=question(t), multitask_strategy="rollback") for t in "abcdef"]
        )
        kept = [r["run_id"] for r in await ana.runs.list(tid, limit=20)]
        ran = [r for r in created if r["run_id"] in kept]  # the others were rolled back by a later message
        assert ran
        for run in ran:
            await ana.runs.join(tid, run["run_id"])
        assert typo["run_id"] not in kept
        state = await ana.threads.get_state(tid)
        asked = [m["content"] for m in state["values"]["messages"] if m["type"] == "human"]
        assert asked[0] == "first" and "typo" not in asked, asked

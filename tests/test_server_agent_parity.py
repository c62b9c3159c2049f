"""Agent Server semantics a langgraph-sdk user relies on, over real HTTP on every backend: the v3 thread
stream's numbers after a run is deleted, stateless runs' threads, thread search by values, name search."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from langgraph_sdk.client import LangGraphClient
from langgraph_sdk.errors import NotFoundError, UnprocessableEntityError

from tests.server_support import v3_events

pytestmark = pytest.mark.slow


def _hello(text: str = "hello") -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}]}


def _base(client: LangGraphClient) -> str:
    return str(client.http.client.base_url)


def _run_of(event: dict[str, Any]) -> str:
    return str(event["event_id"]).rpartition(":")[0]


async def test_thread_stream_since_survives_a_deleted_run(sdk_client: LangGraphClient) -> None:
    """A client that saw the second run end reconnects with ``since`` after the first run was deleted: it gets
    the third run's events, none of the second's again (each run's numbers were fixed when it was created)."""
    client, base = sdk_client, _base(sdk_client)
    tid = (await client.threads.create())["thread_id"]
    first = await client.runs.create(tid, "guide", input=_hello("one"))
    await client.runs.join(tid, first["run_id"])
    second = await client.runs.create(tid, "guide", input=_hello("two"))
    await client.runs.join(tid, second["run_id"])
    seen = await v3_events(base, tid, {"channels": ["lifecycle"], "since": 0}, 4)  # each run: running, then its end
    assert [_run_of(e) for e in seen] == [first["run_id"]] * 2 + [second["run_id"]] * 2
    last_seen = seen[-1]["seq"]

    await client.runs.delete(tid, first["run_id"])
    third = await client.runs.create(tid, "guide", input=_hello("three"))
    await client.runs.join(tid, third["run_id"])
    after = await v3_events(base, tid, {"channels": ["lifecycle"], "since": last_seen}, 2)
    assert [_run_of(e) for e in after] == [third["run_id"]] * 2
    assert [e["params"]["data"]["event"] for e in after] == ["running", "completed"]
    assert all(e["seq"] > last_seen for e in after)
    # What was seen before keeps its numbers.
    again = await v3_events(base, tid, {"channels": ["lifecycle"], "since": 0}, 2)
    assert [e["seq"] for e in again] == [e["seq"] for e in seen[2:]]


async def test_stateless_runs_delete_their_thread_unless_asked_to_keep_it(sdk_client: LangGraphClient) -> None:
    """``/runs``, ``/runs/wait`` and ``/runs/stream`` without a thread: the thread made for the run is deleted
    when it ends (the Agent Server's default ``on_completion="delete"``); ``on_completion="keep"`` keeps it."""
    client = sdk_client
    answer = await client.runs.wait(None, "guide", input=_hello())
    assert isinstance(answer, dict) and answer["messages"][-1]["type"] == "ai"  # the output is still answered
    assert await client.threads.count() == 0
    streamed = [part.event async for part in client.runs.stream(None, "guide", input=_hello())]
    assert streamed[-1] == "end" and "values" in streamed
    assert await client.threads.count() == 0
    await client.runs.create(None, "guide", input=_hello())  # in the background: its thread goes when it ends
    for _ in range(200):
        if await client.threads.count() == 0:
            break
        await asyncio.sleep(0.05)
    assert await client.threads.count() == 0

    kept = await client.runs.create(None, "guide", input=_hello(), on_completion="keep")
    await client.runs.join(kept["thread_id"], kept["run_id"])
    await client.runs.wait(None, "guide", input=_hello(), on_completion="keep")
    threads = await client.threads.search()
    assert len(threads) == 2 and kept["thread_id"] in [t["thread_id"] for t in threads]
    # A run on a thread keeps it, as before.
    tid = (await client.threads.create())["thread_id"]
    await client.runs.wait(tid, "guide", input=_hello())
    assert (await client.threads.get(tid))["thread_id"] == tid


async def test_a_wanted_null_matches_only_an_explicit_null(sdk_client: LangGraphClient) -> None:
    """Searches by values or metadata as the Agent Server's JSONB containment does: ``{"k": None}`` finds what
    holds ``k`` with null, never what has no ``k`` at all (threads' values and metadata, assistants' metadata)."""
    client = sdk_client
    with_null = (await client.threads.create(metadata={"k": None}))["thread_id"]
    await client.runs.wait(with_null, "guide", input=_hello())
    await client.threads.update_state(with_null, {"progress": None})
    without = (await client.threads.create(metadata={"other": 1}))["thread_id"]
    await client.runs.wait(without, "guide", input=_hello())
    await client.threads.create()  # no values at all

    found = await client.threads.search(values={"progress": None})
    assert [t["thread_id"] for t in found] == [with_null]
    assert await client.threads.count(values={"progress": None}) == 1
    assert [t["thread_id"] for t in await client.threads.search(metadata={"k": None})] == [with_null]
    assert await client.threads.count(metadata={"k": None}) == 1
    assert await client.threads.count(metadata={"other": None}) == 0

    named = await client.assistants.create("guide", metadata={"k": None}, name="with a null")
    await client.assistants.create("guide", metadata={"k": 1}, name="with a one")
    found_assistants = await client.assistants.search(metadata={"k": None})
    assert [a["assistant_id"] for a in found_assistants] == [named["assistant_id"]]  # no system assistant
    assert await client.assistants.count(metadata={"k": None}) == 1


async def test_assistant_name_search_ignores_case_in_every_script(sdk_client: LangGraphClient) -> None:
    """``assistants.search(name=…)`` and ``count`` find a name whatever its case, for non-ASCII letters too, the
    same on every backend (SQLite's lower() folds only ASCII)."""
    client = sdk_client
    ecole = await client.assistants.create("guide", name="ÉCOLE Ärger")
    moscow = await client.assistants.create("guide", name="Москва desk")
    await client.assistants.create("guide", name="plain")
    for query, wanted in (("école", ecole), ("ärger", ecole), ("москва".upper(), moscow), ("москва DESK", moscow)):
        found = await client.assistants.search(name=query)
        assert [a["assistant_id"] for a in found] == [wanted["assistant_id"]], query
        assert await client.assistants.count(name=query) == 1
    # A renamed assistant is found by its new name, and by the old one again once it goes back to it.
    await client.assistants.update(ecole["assistant_id"], name="Über")
    assert [a["assistant_id"] for a in await client.assistants.search(name="üBER")] == [ecole["assistant_id"]]
    assert await client.assistants.search(name="école") == []
    await client.assistants.set_latest(ecole["assistant_id"], 1)
    assert [a["assistant_id"] for a in await client.assistants.search(name="ÉcOlE")] == [ecole["assistant_id"]]
    # '%' and '_' match themselves.
    assert await client.assistants.search(name="%") == []


async def test_a_thread_stopped_at_a_breakpoint_is_interrupted(sdk_client: LangGraphClient) -> None:
    """A run stopped by ``interrupt_before`` leaves its thread ``interrupted`` (its checkpoint has a next node),
    as the Agent Server reports it, found by a search on that status; going on from there makes it idle."""
    client = sdk_client
    tid = (await client.threads.create())["thread_id"]
    await client.runs.wait(tid, "guide", input=_hello(), interrupt_before=["agent"])
    assert (await client.threads.get_state(tid))["next"] == ["agent"]
    assert (await client.threads.get(tid))["status"] == "interrupted"
    assert [t["thread_id"] for t in await client.threads.search(status="interrupted")] == [tid]
    await client.runs.wait(tid, "guide", input=None)  # on from the breakpoint
    assert (await client.threads.get_state(tid))["next"] == []
    assert (await client.threads.get(tid))["status"] == "idle"


async def test_an_option_this_server_does_not_serve_is_refused_saying_so(sdk_client: LangGraphClient) -> None:
    """The run stream mode lifecycle (subgraphs' start and end in LangGraph's v3 stream) is refused with a 422
    that says it is not supported and what to use instead, not pydantic's problem per union member."""
    client = sdk_client
    thread = await client.threads.create()
    lifecycle: list[Any] = ["lifecycle", ["values", "lifecycle"]]  # one mode, or a list holding it
    for modes in lifecycle:
        with pytest.raises(UnprocessableEntityError) as run:
            await client.runs.create(thread["thread_id"], "guide", input=_hello(), stream_mode=modes)
        [said] = run.value.response.json()["problems"]
        assert said.startswith("body.stream_mode: Value error, stream_mode 'lifecycle'"), said
        assert "stream 'tasks'" in said, said
    assert await client.runs.list(thread["thread_id"]) == []


# What the Agent Server's JSONB ``@>`` finds for each filter among CONTAINED's objects: a nested object matches
# in part, an array by containment (any order), a scalar only an equal one of its JSON type.
CONTAINED: list[dict[str, Any]] = [
    {"owner": {"name": "ana", "desk": 3, "site": {"city": "Oslo", "floor": 2}}, "tags": ["a", "b"], "n": 1},
    {"owner": {"name": "ana"}, "tags": ["b", "c", ["x", "y"]], "n": 1.0},
    {"owner": {"name": "bo", "desk": 3}, "tags": [], "n": True},
]
CONTAINMENT: list[tuple[dict[str, Any], list[int]]] = [
    ({"owner": {"name": "ana"}}, [0, 1]),
    ({"owner": {"desk": 3}}, [0, 2]),
    ({"owner": {"site": {"city": "Oslo"}}}, [0]),
    ({"owner": {}}, [0, 1, 2]),
    ({"owner": {"name": "ana", "desk": 4}}, []),
    ({"tags": ["b"]}, [0, 1]),
    ({"tags": ["b", "a"]}, [0]),
    ({"tags": []}, [0, 1, 2]),
    ({"tags": [["y"]]}, [1]),
    ({"tags": "b"}, []),  # a scalar is not contained by an array below the top
    ({"n": 1}, [0, 1]),  # 1 = 1.0, but true is not 1
    ({"owner": {"name": None}}, []),
]


async def test_metadata_and_values_filters_contain_as_jsonb_does(sdk_client: LangGraphClient) -> None:
    """Thread (metadata and values), assistant and cron searches and counts find what contains the filter, as
    the Agent Server's ``metadata @> filter``: they compared each top-level key by equality, so
    ``{"owner": {"name": "ana"}}`` found no thread whose owner also had a desk."""
    client = sdk_client
    threads, assistants, crons = [], [], []
    for n, metadata in enumerate(CONTAINED):
        thread = (await client.threads.create(metadata=metadata))["thread_id"]
        await client.runs.wait(thread, "guide", input=_hello())
        await client.threads.update_state(thread, {"progress": metadata})
        threads.append(thread)
        assistant = await client.assistants.create("guide", metadata=metadata, name=f"contained {n}")
        assistants.append(assistant["assistant_id"])
        cron = await client.crons.create_for_thread(thread, "guide", schedule="0 9 * * *", metadata=metadata)
        crons.append(cron["cron_id"])
    for wanted, expected in CONTAINMENT:
        found = await client.threads.search(metadata=wanted, limit=10)
        assert sorted(t["thread_id"] for t in found) == sorted(threads[i] for i in expected), wanted
        assert await client.threads.count(metadata=wanted) == len(expected), wanted
        found = await client.threads.search(values={"progress": wanted}, limit=10)
        assert sorted(t["thread_id"] for t in found) == sorted(threads[i] for i in expected), wanted
        assert await client.threads.count(values={"progress": wanted}) == len(expected), wanted
        found = await client.assistants.search(metadata=wanted, graph_id="guide", limit=10)
        created = [a["assistant_id"] for a in found if a["assistant_id"] in assistants]
        assert sorted(created) == sorted(assistants[i] for i in expected), wanted
        found = await client.crons.search(metadata=wanted, limit=10)
        assert sorted(c["cron_id"] for c in found) == sorted(crons[i] for i in expected), wanted
        assert await client.crons.count(metadata=wanted) == len(expected), wanted


async def test_a_copy_names_itself_in_its_metadata(sdk_client: LangGraphClient) -> None:
    """As the Agent Server's copy, the copy's ``metadata.thread_id`` is its own id (the rest is the source's):
    it kept the source's, so a search by ``thread_id`` found the copy as the source."""
    client = sdk_client
    source = (await client.threads.create(metadata={"team": "ops"}))["thread_id"]
    await client.runs.wait(source, "guide", input=_hello())
    await client.threads.update(source, metadata={"thread_id": source})
    copy = await client.threads.copy(source)
    assert copy["metadata"]["thread_id"] == copy["thread_id"] != source
    assert copy["metadata"]["team"] == "ops"
    assert (await client.threads.get(copy["thread_id"]))["metadata"]["thread_id"] == copy["thread_id"]
    found = await client.threads.search(metadata={"thread_id": source})
    assert [t["thread_id"] for t in found] == [source]
    assert (await client.threads.get(source))["metadata"]["thread_id"] == source


async def test_threads_are_found_by_the_metadata_their_runs_gave_them(sdk_client: LangGraphClient) -> None:
    """A thread's metadata shows the ``graph_id``, ``assistant_id`` and ``instance_id`` its first run bound it
    to, and a search by them finds it, as agent-chat-ui lists a graph's threads (``metadata={"graph_id": …}``):
    they were shown but not searched, so its thread list stayed empty. The thread's own metadata wins."""
    client = sdk_client
    chat = (await client.threads.create(metadata={"team": "ops"}))["thread_id"]
    await client.runs.wait(chat, "guide", input=_hello())
    own = (await client.threads.create(metadata={"graph_id": "mine"}))["thread_id"]
    await client.runs.wait(own, "guide", input=_hello())
    idle = (await client.threads.create(metadata={"team": "ops"}))["thread_id"]
    shown = (await client.threads.get(chat))["metadata"]
    assert (shown["graph_id"], shown["assistant_id"], shown["team"]) == ("guide", "guide", "ops")
    cases: list[tuple[dict[str, Any], list[str]]] = [
        ({"graph_id": "guide"}, [chat]),
        ({"assistant_id": "guide"}, [chat, own]),
        ({"graph_id": "mine"}, [own]),
        ({"graph_id": "guide", "team": "ops"}, [chat]),
        ({"instance_id": shown["instance_id"]}, [chat]),
        ({"graph_id": {"x": 1}}, []),
        ({"team": "ops"}, [chat, idle]),
    ]
    for wanted, expected in cases:
        found = await client.threads.search(metadata=wanted, limit=10)
        assert sorted(t["thread_id"] for t in found) == sorted(expected), wanted
        assert await client.threads.count(metadata=wanted) == len(expected), wanted
        for thread in found:
            assert all(thread["metadata"].get(k) == v for k, v in wanted.items()), (wanted, thread)


async def test_a_thread_made_with_its_run_shows_its_graph_while_the_run_waits(sdk_client: LangGraphClient) -> None:
    """A run without a thread (and a cron's firing) makes its thread, into whose metadata the Agent Server writes
    the run's ``graph_id`` and ``assistant_id`` as it creates them. Such a thread showed no ``graph_id``, and a
    search by it missed the thread, until the run started: as long as the run waited for its time or for a free
    worker (a cron test found no thread of its firing under load)."""
    client = sdk_client
    mine = (await client.assistants.create("guide", name="later"))["assistant_id"]
    run = await client.runs.create(None, mine, input=_hello(), after_seconds=3600)
    assert (await client.runs.get(run["thread_id"], run["run_id"]))["status"] == "pending"
    shown = (await client.threads.get(run["thread_id"]))["metadata"]
    assert (shown.get("graph_id"), shown.get("assistant_id")) == ("guide", mine)
    for wanted in ({"graph_id": "guide"}, {"assistant_id": mine}, {"graph_id": "guide", "assistant_id": mine}):
        assert [t["thread_id"] for t in await client.threads.search(metadata=wanted)] == [run["thread_id"]], wanted
        assert await client.threads.count(metadata=wanted) == 1, wanted


async def test_a_thread_names_the_assistant_its_last_run_ran(sdk_client: LangGraphClient) -> None:
    """As the Agent Server writes on each run, a thread's ``metadata.assistant_id`` is the assistant its latest
    run ran (``graph_id`` its graph), and a search by it finds the thread, as agent-chat-ui configured with an
    assistant's id lists its threads: it showed the graph's id instead, so that list stayed empty."""
    client = sdk_client
    mine = (await client.assistants.create("guide", name="my guide"))["assistant_id"]
    thread = (await client.threads.create())["thread_id"]
    await client.runs.wait(thread, mine, input=_hello())
    shown = (await client.threads.get(thread))["metadata"]
    assert (shown["assistant_id"], shown["graph_id"]) == (mine, "guide")
    for wanted in ({"assistant_id": mine}, {"graph_id": "guide", "assistant_id": mine}, {"graph_id": "guide"}):
        assert [t["thread_id"] for t in await client.threads.search(metadata=wanted)] == [thread], wanted
        assert await client.threads.count(metadata=wanted) == 1, wanted
    assert await client.threads.count(metadata={"assistant_id": "guide"}) == 0
    await client.runs.wait(thread, "guide", input=_hello())  # the latest run's assistant, as each run rewrites it
    assert (await client.threads.get(thread))["metadata"]["assistant_id"] == "guide"
    assert await client.threads.count(metadata={"assistant_id": "guide"}) == 1
    assert await client.threads.count(metadata={"assistant_id": mine}) == 0


async def test_a_history_filter_contains_as_on_postgresql(sdk_client: LangGraphClient) -> None:
    """A thread's history filtered by checkpoint metadata finds the same states on every backend, as the Agent
    Server's ``metadata @> filter``: on SQLite ``{"k": None}`` found every state without ``k`` (the saver's
    JSON path of a missing key is SQL NULL)."""
    client = sdk_client
    thread = (await client.threads.create())["thread_id"]
    await client.runs.wait(thread, "guide", input=_hello())
    states = await client.threads.get_history(thread, limit=100)
    assert len(states) > 1 and all(s["metadata"]["parents"] == {} for s in states)
    cases: list[tuple[dict[str, Any], int]] = [
        ({"nothing": None}, 0),
        ({"source": "loop", "nothing": None}, 0),
        ({"parents": {}}, len(states)),
        ({"step": 1}, 1),
        ({"step": 1, "parents": {}}, 1),
    ]
    for wanted, expected in cases:
        assert len(await client.threads.get_history(thread, limit=100, metadata=wanted)) == expected, wanted
    assert len(await client.threads.get_history(thread, limit=1, metadata={"parents": {}})) == 1


async def test_a_start_that_could_not_run_is_refused_when_its_run_or_cron_is_created(
    sdk_client: LangGraphClient,
) -> None:
    """A structured or saga spec naming an agent no one registered (or a step that is not there), a saga's
    compensation handler no one registered, a template that does not exist: the run was queued, and failed
    when a worker ran it. As the Agent Server refuses at once what it cannot run, the run (and a cron) is now
    refused when it is created, saying what to fix, and nothing is stored."""
    client = sdk_client
    unregistered = {"journey_type": "x", "steps": [{"step_id": "a", "mode": "auto", "agent": "no_such_agent"}]}
    tid = (await client.threads.create())["thread_id"]
    with pytest.raises(UnprocessableEntityError, match="no_such_agent"):
        await client.runs.create(tid, "structured", input={"journey_type": "x", "spec": unregistered})
    with pytest.raises(httpx.HTTPStatusError, match=r"422(.|\n)*no_such_agent"):  # the SDK's wait raises httpx's
        await client.runs.wait(None, "saga", input={"journey_type": "x", "spec": unregistered})
    dangling = {"journey_type": "x", "steps": [{"step_id": "a", "next_steps": ["zz"]}]}
    with pytest.raises(UnprocessableEntityError, match="unknown next step 'zz'"):
        await client.runs.create(tid, "structured", input={"journey_type": "x", "spec": dangling})
    handler = {"journey_type": "content_migration", "compensation_handlers": {"upload_content": "no_such_undo"}}
    with pytest.raises(UnprocessableEntityError, match="no_such_undo"):
        await client.runs.create(tid, "saga", input=handler)
    with pytest.raises(NotFoundError, match="no_such_template"):
        await client.runs.create(tid, "structured", input={"journey_type": "no_such_template"})
    with pytest.raises(UnprocessableEntityError, match="no_such_agent"):
        await client.crons.create("structured", schedule="0 0 1 1 *", input={"journey_type": "x", "spec": unregistered})
    assert await client.runs.list(tid) == [] and await client.crons.count() == 0
    # A sound spec still starts.
    sound = {"journey_type": "x", "steps": [{"step_id": "a", "mode": "user"}]}
    started = await client.runs.wait(tid, "structured", input={"journey_type": "x", "spec": sound})
    assert started["current_step"] == "a"

"""Searches and counts of threads, assistants and crons over real HTTP with the official langgraph-sdk client,
two users, on SQLite and PostgreSQL.

A thread count took ``len()`` of a search that read every one of the caller's threads, and a search by values
or status built every thread's view (a checkpoint read each): at 20,000 threads a count took about half a
second and a status count ten seconds or more, holding the server. Filters and orders the rows hold are now
applied and paged in the query (metadata contained, as JSONB's @>); a search whose filters are
in the threads' views reads at most ``VIEW_LIMIT`` of them and refuses more (422 ``SearchTooBroad``).

``select`` was accepted and ignored by thread and assistant searches (and a cron search answered 500 for
it): each now answers only the named fields, and refuses a name its view does not have (422)."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote_from_bytes

import httpx
import pytest
from langgraph_sdk.client import LangGraphClient
from langgraph_sdk.errors import UnprocessableEntityError

from checkpoints import open_store
from checkpoints.clock import SystemClock
from checkpoints.rows import contains_json
from server.api.threads import VIEW_LIMIT
from server.runs.store import RunStore
from server.settings import ApiKey

pytestmark = pytest.mark.slow
WORK = frozenset({"read", "runs", "journeys", "tasks"})
KEYS = {"key-ana": ApiKey("ana", WORK, ()), "key-bob": ApiKey("bob", WORK, ())}
# Metadata of every JSON kind: a search finds what contains the filter, as JSONB's @> (objects in part and
# without regard to key order, arrays in any order, 1 == 1.0; a wanted null matches only a key there with null).
METADATA: list[dict[str, Any]] = [
    {"team": "ops", "n": 1, "tags": ["a", "b"], "owner": {"name": "ana", "desk": 3}, "gone": None},
    {"team": "ops", "n": 2.0, "tags": ["b", "a"], "owner": {"desk": 3, "name": "ana"}},
    {"team": "dev", "n": 2, "tags": [], "owner": {"name": "bo"}, "gone": "here"},
    {"team": "1", "n": "1", "flag": True},
    {},
]
JOURNEY = {"journey_type": "content_migration", "requirements": {"source": "a", "target": "b"}, "user_id": "ana"}


async def _pages(search: Callable[..., Awaitable[Any]], total: int, size: int, **order: str) -> list[dict[str, Any]]:
    """The pages of ``search`` in ``order``, ``size`` at a time until ``total``, joined."""
    return [found for offset in range(0, total, size) for found in await search(limit=size, offset=offset, **order)]


async def _ids(client: LangGraphClient, **search: Any) -> list[str]:
    return [t["thread_id"] for t in await client.threads.search(limit=100, **search)]


async def test_thread_searches_and_counts_filter_page_and_sort_in_the_query(
    ana: LangGraphClient, bob: LangGraphClient
) -> None:
    mine = [(await ana.threads.create(metadata=m))["thread_id"] for m in METADATA]
    for m in METADATA:  # the same metadata on bob's threads: never found by ana
        await bob.threads.create(metadata=m)
    cases: list[tuple[dict[str, Any], list[int]]] = [
        ({}, [0, 1, 2, 3, 4]),
        ({"team": "ops"}, [0, 1]),
        ({"n": 1}, [0]),
        ({"n": 2}, [1, 2]),
        ({"n": "1"}, [3]),
        ({"team": 1}, []),
        ({"tags": ["a", "b"]}, [0, 1]),
        ({"tags": []}, [0, 1, 2]),
        ({"owner": {"name": "ana", "desk": 3}}, [0, 1]),
        ({"owner": {"name": "ana"}}, [0, 1]),
        ({"owner": {"name": "ana", "desk": 4}}, []),
        ({"gone": None}, [0]),  # only an explicit null, as the Agent Server's JSONB containment
        ({"gone": "here", "team": "dev"}, [2]),
        ({"flag": True}, [3]),
        ({"team": "ops", "n": 2}, [1]),
    ]
    for metadata, expected in cases:
        assert sorted(await _ids(ana, metadata=metadata)) == sorted(mine[i] for i in expected), metadata
        assert await ana.threads.count(metadata=metadata) == len(expected), metadata
    assert await _ids(ana) == mine[::-1]  # newest first
    assert await bob.threads.count() == len(METADATA)

    # Pages of every order the rows hold cover each thread once, in Python's order of the field.
    views = {t["thread_id"]: t for t in await ana.threads.search(limit=100)}
    for sort_by in ("thread_id", "created_at", "updated_at"):
        for order in ("asc", "desc"):
            pages = await _pages(ana.threads.search, len(mine), 2, sort_by=sort_by, sort_order=order)
            expected = sorted(mine, key=lambda i: views[i][sort_by], reverse=order == "desc")
            assert [t["thread_id"] for t in pages] == expected, (sort_by, order)
    assert await _ids(ana, ids=[mine[1], mine[3], "no-such-thread"]) == [mine[3], mine[1]]

    # Filters in the threads' views read the views of the threads the metadata leaves.
    assert await ana.threads.count(status="idle") == len(METADATA)
    assert await ana.threads.count(status="busy") == 0
    assert sorted(await _ids(ana, metadata={"team": "ops"}, status="idle")) == sorted(mine[:2])
    by_status = await ana.threads.search(sort_by="status", sort_order="asc", limit=2, offset=3)
    assert len(by_status) == 2 and all(t["status"] == "idle" for t in by_status)

    # A filter of many keys: SQLite compared each in a subquery of its own, so 1,500 keys were refused by SQLite
    # (an expression over 1,000 deep: a 500), and 20,000 took 100 s to compile first, holding the server. Past
    # the first keys the rows' metadata decides, on SQLite as PostgreSQL's @> does.
    wide = {f"k{n}": n for n in range(1500)}
    widest = (await ana.threads.create(metadata=wide))["thread_id"]
    for metadata, expected in ((wide, [widest]), ({**wide, "k1499": -1}, []), ({**wide, "team": "ops"}, [])):
        assert await _ids(ana, metadata=metadata) == expected
        assert await ana.threads.count(metadata=metadata) == len(expected)
    # An array in a filter: each wanted element was looked for across the stored array (on SQLite, in Python,
    # on the server's loop): 8,000 of each took about 15 s a search (30 s both), 20,000 about 100 s.
    tags = list(range(8_000))
    tagged = (await ana.threads.create(metadata={"tags": tags}))["thread_id"]
    started = time.monotonic()
    assert await _ids(ana, metadata={"tags": tags[::-1]}) == [tagged]
    assert await ana.threads.count(metadata={"tags": [*tags, -1]}) == 0
    assert time.monotonic() - started < 10  # PostgreSQL's own @> takes about 2 s for each of the two


async def test_a_search_by_arrays_of_objects_or_arrays_is_linear_or_refused(ana: LangGraphClient) -> None:
    """An array of objects (or of arrays) in a filter was compared with each stored element in turn, on the
    server's loop: 3,000 of each, about 12 s a search (SQLite's metadata and every store's values, in Python).
    Each wanted element is now looked up by a scalar it holds, or its JSON; what no scalar tells apart is refused
    (422 FilterTooCostlyError) once its work passes a bound linear in the JSON compared."""
    n = 3_000
    items = [{"i": i, "at": [i, "x"], "pair": [[i]]} for i in range(n)]
    wanted = [{"at": [n - 1 - j], "pair": [[n - 1 - j]]} for j in range(n)]  # contained, none equal: looked up
    thread = (await ana.threads.create(metadata={"items": items}))["thread_id"]
    await ana.runs.wait(thread, "structured", input=JOURNEY)
    await ana.threads.update_state(thread, {"context": {"items": items}})
    started = time.monotonic()
    assert await _ids(ana, metadata={"items": wanted}) == [thread]
    assert await ana.threads.count(metadata={"items": [*wanted, {"i": n}]}) == 0
    assert await _ids(ana, values={"context": {"items": wanted}}) == [thread]
    assert await _ids(ana, values={"context": {"items": [{"i": n - 1, "at": ["x"]}, *wanted[:-1], []]}}) == []
    # Loose: each search carries ~200 KB of JSON through the SDK, the API and the store, seconds on a loaded CI
    # box (the comparison itself is timed by the test below); compared element by element they took 56 s.
    assert time.monotonic() - started < 30
    # Objects no scalar tells apart, each contained only in one element: a scan of the array for each.
    alike = [{"at": [], "pair": [[n - 1 - j]]} for j in range(n)]
    started = time.monotonic()
    with pytest.raises(UnprocessableEntityError) as refused:
        await ana.threads.search(values={"context": {"items": alike}})
    assert refused.value.response.json()["code"] == "FilterTooCostlyError", refused.value.response.text
    assert time.monotonic() - started < 30


def test_containment_of_arrays_of_objects_or_of_arrays_is_linear() -> None:
    """The comparison the searches above make, alone and timed in CPU: 6,000 wanted objects (or arrays) each
    looked up in 6,000 stored ones by a scalar it holds, not compared with each in turn (which took 3.4 s for
    3,000 objects and 7.3 s for 3,000 arrays, four times that at 6,000)."""
    n = 6_000
    stored = [{"i": i, "at": [i, "x"], "pair": [[i]]} for i in range(n)]
    wanted = [{"at": [n - 1 - j], "pair": [[n - 1 - j]]} for j in range(n)]
    arrays = [[i, [i, "x"]] for i in range(n)]
    started = time.process_time()
    assert contains_json(stored, wanted)
    assert not contains_json(stored, [*wanted, {"i": n}])
    assert contains_json(arrays, [[n - 1 - j] for j in range(n)])
    assert not contains_json(arrays, [*([j] for j in range(n)), [n]])
    assert time.process_time() - started < 2


async def test_a_search_by_values_or_status_over_too_many_threads_is_refused_not_read(
    ana: LangGraphClient, durable_url: str
) -> None:
    async with open_store(durable_url, clock=SystemClock()) as store:
        runs = RunStore(store.backend, store.clock)
        for n in range(VIEW_LIMIT + 1):
            await runs.create_thread(None, {"n": n, "few": n < 3}, "ana")
    assert await ana.threads.count() == VIEW_LIMIT + 1
    assert await ana.threads.count(metadata={"few": True}) == 3
    for call in (
        lambda: ana.threads.count(status="idle"),
        lambda: ana.threads.search(values={"x": 1}),
        lambda: ana.threads.search(sort_by="status"),
    ):
        with pytest.raises(UnprocessableEntityError) as refused:
            await call()
        problem = refused.value.response.json()
        assert problem["code"] == "SearchTooBroad" and problem["details"]["limit"] == VIEW_LIMIT, problem
    # Narrowed by metadata, the same filters are served.
    assert await ana.threads.count(metadata={"few": True}, status="idle") == 3
    assert await ana.threads.search(metadata={"few": True}, values={"x": 1}) == []
    assert len(await ana.threads.search(limit=5, offset=VIEW_LIMIT - 2)) == 3


async def test_assistant_searches_and_counts_page_in_the_query(ana: LangGraphClient, bob: LangGraphClient) -> None:
    system = await ana.assistants.count()
    made = [
        (await ana.assistants.create("structured", name=f"a{n:02}", metadata={"n": n, "odd": n % 2 == 1}))[
            "assistant_id"
        ]
        for n in range(7)
    ]
    await bob.assistants.create("structured", name="bobs", metadata={"n": 1})
    assert await ana.assistants.count() == system + len(made)
    assert await ana.assistants.count(metadata={"odd": True}) == 3
    assert await ana.assistants.count(graph_id="structured", metadata={"n": 1}) == 1
    everything = await ana.assistants.search(limit=100)
    for sort_by in ("name", "assistant_id", "created_at"):
        for order in ("asc", "desc"):
            pages = await _pages(ana.assistants.search, len(everything), 3, sort_by=sort_by, sort_order=order)
            assert sorted(a["assistant_id"] for a in pages) == sorted(a["assistant_id"] for a in everything)
            ordered = sorted((str(a[sort_by]) for a in everything), reverse=order == "desc")
            assert [str(a[sort_by]) for a in pages] == ordered, (sort_by, order)
    found = await ana.assistants.search(metadata={"odd": False}, sort_by="name", sort_order="asc", offset=1, limit=2)
    assert [a["name"] for a in found] == ["a02", "a04"]


async def test_select_answers_only_the_named_fields_and_refuses_unknown_ones(ana: LangGraphClient) -> None:
    thread = await ana.threads.create(metadata={"team": "ops"})
    assert await ana.threads.search(select=["thread_id", "metadata"]) == [
        {"thread_id": thread["thread_id"], "metadata": {"team": "ops"}}
    ]
    assert await ana.threads.search(metadata={"team": "ops"}, status="idle", select=["status"]) == [{"status": "idle"}]
    made = await ana.assistants.create("structured", name="mine")
    found = await ana.assistants.search(graph_id="structured", name="mine", select=["assistant_id", "name"])
    assert found == [{"assistant_id": made["assistant_id"], "name": "mine"}]
    cron = await ana.crons.create("structured", schedule="0 9 * * *", input=JOURNEY)
    assert await ana.crons.search(select=["cron_id", "schedule"]) == [
        {"cron_id": cron["cron_id"], "schedule": "0 9 * * *"}
    ]
    # "now", which langgraph-sdk's CronSelectField names (the Agent Server's current time beside next_run_date):
    # it was refused (422) as no field of a cron.
    before = datetime.now(UTC)
    [timed] = await ana.crons.search(select=["cron_id", "now"])
    assert set(timed) == {"cron_id", "now"} and before <= datetime.fromisoformat(timed["now"]) <= datetime.now(UTC)
    for call in (
        lambda: ana.threads.search(select=["thread_id", "nope"]),  # type: ignore[list-item]
        lambda: ana.assistants.search(select=["nope"]),  # type: ignore[list-item]
        lambda: ana.crons.search(select=["next"]),  # type: ignore[list-item]
    ):
        with pytest.raises(UnprocessableEntityError) as refused:
            await call()
        assert "Input should be '" in refused.value.response.text, refused.value.response.text


async def test_a_state_read_answers_only_the_selected_fields_or_values(ana: LangGraphClient) -> None:
    thread = (await ana.threads.create())["thread_id"]
    await ana.runs.wait(thread, "structured", input=JOURNEY)
    await ana.threads.update_state(thread, {"context": {"note": "ops"}})
    state = await ana.threads.get_state(thread)
    assert set(state["values"]) > {"status"}, state["values"]
    status = state["values"]["status"]
    checkpoint = state["checkpoint"]
    assert await ana.threads.get_state(thread, select=["values.status", "next"]) == {
        "values": {"status": status},
        "next": state["next"],
    }
    at = await ana.threads.get_state(thread, checkpoint=checkpoint, select=["checkpoint", "values.nothing"])
    assert at == {"checkpoint": checkpoint, "values": {}}
    by_id = await ana.threads.get_state(thread, checkpoint_id=checkpoint["checkpoint_id"], select=["values"])
    assert by_id == {"values": state["values"]}
    history = await ana.threads.get_history(thread, limit=2, select=["created_at"])
    assert len(history) == 2 and all(set(h) == {"created_at"} for h in history)
    [run] = await ana.runs.list(thread)
    assert await ana.runs.list(thread, select=["run_id", "status"]) == [{"run_id": run["run_id"], "status": "success"}]
    for call in (
        lambda: ana.threads.get_state(thread, select=["tasks", "config"]),
        lambda: ana.threads.get_state(thread, checkpoint_id=checkpoint["checkpoint_id"], select=["values."]),
        lambda: ana.threads.get_state(thread, checkpoint=checkpoint, select=["nope.x"]),
        lambda: ana.threads.get_history(thread, select=["next", "parent"]),
        lambda: ana.runs.list(thread, select=["run_id", "nope"]),  # type: ignore[list-item]
    ):
        with pytest.raises(UnprocessableEntityError) as refused:
            await call()
        assert "Input should be '" in refused.value.response.text, refused.value.response.text


async def _post(client: LangGraphClient, path: str, body: Any) -> httpx.Response:
    """``body`` sent as it is: the SDK's encoder refuses what a hostile client sends (integers beyond 64 bits)."""
    content = json.dumps(body).encode("utf-8", "surrogatepass")
    return await client.http.client.post(path, content=content, headers={"content-type": "application/json"})


async def _get(client: LangGraphClient, path: str, name: str, value: Any) -> httpx.Response:
    """``path?name=value``, the value's UTF-8 bytes (lone surrogates too) percent-encoded as they are."""
    query = quote_from_bytes(str(value).encode("utf-8", "surrogatepass"))
    return await client.http.client.get(f"{path}?{name}={query}")


async def test_hostile_values_on_read_routes_answer_a_4xx_or_their_result(ana: LangGraphClient) -> None:
    thread = (await ana.threads.create())["thread_id"]
    await ana.runs.wait(thread, "guide", input={"messages": [{"role": "user", "content": "hi"}]})
    history = f"/threads/{thread}/history"
    # A checkpoint named by something other than a string id was passed to the checkpointer: 500 on PostgreSQL
    # (and on SQLite for an integer beyond 64 bits), or ignored.
    for before in ({"checkpoint_id": -1}, {"checkpoint_id": 2**63}, {"checkpoint_id": 1.5}, {"checkpoint_id": True}):
        assert (await _post(ana, history, {"before": before})).status_code == 422, before
    assert (await _post(ana, history, {"before": "x" * 101})).status_code == 422
    # A metadata value beyond 64 bits failed SQLite's query (500): no state holds it.
    for metadata in ({"step": 2**63}, {"step": -(2**70), "source": "loop"}):
        answered = await _post(ana, history, {"metadata": metadata})
        assert answered.status_code == 200 and answered.json() == [], answered.text
    steps = [s["metadata"]["step"] for s in await ana.http.post(history, json={"limit": 100})]
    found = await ana.http.post(history, json={"metadata": {"step": steps[-1]}})
    assert [s["metadata"]["step"] for s in found] == [steps[-1]]
    for hostile in (-1, 2**63, "NaN", "\ud800"):
        for path, body in (
            (history, {"limit": hostile}),
            ("/store/items/search", {"namespace_prefix": ["a"], "offset": hostile}),
            ("/store/items/search", {"namespace_prefix": ["a"], "query": hostile}),
            ("/store/items/search", {"namespace_prefix": ["a"], "filter": {"k": hostile}}),
        ):
            assert (await _post(ana, path, body)).status_code in (200, 400, 422), (path, body)
        runs = await _get(ana, f"/threads/{thread}/runs", "offset", hostile)
        assert runs.status_code in (200, 422), (hostile, runs.text)
        for assistant in ("guide", "structured"):
            graph = await _get(ana, f"/assistants/{assistant}/graph", "xray", hostile)
            assert graph.status_code in (200, 422), (assistant, hostile, graph.text)

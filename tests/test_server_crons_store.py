"""The store (LangGraph's official ``BaseStore`` on the server's database) and crons, driven by the official
``langgraph-sdk`` client over real HTTP; every answer is checked against the SDK's own types."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any, TypedDict, get_type_hints

import pytest
from langgraph.config import get_store
from langgraph.graph import END, START, StateGraph
from langgraph.store.memory import InMemoryStore
from langgraph.store.postgres.aio import AsyncPostgresStore
from langgraph.store.sqlite.aio import AsyncSqliteStore
from langgraph_sdk import get_client
from langgraph_sdk.client import LangGraphClient
from langgraph_sdk.errors import UnprocessableEntityError
from langgraph_sdk.schema import Item, ListNamespaceResponse, SearchItem, SearchItemsResponse

from graphs import JourneyRuntime
from server.app import create_app
from server.settings import Settings
from tests.server_support import serving

pytestmark = pytest.mark.slow


def assert_shape(value: Any, shape: type[Any]) -> None:
    """``value`` has exactly the required keys of the SDK TypedDict ``shape`` (plus only its optional ones)."""
    hints = get_type_hints(shape)
    assert isinstance(value, dict), value
    required: frozenset[str] = getattr(shape, "__required_keys__", frozenset(hints))
    assert required <= value.keys() <= hints.keys(), (shape.__name__, sorted(value))


@pytest.fixture
def server_url(store_url: str) -> Iterator[str]:
    with serving(create_app(Settings(database_url=store_url, auth=False))) as base:
        yield base


@pytest.fixture
async def client(server_url: str) -> AsyncIterator[LangGraphClient]:
    async with get_client(url=server_url, api_key=None) as sdk:
        yield sdk


async def test_the_store_endpoints_answer_in_the_sdk_shapes(client: LangGraphClient) -> None:
    assert await client.store.get_item(["users", "ana"], key="prefs") is None
    await client.store.put_item(["users", "ana"], key="prefs", value={"theme": "dark", "lang": "en"})
    await client.store.put_item(["users", "ana", "notes"], key="n1", value={"text": "call bob"})
    await client.store.put_item(["users", "bob"], key="prefs", value={"theme": "light"})

    item = await client.store.get_item(["users", "ana"], key="prefs")
    assert_shape(item, Item)
    assert (item["namespace"], item["key"]) == (["users", "ana"], "prefs")
    assert item["value"] == {"theme": "dark", "lang": "en"}

    found = await client.store.search_items(["users"], filter={"theme": "dark"})
    assert_shape(found, SearchItemsResponse)
    for hit in found["items"]:
        assert_shape(hit, SearchItem)
    assert [(h["namespace"], h["key"]) for h in found["items"]] == [(["users", "ana"], "prefs")]
    page = await client.store.search_items(["users"], limit=2, offset=0)
    assert len(page["items"]) == 2

    namespaces = await client.store.list_namespaces(prefix=["users"])
    assert_shape(namespaces, ListNamespaceResponse)
    assert sorted(namespaces["namespaces"]) == [["users", "ana"], ["users", "ana", "notes"], ["users", "bob"]]
    shallow = await client.store.list_namespaces(prefix=["users"], max_depth=2)
    assert sorted(shallow["namespaces"]) == [["users", "ana"], ["users", "bob"]]

    await client.store.put_item(["users", "ana"], key="prefs", value={"theme": "light"})
    updated = await client.store.get_item(["users", "ana"], key="prefs")
    assert updated is not None and updated["value"] == {"theme": "light"}
    await client.store.delete_item(["users", "ana"], key="prefs")
    assert await client.store.get_item(["users", "ana"], key="prefs") is None


async def test_bad_store_input_is_refused_with_a_problem(client: LangGraphClient) -> None:
    with pytest.raises(UnprocessableEntityError):
        await client.store.put_item(["users"], key="k", value={"a": 1}, ttl=5)  # no TTLs: said, not ignored
    with pytest.raises(UnprocessableEntityError):
        await client.http.put("/store/items", json={"namespace": [], "key": "k", "value": {}})
    with pytest.raises(UnprocessableEntityError):
        await client.http.get("/store/items", params={"namespace": "users..ana", "key": "k"})


class Remembered(TypedDict):
    user: str
    seen: int


def remembering_graph() -> StateGraph[Remembered]:
    """A graph whose node keeps a per-user count in the store it reaches with ``get_store()``."""

    async def count(state: Remembered) -> dict[str, Any]:
        store = get_store()
        previous = await store.aget(("visits",), state["user"])
        seen = (previous.value["count"] if previous else 0) + 1
        await store.aput(("visits",), state["user"], {"count": seen})
        return {"seen": seen}

    graph = StateGraph(Remembered)
    graph.add_node("count", count)
    graph.add_edge(START, "count")
    graph.add_edge("count", END)
    return graph


STORE_CLASSES = {"memory": InMemoryStore, "sqlite": AsyncSqliteStore, "postgres": AsyncPostgresStore}


async def test_every_compiled_graph_gets_the_official_store_of_the_database(store_url: str) -> None:
    kind = store_url.split(":", 1)[0].replace("postgresql", "postgres")
    async with JourneyRuntime.open(store_url) as runtime:
        assert type(runtime.store.graph_store) is STORE_CLASSES[kind]
        assert runtime.store.graph_store.index_config is None  # vector search is off unless configured
        if runtime.store.pg_pool is not None:  # on the shared pool: no connection of its own
            assert runtime.store.graph_store.conn is runtime.store.pg_pool
        graph = runtime.engine.compiled("remembering", remembering_graph)
        assert graph.store is runtime.store.graph_store
        config = runtime.engine.config("visit-1")
        assert (await graph.ainvoke({"user": "ana", "seen": 0}, config))["seen"] == 1
        assert (await graph.ainvoke({"user": "ana", "seen": 0}, runtime.engine.config("visit-2")))["seen"] == 2
    if kind == "memory":
        return
    async with JourneyRuntime.open(store_url) as reopened:  # the store is on the database: it outlives the process
        item = await reopened.store.graph_store.aget(("visits",), "ana")
        assert item is not None and item.value == {"count": 2}

"""Searching assistants by name over real HTTP through langgraph-sdk answers the same on every backend: the name
matches case-insensitively (PostgreSQL's LIKE is case-sensitive, SQLite's is not: "sales" found "Sales Helper"
on one and not the other), for created and system assistants alike, and LIKE's wildcards match themselves."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from langgraph_sdk import get_client
from langgraph_sdk.client import LangGraphClient

from server.app import create_app
from server.settings import Settings
from tests.server_support import serving

pytestmark = pytest.mark.slow


@pytest.fixture
def server_url(store_url: str) -> Iterator[str]:
    with serving(create_app(Settings(database_url=store_url, auth=False))) as base:
        yield base


@pytest.fixture
async def client(server_url: str) -> AsyncIterator[LangGraphClient]:
    async with get_client(url=server_url, api_key=None) as sdk_client:
        yield sdk_client


async def test_a_name_search_ignores_case_on_every_backend(client: LangGraphClient) -> None:
    await client.assistants.create("guide", name="Sales Helper")
    await client.assistants.create("guide", name="100% sure_thing")
    for query in ("Sales", "sales", "SALES HELPER", "helper"):
        assert [a["name"] for a in await client.assistants.search(name=query)] == ["Sales Helper"], query
        assert await client.assistants.count(name=query) == 1, query
    assert [a["assistant_id"] for a in await client.assistants.search(name="GUIDE")] == ["guide"]  # a system one
    assert await client.assistants.count(name="Guide") == 1
    assert [a["name"] for a in await client.assistants.search(name="0% S")] == ["100% sure_thing"]
    assert await client.assistants.search(name="s_r") == []  # "_" is no wildcard: "sur" is not found

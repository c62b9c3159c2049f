"""Searching assistants by name over real HTTP through langgraph-sdk answers the same on every backend: the name
matches case-insensitively (PostgreSQL's LIKE is case-sensitive, SQLite's is not: "sales" found "Sales Helper"
on one and not the other), for created and system assistants alike, and LIKE's wildcards match themselves."""

from __future__ import annotations

import pytest
from langgraph_sdk.client import LangGraphClient

pytestmark = pytest.mark.slow


async def test_a_name_search_ignores_case_on_every_backend(sdk_client: LangGraphClient) -> None:
    await sdk_client.assistants.create("guide", name="Sales Helper")
    await sdk_client.assistants.create("guide", name="100% sure_thing")
    for query in ("Sales", "sales", "SALES HELPER", "helper"):
        assert [a["name"] for a in await sdk_client.assistants.search(name=query)] == ["Sales Helper"], query
        assert await sdk_client.assistants.count(name=query) == 1, query
    assert [a["assistant_id"] for a in await sdk_client.assistants.search(name="GUIDE")] == ["guide"]  # a system one
    assert await sdk_client.assistants.count(name="Guide") == 1
    assert [a["name"] for a in await sdk_client.assistants.search(name="0% S")] == ["100% sure_thing"]
    assert await sdk_client.assistants.search(name="s_r") == []  # "_" is no wildcard: "sur" is not found

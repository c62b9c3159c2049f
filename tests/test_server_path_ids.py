"""Ids a client chooses are addressed in URL paths afterwards (``/threads/{thread_id}``,
``/assistants/{assistant_id}``), so one holding a '/' is refused when it is given (422, saying why), over real
HTTP through langgraph-sdk: before, ``threads.create(thread_id="a/b")`` answered 200 and the thread could
never be read, run or deleted again (every call 404)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from langgraph_sdk import get_client
from langgraph_sdk.client import LangGraphClient
from langgraph_sdk.errors import UnprocessableEntityError

from server.app import create_app
from server.settings import Settings
from tests.server_support import serving

pytestmark = pytest.mark.slow
GUIDE = {"messages": [{"role": "user", "content": "what next?"}]}


@pytest.fixture
def server_url(store_url: str) -> Iterator[str]:
    with serving(create_app(Settings(database_url=store_url, auth=False))) as base:
        yield base


@pytest.fixture
async def client(server_url: str) -> AsyncIterator[LangGraphClient]:
    async with get_client(url=server_url, api_key=None) as sdk_client:
        yield sdk_client


async def test_an_id_with_a_slash_is_refused_where_it_would_be_stored(client: LangGraphClient) -> None:
    with pytest.raises(UnprocessableEntityError, match="'/'"):
        await client.threads.create(thread_id="team/a")
    with pytest.raises(UnprocessableEntityError, match="'/'"):
        await client.assistants.create("guide", assistant_id="team/helper")
    with pytest.raises(UnprocessableEntityError, match="'/'"):
        await client.runs.create_batch(
            [{"thread_id": "team/b", "assistant_id": "guide", "input": GUIDE, "if_not_exists": "create"}]
        )
    assert await client.threads.search() == []  # nothing was stored
    assert [a["assistant_id"] for a in await client.assistants.search(graph_id="guide")] == ["guide"]
    # Other characters are addressed fine (the SDK quotes them): a thread id with them works end to end.
    created = await client.threads.create(thread_id="team a?b#c..ü")
    await client.runs.wait(created["thread_id"], "guide", input=GUIDE)
    assert (await client.threads.get("team a?b#c..ü"))["status"] == "idle"
    await client.threads.delete("team a?b#c..ü")

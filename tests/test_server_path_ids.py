"""Ids a client chooses are addressed in URL paths afterwards (``/threads/{thread_id}``,
``/assistants/{assistant_id}``), so one holding a '/' is refused when it is given (422, saying why), over real
HTTP through langgraph-sdk: before, ``threads.create(thread_id="a/b")`` answered 200 and the thread could
never be read, run or deleted again (every call 404)."""

from __future__ import annotations

import pytest
from langgraph_sdk.client import LangGraphClient
from langgraph_sdk.errors import UnprocessableEntityError

pytestmark = pytest.mark.slow
GUIDE = {"messages": [{"role": "user", "content": "what next?"}]}


async def test_an_id_with_a_slash_is_refused_where_it_would_be_stored(sdk_client: LangGraphClient) -> None:
    with pytest.raises(UnprocessableEntityError, match="'/'"):
        await sdk_client.threads.create(thread_id="team/a")
    with pytest.raises(UnprocessableEntityError, match="'/'"):
        await sdk_client.assistants.create("guide", assistant_id="team/helper")
    with pytest.raises(UnprocessableEntityError, match="'/'"):
        await sdk_client.runs.create_batch(
            [{"thread_id": "team/b", "assistant_id": "guide", "input": GUIDE, "if_not_exists": "create"}]
        )
    assert await sdk_client.threads.search() == []  # nothing was stored
    assert [a["assistant_id"] for a in await sdk_client.assistants.search(graph_id="guide")] == ["guide"]
    # Other characters are addressed fine (the SDK quotes them): a thread id with them works end to end.
    created = await sdk_client.threads.create(thread_id="team a?b#c..ü")
    await sdk_client.runs.wait(created["thread_id"], "guide", input=GUIDE)
    assert (await sdk_client.threads.get("team a?b#c..ü"))["status"] == "idle"
    await sdk_client.threads.delete("team a?b#c..ü")

"""Ids a client chooses are addressed in URL paths afterwards (``/threads/{thread_id}``,
``/assistants/{assistant_id}``), so one holding a '/' is refused when it is given (422, saying why), over real
HTTP through langgraph-sdk: before, ``threads.create(thread_id="a/b")`` answered 200 and the thread could
never be read, run or deleted again (every call 404).

Any other character is addressed, quoted, the answers naming the run included: a run's Content-Location and
Location headers (where langgraph-sdk learns the run and reconnects) held the thread id raw, so a thread id
beyond Latin-1 (``"注文-🚀"``) failed every run request with a 500 after the run was made, and one holding
``%2F`` or ``?`` sent a reconnect to another path."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx
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
    for thread_id in ("注文-🚀 a?b#c", "a%2Fb"):
        await runs_name_themselves(sdk_client, thread_id)


async def runs_name_themselves(sdk_client: LangGraphClient, thread_id: str) -> None:
    """Every run-creating request on ``thread_id`` answers, and its Content-Location and Location lead back to that
    run and its join or stream; langgraph-sdk's ``on_run_created`` gets the run."""
    await sdk_client.threads.create(thread_id=thread_id)
    created: list[Any] = []
    await sdk_client.runs.wait(thread_id, "guide", input=GUIDE, on_run_created=created.append)
    async for _part in sdk_client.runs.stream(thread_id, "guide", input=GUIDE, on_run_created=created.append):
        pass
    background = await sdk_client.runs.create(thread_id, "guide", input=GUIDE, on_run_created=created.append)
    await sdk_client.runs.join(thread_id, background["run_id"])
    runs = {run["run_id"] for run in await sdk_client.runs.list(thread_id)}
    assert {c["run_id"] for c in created} == runs and len(runs) == 3
    http: httpx.AsyncClient = sdk_client.http.client
    body = {"assistant_id": "guide", "input": GUIDE}
    for path, leads_to in (("/runs/wait", "/join"), ("/runs/stream", "/stream"), ("/runs", None)):
        async with http.stream("POST", f"/threads/{quote(thread_id, safe='')}{path}", json=body) as answer:
            assert answer.status_code == 200, await answer.aread()
            await answer.aread()
        run = (await http.get(answer.headers["content-location"])).json()
        assert (run.get("thread_id"), run.get("status") in {"pending", "running", "success"}) == (thread_id, True), run
        if leads_to:
            assert answer.headers["location"] == answer.headers["content-location"] + leads_to
            assert (await http.get(answer.headers["location"])).status_code == 200

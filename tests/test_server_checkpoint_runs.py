"""A run that goes on from a checkpoint (``checkpoint_id`` or ``checkpoint``) of a chat thread, over real HTTP
through langgraph-sdk: a checkpoint the thread does not have is not found (404) before anything is stored, and
the thread keeps its state. Before, the run was taken, "forked" from the missing checkpoint, i.e. from nothing,
and succeeded: the conversation so far was silently dropped from the thread's state."""

from __future__ import annotations

import pytest
from langgraph_sdk.client import LangGraphClient
from langgraph_sdk.errors import NotFoundError, UnprocessableEntityError

pytestmark = pytest.mark.slow
MISSING = "1f1f0a4f-0000-6e5d-8002-36dc8d034058"  # shaped like a checkpoint id; no thread has it


def _said(text: str) -> dict[str, list[dict[str, str]]]:
    return {"messages": [{"role": "user", "content": text}]}


async def test_a_run_from_a_checkpoint_the_thread_lacks_is_not_found_and_changes_nothing(
    sdk_client: LangGraphClient,
) -> None:
    tid = (await sdk_client.threads.create())["thread_id"]
    await sdk_client.runs.wait(tid, "guide", input=_said("hi"))
    before = await sdk_client.threads.get_state(tid)
    with pytest.raises(NotFoundError, match=MISSING):
        await sdk_client.runs.create(tid, "guide", input=_said("again"), checkpoint_id=MISSING)
    with pytest.raises(NotFoundError, match=MISSING):
        await sdk_client.runs.create(tid, "guide", input=_said("again"), checkpoint={"checkpoint_id": MISSING})
    with pytest.raises(NotFoundError, match=MISSING):  # as LangGraph reads it: the run's config names it
        await sdk_client.runs.create(
            tid, "guide", input=_said("again"), config={"configurable": {"checkpoint_id": MISSING}}
        )
    assert len(await sdk_client.runs.list(tid)) == 1  # nothing was queued
    after = await sdk_client.threads.get_state(tid)
    assert after["checkpoint"] == before["checkpoint"] and after["values"] == before["values"]
    # A checkpoint it has still works: the thread goes on from there.
    first = (await sdk_client.threads.get_history(tid, limit=10))[-2]["checkpoint"]["checkpoint_id"]
    out = await sdk_client.runs.wait(tid, "guide", input=_said("again"), checkpoint_id=first)
    assert [m["content"] for m in out["messages"] if m["type"] == "human"] == ["hi", "again"]
    named = {"configurable": {"checkpoint_id": first}}
    out = await sdk_client.runs.wait(tid, "guide", input=_said("once more"), config=named)
    assert [m["content"] for m in out["messages"] if m["type"] == "human"] == ["hi", "once more"]


async def test_a_journey_run_from_a_checkpoint_is_refused_however_the_checkpoint_is_named(
    sdk_client: LangGraphClient,
) -> None:
    tid = (await sdk_client.threads.create())["thread_id"]
    await sdk_client.runs.wait(tid, "structured", input={"journey_type": "content_migration", "context": {}})
    before = await sdk_client.threads.get_state(tid)
    at = before["checkpoint"]["checkpoint_id"]
    for named in ({"checkpoint_id": at}, {"config": {"configurable": {"checkpoint_id": at}}}):
        with pytest.raises(UnprocessableEntityError, match="cannot go on from an earlier checkpoint"):
            await sdk_client.runs.create(tid, "structured", command={"resume": {"files": 1}}, **named)
    assert len(await sdk_client.runs.list(tid)) == 1  # nothing was queued
    assert await sdk_client.threads.get_state(tid) == before

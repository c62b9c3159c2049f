"""Interrupts and rollbacks of one thread's run, asked by two clients at once (the official langgraph-sdk
over real HTTP, on SQLite and PostgreSQL): they take turns per thread, so the outcome is one of the two serial
orders, and nothing is half-applied (no run both rolled back and reported, no 500)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from langgraph_sdk import get_client
from langgraph_sdk.client import LangGraphClient
from langgraph_sdk.errors import NotFoundError

from tests import test_server_streaming as streaming
from tests.test_server_streaming import _said, _slow_run

pytestmark = pytest.mark.slow
server_url, client = streaming.server_url, streaming.client
HELLO = {"messages": [{"role": "user", "content": "hello"}]}
AGAIN = {"messages": [{"role": "user", "content": "again"}]}


async def both(server_url: str, tid: str, run_id: str, first: str, second: str) -> list[Any]:
    """``runs.cancel`` of the run with action ``first`` and ``second``, by two clients at the same moment:
    each one's answer, or the HTTP status of the error it got."""
    async with get_client(url=server_url, api_key=None) as one, get_client(url=server_url, api_key=None) as two:
        answers = await asyncio.gather(
            one.runs.cancel(tid, run_id, action=first, wait=first == "interrupt"),  # type: ignore[arg-type]
            two.runs.cancel(tid, run_id, action=second, wait=second == "interrupt"),  # type: ignore[arg-type]
            return_exceptions=True,
        )
    # An error as its status (the SDK raises its own classes, or httpx's when it waits).
    return [a.response.status_code if isinstance(a, httpx.HTTPStatusError) else a for a in answers]


async def test_a_rollback_and_an_interrupt_at_once_end_in_one_serial_order(
    client: LangGraphClient, server_url: str
) -> None:
    tid = (await client.threads.create())["thread_id"]
    await client.runs.wait(tid, "guide", input=HELLO)
    for _ in range(3):
        slow = await _slow_run(client, tid)
        rolled, interrupted = await both(server_url, tid, slow, "rollback", "interrupt")
        if interrupted == 404:  # rollback first: the run is gone, the thread back
            assert isinstance(rolled, dict) and rolled["run_id"] == slow, rolled
            with pytest.raises(NotFoundError):
                await client.runs.get(tid, slow)
        else:  # interrupt first: the run ended interrupted and stays; there was nothing left to roll back
            assert isinstance(interrupted, dict) and interrupted["status"] == "interrupted", interrupted
            assert rolled == 404, rolled  # RunNotActiveError, as the Agent Server answers it
            assert (await client.runs.get(tid, slow))["status"] == "interrupted"
        assert not [r for r in await client.runs.list(tid) if r["status"] in ("pending", "running")]
    await client.runs.wait(tid, "guide", input=AGAIN)
    assert _said(await client.threads.get_state(tid))[-1] == "again"
    # A run that has ended is not cancelled (it answered 202 with the run as it stood): 404, typed, as the Agent
    # Server answers it (langgraph-sdk raises NotFoundError, or httpx's error when it waits).
    for ended in await client.runs.list(tid):
        with pytest.raises(NotFoundError):
            await client.runs.cancel(tid, ended["run_id"])
        with pytest.raises(httpx.HTTPStatusError) as refused:
            await client.runs.cancel(tid, ended["run_id"], wait=True)
        assert refused.value.response.json()["code"] == "RunNotActiveError", refused.value.response.text


async def test_two_rollbacks_at_once_roll_back_once(client: LangGraphClient, server_url: str) -> None:
    tid = (await client.threads.create())["thread_id"]
    await client.runs.wait(tid, "guide", input=HELLO)
    for _ in range(3):
        slow = await _slow_run(client, tid)
        answers = await both(server_url, tid, slow, "rollback", "rollback")
        [done] = [a for a in answers if isinstance(a, dict)]  # one rolled it back
        [gone] = [a for a in answers if not isinstance(a, dict)]  # the other found it gone
        assert done["run_id"] == slow and gone == 404, answers
        with pytest.raises(NotFoundError):
            await client.runs.get(tid, slow)
        assert _said(await client.threads.get_state(tid)) == ["hello"]
    await client.runs.wait(tid, "guide", input=AGAIN)
    assert _said(await client.threads.get_state(tid)) == ["hello", "again"]


async def test_two_runs_double_texting_with_rollback_at_once_take_turns(
    client: LangGraphClient, server_url: str
) -> None:
    """Each new run rolls back the thread's active runs before it is queued, as one turn: the later of the two
    rolls back the earlier (both slow, so it is still running then), never both only the run before them."""
    tid = (await client.threads.create())["thread_id"]
    await client.runs.wait(tid, "guide", input=HELLO)
    slow = await _slow_run(client, tid)
    slower = [{"messages": [{"role": "user", "content": f"slow please, {n}"}]} for n in ("one", "two")]
    async with get_client(url=server_url, api_key=None) as one, get_client(url=server_url, api_key=None) as two:
        created = await asyncio.gather(
            *(
                c.runs.create(tid, "guide", input=i, multitask_strategy="rollback")
                for c, i in zip((one, two), slower, strict=True)
            )
        )
    runs = await client.runs.list(tid)
    assert slow not in [r["run_id"] for r in runs]
    [left] = [r for r in runs if r["run_id"] in {c["run_id"] for c in created}]  # the later rolled back the earlier
    await client.runs.cancel(tid, left["run_id"], action="rollback")
    assert _said(await client.threads.get_state(tid)) == ["hello"]

"""A thread deleted while other requests read, update or copy it, over real HTTP with the official
langgraph-sdk client, two users at once, on SQLite and PostgreSQL.

A thread deleted between a request finding it and that request reading its row back failed an ``assert``
(500), and a journey started through the journey endpoints, being given a row by an update at the moment its
thread was deleted, got its row back: a deleted thread alive again. Every answer is now 200, 204, 404 or 409,
and a thread that was deleted stays deleted, with no copy of it left by a copy that answered 404."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from langgraph_sdk.client import LangGraphClient

from server.settings import ApiKey

pytestmark = pytest.mark.slow
WORK = frozenset({"read", "runs", "journeys", "tasks"})
KEYS = {"key-ana": ApiKey("ana", WORK, ()), "key-bob": ApiKey("bob", WORK, ())}
ROUNDS = 3
Call = Callable[[LangGraphClient, str], Awaitable[Any]]
# What a user does to a thread while its owner deletes it.
READS: dict[str, Call] = {
    "get": lambda c, t: c.threads.get(t),
    "update": lambda c, t: c.threads.update(t, metadata={"seen": True}),
    "state": lambda c, t: c.threads.get_state(t),
    "history": lambda c, t: c.threads.get_history(t),
    "search": lambda c, t: c.threads.search(ids=[t]),
    "count": lambda c, t: c.threads.count(metadata={"race": t}),
    "runs": lambda c, t: c.runs.list(t),
    "delete": lambda c, t: c.threads.delete(t),
}


async def _status(call: Awaitable[Any]) -> tuple[int, Any]:
    try:
        return 200, await call
    except httpx.HTTPStatusError as exc:
        return exc.response.status_code, exc.response.text


async def _threads(client: LangGraphClient, owner: str) -> dict[str, str]:
    """Threads of each kind to race on, by kind: a chat thread with state, one without, and a journey started
    through the journey endpoints (a thread with no row until something gives it one)."""
    chat = (await client.threads.create())["thread_id"]
    await client.runs.wait(chat, "guide", input={"messages": [{"role": "user", "content": "hi"}]})
    empty = (await client.threads.create())["thread_id"]
    journey = (await client.http.post("/journeys/mvp", json={"user_id": owner}))["session"]["session_id"]
    return {"chat": chat, "empty": empty, "journey": journey}


async def _race(client: LangGraphClient, thread_id: str) -> tuple[list[int], list[str]]:
    """Delete the thread while copying it twice and doing every read of READS, all at once; the statuses, and
    the ids of the copies that were answered."""
    calls: list[Awaitable[Any]] = [client.threads.delete(thread_id)]
    calls += [client.threads.copy(thread_id) for _ in range(2)]
    calls += [read(client, thread_id) for read in READS.values()]
    answers = await asyncio.gather(*(_status(c) for c in calls))
    copies = [a[1]["thread_id"] for a in answers[1:3] if a[0] == 200]
    return [a[0] for a in answers], copies


async def test_a_thread_deleted_while_others_read_update_or_copy_it_answers_no_500_and_stays_deleted(
    ana: LangGraphClient, bob: LangGraphClient
) -> None:
    answered: dict[LangGraphClient, set[str]] = {ana: set(), bob: set()}  # the copies answered 200, by owner
    for _ in range(ROUNDS):
        anas, bobs = await asyncio.gather(_threads(ana, "ana"), _threads(bob, "bob"))
        raced = [(ana, kind, t) for kind, t in anas.items()] + [(bob, kind, t) for kind, t in bobs.items()]
        # Bob also reads Ana's threads meanwhile: never his to see.
        intruders = [_status(read(bob, t)) for t in anas.values() for name, read in READS.items() if name != "delete"]
        outcomes, intruded = await asyncio.gather(
            asyncio.gather(*(_race(client, t) for client, _, t in raced)), asyncio.gather(*intruders)
        )
        for (client, kind, thread_id), (statuses, copies) in zip(raced, outcomes, strict=True):
            named = dict(zip(["delete", "copy", "copy", *READS], statuses, strict=True))
            assert set(statuses) <= {200, 204, 404, 409}, (kind, named)
            # Deleted (by the first delete, or the second): gone for good, whatever raced with it.
            assert (await _status(client.threads.get(thread_id)))[0] == 404, kind
            assert await client.threads.search(ids=[thread_id]) == [], kind
            answered[client].update(copies)
        assert {status for status, _ in intruded} <= {200, 404}, intruded
        # What is left of each user's threads is the copies answered, each a whole thread: nothing else.
        for client, copies in answered.items():
            assert {t["thread_id"] for t in await client.threads.search(limit=1000)} == copies

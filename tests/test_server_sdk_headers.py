"""What langgraph-sdk reads from the headers of an answer, over real HTTP, as the Agent Server sends them: a
background run's ``Content-Location`` (``runs.create(..., on_run_created=…)``) and an assistant search's
``X-Pagination-Next`` (``assistants.search(response_format="object")`` gives it as ``next``). Memory, SQLite
and PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fastapi import FastAPI
from langgraph_sdk import get_sync_client
from langgraph_sdk.client import LangGraphClient
from langgraph_sdk.schema import RunCreateMetadata

from tests.server_fixtures import served_app, served_sdk  # noqa: F401  (the fixtures app and sdk)

pytestmark = pytest.mark.slow
SPEC = {"journey_type": "told", "steps": [{"step_id": "ask", "mode": "user"}]}


def _start(user: str) -> dict[str, Any]:
    return {"journey_type": "told", "spec": SPEC, "user_id": user}


async def test_a_background_run_is_handed_to_on_run_created(app: tuple[FastAPI, str], sdk: LangGraphClient) -> None:
    created: list[RunCreateMetadata] = []
    tid = (await sdk.threads.create())["thread_id"]
    on_thread = await sdk.runs.create(tid, "structured", input=_start("ana"), on_run_created=created.append)
    stateless = await sdk.runs.create(None, "structured", input=_start("bob"), on_run_created=created.append)

    def create_sync() -> dict[str, Any]:
        with get_sync_client(url=app[1], api_key=None) as sync_sdk:
            thread = sync_sdk.threads.create()["thread_id"]
            return dict(sync_sdk.runs.create(thread, "structured", input=_start("cy"), on_run_created=created.append))

    from_sync = await asyncio.to_thread(create_sync)
    assert [(c["run_id"], c["thread_id"]) for c in created] == [
        (run["run_id"], run["thread_id"]) for run in (on_thread, stateless, from_sync)
    ]


async def test_an_assistant_search_says_where_its_next_page_starts(sdk: LangGraphClient) -> None:
    made = [
        (await sdk.assistants.create("structured", name=f"pager {n}", metadata={"set": "pager"}))["assistant_id"]
        for n in range(3)
    ]
    first = await sdk.assistants.search(metadata={"set": "pager"}, limit=2, response_format="object")
    assert first["next"] == "2" and len(first["assistants"]) == 2, first
    last = await sdk.assistants.search(metadata={"set": "pager"}, limit=2, offset=2, response_format="object")
    assert last["next"] is None and len(last["assistants"]) == 1, last
    assert sorted(a["assistant_id"] for a in first["assistants"] + last["assistants"]) == sorted(made)
    exact = await sdk.assistants.search(metadata={"set": "pager"}, limit=3, response_format="object")
    assert exact["next"] is None and len(exact["assistants"]) == 3  # a full last page: no page after it


async def test_thread_and_cron_searches_say_where_their_next_page_starts(sdk: LangGraphClient) -> None:
    """``threads.search`` and ``crons.search`` sent no paging header, and ``assistants.search`` no
    ``X-Pagination-Total`` beside its ``X-Pagination-Next``: the Agent Server sends both on all three, the
    total one more than the next page's start while another follows, then how many there are."""
    http = sdk.http.client
    for n in range(3):
        await sdk.threads.create(metadata={"set": "pages"})
        await sdk.crons.create("structured", schedule="0 0 1 1 *", input=_start(f"u{n}"), metadata={"set": "pages"})
        await sdk.assistants.create("structured", name=f"paged {n}", metadata={"set": "pages"})
    for path in ("/threads/search", "/runs/crons/search", "/assistants/search"):
        pages = [
            await http.post(path, json={"metadata": {"set": "pages"}, "limit": 2, "offset": offset})
            for offset in (0, 2)
        ]
        assert [len(page.json()) for page in pages] == [2, 1], path
        headers = [(page.headers.get("X-Pagination-Next"), page.headers.get("X-Pagination-Total")) for page in pages]
        assert headers == [("2", "3"), (None, "3")], (path, headers)

"""A client that goes away, and a client that joins a run's stream for some of its modes, over real HTTP through
langgraph-sdk, as the Agent Server documents them: ``on_disconnect="cancel"`` (``runs.stream``, ``runs.wait``)
and ``cancel_on_disconnect`` (``runs.join_stream``) cancel the run when its client leaves before it ended (the
default, ``continue``, keeps it running); ``stream_mode`` on ``runs.join_stream`` sends only
those modes' chunks."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage
from langgraph_sdk import get_client
from langgraph_sdk.client import LangGraphClient
from langgraph_sdk.schema import Run, RunCreateMetadata

from server.app import create_app
from server.settings import Settings
from tests.server_support import serving
from tests.test_server_streaming import SlowWhenAsked

pytestmark = pytest.mark.slow
SLOW = {"messages": [{"role": "user", "content": "be slow"}]}  # the model then takes 30 s to answer
QUICK = {"messages": [{"role": "user", "content": "what next?"}]}


@pytest.fixture(params=["sqlite", "postgres"])
def server_url(request: pytest.FixtureRequest) -> Iterator[str]:
    url: str = request.getfixturevalue(f"{request.param}_url")
    settings = Settings(database_url=url, auth=False, guide_model="tests.test_server_streaming:streaming_model")
    with serving(create_app(settings)) as base:
        yield base


@pytest.fixture
async def client(server_url: str) -> AsyncIterator[LangGraphClient]:
    async with get_client(url=server_url, api_key=None) as sdk_client:
        yield sdk_client


async def _status_once(client: LangGraphClient, thread_id: str, run_id: str, wanted: str, seconds: float = 15) -> str:
    """The run's status once it is ``wanted``, or as it is after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        status = str((await client.runs.get(thread_id, run_id))["status"])
        if status == wanted or time.monotonic() > deadline:
            return status
        await asyncio.sleep(0.1)


async def _first_run(client: LangGraphClient, thread_id: str, seconds: float = 15) -> Run:
    """The thread's first run, once there is one (at most ``seconds``)."""
    deadline = time.monotonic() + seconds
    while not (runs := await client.runs.list(thread_id)):
        assert time.monotonic() < deadline, f"no run on thread {thread_id} after {seconds} s"
        await asyncio.sleep(0.05)
    return runs[-1]


async def test_a_stream_whose_client_leaves_cancels_its_run_with_on_disconnect_cancel(client: LangGraphClient) -> None:
    created: list[RunCreateMetadata] = []
    kept: list[RunCreateMetadata] = []
    for mode, runs in (("cancel", created), ("continue", kept)):
        tid = (await client.threads.create())["thread_id"]
        stream = client.runs.stream(tid, "guide", input=SLOW, on_disconnect=mode, on_run_created=runs.append)
        async for part in stream:
            assert part.event == "metadata"
            break  # the user closed the page
        await stream.aclose()
    gone = created[0]
    assert await _status_once(client, gone["thread_id"], gone["run_id"], "interrupted") == "interrupted"
    left = kept[0]  # the default: the run goes on without its client
    assert (await client.runs.get(left["thread_id"], left["run_id"]))["status"] == "running"
    await client.runs.cancel(left["thread_id"], left["run_id"], wait=True)


async def test_a_wait_whose_client_leaves_cancels_its_run_with_on_disconnect_cancel(
    server_url: str, client: LangGraphClient
) -> None:
    tid = (await client.threads.create())["thread_id"]
    body = {"assistant_id": "guide", "input": SLOW, "on_disconnect": "cancel"}
    async with httpx.AsyncClient(base_url=server_url, timeout=60) as http:
        waiting = asyncio.ensure_future(http.post(f"/threads/{tid}/runs/wait", json=body))
        # The client leaves once its run is under way; leaving on a timer (a 1 s read timeout) left under load
        # before the server had read the request, or before it had created the run.
        run = await _first_run(client, tid)
        assert await _status_once(client, tid, run["run_id"], "running") == "running"
        waiting.cancel()  # the client gives up waiting and closes its connection
        with pytest.raises(asyncio.CancelledError):
            await waiting
    assert await _status_once(client, tid, run["run_id"], "interrupted") == "interrupted"


async def test_a_joined_stream_whose_client_leaves_cancels_the_run_with_cancel_on_disconnect(
    server_url: str, client: LangGraphClient
) -> None:
    tid = (await client.threads.create())["thread_id"]
    run = await client.runs.create(tid, "guide", input=SLOW)
    async with httpx.AsyncClient(base_url=server_url, timeout=5) as http:
        params = {"cancel_on_disconnect": "true"}  # what langgraph-sdk's join_stream sends
        async with http.stream("GET", f"/threads/{tid}/runs/{run['run_id']}/stream", params=params) as answer:
            assert answer.status_code == 200
            await asyncio.sleep(0.5)
    assert await _status_once(client, tid, run["run_id"], "interrupted") == "interrupted"


async def test_join_stream_with_stream_mode_sends_only_those_modes(client: LangGraphClient) -> None:
    tid = (await client.threads.create())["thread_id"]
    run = await client.runs.create(tid, "guide", input=QUICK, stream_mode=["values", "updates", "messages-tuple"])
    await client.runs.join(tid, run["run_id"])
    updates = [p.event async for p in client.runs.join_stream(tid, run["run_id"], stream_mode="updates")]
    assert set(updates) == {"updates", "end"} and updates[-1] == "end"
    two = [p.event async for p in client.runs.join_stream(tid, run["run_id"], stream_mode=["messages-tuple", "values"])]
    assert set(two) == {"messages", "values", "end"}
    every = [p.event async for p in client.runs.join_stream(tid, run["run_id"])]
    assert set(every) == {"values", "updates", "messages", "end"}


class DropsOneCancel(SlowWhenAsked):
    """The slow model, whose first wait loses the cancel that lands on it, as Python 3.11's ``asyncio.wait_for``
    does when its inner wait completed as the cancel came (psycopg_pool's wait for a pooled connection uses it):
    the run's task goes on as if nobody had cancelled it."""

    async def _wait_if_asked(self, messages: list[BaseMessage]) -> None:
        if "slow" not in str(messages[-1].content):
            return
        MODEL_WAITS.set()
        with contextlib.suppress(asyncio.CancelledError):  # dropped, as wait_for drops it
            await asyncio.sleep(30)
        await asyncio.sleep(30)


MODEL_WAITS = threading.Event()  # the model is in its first wait (the server runs in another thread)


def dropping_model() -> BaseChatModel:
    return DropsOneCancel(messages=itertools.repeat("done"))


@pytest.fixture
def dropping_client(store_url: str) -> Iterator[str]:
    settings = Settings(database_url=store_url, auth=False, guide_model=f"{__name__}:dropping_model")
    with serving(create_app(settings)) as base:
        yield base


async def test_a_cancelled_run_stops_though_its_task_lost_the_first_cancel(dropping_client: str) -> None:
    MODEL_WAITS.clear()
    async with get_client(url=dropping_client, api_key=None) as client:
        tid = (await client.threads.create())["thread_id"]
        run = await client.runs.create(tid, "guide", input=SLOW)
        assert await asyncio.to_thread(MODEL_WAITS.wait, 15)
        await client.runs.cancel(tid, run["run_id"])
        assert await _status_once(client, tid, run["run_id"], "interrupted") == "interrupted"
        # What it was cancelled in is left where it stopped: the thread takes a new run at once.
        again = await client.runs.wait(tid, "guide", input=QUICK)
        assert again is not None

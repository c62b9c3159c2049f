"""A client waiting on a run (``runs.wait``, ``runs.join``) behind a proxy, over real HTTP through langgraph-sdk (async
and sync), as the Agent Server serves it: the headers go out at once, naming the run (Content-Location) and its
join (Location), then a newline every ``wait_keepalive`` seconds until the answer. A proxy's idle timeout
(nginx's ``proxy_read_timeout``) does not cut a long wait, and a wait the proxy cuts anyway (a load balancer's
connection lifetime, a restart) is taken up again by the SDK at its Location. Memory, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from langgraph_sdk import get_client, get_sync_client

from agents import AgentRequest
from server.app import create_app
from server.settings import Settings
from tests.server_support import free_port, serving

pytestmark = pytest.mark.slow
WORK_S = 1.5  # how long the journey's one step works: a wait lasts that long
SPEC = {"journey_type": "long_work", "steps": [{"step_id": "work", "mode": "auto", "agent": "long_work"}]}
START = {"journey_type": "long_work", "spec": SPEC, "user_id": "ana"}


async def _long_work(request: AgentRequest) -> dict[str, Any]:
    await asyncio.sleep(WORK_S)  # a model call, as the server sees one
    return {"worked": True}


GATE = threading.Event()  # opened by the test: the ``gated_work`` step works until then, however loaded the box
GATED = {
    "journey_type": "gated_work",
    "spec": {"journey_type": "gated_work", "steps": [{"step_id": "work", "mode": "auto", "agent": "gated_work"}]},
    "user_id": "ana",
}


async def _gated_work(request: AgentRequest) -> dict[str, Any]:
    await asyncio.to_thread(GATE.wait, 20)
    return {"worked": True}


@pytest.fixture
def server(store_url: str) -> Iterator[tuple[FastAPI, str]]:
    """A server whose waits send a newline every 0.2 s, with the ``long_work`` agent."""
    app = create_app(Settings(database_url=store_url, auth=False, wait_keepalive=0.2))
    with serving(app) as url:
        app.state.services.runtime.agents.register("long_work", _long_work, replace=True)
        app.state.services.runtime.agents.register("gated_work", _gated_work, replace=True)
        yield app, url


@contextlib.asynccontextmanager
async def proxy(upstream: str, *, idle: float | None = None, lifetime: float | None = None) -> AsyncIterator[str]:
    """A reverse proxy in front of ``upstream``, as nginx or a load balancer is: it closes a connection whose server
    sent nothing for ``idle`` seconds, or that has been open for ``lifetime`` seconds. Yields its base URL."""
    host, port = upstream.removeprefix("http://").split(":")

    async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter, idle_s: float | None) -> None:
        while data := await asyncio.wait_for(source.read(65_536), idle_s):
            sink.write(data)
            await sink.drain()

    connections: set[asyncio.Task[Any]] = set()

    async def upstream_connection() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection to ``upstream``; one the proxy's closing cancels as it is made is closed, not leaked
        (Python 3.13 reports its socket unclosed when collected, which fails whichever test runs then)."""
        connecting = asyncio.ensure_future(asyncio.open_connection(host, int(port)))
        try:
            return await asyncio.shield(connecting)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                _reader, made = await connecting
                made.close()
                await made.wait_closed()
            raise

    closing = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        connections.add(task)
        streams = [writer]
        try:
            if closing.is_set():  # accepted as the proxy closed: never taken upstream
                return
            up_reader, up_writer = await upstream_connection()
            streams.append(up_writer)
            pumps = [
                asyncio.ensure_future(pump(reader, up_writer, None)),
                asyncio.ensure_future(pump(up_reader, writer, idle)),
            ]
            try:
                await asyncio.wait(pumps, timeout=lifetime, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pumping in pumps:
                    pumping.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
        except asyncio.CancelledError:
            pass  # the proxy is closing: its connections close with it
        finally:
            for stream in streams:
                stream.close()
                await asyncio.gather(stream.wait_closed(), return_exceptions=True)
            connections.discard(task)

    listening = free_port()
    server = await asyncio.start_server(handle, "127.0.0.1", listening)
    try:
        yield f"http://127.0.0.1:{listening}"
    finally:
        server.close()
        closing.set()
        # A connection accepted just before has its handler started a moment later, after the ones cancelled
        # below: it then connected upstream and was left open as the test's loop closed (its socket was reported
        # unclosed when collected, failing whichever test of the same xdist worker ran then). Started now, it
        # closes at once.
        await asyncio.sleep(0.1)
        for connection in list(connections):
            connection.cancel()
        await asyncio.gather(*connections, return_exceptions=True)
        await server.wait_closed()


async def _thread(url: str) -> str:
    async with get_client(url=url, api_key=None) as sdk:
        return str((await sdk.threads.create())["thread_id"])


async def test_a_wait_answers_its_headers_at_once_then_keeps_its_connection_in_use(
    server: tuple[FastAPI, str],
) -> None:
    """The headers and keep-alive newlines arrive while the step still works: it works until they have come (a
    gate, not a clock, so a loaded box cannot make the run end before the test looks)."""
    tid = await _thread(server[1])
    GATE.clear()
    try:
        async with httpx.AsyncClient(base_url=server[1], timeout=60) as http:
            body = {"assistant_id": "structured", "input": GATED}
            async with http.stream("POST", f"/threads/{tid}/runs/wait", json=body) as answer:
                received: list[bytes] = []
                async for chunk in answer.aiter_raw():
                    received.append(chunk)
                    if b"".join(received).count(b"\n") >= 3:  # headers and three newlines while the step works
                        GATE.set()
    finally:
        GATE.set()
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    run = answer.headers["content-location"]
    assert run.startswith(f"/threads/{tid}/runs/") and answer.headers["location"] == f"{run}/join"
    assert received[0] == b"\n" and len(received) > 3  # a newline every 0.2 s while the step worked
    assert json.loads(b"".join(received))["status"] == "completed"


async def test_a_long_wait_outlasts_a_proxys_idle_timeout(server: tuple[FastAPI, str]) -> None:
    tid, other = await _thread(server[1]), await _thread(server[1])
    async with proxy(server[1], idle=0.6) as behind:  # the step works 1.5 s: more than the proxy waits for bytes
        async with get_client(url=behind, api_key=None) as sdk:
            answer = await sdk.runs.wait(tid, "structured", input=START)

        def wait_sync() -> Any:
            with get_sync_client(url=behind, api_key=None) as sync_sdk:
                return sync_sdk.runs.wait(other, "structured", input=START)

        sync_answer = await asyncio.to_thread(wait_sync)
    assert isinstance(answer, dict) and answer["status"] == "completed", answer
    assert isinstance(sync_answer, dict) and sync_answer["status"] == "completed", sync_answer


async def test_a_wait_the_proxy_cuts_is_taken_up_again_at_its_join(server: tuple[FastAPI, str]) -> None:
    tid = await _thread(server[1])
    created: list[Any] = []
    async with proxy(server[1], lifetime=0.8) as behind, get_client(url=behind, api_key=None) as sdk:
        with pytest.warns(UserWarning, match="attempting reconnect to Location"):
            answer = await sdk.runs.wait(tid, "structured", input=START, on_run_created=created.append)
        assert isinstance(answer, dict) and answer["status"] == "completed", answer
    async with get_client(url=server[1], api_key=None) as direct:  # the run ran once: the reconnect joined it
        (run,) = await direct.runs.list(tid)
    assert run["run_id"] == created[0]["run_id"] and run["status"] == "success"

"""Test helpers: a real uvicorn server on 127.0.0.1 (random port) in a background thread, `journeys serve`
processes, and `journeys worker` processes for distributed mode."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psycopg
import uvicorn
from fastapi import FastAPI
from langgraph_sdk.client import LangGraphClient

from agents import AgentRequest
from graphs.process.timers import FiringReport, TimerScheduler
from server.runs.store import Enqueue, RunRow, RunStore
from tests.forked import JourneysProcess, journeys

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")

# A process whose one user task is offered to the finance group: who may complete it is a question of groups.
APPROVAL_PROCESS: dict[str, Any] = {
    "name": "approval",
    "elements": [
        {"type": "start", "id": "start"},
        {"type": "user_task", "id": "approve", "title": "Approve", "candidate_groups": ["finance"]},
        {"type": "end", "id": "end"},
    ],
    "flows": ["start -> approve", "approve -> end"],
}


def _ports() -> Iterator[int]:
    """Ports for test servers, from below the kernel's ephemeral range: a port the kernel picked (bind to 0) was
    in that range, where another test's outgoing connection (to PostgreSQL, or an HTTP client's) could take it
    between our check and the server's bind (a CI run failed on "address already in use"). Each process starts
    at its own offset and hands no port out twice."""
    try:
        ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral = 32_768  # Linux's default
    low = max(1_024, ephemeral - 12_000)
    span = ephemeral - low
    first = (os.getpid() * 97) % span
    for n in range(span):
        yield low + (first + n) % span


_PORTS = _ports()


def free_port() -> int:
    """A loopback port no socket holds now, and that no test of this process was given before."""
    for port in _PORTS:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port left below the ephemeral range")


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """Serve ``app`` over real HTTP on loopback; yields the base URL; stops (running the lifespan exit) after."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)

    async def serve() -> None:
        app.state.serving_loop = asyncio.get_running_loop()  # for on_server_loop
        await server.serve()

    thread = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def on_server_loop(app: FastAPI, work: Coroutine[Any, Any, T]) -> T:
    """``work`` run on the event loop :func:`serving` serves ``app`` on (its runtime's: an in-memory store is
    that process's), as the test's own setup of stored state; its result."""
    return asyncio.run_coroutine_threadsafe(work, app.state.serving_loop).result(timeout=60)


class SlowShip:
    """An agent whose first call takes long (a test cancels the run meanwhile); it counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, request: AgentRequest) -> dict[str, Any]:
        self.calls += 1
        if self.calls == 1:
            await asyncio.sleep(30)
        return {"shipped": True}


class SchedulerPasses:
    """The passes of an in-process server's timer scheduler (``app`` served by :func:`serving`), counted so that
    a test that moved the virtual clock waits for whole passes at the new time instead of sleeping past a few
    of its one-second polls. Its loop stays the product's: each pass is the one it would make, woken early."""

    def __init__(self, app: FastAPI) -> None:
        scheduler: TimerScheduler = app.state.services.runtime.processes.scheduler
        self._scheduler = scheduler
        self._changed = threading.Condition()
        self._started = self._ended = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        # What each pass did (its report, or what it raised), for a failing test to show: a firing a test
        # expected and did not see is then told apart from a pass that failed or claimed nothing.
        self.outcomes: list[FiringReport | BaseException] = []
        run_due = scheduler.run_due

        async def counted(now: datetime | None = None) -> FiringReport:
            with self._changed:
                self._loop = asyncio.get_running_loop()
                self._started += 1  # before the pass reads the clock
            outcome: FiringReport | BaseException | None = None
            try:
                outcome = await run_due(now)
                return outcome
            except BaseException as exc:
                outcome = exc
                raise
            finally:
                with self._changed:
                    self.outcomes.append(outcome if outcome is not None else RuntimeError("no outcome"))
                    self._ended += 1
                    self._changed.notify_all()

        scheduler.run_due = counted  # type: ignore[method-assign]  # the loop looks it up on each pass

    def _wait(self, passes: int, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        with self._changed:
            target = self._started + passes  # passes that begin after this call, so after the clock moved
            while self._ended < target:
                if self._loop is not None:  # wake the loop now rather than at its next poll
                    self._loop.call_soon_threadsafe(self._scheduler.wake)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the timer scheduler made {self._ended} of {target} passes in {seconds} s")
                self._changed.wait(0.05)

    async def complete(self, passes: int = 2, seconds: float = 30) -> None:
        """Return once ``passes`` whole passes have begun and ended after this call: the first fires what is due
        at the clock's time, the second would fire anything that first one left due."""
        await asyncio.to_thread(self._wait, passes, seconds)


class StreamsOpened:
    """How many event streams (SSE) a langgraph-sdk client has opened: counted as each one's headers reach it.
    The server sends them once the stream serves what comes from then on, so a test that waits for them instead
    of sleeping acts on a stream that is ready, however loaded the box."""

    def __init__(self, client: LangGraphClient) -> None:
        self.count = 0
        self._heard = asyncio.Event()
        client.http.client.event_hooks["response"].append(self._opened)

    async def _opened(self, response: httpx.Response) -> None:
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            self.count += 1
            self._heard.set()

    async def reach(self, count: int, seconds: float = 60) -> None:
        """Return once ``count`` streams have opened on the client since it was watched."""
        async with asyncio.timeout(seconds):
            while self.count < count:
                self._heard.clear()
                await self._heard.wait()


def start_worker(
    url: str, *options: str, env: dict[str, str] | None = None, log: Path | None = None
) -> JourneysProcess:
    """A `journeys worker` process on the database ``url`` (distributed mode), with extra CLI ``options``; its
    output in ``log`` (else dropped). Forked from the test process's forkserver (tests/forked.py)."""
    return journeys(["worker", "--database-url", url, *options], env=env, output=log)


async def workers_up(postgres_url: str, count: int) -> None:
    """Return once ``count`` workers are registered in procrastinate's table (their jobs are running); the first
    worker of a database installs that table."""
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        for _ in range(600):
            installed = await (await conn.execute("select to_regclass('procrastinate_workers')")).fetchone()
            if installed is not None and installed[0] is not None:
                found = await (await conn.execute("select count(*) from procrastinate_workers")).fetchone()
                if found is not None and found[0] >= count:
                    return
            await asyncio.sleep(0.1)
    raise AssertionError(f"{count} workers did not start within 60 s")


def stop_worker(worker: JourneysProcess) -> None:
    """Stop a `journeys worker` or `journeys serve` process (killed if it does not stop within 15 s)."""
    worker.terminate()
    try:
        worker.wait(timeout=15)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()


def wait_until_serving(process: JourneysProcess, port: int, log: Path, seconds: float = 60) -> None:
    """Wait until the server ``process`` started answers ``/ok`` on ``port`` (``seconds`` at most); fails saying
    whether it ended first or is still starting, with its output in ``log``."""
    deadline = time.monotonic() + seconds
    # One client for every poll: each httpx client builds a TLS context (tens of ms of CPU, for plain HTTP too),
    # and a client per poll cost the waiting test ~0.1 CPU-s per second a loaded box took to start the server.
    with httpx.Client() as http:
        while True:
            if (code := process.poll()) is not None or time.monotonic() >= deadline:
                what = f"ended (exit code {code})" if code is not None else f"did not answer within {seconds} s"
                # This module's asserts are not rewritten by pytest: a bare assert failed as a bare AssertionError.
                raise AssertionError(f"`journeys serve` on port {port} {what}; its output:\n{log.read_text()}")
            try:
                if http.get(f"http://127.0.0.1:{port}/ok").status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)


@contextmanager
def journeys_serve(
    url: str, log: Path, *options: str, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> Iterator[str]:
    """A real `journeys serve` process on the database ``url`` with extra CLI ``options``, its output in
    ``log``, run from ``cwd`` (where a ``--plugin`` module is found); yields its base URL once it answers
    ``/ok``, and stops it after."""
    port = free_port()
    server = start_serving(url, port, log, *options, env=env, cwd=cwd)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_worker(server)


def start_serving(
    url: str,
    port: int,
    log: Path,
    *options: str,
    env: dict[str, str] | None = None,
    cwd: Path = ROOT,
    seconds: float = 60,
) -> JourneysProcess:
    """A real `journeys serve` process on the database ``url`` and ``port`` with extra CLI ``options``, its
    output in ``log``, once it answers ``/ok`` (within ``seconds``). One that does not is killed before the
    failure is raised: left running, it held its port, its database and a share of the cores for the rest of
    the session (a loaded CI box took over 60 s to start one). Forked from the test process's forkserver
    (tests/forked.py)."""
    server = journeys(["serve", "--database-url", url, "--port", str(port), *options], cwd=cwd, env=env, output=log)
    try:
        wait_until_serving(server, port, log, seconds)
    except BaseException:
        server.kill()
        server.wait()
        raise
    return server


async def queued_run(runs: RunStore, assistant_id: str = "structured", enqueue: Enqueue | None = None) -> RunRow:
    """A pending start run of ``assistant_id`` on a new thread, created by ana, as the run store queues it
    (``enqueue``: its job deferred with it, as in distributed mode)."""
    return await runs.create_run(
        thread_id=None,
        assistant_id=assistant_id,
        kind="start",
        input={},
        command=None,
        stream_modes=[],
        multitask_strategy="reject",
        metadata={},
        principal="ana",
        enqueue=enqueue,
    )


async def v3_events(
    base: str, thread_id: str, body: dict[str, Any], count: int, opened: asyncio.Event | None = None
) -> list[dict[str, Any]]:
    """The first ``count`` events of a thread's raw v3 event stream, asked with ``body`` (it stays open: the
    client leaves); ``opened`` is set once its headers came (it serves what comes from then on)."""
    found: list[dict[str, Any]] = []
    async with (
        httpx.AsyncClient(base_url=base, timeout=30) as raw,
        raw.stream("POST", f"/threads/{thread_id}/stream/events", json=body) as answer,
    ):
        assert answer.status_code == 200
        if opened is not None:
            opened.set()
        async for line in answer.aiter_lines():
            if line.startswith("data: "):
                found.append(json.loads(line.removeprefix("data: ")))
                if len(found) == count:
                    return found
    raise AssertionError(f"the stream ended after {len(found)} events")


@asynccontextmanager
async def slow_checkpoint_writes(store_url: str, saver: Any, seconds: float) -> AsyncIterator[None]:
    """For ``seconds`` from the block's start, the checkpoint writes of ``saver`` (an in-process server's, on
    ``store_url``) wait in the database, as on a loaded one: PostgreSQL's checkpoint tables are locked against
    writes (reads go on), SQLite's commits are held back. The block's end waits for the load to end, then as long
    again: a write a run left behind it has no event to await, and lands by then."""
    if store_url.startswith("postgresql"):
        async with await psycopg.AsyncConnection.connect(store_url) as conn:
            await conn.execute("LOCK TABLE checkpoints, checkpoint_blobs, checkpoint_writes IN SHARE MODE")

            async def lifted() -> None:
                await asyncio.sleep(seconds)
                await conn.commit()

            lifting = asyncio.ensure_future(lifted())  # while the block waits on what the load holds up
            try:
                yield
                await lifting
            finally:
                lifting.cancel()
        await asyncio.sleep(seconds)
        return
    until = time.monotonic() + seconds
    commit: Callable[[], Awaitable[None]] = saver.conn.commit

    async def held() -> None:  # on the server's loop
        await asyncio.sleep(max(0.0, until - time.monotonic()))
        await commit()

    saver.conn.commit = held
    try:
        yield
        await asyncio.sleep(max(0.0, until - time.monotonic()) + seconds)
    finally:
        saver.conn.commit = commit


async def structured_run(runs: RunStore, thread_id: str | None, kind: str, **fields: Any) -> RunRow:
    """A run of the ``structured`` assistant made by ana (``input`` or ``command`` among ``fields``), not streamed,
    for a test that executes it with a :class:`~server.runs.executor.RunExecutor` of its own."""
    return await runs.create_run(
        thread_id=thread_id,
        assistant_id="structured",
        kind=kind,
        input=fields.get("input"),
        command=fields.get("command"),
        stream_modes=[],
        multitask_strategy="reject",
        metadata={},
        principal="ana",
    )

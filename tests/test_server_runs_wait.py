"""A client waiting on a run (``runs.wait``) gets the run as its executor finished it, with no read of the run
back: from the executor itself in embedded mode, from the worker's notice in distributed mode (the notice
carries the finished row). A row too long for a notice is read back, whole. The fallback re-read is set to an
hour, so every read counted is one made after the run's end was heard."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, MutableMapping
from typing import Any

import pytest
from langgraph_sdk import get_client

from server.app import create_app
from server.queues.procrastinate import ensure_schema
from server.runs.store import RunStore
from server.settings import Settings
from tests.server_support import serving, start_worker, stop_worker

pytestmark = pytest.mark.slow
HOUR = 3600.0
SPEC = {"journey_type": "waited", "steps": [{"step_id": "a", "mode": "auto"}, {"step_id": "b", "mode": "auto"}]}


@pytest.fixture
def run_reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The run ids this process reads back with ``get_run`` (the real read, counted)."""
    reads: list[str] = []
    read = RunStore.get_run

    async def counted(self: RunStore, run_id: str) -> Any:
        reads.append(run_id)
        return await read(self, run_id)

    monkeypatch.setattr(RunStore, "get_run", counted)
    yield reads


async def _wait_as_users(base: str, context: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Four users, each waiting on a run of their own on a new thread, at once; their answers."""

    async def one(user: str) -> dict[str, Any]:
        async with get_client(url=base, api_key=f"key-{user}") as sdk:
            data = {"journey_type": "waited", "spec": SPEC, "user_id": user, "context": context or {}}
            answer = await sdk.runs.wait(None, "structured", input=data)
            assert isinstance(answer, dict)
            return answer

    return list(await asyncio.gather(*(one(user) for user in ("ana", "bob", "cy", "dee"))))


def _completed(answers: list[dict[str, Any]]) -> None:
    for answer, user in zip(answers, ("ana", "bob", "cy", "dee"), strict=True):
        assert answer.get("status") == "completed", answer
        assert answer.get("user_id") == user


async def test_embedded_waiters_get_the_finished_run_from_its_executor(store_url: str, run_reads: list[str]) -> None:
    app = create_app(Settings(database_url=store_url, auth=False, poll_interval=HOUR))
    with serving(app) as base:
        _completed(await _wait_as_users(base))
    assert run_reads == []


async def test_distributed_waiters_get_the_finished_run_from_the_workers_notice(
    postgres_url: str, run_reads: list[str]
) -> None:
    ensure_schema(postgres_url)
    worker = start_worker(postgres_url)
    try:
        with serving(
            create_app(Settings(database_url=postgres_url, auth=False, execution="distributed", poll_interval=HOUR))
        ) as base:
            _completed(await _wait_as_users(base))
            assert run_reads == []  # the API process never read a run back
            # A run whose row is too long for a notice (its input): the notice names it, the waiter reads it.
            long = {"note": "x" * 9_000}
            answers = await _wait_as_users(base, long)
            _completed(answers)
            assert all(answer["context"] == long for answer in answers)
            assert len(run_reads) == 4  # one each, after its notice
    finally:
        stop_worker(worker)


async def test_a_waits_answer_ends_its_body_in_the_message_that_carries_it(store_url: str) -> None:
    """The answer goes out with the end of the body (one write, one wake-up of the client): no empty last
    chunk after it. Driven through the whole ASGI app, as uvicorn drives it (ASGI spec 2.3)."""
    app = create_app(Settings(database_url=store_url, auth=False, poll_interval=HOUR))
    body = json.dumps({"assistant_id": "structured", "input": {"journey_type": "waited", "spec": SPEC}}).encode()
    sent: list[MutableMapping[str, Any]] = []
    done = asyncio.Event()
    requests = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        if requests:
            return requests.pop()
        await done.wait()  # the client stays until the answer is complete
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            done.set()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/runs/wait",
        "raw_path": b"/runs/wait",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "app": app,
    }
    async with app.router.lifespan_context(app):
        await app(scope, receive, send)
    bodies = [m for m in sent if m["type"] == "http.response.body" and m.get("body") != b"\n"]  # keep-alives aside
    assert sent[0]["type"] == "http.response.start"
    assert len(bodies) == 1, bodies
    assert bodies[0]["more_body"] is False
    assert json.loads(bodies[0]["body"])["status"] == "completed"

"""A client waiting on a run (``runs.wait``) gets the run as its executor finished it, with no read of the run
back: from the executor itself in embedded mode, from the worker's notice in distributed mode (the notice
carries the finished row). A row too long for a notice is read back, whole. The fallback re-read is set to an
hour, so every read counted is one made after the run's end was heard."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
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

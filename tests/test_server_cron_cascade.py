"""A thread's crons, and an assistant's, go with it (as on the Agent Server): threads.delete and
assistants.delete delete them and cancel their timers, and a firing that races a thread's delete makes no
run and does not bring the thread back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from langgraph_sdk import get_client
from langgraph_sdk.client import LangGraphClient
from langgraph_sdk.errors import NotFoundError

from checkpoints import VirtualClock
from checkpoints.crons import CronFilter, CronRow, CronStore
from checkpoints.errors import ThreadNotFoundError
from graphs import JourneyRuntime
from server.app import create_app
from server.crons import CronService
from server.runs.store import RunRow, RunStore
from server.settings import Settings
from tests.server_support import serving

START_AT = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
NINE = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
JOURNEY = {"journey_type": "content_migration", "requirements": {"source": "a", "target": "b"}}
HELLO = {"messages": [{"role": "user", "content": "good morning"}]}


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock(START_AT)


@pytest.fixture
async def client(store_url: str, clock: VirtualClock) -> AsyncIterator[LangGraphClient]:
    with serving(create_app(Settings(database_url=store_url, auth=False), clock=clock)) as base:
        async with get_client(url=base, api_key=None) as sdk:
            yield sdk


async def fired(client: LangGraphClient, cron_id: str) -> list[dict[str, Any]]:
    """The runs of ``cron_id``'s firings, once there is one (the scheduler polls every second; at most 30 s)."""
    for _ in range(300):
        runs = [
            run
            for thread in await client.threads.search(limit=100)
            for run in await client.runs.list(thread["thread_id"])
            if run["metadata"].get("cron_id") == cron_id
        ]
        if runs:
            return runs
        await asyncio.sleep(0.1)
    raise AssertionError(f"cron {cron_id} never fired")


async def test_deleting_a_thread_deletes_its_crons_and_their_firings(
    client: LangGraphClient, clock: VirtualClock
) -> None:
    doomed, kept = (await client.threads.create())["thread_id"], (await client.threads.create())["thread_id"]
    await client.crons.create_for_thread(doomed, "guide", schedule="0 9 * * *", input=HELLO)
    theirs = await client.crons.create_for_thread(kept, "guide", schedule="0 9 * * *", input=HELLO)
    await client.threads.delete(doomed)

    assert await client.crons.search(thread_id=doomed) == []
    assert [c["cron_id"] for c in await client.crons.search()] == [theirs["cron_id"]]  # another thread's stays
    clock.set(NINE)  # both were due now: the kept thread's fires, the deleted one's is gone with its thread
    [run] = await fired(client, theirs["cron_id"])
    assert run["thread_id"] == kept
    with pytest.raises(NotFoundError):
        await client.threads.get(doomed)
    assert [t["thread_id"] for t in await client.threads.search(limit=100)] == [kept]


async def test_deleting_an_assistant_deletes_its_crons(client: LangGraphClient, clock: VirtualClock) -> None:
    mine = await client.assistants.create("structured", name="nightly")
    await client.crons.create(mine["assistant_id"], schedule="0 9 * * *", input=JOURNEY, on_run_completed="keep")
    kept = await client.crons.create("structured", schedule="0 9 * * *", input=JOURNEY, on_run_completed="keep")
    await client.assistants.delete(mine["assistant_id"])

    assert [c["cron_id"] for c in await client.crons.search()] == [kept["cron_id"]]
    clock.set(NINE)  # both were due now: only the built-in assistant's cron fires
    [run] = await fired(client, kept["cron_id"])
    assert [t["thread_id"] for t in await client.threads.search(limit=100)] == [run["thread_id"]]


class DeletedWhileFiring(CronStore):
    """A cron store whose read of a firing cron is followed, before the firing goes on, by the delete of the
    cron's thread: the interleaving of a tick racing threads.delete."""

    delete_thread: Any = None

    async def get(self, cron_id: str, **options: Any) -> CronRow | None:
        found = await super().get(cron_id, **options)
        if found is not None and found.thread_id is not None and self.delete_thread is not None:
            await self.delete_thread(found.thread_id)
        return found


async def test_a_firing_racing_the_delete_of_its_thread_makes_no_run_and_no_thread(store_url: str) -> None:
    clock = VirtualClock(START_AT)
    async with JourneyRuntime.open(store_url, clock=clock) as runtime:
        runs = RunStore(runtime.store.backend, runtime.store.clock, runtime.store.sealer)
        crons = CronService(runtime, runs)
        crons.store = DeletedWhileFiring(runtime.store.engine, clock, runtime.processes.services.timers)
        thread = await runs.create_thread(None, {}, "ana")
        cron = await crons.create(
            assistant_id="guide",
            thread_id=thread.thread_id,
            schedule="0 9 * * *",
            timezone="UTC",
            end_time=None,
            payload={"input": HELLO},
            metadata={},
            enabled=True,
            on_run_completed=None,
            user_id="ana",
        )
        assert cron.timer_id is not None
        timer = await runtime.processes.services.timers.get(cron.timer_id)
        assert timer is not None
        submitted: list[RunRow] = []

        async def submit(run: RunRow) -> None:
            submitted.append(run)

        crons.store.delete_thread = runs.delete_thread
        assert await crons.fire(timer, None, submit) is False
        assert submitted == []
        assert await runs.get_thread(thread.thread_id) is None  # not brought back
        assert await runs.list_runs(thread.thread_id) == []  # and no run on it
        assert await crons.store.search(CronFilter()) == []
        # A run on a thread that is gone is refused, whatever its strategy (no orphan run).
        for strategy in ("enqueue", "reject"):
            with pytest.raises(ThreadNotFoundError):
                await runs.create_run(
                    thread_id=thread.thread_id,
                    assistant_id="guide",
                    kind="start",
                    input=HELLO,
                    command=None,
                    stream_modes=[],
                    multitask_strategy=strategy,
                    metadata={},
                    principal="ana",
                )
        assert await runs.list_runs(thread.thread_id) == []

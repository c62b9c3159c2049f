"""Crons in distributed mode, on the wall clock with real ``journeys worker`` processes on PostgreSQL: a
cron fires on its schedule and never early, a firing missed while no worker ran is caught up when one
comes back, and with two workers each firing happens once."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from langgraph_sdk import get_client
from langgraph_sdk.client import LangGraphClient

from server.app import create_app
from server.settings import Settings
from tests.forked import JourneysProcess
from tests.server_support import serving, start_worker, stop_worker, workers_up

pytestmark = pytest.mark.slow
GAP = 20  # seconds between the cron's two ticks: the first one's firing is seen and both workers are killed within it
JOURNEY = {"journey_type": "content_migration", "requirements": {"source": "a", "target": "b"}}


@pytest.fixture
def api(postgres_url: str) -> Iterator[str]:
    """The API in distributed mode: it fires no timer itself; the workers' timer job does."""
    with serving(create_app(Settings(database_url=postgres_url, auth=False, execution="distributed"))) as base:
        yield base


@pytest.fixture
async def client(api: str) -> AsyncIterator[LangGraphClient]:
    async with get_client(url=api, api_key=None) as sdk_client:
        yield sdk_client


def kill(worker: JourneysProcess) -> None:
    worker.send_signal(signal.SIGKILL)
    worker.wait()


async def firings(client: LangGraphClient, cron_id: str) -> list[dict[str, Any]]:
    """The runs the cron's firings made (one new thread each), earliest first."""
    found = []
    for thread in await client.threads.search(limit=100):
        for run in await client.runs.list(thread["thread_id"]):
            if run["metadata"].get("cron_id") == cron_id:
                found.append(run)
    return sorted(found, key=lambda r: r["metadata"]["cron_due_at"])


async def until(moment: datetime) -> None:
    await asyncio.sleep(max(0.0, (moment - datetime.now(UTC)).total_seconds()))


async def settled(client: LangGraphClient, cron_id: str, count: int) -> list[dict[str, Any]]:
    """The firings once there are ``count`` (at most 30 s), and two seconds more for any extra one."""
    for _ in range(300):
        if len(await firings(client, cron_id)) >= count:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(2)
    return await firings(client, cron_id)


async def test_a_cron_fires_on_schedule_once_with_two_workers_and_catches_up_after_downtime(
    client: LangGraphClient, postgres_url: str
) -> None:
    workers = [start_worker(postgres_url), start_worker(postgres_url)]
    try:
        await workers_up(postgres_url, 2)
        # A cron on the seconds field (croniter's sixth): two ticks a minute, 20 s apart, the first 8 s from now.
        # The second is missed while no worker runs; the next one is 40 s later, past the catch-up.
        now = datetime.now(UTC).replace(microsecond=0)
        due = now + timedelta(seconds=8)
        schedule = f"* * * * * {due.second},{(due.second + GAP) % 60}"
        cron = await client.crons.create("structured", schedule=schedule, input=JOURNEY, on_run_completed="keep")
        first = datetime.fromisoformat(cron["next_run_date"])
        assert first == due
        await until(first - timedelta(seconds=1.5))
        assert await firings(client, cron["cron_id"]) == []  # never early, though two workers look every second

        [fired] = await settled(client, cron["cron_id"], 1)  # once, though two workers race for it
        assert datetime.fromisoformat(fired["metadata"]["cron_due_at"]) == first
        assert datetime.fromisoformat(fired["created_at"]) >= first

        # Both workers die; the next tick passes while none runs.
        for worker in workers:
            kill(worker)
        missed = first + timedelta(seconds=GAP)
        await until(missed + timedelta(seconds=3))
        assert len(await firings(client, cron["cron_id"])) == 1
        workers = [start_worker(postgres_url), start_worker(postgres_url)]
        caught_up = await settled(client, cron["cron_id"], 2)
        assert [datetime.fromisoformat(r["metadata"]["cron_due_at"]) for r in caught_up] == [first, missed]
        [found] = await client.crons.search()
        assert datetime.fromisoformat(found["next_run_date"]) > datetime.now(UTC)  # armed for the next tick
    finally:
        for worker in workers:
            stop_worker(worker)

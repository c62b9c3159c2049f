"""A rollback asked for in one process stops a unit of work running in another (issue 11: rollback
aborts are durable rows, seen by every process). On SQLite and PostgreSQL, with real processes."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from agents.registry import AgentRegistry
from checkpoints.lifecycle import LifecycleStore
from graphs import JourneyRuntime
from tests.rollback_child import QUICK_INTENTS
from tests.test_lifecycle_uow import MIGRATION, lifecycle

ROOT = Path(__file__).resolve().parents[1]
CHILD = ROOT / "tests" / "rollback_child.py"


async def line_of(proc: asyncio.subprocess.Process, prefix: str) -> str:
    assert proc.stdout is not None
    async for raw in proc.stdout:
        line = raw.decode()
        if line.startswith(prefix):
            return line[len(prefix) :].strip()
    raise AssertionError(f"the child ended without printing {prefix!r} (exit {await proc.wait()})")


async def requested(rows: LifecycleStore, journey_id: str) -> dict[str, str]:
    """The journey's rollback requests, once there are any (at most 20 s)."""
    for _ in range(1000):
        if found := await rows.rollback_requests(journey_id):
            return found
        await asyncio.sleep(0.02)
    raise AssertionError(f"no rollback request for {journey_id!r}")


async def test_a_rollback_asked_in_one_process_stops_a_unit_running_in_another(
    durable_url: str, tmp_path: Path
) -> None:
    registry = AgentRegistry()
    for intent in (*QUICK_INTENTS, "slow"):
        registry.register(intent, lambda _request: {"ok": True}, name=intent)
    async with JourneyRuntime.open(durable_url, agents=registry) as rt:
        lc, rows = rt.lifecycle, LifecycleStore(rt.store.engine)
        journey_id = (await lc.start_journey("client-x", spec=lifecycle(MIGRATION)))["journey_id"]
        log = tmp_path / "child.log"
        with log.open("wb") as stderr:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                str(CHILD),
                durable_url,
                journey_id,
                "migration",
                cwd=ROOT,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
            )
            try:
                await asyncio.wait_for(line_of(proc, "ENTERED"), 60)
                rollback = asyncio.create_task(lc.initiate_rollback(journey_id, "incident during the migration"))
                # The request is a durable row at once; the rollback itself waits for the journey's lock.
                assert list((await requested(rows, journey_id)).values()) == ["incident during the migration"]
                assert not rollback.done()
                assert proc.stdin is not None
                proc.stdin.write(b"go\n")
                await proc.stdin.drain()
                stopped: dict[str, Any] = json.loads(await asyncio.wait_for(line_of(proc, "RESULT"), 60))
                assert await asyncio.wait_for(proc.wait(), 60) == 0
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
        rolled = await rollback

        assert stopped["status"] == "rolled_back", log.read_text(errors="replace")[-3000:]
        assert stopped["failure"] == {"aborted": "incident during the migration"}
        statuses = {t: v["status"] for t, v in stopped["tasks"].items()}
        assert statuses == {"fast": "rolled_back", "slow": "rolled_back", "after": "pending", "last": "pending"}
        assert rolled["status"] == "validated" and rolled["journey"]["current_stage"] == "rollback"
        [row] = [r for r in await lc.units_of_work(journey_id) if r["uow_id"] == "migration"]
        assert row["status"] == "rolled_back"
        assert await rows.rollback_requests(journey_id) == {}  # answered: the request is gone

"""Attempt counts are stored with the run: a process killed in the middle of an agent call's retries is
resumed by another process, which goes on with the attempts left instead of starting the count again."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from subprocess import PIPE
from typing import Any

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CHILD = ROOT / "tests" / "resilience_child.py"


async def child(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(sys.executable, str(CHILD), *args, cwd=ROOT, stdout=PIPE, stderr=PIPE)


async def status_of(process: asyncio.subprocess.Process) -> dict[str, Any]:
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, err.decode()
    [line] = [ln for ln in out.decode().splitlines() if ln.startswith("STATUS ")]
    result: dict[str, Any] = json.loads(line.removeprefix("STATUS "))
    return result


def attempts_by_pid(log: Path) -> list[tuple[int, int]]:
    return [(int(pid), int(n)) for pid, n in (line.split() for line in log.read_text().splitlines())]


@pytest.mark.parametrize(("max_attempts", "outcome"), [(4, "completed"), (3, "compensated")])
async def test_a_restart_continues_the_attempt_count(
    durable_url: str, tmp_path: Path, max_attempts: int, outcome: str
) -> None:
    log = tmp_path / "attempts.log"
    first = await child(durable_url, "attempts", "start", str(log), str(max_attempts))
    assert first.stdout is not None
    try:
        while (line := await asyncio.wait_for(first.stdout.readline(), 60)) != b"HANG\n":
            assert line, (await first.stderr.read()).decode() if first.stderr else "child ended"
    finally:
        os.kill(first.pid, signal.SIGKILL)
        await first.wait()

    # Attempts 1 and 2 failed and were logged; attempt 3 was cut short by the kill, so it is made again.
    status = await status_of(await child(durable_url, "attempts", "resume", str(log), str(max_attempts)))
    seen = attempts_by_pid(log)
    assert [n for pid, n in seen if pid == first.pid] == [1, 2, 3]
    resumed = [n for pid, n in seen if pid != first.pid]
    assert resumed == list(range(3, max_attempts + 1))  # a reset count would start at 1 again
    assert status["status"] == outcome
    if outcome == "compensated":
        assert status["failure"]["error"].endswith("attempt 3 failed")

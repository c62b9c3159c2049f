"""Every Python block of the README and of docs/ is executed, so the docs cannot rot (the notebooks are
executed by tests/test_notebooks.py).

A block passes when it exits 0 and nothing went wrong out of its sight: an agent the runtime calls in the
background (a timer's escalation, a retried attempt, a step that fails for good) is logged, not raised, so a
block with a broken agent exited 0 and passed. A block that fails an agent on purpose says which log lines it
expects, each an event and the intent it names, in an HTML comment just above it
(``<!-- docs-test expects: agent attempt failed: quote; agent call failed: quote -->``): each must appear, and
nothing else may."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(?:<!-- docs-test expects: (.*?) -->\n)?```python\n(.*?)```", re.S)
BLOCKS = [
    (f"{path.stem}-{i}", block, sorted({e.strip() for e in (expects or "").split(";") if e.strip()}))
    for path in DOCS
    for i, (expects, block) in enumerate(BLOCK.findall(path.read_text()))
]
README_BLOCKS = [block for name, block, _expects in BLOCKS if name.startswith("README-")]


def run_block(block: str, where: Path) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    """Run ``block`` as a user would (``python block.py``, in ``where``), with what it logged, its unraisable
    errors and its warnings (tests/docs_harness.py)."""
    (where / "block.py").write_text(block)
    command = [sys.executable, "-m", "tests.docs_harness", "block.py", "noticed.json"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=where, env=env, capture_output=True, text=True, timeout=120)
    noticed = json.loads((where / "noticed.json").read_text()) if (where / "noticed.json").exists() else []
    return done, noticed


def test_the_docs_have_examples() -> None:
    assert len(README_BLOCKS) >= 4


@pytest.mark.slow
@pytest.mark.parametrize(("block", "expects"), [b[1:] for b in BLOCKS], ids=[b[0] for b in BLOCKS])
def test_docs_block_runs(block: str, expects: list[str], tmp_path: Path) -> None:
    done, noticed = run_block(block, tmp_path)
    assert done.returncode == 0, done.stderr
    seen = [f"{line['event']}: {line['intent']}" if "intent" in line else line["event"] for line in noticed]
    unexpected = [line for line, named in zip(noticed, seen, strict=True) if named not in expects]
    assert not unexpected, "the block logged what it does not expect:\n" + "\n".join(map(str, unexpected))
    missing = set(expects) - set(seen)
    assert not missing, f"the block expects log lines that did not appear: {sorted(missing)}"


# docs/seed-examples.md's escalation as it was (its on_timeout agent read a key it is not given), with a
# step whose agent fails once before it works: the block exits 0 all the same.
BROKEN_IN_THE_BACKGROUND = """
import asyncio
from datetime import timedelta

from agents import AgentRequest, TransientAgentError
from checkpoints import VirtualClock
from graphs import JourneyRuntime

calls = []


def flaky(request: AgentRequest) -> dict:
    calls.append(1)
    if len(calls) == 1:
        raise TransientAgentError("not yet")
    return {"done": True}


def escalate_to_cto(request: AgentRequest) -> dict:
    print("escalated:", request.payload["task_id"])
    return {}


async def main() -> None:
    clock = VirtualClock()
    async with JourneyRuntime.open("memory://", clock=clock) as runtime:
        runtime.agents.register("flaky", flaky)
        runtime.agents.register("escalate_to_cto", escalate_to_cto)
        spec = {"journey_type": "j", "steps": [{"step_id": "a", "agent": "flaky", "mode": "auto",
                "retry": {"initial_delay": 0.001}}]}
        journey = await runtime.structured.design_journey("j", spec=spec)
        await runtime.structured.execute_journey(journey["journey_id"], "u")
        await runtime.processes.deploy({
            "name": "review",
            "elements": [
                {"type": "start", "id": "start"},
                {"type": "user_task", "id": "approval", "assignee": "lead", "sla": "PT4H",
                 "on_timeout": {"action": "notify", "notify": "escalate_to_cto"}},
                {"type": "end", "id": "end"},
            ],
            "flows": ["start -> approval", "approval -> end"],
        })
        await runtime.processes.start("review", "r-1")
        clock.advance(timedelta(hours=4))
        await runtime.processes.scheduler.run_due()


asyncio.run(main())
"""


@pytest.mark.slow
def test_a_block_whose_agents_fail_in_the_background_is_caught(tmp_path: Path) -> None:
    """How docs/seed-examples.md's broken escalation passed: the block exited 0. Its failures are noticed now."""
    done, noticed = run_block(BROKEN_IN_THE_BACKGROUND, tmp_path)
    assert done.returncode == 0, done.stderr
    events = {line["event"] for line in noticed}
    assert events == {"agent attempt failed", "agent call failed", "timer failed to fire"}, noticed
    failed = next(line for line in noticed if line["event"] == "timer failed to fire")
    assert "task_id" in failed["error"]

"""Instance-level flow control on the one instance lifecycle (issue 12): idempotent starts and concurrency
keys, on every backend, and across processes where the guarantee is cross-process."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from checkpoints import VirtualClock
from graphs import JourneyRuntime
from graphs.kernel.flow import ConcurrencyLimitError, JourneyQueuedError
from nodes.errors import FlowSettingError

ROOT = Path(__file__).resolve().parents[1]
CHILD = ROOT / "tests" / "flow_child.py"

TWO_STEPS: dict[str, Any] = {"journey_type": "review", "steps": [{"step_id": "draft"}, {"step_id": "approve"}]}


def limited(on_limit: str, limit: int = 2) -> dict[str, Any]:
    return {**TWO_STEPS, "concurrency": {"key": "$.tenant", "limit": limit, "on_limit": on_limit}}


async def saga_design(runtime: JourneyRuntime, spec: dict[str, Any]) -> str:
    design = await runtime.saga.design_saga_journey("review", spec=spec)
    return str(design["journey_id"])


async def instance_count(runtime: JourneyRuntime, pattern: str) -> dict[str, int]:
    return await runtime.store.index.count_by_status(pattern=pattern)


# --- idempotent starts ------------------------------------------------------------------------------


async def test_a_start_key_within_its_window_answers_the_journey_it_started(store_url: str) -> None:
    clock = VirtualClock()
    async with JourneyRuntime.open(store_url, clock=clock) as rt:
        journey_id = await saga_design(rt, TWO_STEPS)
        first = await rt.saga.execute_saga_journey(journey_id, "ana", {}, start_key="order-7", start_key_window="PT1H")
        await rt.saga.advance_saga_step(first["saga_id"], journey_id, "ana", {"text": "v1"})
        again = await rt.saga.execute_saga_journey(journey_id, "ana", {}, start_key="order-7", start_key_window="PT1H")
        assert again["saga_id"] == first["saga_id"]
        assert again["completed_steps"] == ["draft"]  # the existing journey, as it stands now
        assert await instance_count(rt, "saga") == {"in_progress": 1}

        other = await rt.saga.execute_saga_journey(journey_id, "ana", {}, start_key="order-8")
        assert other["saga_id"] != first["saga_id"]

        clock.advance(timedelta(hours=1, seconds=1))  # the window has passed: the key starts a new journey
        later = await rt.saga.execute_saga_journey(journey_id, "ana", {}, start_key="order-7", start_key_window="PT1H")
        assert later["saga_id"] not in (first["saga_id"], other["saga_id"])
        assert await instance_count(rt, "saga") == {"in_progress": 3}


async def test_concurrent_starts_with_one_key_make_one_journey(store_url: str) -> None:
    async with JourneyRuntime.open(store_url) as rt:
        journey_id = await saga_design(rt, TWO_STEPS)
        answers = await asyncio.gather(
            *(rt.saga.execute_saga_journey(journey_id, "ana", {}, start_key="once") for _ in range(5))
        )
        assert len({a["saga_id"] for a in answers}) == 1
        assert await instance_count(rt, "saga") == {"in_progress": 1}


async def test_a_bad_start_key_or_window_is_refused_before_anything_is_written(store_url: str) -> None:
    async with JourneyRuntime.open(store_url) as rt:
        journey_id = await saga_design(rt, TWO_STEPS)
        for key, window in (("k", "soon"), ("k", -5), ("k", "PT0S"), ("", None), ("x" * 201, None)):
            with pytest.raises(FlowSettingError):
                await rt.saga.execute_saga_journey(journey_id, "ana", {}, start_key=key, start_key_window=window)
        assert await instance_count(rt, "saga") == {}


def run_children(url: str, journey_id: str, mode: str, count: int, go: Path) -> list[dict[str, Any]]:
    """``count`` processes start a saga of ``journey_id`` at the same moment; their answers."""
    children = [
        subprocess.Popen(
            [sys.executable, str(CHILD), url, journey_id, mode, str(n), str(go)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(count)
    ]
    for child in children:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    go.touch()
    answers = []
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        answers.append(json.loads(out.strip().splitlines()[-1]))
    return answers


async def test_processes_starting_with_one_key_make_one_journey(durable_url: str, tmp_path: Path) -> None:
    async with JourneyRuntime.open(durable_url) as rt:
        journey_id = await saga_design(rt, TWO_STEPS)
    answers = await asyncio.to_thread(run_children, durable_url, journey_id, "key", 3, tmp_path / "go")
    assert len({a["saga_id"] for a in answers}) == 1, answers
    async with JourneyRuntime.open(durable_url) as rt:
        assert await instance_count(rt, "saga") == {"in_progress": 1}


# --- concurrency keys -------------------------------------------------------------------------------


async def test_above_its_limit_a_rejecting_key_refuses_the_start_and_registers_nothing(store_url: str) -> None:
    async with JourneyRuntime.open(store_url) as rt:
        journey_id = await saga_design(rt, limited("reject"))
        first = await rt.saga.execute_saga_journey(journey_id, "u1", {"tenant": "acme"})
        await rt.saga.execute_saga_journey(journey_id, "u2", {"tenant": "acme"})
        with pytest.raises(ConcurrencyLimitError) as refused:
            await rt.saga.execute_saga_journey(journey_id, "u3", {"tenant": "acme"})
        assert refused.value.details == {"concurrency_key": "$.tenant=acme", "limit": 2}
        await rt.saga.execute_saga_journey(journey_id, "u4", {"tenant": "globex"})  # another key, its own slots
        assert await instance_count(rt, "saga") == {"in_progress": 3}

        for step in ("draft", "approve"):  # one finishes: its slot frees
            await rt.saga.advance_saga_step(first["saga_id"], journey_id, "u1", {"step": step})
        third = await rt.saga.execute_saga_journey(journey_id, "u3", {"tenant": "acme"})
        assert third["status"] == "in_progress" and third["current_step"] == "draft"


async def test_a_start_input_without_the_key_is_refused(store_url: str) -> None:
    async with JourneyRuntime.open(store_url) as rt:
        journey_id = await saga_design(rt, limited("reject"))
        for context in ({}, {"tenant": ""}, {"tenant": {"id": 1}}):
            with pytest.raises(FlowSettingError):
                await rt.saga.execute_saga_journey(journey_id, "u1", context)
        assert await instance_count(rt, "saga") == {}


async def test_above_its_limit_a_queueing_key_queues_the_start_until_a_slot_frees(store_url: str) -> None:
    async with JourneyRuntime.open(store_url) as rt:
        journey_id = await saga_design(rt, limited("queue", limit=1))
        first = await rt.saga.execute_saga_journey(journey_id, "u1", {"tenant": "acme"})
        queued = await rt.saga.execute_saga_journey(journey_id, "u2", {"tenant": "acme"})
        assert (queued["status"], queued["current_step"], queued["awaiting_input"]) == ("queued", None, False)
        with pytest.raises(JourneyQueuedError):
            await rt.saga.advance_saga_step(queued["saga_id"], journey_id, "u2", {})
        assert await rt.instances.dispatch_queued() == []  # the slot is still held

        for step in ("draft", "approve"):
            await rt.saga.advance_saga_step(first["saga_id"], journey_id, "u1", {"step": step})
        assert await rt.processes.scheduler.run_due() is not None  # a scheduler pass starts the queued one
        status = await rt.saga.get_saga_status(queued["saga_id"])
        assert (status["status"], status["current_step"]) == ("in_progress", "draft")
        types = [e.type for e in await rt.history(queued["saga_id"])]
        assert types[:2] == ["journey.started", "journey.dequeued"]
        assert await rt.instances.dispatch_queued() == []  # started once


async def test_a_queued_start_a_crash_left_unstarted_is_started_by_recover(durable_url: str) -> None:
    async with JourneyRuntime.open(durable_url) as rt:
        journey_id = await saga_design(rt, limited("queue", limit=1))
        first = await rt.saga.execute_saga_journey(journey_id, "u1", {"tenant": "acme"})
        queued = await rt.saga.execute_saga_journey(journey_id, "u2", {"tenant": "acme"})
        for step in ("draft", "approve"):
            await rt.saga.advance_saga_step(first["saga_id"], journey_id, "u1", {"step": step})
    async with JourneyRuntime.open(durable_url) as rt:  # a new process: its startup recovery dispatches
        assert queued["saga_id"] in await rt.recover()
        status = await rt.saga.get_saga_status(queued["saga_id"])
        assert (status["status"], status["current_step"]) == ("in_progress", "draft")


async def test_processes_starting_past_a_limit_run_at_most_the_limit(durable_url: str, tmp_path: Path) -> None:
    async with JourneyRuntime.open(durable_url) as rt:
        journey_id = await saga_design(rt, limited("reject", limit=1))
    answers = await asyncio.to_thread(run_children, durable_url, journey_id, "limit", 3, tmp_path / "go")
    started = [a for a in answers if "saga_id" in a]
    refused = [a for a in answers if a.get("error") == "ConcurrencyLimitError"]
    assert (len(started), len(refused)) == (1, 2), answers
    async with JourneyRuntime.open(durable_url) as rt:
        assert await instance_count(rt, "saga") == {"in_progress": 1}

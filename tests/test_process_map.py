"""The process ``map`` element (issue 12, fan-out): Step Functions Map semantics on the one agent path,
durable item by item, on every backend."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from agents import AgentRequest, RetrySettings
from agents.errors import PermanentAgentError
from graphs import JourneyRuntime, SpecError
from graphs.errors import MapFailedError

FAST = RetrySettings(max_attempts=1, initial_delay=0.001, max_delay=0.001, jitter=0.0)


def mapping(**options: Any) -> dict[str, Any]:
    return {
        "name": "enrich",
        "elements": [
            {"type": "start", "id": "start"},
            {"type": "map", "id": "enrich_all", "items": "customers", "agent": "crm.enrich", **options},
            {"type": "end", "id": "end"},
        ],
        "flows": ["start -> enrich_all", "enrich_all -> end"],
    }


class Crash(BaseException):
    """What a process dying mid-map looks like to the run: nothing after it happens."""


async def test_a_map_runs_every_item_within_its_concurrency_and_keeps_their_order(store_url: str) -> None:
    running, peak = 0, 0

    async def enrich(request: AgentRequest) -> dict[str, Any]:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01 * (5 - request.payload["index"]))  # later items finish first
        running -= 1
        return {"name": request.payload["item"].upper()}

    async with JourneyRuntime.open(store_url) as rt:
        rt.agents.register("crm.enrich", enrich)
        await rt.processes.deploy(mapping(max_concurrency=2))
        done = await rt.processes.start("enrich", "batch-1", {"customers": ["ada", "bob", "cy", "dee", "eve"]})
        assert done["status"] == "completed"
        assert done["variables"]["enrich_all_results"] == [{"name": n} for n in ("ADA", "BOB", "CY", "DEE", "EVE")]
        assert done["variables"]["enrich_all_failures"] == []
        assert peak == 2
        [finished] = [e for e in await rt.history(done["instance_id"]) if e.type == "map.finished"]
        assert (finished.payload["items"], finished.payload["succeeded"], finished.payload["failed"]) == (5, 5, 0)


async def test_failures_within_the_tolerance_are_reported_and_beyond_it_fail_the_map(store_url: str) -> None:
    def enrich(request: AgentRequest) -> dict[str, Any]:
        if request.payload["item"].startswith("bad"):
            raise PermanentAgentError("no such customer", intent="crm.enrich")
        return {"ok": request.payload["item"]}

    async with JourneyRuntime.open(store_url, retry=FAST) as rt:
        rt.agents.register("crm.enrich", enrich)
        await rt.processes.deploy(mapping(tolerated_failure_percentage=25))
        items = ["a", "bad1", "c", "d"]
        done = await rt.processes.start("enrich", "batch-1", {"customers": items})
        assert done["status"] == "completed"
        assert done["variables"]["enrich_all_results"] == [{"ok": "a"}, None, {"ok": "c"}, {"ok": "d"}]
        [failure] = done["variables"]["enrich_all_failures"]
        assert failure["index"] == 1 and failure["error_type"]

        await rt.processes.deploy({**mapping(tolerated_failure_count=1), "version": 2})
        failed = await rt.processes.start("enrich", "batch-2", {"customers": ["bad1", "bad2", "c"]}, version=2)
        assert failed["status"] == "failed"
        [event] = [e for e in await rt.history(failed["instance_id"]) if e.type == "instance.failed"]
        assert event.payload["error_type"] == "MapFailedError" and "2 of 3 items failed" in event.payload["error"]


async def test_a_crash_mid_map_reruns_only_the_unfinished_items(durable_url: str) -> None:
    calls: Counter[int] = Counter()
    crash_on: set[int] = {3}

    async def enrich(request: AgentRequest) -> dict[str, Any]:
        index = request.payload["index"]
        calls[index] += 1
        if index in crash_on:
            crash_on.discard(index)
            raise Crash
        return {"n": index}

    async with JourneyRuntime.open(durable_url) as rt:
        rt.agents.register("crm.enrich", enrich)
        await rt.processes.deploy(mapping(max_concurrency=1))
        with pytest.raises(BaseException):  # noqa: B017  (the crash, as the task group raises it)
            await rt.processes.start("enrich", "batch-1", {"customers": list("abcdef")}, instance_id="proc-map")
    async with JourneyRuntime.open(durable_url) as rt:  # the next process recovers the run
        rt.agents.register("crm.enrich", enrich)
        assert "proc-map" in await rt.recover()
        status = await rt.processes.status("proc-map")
        assert status["status"] == "completed"
        assert status["variables"]["enrich_all_results"] == [{"n": i} for i in range(6)]
    assert calls == {0: 1, 1: 1, 2: 1, 3: 2, 4: 1, 5: 1}  # items done before the crash were not called again


async def test_a_map_is_checked_when_deployed(store_url: str) -> None:
    async with JourneyRuntime.open(store_url) as rt:
        with pytest.raises(SpecError, match=r"needs an agent for intent 'crm\.enrich'"):
            await rt.processes.deploy(mapping())
        rt.agents.register("crm.enrich", lambda request: {})
        for bad in ({"max_concurrency": 0}, {"tolerated_failure_percentage": 120}, {"output_schema": {"type": 1}}):
            with pytest.raises(SpecError):
                await rt.processes.deploy(mapping(**bad))
        await rt.processes.deploy(mapping())
        failed = await rt.processes.start("enrich", "b", {"customers": "not a list"})
        assert failed["status"] == "failed"
        [event] = [e for e in await rt.history(failed["instance_id"]) if e.type == "instance.failed"]
        assert event.payload["error_type"] == MapFailedError.__name__ and "not a list" in event.payload["error"]

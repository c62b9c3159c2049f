"""Startup recovery (``runtime.recover``, run by every ``journeys serve`` as it starts) looks only at journeys that
may have work in flight, found by one indexed query: a journey parked at a user task has none, and reading every
open journey's state took ~2 minutes at 100,000 of them (benchmarks/recovery.py). On memory, SQLite and
PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

from langgraph.types import Durability

from graphs import JourneyRuntime
from graphs.kernel.instances import OPEN_STATUSES
from tests.process_support import linear, user_task

PARKED = linear("parked", user_task("approve"))
WORKS = linear(
    "works",
    {"type": "service_task", "id": "prepare", "agent": "preparer", "outputs": ["prepared"]},
    user_task("approve"),
)

FORKED = {  # one branch waits for a person while the other's agent works
    "name": "forked",
    "elements": [
        {"type": "start", "id": "start"},
        {"type": "parallel_gateway", "id": "fork"},
        user_task("review"),
        {"type": "service_task", "id": "prepare", "agent": "preparer", "outputs": ["prepared"]},
        {"type": "parallel_gateway", "id": "join"},
        user_task("approve"),
        {"type": "end", "id": "end"},
    ],
    "flows": [
        "start -> fork",
        "fork -> review",
        "fork -> prepare",
        "review -> join",
        "prepare -> join",
        "join -> approve",
        "approve -> end",
    ],
}


async def cut_mid_step(rt: JourneyRuntime, business_key: str, process: str = "works") -> str:
    """An instance of ``process`` whose start was cut while its agent worked, as a killed process's is; its id."""
    working = asyncio.Event()

    async def hangs(request: Any) -> dict[str, Any]:
        working.set()
        await asyncio.Event().wait()
        return {}

    rt.agents.register("preparer", hangs, replace=True)
    start = asyncio.ensure_future(rt.processes.start(process, business_key))
    await working.wait()
    start.cancel()
    await asyncio.gather(start, return_exceptions=True)
    [found] = [i for i in await rt.store.index.list_instances(limit=1000) if i.user_id == business_key]
    return found.instance_id


async def test_recovery_reads_only_the_journeys_not_parked(store_url: str) -> None:
    """Before: recover read every open journey's checkpoint (here 30 parked ones each read), then left them;
    now it reads none of them, and still runs on the one cut mid-step with its input checkpointed ("async") and
    the one cut before any checkpoint ("exit")."""
    async with JourneyRuntime.open(store_url) as rt:
        rt.agents.register("preparer", lambda request: {"prepared": True})
        await rt.processes.deploy(PARKED)
        await rt.processes.deploy(WORKS)
        await rt.processes.deploy(FORKED)
        parked = [(await rt.processes.start("parked", f"p{n}"))["instance_id"] for n in range(30)]
        cut: dict[Durability, str] = {}
        for durability in ("async", "exit"):
            rt.engine._durability = durability  # as a runtime opened with it (serve and worker: "exit")
            cut[durability] = await cut_mid_step(rt, f"cut-{durability}")
        rt.engine._durability = "async"  # a branch cut mid-work beside one parked at its task: in flight too
        forked = await cut_mid_step(rt, "cut-forked", "forked")

        candidates = {i.instance_id for i in await rt.store.index.unparked(OPEN_STATUSES)}
        assert candidates == {*cut.values(), forked}, candidates

        rt.agents.register("preparer", lambda request: {"prepared": True}, replace=True)
        reads: list[str] = []
        saver = rt.store.saver
        read = saver.aget_tuple

        async def counted(config: Any) -> Any:
            reads.append(config["configurable"]["thread_id"])
            return await read(config)

        saver.aget_tuple = counted  # type: ignore[method-assign]
        try:
            resumed = await rt.recover()
        finally:
            saver.aget_tuple = read  # type: ignore[method-assign]
        assert sorted(resumed) == sorted([*cut.values(), forked])
        assert not set(reads) & set(parked), reads
        for instance_id in cut.values():
            view = await rt.processes.status(instance_id)
            assert [w["element"] for w in view["waiting"]] == ["approve"] and view["variables"]["prepared"], view
        view = await rt.processes.status(forked)
        assert [w["element"] for w in view["waiting"]] == ["review"] and view["variables"]["prepared"], view

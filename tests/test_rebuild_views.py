"""Event sourcing beyond the instance index: the client lifecycle tables and the user-task inbox are rebuilt
from the event log (``journeys rebuild``), and after a mixed workload the rebuilt views equal the live ones,
on every backend."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import delete, insert, select, update

from agents import FailingAgent
from checkpoints import VirtualClock
from checkpoints.encryption import SEALED
from checkpoints.lifecycle import opened
from checkpoints.rebuild import lifecycle_views, rebuild_views
from checkpoints.schema.lifecycle_tables import (
    lifecycle_journey_states,
    lifecycle_metrics,
    lifecycle_rollback_history,
    lifecycle_transitions,
    lifecycle_units_of_work,
    lifecycle_validation_results,
)
from checkpoints.schema.tables import user_task_groups, user_tasks
from graphs import JourneyRuntime
from graphs.errors import EntryCriteriaNotMetError
from graphs.lifecycle.catalog import READY_TO_START
from tests.lifecycle_support import DAY, lifecycle_runtime, to_pilot
from tests.process_support import linear, user_task
from tests.test_rebuild import EXPENSE

HOUR = timedelta(hours=1)


async def mixed_workload(rt: JourneyRuntime, clock: VirtualClock) -> None:
    """Client journeys in every kind of state, and process tasks completed, claimed, released, cancelled,
    reassigned and completed by their SLA."""
    lc = rt.lifecycle
    rolled = (await lc.start_journey("client-a", metadata={"tier": "gold"}, metrics=READY_TO_START))["journey_id"]
    await to_pilot(lc, rolled)
    assert (await lc.record_metric(rolled, "user_satisfaction", 3.2))["rollback"] is not None  # back to sandbox
    cancelled = (await lc.start_journey("client-b", metrics=READY_TO_START))["journey_id"]
    await lc.cancel(cancelled, "the client left")
    with pytest.raises(EntryCriteriaNotMetError):
        await lc.start_journey("client-c")  # refused: pending, its validation stored
    waiting = (await lc.start_journey("client-d", metrics=READY_TO_START))["journey_id"]
    await lc.initiate_rollback(waiting, "asked by the client", rollback_to="sandbox")  # waits in ROLLBACK

    await rt.processes.deploy(EXPENSE)
    started = [await rt.processes.start("expense", business_key=key) for key in ("done", "held", "let-go", "gone")]
    inbox = rt.processes.inbox
    task_of = {s["business_key"]: (await inbox.list_tasks(instance_id=s["instance_id"]))[0] for s in started}
    await inbox.claim(task_of["done"]["task_id"], "ana", groups=["finance"])
    await inbox.complete(task_of["done"]["task_id"], user="ana", payload={"approved": True})
    await inbox.claim(task_of["held"]["task_id"], "cara", groups=["finance"])
    await inbox.claim(task_of["let-go"]["task_id"], "ana", groups=["finance"])
    await inbox.release(task_of["let-go"]["task_id"], "ana")
    await rt.processes.cancel(task_of["gone"]["instance_id"], reason="withdrawn")
    reassign = {"action": "reassign", "assignee": "boss", "candidate_groups": ["directors"]}
    await rt.processes.deploy(
        linear("moved", user_task("approve", candidate_groups=["leads"], sla_hours=2, on_timeout=reassign))
    )
    moved = await rt.processes.start("moved", "m-1")
    await inbox.claim((await inbox.list_tasks(instance_id=moved["instance_id"]))[0]["task_id"], "dan", groups=["leads"])
    timed_out = {"action": "complete", "default": {"approved": False}}
    await rt.processes.deploy(linear("lapsed", user_task("approve", sla="PT30M", on_timeout=timed_out)))
    await rt.processes.start("lapsed", "l-1")
    clock.advance(2 * HOUR)
    for _ in range(2):
        await rt.processes.scheduler.run_due()


async def views(rt: JourneyRuntime) -> dict[str, Any]:
    """Every rebuilt view as it stands: the lifecycle rows of each journey and the inbox with its groups."""
    backend = rt.store.backend
    journeys = [i.instance_id for i in await rt.store.index.list_instances(pattern="lifecycle", limit=100)]
    found: dict[str, Any] = {}
    for journey_id in journeys:
        for table, rows in (await lifecycle_views(backend, journey_id)).items():
            found[f"{table}:{journey_id}"] = sorted(rows, key=repr)
    found["tasks"] = sorted((dict(r) for r in await backend.query(select(user_tasks))), key=lambda r: r["task_id"])
    found["groups"] = sorted(tuple(r.values()) for r in await backend.query(select(user_task_groups)))
    return found


async def test_the_lifecycle_tables_and_the_inbox_are_rebuilt_from_the_event_log(store_url: str) -> None:
    async with lifecycle_runtime(store_url) as (rt, clock):
        await mixed_workload(rt, clock)
        clock.advance(DAY)  # a rebuild writes the log's times, not its own
        live = await views(rt)
        assert {t["status"] for t in live["tasks"]} == {"completed", "open", "cancelled"}
        assert sorted(t["claimed_by"] or "" for t in live["tasks"]) == ["", "", "", "", "ana", "cara"]
        escalated = {t["escalation"]: t for t in live["tasks"] if t["escalation"]}
        assert (escalated["reassign"]["assignee"], escalated["reassign"]["status"]) == ("boss", "open")
        assert (escalated["complete"]["completed_by"], escalated["complete"]["status"]) == (
            "sla-escalation",
            "completed",
        )
        states = [v[0] for k, v in live.items() if k.startswith("lifecycle_journey_states:") and v]
        assert sorted(s["status"] for s in states) == ["active", "cancelled", "rollback"]  # the refused one has none

        untouched = await rebuild_views(
            rt.store.backend, rt.store.events, rt.engine.exclusive
        )  # the live views are the log's
        assert (untouched[1].corrected, untouched[2].corrected) == ([], [])
        assert (untouched[1].instances, untouched[2].instances) == (4, 6)

        # What a hand-edited or half-lost set of derived tables looks like.
        backend = rt.store.backend
        await backend.write([delete(lifecycle_journey_states)], {})
        await backend.write([update(lifecycle_transitions).values(to_stage="completed", from_stage_seconds=1.0)], {})
        await backend.write([delete(lifecycle_validation_results).where(lifecycle_validation_results.c.passed)], {})
        any_journey = states[0]["journey_id"]
        bogus = insert(lifecycle_metrics).values(journey_id=any_journey, metric="x", value=1.0, recorded_at=clock.now())
        await backend.write([bogus], {})
        await backend.write([delete(user_task_groups)], {})
        await backend.write([update(user_tasks).values(status="open", claimed_by="mallory")], {})
        one_task = live["tasks"][0]["task_id"]
        await backend.write([delete(user_tasks).where(user_tasks.c.task_id == one_task)], {})
        assert await views(rt) != live

        rebuilt = await rebuild_views(backend, rt.store.events, rt.engine.exclusive)
        assert await views(rt) == live
        assert len(rebuilt[2].corrected) == 6 and len(rebuilt[1].corrected) >= 4
        again = await rebuild_views(backend, rt.store.events, rt.engine.exclusive)
        assert (again[1].corrected, again[2].corrected) == ([], [])


async def unit_and_rollback_workload(rt: JourneyRuntime, clock: VirtualClock) -> list[str]:
    """Journeys whose units of work completed, failed and compensated, or were undone by a rollback, and
    whose rollbacks completed, failed their validation, were cancelled or still wait."""
    lc = rt.lifecycle
    scan = rt.agents.resolve("run_security_scan").agent
    restore = rt.agents.resolve("restore_sandbox_configuration").agent
    failed = (await lc.start_journey("client-u", metrics=READY_TO_START))["journey_id"]
    await lc.run_unit_of_work(failed, "connector_installation")
    rt.agents.register("run_security_scan", FailingAgent("run_security_scan", permanent=True), replace=True)
    assert (await lc.run_unit_of_work(failed, "test_dataset_provisioning"))["status"] == "failed"  # compensated
    rt.agents.register("run_security_scan", scan, replace=True)
    await to_pilot(lc, failed)
    await lc.run_unit_of_work(failed, "limited_user_rollout")
    rt.agents.register("restore_sandbox_configuration", FailingAgent("restore", permanent=True), replace=True)
    refused = await lc.initiate_rollback(failed, "a bad pilot", rollback_to="sandbox", complete=True)
    assert refused["status"] == "failed"  # its unit failed, so it did not validate
    rt.agents.register("restore_sandbox_configuration", restore, replace=True)
    await lc.cancel(failed, "given up")  # the failed rollback is cancelled with the journey

    rolled = (await lc.start_journey("client-v", metrics=READY_TO_START))["journey_id"]
    await to_pilot(lc, rolled)
    await lc.run_unit_of_work(rolled, "limited_user_rollout")
    clock.advance(HOUR)
    assert (await lc.record_metric(rolled, "user_satisfaction", 3.2))["rollback"] is not None  # automatic
    waiting = (await lc.start_journey("client-w", metrics=READY_TO_START))["journey_id"]
    await lc.initiate_rollback(waiting, "asked by the client", rollback_to="sandbox")
    completed = (await lc.start_journey("client-x", metrics=READY_TO_START))["journey_id"]
    await to_pilot(lc, completed)
    await lc.initiate_rollback(completed, "hold on")
    clock.advance(HOUR)
    await lc.complete_rollback(completed)
    return [failed, rolled, waiting, completed]


async def unit_views(rt: JourneyRuntime, journey_ids: list[str]) -> dict[str, Any]:
    """The units of work and rollback history of ``journey_ids``, as they stand (ids aside)."""
    found: dict[str, Any] = {}
    for table in (lifecycle_units_of_work, lifecycle_rollback_history):
        for journey_id in journey_ids:
            rows = await rt.store.backend.query(select(table).where(table.c.journey_id == journey_id))
            found[f"{table.name}:{journey_id}"] = sorted(
                ({k: v for k, v in opened(table, r, rt.store.sealer).items() if k != "id"} for r in rows), key=repr
            )
    return found


@pytest.mark.parametrize("key", [None, b"0123456789abcdef"], ids=["clear", "sealed"])
async def test_units_of_work_and_rollback_history_are_rebuilt_from_the_event_log(
    store_url: str, key: bytes | None
) -> None:
    """Also with an encryption key: the rows' sealed columns are compared opened, and written back sealed."""
    async with lifecycle_runtime(store_url, encryption_key=key) as (rt, clock):
        journeys = await unit_and_rollback_workload(rt, clock)
        clock.advance(DAY)
        live = await unit_views(rt, journeys)
        units = [u for k, rows in live.items() if k.startswith("lifecycle_units_of_work") for u in rows]
        assert {(u["purpose"], u["status"]) for u in units} >= {
            ("entry", "completed"),
            ("on_demand", "failed"),
            ("on_demand", "rolled_back"),
            ("rollback", "completed"),
            ("rollback", "failed"),
        }
        rollbacks = [r for k, rows in live.items() if k.startswith("lifecycle_rollback_history") for r in rows]
        assert sorted(r["status"] for r in rollbacks) == ["cancelled", "completed", "completed", "validated"]
        assert all(r["plan"]["unwind"] for r in rollbacks) and any(r["automatic"] for r in rollbacks)
        untouched = await rebuild_views(rt.store.backend, rt.store.events, rt.engine.exclusive)
        assert untouched[1].corrected == []

        backend = rt.store.backend
        await backend.write(
            [delete(lifecycle_units_of_work).where(lifecycle_units_of_work.c.purpose == "rollback")], {}
        )
        await backend.write([update(lifecycle_units_of_work).values(status="running", tasks={}, failure=None)], {})
        await backend.write([delete(lifecycle_rollback_history).where(lifecycle_rollback_history.c.automatic)], {})
        await backend.write([update(lifecycle_rollback_history).values(status="validated", run_ids=[], plan={})], {})
        assert await unit_views(rt, journeys) != live

        rebuilt = await rebuild_views(backend, rt.store.events, rt.engine.exclusive)
        assert await unit_views(rt, journeys) == live
        if key is not None:  # written back sealed, as the live machine writes them
            tasks = await backend.query(select(lifecycle_units_of_work.c.tasks))
            reasons = await backend.query(select(lifecycle_rollback_history.c.reason))
            assert tasks and all(SEALED in row["tasks"] for row in tasks)
            assert reasons and all(row["reason"].startswith('{"__sealed__"') for row in reasons)
        tables = {name.split(":")[0] for name in rebuilt[1].corrected}
        assert tables == {"lifecycle_units_of_work", "lifecycle_rollback_history"}
        assert (await rebuild_views(backend, rt.store.events, rt.engine.exclusive))[1].corrected == []


async def test_a_terminated_lifecycle_journeys_rows_are_rebuilt_as_terminated(store_url: str) -> None:
    """Terminated in its sandbox, or while it waited in a rollback: its state row says terminated and the
    rollback is given up, live and as rebuilt from ``journey.terminated``, so a rebuild corrects nothing, and
    rows that lost it are put back."""
    async with lifecycle_runtime(store_url) as (rt, clock):
        lc = rt.lifecycle
        sandbox = (await lc.start_journey("client-a", metrics=READY_TO_START))["journey_id"]
        waiting = (await lc.start_journey("client-b", metrics=READY_TO_START))["journey_id"]
        await to_pilot(lc, waiting)
        await lc.initiate_rollback(waiting, "hold for a decision")
        clock.advance(DAY)
        for journey_id in (sandbox, waiting):
            await rt.terminate(journey_id, "the client left")
        live = {j: await lifecycle_views(rt.store.backend, j) for j in (sandbox, waiting)}
        assert [r["status"] for j in (sandbox, waiting) for r in live[j]["lifecycle_journey_states"]] == [
            "terminated",
            "terminated",
        ]
        assert [r["status"] for r in live[waiting]["lifecycle_rollback_history"]] == ["cancelled"]
        assert (await rebuild_views(rt.store.backend, rt.store.events, rt.engine.exclusive))[1].corrected == []

        backend = rt.store.backend
        await backend.write([update(lifecycle_journey_states).values(status="active")], {})
        await backend.write([update(lifecycle_rollback_history).values(status="validated", completed_at=None)], {})
        rebuilt = await rebuild_views(backend, rt.store.events, rt.engine.exclusive)

        assert {j: await lifecycle_views(backend, j) for j in (sandbox, waiting)} == live
        assert sorted(rebuilt[1].corrected) == sorted(
            [
                f"lifecycle_journey_states:{sandbox}",
                f"lifecycle_journey_states:{waiting}",
                f"lifecycle_rollback_history:{waiting}",
            ]
        )


async def test_a_claim_made_while_the_inbox_is_rebuilt_is_kept(store_url: str) -> None:
    """`journeys rebuild` on a live database: a person claimed a task between the rebuild's read of its
    instance's log and its write of the task. The rebuild wrote the task as the older log said, unclaimed:
    the claim (committed, logged, answered 200) was gone from the inbox. Now a task is written only if its
    instance's log did not grow since it was read, else the log is read again."""
    async with JourneyRuntime.open(store_url, clock=VirtualClock()) as rt:
        await rt.processes.deploy(EXPENSE)
        started = await rt.processes.start("expense", business_key="live")
        [task] = await rt.processes.inbox.list_tasks(instance_id=started["instance_id"])
        backend, events = rt.store.backend, rt.store.events
        await backend.write([update(user_tasks).values(title="hand-edited")], {})  # a task the rebuild rewrites
        listed, claims = events.list, []

        async def list_then_claim(instance_id: str, **options: Any) -> Any:
            found = await listed(instance_id, **options)
            if instance_id == started["instance_id"] and not claims:  # read by the rebuild: a person claims now
                claims.append(await rt.processes.inbox.claim(task["task_id"], "ana", groups=["finance"]))
            return found

        events.list = list_then_claim  # type: ignore[method-assign]
        try:
            rebuilt = await rebuild_views(backend, events, rt.engine.exclusive)
        finally:
            del events.list
        assert claims
        [row] = await backend.query(select(user_tasks).where(user_tasks.c.task_id == task["task_id"]))
        assert (row["claimed_by"], row["title"], row["status"]) == ("ana", "Approve", "open")
        assert rebuilt[2].corrected == [task["task_id"]] and rebuilt[2].busy == []


async def test_a_metric_recorded_while_the_lifecycle_tables_are_rebuilt_is_kept(store_url: str) -> None:
    """`journeys rebuild` on a live database: a metric recorded between the rebuild's read of a journey's
    log and its rewrite of the journey's metric samples was deleted with them (the rebuild wrote the older
    log's samples). Now a journey's tables are written only if its log did not grow since it was read."""
    async with lifecycle_runtime(store_url) as (rt, clock):
        lc = rt.lifecycle
        journey_id = (await lc.start_journey("client-a", metrics=READY_TO_START))["journey_id"]
        backend, events = rt.store.backend, rt.store.events
        bogus = insert(lifecycle_metrics).values(journey_id=journey_id, metric="x", value=1.0, recorded_at=clock.now())
        await backend.write([bogus], {})  # a table the rebuild rewrites
        listed, recorded = events.list, []

        async def list_then_record(instance_id: str, **options: Any) -> Any:
            found = await listed(instance_id, **options)
            if instance_id == journey_id and not recorded:  # read by the rebuild: a sample comes in now
                recorded.append(await lc.record_metric(journey_id, "user_satisfaction", 4.5))
            return found

        events.list = list_then_record  # type: ignore[method-assign]
        try:
            rebuilt = await rebuild_views(backend, events, rt.engine.exclusive)
        finally:
            del events.list
        assert recorded
        samples = await backend.query(select(lifecycle_metrics).where(lifecycle_metrics.c.journey_id == journey_id))
        assert ("user_satisfaction", 4.5) in {(s["metric"], s["value"]) for s in samples}
        assert "x" not in {s["metric"] for s in samples}
        assert rebuilt[1].corrected == [f"lifecycle_metrics:{journey_id}"] and rebuilt[1].busy == []


async def test_a_task_completed_but_not_yet_delivered_is_not_reopened_by_a_rebuild(store_url: str) -> None:
    """A completed task's row closes with its wait's resolution; its ``wait.completed`` is logged when the
    instance takes it (at once, or by ``recover()`` after a crash in between). A rebuild in between read the
    task open in the log and reopened it: the person's completion vanished from the inbox and the task could
    be taken again. A task whose wait is resolved, its delivery pending, is left as it is."""
    async with JourneyRuntime.open(store_url, clock=VirtualClock()) as rt:
        await rt.processes.deploy(EXPENSE)
        started = await rt.processes.start("expense", business_key="crash")
        [task] = await rt.processes.inbox.list_tasks(instance_id=started["instance_id"])
        instances = rt.processes.inbox._instances

        async def crash(*_args: Any, **_options: Any) -> None:
            raise RuntimeError("the process died before it delivered the completion")

        instances.deliver_answering = crash  # type: ignore[method-assign]
        try:
            with pytest.raises(RuntimeError):
                await rt.processes.inbox.complete(task["task_id"], user="ana", groups=["finance"], payload={"ok": 1})
        finally:
            del instances.deliver_answering
        rebuilt = await rebuild_views(rt.store.backend, rt.store.events, rt.engine.exclusive)
        [row] = await rt.store.backend.query(select(user_tasks).where(user_tasks.c.task_id == task["task_id"]))
        assert (row["status"], row["completed_by"]) == ("completed", "ana") and rebuilt[2].corrected == []
        await rt.recover()  # delivered now: the log says so too, and a rebuild agrees with the inbox
        assert (await rebuild_views(rt.store.backend, rt.store.events, rt.engine.exclusive))[2].corrected == []
        [row] = await rt.store.backend.query(select(user_tasks).where(user_tasks.c.task_id == task["task_id"]))
        assert (row["status"], row["completed_by"]) == ("completed", "ana")


async def test_a_library_rebuild_holds_each_lifecycle_journeys_lock(store_url: str) -> None:
    """`rebuild_views` and `rebuild_lifecycle` took the store's instance locks as an optional last argument: a
    library caller who left them out rebuilt a live database's lifecycle tables without them, and a
    transition waiting on a row the rebuild replaced would find it gone (only the log check guarded it); and
    given, they kept out other processes only (memory:// has none; PostgreSQL's advisory locks are one
    session's per process). The rebuild now requires the runtime's ``engine.exclusive`` (a call without it
    is refused at once, naming it), and waits for a journey a transition in this process holds."""
    async with lifecycle_runtime(store_url) as (rt, _clock):
        journey_id = (await rt.lifecycle.start_journey("client-a", metrics=READY_TO_START))["journey_id"]
        backend, events, exclusive = rt.store.backend, rt.store.events, rt.engine.exclusive
        with pytest.raises(TypeError, match="exclusive"):
            await rebuild_views(backend, events)  # type: ignore[call-arg]
        held, release = asyncio.Event(), asyncio.Event()

        async def transition() -> None:
            async with exclusive(journey_id):
                held.set()
                await release.wait()

        holder = asyncio.create_task(transition())
        await held.wait()
        rebuilding = asyncio.create_task(rebuild_views(backend, events, exclusive))
        for _ in range(100):  # the index is rebuilt, then the rebuild waits at the journey's lock
            await asyncio.sleep(0.02)
        assert not rebuilding.done()
        release.set()
        await holder
        _index, lifecycle, _inbox = await rebuilding
        assert lifecycle.instances == 1 and lifecycle.busy == []

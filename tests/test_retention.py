"""Checkpoint retention: finished journeys keep their event log and only the checkpoints their final state
needs, per policy, on a virtual clock; open journeys are untouched; the periodic jobs run it."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import timedelta
from typing import Any

import httpx
import psycopg
import pytest
from typer.testing import CliRunner

from agents import FailingAgent, RecordingAgent, RetrySettings
from checkpoints.clock import VirtualClock
from checkpoints.retention import PASS_LOCK, RetentionReport, compact_latest
from graphs import (
    CheckpointsDeletedError,
    DuplicateInstanceError,
    JourneyRuntime,
    RetentionPolicy,
    RetentionPolicyError,
)
from server.app import create_app
from server.cli import app as cli
from server.queues.embedded import EmbeddedQueue
from server.runs.executor import RunExecutor
from server.runs.store import RunStore, ThreadTTL
from server.settings import Settings
from tests.forked import run_journeys
from tests.lifecycle_support import START, journey_at
from tests.process_support import linear, payment_spec
from tests.server_support import start_worker, stop_worker

FAST = RetrySettings(max_attempts=1, initial_delay=0.001, max_delay=0.01, jitter=0.001)
AREAS: list[dict[str, Any]] = [
    {"area_id": "content", "area_name": "Content", "completion": {"files_uploaded": True}},
    {"area_id": "insights", "area_name": "Insights"},
]
SAGA_HANDLERS = {"upload_content": "delete_uploaded_content", "analyze_content": "revert_analysis"}
AFTER_SETTLING = timedelta(minutes=2)  # past RetentionPolicy.settle (60 s)


async def checkpoints(rt: JourneyRuntime, thread_id: str) -> int:
    return len([c async for c in rt.store.saver.alist({"configurable": {"thread_id": thread_id}})])


async def completed_structured(rt: JourneyRuntime, user: str) -> tuple[str, str]:
    """A content migration journey run to its end by ``user``: (journey id, instance id)."""
    journey = await rt.structured.design_journey("content_migration", {"source": "legacy"})
    view = await rt.structured.execute_journey(journey["journey_id"], user, {})
    while view["status"] != "completed":
        view = await rt.structured.advance_journey_step(journey["journey_id"], user, {"ok": True})
    return journey["journey_id"], view["instance_id"]


async def compensated_saga(rt: JourneyRuntime) -> str:
    rt.agents.register("transform_data", FailingAgent("transform_data", permanent=True), replace=True)
    saga = await rt.saga.design_saga_journey("enterprise_migration", {}, compensation_handlers=SAGA_HANDLERS)
    started = await rt.saga.execute_saga_journey(saga["journey_id"], "sam", {})
    status: dict[str, Any] = {}
    for result in ({"files": 3}, {"entities": 2}, {"rows": 10}):
        status = await rt.saga.advance_saga_step(
            saga_id=started["saga_id"], journey_id=saga["journey_id"], user_id="sam", step_result=result
        )
    assert status["status"] == "compensated"
    return str(started["saga_id"])


async def completed_process(rt: JourneyRuntime) -> str:
    rt.agents.register("score", lambda _request: {"value": 40}, replace=True)
    task = {"type": "service_task", "id": "score", "agent": "score", "outputs": {"score": "value"}}
    await rt.processes.deploy(linear("scoring", task))
    view = await rt.processes.start("scoring", "lead-1", {})
    assert view["status"] == "completed"
    return str(view["instance_id"])


async def closed_session(rt: JourneyRuntime) -> str:
    session = await rt.session.start_session("sue", {"areas": AREAS, "initial_area": "content"})
    await rt.session.navigate_to_area(session["session_id"], "insights")
    await rt.session.close_session(session["session_id"], "done")
    return str(session["session_id"])


async def test_keep_latest_prunes_every_finished_pattern_to_its_latest_checkpoint(store_url: str) -> None:
    clock = VirtualClock()
    async with JourneyRuntime.open(store_url, clock=clock, retry=FAST) as rt:
        journey_id, done = await completed_structured(rt, "ann")
        saga_id = await compensated_saga(rt)
        session_id = await closed_session(rt)
        still_open = (await rt.structured.execute_journey(journey_id, "bob", {}))["instance_id"]
        await rt.structured.advance_journey_step(journey_id, "bob", {"ok": True})  # a second stop: 2 checkpoints
        finished = [done, saga_id, session_id]
        before = {i: await checkpoints(rt, i) for i in [*finished, still_open]}
        assert all(n > 1 for n in before.values()), before
        views = (
            await rt.structured.get_journey_status(journey_id, "ann"),
            await rt.saga.get_saga_status(saga_id),
            await rt.session.get_session_progress(session_id),
        )
        logs = {i: await rt.history(i) for i in [*finished, still_open]}

        report = await rt.retention.run()  # just finished: left to settle first
        assert (report.pruned, report.deleted) == (0, 0)
        assert {i: await checkpoints(rt, i) for i in before} == before

        clock.advance(AFTER_SETTLING)
        report = await rt.retention.run()
        assert (report.pruned, report.deleted, report.busy) == (3, 0, False)
        assert [await checkpoints(rt, i) for i in finished] == [1, 1, 1]
        assert await checkpoints(rt, still_open) == before[still_open]
        # Their final state shows as before, and the log is whole.
        assert (
            await rt.structured.get_journey_status(journey_id, "ann"),
            await rt.saga.get_saga_status(saga_id),
            await rt.session.get_session_progress(session_id),
        ) == views
        assert {i: await rt.history(i) for i in logs} == logs
        # A second pass has nothing left to do; the open journey still advances.
        assert (await rt.retention.run()).pruned == 0
        advanced = await rt.structured.advance_journey_step(journey_id, "bob", {"ok": True})
        assert advanced["completed_steps"] == ["upload_content", "analyze_content"]


async def shown(rt: JourneyRuntime, instance_id: str) -> dict[str, Any]:
    """What LangGraph shows of an instance's latest checkpoint (its graph's ``aget_state``)."""
    instance = await rt.store.index.get_instance(instance_id)
    assert instance is not None
    graph = await rt.instances.graph(instance)
    snapshot = await graph.aget_state(rt.engine.config(instance_id))
    tasks = [(t.id, t.name, t.path, t.interrupts, t.error is None) for t in snapshot.tasks]
    return {
        "values": snapshot.values,
        "next": snapshot.next,
        "tasks": tasks,
        "interrupts": snapshot.interrupts,
        "metadata": snapshot.metadata,
        "created_at": snapshot.created_at,
        "checkpoint_id": snapshot.config["configurable"]["checkpoint_id"],
    }


async def latest(rt: JourneyRuntime, thread_id: str) -> dict[str, Any]:
    saved = await rt.store.saver.aget_tuple({"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}})
    assert saved is not None
    return dict(saved.checkpoint)


async def test_the_kept_checkpoint_of_a_journey_that_never_runs_again_drops_bookkeeping_and_shows_the_same(
    store_url: str,
) -> None:
    """keep_latest compacts the kept checkpoint of every pattern's journey that will not run again: LangGraph's
    versions of channels that hold no value, and what nodes saw of them, are dropped (most of its bytes), and
    the graph shows the same state from it (values, no next task, metadata, id). Twice changes nothing; a
    journey in flight, or failed (a retry runs it on), is left as it is."""
    clock = VirtualClock(START)
    async with JourneyRuntime.open(store_url, clock=clock, retry=FAST) as rt:
        journey_id, done = await completed_structured(rt, "ann")
        saga_id = await compensated_saga(rt)
        session_id = await closed_session(rt)
        process_id = await completed_process(rt)
        lifecycle_id = await journey_at(rt, clock, "completed")
        rt.agents.register("analyze_content", FailingAgent("analyze_content", permanent=True), replace=True)
        failed_id = (await rt.structured.execute_journey(journey_id, "cy", {}))["instance_id"]
        await rt.structured.advance_journey_step(journey_id, "cy", {})
        with pytest.raises(Exception, match="analyze_content"):
            await rt.structured.advance_journey_step(journey_id, "cy", {"depth": "full"})
        still_open = (await rt.structured.execute_journey(journey_id, "bob", {}))["instance_id"]
        finished = [done, saga_id, session_id, process_id, lifecycle_id]
        left = [failed_id, still_open]
        views = {i: await shown(rt, i) for i in [*finished, *left]}
        assert all(views[i]["next"] == () and not views[i]["tasks"] for i in finished), views
        raw = {i: await latest(rt, i) for i in [*finished, *left]}

        clock.advance(AFTER_SETTLING)
        report = await rt.retention.run()
        assert (report.pruned, report.compacted, report.busy) == (6, 5, False)
        for i in finished:
            kept = await latest(rt, i)
            values = set(kept["channel_values"])
            assert set(kept["channel_versions"]) == values < set(raw[i]["channel_versions"]), i
            assert all(set(seen) <= values for seen in kept["versions_seen"].values()), i
            assert kept["channel_values"] == raw[i]["channel_values"]
            assert await shown(rt, i) == views[i], i
        assert {i: await latest(rt, i) for i in left} == {i: raw[i] for i in left}
        assert {i: await shown(rt, i) for i in left} == {i: views[i] for i in left}

        # Idempotent: nothing left to compact, nothing written.
        compact = {i: await latest(rt, i) for i in finished}
        assert [await compact_latest(rt.store.saver, i) for i in [*finished, *left]] == [0] * 7
        clock.advance(AFTER_SETTLING)
        assert await rt.retention.run() == RetentionReport()
        assert {i: await latest(rt, i) for i in finished} == compact
        # The views of the finished journeys, and the ones left, still answer and go on.
        assert (await rt.structured.get_journey_status(journey_id, "ann"))["status"] == "completed"
        assert (await rt.saga.get_saga_status(saga_id))["status"] == "compensated"
        advanced = await rt.structured.advance_journey_step(journey_id, "bob", {"ok": True})
        assert advanced["completed_steps"] == ["upload_content"]
        # A fork at the last step of a compacted journey starts from its kept checkpoint: finished, same state.
        last = [e.step for e in await rt.history(done) if e.step and e.type == "step.completed"][-1]
        forked = await rt.fork(done, str(last))
        assert forked["status"] == "completed"
        assert (await shown(rt, forked["instance_id"]))["values"] == views[done]["values"]


async def test_keep_all_for_keeps_every_checkpoint_for_n_days_then_prunes(store_url: str) -> None:
    clock = VirtualClock()
    async with JourneyRuntime.open(store_url, clock=clock, retention=RetentionPolicy("keep_all_for", 7)) as rt:
        journey_id, done = await completed_structured(rt, "ann")
        kept = await checkpoints(rt, done)
        clock.advance(timedelta(days=6))
        assert (await rt.retention.run()).pruned == 0
        assert await checkpoints(rt, done) == kept > 1
        clock.advance(timedelta(days=1, minutes=1))
        assert (await rt.retention.run()).pruned == 1
        assert await checkpoints(rt, done) == 1
        assert (await rt.structured.get_journey_status(journey_id, "ann"))["status"] == "completed"


async def test_delete_after_deletes_checkpoints_and_views_answer_from_the_log_or_say_so(store_url: str) -> None:
    clock = VirtualClock()
    async with JourneyRuntime.open(
        store_url, clock=clock, retry=FAST, retention=RetentionPolicy("delete_after", 30)
    ) as rt:
        journey_id, done = await completed_structured(rt, "ann")
        saga_id = await compensated_saga(rt)
        session_id = await closed_session(rt)
        process_id = await completed_process(rt)
        status = await rt.structured.get_journey_status(journey_id, "ann")
        saga = await rt.saga.get_saga_status(saga_id)
        logs = {i: await rt.history(i) for i in (done, saga_id, session_id, process_id)}
        rt.agents.register("analyze_content", FailingAgent("analyze_content", permanent=True), replace=True)
        failed_id = (await rt.structured.execute_journey(journey_id, "fay", {}))["instance_id"]
        await rt.structured.advance_journey_step(journey_id, "fay", {})
        with pytest.raises(Exception, match="analyze_content"):
            await rt.structured.advance_journey_step(journey_id, "fay", {"depth": "full"})

        clock.advance(AFTER_SETTLING)
        assert (await rt.retention.run()).pruned == 5  # the latest is kept until the days are up
        clock.advance(timedelta(days=30))
        report = await rt.retention.run()
        assert (report.pruned, report.deleted) == (0, 4)
        assert [await checkpoints(rt, i) for i in logs] == [0, 0, 0, 0]
        assert {i: await rt.history(i) for i in logs} == logs
        # A failed journey is not finished for good: its latest checkpoint stays for its retry, which runs on.
        assert await checkpoints(rt, failed_id) == 1
        rt.agents.register("analyze_content", RecordingAgent("analyze_content"), replace=True)
        retried = await rt.retry(failed_id)
        assert retried["status"] == "in_progress", retried

        # Structured journeys and sagas answer from the index and the log.
        assert await rt.structured.get_journey_status(journey_id, "ann") == status | {"checkpoints": "deleted"}
        retained = await rt.saga.get_saga_status(saga_id)
        assert retained["status"] == "compensated" and retained["checkpoints"] == "deleted"
        assert retained["compensated_steps"] == saga["compensated_steps"] == ["analyze_content", "upload_content"]
        # A view that needs the graph state says why it has none.
        with pytest.raises(CheckpointsDeletedError) as gone:
            await rt.session.get_session_progress(session_id)
        assert gone.value.details["status"] == "closed"
        assert gone.value.category == "not_found"
        with pytest.raises(CheckpointsDeletedError):  # and changes nothing: the instance is not failed by it
            await rt.processes.status(process_id)
        instance = await rt.store.index.get_instance(process_id)
        assert instance is not None and instance.status == "completed"
        # A deleted journey is not taken for a start a crash cut short: it is not run again.
        with pytest.raises(DuplicateInstanceError):
            await rt.structured.execute_journey(journey_id, "ann", {})
        assert await checkpoints(rt, done) == 0
        assert {i: await rt.history(i) for i in logs} == logs


async def test_a_saver_subclass_prunes_whether_or_not_its_class_overrides_aprune(store_url: str) -> None:
    """Before, a pass judged from the saver's class whether it could ``aprune``: a subclass overriding it (here
    to audit calls, delegating) on a saver without one (SQLite's) made every pass fail on NotImplementedError."""
    clock = VirtualClock()
    async with JourneyRuntime.open(store_url, clock=clock) as rt:
        asked: list[str] = []
        saver = rt.retention.saver
        official = type(saver)

        async def audited(self: Any, thread_ids: Any, *, strategy: str = "keep_latest") -> None:
            asked.append(strategy)
            await official.aprune(self, thread_ids, strategy=strategy)

        saver.__class__ = type("AuditedSaver", (official,), {"aprune": audited})
        _journey_id, instance_id = await completed_structured(rt, "ann")
        clock.advance(AFTER_SETTLING)
        assert (await rt.retention.run()).pruned == 1
        assert await checkpoints(rt, instance_id) == 1
        assert asked == ["keep_latest"]
        _journey_id, second = await completed_structured(rt, "bob")
        clock.advance(AFTER_SETTLING)
        assert (await rt.retention.run()).pruned == 1
        assert await checkpoints(rt, second) == 1


async def test_retention_passes_of_two_processes_never_overlap(durable_url: str) -> None:
    """A pass holds the store's lock (PASS_LOCK), as an API's loop, a worker's job and the CLI share one store:
    a pass that meets another one under way waits for it, and gives up (busy, nothing done) after the lock
    timeout; passes started together run one after the other, without error, and prune each journey once."""
    clock = VirtualClock()
    async with (
        JourneyRuntime.open(durable_url, clock=clock, retry=FAST, lock_timeout=3) as one,
        JourneyRuntime.open(durable_url, clock=clock, retry=FAST, lock_timeout=3) as other,
    ):
        done = [(await completed_structured(one, user))[1] for user in ("ann", "bob")]
        clock.advance(AFTER_SETTLING)
        kept = [await checkpoints(one, i) for i in done]
        assert min(kept) > 1
        async with one.engine.exclusive(PASS_LOCK):  # a pass of the first process is under way
            assert await other.retention.run() == RetentionReport(busy=True)
            assert [await checkpoints(other, i) for i in done] == kept
        reports = await asyncio.gather(one.retention.run(), other.retention.run())
        assert sorted(r.pruned for r in reports) == [0, 2] and not any(r.busy for r in reports)
        assert [await checkpoints(one, i) for i in done] == [1, 1]


async def test_the_thread_state_of_a_journey_whose_checkpoints_were_deleted_is_a_404_saying_so(tmp_path: Any) -> None:
    """GET /threads/{id}/state answers CheckpointsDeletedError (404) once retention deleted the checkpoints of
    the thread's journey, as the other views do, instead of an empty state."""
    clock = VirtualClock()
    settings = Settings(database_url=f"sqlite:///{tmp_path}/journeys.db", auth=False, run_timers=False)
    options = {"retry": FAST, "retention": RetentionPolicy("delete_after", 30)}
    app = create_app(settings, clock=clock, runtime_options=options)
    spec = {
        "journey_type": "retained",
        "name": "Retained",
        "steps": [{"step_id": "only", "agent": "noop", "mode": "auto"}],
    }
    async with app.router.lifespan_context(app):
        rt: JourneyRuntime = app.state.services.runtime
        rt.agents.register("noop", lambda _request: {"ok": True})
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://journeys") as http:
            thread = (await http.post("/threads", json={})).json()["thread_id"]
            start = {"journey_type": "retained", "spec": spec, "user_id": "ann"}
            done = await http.post(f"/threads/{thread}/runs/wait", json={"assistant_id": "structured", "input": start})
            assert done.status_code == 200 and done.json()["status"] == "completed", done.text
            before = await http.get(f"/threads/{thread}/state")
            assert before.status_code == 200 and before.json()["values"]["status"] == "completed"
            clock.advance(AFTER_SETTLING + timedelta(days=30))
            assert (await rt.retention.run()).deleted == 1
            gone = await http.get(f"/threads/{thread}/state")
            assert gone.status_code == 404, gone.text
            assert gone.json()["code"] == CheckpointsDeletedError("").code
            assert gone.json()["details"]["status"] == "completed"


async def test_a_failed_journey_pruned_is_retried_and_pruned_again_when_it_finishes(store_url: str) -> None:
    clock = VirtualClock()
    async with JourneyRuntime.open(store_url, clock=clock, retry=FAST) as rt:
        rt.agents.register("analyze_content", FailingAgent("analyze_content", permanent=True), replace=True)
        journey = await rt.structured.design_journey("content_migration", {"source": "legacy"})
        journey_id = journey["journey_id"]
        instance_id = (await rt.structured.execute_journey(journey_id, "ann", {}))["instance_id"]
        await rt.structured.advance_journey_step(journey_id, "ann", {})
        with pytest.raises(Exception, match="analyze_content"):
            await rt.structured.advance_journey_step(journey_id, "ann", {"depth": "full"})
        failed = await rt.structured.get_journey_status(journey_id, "ann")
        assert failed["status"] == "failed" and failed["failed_step"] == "analyze_content"

        clock.advance(AFTER_SETTLING)
        assert (await rt.retention.run()).pruned == 1
        assert await checkpoints(rt, instance_id) == 1
        assert await rt.structured.get_journey_status(journey_id, "ann") == failed

        rt.agents.register("analyze_content", RecordingAgent("analyze_content"), replace=True)
        retried = await rt.structured.retry_journey_step(journey_id, "ann")
        assert retried["completed_steps"] == ["upload_content", "analyze_content"]
        view = retried
        while view["status"] != "completed":
            view = await rt.structured.advance_journey_step(journey_id, "ann", {"ok": True})
        assert await checkpoints(rt, instance_id) > 1
        clock.advance(AFTER_SETTLING)
        assert (await rt.retention.run()).pruned == 1
        assert await checkpoints(rt, instance_id) == 1


async def test_a_pass_forgets_start_keys_and_message_ids_whose_window_passed(store_url: str) -> None:
    """Before, a start key or message id was dropped only when the same one came again: the tables grew
    with every keyed start or send. A pass forgets those past their window, and only those."""
    clock = VirtualClock()
    async with JourneyRuntime.open(store_url, clock=clock) as rt:
        journey = await rt.structured.design_journey("content_migration", {"source": "legacy"})
        for n in range(3):
            await rt.structured.execute_journey(
                journey["journey_id"], f"short-{n}", start_key=f"s{n}", start_key_window=60
            )
        await rt.structured.execute_journey(journey["journey_id"], "long", start_key="l", start_key_window="P2D")
        for n in range(2):
            await rt.processes.send_message("nobody.waits", f"k{n}", {"n": n}, message_id=f"m{n}")
        assert await rt.retention.run() == RetentionReport()  # every window still open

        clock.advance(timedelta(days=1, minutes=1))  # past the start keys' 60 s and the ids' 24 h, not 2 days
        assert (await rt.retention.run()).expired_keys == 5
        assert (await rt.retention.run()).expired_keys == 0
        again = await rt.structured.execute_journey(journey["journey_id"], "short-9", start_key="s0")
        assert again["user_id"] == "short-9"  # the key is free: a new start
        kept = await rt.structured.execute_journey(journey["journey_id"], "other", start_key="l")
        assert kept["user_id"] == "long"  # still in its window: answers the start it began


async def test_a_pass_forgets_buffered_messages_whose_time_to_live_passed(store_url: str) -> None:
    """Before, a buffered message stayed for ever, taken, expired or neither: ``process_messages`` grew with
    every send nobody waited for. A pass forgets those past their time-to-live, and a live one is still taken."""
    clock = VirtualClock()
    async with JourneyRuntime.open(store_url, clock=clock) as rt:
        await rt.processes.deploy(payment_spec())
        send = rt.processes.send_message
        await send("payment.received", "INV-1", {"amount": 1}, ttl=timedelta(minutes=10))  # taken below
        await send("payment.received", "INV-2", {"amount": 2}, ttl=timedelta(minutes=10))  # marked expired
        await send("payment.received", "INV-3", {"amount": 3}, ttl=timedelta(minutes=30))  # never marked
        await send("payment.received", "INV-4", {"amount": 4}, ttl=timedelta(hours=2))  # still live
        taken = await rt.processes.start("invoice", "cust-1", {"invoice_no": "INV-1"})
        assert taken["status"] == "completed"
        clock.advance(timedelta(minutes=15))
        await rt.processes.scheduler.run_due()  # marks INV-2 expired
        assert (await rt.retention.run()).expired_messages == 2  # INV-1 (taken) and INV-2
        clock.advance(timedelta(minutes=30))
        assert (await rt.retention.run()).expired_messages == 1  # INV-3, whether marked or not
        [live] = await rt.processes.services.messages.find(name="payment.received")
        assert (live.correlation_key, live.status) == ("INV-4", "buffered")
        view = await rt.processes.start("invoice", "cust-4", {"invoice_no": "INV-4"})
        assert view["status"] == "completed" and view["variables"]["amount"] == 4


def test_a_policy_is_checked() -> None:
    with pytest.raises(RetentionPolicyError, match="choose keep_latest"):
        RetentionPolicy("forever")  # type: ignore[arg-type]
    with pytest.raises(RetentionPolicyError, match="needs days > 0"):
        RetentionPolicy("delete_after")
    with pytest.raises(RetentionPolicyError, match="negative"):
        RetentionPolicy("keep_all_for", -1)
    # Accepted, these made every pass fail (a period no date arithmetic holds): refused with the bound instead.
    for days in (float("nan"), float("inf"), 1e300):
        with pytest.raises(RetentionPolicyError, match="at most 36525 days"):
            RetentionPolicy("delete_after", days)
    with pytest.raises(RetentionPolicyError, match="at most 36525 days"):
        RetentionPolicy(settle=float("nan"))


def test_the_cli_refuses_a_retention_period_or_schedule_it_could_never_apply() -> None:
    """``--retention-days nan`` made every pass fail; ``--retention-cron '*/0 * * * *'`` started a worker whose
    periodic jobs (the timers' every-second job with them) died with a traceback."""
    refused = CliRunner().invoke(cli, ["retention", "--retention", "delete_after", "--retention-days", "nan"])
    assert refused.exit_code == 2 and "at most 36525 days" in refused.output
    for schedule, problem in [("*/0 * * * *", "not a cron expression"), ("0 0 30 2 *", "never falls due")]:
        for option in ("--retention-cron", "--thread-ttl-cron"):
            nowhere = ["worker", "--database-url", "postgresql://x@nowhere/db"]
            worker = CliRunner().invoke(cli, [*nowhere, option, schedule])
            assert worker.exit_code == 2 and problem in worker.output and option in worker.output, worker.output
    strategy = CliRunner().invoke(cli, ["serve", "--thread-ttl", "5", "--thread-ttl-strategy", "keep_all"])
    assert strategy.exit_code == 2 and "'keep_all' is not delete or" in strategy.output, strategy.output


async def test_the_embedded_server_applies_retention_periodically(store_url: str) -> None:
    clock = VirtualClock()
    async with JourneyRuntime.open(store_url, clock=clock) as rt:
        _, done = await completed_structured(rt, "ann")
        executor = RunExecutor(rt, RunStore(rt.store.backend, rt.store.clock, rt.store.sealer))
        clock.advance(AFTER_SETTLING)
        async with EmbeddedQueue.open(executor, timers=False, retention_every=0.05):
            for _ in range(200):
                if await checkpoints(rt, done) == 1:
                    break
                await asyncio.sleep(0.05)
        assert await checkpoints(rt, done) == 1


def test_the_cli_applies_retention_once(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path}/journeys.db"

    async def finish() -> str:
        clock = VirtualClock()  # the CLI runs on the system clock: this journey finished long ago
        async with JourneyRuntime.open(url, clock=clock) as rt:
            return (await completed_structured(rt, "ann"))[1]

    done = asyncio.run(finish())
    answer = CliRunner().invoke(cli, ["retention", "--database-url", url])
    assert answer.exit_code == 0, answer.output
    assert json.loads(answer.output) == {
        "pruned": 1,
        "deleted": 0,
        "busy": False,
        "compacted": 1,
        "expired_keys": 0,
        "expired_messages": 0,
    }

    async def count() -> int:
        async with JourneyRuntime.open(url) as rt:
            return await checkpoints(rt, done)

    assert asyncio.run(count()) == 1
    refused = CliRunner().invoke(cli, ["retention", "--database-url", url, "--retention", "delete_after"])
    assert refused.exit_code != 0 and "needs days > 0" in refused.output


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_the_cli_sweeps_expired_threads_once(kind: str, request: pytest.FixtureRequest) -> None:
    """`journeys retention` had no one-off thread TTL sweep: a thread whose ttl had passed stayed until a server
    or worker swept it. `--threads` runs that same sweep once, after the retention pass, and says how many."""
    url: str = request.getfixturevalue(f"{kind}_url")

    async def made() -> list[str]:
        async with JourneyRuntime.open(url, clock=VirtualClock()) as rt:  # the CLI's system clock: long ago
            runs = RunStore(rt.store.backend, rt.store.clock, rt.store.sealer)
            ttls = [ThreadTTL(1), ThreadTTL(60 * 24 * 365 * 100), None]  # passed, a century, none
            return [(await runs.create_thread(None, {}, None, ttl=ttl)).thread_id for ttl in ttls]

    async def there(thread_ids: list[str]) -> list[bool]:
        async with JourneyRuntime.open(url) as rt:
            runs = RunStore(rt.store.backend, rt.store.clock, rt.store.sealer)
            return [await runs.get_thread(t) is not None for t in thread_ids]

    made_ids = asyncio.run(made())
    plain = run_journeys(["retention", "--database-url", url])
    assert plain.returncode == 0, plain.stderr
    assert "threads_expired" not in json.loads(plain.stdout)  # no sweep unless asked
    assert asyncio.run(there(made_ids)) == [True, True, True]
    swept = run_journeys(["retention", "--database-url", url, "--threads"])
    assert swept.returncode == 0, swept.stderr
    assert json.loads(swept.stdout)["threads_expired"] == 1, swept.stdout
    assert asyncio.run(there(made_ids)) == [False, True, True]


def test_a_distributed_worker_runs_the_periodic_retention_job(postgres_url: str) -> None:
    """And its thread TTL sweep, on a schedule of its own (``--thread-ttl-cron``: it rode the retention job)."""

    async def finish() -> tuple[str, str]:
        async with JourneyRuntime.open(postgres_url, clock=VirtualClock()) as rt:  # finished long ago
            runs = RunStore(rt.store.backend, rt.store.clock, rt.store.sealer)
            expired = await runs.create_thread(None, {}, None, ttl=ThreadTTL(1))  # a minute, long ago
            return (await completed_structured(rt, "ann"))[1], expired.thread_id

    async def count(thread_id: str) -> int:
        async with JourneyRuntime.open(postgres_url) as rt:
            return await checkpoints(rt, thread_id)

    def threads(thread_id: str) -> int:
        with psycopg.connect(postgres_url) as conn:
            found = conn.execute("SELECT count(*) FROM server_threads WHERE thread_id = %s", (thread_id,)).fetchone()
        return int(found[0]) if found else 0

    done, expired = asyncio.run(finish())
    assert asyncio.run(count(done)) > 1 and threads(expired) == 1
    # Every second, its seconds named: a sixth field of "*" is refused (a Quartz schedule read seconds-last).
    every_second = "* * * * * */1"
    worker = start_worker(
        postgres_url, "--retention-cron", every_second, "--thread-ttl-cron", every_second, "--concurrency", "2"
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (asyncio.run(count(done)) != 1 or threads(expired)):
            time.sleep(0.5)
    finally:
        stop_worker(worker)
    assert asyncio.run(count(done)) == 1
    assert threads(expired) == 0
    with psycopg.connect(postgres_url) as conn:
        (mark,) = conn.execute("SELECT upto FROM journey_retention WHERE mark = 'pruned'").fetchone() or (None,)
    assert mark is not None

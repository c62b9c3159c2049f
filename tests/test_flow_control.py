"""Instance-level flow control on the one instance lifecycle (issue 12): idempotent starts and concurrency
keys, on every backend, and across processes where the guarantee is cross-process."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from agents import PermanentAgentError
from agents.errors import AgentCallFailedError
from checkpoints import VirtualClock
from checkpoints.ownership import Owner, acting_as
from graphs import JourneyFinishedError, JourneyRuntime, SpecError
from graphs.errors import ConcurrencyLimitError, JourneyQueuedError, StartKeyConflictError
from nodes.errors import ConcurrencyKeyError, FlowSettingError
from server.app import create_app
from server.settings import Settings
from tests.process_support import linear, user_task

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
        bad = (
            ("k", "soon"),
            ("k", -5),
            ("k", "PT0S"),
            ("k", 1e300),
            ("k", -6e16),  # overflowed timedelta() before it was refused (found by the server fuzz)
            ("k", "P99999999999D"),
            ("", None),
            ("x" * 201, None),
        )
        for key, window in bad:
            with pytest.raises(FlowSettingError):
                await rt.saga.execute_saga_journey(journey_id, "ana", {}, start_key=key, start_key_window=window)
        assert await instance_count(rt, "saga") == {}


# --- concurrency keys -------------------------------------------------------------------------------


async def test_above_its_limit_a_rejecting_key_refuses_the_start_and_registers_nothing(store_url: str) -> None:
    async with JourneyRuntime.open(store_url) as rt:
        journey_id = await saga_design(rt, limited("reject"))
        first = await rt.saga.execute_saga_journey(journey_id, "u1", {"tenant": "acme"})
        await rt.saga.execute_saga_journey(journey_id, "u2", {"tenant": "acme"})
        with pytest.raises(ConcurrencyLimitError) as refused:
            await rt.saga.execute_saga_journey(journey_id, "u3", {"tenant": "acme"})
        assert refused.value.details == {"concurrency_key": "saga.review/$.tenant=acme", "limit": 2}
        await rt.saga.execute_saga_journey(journey_id, "u4", {"tenant": "globex"})  # another key, its own slots
        assert await instance_count(rt, "saga") == {"in_progress": 3}

        for step in ("draft", "approve"):  # one finishes: its slot frees
            await rt.saga.advance_saga_step(first["saga_id"], journey_id, "u1", {"step": step})
        third = await rt.saga.execute_saga_journey(journey_id, "u3", {"tenant": "acme"})
        assert third["status"] == "in_progress" and third["current_step"] == "draft"


async def test_key_values_alike_in_their_first_200_characters_take_slots_of_their_own(store_url: str) -> None:
    """A slot key longer than its column's 200 characters was cut there, so two tenants whose ids differ only
    past it shared one slot: the second's start was refused while no journey of its own ran. A long key ends
    with a digest of the whole key instead, so distinct values never share slots."""
    shared_start = "tenant-" + "x" * 200
    async with JourneyRuntime.open(store_url) as rt:
        journey_id = await saga_design(rt, limited("reject", limit=1))
        await rt.saga.execute_saga_journey(journey_id, "u1", {"tenant": shared_start + "-a"})
        started = await rt.saga.execute_saga_journey(journey_id, "u2", {"tenant": shared_start + "-b"})
        assert started["status"] == "in_progress"
        with pytest.raises(ConcurrencyLimitError) as refused:  # the same long value still counts its own runs
            await rt.saga.execute_saga_journey(journey_id, "u3", {"tenant": shared_start + "-a"})
        assert len(refused.value.details["concurrency_key"]) <= 200


async def test_a_start_input_without_the_key_is_refused(store_url: str) -> None:
    async with JourneyRuntime.open(store_url) as rt:
        journey_id = await saga_design(rt, limited("reject"))
        for context in ({}, {"tenant": ""}, {"tenant": {"id": 1}}):
            with pytest.raises(ConcurrencyKeyError):
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


def run_children(url: str, keyed: str, limited: str, count: int, go: Path) -> list[dict[str, Any]]:
    """``count`` processes start sagas of ``keyed`` and ``limited`` at the same moment; their answers."""
    children = [
        subprocess.Popen(
            [sys.executable, str(CHILD), url, keyed, limited, str(n), str(go)],
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


async def test_processes_starting_at_once_honour_start_keys_and_limits(durable_url: str, tmp_path: Path) -> None:
    """Three processes start, at the same moment, a saga with one start key (one saga results) and a saga
    limited to one per tenant for one tenant (one starts, two are refused)."""
    async with JourneyRuntime.open(durable_url) as rt:
        keyed = await saga_design(rt, TWO_STEPS)
        limited_id = await saga_design(rt, limited("reject", limit=1))
    answers = await asyncio.to_thread(run_children, durable_url, keyed, limited_id, 3, tmp_path / "go")
    assert len({a["keyed"] for a in answers}) == 1, answers
    assert sorted(a.get("limited_error", "started") for a in answers) == [
        "ConcurrencyLimitError",
        "ConcurrencyLimitError",
        "started",
    ], answers
    async with JourneyRuntime.open(durable_url) as rt:
        assert await instance_count(rt, "saga") == {"in_progress": 2}


async def test_a_limit_counts_its_own_journey_types_runs_unless_it_is_shared(store_url: str) -> None:
    """Two journey types each limited per ``$.tenant`` counted each other's runs: acme's billing journey (limit 1,
    none running) was refused because an onboarding journey of acme ran ("1 journey(s) with $.tenant=acme are
    running already"). A limit counts its journey type's runs (a saga's, a structured journey's and a process's
    of one name are three types), as a DBOS queue or an Inngest function's limit does; ``"scope": "shared"``
    counts every shared limit on the key path, a tenant's cap across types."""

    def spec(journey_type: str, limit: int, scope: str = "type") -> dict[str, Any]:
        concurrency = {"key": "$.tenant", "limit": limit, "on_limit": "reject", "scope": scope}
        return {**TWO_STEPS, "journey_type": journey_type, "concurrency": concurrency}

    async with JourneyRuntime.open(store_url) as rt:
        billing = (await rt.structured.design_journey("billing", spec=spec("billing", 1)))["journey_id"]
        onboarding = (await rt.structured.design_journey("onboarding", spec=spec("onboarding", 5)))["journey_id"]
        await rt.structured.execute_journey(onboarding, "u1", {"tenant": "acme"})
        assert (await rt.structured.execute_journey(billing, "u2", {"tenant": "acme"}))["status"] == "in_progress"
        saga = await saga_design(rt, spec("billing", 1))  # a saga of the same name is a type of its own
        assert (await rt.saga.execute_saga_journey(saga, "u3", {"tenant": "acme"}))["status"] == "in_progress"
        with pytest.raises(ConcurrencyLimitError) as refused:
            await rt.structured.execute_journey(billing, "u4", {"tenant": "acme"})
        assert refused.value.details == {"concurrency_key": "structured.billing/$.tenant=acme", "limit": 1}

        first = (await rt.structured.design_journey("a", spec=spec("a", 1, "shared")))["journey_id"]
        second = (await rt.structured.design_journey("b", spec=spec("b", 1, "shared")))["journey_id"]
        await rt.structured.execute_journey(first, "u5", {"tenant": "acme"})
        with pytest.raises(ConcurrencyLimitError) as refused:
            await rt.structured.execute_journey(second, "u6", {"tenant": "acme"})
        assert refused.value.details == {"concurrency_key": "$.tenant=acme", "limit": 1}


async def test_a_tenants_failed_journey_retried_by_another_tenant_or_the_system_takes_its_own_tenants_slot(
    store_url: str,
) -> None:
    """A retry takes a slot of the retried journey's key, within its owner's tenant: the slot key read the tenant of
    the caller retrying it, so an operator of another tenant (or the system, outside any caller) looked for a slot
    under its own prefix, found one free, and ran acme's journey beside the one acme's limit of 1 allowed."""

    def down(request: Any) -> dict[str, Any]:
        raise PermanentAgentError("the service is down")

    async with JourneyRuntime.open(store_url) as rt:
        rt.agents.register("flaky", down)
        spec = {**limited("queue", limit=1), "steps": [{"step_id": "draft", "agent": "flaky"}, {"step_id": "approve"}]}
        journey_id = (await rt.structured.design_journey("review", spec=spec))["journey_id"]
        with acting_as(Owner("ana", "acme")):
            anas = (await rt.structured.execute_journey(journey_id, "ana", {"tenant": "acme"}))["instance_id"]
            with pytest.raises(AgentCallFailedError):
                await rt.structured.advance_journey_step(journey_id, "ana", {})
        with acting_as(Owner("ben", "acme")):  # ana's slot is free
            assert (await rt.structured.execute_journey(journey_id, "ben", {"tenant": "acme"}))[
                "status"
            ] == "in_progress"
        # By its id: by design and user, another tenant's caller names its own tenant's "ana" (36a9e6f).
        for retrier in (Owner("root", "globex"), None):
            with acting_as(retrier), pytest.raises(ConcurrencyLimitError) as refused:
                await rt.retry(anas, by="ops")
            assert refused.value.details["concurrency_key"] == "acme:structured.review/$.tenant=acme"
        assert await instance_count(rt, "structured") == {"failed": 1, "in_progress": 1}


async def test_a_failed_journey_retried_takes_a_slot_again_or_is_refused_when_its_key_is_full(store_url: str) -> None:
    """A failed journey frees its slot (a failure must not hold a tenant's queue), so a retry of it starts it again
    and must take a slot as a start does: the retry of a tenant's failed journey while another runs under a limit
    of 1 made two run at once ({'in_progress': 2}). It is refused while every slot is held (a retry is an
    operator's call, not queued), and once it runs it holds its slot against new starts."""
    agent_down = {"down": True}

    def flaky(request: Any) -> dict[str, Any]:
        if agent_down["down"]:
            raise PermanentAgentError("the service is down")
        return {"drafted": True}

    async with JourneyRuntime.open(store_url) as rt:
        rt.agents.register("flaky", flaky)
        spec = {**limited("queue", limit=1), "steps": [{"step_id": "draft", "agent": "flaky"}, {"step_id": "approve"}]}
        journey_id = (await rt.structured.design_journey("review", spec=spec))["journey_id"]
        await rt.structured.execute_journey(journey_id, "ana", {"tenant": "acme"})
        with pytest.raises(AgentCallFailedError):
            await rt.structured.advance_journey_step(journey_id, "ana", {})
        ben = await rt.structured.execute_journey(journey_id, "ben", {"tenant": "acme"})  # ana's slot is free
        assert ben["status"] == "in_progress"

        agent_down["down"] = False
        with pytest.raises(ConcurrencyLimitError) as refused:
            await rt.structured.retry_journey_step(journey_id, "ana", by="ops")
        assert refused.value.details == {"concurrency_key": "structured.review/$.tenant=acme", "limit": 1}
        assert (await rt.structured.get_journey_status(journey_id, "ana"))["status"] == "failed"
        assert await instance_count(rt, "structured") == {"failed": 1, "in_progress": 1}

        for step in ("draft", "approve"):
            await rt.structured.advance_journey_step(journey_id, "ben", {"step": step})
        retried = await rt.structured.retry_journey_step(journey_id, "ana", by="ops")
        assert (retried["status"], retried["current_step"]) == ("in_progress", "approve")
        queued = await rt.structured.execute_journey(journey_id, "cy", {"tenant": "acme"})
        assert queued["status"] == "queued"  # ana holds the one slot again

        agent_down["down"] = True  # the same for a process instance retried
        process = linear(
            "billing",
            {"type": "service_task", "id": "charge", "agent": "flaky"},
            user_task("confirm"),
            concurrency={"key": "$.account", "limit": 1, "on_limit": "reject"},
        )
        await rt.processes.deploy(process)
        failed = await rt.processes.start("billing", "b-1", {"account": "acme"})
        assert failed["status"] == "failed"
        agent_down["down"] = False
        running = await rt.processes.start("billing", "b-2", {"account": "acme"})
        assert running["status"] == "in_progress"
        with pytest.raises(ConcurrencyLimitError):
            await rt.processes.retry(failed["instance_id"], by="ops")
        assert (await rt.processes.status(failed["instance_id"]))["status"] == "failed"


# --- processes, and over HTTP -----------------------------------------------------------------------

APPROVAL: dict[str, Any] = {
    "name": "approval",
    "elements": [
        {"type": "start", "id": "start"},
        {"type": "user_task", "id": "approve", "title": "Approve", "candidate_groups": ["ops"]},
        {"type": "end", "id": "end"},
    ],
    "flows": ["start -> approve", "approve -> end"],
    "concurrency": {"key": "$.tenant", "limit": 1},
}


async def test_processes_take_start_keys_and_queue_above_their_limit(store_url: str) -> None:
    async with JourneyRuntime.open(store_url) as rt:
        await rt.processes.deploy(APPROVAL)
        first = await rt.processes.start("approval", "b-1", {"tenant": "acme"}, start_key="req-1")
        again = await rt.processes.start("approval", "b-1", {"tenant": "acme"}, start_key="req-1")
        assert again["instance_id"] == first["instance_id"] and again["status"] == "in_progress"
        queued = await rt.processes.start("approval", "b-2", {"tenant": "acme"})
        assert (queued["status"], queued["waiting"]) == ("queued", [])

        [task] = await rt.processes.inbox.list_tasks(group="ops")
        await rt.processes.inbox.complete(task["task_id"], user="ana", groups=["ops"], payload={})
        report = await rt.processes.scheduler.run_due()
        assert report.dequeued == 1
        status = await rt.processes.status(queued["instance_id"])
        assert status["status"] == "in_progress" and [w["element"] for w in status["waiting"]] == ["approve"]


async def test_a_start_key_of_another_kind_of_journey_is_refused(store_url: str) -> None:
    """A key that began a saga, given to a process start or a session's within its window, is refused with a
    typed conflict that names the journey, not answered with a view the saga cannot give (404); nothing is
    started. The process's own repeat still answers its instance."""
    async with JourneyRuntime.open(store_url) as rt:
        saga = await rt.saga.execute_saga_journey(await saga_design(rt, TWO_STEPS), "ana", {}, start_key="order-7")
        await rt.processes.deploy(APPROVAL)
        with pytest.raises(StartKeyConflictError) as refused:
            await rt.processes.start("approval", "b-1", {"tenant": "acme"}, start_key="order-7")
        assert refused.value.details == {"start_key": "order-7", "instance_id": saga["saga_id"]}
        with pytest.raises(StartKeyConflictError):
            await rt.mvp.start_mvp_journey("ana", start_key="order-7")
        assert await instance_count(rt, "process") == {} and await instance_count(rt, "session") == {}
        first = await rt.processes.start("approval", "b-1", {"tenant": "acme"}, start_key="order-8")
        assert (await rt.processes.start("approval", "b-1", {"tenant": "acme"}, start_key="order-8")) == first


async def test_the_http_start_routes_take_a_start_key(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(database_url="memory://", auth=False, run_timers=False)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://journeys") as http:
            design = await http.post("/journeys/sagas/designs", json={"journey_type": "review", "spec": TWO_STEPS})
            start = f"/journeys/sagas/designs/{design.json()['journey_id']}/executions"
            body = {"user_id": "ana", "start_key": "order-1", "start_key_window": 600}
            first, again = [(await http.post(start, json=body)).json() for _ in range(2)]
            assert first["saga_id"] == again["saga_id"]
            bad = await http.post(start, json={**body, "start_key_window": 0.5})  # seconds, at least one
            assert bad.status_code == 422

            assert (await http.post("/processes", json=APPROVAL)).status_code == 200
            process_body = {"business_key": "b-1", "variables": {"tenant": "acme"}, "start_key": "req-1"}
            one, two = [(await http.post("/processes/approval/instances", json=process_body)) for _ in "12"]
            assert one.json()["instance_id"] == two.json()["instance_id"]
            queued = await http.post("/processes/approval/instances", json={**process_body, "start_key": None})
            assert queued.status_code == 200 and queued.json()["status"] == "queued"

            mvp = [(await http.post("/journeys/mvp", json={"user_id": "ana", "start_key": "m-1"})).json() for _ in "12"]
            assert mvp[0]["session"]["session_id"] == mvp[1]["session"]["session_id"]
            unknown = await http.post("/journeys/mvp", json={"user_id": "ana", "start_keys": "m-1"})
            assert unknown.status_code == 422  # fields a start body does not declare are still refused


# --- whole-run deadlines ----------------------------------------------------------------------------

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def with_deadline(after: str | float, on_expiry: str = "fail") -> dict[str, Any]:
    return {**TWO_STEPS, "deadline": {"after": after, "on_expiry": on_expiry}}


async def test_a_saga_past_its_deadline_compensates_even_across_a_restart(durable_url: str) -> None:
    clock = VirtualClock(T0)
    async with JourneyRuntime.open(durable_url, clock=clock) as rt:
        rt.agents.register("undo_draft", lambda request: {"undone": True})
        design = await rt.saga.design_saga_journey(
            "review", spec=with_deadline("P2D", "compensate"), compensation_handlers={"draft": "undo_draft"}
        )
        journey_id = design["journey_id"]
        saga = await rt.saga.execute_saga_journey(journey_id, "ana", {})
        await rt.saga.advance_saga_step(saga["saga_id"], journey_id, "ana", {"text": "v1"})

    clock.advance(timedelta(days=2) - timedelta(seconds=1))
    async with JourneyRuntime.open(durable_url, clock=clock) as rt:  # a new process, after a restart
        rt.agents.register("undo_draft", lambda request: {"undone": True})
        assert (await rt.processes.scheduler.run_due()).fired == 0  # never early
        clock.advance(timedelta(seconds=1))
        report = await rt.processes.scheduler.run_due()
        assert (report.fired, report.lateness) == (1, [0.0])
        status = await rt.saga.get_saga_status(saga["saga_id"])
        assert (status["status"], status["compensated_steps"]) == ("compensated", ["draft"])
        assert status["failure"]["error_type"] == "DeadlineExceededError"
        types = [e.type for e in await rt.history(saga["saga_id"])]
        assert "journey.deadline_passed" in types and types[-1] == "saga.compensated", types


async def test_a_journey_past_its_deadline_fails_and_moves_no_further(store_url: str) -> None:
    clock = VirtualClock(T0)
    async with JourneyRuntime.open(store_url, clock=clock) as rt:
        journey = await rt.structured.design_journey("review", spec=with_deadline(3600))
        journey_id = journey["journey_id"]
        await rt.structured.execute_journey(journey_id, "ana", {})
        done = await rt.structured.design_journey("done_in_time", spec=with_deadline("PT1H"))
        await rt.structured.execute_journey(done["journey_id"], "ben", {})
        for step in ("draft", "approve"):
            await rt.structured.advance_journey_step(done["journey_id"], "ben", {"step": step})

        clock.advance(timedelta(hours=1))
        report = await rt.processes.scheduler.run_due()
        assert (report.fired, report.dropped) == (1, 1)  # the journey that ended in time is left as it ended
        status = await rt.structured.get_journey_status(journey_id, "ana")
        assert (status["status"], status["current_step"]) == ("failed", None)
        with pytest.raises(JourneyFinishedError):
            await rt.structured.advance_journey_step(journey_id, "ana", {"text": "late"})
        assert (await rt.structured.get_journey_status(done["journey_id"], "ben"))["status"] == "completed"
        assert await rt.store.index.count_by_status(pattern="structured") == {"failed": 1, "completed": 1}


async def test_a_process_past_its_deadline_fails_and_its_tasks_are_cancelled(store_url: str) -> None:
    clock = VirtualClock(T0)
    async with JourneyRuntime.open(store_url, clock=clock) as rt:
        spec = {**APPROVAL, "name": "timed", "deadline": {"after": "PT4H"}}
        del spec["concurrency"]
        await rt.processes.deploy(spec)
        started = await rt.processes.start("timed", "b-1")
        clock.advance(timedelta(hours=4))
        assert (await rt.processes.scheduler.run_due()).fired == 1
        status = await rt.processes.status(started["instance_id"])
        assert (status["status"], status["waiting"]) == ("failed", [])
        assert await rt.processes.inbox.list_tasks(group="ops") == []


async def test_a_deadline_in_months_passes_on_the_same_day_of_the_month_as_a_timer_does(store_url: str) -> None:
    """``P1M`` from 15 February passed on 18 March (31 days: a month counted from January, as the design's check
    measures it), three days after a "P1M" timer started beside it; it passes on 15 March now."""
    clock = VirtualClock(datetime(2026, 2, 15, 12, tzinfo=UTC))
    async with JourneyRuntime.open(store_url, clock=clock) as rt:
        spec = {**APPROVAL, "name": "monthly", "deadline": {"after": "P1M"}}
        del spec["concurrency"]
        await rt.processes.deploy(spec)
        started = await rt.processes.start("monthly", "b-1")
        clock.set(datetime(2026, 3, 15, 12, tzinfo=UTC) - timedelta(microseconds=1))
        assert (await rt.processes.scheduler.run_due()).fired == 0  # never early
        clock.advance(timedelta(microseconds=1))
        assert (await rt.processes.scheduler.run_due()).fired == 1
        assert (await rt.processes.status(started["instance_id"]))["status"] == "failed"


async def test_a_deadline_that_cannot_be_read_is_refused_at_design(store_url: str) -> None:
    async with JourneyRuntime.open(store_url) as rt:
        for after in ("P2X", 0, "PT0S", 1e300, "P99999999999D"):
            with pytest.raises(SpecError):
                await rt.structured.design_journey("review", spec=with_deadline(after))


async def test_a_structured_start_repeated_with_its_key_answers_the_journey(store_url: str) -> None:
    """A structured run's id is its (journey, user): the repeated start with the same key answers it
    rather than refusing it as a duplicate."""
    async with JourneyRuntime.open(store_url) as rt:
        journey = await rt.structured.design_journey("review", spec=TWO_STEPS)
        first = await rt.structured.execute_journey(journey["journey_id"], "ana", {}, start_key="k-1")
        await rt.structured.advance_journey_step(journey["journey_id"], "ana", {"text": "v1"})
        again = await rt.structured.execute_journey(journey["journey_id"], "ana", {}, start_key="k-1")
        assert again["instance_id"] == first["instance_id"] and again["completed_steps"] == ["draft"]


async def test_a_session_start_repeated_with_its_key_answers_the_session(store_url: str) -> None:
    async with JourneyRuntime.open(store_url) as rt:
        first = await rt.mvp.start_mvp_journey("ana", start_key="onboarding-ana")
        session_id = first["session"]["session_id"]
        await rt.mvp.navigate_to_pillar(session_id=session_id, pillar_id="insights")
        again = await rt.mvp.start_mvp_journey("ana", start_key="onboarding-ana")
        assert again["session"]["session_id"] == session_id
        assert again["session"]["current_area"] == "insights"  # the session as it stands now
        other = await rt.mvp.start_mvp_journey("ana")
        assert other["session"]["session_id"] != session_id

"""The journey endpoints' typed responses: every answer is exactly what the orchestrator call behind the
route returned (no key lost, added or changed by the response model), in waiting, finished and failed
states of every pattern; and the OpenAPI document names a schema with properties for each of them."""

from __future__ import annotations

import copy
import operator
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi.encoders import jsonable_encoder

from agents import FailingAgent, RetrySettings
from checkpoints.clock import VirtualClock
from checkpoints.events import NewEvent
from graphs.lifecycle.catalog import READY_TO_START
from graphs.runtime import JourneyRuntime
from server.app import create_app
from server.settings import Settings

FAST = RetrySettings(max_attempts=2, initial_delay=0.001, max_delay=0.002, jitter=0.001)
T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
# The orchestrator calls behind the routes (runtime attribute → methods), spied on to compare answers.
SPIED = {
    "structured": (
        "design_journey",
        "execute_journey",
        # The routes naming a journey by design and user act on the instance of that user in the caller's tenant.
        "advance_run",
        "retry_run",
        "run_status",  # and any journey's status of a structured run (a fork's id is its own)
    ),
    "saga": ("design_saga_journey", "execute_saga_journey", "advance_saga_step", "retry_saga_step", "get_saga_status"),
    "session": ("start_session", "navigate_to_area", "update_area_state", "close_session", "get_session_progress"),
    "mvp": (
        "start_mvp_journey",
        "navigate_to_pillar",
        "update_pillar_progress",
        "get_recommended_next_pillar",
        "check_mvp_completion",
        "get_mvp_progress",
    ),
    "mvp.sessions": ("get_session_progress",),
    "lifecycle": ("start_journey", "transition", "record_metrics", "get_journey_state"),
    "processes": (
        "deploy",
        "start",
        "status",
        "send_message",
        "versions",
        "rollout",
        "set_rollout",
        "ab_test",
        "migrate",
    ),
    "processes.inbox": ("list_tasks", "get_task", "claim", "complete"),
}


@dataclass
class Served:
    http: httpx.AsyncClient
    runtime: JourneyRuntime
    clock: VirtualClock
    returned: dict[str, Any] = field(default_factory=dict)  # "<attribute>.<method>" → what it last returned

    async def same(self, method: str, path: str, returned_by: str, body: Any = None, **params: Any) -> Any:
        """Call the route; its JSON must be what ``returned_by`` returned: no key lost, added or changed."""
        self.returned.clear()
        response = await self.http.request(method, path, json=body, params=params or None)
        assert response.status_code == 200, response.text
        expected = jsonable_encoder(self.returned[returned_by])
        assert response.json() == expected, path
        assert list(response.json()) == list(expected), path  # the model keeps the view's key order
        return response.json()

    async def status(self, instance_id: str, returned_by: str) -> Any:
        """Any journey's status: the index row's fields, then the pattern's own view."""
        self.returned.clear()
        response = await self.http.get(f"/journeys/{instance_id}/status")
        assert response.status_code == 200, response.text
        instance = await self.runtime.store.index.get_instance(instance_id)
        assert instance is not None
        index = {"pattern": instance.pattern, "user_id": instance.user_id, "index_status": instance.status}
        expected = jsonable_encoder({"instance_id": instance_id, **index, **self.returned[returned_by]})
        assert response.json() == expected
        assert list(response.json()) == list(expected)
        return response.json()


def recording(method: Callable[..., Awaitable[Any]], key: str, returned: dict[str, Any]) -> Callable[..., Any]:
    async def call(*args: Any, **kwargs: Any) -> Any:
        result = await method(*args, **kwargs)
        returned[key] = copy.deepcopy(result)
        return result

    return call


@asynccontextmanager
async def serving(url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Served]:
    clock = VirtualClock(T0)
    settings = Settings(database_url=url, auth=False, run_timers=False)  # timers fire when the test says
    app = create_app(settings, clock=clock, runtime_options={"retry": FAST})
    async with app.router.lifespan_context(app):
        runtime: JourneyRuntime = app.state.services.runtime
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://journeys") as http:
            served = Served(http, runtime, clock)
            for owner, names in SPIED.items():
                target = operator.attrgetter(owner)(runtime)
                for name in names:
                    monkeypatch.setattr(
                        target, name, recording(getattr(target, name), f"{owner}.{name}", served.returned)
                    )
            yield served


@pytest.fixture
async def served(store_url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Served]:
    async with serving(store_url, monkeypatch) as server:
        yield server


@pytest.fixture
async def served_in_memory(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Served]:
    async with serving("memory://", monkeypatch) as server:
        yield server


async def test_structured_and_saga_answers_are_their_orchestrators_views(served: Served) -> None:
    s, agents = served, served.runtime.agents
    design = await s.same(
        "POST", "/journeys/structured/designs", "structured.design_journey", {"journey_type": "content_migration"}
    )
    journey = f"/journeys/structured/{design['journey_id']}"
    started = await s.same("POST", f"{journey}/executions", "structured.execute_journey", {"user_id": "ana"})
    assert started["awaiting_input"] and "failed_step" not in started
    advanced = await s.same("POST", f"{journey}/users/ana/advance", "structured.advance_run", {"step_result": {"n": 1}})
    assert advanced["completed_step"] == "upload_content"
    await s.same("GET", f"{journey}/users/ana", "structured.run_status")

    agents.register("analyze_content", FailingAgent("analyze_content", permanent=True), replace=True)
    assert (await s.http.post(f"{journey}/users/ana/advance", json={})).status_code == 424
    failed = await s.same("GET", f"{journey}/users/ana", "structured.run_status")
    assert (failed["status"], failed["failed_step"], failed["current_step"]) == ("failed", "analyze_content", None)
    assert (await s.status(started["instance_id"], "structured.run_status"))["index_status"] == "failed"
    agents.register("analyze_content", lambda _request: {"ok": True}, replace=True)
    retried = await s.same("POST", f"{journey}/users/ana/retry", "structured.retry_run")
    assert retried["current_step"] == "transform_data" and "failed_step" not in retried
    # A step its user reports failed stands failed (not completed), and its retry asks for its result again.
    report = {"step_result": {"status": "failed", "error": "disk full"}}
    reported = await s.same("POST", f"{journey}/users/ana/advance", "structured.advance_run", report)
    assert (reported["status"], reported["failed_step"], reported["completed_step"]) == (
        "failed",
        "transform_data",
        None,
    )
    asked = await s.same("POST", f"{journey}/users/ana/retry", "structured.retry_run")
    assert (asked["current_step"], asked["awaiting_input"]) == ("transform_data", True)
    for _ in range(2):
        done = await s.same("POST", f"{journey}/users/ana/advance", "structured.advance_run", {})
    assert done["status"] == "completed"
    assert (await s.status(started["instance_id"], "structured.run_status"))["current_step"] is None

    handlers = {"upload_content": "delete_uploaded_content", "analyze_content": "revert_analysis"}
    body = {"journey_type": "enterprise_migration", "compensation_handlers": handlers}
    saga = await s.same("POST", "/journeys/sagas/designs", "saga.design_saga_journey", body)
    start, who = f"/journeys/sagas/designs/{saga['journey_id']}/executions", {"user_id": "ana"}
    compensated = await s.same("POST", start, "saga.execute_saga_journey", who)
    move = {"journey_id": saga["journey_id"], "user_id": "ana", "step_result": {}}
    await s.same("POST", f"/journeys/sagas/{compensated['saga_id']}/advance", "saga.advance_saga_step", move)
    agents.register("analyze_content", FailingAgent("analyze_content", permanent=True), replace=True)
    after = await s.same("POST", f"/journeys/sagas/{compensated['saga_id']}/advance", "saga.advance_saga_step", move)
    # analyze_content's agent was called before it failed: it is undone too, first.
    assert (after["status"], after["compensated_steps"]) == ("compensated", ["analyze_content", "upload_content"])
    assert after["completed_step"] is None  # analyze_content failed
    await s.same("GET", f"/journeys/sagas/{compensated['saga_id']}", "saga.get_saga_status")
    await s.status(compensated["saga_id"], "saga.get_saga_status")

    broken = await s.same("POST", start, "saga.execute_saga_journey", who)
    agents.register("delete_uploaded_content", FailingAgent("delete_uploaded_content", permanent=True), replace=True)
    await s.same("POST", f"/journeys/sagas/{broken['saga_id']}/advance", "saga.advance_saga_step", move)
    failed_undo = await s.same("POST", f"/journeys/sagas/{broken['saga_id']}/advance", "saga.advance_saga_step", move)
    assert (
        failed_undo["status"] == "failed"
        and failed_undo["compensation_failure"]["handler"] == "delete_uploaded_content"
    )
    assert (await s.status(broken["saga_id"], "saga.get_saga_status"))["index_status"] == "failed"
    # Once its handler works, the compensation that failed for good is retried where it stopped.
    agents.register("delete_uploaded_content", lambda _request: {"deleted": True}, replace=True)
    undone = await s.same("POST", f"/journeys/sagas/{broken['saga_id']}/retry", "saga.retry_saga_step")
    assert (undone["status"], undone["compensated_steps"], undone["compensation_failure"]) == (
        "compensated",
        ["analyze_content", "upload_content"],
        None,
    )
    assert (await s.status(broken["saga_id"], "saga.get_saga_status"))["index_status"] == "compensated"
    nothing_left = await s.http.post(f"/journeys/sagas/{broken['saga_id']}/retry")
    assert nothing_left.status_code == 409 and nothing_left.json()["code"] == "NothingToRetryError"


async def test_session_and_mvp_answers_are_their_orchestrators_views(served: Served) -> None:
    s = served
    areas = [{"area_id": "a", "completion": {"done": True}, "metadata": {"tier": 1}}, {"area_id": "b"}]
    session = await s.same(
        "POST", "/journeys/sessions", "session.start_session", {"user_id": "ana", "session_config": {"areas": areas}}
    )
    assert session["areas"][0]["metadata"] == {"tier": 1} and "metadata" not in session["areas"][1]
    path = f"/journeys/sessions/{session['session_id']}"
    await s.same("POST", f"{path}/navigate", "session.navigate_to_area", {"area_id": "b"})
    await s.same("POST", f"{path}/updates", "session.update_area_state", {"area_id": "a", "updates": {"done": True}})
    await s.same("GET", path, "session.get_session_progress")
    # Every area complete, still open: in progress; closed so, the session completed.
    assert (await s.status(session["session_id"], "session.get_session_progress"))["index_status"] == "in_progress"
    closed = await s.same("POST", f"{path}/close", "session.close_session", {"reason": "done"})
    assert closed["status"] == "closed"
    assert (await s.status(session["session_id"], "session.get_session_progress"))["index_status"] == "completed"

    mvp = await s.same("POST", "/journeys/mvp", "mvp.start_mvp_journey", {"user_id": "ana"})
    path = f"/journeys/mvp/{mvp['session']['session_id']}"
    await s.same("POST", f"{path}/navigate", "mvp.navigate_to_pillar", {"area_id": "insights"})
    flags = {"files_uploaded": True, "files_parsed": True}
    await s.same("POST", f"{path}/progress", "mvp.update_pillar_progress", {"area_id": "content", "updates": flags})
    assert (await s.same("GET", f"{path}/recommendation", "mvp.get_recommended_next_pillar"))[
        "recommended_pillar"
    ] == "insights"
    await s.same("GET", f"{path}/completion", "mvp.check_mvp_completion")
    assert (await s.same("GET", path, "mvp.get_mvp_progress"))["current_area"] == "insights"
    await s.status(mvp["session"]["session_id"], "mvp.sessions.get_session_progress")
    for pillar in mvp["pillars"]:
        updates = {c.split(" ")[0]: True for c in pillar["completion"]}
        await s.http.post(f"{path}/progress", json={"area_id": pillar["area_id"], "updates": updates})
    finished = await s.same("GET", f"{path}/recommendation", "mvp.get_recommended_next_pillar")
    assert (finished["recommended_pillar"], finished["pillar_info"]) == (None, None)
    assert (await s.same("GET", f"{path}/completion", "mvp.check_mvp_completion"))["mvp_complete"]


async def test_lifecycle_answers_are_the_orchestrators_views(served: Served) -> None:
    s = served
    started = await s.same(
        "POST", "/journeys/lifecycle", "lifecycle.start_journey", {"client_id": "c1", "metrics": READY_TO_START}
    )
    assert started["validation"]["passed"] and started["rollback"] is None
    path = f"/journeys/lifecycle/{started['journey_id']}"
    metrics = await s.same("POST", f"{path}/metrics", "lifecycle.record_metrics", {"values": {"search_precision": 0.5}})
    assert metrics["rollback"] is None
    s.returned.clear()  # a refused promotion is a 409 whose details hold the view's validation
    refused = await s.http.post(f"{path}/transitions", json={"event": "promote_to_pilot"})
    assert refused.status_code == 409, refused.text
    validation = jsonable_encoder(s.returned["lifecycle.transition"]["validation"])
    assert refused.json()["details"]["validation"] == validation and not validation["passed"]
    options = {"reason": "bad data", "rollback_to": "sandbox"}
    rolling = await s.same(
        "POST", f"{path}/transitions", "lifecycle.transition", {"event": "initiate_rollback", "options": options}
    )
    assert rolling["current_stage"] == "rollback" and rolling["rollback"]["notification"]["delivered"]
    assert "validation" not in rolling
    state = await s.same("GET", path, "lifecycle.get_journey_state")
    assert state["rollback"]["status"] == "validated"  # the open rollback, as the journey's state keeps it
    assert (await s.status(started["journey_id"], "lifecycle.get_journey_state"))["index_status"] == "rollback"
    completed = await s.same("POST", f"{path}/transitions", "lifecycle.transition", {"event": "complete_rollback"})
    assert completed["rollback"]["status"] == "completed" and "notification" not in completed["rollback"]

    automatic = await s.same(
        "POST", f"{path}/metrics", "lifecycle.record_metrics", {"values": {"security_vulnerabilities": 2}}
    )
    assert (
        automatic["rollback"]["automatic"] and automatic["rollback"]["journey"]["journey_id"] == started["journey_id"]
    )
    await s.same("GET", path, "lifecycle.get_journey_state")
    cancelled = await s.same(
        "POST", f"{path}/transitions", "lifecycle.transition", {"event": "cancel_journey", "options": {"reason": "x"}}
    )
    assert cancelled["status"] == "cancelled" and cancelled["allowed_events"] == []
    await s.status(started["journey_id"], "lifecycle.get_journey_state")

    # A journey whose start was refused has no stage yet.
    refused_start = await s.http.post("/journeys/lifecycle", json={"client_id": "c2"})
    assert refused_start.status_code == 409
    pending = refused_start.json()["details"]["validation"]["journey_id"]
    waiting = await s.same("GET", f"/journeys/lifecycle/{pending}", "lifecycle.get_journey_state")
    assert (waiting["current_stage"], waiting["status"]) == (None, "pending")
    await s.status(pending, "lifecycle.get_journey_state")


EXPENSE = {
    "name": "expense",
    "elements": [
        {"type": "start", "id": "start"},
        {
            "type": "user_task",
            "id": "approve",
            "title": "Approve",
            "candidate_groups": ["finance"],
            "sla_hours": 2,
            "response_schema": {"type": "object", "required": ["approved"]},
        },
        {"type": "end", "id": "end"},
    ],
    "flows": ["start -> approve", "approve -> end"],
}
RACE = {
    "name": "race",
    "elements": [
        {"type": "start", "id": "start"},
        {"type": "event_gateway", "id": "race"},
        {"type": "message", "id": "approved", "message": "deal.approved", "outputs": {"amount": "amount"}},
        {"type": "timer", "id": "expired", "timer": {"duration": "PT1H"}},
        {"type": "end", "id": "won", "outcome": "approved"},
        {"type": "end", "id": "timed_out", "outcome": "expired"},
    ],
    "flows": ["start -> race", "race -> approved", "race -> expired", "approved -> won", "expired -> timed_out"],
}
PAUSE_THEN_PAYMENT = {
    "name": "pause",
    "elements": [
        {"type": "start", "id": "start"},
        {"type": "timer", "id": "cool_off", "timer": {"duration": "P1D"}},
        {"type": "message", "id": "paid", "message": "paid", "correlation": "business_key"},
        {"type": "end", "id": "end"},
    ],
    "flows": ["start -> cool_off", "cool_off -> paid", "paid -> end"],
}
ON_MESSAGE = {
    "name": "on_pr",
    "elements": [{"type": "start", "id": "opened", "message": "pr.opened"}, {"type": "end", "id": "end"}],
    "flows": ["opened -> end"],
}


def two_tasks(name: str, compensation: str | None = None) -> dict[str, Any]:
    first = {"type": "service_task", "id": "reserve", "agent": "reserve"}
    if compensation:
        first["compensation"] = compensation
    return {
        "name": name,
        "elements": [
            {"type": "start", "id": "start"},
            first,
            {"type": "service_task", "id": "ship", "agent": "ship"},
            {"type": "end", "id": "end"},
        ],
        "flows": ["start -> reserve", "reserve -> ship", "ship -> end"],
    }


async def test_process_task_and_message_answers_are_the_orchestrators_views(served: Served) -> None:
    s, rt = served, served.runtime
    rt.agents.register("notify", FailingAgent("notify", permanent=True), replace=True)  # its SLA's default agent
    await s.same("POST", "/processes", "processes.deploy", EXPENSE)
    expense = await s.same("POST", "/processes/expense/instances", "processes.start", {"business_key": "e-1"})
    assert [w["kind"] for w in expense["waiting"]] == ["user_task"]
    [task] = await s.same("GET", "/tasks", "processes.inbox.list_tasks", group="finance")
    await s.same("GET", f"/tasks/{task['task_id']}", "processes.inbox.get_task")
    await s.same(
        "POST", f"/tasks/{task['task_id']}/claim", "processes.inbox.claim", {"user": "ana", "groups": ["finance"]}
    )
    done = await s.same(
        "POST",
        f"/tasks/{task['task_id']}/complete",
        "processes.inbox.complete",
        {"user": "ana", "payload": {"approved": True}},
    )
    assert done["status"] == "completed"
    assert (await s.same("GET", f"/tasks/{task['task_id']}", "processes.inbox.get_task"))["result"] == {
        "approved": True
    }
    await s.status(expense["instance_id"], "processes.status")

    # Versions: a second one at a quarter of new instances, a rollout, an A/B test, a migration.
    waiting = await s.same("POST", "/processes/expense/instances", "processes.start", {"business_key": "e-v"})
    await s.http.post("/processes", json={**EXPENSE, "version": 2, "description": "v2"}, params={"weight": 25})
    await s.same("GET", "/processes/expense/versions", "processes.versions")
    await s.same("GET", "/processes/expense/rollout", "processes.rollout")
    half = [{"version": 1, "weight": 50}, {"version": 2, "weight": 50}]
    await s.same("PUT", "/processes/expense/rollout", "processes.set_rollout", {"entries": half})
    ab = [{**share, "variant": name} for share, name in zip(half, "AB", strict=True)]
    await s.same("PUT", "/processes/expense/rollout", "processes.ab_test", {"entries": ab})
    moved = await s.same(
        "POST", f"/processes/instances/{waiting['instance_id']}/migrate", "processes.migrate", {"to_version": 2}
    )
    assert moved["version"] == 2
    await rt.processes.cancel(waiting["instance_id"])

    await s.same("POST", "/processes", "processes.deploy", RACE)
    race = await s.same("POST", "/processes/race/instances", "processes.start", {"business_key": "deal-1"})
    assert race["waiting"][0]["options"] == ["approved", "expired"]
    await s.status(race["instance_id"], "processes.status")
    correlated = await s.same(
        "POST", "/messages", "processes.send_message", {"name": "deal.approved", "correlation_key": "deal-1"}
    )
    assert correlated["correlated"] == [race["instance_id"]] and "expires_at" not in correlated
    buffered = await s.same(
        "POST", "/messages", "processes.send_message", {"name": "deal.approved", "correlation_key": "nobody"}
    )
    assert buffered["buffered"] and buffered["expires_at"]
    await s.same("POST", "/processes", "processes.deploy", ON_MESSAGE)
    started = await s.same(
        "POST", "/messages", "processes.send_message", {"name": "pr.opened", "correlation_key": "42"}
    )
    assert len(started["started"]) == 1

    await s.same("POST", "/processes", "processes.deploy", PAUSE_THEN_PAYMENT)
    paused = await s.same("POST", "/processes/pause/instances", "processes.start", {"business_key": "w-1"})
    assert paused["waiting"][0]["kind"] == "timer"
    s.clock.advance(timedelta(days=1))
    await rt.processes.scheduler.run_due()
    waiting = await s.same("GET", f"/processes/instances/{paused['instance_id']}", "processes.status")
    assert waiting["waiting"][0]["messages"] == ["paid"]
    await rt.processes.cancel(paused["instance_id"])
    cancelled = await s.status(paused["instance_id"], "processes.status")
    assert (cancelled["status"], cancelled["waiting"]) == ("cancelled", [])

    for intent in ("reserve", "release"):
        rt.agents.register(intent, lambda _request: {"ok": True}, replace=True)
    rt.agents.register("ship", FailingAgent("ship", permanent=True), replace=True)
    await s.same("POST", "/processes", "processes.deploy", two_tasks("undone", compensation="release"))
    undone = await s.same("POST", "/processes/undone/instances", "processes.start", {"business_key": "o-1"})
    assert (undone["status"], undone["compensated"], undone["failure"]["element"]) == (
        "compensated",
        ["reserve"],
        "ship",
    )
    await s.same("POST", "/processes", "processes.deploy", two_tasks("fragile"))
    fragile = await s.same("POST", "/processes/fragile/instances", "processes.start", {"business_key": "o-2"})
    assert (fragile["status"], fragile["failed_element"]) == ("failed", "ship")
    await s.same("GET", f"/processes/instances/{fragile['instance_id']}", "processes.status")
    await s.status(fragile["instance_id"], "processes.status")
    # A compensation that fails for good: failed at the compensation, which names the handler.
    rt.agents.register("unreserve", FailingAgent("unreserve", permanent=True), replace=True)
    await s.same("POST", "/processes", "processes.deploy", two_tasks("stuck", compensation="unreserve"))
    stuck = await s.same("POST", "/processes/stuck/instances", "processes.start", {"business_key": "o-3"})
    assert (stuck["status"], stuck["failed_element"], stuck["failure"]["element"]) == ("failed", "compensate", "ship")
    assert (stuck["compensation_failure"]["element"], stuck["compensation_failure"]["handler"]) == (
        "reserve",
        "unreserve",
    )
    await s.same("GET", f"/processes/instances/{stuck['instance_id']}", "processes.status")

    # An SLA whose "notify" agent fails for good: an incident, which the status lists and the retry re-arms.
    breached = await s.same("POST", "/processes/expense/instances", "processes.start", {"business_key": "e-2"})
    s.clock.advance(timedelta(hours=2))
    await rt.processes.scheduler.run_due()
    late = await s.same("GET", f"/processes/instances/{breached['instance_id']}", "processes.status")
    [incident] = late["incidents"]
    failed = (incident["purpose"], incident["intent"], incident["error_type"])
    assert failed == ("sla", "notify", "PermanentAgentError"), incident
    await s.status(breached["instance_id"], "processes.status")
    rt.agents.register("notify", lambda _request: {}, replace=True)
    retried = await s.http.post(f"/processes/instances/{breached['instance_id']}/retry")
    assert retried.status_code == 200 and "incidents" not in retried.json(), retried.text


def operations(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The journey, inbox, message and process operations of the document."""
    return [
        (f"{method.upper()} {path}", op)
        for path, ops in doc["paths"].items()
        for method, op in ops.items()
        if {"journeys", "inbox"} & set(op.get("tags", []))
    ]


async def test_every_journey_response_is_a_named_schema_with_properties(served_in_memory: Served) -> None:
    doc = (await served_in_memory.http.get("/openapi.json")).json()
    schemas = doc["components"]["schemas"]
    found = operations(doc)
    assert len(found) >= 34  # every journey, task, message and process operation, new ones too
    for label, op in found:
        schema = op["responses"]["200"]["content"]["application/json"]["schema"]
        schema = schema.get("items", schema)  # a list answer: its items
        members = schema.get("oneOf", [schema])
        for member in members:
            name = member["$ref"].removeprefix("#/components/schemas/")
            assert schemas[name]["properties"], label
            assert schemas[name].get("additionalProperties") is not True, label
    status = next(op for label, op in found if label == "GET /journeys/{instance_id}/status")
    union = status["responses"]["200"]["content"]["application/json"]["schema"]
    assert set(union["discriminator"]["mapping"]) == {"structured", "saga", "session", "mvp", "lifecycle", "process"}
    # Keys only some answers carry are optional and never null; closed sets are enums.
    run = schemas["StructuredRunView"]
    assert "failed_step" not in run["required"] and run["properties"]["failed_step"] == {
        "type": "string",
        "title": "Failed Step",
        "description": "only while a step's work has failed: that step (retry it)",
    }
    assert run["properties"]["status"]["enum"] == [
        "in_progress",
        "completed",
        "failed",
        "queued",
        "review",
        "terminated",
    ]
    assert "expires_at" not in schemas["MessageSentOut"]["required"]
    assert schemas["TaskOut"]["properties"]["status"]["enum"] == ["open", "completed", "cancelled"]


async def test_the_status_of_a_pattern_this_server_does_not_know_is_not_found(served_in_memory: Served) -> None:
    index = served_in_memory.runtime.store.index
    await index.create_instance("later-1", "later-design", "later", "ana", first_event=NewEvent("later.started", {}))
    response = await served_in_memory.http.get("/journeys/later-1/status")
    assert response.status_code == 404 and response.json()["code"] == "JourneyNotFoundError"
    assert "'later'" in response.json()["detail"]

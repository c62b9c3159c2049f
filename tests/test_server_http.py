"""Auth, problem+json errors and the journey endpoints over real HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import quote

import httpx
import pytest

from server.app import create_app
from server.settings import ApiKey, Settings, key_digest
from tests.server_support import serving

pytestmark = pytest.mark.slow
KEYS = {
    "reader-key": ApiKey("rita", frozenset({"read"})),
    "ops-key": ApiKey("ana", frozenset({"read", "runs", "journeys", "tasks", "messages"}), ("finance",)),
    key_digest("bob-key"): ApiKey("bob", frozenset({"read", "tasks"}), ("sales",)),  # as a keys file keeps it
}


@pytest.fixture
async def http(sqlite_url: str) -> AsyncIterator[httpx.AsyncClient]:
    with serving(create_app(Settings(database_url=sqlite_url, api_keys=KEYS))) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            yield client


async def test_api_keys_and_scopes(http: httpx.AsyncClient) -> None:
    missing = await http.post("/assistants/search", json={})
    assert missing.status_code == 401
    assert missing.headers["content-type"] == "application/problem+json"
    assert missing.json()["type"] == "/problems/Unauthenticated"
    assert (await http.post("/assistants/search", json={}, headers={"x-api-key": "wrong"})).status_code == 401
    assert (await http.post("/assistants/search", json={}, headers={"x-api-key": "reader-key"})).status_code == 200
    forbidden = await http.post("/threads", json={}, headers={"x-api-key": "reader-key"})
    assert forbidden.status_code == 403 and forbidden.json()["code"] == "Forbidden"


async def test_problems_have_a_stable_type_per_error_class(http: httpx.AsyncClient) -> None:
    ops = {"x-api-key": "ops-key"}
    malformed = await http.post(
        "/journeys/structured/designs", content=b"{nope", headers={**ops, "content-type": "application/json"}
    )
    assert malformed.status_code == 400 and malformed.json()["type"] == "/problems/MalformedRequest"
    unknown = await http.post("/journeys/structured/designs", json={"journey_type": "no_such_template"}, headers=ops)
    assert unknown.status_code == 404 and unknown.json()["type"] == "/problems/UnknownTemplateError"
    design = (
        await http.post("/journeys/structured/designs", json={"journey_type": "content_migration"}, headers=ops)
    ).json()
    journey_id = design["journey_id"]
    started = await http.post(f"/journeys/structured/{journey_id}/executions", json={"user_id": "ana"}, headers=ops)
    assert started.status_code == 200 and started.json()["current_step"] == "upload_content"
    again = await http.post(f"/journeys/structured/{journey_id}/executions", json={"user_id": "ana"}, headers=ops)
    assert again.status_code == 409 and again.json()["type"] == "/problems/DuplicateInstanceError"
    wrong_step = await http.post(
        f"/journeys/structured/{journey_id}/users/ana/advance",
        json={"step_result": {}, "step_id": "transform_data"},
        headers=ops,
    )
    assert wrong_step.status_code == 409 and wrong_step.json()["details"]["allowed"] == ["upload_content"]
    bad_body = await http.post(
        f"/journeys/structured/{journey_id}/users/ana/advance", json={"step_result": 3}, headers=ops
    )
    assert bad_body.status_code == 422 and bad_body.json()["code"] == "RequestValidationError"
    instance_id = started.json()["instance_id"]
    # The journey is a thread too: the SDK's state endpoint reads its checkpoints.
    state = (await http.get(f"/threads/{instance_id}/state", headers=ops)).json()
    assert state["next"] == ["upload_content.await"]
    history = (await http.get(f"/journeys/{instance_id}/history", headers=ops)).json()
    assert history[0]["type"] == "journey.started"
    status = (await http.get(f"/journeys/{instance_id}/status", headers=ops)).json()
    assert status["pattern"] == "structured" and status["current_step"] == "upload_content"


COUNTED_FILES = {
    "journey_type": "file_count",
    "steps": [
        {
            "step_id": "count",
            "input_schema": {"type": "object", "properties": {"files": {"type": "integer"}}, "required": ["files"]},
        },
        {"step_id": "archive"},
    ],
}


async def test_a_user_reports_a_step_failed_over_http_though_its_schema_requires_success_fields(
    http: httpx.AsyncClient,
) -> None:
    """The report was refused, 422 ResumeValueError ('files' is a required property), by the journey endpoint
    and by a run resuming the thread alike. Now both fail the journey at the step, and its retry asks again."""
    ops = {"x-api-key": "ops-key"}
    report = {"status": "failed", "error": "the share is unreachable"}
    design = await http.post(
        "/journeys/structured/designs", json={"journey_type": "file_count", "spec": COUNTED_FILES}, headers=ops
    )
    assert design.status_code == 200, design.text
    journey_id = design.json()["journey_id"]
    started = await http.post(f"/journeys/structured/{journey_id}/executions", json={"user_id": "ana"}, headers=ops)
    assert started.status_code == 200, started.text
    advanced = await http.post(
        f"/journeys/structured/{journey_id}/users/ana/advance", json={"step_result": report}, headers=ops
    )
    assert advanced.status_code == 200, advanced.text
    assert (advanced.json()["status"], advanced.json()["failed_step"]) == ("failed", "count")
    retried = await http.post(f"/journeys/structured/{journey_id}/users/ana/retry", headers=ops)
    assert retried.status_code == 200 and retried.json()["current_step"] == "count", retried.text

    thread = (await http.post("/threads", json={}, headers=ops)).json()["thread_id"]
    first = {"assistant_id": "structured", "input": {"journey_type": "file_count", "spec": COUNTED_FILES}}
    assert (await http.post(f"/threads/{thread}/runs/wait", json=first, headers=ops)).status_code == 200
    resumed = await http.post(
        f"/threads/{thread}/runs/wait", json={"assistant_id": "structured", "command": {"resume": report}}, headers=ops
    )
    assert resumed.status_code == 200, resumed.text
    assert resumed.json()["__error__"]["error"] == "StepReportedFailedError"  # the run failed, as the user said
    instance_id = (await http.get(f"/threads/{thread}", headers=ops)).json()["metadata"]["instance_id"]
    status = (await http.get(f"/journeys/{instance_id}/status", headers=ops)).json()
    assert (status["status"], status["failed_step"]) == ("failed", "count")


async def test_user_tasks_only_for_their_assignee_or_group(http: httpx.AsyncClient) -> None:
    ops, bob = {"x-api-key": "ops-key"}, {"x-api-key": "bob-key"}
    process = {
        "name": "expense",
        "elements": [
            {"type": "start", "id": "start"},
            {
                "type": "user_task",
                "id": "approve",
                "title": "Approve",
                "candidate_groups": ["finance"],
                "response_schema": {"type": "object", "required": ["approved"]},
            },
            {"type": "end", "id": "end"},
        ],
        "flows": ["start -> approve", "approve -> end"],
    }
    assert (await http.post("/processes", json=process, headers=ops)).status_code == 200
    started = (await http.post("/processes/expense/instances", json={"business_key": "exp-1"}, headers=ops)).json()
    [task] = (await http.get("/tasks", params={"group": "finance"}, headers=ops)).json()
    # bob is not in finance, nor may he see ops's instance: to him the task does not exist (as GET answers).
    assert (await http.post(f"/tasks/{task['task_id']}/claim", json={}, headers=bob)).status_code == 404
    refused = await http.post(f"/tasks/{task['task_id']}/complete", json={"payload": {"approved": True}}, headers=bob)
    assert refused.status_code == 404 and refused.json()["code"] == "TaskNotFoundError"
    # The body cannot impersonate anyone while auth is on: the key says who the caller is.
    spoof = await http.post(
        f"/tasks/{task['task_id']}/complete",
        json={"user": "ana", "groups": ["finance"], "payload": {"approved": True}},
        headers=bob,
    )
    assert spoof.status_code == 404
    invalid = await http.post(f"/tasks/{task['task_id']}/complete", json={"payload": {}}, headers=ops)
    assert invalid.status_code == 422  # the task's response schema wants "approved"
    done = await http.post(f"/tasks/{task['task_id']}/complete", json={"payload": {"approved": True}}, headers=ops)
    assert done.status_code == 200 and done.json()["status"] == "completed"
    status = (await http.get(f"/journeys/{started['instance_id']}/status", headers=ops)).json()
    assert status["pattern"] == "process" and status["status"] == "completed"


async def test_nul_characters_are_refused_up_front_on_every_store(http: httpx.AsyncClient) -> None:
    # PostgreSQL cannot store U+0000 (SQLite can): refused on every store alike, before anything is written.
    ops = {"x-api-key": "ops-key"}
    in_body = await http.post("/threads", json={"metadata": {"note": "a\x00b"}}, headers=ops)
    assert in_body.status_code == 422 and in_body.json()["code"] == "InvalidInputError"
    in_key = await http.post("/threads", json={"metadata": {"k\x00": 1}}, headers=ops)
    assert in_key.status_code == 422
    in_path = await http.get("/threads/a%00b", headers=ops)
    assert in_path.status_code == 422
    in_query = await http.get("/tasks", params={"assignee": "a\x00"}, headers=ops)
    assert in_query.status_code == 422
    assert (await http.post("/threads/search", json={}, headers=ops)).json() == []  # nothing was created
    # The six characters \u0000 (an escaped backslash in JSON) are text like any other.
    literal = await http.post("/threads", json={"metadata": {"note": "\\u0000"}}, headers=ops)
    assert literal.status_code == 200 and literal.json()["metadata"] == {"note": "\\u0000"}


async def test_authentication_comes_before_any_input_check(http: httpx.AsyncClient) -> None:
    # A caller without access learns nothing about its input: 401/403 first, then the NUL guard's 422.
    nul = {"metadata": {"note": "a\x00b"}}
    anonymous = await http.post("/threads", json=nul)
    assert anonymous.status_code == 401 and anonymous.json()["code"] == "Unauthenticated"
    assert anonymous.headers["content-type"] == "application/problem+json"
    assert (await http.post("/threads", json=nul, headers={"x-api-key": "wrong"})).status_code == 401
    reader = await http.post("/threads", json=nul, headers={"x-api-key": "reader-key"})
    assert reader.status_code == 403 and reader.json()["code"] == "Forbidden"
    refused = await http.post("/threads", json=nul, headers={"x-api-key": "ops-key"})
    assert refused.status_code == 422 and refused.json()["code"] == "InvalidInputError"
    assert refused.headers["content-type"] == "application/problem+json"
    # The same order for NUL in the path or query, a body that is not JSON, and one off the schema.
    assert (await http.get("/threads/a%00b")).status_code == 401
    assert (await http.get("/tasks", params={"assignee": "a\x00"}, headers={"x-api-key": "wrong"})).status_code == 401
    for key, status in ((None, 401), ("reader-key", 403), ("ops-key", 400)):
        headers = {"content-type": "application/json", **({"x-api-key": key} if key else {})}
        malformed = await http.post("/threads", content=b'{"metadata": \x00', headers=headers)
        assert malformed.status_code == status, (key, malformed.text)
    off_schema = await http.post("/threads", json={"metadata": 3}, headers={"x-api-key": "reader-key"})
    assert off_schema.status_code == 403
    assert (await http.post("/threads/search", json={}, headers={"x-api-key": "ops-key"})).json() == []


async def test_a_journey_of_a_user_whose_id_holds_a_slash_is_reached_by_every_route(sqlite_url: str) -> None:
    """A structured journey's (and a saga's) instance id is ``<journey id>:<user id>``. For a user id holding a
    "/" (a principal named "acme/ana", a user "team/7"), the start answered 200 and then no route reached the
    journey: its status, advance, retry, saga cancel, terminate and history all answered 404 (a path segment
    stops at "/"), so it stood at its first step for good. Every route that names an instance or a user takes a
    "/" in it now (percent-encoded or not), as the dashboard's pages do."""
    keys = {"acme-key": ApiKey("acme/ana", frozenset({"read", "runs", "journeys"}))}
    with serving(create_app(Settings(database_url=sqlite_url, api_keys=keys))) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30, headers={"x-api-key": "acme-key"}) as http:
            design = await http.post("/journeys/structured/designs", json={"journey_type": "content_migration"})
            journey_id = design.json()["journey_id"]
            started = await http.post(f"/journeys/structured/{journey_id}/executions", json={"user_id": "acme/ana"})
            assert started.status_code == 200, started.text
            instance_id = started.json()["instance_id"]
            assert instance_id == f"{journey_id}:acme/ana"
            user = f"/journeys/structured/{journey_id}/users/acme%2Fana"
            assert (await http.get(user)).json()["current_step"] == "upload_content"
            advanced = await http.post(f"{user}/advance", json={"step_result": {"files": 3}})
            assert advanced.status_code == 200 and advanced.json()["completed_steps"] == ["upload_content"]
            assert (await http.post(f"{user}/retry")).status_code == 409  # no failed step: the route is reached
            for path in (quote(instance_id, safe=""), instance_id):  # encoded as clients do, or not
                status = await http.get(f"/journeys/{path}/status")
                assert status.status_code == 200 and status.json()["instance_id"] == instance_id, status.text
                history = await http.get(f"/journeys/{path}/history")
                assert [e["type"] for e in history.json()][-1] == "step.completed", history.text

            saga_design = await http.post("/journeys/sagas/designs", json={"journey_type": "enterprise_migration"})
            start = f"/journeys/sagas/designs/{saga_design.json()['journey_id']}/executions"
            saga_id = (await http.post(start, json={"user_id": "acme/ana"})).json()["saga_id"]
            saga = f"/journeys/sagas/{quote(saga_id, safe='')}"
            assert (await http.get(saga)).json()["status"] == "in_progress"
            cancelled = await http.post(f"{saga}/cancel", json={"reason": "not needed"})
            assert cancelled.status_code == 200 and cancelled.json()["status"] == "compensated", cancelled.text

            terminated = await http.post(f"/journeys/{quote(instance_id, safe='')}/terminate", json={"reason": "done"})
            assert terminated.status_code == 200 and terminated.json()["status"] == "terminated", terminated.text

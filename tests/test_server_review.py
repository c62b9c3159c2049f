"""``POST /journeys/{instance_id}/review``: a run its tier's evaluation held for review (``on_breach: "review"``)
is passed or failed over real HTTP, through langgraph-sdk's client, with two users, on SQLite and PostgreSQL.

Before, the review existed only in Python (``review_journey_run``, ``processes.review_run``...): an HTTP user
could see a run stand in ``review`` and had no way to unblock it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from langgraph_sdk.client import LangGraphClient

from server.app import create_app
from server.settings import ApiKey, Settings
from tests.server_support import serving

SCOPES = frozenset({"read", "runs", "journeys", "tasks"})
KEYS = {
    "key-ana": ApiKey("ana", SCOPES, ("finance",)),
    "key-bob": ApiKey("bob", SCOPES, ("finance",)),
    "key-eve": ApiKey("eve", frozenset({"read"}), ("finance",)),
}
# A tier its evaluator scores 0.5 (the server's operator registered it): a breach, and the run is held.
HELD = {"tier": "gold", "thresholds": {"completeness": 0.9}, "evaluators": {"completeness": "half"}}
SPEC = {"journey_type": "reviewed", "steps": [{"step_id": "draft"}], "evaluation": {**HELD, "on_breach": "review"}}


@pytest.fixture
def two_users_server(durable_url: str) -> Iterator[str]:
    """The server with ``KEYS`` on ``durable_url``, its runtime given the evaluator ``half`` (as a plugin would)."""
    app = create_app(Settings(database_url=durable_url, api_keys=dict(KEYS)))
    with serving(app) as url:
        app.state.services.runtime.evaluators.register("half", lambda _step, _output: 0.5)
        yield url


async def held_for_review(client: LangGraphClient, user: str) -> str:
    """A structured run of ``user``'s that its tier held for review: its instance id."""
    design = await client.http.post("/journeys/structured/designs", json={"journey_type": "reviewed", "spec": SPEC})
    journey_id = design["journey_id"]
    run = await client.http.post(f"/journeys/structured/{journey_id}/executions", json={"user_id": user})
    instance_id = str(run["instance_id"])
    await client.http.post(f"/journeys/structured/{journey_id}/users/{user}/advance", json={"step_result": {"a": 1}})
    status = await client.http.get(f"/journeys/{instance_id}/status")
    assert status["index_status"] == "review", status
    return instance_id


async def refused(call: Any, status: int) -> dict[str, Any]:
    with pytest.raises(httpx.HTTPStatusError) as caught:
        await call
    assert caught.value.response.status_code == status, caught.value.response.text
    problem: dict[str, Any] = caught.value.response.json()
    return problem


async def test_a_run_held_for_review_is_passed_or_failed_by_its_owner_over_http(
    ana: LangGraphClient, bob: LangGraphClient
) -> None:
    passed, rejected = await held_for_review(ana, "ana"), await held_for_review(ana, "ana")

    # bob does not see ana's run: not found, and it stays held
    await refused(bob.http.post(f"/journeys/{passed}/review", json={"approved": True}), 404)
    # who reviews is the caller, never the body
    await refused(ana.http.post(f"/journeys/{passed}/review", json={"approved": True, "by": "bob"}), 422)
    assert (await ana.http.get(f"/journeys/{passed}/status"))["index_status"] == "review"

    view = await ana.http.post(f"/journeys/{passed}/review", json={"approved": True, "note": "fine by me"})
    assert view["index_status"] == "completed", view
    [reviewed] = [e for e in await ana.http.get(f"/journeys/{passed}/history") if e["type"] == "evaluation.reviewed"]
    assert reviewed["payload"] == {"approved": True, "by": "ana", "note": "fine by me"}

    view = await ana.http.post(f"/journeys/{rejected}/review", json={"approved": False, "note": "too thin"})
    assert view["index_status"] == "failed", view

    # a run no longer in review: a typed conflict, not a second decision
    problem = await refused(ana.http.post(f"/journeys/{passed}/review", json={"approved": False}), 409)
    assert "NotInReviewError" in str(problem), problem


async def test_a_process_held_for_review_is_passed_over_http_by_its_owner_only(
    ana: LangGraphClient, bob: LangGraphClient
) -> None:
    signed = {"type": "user_task", "id": "sign", "title": "sign", "assignee": "ana"}
    spec = {
        "name": "reviewed_signature",
        "evaluation": {**HELD, "on_breach": "review"},
        "elements": [{"type": "start", "id": "start"}, signed, {"type": "end", "id": "end"}],
        "flows": ["start -> sign", "sign -> end"],
    }
    await ana.http.post("/processes", json=spec)
    instance_id = (await ana.http.post("/processes/reviewed_signature/instances", json={"business_key": "c-1"}))[
        "instance_id"
    ]
    [task] = await ana.http.get("/tasks", params={"instance_id": instance_id})
    await ana.http.post(f"/tasks/{task['task_id']}/complete", json={"payload": {"ok": True}})
    assert (await ana.http.get(f"/journeys/{instance_id}/status"))["index_status"] == "review"

    await refused(bob.http.post(f"/journeys/{instance_id}/review", json={"approved": True}), 404)
    view = await ana.http.post(f"/journeys/{instance_id}/review", json={"approved": True})
    assert view["index_status"] == "completed", view
    assert (await ana.http.get(f"/processes/instances/{instance_id}"))["status"] == "completed"


async def test_reviewing_needs_the_journeys_scope(ana: LangGraphClient, two_users_server: str) -> None:
    from langgraph_sdk import get_client

    instance_id = await held_for_review(ana, "ana")
    async with get_client(url=two_users_server, api_key="key-eve") as eve:
        await refused(eve.http.post(f"/journeys/{instance_id}/review", json={"approved": True}), 403)
    assert (await ana.http.get(f"/journeys/{instance_id}/status"))["index_status"] == "review"


async def test_the_review_route_is_in_the_openapi_document(ana: LangGraphClient) -> None:
    document = await ana.http.get("/openapi.json")
    operation = document["paths"]["/journeys/{instance_id}/review"]["post"]
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    assert schema["$ref"].endswith("/ReviewIn")
    assert set(document["components"]["schemas"]["ReviewIn"]["properties"]) == {"approved", "note"}


async def test_a_session_and_a_lifecycle_journey_held_for_review_are_reviewed_over_http(durable_url: str) -> None:
    """The route reaches every pattern's own review: a closed MVP session passes (it stays closed as it was),
    a completed lifecycle journey is failed with the note as its error."""
    from graphs.guide import MVPGuideBackend
    from graphs.lifecycle.catalog import default_lifecycle_spec
    from graphs.session.mvp import mvp_spec
    from tests.lifecycle_support import journey_at
    from tests.test_server_judged_status import serving as judged

    async with judged(durable_url) as (http, rt, clock):
        rt.evaluators.register("half", lambda _step, _output: 0.5)
        evaluation = {**HELD, "on_breach": "review"}
        session_id = str(
            (
                await rt.mvp.sessions.start_session(
                    "ana", {**mvp_spec("content").model_dump(), "evaluation": evaluation}
                )
            )["session_id"]
        )
        await MVPGuideBackend(rt).record(session_id, "content", {"files_uploaded": True}, key=f"{session_id}:r")
        await rt.mvp.sessions.close_session(session_id)
        lifecycle = {**default_lifecycle_spec().model_dump(), "evaluation": evaluation}
        journey_id = await journey_at(rt, clock, "completed", spec=lifecycle, client_id="client-r")
        for instance_id, approved, expected in ((session_id, True, "closed"), (journey_id, False, "failed")):
            assert (await http.get(f"/journeys/{instance_id}/status")).json()["index_status"] == "review"
            answer = await http.post(f"/journeys/{instance_id}/review", json={"approved": approved, "note": "seen"})
            assert answer.status_code == 200, answer.text
            assert answer.json()["index_status"] == expected, answer.json()

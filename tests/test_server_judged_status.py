"""A journey its workflow tier judged (failed, or held for review) shows its status over HTTP, whatever its
pattern: every status the journey index can hold is one the status views declare. On SQLite and PostgreSQL.

The views' declared statuses were written per pattern and missed the tier's: a process held for review, a
session a breach failed or held, a lifecycle journey held for review answered 500 on their status."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from checkpoints.clock import VirtualClock
from graphs.guide import MVPGuideBackend
from graphs.lifecycle.catalog import READY_TO_START, default_lifecycle_spec
from graphs.runtime import JourneyRuntime
from graphs.session.mvp import mvp_spec
from server.app import create_app
from server.settings import Settings
from tests.lifecycle_support import FAST, START, journey_at
from tests.test_evaluation import PRICES, summarise, summary_process


@asynccontextmanager
async def serving(url: str) -> AsyncIterator[tuple[httpx.AsyncClient, JourneyRuntime, VirtualClock]]:
    """The server on ``url`` (no auth), its runtime and its clock; requests go through the ASGI app."""
    clock = VirtualClock(START)
    settings = Settings(database_url=url, auth=False, run_timers=False)
    app = create_app(settings, clock=clock, runtime_options={"retry": FAST, "prices": PRICES})
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://j") as http:
        yield http, app.state.services.runtime, clock


async def shown(http: httpx.AsyncClient, instance_id: str) -> dict[str, Any]:
    answer = await http.get(f"/journeys/{instance_id}/status")
    assert answer.status_code == 200, answer.text
    view: dict[str, Any] = answer.json()
    return view


async def test_journeys_their_tier_failed_or_holds_for_review_show_their_status(durable_url: str) -> None:
    async with serving(durable_url) as (http, rt, clock):
        rt.agents.register("llm.summarise", summarise)
        await rt.processes.deploy(summary_process("strict", thresholds={"cost_per_run": 1.0}, on_breach="review"))
        process = (await rt.processes.start("strict", business_key="d-1"))["instance_id"]
        assert (await shown(http, process))["index_status"] == "review"
        direct = await http.get(f"/processes/instances/{process}")
        assert (direct.status_code, direct.json()["status"]) == (200, "review"), direct.text

        rt.evaluators.register("recorded", lambda step, output: 1.0 if output.get("area_complete") else 0.0)
        tier = {"tier": "silver", "thresholds": {"completeness": 0.9}, "evaluators": {"completeness": "recorded"}}
        for on_breach, expected in (("fail", "failed"), ("review", "review")):
            spec = {**mvp_spec("content").model_dump(), "evaluation": {**tier, "on_breach": on_breach}}
            session_id = str((await rt.mvp.sessions.start_session("ana", spec))["session_id"])
            await MVPGuideBackend(rt).record(session_id, "content", {"files_uploaded": True}, key=f"{session_id}:r")
            await rt.mvp.sessions.close_session(session_id)
            assert (await shown(http, session_id))["index_status"] == expected

        rt.agents.register("validate_search_quality", lambda _request: {"precision": 0.91}, replace=True)
        rt.evaluators.register("nothing", lambda step, output: 0.0)
        evaluation = {"tier": "gold", "thresholds": {"completeness": 0.9}, "evaluators": {"completeness": "nothing"}}
        for on_breach, expected in (("review", "review"), ("fail", "failed")):
            spec = {**default_lifecycle_spec().model_dump(), "evaluation": {**evaluation, "on_breach": on_breach}}
            journey_id = await journey_at(rt, clock, "completed", spec=spec, client_id=f"client-{on_breach}")
            view = await shown(http, journey_id)
            assert (view["index_status"], view["current_stage"]) == (expected, "completed")


async def test_a_lifecycle_journey_queued_behind_its_concurrency_limit_shows_its_status(durable_url: str) -> None:
    """Started in process on the server's database (a notebook beside the server), with a limit of one per
    client: the second journey is queued, with no stage yet. Its status had no status at all (None), which
    the view refused (500)."""
    async with serving(durable_url) as (http, rt, _clock):
        spec = {**default_lifecycle_spec().model_dump(), "concurrency": {"key": "$.client_id", "limit": 1}}
        first = await rt.lifecycle.start_journey("client-1", spec=spec, metrics=READY_TO_START)
        second = await rt.lifecycle.start_journey("client-1", spec=spec, metrics=READY_TO_START)
        assert (first["status"], second["status"]) == ("active", "queued")
        view = await shown(http, second["journey_id"])
        assert (view["index_status"], view["status"], view["current_stage"]) == ("queued", "queued", None)
        assert (await rt.lifecycle.get_journey_state(second["journey_id"]))["status"] == "queued"

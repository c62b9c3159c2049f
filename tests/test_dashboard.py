"""The dashboard's pages and actions over HTTP (the browser test drives the same pages in Chromium):
filters on every backend, login and scopes, forms from other sites, hostile input shown as text, and the
actions (cancel, retry, complete) behind the API's scopes."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html import unescape
from typing import Any

import httpx
import pytest
from langchain_core.runnables.graph import Graph as DrawableGraph

from agents import FailingAgent, RetrySettings
from agents.errors import AgentCallFailedError
from checkpoints.clock import VirtualClock
from checkpoints.ownership import Owner, acting_as
from graphs.lifecycle.catalog import READY_TO_START
from graphs.runtime import JourneyRuntime
from server.app import create_app
from server.settings import ApiKey, Settings
from server.ui import data
from server.ui.graph_svg import graph_svg
from tests.lifecycle_support import to_pilot

FAST = RetrySettings(max_attempts=2, initial_delay=0.001, max_delay=0.002, jitter=0.001)
T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
HOSTILE = '"><script>alert(1)</script>'
KEYS = {
    "reader-key": ApiKey("rita", frozenset({"read"})),
    "operator-key": ApiKey("otto", frozenset({"read", "journeys", "tasks"}), ("finance",)),
}


@dataclass
class Served:
    http: httpx.AsyncClient
    runtime: JourneyRuntime
    clock: VirtualClock


def expense(title: str = "Approve") -> dict[str, Any]:
    """An expense process: one user task of the finance group, titled ``title``."""
    return {
        "name": "expense",
        "elements": [
            {"type": "start", "id": "start"},
            {"type": "user_task", "id": "approve", "title": title, "candidate_groups": ["finance"]},
            {"type": "end", "id": "end"},
        ],
        "flows": ["start -> approve", "approve -> end"],
    }


@asynccontextmanager
async def serving(url: str, *, auth: bool = False) -> AsyncIterator[Served]:
    clock = VirtualClock(T0)
    settings = Settings(database_url=url, auth=auth, api_keys=KEYS if auth else {}, run_timers=False)
    app = create_app(settings, clock=clock, runtime_options={"retry": FAST})
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://journeys") as http:
            yield Served(http, app.state.services.runtime, clock)


def listed(page: httpx.Response) -> list[str]:
    assert page.status_code == 200, page.text
    return re.findall(r'<tr class="journey" data-instance="([^"]+)"', page.text)


async def test_the_journey_list_filters_by_pattern_status_stage_user_and_time(store_url: str) -> None:
    async with serving(store_url) as served:
        rt, clock = served.runtime, served.clock
        sandbox = (await rt.lifecycle.start_journey("client-a", metrics=READY_TO_START))["journey_id"]
        clock.advance(timedelta(days=2))
        pilot = (await rt.lifecycle.start_journey("client-b", metrics=READY_TO_START))["journey_id"]
        await to_pilot(rt.lifecycle, pilot)
        clock.advance(timedelta(days=2))
        design = await rt.structured.design_journey("content_migration")
        run = await rt.structured.execute_journey(design["journey_id"], "user-1")
        structured = run["instance_id"]

        everything = await served.http.get("/ui/journeys")
        assert listed(everything) == [structured, pilot, sandbox]  # newest first
        assert '<strong id="total">3</strong>' in everything.text
        assert "lifecycle · active: 2" in unescape(everything.text)

        assert listed(await served.http.get("/ui/journeys", params={"pattern": "lifecycle"})) == [pilot, sandbox]
        assert listed(await served.http.get("/ui/journeys", params={"stage": "pilot"})) == [pilot]
        assert listed(await served.http.get("/ui/journeys", params={"stage": "sandbox"})) == [sandbox]
        assert listed(await served.http.get("/ui/journeys", params={"user": "client-a"})) == [sandbox]
        assert listed(await served.http.get("/ui/journeys", params={"status": "completed"})) == []
        day = (T0 + timedelta(days=2)).date().isoformat()
        assert listed(await served.http.get("/ui/journeys", params={"since": day})) == [structured, pilot]
        assert listed(await served.http.get("/ui/journeys", params={"until": day})) == [pilot, sandbox]
        before = (T0 + timedelta(days=1)).isoformat()
        assert listed(await served.http.get("/ui/journeys", params={"until": before})) == [sandbox]
        counted = await served.http.get("/ui/journeys", params={"pattern": "lifecycle", "stage": "pilot"})
        assert '<strong id="total">1</strong>' in counted.text

        refused = await served.http.get("/ui/journeys", params={"pattern": "nope"})
        assert refused.status_code == 422 and "pattern must be one of" in refused.text
        assert (await served.http.get("/ui/journeys", params={"since": "yesterday"})).status_code == 422
        # Past the calendar: the day after 9999-12-31 (until a date includes it) was a 500.
        for name, value in (("until", "9999-12-31"), ("since", "9999-12-31T23:59:59-14:00")):
            refused = await served.http.get("/ui/journeys", params={name: value})
            assert refused.status_code == 422 and "within the years 1 to 9999" in refused.text, refused.text

        board = await served.http.get("/ui/lifecycle")
        assert board.status_code == 200
        columns = dict(re.findall(r'data-stage="(\w+)">\s*<h2>\w+ <span class="n">(\d+)', board.text))
        assert columns["sandbox"] == "1" and columns["pilot"] == "1" and columns["production"] == "0"
        assert "rollback_rate" in board.text and "exit_criteria_first_pass_rate" in board.text


async def test_the_journey_list_shows_and_filters_the_instances_with_incidents_and_metrics_count_them(
    store_url: str,
) -> None:
    """An instance whose SLA notification failed for good (an incident: its timer stands failed) looked like any
    other in progress in the journey list, which could not filter on it, and /metrics counted no incident: an
    operator opened every instance to find them. The list now marks them and filters to them, and /metrics has
    journeys_incidents by purpose; a retry clears all three."""
    async with serving(store_url) as served:
        rt, http, clock = served.runtime, served.http, served.clock
        spec = expense()
        spec["elements"][1] |= {"sla_hours": 1}  # breached: its escalation's default 'notify' agent fails
        rt.agents.register("notify", FailingAgent("notify", permanent=True))
        await rt.processes.deploy(spec)
        late = (await rt.processes.start("expense", "e-1"))["instance_id"]
        clock.advance(timedelta(minutes=30))
        on_time = (await rt.processes.start("expense", "e-2"))["instance_id"]
        clock.advance(timedelta(minutes=45))
        await rt.processes.scheduler.run_due()

        everything = await http.get("/ui/journeys")
        assert listed(everything) == [on_time, late]
        assert re.findall(r'data-instance="([^"]+)">(?:(?!</tr>).)*1 incident<', everything.text, re.S) == [late]
        assert listed(await http.get("/ui/journeys", params={"incidents": "1"})) == [late]
        assert 'journeys_incidents{purpose="sla"} 1.0' in (await http.get("/metrics")).text

        rt.agents.register("notify", lambda _request: {}, replace=True)
        await rt.processes.retry(late)
        await rt.processes.scheduler.run_due()
        assert listed(await http.get("/ui/journeys", params={"incidents": "1"})) == []
        assert "badge failed incidents" not in (await http.get("/ui/journeys")).text
        assert 'journeys_incidents{purpose="sla"} 0.0' in (await http.get("/metrics")).text


async def test_pages_need_a_login_and_actions_need_their_scope() -> None:
    async with serving("memory://", auth=True) as served:
        http = served.http
        # Rita's journey, shared with the finance group (Otto's); one started outside any request has no
        # owner, so only an admin sees it on the dashboard, as on the API.
        with acting_as(Owner("rita", shared_group="finance")):
            await served.runtime.lifecycle.start_journey("client-a", metrics=READY_TO_START)
        [journey] = await served.runtime.store.index.list_instances()
        unowned = (await served.runtime.lifecycle.start_journey("client-b", metrics=READY_TO_START))["journey_id"]

        first = await http.get("/ui/journeys")
        assert first.status_code == 303 and first.headers["location"] == "/ui/login?next=/ui/journeys"
        wrong = await http.post("/ui/login", data={"api_key": "nope", "next": "/ui/journeys"})
        assert wrong.status_code == 401 and "unknown API key" in wrong.text  # the authenticator's reason
        # After the login, only a dashboard path: never another site.
        login = await http.post("/ui/login", data={"api_key": "reader-key", "next": "//evil.example/x"})
        assert login.status_code == 303 and login.headers["location"] == "/ui/journeys"
        cookie = login.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/ui" in cookie

        assert listed(await http.get("/ui/journeys")) == [journey.instance_id]
        assert (await http.get(f"/ui/journeys/{unowned}")).status_code == 404
        refused = await http.post(f"/ui/journeys/{journey.instance_id}/cancel", data={"reason": "x"})
        assert refused.status_code == 403 and "lacks the &#39;journeys&#39; scope" in refused.text
        assert (await served.runtime.lifecycle.get_journey_state(journey.instance_id))["status"] == "active"

        await http.post("/ui/logout")
        await http.post("/ui/login", data={"api_key": "operator-key", "next": "/ui/lifecycle"})
        elsewhere = await http.post(
            f"/ui/journeys/{journey.instance_id}/cancel", headers={"origin": "http://evil.example"}
        )
        assert elsewhere.status_code == 403 and "own pages" in elsewhere.text
        done = await http.post(
            f"/ui/journeys/{journey.instance_id}/cancel",
            data={"reason": "client left"},
            headers={"origin": "http://journeys"},
        )
        assert done.status_code == 303
        assert (await served.runtime.lifecycle.get_journey_state(journey.instance_id))["status"] == "cancelled"
        hidden = await http.post(f"/ui/journeys/{unowned}/cancel", headers={"origin": "http://journeys"})
        assert hidden.status_code == 404  # not his: as if it did not exist
        assert (await served.runtime.lifecycle.get_journey_state(unowned))["status"] == "active"


async def test_hostile_values_are_shown_as_text_on_every_page() -> None:
    async with serving("memory://") as served:
        rt = served.runtime
        design = await rt.structured.design_journey("content_migration")
        run = await rt.structured.execute_journey(design["journey_id"], HOSTILE, {"note": HOSTILE})
        await rt.structured.advance_journey_step(design["journey_id"], HOSTILE, {HOSTILE: HOSTILE})
        await rt.processes.deploy(expense(HOSTILE))
        await rt.processes.start("expense", HOSTILE[:60], {"comment": HOSTILE})
        pages = ["/ui/journeys", f"/ui/journeys/{run['instance_id']}", "/ui/inbox", "/ui/processes", "/ui/lifecycle"]
        [process] = await rt.store.index.list_instances(pattern="process")
        pages.append(f"/ui/journeys/{process.instance_id}")
        for path in pages:
            page = await served.http.get(path)
            assert page.status_code == 200, (path, page.text)
            assert "<script>alert" not in page.text, path
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in (await served.http.get("/ui/inbox")).text
        missing = await served.http.get("/ui/journeys/<b>nope</b>")
        assert missing.status_code == 404 and "<b>nope" not in missing.text
        nul = await served.http.get("/ui/journeys", params={"user": "a\x00b"})
        assert nul.status_code == 422


def test_the_graph_picture_escapes_node_names_and_highlights_the_current_node() -> None:
    graph = DrawableGraph()
    start, hostile, end = graph.add_node(None, "__start__"), graph.add_node(None, HOSTILE), graph.add_node(None, "end")
    graph.add_edge(start, hostile)
    graph.add_edge(hostile, end, conditional=True)
    graph.add_edge(end, hostile)  # a loop back is drawn too
    svg = graph_svg(graph, [hostile.id])
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    assert svg.count('class="node current"') == 1
    assert svg.count('class="edge') == 3 and 'class="edge conditional"' in svg


@pytest.mark.slow
async def test_the_page_of_a_process_as_long_as_a_thousand_tasks_draws_each_in_its_own_row() -> None:
    """The graph's layers were found by a recursive walk and relaxed edge by edge until nothing changed: the page of
    an instance of a process of 1,100 tasks in a row was a 500 (RecursionError). Each task now has its own row, in
    order, and the page is drawn in one pass."""
    n = 1100  # past Python's 1,000 frames
    tasks = [{"type": "user_task", "id": f"t{i}", "title": "T", "candidate_groups": ["finance"]} for i in range(n)]
    chain = {
        "name": "long_chain",
        "elements": [{"type": "start", "id": "start"}, *tasks, {"type": "end", "id": "end"}],
        "flows": ["start -> t0", *(f"t{i} -> t{i + 1}" for i in range(n - 1)), f"t{n - 1} -> end"],
    }
    async with serving("memory://") as served:
        await served.runtime.processes.deploy(chain)
        started = await served.runtime.processes.start("long_chain", "k-1", {})
        page = await served.http.get(f"/ui/journeys/{started['instance_id']}")
        assert page.status_code == 200, page.text[-500:]
        rows = {
            node: float(y)
            for node, y in re.findall(
                r'<g class="node[^"]*" data-node="([^"]+)"><rect x="[^"]+" y="([^"]+)"', page.text
            )
        }
        ordered = [rows[f"t{i}"] for i in range(n)]
        assert len(rows) >= n and ordered == sorted(set(ordered)), ordered[:5]


async def test_the_journey_page_shows_compensation_and_retry_completes_a_failed_step() -> None:
    async with serving("memory://") as served:
        rt = served.runtime
        rt.agents.register("transform_data", FailingAgent("transform_data", permanent=True), replace=True)
        saga = await rt.saga.design_saga_journey(
            "enterprise_migration",
            {},
            {
                "upload_content": "delete_uploaded_content",
                "analyze_content": "revert_analysis",
                "transform_data": "revert_transformation",
            },
        )
        execution = await rt.saga.execute_saga_journey(saga["journey_id"], "user-1", {})
        for result in ({"files": 3}, {"entities": 2}, {"rows": 10}):
            await rt.saga.advance_saga_step(execution["saga_id"], saga["journey_id"], "user-1", result)
        page = await served.http.get(f"/ui/journeys/{execution['saga_id']}")
        assert page.status_code == 200
        compensation = unescape(re.search(r'<pre id="compensation">(.*?)</pre>', page.text, re.S)[1])  # type: ignore[index]
        assert '"compensated_steps": [\n    "transform_data",\n    "analyze_content",\n    "upload_content"\n  ]' in (
            compensation
        )
        assert 'id="retry"' not in page.text  # compensated: nothing left to retry
        events = re.findall(r'<tr class="event" data-type="([^"]+)"', page.text)
        assert events.index("saga.compensating") < events.index("saga.compensated")

        flaky = FailingAgent("transform_data", permanent=True)
        rt.agents.register("transform_data", flaky, replace=True)
        design = await rt.structured.design_journey("content_migration")
        run = await rt.structured.execute_journey(design["journey_id"], "user-2")
        for result in ({"files": 3}, {"entities": 2}):
            await rt.structured.advance_journey_step(design["journey_id"], "user-2", result)
        with pytest.raises(AgentCallFailedError):
            await rt.structured.advance_journey_step(design["journey_id"], "user-2", {"rows": 1})
        page = await served.http.get(f"/ui/journeys/{run['instance_id']}")
        assert 'id="retry"' in page.text
        rt.agents.register("transform_data", lambda request: {"rows": 1}, replace=True)
        retried = await served.http.post(f"/ui/journeys/{run['instance_id']}/retry")
        assert retried.status_code == 303
        status = await rt.structured.get_journey_status(design["journey_id"], "user-2")
        assert status["status"] == "in_progress" and "transform_data" in status["completed_steps"]
        again = await served.http.post(f"/ui/journeys/{run['instance_id']}/retry")
        assert again.status_code == 409


async def test_the_processes_page_shows_versions_weights_and_instances_per_version() -> None:
    async with serving("memory://") as served:
        rt = served.runtime
        spec = expense()
        await rt.processes.deploy(spec)
        await rt.processes.start("expense", "exp-1")
        await rt.processes.deploy({**spec, "version": 2})
        await rt.processes.set_rollout("expense", {1: 25, 2: 75})
        await rt.processes.start("expense", "exp-2", version=2)
        await rt.processes.start("expense", "exp-3", version=2)
        page = (await served.http.get("/ui/processes")).text
        rows = re.findall(r"<tr><td>v(\d)</td><td>[^<]*</td><td>([\d.]+)%</td>\s*<td>(.*?)<a", page, re.S)
        shown = {v: (float(w), re.findall(r"(\w+): (\d+)", cells)) for v, w, cells in rows}
        assert shown == {"1": (25.0, [("in_progress", "1")]), "2": (75.0, [("in_progress", "2")])}

        [task] = await rt.processes.inbox.list_tasks(instance_id=(await rt.processes.instances())[0]["instance_id"])
        # A process is drawn from its own sequence flows (its LangGraph nodes route by Command, undrawn).
        graph = (await served.http.get(f"/ui/journeys/{task['instance_id']}")).text
        edges = re.findall(r'data-source="([^"]+)" data-target="([^"]+)"', graph)
        assert edges == [("start", "approve"), ("approve", "end")]
        assert re.findall(r'<g class="node current" data-node="([^"]+)"', graph) == ["approve"]
        bad = await served.http.post(f"/ui/tasks/{task['task_id']}/complete", data={"payload": "[1]"})
        assert bad.status_code == 422 and "JSON object" in bad.text
        outsider = await served.http.post(f"/ui/tasks/{task['task_id']}/complete", data={"payload": "{}", "user": "x"})
        assert outsider.status_code == 403  # not in the task's candidate groups
        done = await served.http.post(
            f"/ui/tasks/{task['task_id']}/complete", data={"payload": "{}", "user": "ana", "groups": "finance"}
        )
        assert done.status_code == 303 and done.headers["location"] == f"/ui/journeys/{task['instance_id']}"
        assert (await rt.processes.status(task["instance_id"]))["status"] == "completed"


async def test_cancel_closes_sessions_and_stops_processes_and_is_refused_where_a_journey_runs_to_its_end() -> None:
    async with serving("memory://") as served:
        rt, http = served.runtime, served.http
        mvp = await rt.mvp.start_mvp_journey("user-1", "content")
        session_id = mvp["session"]["session_id"]
        assert 'id="cancel"' in (await http.get(f"/ui/journeys/{session_id}")).text
        closed = await http.post(f"/ui/journeys/{session_id}/cancel", data={"reason": "done for today"})
        assert closed.status_code == 303
        assert (await rt.mvp.sessions.get_session_progress(session_id))["status"] == "closed"
        assert 'id="cancel"' not in (await http.get(f"/ui/journeys/{session_id}")).text

        await rt.processes.deploy_template("customer_onboarding")
        rt.agents.register("crm.capture_lead", lambda request: {"score": 80}, replace=True)
        view = await rt.processes.start("customer_onboarding", business_key="cust-1")
        page = (await http.get(f"/ui/journeys/{view['instance_id']}")).text
        assert re.search(r'<tr class="timer scheduled"><td>trial_period</td>', page)
        assert (await http.post(f"/ui/journeys/{view['instance_id']}/cancel")).status_code == 303
        assert (await rt.processes.status(view["instance_id"]))["status"] == "cancelled"
        page = (await http.get(f"/ui/journeys/{view['instance_id']}")).text
        assert '<tr class="timer scheduled">' not in page  # its timer went with it

        design = await rt.structured.design_journey("content_migration")
        run = await rt.structured.execute_journey(design["journey_id"], "user-1")
        assert 'id="cancel"' not in (await http.get(f"/ui/journeys/{run['instance_id']}")).text
        refused = await http.post(f"/ui/journeys/{run['instance_id']}/cancel")
        assert refused.status_code == 409 and "runs to its end" in refused.text
        assert (await http.post("/ui/journeys/nope/cancel")).status_code == 404


def test_the_completion_form_starts_from_the_response_schema_whatever_its_shape() -> None:
    def skeleton(schema: object) -> str:
        return data.TaskLine({"response_schema": schema}, "no SLA").skeleton

    typed = {"required": ["ok"], "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer"}, "x": True}}
    assert skeleton(typed) == '{"ok": false, "n": 0, "x": null}'
    assert skeleton(None) == skeleton(True) == skeleton({"properties": []}) == "{}"


async def test_any_unfinished_journey_is_terminated_from_its_page_and_a_lifecycle_offers_cancel() -> None:
    """A structured journey runs to its end, so it has no cancel; any journey that has not ended can be
    terminated from its page (its reason logged), after which neither action is offered. An active lifecycle
    journey offers cancel: its index status is its stage's ("active"), which the button was hidden for."""
    async with serving("memory://") as served:
        rt, http = served.runtime, served.http
        lifecycle = await rt.lifecycle.start_journey("client-1", metrics=READY_TO_START)
        page = (await http.get(f"/ui/journeys/{lifecycle['journey_id']}")).text
        assert 'id="cancel"' in page and 'id="terminate"' in page

        design = await rt.structured.design_journey("content_migration")
        run = await rt.structured.execute_journey(design["journey_id"], "user-1")
        path = f"/ui/journeys/{run['instance_id']}"
        page = (await http.get(path)).text
        assert 'id="cancel"' not in page and 'id="terminate"' in page
        stopped = await http.post(f"{path}/terminate", data={"reason": "the client left"})
        assert stopped.status_code == 303
        assert (await rt.structured.run_status(run["instance_id"]))["status"] == "terminated"
        assert (await rt.history(run["instance_id"]))[-1].payload["reason"] == "the client left"
        page = (await http.get(path)).text
        assert 'id="cancel"' not in page and 'id="terminate"' not in page
        again = await http.post(f"{path}/terminate")
        assert again.status_code == 409 and "terminated" in again.text
        assert (await http.post("/ui/journeys/nope/terminate")).status_code == 404


async def test_a_process_retried_from_the_dashboard_says_who_retried_it() -> None:
    """The dashboard's retry of a failed process logged ``process.retried`` with no one in it (nor did the API's
    without variables): the audit could not tell who ran it again. Now it names the operator, as the API's does."""
    async with serving("memory://", auth=True) as served:
        rt, http = served.runtime, served.http
        switch = {"down": True}

        def ship(_request: object) -> dict[str, str]:
            if switch["down"]:
                raise AgentCallFailedError("the carrier is down", intent="ship")
            return {"tracking": "T-1"}

        rt.agents.register("ship", ship, replace=True)
        spec = {
            "name": "parcel",
            "elements": [
                {"type": "start", "id": "start"},
                {"type": "service_task", "id": "ship", "agent": "ship"},
                {"type": "end", "id": "end"},
            ],
            "flows": ["start -> ship", "ship -> end"],
        }
        with acting_as(Owner("otto")):
            await rt.processes.deploy(spec)
            view = await rt.processes.start("parcel", "p-1")
        assert view["status"] == "failed"
        await http.post("/ui/login", data={"api_key": "operator-key", "next": "/ui/journeys"})
        switch["down"] = False
        retried = await http.post(f"/ui/journeys/{view['instance_id']}/retry", headers={"origin": "http://journeys"})
        assert retried.status_code == 303, retried.text
        assert (await rt.processes.status(view["instance_id"]))["status"] == "completed"
        [logged] = [e for e in await rt.processes.history(view["instance_id"]) if e.type == "process.retried"]
        assert logged.payload["by"] == "otto"


async def test_a_structured_journey_or_saga_retried_from_the_dashboard_says_who_retried_it() -> None:
    """The dashboard's retry of a failed structured journey or saga logged ``step.retried`` with no one in it,
    and ran outside the operator's identity (the API's did the same): the audit could not tell who ran the step
    again. Now it names the operator, as a process's retry does."""
    async with serving("memory://", auth=True) as served:
        rt, http = served.runtime, served.http
        rt.agents.register("transform_data", FailingAgent("transform_data", permanent=True), replace=True)
        with acting_as(Owner("otto")):
            design = await rt.structured.design_journey("content_migration")
            run = await rt.structured.execute_journey(design["journey_id"], "otto")
            for result in ({"files": 3}, {"entities": 2}):
                await rt.structured.advance_journey_step(design["journey_id"], "otto", result)
            with pytest.raises(AgentCallFailedError):
                await rt.structured.advance_journey_step(design["journey_id"], "otto", {"rows": 1})
        await http.post("/ui/login", data={"api_key": "operator-key", "next": "/ui/journeys"})
        rt.agents.register("transform_data", lambda request: {"rows": 1}, replace=True)
        retried = await http.post(f"/ui/journeys/{run['instance_id']}/retry", headers={"origin": "http://journeys"})
        assert retried.status_code == 303, retried.text
        [logged] = await rt.store.events.list(run["instance_id"], types=["step.retried"])
        assert logged.payload["by"] == "otto"


async def test_a_session_standing_at_a_failed_action_is_retried_from_the_dashboard_by_its_operator() -> None:
    """A session's area update whose events could not be written (once) leaves it standing at a failed task. The API
    retries it (a run without input); the dashboard offered no retry for sessions and lifecycles (409 NotRetryable).
    Now its page offers one, which applies the update once and logs ``journey.retried`` naming the operator."""
    from checkpoints.errors import ConcurrentUpdateError
    from tests.test_session import AREAS

    async with serving("memory://", auth=True) as served:
        rt, http = served.runtime, served.http
        log = rt.store.events
        append, tries = log.append, []

        async def fails_once(instance_id: str, events: Any, **options: Any) -> Any:
            if any(e.type == "area.updated" for e in events):
                tries.append(1)
                if len(tries) == 1:
                    raise ConcurrentUpdateError("the session's events could not be written")
            return await append(instance_id, events, **options)

        log.append = fails_once  # type: ignore[method-assign]  # a fault injected into this runtime's log
        with acting_as(Owner("otto")):
            session_id = str((await rt.session.start_session("ana", {"areas": AREAS}))["session_id"])
            with pytest.raises(ConcurrentUpdateError):
                await rt.session.update_area_state(session_id, "content", {"files_uploaded": True})
        await http.post("/ui/login", data={"api_key": "operator-key", "next": "/ui/journeys"})
        page = await http.get(f"/ui/journeys/{session_id}")
        assert 'id="retry"' in page.text, page.text
        retried = await http.post(f"/ui/journeys/{session_id}/retry", headers={"origin": "http://journeys"})
        assert retried.status_code == 303, retried.text
        progress = await rt.session.get_session_progress(session_id)
        assert progress["areas"]["content"]["state"]["files_uploaded"] is True, progress
        assert len(tries) == 2
        [logged] = [e for e in await rt.history(session_id) if e.type == "journey.retried"]
        assert logged.payload["by"] == "otto"
        page = await http.get(f"/ui/journeys/{session_id}")
        assert 'id="retry"' not in page.text  # nothing failed any more


async def test_a_task_completed_from_the_dashboard_gets_the_api_s_checks_of_its_payload(store_url: str) -> None:
    """The completion form's payload was read with json.loads alone: an integer of 5,000 digits was a 500 (an
    error page saying only "Internal Server Error"). It is checked as a JSON body of the API is: each hostile
    payload gets an error page saying what is wrong, the task stays open, and a good payload completes it."""
    async with serving(store_url) as served:
        rt = served.runtime
        await rt.processes.deploy(expense())
        view = await rt.processes.start("expense", "exp-1")
        [task] = await rt.processes.inbox.list_tasks(group="finance")
        complete = f"/ui/tasks/{task['task_id']}/complete"
        for payload, status, says in (
            ('{"amount": ' + "9" * 5000 + "}", 422, "number out of range"),
            ('{"amount": NaN}', 422, "numbers must be finite"),
            ('{"note": "\\ud800"}', 422, "lone surrogate"),
            ("[" * 70 + "]" * 70, 422, "deeper than 64 levels"),
            ('{"amount": ', 400, "not valid JSON"),
        ):
            form = {"payload": payload, "user": "ana", "groups": "finance"}
            page = await served.http.post(complete, data=form)
            assert page.status_code == status and says in unescape(page.text), (payload[:20], page.text[-600:])
        assert [t["task_id"] for t in await rt.processes.inbox.list_tasks(group="finance")] == [task["task_id"]]
        form = {"payload": '{"approved": true}', "user": "ana", "groups": "finance"}
        done = await served.http.post(complete, data=form)
        assert done.status_code == 303
        assert (await rt.processes.status(view["instance_id"]))["status"] == "completed"

"""Prometheus metrics on /metrics: counters hooked into the one instance lifecycle and the one agent-call
path, gauges read from the database, and multiprocess mode summing what `journeys worker` processes did."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agents import AgentRegistry, AgentRequest, FailingAgent, RateLimit, RetrySettings
from checkpoints.errors import JourneyError
from checkpoints.figures import live_figures
from checkpoints.guards import CircuitSettings
from checkpoints.redaction import redact_label
from graphs import JourneyRuntime
from nodes.telemetry import METRICS, circuit_states, exposition, rejected_by_bulkhead, timers_fired
from server.app import create_app
from server.queues.procrastinate import ensure_schema
from server.settings import ApiKey, Settings
from tests.server_support import free_port, serving, start_worker, stop_worker
from tests.test_connection_budget import start_api, wait_until_serving

FRESH_STARTS = 240  # seconds for three processes started afresh at once to answer, on a loaded box
SAGA_HANDLERS = {
    "upload_content": "delete_uploaded_content",
    "analyze_content": "revert_analysis",
    "transform_data": "revert_transformation",
}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, by (name, sorted labels)."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def counted(name: str, **labels: str) -> float:
    return METRICS.get_sample_value(name, labels) or 0.0


async def test_instances_are_counted_by_pattern_whatever_moved_them(store_url: str) -> None:
    before = {
        key: counted(f"journeys_{key[0]}_total", pattern=key[1])
        for key in (("started", "structured"), ("started", "saga"), ("compensated", "saga"), ("failed", "structured"))
    }
    agent_calls = counted("journeys_agent_call_duration_seconds_count", intent="upload_content", outcome="ok")
    async with JourneyRuntime.open(store_url) as runtime:
        runtime.agents.register("transform_data", FailingAgent("transform_data", permanent=True), replace=True)
        saga = await runtime.saga.design_saga_journey("enterprise_migration", {}, compensation_handlers=SAGA_HANDLERS)
        execution = await runtime.saga.execute_saga_journey(saga["journey_id"], "u1", {})
        for result in ({"files": 3}, {"entities": 2}, {"rows": 10}):
            status = await runtime.saga.advance_saga_step(
                saga_id=execution["saga_id"], journey_id=saga["journey_id"], user_id="u1", step_result=result
            )
        assert status["status"] == "compensated"
        journey = await runtime.structured.design_journey("content_migration", {})
        await runtime.structured.execute_journey(journey["journey_id"], "u1", {})
        await runtime.structured.advance_journey_step(journey["journey_id"], "u1", {"files": 1})
        # u2's journey fails at transform_data and stands there for an operator's retry: not open, not ended.
        await runtime.structured.execute_journey(journey["journey_id"], "u2", {})
        with pytest.raises(JourneyError):
            for result in ({"files": 1}, {"entities": 2}, {"rows": 10}):
                await runtime.structured.advance_journey_step(journey["journey_id"], "u2", result)
        figures = await live_figures(runtime.store.backend, runtime.store.clock.now())
    assert counted("journeys_started_total", pattern="saga") == before["started", "saga"] + 1
    assert counted("journeys_started_total", pattern="structured") == before["started", "structured"] + 2
    assert counted("journeys_compensated_total", pattern="saga") == before["compensated", "saga"] + 1
    assert counted("journeys_failed_total", pattern="structured") == before["failed", "structured"] + 1
    # upload_content is called by the saga's first step and each journey's: three calls, each timed once
    assert counted("journeys_agent_call_duration_seconds_count", intent="upload_content", outcome="ok") == (
        agent_calls + 3
    )
    assert counted("journeys_agent_call_duration_seconds_count", intent="transform_data", outcome="error") >= 1
    assert counted("journeys_step_duration_seconds_count", pattern="saga", node="upload_content") >= 1
    assert figures.active == {("structured", "in_progress"): 1}  # the saga ended
    assert figures.awaiting_retry == {"structured": 1}
    found = samples(exposition(figures, {}).decode())
    assert found["journeys_awaiting_retry", (("pattern", "structured"),)] == 1
    assert ("journeys_active", (("pattern", "structured"), ("status", "failed"))) not in found


async def test_the_exposition_has_every_gauge_and_redacted_labels() -> None:
    rejected_by_bulkhead("pay password=hunter2")
    timers_fired([0.5, 2.0])
    async with JourneyRuntime.open("memory://") as runtime:
        await runtime.processes.deploy_template("customer_onboarding")
        await runtime.processes.start("customer_onboarding", business_key="cust-1")
        figures = await live_figures(runtime.store.backend, runtime.store.clock.now())
    found = samples(exposition(figures, {"crm.capture_lead": "open"}).decode())
    assert found["journeys_active", (("pattern", "process"), ("status", "in_progress"))] == 1  # on its timer
    assert found["journeys_queue_depth", (("queue", "runs"),)] == 0
    assert found["journeys_queue_depth", (("queue", "timers"),)] == 0
    assert found["journeys_user_tasks_open", ()] == 0
    assert found["journeys_user_tasks_sla_breached", ()] == 0
    assert found["journeys_circuit_state", (("intent", "crm.capture_lead"), ("state", "open"))] == 1
    assert found["journeys_circuit_state", (("intent", "crm.capture_lead"), ("state", "closed"))] == 0
    assert found["journeys_timer_lateness_seconds_count", ()] >= 2
    rejected = [labels for name, labels in found if name == "journeys_bulkhead_rejections_total"]
    assert rejected and all("hunter2" not in value for labels in rejected for _key, value in labels)
    assert redact_label("card 4111 1111 1111 1111 for ana@example.com") == "card [REDACTED] for [REDACTED]"


async def test_open_user_tasks_and_sla_breaches_are_read_from_the_database() -> None:
    from datetime import timedelta

    from checkpoints import VirtualClock

    clock = VirtualClock()
    async with JourneyRuntime.open("memory://", clock=clock) as runtime:
        runtime.agents.register("notify", lambda _request: {})  # what an SLA without on_timeout tells of its breach
        await runtime.processes.deploy(
            {
                "name": "expense",
                "elements": [
                    {"type": "start", "id": "start"},
                    {
                        "type": "user_task",
                        "id": "approve",
                        "title": "Approve",
                        "candidate_groups": ["finance"],
                        "sla": "PT4H",
                    },
                    {"type": "end", "id": "end"},
                ],
                "flows": ["start -> approve", "approve -> end"],
            }
        )
        for key in ("e1", "e2"):
            await runtime.processes.start("expense", business_key=key)
        assert (await live_figures(runtime.store.backend, clock.now())).sla_breached_user_tasks == 0
        clock.advance(timedelta(hours=5))
        figures = await live_figures(runtime.store.backend, clock.now())
    assert (figures.open_user_tasks, figures.sla_breached_user_tasks) == (2, 2)


KEYS = {
    "reader": ApiKey("rita", frozenset({"read", "journeys"})),
    "other-reader": ApiKey("olga", frozenset({"read", "journeys"}), tenant="other"),
    "scraper": ApiKey("prometheus", frozenset({"metrics"})),
    "root": ApiKey("root", frozenset({"admin"})),
}


@pytest.fixture
def keyed_server(durable_url: str) -> Iterator[str]:
    with serving(create_app(Settings(database_url=durable_url, api_keys=dict(KEYS)))) as base:
        yield base


@pytest.mark.slow
async def test_metrics_answer_to_the_operators_metrics_scope_only(keyed_server: str) -> None:
    """Metrics count every tenant's journeys (open ones by pattern, open user tasks, node and intent labels):
    an operator's view. A tenant's reader, of this tenant or another, is refused (403 naming the scope);
    a key with the ``metrics`` scope, or an admin, reads them."""
    async with httpx.AsyncClient(base_url=keyed_server, timeout=60) as http:
        started = await http.post("/journeys/mvp", json={"user_id": "rita"}, headers={"x-api-key": "reader"})
        assert started.status_code < 300, started.text
        assert (await http.get("/metrics")).status_code == 401
        for reader in ("reader", "other-reader"):
            refused = await http.get("/metrics", headers={"x-api-key": reader})
            assert refused.status_code == 403 and "'metrics'" in refused.json()["detail"], refused.text
            assert "journeys_active" not in refused.text
        for operator in ("scraper", "root"):
            answer = await http.get("/metrics", headers={"x-api-key": operator})
            assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
            assert "journeys_queue_depth" in answer.text and 'journeys_active{pattern="mvp"' in answer.text


@pytest.mark.slow
async def test_the_apis_metrics_sum_what_its_worker_processes_did(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`journeys serve --distributed` executes no run itself: every count below was made in a `journeys
    worker` process, and reaches the API's /metrics through prometheus-client's multiprocess directory."""
    shared = tmp_path / "prometheus"
    shared.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(shared))  # inherited by both processes
    ensure_schema(postgres_url)
    port, worker_port, log = free_port(), free_port(), tmp_path / "api.log"
    api = start_api(postgres_url, port, log)
    workers = [start_worker(postgres_url, "--metrics-port", str(worker_port)), start_worker(postgres_url)]
    try:
        # The three start afresh (prometheus-client reads the directory as it is imported: tests/forked.py), each
        # paying ~5 CPU-s of imports at once: on a box at load 20 the API had not answered in 60 s.
        wait_until_serving(api, port, log, seconds=FRESH_STARTS)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
            for user in ("u1", "u2", "u3"):
                thread = (await http.post("/threads", json={})).json()["thread_id"]
                body = {"assistant_id": "structured", "input": {"journey_type": "content_migration", "user_id": user}}
                started = await http.post(f"/threads/{thread}/runs/wait", json=body)
                assert started.status_code == 200, started.text
                resumed = await http.post(
                    f"/threads/{thread}/runs/wait",
                    json={"assistant_id": "structured", "command": {"resume": {"files": 1}}},
                )
                assert resumed.status_code == 200, resumed.text
            found = samples((await http.get("/metrics")).text)
            from_worker = samples((await http.get(f"http://127.0.0.1:{worker_port}/metrics")).text)
    finally:
        for worker in workers:
            stop_worker(worker)
        api.terminate()
        api.wait(timeout=15)
    assert len(list(shared.glob("*.db"))) >= 2  # the workers' own files
    assert found["journeys_started_total", (("pattern", "structured"),)] == 3
    ok = (("intent", "upload_content"), ("outcome", "ok"))
    assert found["journeys_agent_call_duration_seconds_count", ok] == 3
    assert found["journeys_active", (("pattern", "structured"), ("status", "in_progress"))] == 3
    assert found["journeys_queue_depth", (("queue", "runs"),)] == 0
    assert from_worker["journeys_started_total", (("pattern", "structured"),)] == 3  # the host's, summed


async def test_the_circuit_gauge_reads_the_shared_breaker(store_url: str) -> None:
    async with JourneyRuntime.open(store_url) as runtime:
        settings = CircuitSettings(failure_threshold=1)
        await runtime.store.breakers.admit("crm.capture_lead", settings)
        await runtime.store.breakers.record("crm.capture_lead", settings, succeeded=False)
        assert await circuit_states(runtime.store) == {"crm.capture_lead": "open"}


async def test_bulkhead_and_rate_limit_refusals_of_the_agent_call_path_are_counted(store_url: str) -> None:
    release, entered = asyncio.Event(), asyncio.Event()

    async def stalled(request: AgentRequest) -> dict[str, object]:
        entered.set()
        await release.wait()
        return {"done": True}

    agents = AgentRegistry()
    agents.register("metered", lambda request: {"ok": True}, rate_limit=RateLimit(per_second=0.001, burst=1))
    agents.register("erp_stalled", stalled, pool="erp-metrics", concurrency=1)
    agents.register("erp_other", lambda request: {"ok": True}, pool="erp-metrics")
    once = RetrySettings(max_attempts=1)
    before = {name: counted(f"journeys_{name}_rejections_total", intent=i) for name, i in
              (("rate_limit", "metered"), ("bulkhead", "erp_other"))}  # fmt: skip

    async def run(rt: JourneyRuntime, intent: str, user: str) -> dict[str, object]:
        spec = {"journey_type": f"metered_{intent}", "steps": [{"step_id": "call", "agent": intent, "mode": "auto"}]}
        design = await rt.structured.design_journey(f"metered_{intent}", spec=spec)
        try:
            return await rt.structured.execute_journey(design["journey_id"], user, {})
        except JourneyError as error:
            return {"status": "failed", "error": error.code}

    async with JourneyRuntime.open(store_url, agents=agents, retry=once, bulkhead_wait=0.05) as rt:
        assert (await run(rt, "metered", "a"))["status"] == "completed"
        assert (await run(rt, "metered", "b"))["status"] == "failed"  # the bucket holds one call
        held = asyncio.create_task(run(rt, "erp_stalled", "c"))
        await asyncio.wait_for(entered.wait(), 10)
        assert (await run(rt, "erp_other", "d"))["status"] == "failed"  # the pool's one slot is taken
        release.set()
        assert (await asyncio.wait_for(held, 10))["status"] == "completed"
        figures = await live_figures(rt.store.backend, rt.store.clock.now())
        found = samples(exposition(figures, {}).decode())
    assert found["journeys_rate_limit_rejections_total", (("intent", "metered"),)] == before["rate_limit"] + 1
    assert found["journeys_bulkhead_rejections_total", (("intent", "erp_other"),)] == before["bulkhead"] + 1

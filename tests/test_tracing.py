"""One trace per journey: a span per run, node and agent call, and every run of an instance in the same
trace, whether a person resumes it days later or another process (a worker) runs it."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from langchain_core.runnables.config import var_child_runnable_config
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agents import AgentRequest
from checkpoints import VirtualClock
from graphs import JourneyRuntime
from nodes import telemetry
from nodes.telemetry import journey_context, trace_id_of
from server.runs.executor import RunExecutor
from server.runs.store import RunStore


def of_instance(exporter: InMemorySpanExporter, instance_id: str) -> list[ReadableSpan]:
    trace_id = trace.get_current_span(journey_context(instance_id)).get_span_context().trace_id
    return [span for span in exporter.get_finished_spans() if span.context.trace_id == trace_id]


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


async def test_a_journey_resumed_days_later_is_one_trace(store_url: str, spans: InMemorySpanExporter) -> None:
    clock = VirtualClock()
    async with JourneyRuntime.open(store_url, clock=clock) as runtime:
        journey = await runtime.structured.design_journey("content_migration", {})
        started = await runtime.structured.execute_journey(journey["journey_id"], "ana", {})
        instance_id = started["instance_id"]
        clock.advance(timedelta(days=3))  # the person answers three days later
        await runtime.structured.advance_journey_step(journey["journey_id"], "ana", {"files": 2})

    found = of_instance(spans, instance_id)
    journey_span = trace.get_current_span(journey_context(instance_id)).get_span_context().span_id
    runs = [s for s in found if s.name == "journey.run"]
    assert len(runs) == 2 and {parent_of(s) for s in runs} == {journey_span}
    assert {s.attributes["journey.instance_id"] for s in runs} == {instance_id}  # type: ignore[index]
    first, second = sorted(runs, key=lambda s: s.start_time or 0)
    nodes = {s.context.span_id: s for s in found if s.name == "journey.node"}
    by_run = {
        run.context.span_id: sorted(
            n.attributes["journey.node"] for n in nodes.values() if parent_of(n) == run.context.span_id
        )
        for run in runs
    }  # type: ignore[misc]
    assert by_run[first.context.span_id] == ["upload_content.await"]  # it stopped at the human step
    assert by_run[second.context.span_id] == ["analyze_content.await", "upload_content", "upload_content.await"]
    [call] = [s for s in found if s.name == "agent.call"]
    node = nodes[parent_of(call)]  # type: ignore[index]
    assert node.attributes["journey.node"] == "upload_content" and parent_of(node) == second.context.span_id
    assert call.attributes["agent.intent"] == "upload_content"
    assert all(s.context.trace_id == found[0].context.trace_id for s in found)
    assert trace.format_trace_id(found[0].context.trace_id) == trace_id_of(instance_id)


async def test_a_run_handed_to_another_process_joins_the_journeys_trace(
    durable_url: str, spans: InMemorySpanExporter
) -> None:
    """The API process starts the journey; a run of its thread is then executed by a second runtime on
    the same database (what a `journeys worker` does with a run the API queued), by the server's executor."""
    async with JourneyRuntime.open(durable_url) as api:
        journey = await api.structured.design_journey("content_migration", {})
        instance_id = (await api.structured.execute_journey(journey["journey_id"], "ana", {}))["instance_id"]
        runs = RunStore(api.store.backend, api.store.clock)
        thread = await runs.create_thread(None, {}, "local")
        await runs.bind(thread.thread_id, "structured", instance_id)
        run = await runs.create_run(
            thread_id=thread.thread_id,
            assistant_id="structured",
            kind="resume",
            input=None,
            command={"resume": {"files": 1}},
            stream_modes=(),
            multitask_strategy="reject",
            metadata={},
            principal="local",
        )
    async with JourneyRuntime.open(durable_url) as worker:
        executed = await RunExecutor(worker, RunStore(worker.store.backend, worker.store.clock)).execute(run.run_id)
    assert executed is not None and executed.status == "success", executed

    found = of_instance(spans, instance_id)
    journey_span = trace.get_current_span(journey_context(instance_id)).get_span_context().span_id
    runs_spans = [s for s in found if s.name == "journey.run"]
    assert len(runs_spans) == 2 and {parent_of(s) for s in runs_spans} == {journey_span}
    [handed] = [s for s in runs_spans if "journey.run_id" in (s.attributes or {})]
    assert handed.attributes["journey.run_id"] == run.run_id  # type: ignore[index]
    [call] = [s for s in found if s.name == "agent.call"]
    assert {s.context.span_id: s for s in found}[parent_of(call)].attributes["journey.node"] == "upload_content"  # type: ignore[index]


class RecordingTracer:
    """The module's tracer, with the name of every span started through it recorded."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self.tracer = tracer
        self.started: list[str] = []

    def start_span(self, name: str, *args: Any, **kwargs: Any) -> trace.Span:
        self.started.append(name)
        return self.tracer.start_span(name, *args, **kwargs)

    def start_as_current_span(self, name: str, *args: Any, **kwargs: Any) -> Any:
        self.started.append(name)
        return self.tracer.start_as_current_span(name, *args, **kwargs)


async def test_without_a_tracer_provider_nodes_and_calls_start_no_span_and_are_still_measured(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no provider set (tracing not configured), a run starts its own span alone (its trace id is in
    the log lines), no span per node or agent call, while both histograms still time every step. A run asks
    for the provider once: its agent calls take its answer (OpenTelemetry's look raises and catches a KeyError)."""
    asked: list[None] = []

    def provider() -> trace.TracerProvider:
        asked.append(None)
        return trace.ProxyTracerProvider()

    monkeypatch.setattr(trace, "get_tracer_provider", provider)
    recording = RecordingTracer(telemetry._tracer)
    monkeypatch.setattr(telemetry, "_tracer", recording)

    def count(name: str, **labels: str) -> float:
        return telemetry.METRICS.get_sample_value(name, labels) or 0.0

    steps_before = count("journeys_step_duration_seconds_count", pattern="structured", node="upload_content")
    calls_before = count("journeys_agent_call_duration_seconds_count", intent="upload_content", outcome="ok")
    async with JourneyRuntime.open(store_url) as runtime:
        journey = await runtime.structured.design_journey("content_migration", {})
        await runtime.structured.execute_journey(journey["journey_id"], "ana", {})
        await runtime.structured.advance_journey_step(journey["journey_id"], "ana", {"files": 2})
    assert recording.started == ["journey.run", "journey.run"]
    assert len(asked) == 2  # once a run, not once more for the agent call
    assert count("journeys_step_duration_seconds_count", pattern="structured", node="upload_content") == (
        steps_before + 1
    )
    assert count("journeys_agent_call_duration_seconds_count", intent="upload_content", outcome="ok") == (
        calls_before + 1
    )


async def test_a_runs_nodes_are_spanned_and_timed_with_no_langchain_callback_handler(
    store_url: str, spans: InMemorySpanExporter
) -> None:
    """Each node spans and times itself (``observed_node``, as the kernel compiles it): the run is given no
    LangChain callback handler, which LangGraph called at the start and end of the run and of each of its tasks.
    The agent calls hang under their node's span all the same, and the step histogram counts every step."""
    spec = {"journey_type": "two", "steps": [{"step_id": s, "mode": "auto", "agent": "work"} for s in ("s0", "s1")]}
    handlers: list[list[object]] = []

    async def work(request: AgentRequest) -> dict[str, Any]:
        manager = (var_child_runnable_config.get() or {}).get("callbacks")  # LangGraph's, for the node at work
        handlers.append(list(getattr(manager, "handlers", [])))
        return {"ok": True}

    def steps_counted(node: str) -> float:
        labels = {"pattern": "structured", "node": node}
        return telemetry.METRICS.get_sample_value("journeys_step_duration_seconds_count", labels) or 0.0

    before = {node: steps_counted(node) for node in ("s0", "s1")}
    async with JourneyRuntime.open(store_url) as runtime:
        runtime.agents.register("work", work)
        design = await runtime.structured.design_journey("two", spec=spec)
        done = await runtime.structured.execute_journey(design["journey_id"], "ana")
    assert done["status"] == "completed"
    assert handlers == [[], []]
    assert {node: steps_counted(node) - before[node] for node in ("s0", "s1")} == {"s0": 1, "s1": 1}
    found = of_instance(spans, done["instance_id"])
    [run] = [s for s in found if s.name == "journey.run"]
    nodes = {s.context.span_id: s for s in found if s.name == "journey.node"}
    named = {span_id: str((span.attributes or {})["journey.node"]) for span_id, span in nodes.items()}
    assert sorted(named[i] for i, n in nodes.items() if parent_of(n) == run.context.span_id) == ["s0", "s1"]
    calls = [s for s in found if s.name == "agent.call"]
    assert sorted(named[parent_of(c) or 0] for c in calls) == ["s0", "s1"]

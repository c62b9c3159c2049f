"""The client lifecycle pattern, as registered: sandbox → pilot → production with criteria gates, units
of work and rollbacks.

On the Agent Server API the first run starts a client's journey (the thread id is the journey id);
later runs take a lifecycle event with its options, metrics, or both (the metrics recorded first), as
``command.resume``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from langchain_core.runnables import RunnableConfig
from langgraph.graph import StateGraph

from checkpoints.index import Instance
from graphs.kernel.designs import DesignKind
from graphs.kernel.identifiers import CLIENT_ID, METRIC_NAME, string_schema
from graphs.kernel.patterns import (
    Assistant,
    Pattern,
    RunContext,
    mapping_input,
    register,
    retry_failed,
    string_input,
)
from graphs.lifecycle.catalog import default_lifecycle_spec
from graphs.lifecycle.machine import LifecycleSpec, build_lifecycle_graph, validate_lifecycle
from graphs.lifecycle.orchestrator import LifecycleOrchestrator

if TYPE_CHECKING:
    from graphs.runtime import JourneyRuntime

METRICS = {"type": "object", "propertyNames": {"maxLength": METRIC_NAME}, "description": "values by metric name"}


async def _start(ctx: RunContext, data: Mapping[str, Any]) -> None:
    await ctx.bind(ctx.thread_id)  # the lifecycle lets us choose the journey id: the thread's own
    await ctx.runtime.lifecycle.start_journey(
        string_input(data, "client_id"),
        journey_id=ctx.thread_id,
        metadata=mapping_input(data.get("metadata"), "metadata"),
        metrics=mapping_input(data.get("metrics"), "metrics"),
        run_options=ctx.options,
    )


async def _resume(ctx: RunContext, instance_id: str, value: Any) -> None:
    """An event (with its options), metrics, or both: the metrics are recorded first, so that an event sent with
    them (a promotion) is judged on them, as after a run of their own (which may have rolled the journey back)."""
    request = mapping_input(value, "command.resume")
    if "metrics" in request:
        metrics = mapping_input(request["metrics"], "metrics")
        await ctx.runtime.lifecycle.record_metrics(instance_id, metrics, run_options=ctx.options)
        if "event" not in request:
            return
    options = mapping_input(request.get("options"), "options")
    event = string_input(request, "event")
    await ctx.runtime.lifecycle.transition(instance_id, event, run_options=ctx.options, **options)


def _entrypoint(runtime: JourneyRuntime, _config: RunnableConfig) -> StateGraph[Any]:
    return build_lifecycle_graph(default_lifecycle_spec(), runtime.engine.services)


async def _status(runtime: JourneyRuntime, instance: Instance) -> dict[str, Any]:
    return await runtime.lifecycle.get_journey_state(instance.instance_id)


register(
    Pattern(
        "lifecycle",
        Assistant(
            "lifecycle",
            "Client lifecycle: sandbox → pilot → production",
            _start,
            _resume,
            {
                "type": "object",
                "required": ["client_id"],
                "properties": {
                    "client_id": string_schema(CLIENT_ID),
                    "metadata": {"type": "object"},
                    "metrics": METRICS,
                },
                "additionalProperties": False,  # a misspelt field would be dropped without a word: refused
            },
            {
                "type": "object",
                "properties": {"event": {"type": "string"}, "options": {"type": "object"}, "metrics": METRICS},
                "additionalProperties": False,
            },
            retry=retry_failed,
        ),
        _entrypoint,
        design=DesignKind(LifecycleSpec, validate_lifecycle, build_lifecycle_graph),
        attribute="lifecycle",
        orchestrator=lambda deps: LifecycleOrchestrator(deps.designs),
        status=_status,
    )
)

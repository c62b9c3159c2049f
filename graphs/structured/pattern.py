"""The structured and saga patterns, as registered: steps in an enforced order, and the saga that
compensates them on failure.

On the Agent Server API a thread's first run starts a journey of the design ``input`` makes (a template's
``journey_type`` or an explicit ``spec``), stored once per content and shared by every thread that starts
the same journey; the journey is the thread's own, under a new instance id. Later runs take the step
result as ``command.resume``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from typing import TYPE_CHECKING, Any

from langchain_core.runnables import RunnableConfig
from langgraph.graph import StateGraph
from langgraph.types import StateSnapshot

from checkpoints.errors import DuplicateInstanceError
from checkpoints.index import Instance
from graphs.kernel.designs import DesignKind, new_instance_id
from graphs.kernel.identifiers import JOURNEY_TYPE, USER_ID, checked_user_id, string_schema
from graphs.kernel.patterns import (
    Assistant,
    Graph,
    OrchestratorDeps,
    Pattern,
    RunContext,
    View,
    instance_graph,
    instance_owner,
    mapping_input,
    register,
    string_input,
)
from graphs.structured.builder import StructuredSpec, build_structured_graph, validate_structured
from graphs.structured.orchestrator import StructuredOrchestrator
from graphs.structured.saga import SagaSpec, build_saga_graph, validate_saga
from graphs.structured.saga_orchestrator import SagaOrchestrator

if TYPE_CHECKING:
    from graphs.runtime import JourneyRuntime

STEP_INPUT: dict[str, Any] = {
    "type": "object",
    "required": ["journey_type"],
    "properties": {
        "journey_type": string_schema(
            JOURNEY_TYPE, description="a template (content_migration, …) or your spec's name"
        ),
        "requirements": {"type": "object"},
        "spec": {"type": "object", "description": "an explicit StructuredSpec instead of the template"},
        "user_id": string_schema(USER_ID, description="defaults to the caller"),
        "context": {"type": "object"},
    },
    "additionalProperties": False,  # a misspelt field would be dropped without a word: refused instead
}
STEP_RESULT = {"type": "object", "description": "the step result"}


def _journey_type(config: RunnableConfig) -> str:
    return str((config.get("configurable") or {}).get("journey_type", "content_migration"))


# --- structured -----------------------------------------------------------------------------------


async def _start_structured(ctx: RunContext, data: Mapping[str, Any]) -> View:
    structured = ctx.runtime.structured
    user_id, context = _start_arguments(ctx, data)
    journey_id = await structured.shared_design(
        string_input(data, "journey_type"),
        mapping_input(data.get("requirements"), "requirements"),
        spec=data.get("spec"),
    )
    instance_id = new_instance_id(ctx.runtime.engine, "structured")
    options = ctx.registering(instance_id)
    return await structured.start_run(instance_id, journey_id, user_id, context, run_options=options)


async def _check_structured(runtime: JourneyRuntime, data: Mapping[str, Any], agents: bool) -> None:
    runtime.structured.check_design(
        string_input(data, "journey_type"),
        mapping_input(data.get("requirements"), "requirements"),
        spec=data.get("spec"),
        agents=agents,
    )


def _start_arguments(ctx: RunContext, data: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The user and context a first run starts its step journey with, refused before the thread is bound to
    anything. The journey then gets an instance id of its own (one user's threads of one shared design are
    separate journeys; not the thread id, which a deleted thread's re-creation would reuse), bound to the
    thread by its registration, before it runs: a retried run (its worker died) finishes this journey, not
    a second one."""
    user_id = checked_user_id(string_input(data, "user_id", ctx.principal))
    return user_id, mapping_input(data.get("context"), "context")


async def _restart_structured(ctx: RunContext, instance_id: str, data: Mapping[str, Any]) -> None:
    journey_id, user_id = await instance_owner(ctx.runtime, instance_id)
    context = mapping_input(data.get("context"), "context")
    structured = ctx.runtime.structured
    await _restart_steps(
        ctx, instance_id, structured.start_run(instance_id, journey_id, user_id, context, run_options=ctx.options)
    )


async def _restart_steps(ctx: RunContext, instance_id: str, start: Awaitable[Any]) -> None:
    # The start itself is resumable: it re-runs a start a crash cut short before its first checkpoint
    # (replaying the steps the log holds), and refuses (DuplicateInstanceError) one that got further,
    # which then only finishes in-flight work.
    try:
        await start
    except DuplicateInstanceError:
        graph = await instance_graph(ctx.runtime, instance_id)
        async with ctx.runtime.engine.exclusive(instance_id):
            await ctx.runtime.engine.settled_state(graph, instance_id, options=ctx.options)


async def _resume_structured(ctx: RunContext, instance_id: str, value: Any) -> View:
    view = await ctx.runtime.structured.advance_run(instance_id, value, run_options=ctx.options)
    view.pop("completed_step", None)  # what advance says about itself, not part of the journey's view
    return view


async def _retry(ctx: RunContext, instance_id: str) -> None:
    """A run without input on a journey standing at a failed step: the step runs again."""
    await ctx.runtime.structured.retry_run(instance_id)


async def _describe_structured(runtime: JourneyRuntime, instance_id: str, snapshot: StateSnapshot) -> dict[str, Any]:
    return await runtime.structured.describe(instance_id, snapshot)


async def _sample_structured(runtime: JourneyRuntime) -> Graph:
    spec = runtime.templates.get("content_migration").build({})
    graph: Graph = runtime.graph_for("structured", spec)
    return graph


def _structured_entrypoint(runtime: JourneyRuntime, config: RunnableConfig) -> StateGraph[Any]:
    spec = runtime.templates.get(_journey_type(config)).build({})
    return build_structured_graph(spec, runtime.engine.services)


async def _structured_status(runtime: JourneyRuntime, instance: Instance) -> dict[str, Any]:
    return await runtime.structured.run_status(instance.instance_id)  # a fork's id is its own


register(
    Pattern(
        "structured",
        Assistant(
            "structured",
            "Structured journeys: steps in an enforced order",
            _start_structured,
            _resume_structured,
            STEP_INPUT,
            STEP_RESULT,
            sample=_sample_structured,
            restart=_restart_structured,
            retry=_retry,
            describe=_describe_structured,
            replays_from_log=True,
            check_start=_check_structured,
        ),
        _structured_entrypoint,
        design=DesignKind(StructuredSpec, validate_structured, build_structured_graph),
        attribute="structured",
        orchestrator=lambda deps: StructuredOrchestrator(deps.designs, deps.templates),
        status=_structured_status,
    )
)


# --- saga -----------------------------------------------------------------------------------------


async def _start_saga(ctx: RunContext, data: Mapping[str, Any]) -> None:
    saga = ctx.runtime.saga
    user_id, context = _start_arguments(ctx, data)
    journey_id = await saga.shared_saga_design(
        string_input(data, "journey_type"),
        mapping_input(data.get("requirements"), "requirements"),
        mapping_input(data.get("compensation_handlers"), "compensation_handlers"),
        spec=data.get("spec"),
    )
    saga_id = new_instance_id(ctx.runtime.engine, "saga")
    options = ctx.registering(saga_id)
    await saga.execute_saga_journey(journey_id, user_id, context, saga_id=saga_id, run_options=options)


async def _check_saga(runtime: JourneyRuntime, data: Mapping[str, Any], agents: bool) -> None:
    runtime.saga.check_saga_design(
        string_input(data, "journey_type"),
        mapping_input(data.get("requirements"), "requirements"),
        mapping_input(data.get("compensation_handlers"), "compensation_handlers"),
        spec=data.get("spec"),
        agents=agents,
    )


async def _restart_saga(ctx: RunContext, instance_id: str, data: Mapping[str, Any]) -> None:
    journey_id, user_id = await instance_owner(ctx.runtime, instance_id)
    context = mapping_input(data.get("context"), "context")
    await _restart_steps(
        ctx,
        instance_id,
        ctx.runtime.saga.execute_saga_journey(
            journey_id, user_id, context, saga_id=instance_id, run_options=ctx.options
        ),
    )


async def _resume_saga(ctx: RunContext, instance_id: str, value: Any) -> None:
    journey_id, user_id = await instance_owner(ctx.runtime, instance_id)
    await ctx.runtime.saga.advance_saga_step(instance_id, journey_id, user_id, value, run_options=ctx.options)


async def _retry_saga(ctx: RunContext, instance_id: str) -> None:
    """A run without input on a saga standing at a failed step or stopped compensation: it runs again."""
    await ctx.runtime.saga.retry_saga_step(instance_id)


async def _describe_saga(runtime: JourneyRuntime, instance_id: str, snapshot: StateSnapshot) -> dict[str, Any]:
    return await runtime.saga.describe(instance_id, snapshot)


def _saga_entrypoint(runtime: JourneyRuntime, config: RunnableConfig) -> StateGraph[Any]:
    base = runtime.templates.get(_journey_type(config)).build({})
    return build_saga_graph(SagaSpec(**base.model_dump(), compensation_handlers={}), runtime.engine.services)


async def _saga_status(runtime: JourneyRuntime, instance: Instance) -> dict[str, Any]:
    return await runtime.saga.get_saga_status(instance.instance_id)


def _saga_orchestrator(deps: OrchestratorDeps) -> SagaOrchestrator:
    return SagaOrchestrator(deps.designs, deps.built["structured"])


register(
    Pattern(
        "saga",
        Assistant(
            "saga",
            "Sagas: structured journeys that compensate on failure",
            _start_saga,
            _resume_saga,
            {**STEP_INPUT, "properties": {**STEP_INPUT["properties"], "compensation_handlers": {"type": "object"}}},
            STEP_RESULT,
            sample=_sample_structured,
            restart=_restart_saga,
            retry=_retry_saga,
            describe=_describe_saga,
            check_start=_check_saga,
        ),
        _saga_entrypoint,
        design=DesignKind(SagaSpec, validate_saga, build_saga_graph),
        attribute="saga",
        orchestrator=_saga_orchestrator,
        status=_saga_status,
    )
)

"""The assistants: every pattern, as the Agent Server API sees it.

An assistant says how a run's input maps onto its pattern's API (the same orchestrator calls the
journey endpoints make), and which compiled graph holds a thread's checkpoints. A thread is bound to the
journey instance its first run starts, so ``threads.get_state``/``get_history`` read the journey's own
checkpoints. Input mapping (documented per assistant in ``input_schema``):

- the **first run** on a thread takes ``input`` and designs and starts a journey;
- **later runs** take ``command: {"resume": value}`` and advance it (``value`` is the step result of a
  structured or saga journey, a session action, a lifecycle event, a process task's payload);
- the ``guide`` is a chat graph: every run takes ``input`` (``session_id``/``progress``, ``messages``).

Adding a pattern is one :func:`register` call.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from jsonschema import Draft202012Validator
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import StateSnapshot

from agents.guide import build_guide_graph
from checkpoints.index import DuplicateInstanceError
from graphs.designs import PATTERNS, new_id
from graphs.engine import DEFAULT_RUN, RunOptions
from graphs.errors import InvalidInputError, JourneyNotFoundError
from graphs.mvp import RECOMMENDED_FLOW, mvp_spec
from graphs.runtime import JourneyRuntime
from graphs.structured_orchestrator import structured_instance_id
from server.identifiers import (
    BUSINESS_KEY,
    CLIENT_ID,
    JOURNEY_TYPE,
    METRIC_NAME,
    PROCESS_NAME,
    USER_ID,
    string_schema,
)

Graph = CompiledStateGraph[Any, Any, Any, Any]


@dataclass(frozen=True, slots=True)
class RunContext:
    runtime: JourneyRuntime
    thread_id: str
    principal: str
    groups: tuple[str, ...]
    bind: Callable[[str], Awaitable[None]]
    options: RunOptions = DEFAULT_RUN  # how the run is carried out: passed to every orchestrator call it makes


# A starter or resumer may answer with the journey's view (what describe would say); it then promises
# that the thread's state is what its last engine run answered, and the run's output is built from
# both without reading the thread back. None: the output is read from the thread.
View = Mapping[str, Any] | None
Starter = Callable[[RunContext, Mapping[str, Any]], Awaitable[View]]
Resumer = Callable[[RunContext, str, Any], Awaitable[View]]


@dataclass(frozen=True, slots=True)
class Assistant:
    assistant_id: str
    description: str
    start: Starter
    resume: Resumer
    input_schema: dict[str, Any]
    resume_schema: dict[str, Any] = field(default_factory=dict)
    graph: Callable[[JourneyRuntime, str], Awaitable[Graph]] | None = None  # None: the instance's design graph
    sample: Callable[[JourneyRuntime], Awaitable[Graph]] | None = None
    chat: bool = False  # every run takes input (no resume)
    # A retried first run (its executor died) on a registered instance; None: finish its in-flight work.
    restart: Callable[[RunContext, str, Mapping[str, Any]], Awaitable[None]] | None = None
    # What a run's output adds to the thread's values: step journeys keep their progress in the event
    # log, not in graph state, and the output shows it (status, current and completed steps).
    describe: Callable[[JourneyRuntime, str, StateSnapshot], Awaitable[dict[str, Any]]] | None = None
    # Its runs may checkpoint only when they stop (the server's run durability): every step it executes
    # is logged, and a retried run replays the logged steps instead of executing them again.
    replays_from_log: bool = False

    def check_input(self, value: Any) -> None:
        """Refuses (422) a first run's ``input`` off this assistant's input schema, before the run is stored."""
        _conform(self.input_schema, value, "input")

    def check_resume(self, value: Any) -> None:
        """Refuses (422) a ``command.resume`` off this assistant's resume schema, before the run is stored."""
        _conform(self.resume_schema, value, "command.resume")


def _conform(schema: Mapping[str, Any], value: Any, what: str) -> None:
    errors = sorted(Draft202012Validator(schema).iter_errors(value), key=lambda e: list(e.absolute_path))
    if errors:
        problems = [f"{what}{e.json_path[1:]}: {_short_message(e)}" for e in errors]
        raise InvalidInputError("; ".join(problems), problems=problems)


def _short_message(error: Any) -> str:
    # jsonschema's messages quote the value, which may be a megabyte long: then only the rule is named.
    message: str = error.message
    return message if len(message) <= 200 else f"fails {error.validator} {error.validator_value!r}"


ASSISTANTS: dict[str, Assistant] = {}


def register(assistant: Assistant) -> Assistant:
    ASSISTANTS[assistant.assistant_id] = assistant
    return assistant


def get_assistant(assistant_id: str) -> Assistant:
    found = ASSISTANTS.get(assistant_id)
    if found is None:
        raise JourneyNotFoundError(
            f"no assistant {assistant_id!r}; assistants: {', '.join(ASSISTANTS)}", assistant_id=assistant_id
        )
    return found


async def instance_graph(runtime: JourneyRuntime, instance_id: str) -> Graph:
    """The compiled graph whose checkpoints are a journey instance's state."""
    instance = await runtime.store.index.get_instance(instance_id)
    if instance is None:
        raise JourneyNotFoundError(f"no journey instance {instance_id!r}", instance_id=instance_id)
    design = await runtime.store.index.get_design(instance.journey_id)
    if design is None:
        raise JourneyNotFoundError(f"no design {instance.journey_id!r}", journey_id=instance.journey_id)
    spec = PATTERNS[design.pattern].spec_type.model_validate(design.spec)
    graph: Graph = runtime.graph_for(design.pattern, spec)
    return graph


async def graph_of(runtime: JourneyRuntime, assistant: Assistant, instance_id: str) -> Graph:
    return await (assistant.graph or instance_graph)(runtime, instance_id)


# --- helpers for input mapping --------------------------------------------------------------------


def _mapping(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidInputError(f"{what} must be an object, got {type(value).__name__}")
    return dict(value)


def _string(data: Mapping[str, Any], key: str, default: str | None = None) -> str:
    value = data.get(key, default)
    if not isinstance(value, str) or not value:
        raise InvalidInputError(f"input.{key} must be a non-empty string", field=key)
    return value


async def _owner(ctx: RunContext, instance_id: str) -> tuple[str, str]:
    instance = await ctx.runtime.store.index.get_instance(instance_id)
    if instance is None:
        raise JourneyNotFoundError(f"no journey instance {instance_id!r}")
    return instance.journey_id, instance.user_id


# --- structured and saga --------------------------------------------------------------------------

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
}
METRICS = {"type": "object", "propertyNames": {"maxLength": METRIC_NAME}, "description": "values by metric name"}


async def _start_structured(ctx: RunContext, data: Mapping[str, Any]) -> View:
    structured = ctx.runtime.structured
    design = await structured.design_journey(
        _string(data, "journey_type"), _mapping(data.get("requirements"), "requirements"), spec=data.get("spec")
    )
    user_id = _string(data, "user_id", ctx.principal)
    context = _mapping(data.get("context"), "context")  # refused before the thread is bound to anything
    # Bound before it runs: a retried run (its worker died) then finishes this journey, not a second one.
    await ctx.bind(structured_instance_id(design["journey_id"], user_id))
    return await structured.execute_journey(design["journey_id"], user_id, context, run_options=ctx.options)


async def _restart_structured(ctx: RunContext, instance_id: str, data: Mapping[str, Any]) -> None:
    journey_id, user_id = await _owner(ctx, instance_id)
    context = _mapping(data.get("context"), "context")
    structured = ctx.runtime.structured
    await _restart_steps(
        ctx, instance_id, structured.execute_journey(journey_id, user_id, context, run_options=ctx.options)
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
    journey_id, user_id = await _owner(ctx, instance_id)
    view = await ctx.runtime.structured.advance_journey_step(journey_id, user_id, value, run_options=ctx.options)
    view.pop("completed_step", None)  # what advance says about itself, not part of the journey's view
    return view


async def _describe_structured(runtime: JourneyRuntime, instance_id: str, snapshot: StateSnapshot) -> dict[str, Any]:
    return await runtime.structured.describe(instance_id, snapshot)


async def _describe_saga(runtime: JourneyRuntime, instance_id: str, snapshot: StateSnapshot) -> dict[str, Any]:
    return await runtime.saga.describe(instance_id, snapshot)


async def _start_saga(ctx: RunContext, data: Mapping[str, Any]) -> None:
    saga = ctx.runtime.saga
    design = await saga.design_saga_journey(
        _string(data, "journey_type"),
        _mapping(data.get("requirements"), "requirements"),
        _mapping(data.get("compensation_handlers"), "compensation_handlers"),
        spec=data.get("spec"),
    )
    user_id = _string(data, "user_id", ctx.principal)
    context = _mapping(data.get("context"), "context")  # refused before the thread is bound to anything
    saga_id = new_id("saga")
    await ctx.bind(saga_id)  # before it runs: a retried run (its worker died) finishes this saga, not a second one
    await saga.execute_saga_journey(design["journey_id"], user_id, context, saga_id=saga_id, run_options=ctx.options)


async def _restart_saga(ctx: RunContext, instance_id: str, data: Mapping[str, Any]) -> None:
    journey_id, user_id = await _owner(ctx, instance_id)
    context = _mapping(data.get("context"), "context")
    await _restart_steps(
        ctx,
        instance_id,
        ctx.runtime.saga.execute_saga_journey(
            journey_id, user_id, context, saga_id=instance_id, run_options=ctx.options
        ),
    )


async def _resume_saga(ctx: RunContext, instance_id: str, value: Any) -> None:
    journey_id, user_id = await _owner(ctx, instance_id)
    await ctx.runtime.saga.advance_saga_step(instance_id, journey_id, user_id, value, run_options=ctx.options)


# --- session and MVP ------------------------------------------------------------------------------

ACTION_SCHEMA = {
    "type": "object",
    "required": ["type"],
    "properties": {
        "type": {"enum": ["navigate", "update", "close"]},
        "area_id": {"type": "string"},
        "updates": {"type": "object"},
        "reason": {"type": "string"},
    },
}


async def _start_session(ctx: RunContext, data: Mapping[str, Any]) -> None:
    view = await ctx.runtime.session.start_session(
        _string(data, "user_id", ctx.principal),
        _mapping(data.get("session_config"), "session_config"),
        run_options=ctx.options,
    )
    await ctx.bind(view["session_id"])


async def _start_mvp(ctx: RunContext, data: Mapping[str, Any]) -> None:
    view = await ctx.runtime.mvp.start_mvp_journey(
        _string(data, "user_id", ctx.principal), _string(data, "initial_pillar", "content"), run_options=ctx.options
    )
    await ctx.bind(view["session"]["session_id"])


async def _session_action(ctx: RunContext, instance_id: str, value: Any) -> None:
    action = _mapping(value, "command.resume")
    sessions = ctx.runtime.mvp.sessions if await _pattern(ctx, instance_id) == "mvp" else ctx.runtime.session
    kind = action.get("type")
    if kind == "navigate":
        await sessions.navigate_to_area(instance_id, _string(action, "area_id"), run_options=ctx.options)
    elif kind == "update":
        await sessions.update_area_state(
            instance_id,
            _string(action, "area_id"),
            _mapping(action.get("updates"), "updates"),
            run_options=ctx.options,
        )
    elif kind == "close":
        await sessions.close_session(instance_id, action.get("reason"), run_options=ctx.options)
    else:
        raise InvalidInputError(
            "command.resume.type must be one of navigate, update, close", allowed=["navigate", "update", "close"]
        )


async def _pattern(ctx: RunContext, instance_id: str) -> str:
    instance = await ctx.runtime.store.index.get_instance(instance_id)
    return instance.pattern if instance else ""


async def _sample_mvp(runtime: JourneyRuntime) -> Graph:
    graph: Graph = runtime.graph_for("mvp", mvp_spec())
    return graph


async def _sample_structured(runtime: JourneyRuntime) -> Graph:
    spec = runtime.templates.get("content_migration").build({})
    graph: Graph = runtime.graph_for("structured", spec)
    return graph


# --- lifecycle ------------------------------------------------------------------------------------


async def _start_lifecycle(ctx: RunContext, data: Mapping[str, Any]) -> None:
    await ctx.bind(ctx.thread_id)  # the lifecycle lets us choose the journey id: the thread's own
    await ctx.runtime.lifecycle.start_journey(
        _string(data, "client_id"),
        journey_id=ctx.thread_id,
        metadata=_mapping(data.get("metadata"), "metadata"),
        metrics=_mapping(data.get("metrics"), "metrics"),
        run_options=ctx.options,
    )


async def _resume_lifecycle(ctx: RunContext, instance_id: str, value: Any) -> None:
    request = _mapping(value, "command.resume")
    if "metrics" in request and "event" not in request:
        metrics = _mapping(request["metrics"], "metrics")
        await ctx.runtime.lifecycle.record_metrics(instance_id, metrics, run_options=ctx.options)
        return
    options = _mapping(request.get("options"), "options")
    await ctx.runtime.lifecycle.transition(instance_id, _string(request, "event"), run_options=ctx.options, **options)


# --- process --------------------------------------------------------------------------------------


async def _start_process(ctx: RunContext, data: Mapping[str, Any]) -> None:
    await ctx.bind(ctx.thread_id)
    version = data.get("version")
    if version is not None and not isinstance(version, int):
        raise InvalidInputError("input.version must be an integer")
    await ctx.runtime.processes.start(
        _string(data, "process"),
        _string(data, "business_key"),
        _mapping(data.get("variables"), "variables"),
        version=version,
        instance_id=ctx.thread_id,
        run_options=ctx.options,
    )


async def _resume_process(ctx: RunContext, instance_id: str, value: Any) -> None:
    request = _mapping(value, "command.resume")
    inbox = ctx.runtime.processes.inbox
    task_id = request.get("task_id")
    if task_id is None:
        tasks = await inbox.list_tasks(instance_id=instance_id)
        if len(tasks) != 1:
            raise InvalidInputError(
                f"process {instance_id!r} has {len(tasks)} open tasks; name one with command.resume.task_id",
                allowed=[t["task_id"] for t in tasks],
            )
        task_id = tasks[0]["task_id"]
    await inbox.complete(
        str(task_id),
        user=ctx.principal,
        groups=ctx.groups,
        payload=_mapping(request.get("payload"), "payload"),
        run_options=ctx.options,
    )


# --- guide ----------------------------------------------------------------------------------------


def guide_graph(runtime: JourneyRuntime) -> Graph:
    graph: Graph = runtime.engine.compiled(
        "guide",
        lambda: build_guide_graph(
            runtime.mvp.get_recommended_next_pillar, flow=RECOMMENDED_FLOW, model_factory=runtime.guide_model
        ),
    )
    return graph


async def _guide_graph(runtime: JourneyRuntime, _instance_id: str) -> Graph:
    return guide_graph(runtime)


async def _sample_guide(runtime: JourneyRuntime) -> Graph:
    return guide_graph(runtime)


async def _run_guide(ctx: RunContext, data: Mapping[str, Any]) -> None:
    await ctx.bind(ctx.thread_id)
    graph = guide_graph(ctx.runtime)
    config = ctx.runtime.engine.config(ctx.thread_id)
    before = (await graph.aget_state(config)).values.get("messages") or []
    incoming = data.get("messages") or []
    if not isinstance(incoming, list):
        raise InvalidInputError("input.messages must be a list of messages")
    messages = [*before, *(_as_message(m) for m in incoming)]
    update: dict[str, Any] = {"messages": messages}
    for key in ("session_id", "progress"):
        if key in data:
            update[key] = data[key]
    await ctx.runtime.engine.run(graph, ctx.thread_id, update, replay=False, options=ctx.options)


def _as_message(message: Any) -> dict[str, Any]:
    if isinstance(message, str):
        return {"type": "human", "content": message}
    if isinstance(message, Mapping) and isinstance(message.get("content"), str):
        kind = message.get("type") or {"user": "human", "assistant": "ai"}.get(str(message.get("role")), "human")
        return {"type": kind, "content": message["content"], **({"id": message["id"]} if "id" in message else {})}
    raise InvalidInputError("each message must be a string or an object with a string content")


async def _guide_no_resume(_ctx: RunContext, _instance_id: str, _value: Any) -> None:
    raise InvalidInputError("the guide takes input (messages, session_id or progress), not command.resume")


register(
    Assistant(
        "structured",
        "Structured journeys: steps in an enforced order",
        _start_structured,
        _resume_structured,
        STEP_INPUT,
        {"type": "object", "description": "the step result"},
        sample=_sample_structured,
        restart=_restart_structured,
        describe=_describe_structured,
        replays_from_log=True,
    )
)
register(
    Assistant(
        "session",
        "Sessions: free navigation between areas",
        _start_session,
        _session_action,
        {
            "type": "object",
            "required": ["session_config"],
            "properties": {"session_config": {"type": "object"}, "user_id": string_schema(USER_ID)},
        },
        ACTION_SCHEMA,
        sample=_sample_mvp,
    )
)
register(
    Assistant(
        "mvp",
        "The MVP preset: four pillars",
        _start_mvp,
        _session_action,
        {"type": "object", "properties": {"initial_pillar": {"type": "string"}, "user_id": string_schema(USER_ID)}},
        ACTION_SCHEMA,
        sample=_sample_mvp,
    )
)
register(
    Assistant(
        "saga",
        "Sagas: structured journeys that compensate on failure",
        _start_saga,
        _resume_saga,
        {**STEP_INPUT, "properties": {**STEP_INPUT["properties"], "compensation_handlers": {"type": "object"}}},
        {"type": "object", "description": "the step result"},
        sample=_sample_structured,
        restart=_restart_saga,
        describe=_describe_saga,
    )
)
register(
    Assistant(
        "lifecycle",
        "Client lifecycle: sandbox → pilot → production",
        _start_lifecycle,
        _resume_lifecycle,
        {
            "type": "object",
            "required": ["client_id"],
            "properties": {
                "client_id": string_schema(CLIENT_ID),
                "metadata": {"type": "object"},
                "metrics": METRICS,
            },
        },
        {
            "type": "object",
            "properties": {"event": {"type": "string"}, "options": {"type": "object"}, "metrics": METRICS},
        },
    )
)
register(
    Assistant(
        "process",
        "BPMN-style processes: user tasks, timers, messages",
        _start_process,
        _resume_process,
        {
            "type": "object",
            "required": ["process", "business_key"],
            "properties": {
                "process": string_schema(PROCESS_NAME),
                "business_key": string_schema(BUSINESS_KEY),
                "variables": {"type": "object"},
                "version": {"type": "integer"},
            },
        },
        {"type": "object", "properties": {"task_id": {"type": "string"}, "payload": {"type": "object"}}},
    )
)
register(
    Assistant(
        "guide",
        "A chat guide that suggests the next MVP pillar",
        _run_guide,
        _guide_no_resume,
        {
            "type": "object",
            "properties": {
                "session_id": {"type": "string"},
                "progress": {"type": "object"},
                "messages": {"type": "array"},
            },
        },
        graph=_guide_graph,
        sample=_sample_guide,
        chat=True,
    )
)

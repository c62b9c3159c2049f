"""The session and MVP patterns, as registered: free navigation between areas, and its four-pillar
preset.

On the Agent Server API the first run opens a session from ``input``; later runs take an action
(navigate, update, close) as ``command.resume``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from langchain_core.runnables import RunnableConfig
from langgraph.graph import StateGraph

from checkpoints.index import Instance
from graphs.errors import InvalidInputError
from graphs.kernel.designs import DesignKind
from graphs.kernel.identifiers import USER_ID, string_schema
from graphs.kernel.patterns import (
    Assistant,
    Graph,
    Pattern,
    RunContext,
    mapping_input,
    register,
    retry_failed,
    string_input,
)
from graphs.session.builder import SessionSpec, build_session_graph, validate_session
from graphs.session.mvp import MVPOrchestrator, mvp_spec
from graphs.session.orchestrator import SessionOrchestrator

if TYPE_CHECKING:
    from agents.registry import AgentRegistry
    from graphs.runtime import JourneyRuntime

ACTION_SCHEMA = {
    "type": "object",
    "required": ["type"],
    "properties": {
        "type": {"enum": ["navigate", "update", "close"]},
        "area_id": {"type": "string"},
        "updates": {"type": "object"},
        "reason": {"type": "string"},
    },
    "additionalProperties": False,  # a misspelt field would be dropped without a word: refused instead
}


def _validate(spec: SessionSpec, _registry: AgentRegistry | None) -> list[str]:
    return validate_session(spec)


SESSION_DESIGNS = DesignKind(SessionSpec, _validate, build_session_graph)


def _sessions(runtime: JourneyRuntime, pattern: str) -> SessionOrchestrator:
    return runtime.mvp.sessions if pattern == "mvp" else runtime.session


# A session's id is chosen as it opens: its thread is bound in the session's registration (RunContext.registering),
# so a second attempt of the run (its job taken again while the first lived on) opens no second session.
async def _start_session(ctx: RunContext, data: Mapping[str, Any]) -> None:
    await ctx.runtime.session.start_session(
        string_input(data, "user_id", ctx.principal),
        mapping_input(data.get("session_config"), "session_config"),
        registering=ctx.registering,
    )


async def _start_mvp(ctx: RunContext, data: Mapping[str, Any]) -> None:
    await ctx.runtime.mvp.start_mvp_journey(
        string_input(data, "user_id", ctx.principal),
        string_input(data, "initial_pillar", "content"),
        registering=ctx.registering,
    )


async def _session_action(ctx: RunContext, instance_id: str, value: Any) -> None:
    action = mapping_input(value, "command.resume")
    instance = await ctx.runtime.store.index.get_instance(instance_id)
    sessions = _sessions(ctx.runtime, instance.pattern if instance else "")
    kind = action.get("type")
    if kind == "navigate":
        await sessions.navigate_to_area(instance_id, string_input(action, "area_id"), run_options=ctx.options)
    elif kind == "update":
        await sessions.update_area_state(
            instance_id,
            string_input(action, "area_id"),
            mapping_input(action.get("updates"), "updates"),
            run_options=ctx.options,
        )
    elif kind == "close":
        await sessions.close_session(instance_id, action.get("reason"), run_options=ctx.options)
    else:
        raise InvalidInputError(
            "command.resume.type must be one of navigate, update, close", allowed=["navigate", "update", "close"]
        )


async def _sample_mvp(runtime: JourneyRuntime) -> Graph:
    graph: Graph = runtime.graph_for("mvp", mvp_spec())
    return graph


def _entrypoint(runtime: JourneyRuntime, _config: RunnableConfig) -> StateGraph[Any]:
    return build_session_graph(mvp_spec(), runtime.engine.services)


async def _status(runtime: JourneyRuntime, instance: Instance) -> dict[str, Any]:
    return await _sessions(runtime, instance.pattern).get_session_progress(instance.instance_id)


register(
    Pattern(
        "session",
        Assistant(
            "session",
            "Sessions: free navigation between areas",
            _start_session,
            _session_action,
            {
                "type": "object",
                "required": ["session_config"],
                "properties": {"session_config": {"type": "object"}, "user_id": string_schema(USER_ID)},
                "additionalProperties": False,
            },
            ACTION_SCHEMA,
            sample=_sample_mvp,
            retry=retry_failed,
        ),
        _entrypoint,
        design=SESSION_DESIGNS,
        attribute="session",
        orchestrator=lambda deps: SessionOrchestrator(deps.designs, pattern="session"),
        status=_status,
    )
)
register(
    Pattern(
        "mvp",
        Assistant(
            "mvp",
            "The MVP preset: four pillars",
            _start_mvp,
            _session_action,
            {
                "type": "object",
                "properties": {"initial_pillar": {"type": "string"}, "user_id": string_schema(USER_ID)},
                "additionalProperties": False,
            },
            ACTION_SCHEMA,
            sample=_sample_mvp,
            retry=retry_failed,
        ),
        _entrypoint,
        design=SESSION_DESIGNS,
        attribute="mvp",
        orchestrator=lambda deps: MVPOrchestrator(SessionOrchestrator(deps.designs, pattern="mvp")),
        status=_status,
    )
)

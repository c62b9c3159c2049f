"""The guide, as registered: a chat graph that suggests the next MVP pillar. It has no designs and no
orchestrator of its own; every run takes ``input`` (``messages``, ``session_id``, ``progress``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from langchain_core.runnables import RunnableConfig
from langgraph.graph import StateGraph

from agents.guide import build_guide_graph
from graphs.errors import InvalidInputError
from graphs.kernel.patterns import Assistant, Graph, Pattern, RunContext, register
from graphs.session.mvp import RECOMMENDED_FLOW

if TYPE_CHECKING:
    from graphs.runtime import JourneyRuntime


def _entrypoint(runtime: JourneyRuntime, _config: RunnableConfig | None = None) -> StateGraph[Any]:
    """The guide, phrasing with the runtime's chat model (None: deterministic)."""
    return build_guide_graph(
        runtime.mvp.get_recommended_next_pillar, flow=RECOMMENDED_FLOW, model_factory=runtime.guide_model
    )


def guide_graph(runtime: JourneyRuntime) -> Graph:
    graph: Graph = runtime.engine.compiled("guide", lambda: _entrypoint(runtime))
    return graph


async def _guide_graph(runtime: JourneyRuntime, _instance_id: str) -> Graph:
    return guide_graph(runtime)


async def _sample(runtime: JourneyRuntime) -> Graph:
    return guide_graph(runtime)


async def _run(ctx: RunContext, data: Mapping[str, Any]) -> None:
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


async def _no_resume(_ctx: RunContext, _instance_id: str, _value: Any) -> None:
    raise InvalidInputError("the guide takes input (messages, session_id or progress), not command.resume")


register(
    Pattern(
        "guide",
        Assistant(
            "guide",
            "A chat guide that suggests the next MVP pillar",
            _run,
            _no_resume,
            {
                "type": "object",
                "properties": {
                    "session_id": {"type": "string"},
                    "progress": {"type": "object"},
                    "messages": {"type": "array"},
                },
            },
            graph=_guide_graph,
            sample=_sample,
            chat=True,
        ),
        _entrypoint,
    )
)

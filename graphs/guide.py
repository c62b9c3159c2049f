"""The guide, as registered: a chat agent (``agents.guide``) on the MVP orchestrator, assistant ``guide``.

Every run takes ``input``: new ``messages`` (appended by the graph's reducer), and on the first turn the
MVP ``session_id`` to guide (or a ``progress`` mapping to recommend from, without a session). Its two
tools that change a session run as agent calls (intents :data:`NAVIGATE_INTENT` and
:data:`RECORD_INTENT`), so the runtime's policies see them and the session's event log records each.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import convert_to_messages
from langchain_core.runnables import RunnableConfig
from langgraph.graph import StateGraph

from agents.guide import build_guide_graph
from agents.guide_model import DeterministicGuideModel
from agents.protocol import AgentRequest
from checkpoints.errors import StartedElsewhereError
from graphs.errors import InvalidInputError
from graphs.kernel.engine import at_breakpoint
from graphs.kernel.patterns import Assistant, Graph, Pattern, RunContext, register
from graphs.session.mvp import MVP_PILLARS, RECOMMENDED_FLOW

if TYPE_CHECKING:
    from graphs.runtime import JourneyRuntime

NAVIGATE_INTENT = "guide.navigate_to_pillar"
RECORD_INTENT = "guide.record_progress"
# What the guide's calls are granted; its default agents need exactly these (least privilege).
GUIDE_GRANTS = frozenset({"mvp.navigate", "mvp.record_progress"})


def mvp_pillars() -> dict[str, dict[str, Any]]:
    """The MVP pillars as the guide knows them: name, actions, and the flag values that complete each."""
    return {
        area.area_id: {
            "area_name": area.title,
            "actions": list(area.actions),
            "completion": {c.field: c.value for c in area.completion.all if c.op == "=="},
        }
        for area in MVP_PILLARS
    }


def default_guide_model() -> BaseChatModel:
    """The offline, rule-based guide model for the MVP pillars."""
    return DeterministicGuideModel(pillars=mvp_pillars(), flow=list(RECOMMENDED_FLOW))


class MVPGuideBackend:
    """The guide's tools on ``runtime.mvp``; navigating and recording go through the agent-call path."""

    flow: Sequence[str] = RECOMMENDED_FLOW

    def __init__(self, runtime: JourneyRuntime) -> None:
        self.runtime = runtime
        self._pillars = mvp_pillars()
        _register_default_agents(runtime)

    def pillars(self) -> Mapping[str, Mapping[str, Any]]:
        return self._pillars

    async def progress(self, session_id: str) -> dict[str, Any]:
        return await self.runtime.mvp.sessions.get_session_progress(session_id)

    async def recommend(self, session_id: str) -> dict[str, Any]:
        return await self.runtime.mvp.get_recommended_next_pillar(session_id)

    async def navigate(self, session_id: str, pillar_id: str, *, key: str) -> dict[str, Any]:
        return await self._call(NAVIGATE_INTENT, session_id, pillar_id, {}, key)

    async def record(self, session_id: str, pillar_id: str, updates: Mapping[str, Any], *, key: str) -> dict[str, Any]:
        return await self._call(RECORD_INTENT, session_id, pillar_id, dict(updates), key)

    async def _call(
        self, intent: str, session_id: str, pillar_id: str, updates: dict[str, Any], key: str
    ) -> dict[str, Any]:
        payload = {"session_id": session_id, "pillar_id": pillar_id, **({"updates": updates} if updates else {})}
        spec = await self.runtime.mvp.sessions.spec_of(session_id)  # its grants: the intents it may call
        granted = spec.granted_permissions
        outcome = await self.runtime.engine.services.caller.call(
            intent=intent,
            payload=payload,
            instance_id=session_id,
            step=pillar_id,
            key=key,
            granted_permissions=GUIDE_GRANTS if granted is None else GUIDE_GRANTS & granted,
            granted_intents=spec.granted_intents,
            replay=True,  # a retried run replays the same tool call id: applied once
        )
        return outcome.output


def _register_default_agents(runtime: JourneyRuntime) -> None:
    """The agents behind the guide's state-changing tools, unless the user registered their own."""
    mvp = runtime.mvp

    async def navigate(request: AgentRequest) -> dict[str, Any]:
        payload = request.payload
        return await mvp.navigate_to_pillar(str(payload["session_id"]), str(payload["pillar_id"]))

    async def record(request: AgentRequest) -> dict[str, Any]:
        payload = request.payload
        return await mvp.update_pillar_progress(
            str(payload["session_id"]), str(payload["pillar_id"]), dict(payload["updates"])
        )

    for intent, agent, permission in (
        (NAVIGATE_INTENT, navigate, "mvp.navigate"),
        (RECORD_INTENT, record, "mvp.record_progress"),
    ):
        if intent not in runtime.agents:
            runtime.agents.register(
                intent, agent, name=intent, permissions=(permission,), description="the guide's MVP tool"
            )


def _entrypoint(runtime: JourneyRuntime, _config: RunnableConfig | None = None) -> StateGraph[Any]:
    """The guide on the runtime's MVP orchestrator, with the configured chat model (None: deterministic)."""
    model = runtime.guide_model() if runtime.guide_model is not None else default_guide_model()
    return build_guide_graph(MVPGuideBackend(runtime), model)


def guide_graph(runtime: JourneyRuntime) -> Graph:
    graph: Graph = runtime.engine.compiled("guide", lambda: _entrypoint(runtime))
    return graph


async def _guide_graph(runtime: JourneyRuntime, _instance_id: str) -> Graph:
    return guide_graph(runtime)


async def _sample(runtime: JourneyRuntime) -> Graph:
    return guide_graph(runtime)


async def _run(ctx: RunContext, data: Mapping[str, Any]) -> None:
    await ctx.bind(ctx.thread_id)
    incoming = data.get("messages") or []
    if not isinstance(incoming, list):
        raise InvalidInputError("input.messages must be a list of messages")
    try:
        messages = convert_to_messages([_as_message(m) for m in incoming])
    except (ValueError, NotImplementedError) as exc:
        raise InvalidInputError(f"input.messages: {exc}") from exc
    update: dict[str, Any] = {"messages": messages}
    for key in ("session_id", "progress"):
        if key in data:
            update[key] = data[key]
    graph = guide_graph(ctx.runtime)
    engine = ctx.runtime.engine
    async with engine.exclusive(ctx.thread_id):
        current = await graph.aget_state(engine.config(ctx.thread_id))
        found = (current.config or {}).get("configurable", {}).get("checkpoint_id") or ""
        if ctx.turn_from is not None and found != ctx.turn_from:
            raise StartedElsewhereError(
                f"thread {ctx.thread_id!r} moved on since this run's turn began: another attempt of the run took it",
                thread_id=ctx.thread_id,
            )
        no_input = update == {"messages": []}
        if no_input and at_breakpoint(current):
            # A run without input goes on from where interrupt_before/after stopped the thread (a tool call held
            # for review runs once approved), as LangGraph's does; with input it is a new turn.
            await engine.run(graph, ctx.thread_id, None, replay=False, options=ctx.options)
        else:
            await engine.run(graph, ctx.thread_id, update, replay=False, options=ctx.options)


def _as_message(message: Any) -> Any:
    """A message as LangChain takes it: a string (the user's), or an object whose content is a string or a
    list of content blocks (Agent Chat UI and multimodal clients send ``text`` blocks, maybe images)."""
    if isinstance(message, str):
        return {"type": "human", "content": message}
    if isinstance(message, Mapping) and _is_content(message.get("content")):
        return dict(message)
    raise InvalidInputError(
        "each message must be a string, or an object whose content is a string or a list of content blocks "
        "(strings, or objects with a string 'type'; a text block's 'text' a string)"
    )


def _is_content(content: Any) -> bool:
    if isinstance(content, str):
        return True
    return isinstance(content, list) and all(
        isinstance(block, str)
        or (
            isinstance(block, Mapping)
            and isinstance(block.get("type"), str)
            and (block["type"] != "text" or isinstance(block.get("text"), str))
        )
        for block in content
    )


async def _no_resume(_ctx: RunContext, _instance_id: str, _value: Any) -> None:
    raise InvalidInputError("the guide takes input (messages, session_id or progress), not command.resume")


register(
    Pattern(
        "guide",
        Assistant(
            "guide",
            "A chat guide through an MVP journey: progress, the next pillar, what is left, navigation, reports",
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
            instance_inputs=("session_id",),
        ),
        _entrypoint,
    )
)

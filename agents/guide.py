"""The guide agent: a LangGraph chat agent that walks a user through an MVP journey with real tool calls.

The graph is the classic tool-calling loop: the ``agent`` node asks a langchain-core chat model (bound to
the guide's tools) for the next message; when that message calls tools, the ``tools`` node (LangGraph's
``ToolNode``) runs them and hands the results back to the model, which phrases them. ``messages`` is
kept with LangGraph's ``add_messages`` reducer, so a turn's input is just the new messages.

The tools act on one MVP session through a :class:`GuideBackend` (the MVP orchestrator, as
``graphs.guide`` wires it): read its progress, recommend the next pillar, explain what is left in a
pillar, navigate to a pillar and record progress the user reports. The backend runs the two that change
the session through the agent-call path (policies, retries, one audit event per call), keyed by the tool
call (the id of the message that made it and the call's own id) so a retried run does not apply them twice.

The default model is :class:`agents.guide_model.DeterministicGuideModel` (offline, rule-based); any
chat model that supports tool calling can take its place.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, Protocol

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AnyMessage, SystemMessage, ToolMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool, InjectedToolCallId, ToolException, tool
from langgraph.graph import START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.prebuilt import InjectedState, ToolNode, tools_condition
from typing_extensions import TypedDict  # pydantic (Studio's input forms) needs it before 3.12

from agents.errors import GuideToolError
from checkpoints.errors import JourneyError

ModelFactory = Callable[[], BaseChatModel]  # the configured chat model (``--guide-model``), built once


class GuideState(TypedDict, total=False):
    """The guide's state: the chat (appended to by ``add_messages``) and the MVP session it guides.

    ``progress`` stands in for a session when there is none: a mapping of pillar → completion (as
    ``get_session_progress`` returns it, or ``{pillar: bool}``); the guide then only reads and recommends.
    """

    messages: Annotated[list[AnyMessage], add_messages]
    session_id: str | None
    progress: dict[str, Any] | None


class GuideBackend(Protocol):
    """What the guide's tools do on an MVP session; each answers with a JSON-able mapping."""

    flow: Sequence[str]

    def pillars(self) -> Mapping[str, Mapping[str, Any]]:
        """Every pillar's definition (``area_name``, ``actions``, ``completion``), by id."""

    async def progress(self, session_id: str) -> dict[str, Any]:
        """The session's progress (``get_session_progress``)."""

    async def recommend(self, session_id: str) -> dict[str, Any]:
        """The next pillar with the reason (``get_recommended_next_pillar``)."""

    async def navigate(self, session_id: str, pillar_id: str, *, key: str) -> dict[str, Any]:
        """Move the session to a pillar, through the agent-call path, once per ``key``."""

    async def record(self, session_id: str, pillar_id: str, updates: Mapping[str, Any], *, key: str) -> dict[str, Any]:
        """Merge progress flags into a pillar, through the agent-call path, once per ``key``."""


SYSTEM_PROMPT = (
    "You are the journeys guide. You help one user through an MVP journey of four pillars, in this "
    "recommended order: {flow}. Pillars and the flags that complete them: {pillars}. Use your tools to "
    "read the session's progress, recommend the next pillar, explain what is left in a pillar, navigate "
    "to a pillar when the user asks, and record progress the user reports. {session} Answer briefly; "
    "say so when a question is outside the MVP journey."
)


def system_prompt(backend: GuideBackend, state: Mapping[str, Any]) -> SystemMessage:
    pillars = {p: sorted(info.get("completion") or {}) for p, info in backend.pillars().items()}
    session = (
        f"The session is {state['session_id']!r}."
        if state.get("session_id")
        else "There is no session: you can read the progress you were given and recommend, not change anything."
    )
    text = SYSTEM_PROMPT.format(flow=" → ".join(backend.flow), pillars=json.dumps(pillars), session=session)
    return SystemMessage(content=text)


def recommend_from_progress(progress: Mapping[str, Any], flow: Sequence[str]) -> dict[str, Any]:
    """The first incomplete pillar of ``flow`` in a progress mapping (``{"areas": {pillar: {complete…}}}``
    as ``get_session_progress`` returns it, or just ``{pillar: {complete…}}`` / ``{pillar: bool}``)."""
    areas = progress.get("areas", progress)
    if not isinstance(areas, Mapping):
        areas = {}
    for pillar in flow:
        detail = areas.get(pillar)
        done = bool(detail.get("complete")) if isinstance(detail, Mapping) else bool(detail)
        if not done:
            missing = list(detail.get("missing") or []) if isinstance(detail, Mapping) else []
            return {
                "recommended_pillar": pillar,
                "pillar_info": {"area_id": pillar, "missing": missing},
                "reason": "first incomplete pillar in the recommended flow",
            }
    return {"recommended_pillar": None, "pillar_info": None, "reason": "every pillar is complete"}


def _dump(value: Mapping[str, Any]) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def guide_tools(backend: GuideBackend) -> list[BaseTool]:
    """The guide's five tools on ``backend``; the session comes from the graph's state, not from the model."""

    def session_of(state: Mapping[str, Any], action: str) -> str:
        session_id = state.get("session_id")
        if not session_id:
            raise GuideToolError(f"there is no MVP session to {action}: start one and pass its session_id")
        return str(session_id)

    def known_pillar(pillar_id: str) -> str:
        pillars = backend.pillars()
        if pillar_id not in pillars:
            raise GuideToolError(f"there is no pillar {pillar_id!r}; the pillars are {', '.join(pillars)}")
        return pillar_id

    async def progress_of(state: Mapping[str, Any]) -> dict[str, Any]:
        if state.get("session_id"):
            return await backend.progress(str(state["session_id"]))
        given = state.get("progress") or {}
        areas = given.get("areas", given) if isinstance(given, Mapping) else {}
        return {"areas": {p: _given_area(areas.get(p)) for p in backend.flow}, "current_area": None}

    @tool
    async def get_session_progress(state: Annotated[dict[str, Any], InjectedState]) -> str:
        """Read the MVP session's progress: completion percent, the current pillar, and each pillar's state."""
        return _dump(await progress_of(state))

    @tool
    async def recommend_next_pillar(state: Annotated[dict[str, Any], InjectedState]) -> str:
        """Recommend the pillar to work on next, with the reason and what is still missing there."""
        if state.get("session_id"):
            return _dump(await backend.recommend(str(state["session_id"])))
        recommendation = recommend_from_progress(state.get("progress") or {}, backend.flow)
        if recommendation["recommended_pillar"] is not None:
            info = backend.pillars()[recommendation["recommended_pillar"]]
            recommendation["pillar_info"] = {**info, **recommendation["pillar_info"]}
        return _dump(recommendation)

    @tool
    async def explain_pillar(state: Annotated[dict[str, Any], InjectedState], pillar_id: str | None = None) -> str:
        """Explain what is left in a pillar (default: the current one): its actions and its missing criteria."""
        progress = await progress_of(state)
        chosen = known_pillar(pillar_id or progress.get("current_area") or backend.flow[0])
        detail = progress["areas"].get(chosen) or {}
        info = backend.pillars()[chosen]
        return _dump(
            {
                "pillar_id": chosen,
                "area_name": info.get("area_name"),
                "actions": list(info.get("actions") or []),
                "criteria": sorted(info.get("completion") or {}),
                "complete": bool(detail.get("complete")),
                "missing": list(detail.get("missing") or []),
                "current": progress.get("current_area") == chosen,
            }
        )

    @tool
    async def navigate_to_pillar(
        pillar_id: str,
        state: Annotated[dict[str, Any], InjectedState],
        tool_call_id: Annotated[str, InjectedToolCallId],
        config: RunnableConfig,
    ) -> str:
        """Take the user to a pillar of the MVP session (content, insights, operations or business_outcome)."""
        session_id = session_of(state, "navigate")
        result = await backend.navigate(session_id, known_pillar(pillar_id), key=_key(config, state, tool_call_id))
        return _dump(result)

    @tool
    async def record_progress(
        pillar_id: str,
        state: Annotated[dict[str, Any], InjectedState],
        tool_call_id: Annotated[str, InjectedToolCallId],
        config: RunnableConfig,
        updates: dict[str, bool] | None = None,
        pillar_complete: bool = False,
    ) -> str:
        """Record progress the user reports on a pillar: ``updates`` sets its completion flags (e.g.
        {"files_uploaded": true}); ``pillar_complete`` sets every flag the pillar needs."""
        session_id = session_of(state, "record progress in")
        pillar = known_pillar(pillar_id)
        flags = dict(updates or {})
        if pillar_complete:
            flags = {**dict(backend.pillars()[pillar].get("completion") or {}), **flags}
        if not flags:
            raise GuideToolError("nothing to record: name the flags done (updates) or pass pillar_complete")
        result = await backend.record(session_id, pillar, flags, key=_key(config, state, tool_call_id))
        return _dump({**result, "recorded": flags, "next": await backend.recommend(session_id)})

    return [get_session_progress, recommend_next_pillar, explain_pillar, navigate_to_pillar, record_progress]


def _given_area(detail: Any) -> dict[str, Any]:
    if isinstance(detail, Mapping):
        return {"complete": bool(detail.get("complete")), "missing": list(detail.get("missing") or [])}
    return {"complete": bool(detail), "missing": []}


def _key(config: RunnableConfig, state: Mapping[str, Any], tool_call_id: str) -> str:
    """The idempotency key of one state-changing tool call: its id within the id of the AI message that made it.
    A retried run replays that message, so the call is applied once; a model's call ids need only be unique
    within a message (many number them from ``call_0`` in each), so the id alone would take a later turn's
    call for the first's and skip it."""
    thread = (config.get("configurable") or {}).get("thread_id", "")
    made_by = next(
        (
            message.id
            for message in reversed(state.get("messages") or [])
            if isinstance(message, AIMessage) and any(call["id"] == tool_call_id for call in message.tool_calls)
        ),
        None,
    )
    return f"guide:{thread}:{made_by}:{tool_call_id}"


def _tool_error(error: Exception) -> str:
    """What the model is told when a tool fails for a reason it or the user can act on: the runtime's own errors,
    and a tool error (``ToolException``: among them LangGraph's ``ToolInvocationError``, a call whose arguments do
    not fit the tool, which an LLM then calls again correctly, as with ToolNode's default handler); anything
    else propagates."""
    if isinstance(error, JourneyError | ToolException):
        return f"Error: {error}"
    raise error


NOT_RUN = "Error: this tool call was not run (its turn was interrupted); nothing was done"


def answered(messages: Sequence[AnyMessage]) -> list[AnyMessage]:
    """The chat as the model is handed it: a tool call no tool message answers (its run was stopped between the
    model and the tools: a double-texting interrupt, ``interrupt_before``) answered as not run, right after
    its AI message. Chat model providers refuse a chat with an unanswered tool call, so every later turn of
    the thread would fail; the thread's own messages are left as they are."""
    results = {m.tool_call_id for m in messages if isinstance(m, ToolMessage)}
    chat: list[AnyMessage] = []
    for message in messages:
        chat.append(message)
        if isinstance(message, AIMessage):
            chat += [
                ToolMessage(NOT_RUN, tool_call_id=call["id"], name=call["name"], status="error")
                for call in message.tool_calls
                if call["id"] is not None and call["id"] not in results
            ]
    return chat


def build_guide_graph(backend: GuideBackend, model: BaseChatModel) -> StateGraph[GuideState]:
    """The guide graph: ``agent`` (the model with the tools bound) ⇄ ``tools`` (a ``ToolNode``) until the
    model answers without calling a tool."""
    tools = guide_tools(backend)
    bound = model.bind_tools(tools)

    async def agent(state: GuideState, config: RunnableConfig) -> dict[str, Any]:
        prompt = [system_prompt(backend, state), *answered(state.get("messages", []))]
        return {"messages": [await bound.ainvoke(prompt, config)]}

    builder: StateGraph[GuideState] = StateGraph(GuideState)
    builder.add_node("agent", agent)
    builder.add_node("tools", ToolNode(tools, handle_tool_errors=_tool_error))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", tools_condition)
    builder.add_edge("tools", "agent")
    return builder

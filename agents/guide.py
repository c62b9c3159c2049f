"""The guide agent: a small chat graph that suggests the next MVP pillar.

Given an MVP ``session_id`` (or a session's ``progress``), the ``recommend`` node works out the next
pillar and the ``respond`` node has a langchain-core chat model phrase it as a chat message. The
default model is :class:`DeterministicGuideModel` (no network, no key); a real LLM is passed in through
``model_factory`` and built only when the graph is built, never at import time.

Messages are kept in state as plain dicts (``{"type": "human"|"ai", "content": …, "id": …}``), the shape
chat UIs on ``langgraph-sdk`` read, so checkpoints hold only JSON-like values.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypedDict

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, SystemMessage, convert_to_messages
from langchain_core.outputs import ChatGeneration, ChatResult
from langgraph.graph import END, START, StateGraph

Recommender = Callable[[str], Awaitable[Mapping[str, Any]]]
ModelFactory = Callable[[], BaseChatModel]
GUIDE_TAG = "journeys-guide-recommendation"


class GuideState(TypedDict, total=False):
    """The guide graph's state: the chat so far and the session progress and recommendation it answers from."""

    messages: list[dict[str, Any]]
    session_id: str | None
    progress: dict[str, Any] | None
    recommendation: dict[str, Any] | None


class DeterministicGuideModel(BaseChatModel):
    """Phrases the recommendation handed to it in a system message; the same input, the same answer."""

    @property
    def _llm_type(self) -> str:
        return "journeys-deterministic-guide"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        recommendation: Mapping[str, Any] = {}
        for message in messages:
            if isinstance(message, SystemMessage) and GUIDE_TAG in message.additional_kwargs:
                recommendation = message.additional_kwargs[GUIDE_TAG]
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=phrase(recommendation)))])


def phrase(recommendation: Mapping[str, Any]) -> str:
    pillar = recommendation.get("recommended_pillar")
    if pillar is None:
        return "Every pillar is complete: your MVP journey is done. Review the business outcome with your team."
    info = recommendation.get("pillar_info") or {}
    name = info.get("area_name") or str(pillar).replace("_", " ").title()
    missing = [str(m) for m in info.get("missing") or []]
    todo = f" Still to do there: {', '.join(missing)}." if missing else ""
    actions = [str(a).replace("_", " ") for a in info.get("actions") or []]
    start = f" You can start with: {', '.join(actions[:3])}." if actions else ""
    return f"I suggest the {name} next ({pillar}).{todo}{start}"


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


def build_guide_graph(
    recommend: Recommender,
    *,
    flow: Sequence[str],
    model_factory: ModelFactory | None = None,
) -> StateGraph[GuideState]:
    """The guide graph. ``recommend(session_id)`` is the MVP orchestrator's recommendation."""
    model = model_factory() if model_factory is not None else DeterministicGuideModel()

    async def recommend_next(state: GuideState) -> GuideState:
        session_id = state.get("session_id")
        if session_id:
            return {"recommendation": dict(await recommend(session_id))}
        return {"recommendation": recommend_from_progress(state.get("progress") or {}, flow)}

    async def respond(state: GuideState) -> GuideState:
        recommendation = state.get("recommendation") or {}
        history = list(state.get("messages") or [])
        system = SystemMessage(
            content="You guide users through an MVP journey. Recommend the next pillar: "
            + json.dumps(recommendation, sort_keys=True, default=str),
            additional_kwargs={GUIDE_TAG: recommendation},
        )
        answer = await model.ainvoke([system, *convert_to_messages(history)])
        reply = {"type": "ai", "content": answer.content, "id": f"guide-{uuid.uuid4().hex[:12]}"}
        return {"messages": [*history, reply]}

    builder: StateGraph[GuideState] = StateGraph(GuideState)
    builder.add_node("recommend", recommend_next)
    builder.add_node("respond", respond)
    builder.add_edge(START, "recommend")
    builder.add_edge("recommend", "respond")
    builder.add_edge("respond", END)
    return builder

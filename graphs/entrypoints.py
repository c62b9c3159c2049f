"""Module-level graph factories for LangGraph's own tooling (``langgraph.json``: ``langgraph dev``,
LangGraph Studio). Each returns the uncompiled ``StateGraph`` of a pattern (the tooling compiles it
with its own checkpointer); its nodes write events to the journeys store at ``$JOURNEYS_DATABASE_URL``
(default ``sqlite:///journeys.db``), opened once on first use, never at import time.

``config["configurable"]["journey_type"]`` picks the structured/saga template (default
``content_migration``).
"""

from __future__ import annotations

import os
from contextlib import AsyncExitStack
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.graph import StateGraph

from agents.guide import build_guide_graph
from agents.guide_model import load_guide_model
from checkpoints.url import DEFAULT_STORE_URL
from graphs.designs import PATTERNS
from graphs.lifecycle_catalog import default_lifecycle_spec
from graphs.mvp import RECOMMENDED_FLOW, mvp_spec
from graphs.runtime import JourneyRuntime
from graphs.saga import SagaSpec

_STACK = AsyncExitStack()
_RUNTIME: JourneyRuntime | None = None


async def tooling_runtime() -> JourneyRuntime:
    global _RUNTIME
    if _RUNTIME is None:
        url = os.environ.get("JOURNEYS_DATABASE_URL", DEFAULT_STORE_URL)
        _RUNTIME = await _STACK.enter_async_context(JourneyRuntime.open(url))
    return _RUNTIME


def _journey_type(config: RunnableConfig | None) -> str:
    return str(((config or {}).get("configurable") or {}).get("journey_type", "content_migration"))


async def structured(config: RunnableConfig | None = None) -> StateGraph[Any]:
    runtime = await tooling_runtime()
    spec = runtime.templates.get(_journey_type(config)).build({})
    return PATTERNS["structured"].build(spec, runtime.engine.services)


async def saga(config: RunnableConfig | None = None) -> StateGraph[Any]:
    runtime = await tooling_runtime()
    base = runtime.templates.get(_journey_type(config)).build({})
    return PATTERNS["saga"].build(SagaSpec(**base.model_dump(), compensation_handlers={}), runtime.engine.services)


async def session(config: RunnableConfig | None = None) -> StateGraph[Any]:
    runtime = await tooling_runtime()
    return PATTERNS["session"].build(mvp_spec(), runtime.engine.services)


async def mvp(config: RunnableConfig | None = None) -> StateGraph[Any]:
    runtime = await tooling_runtime()
    return PATTERNS["mvp"].build(mvp_spec(), runtime.engine.services)


async def lifecycle(config: RunnableConfig | None = None) -> StateGraph[Any]:
    runtime = await tooling_runtime()
    return PATTERNS["lifecycle"].build(default_lifecycle_spec(), runtime.engine.services)


async def guide(config: RunnableConfig | None = None) -> StateGraph[Any]:
    """The guide, phrasing with the chat model ``$JOURNEYS_GUIDE_MODEL`` names (as ``journeys serve`` does)."""
    runtime = await tooling_runtime()
    named = os.environ.get("JOURNEYS_GUIDE_MODEL")
    factory = load_guide_model(named) if named else None
    return build_guide_graph(runtime.mvp.get_recommended_next_pillar, flow=RECOMMENDED_FLOW, model_factory=factory)

"""Module-level graph factories for LangGraph's own tooling (``langgraph.json``: ``langgraph dev``,
LangGraph Studio): one per registered pattern (:mod:`graphs.kernel.patterns`), named as the pattern.

Each factory is an async context manager yielding the pattern's uncompiled ``StateGraph`` (the tooling
compiles it with its own checkpointer). Its nodes write events to the journeys store at
``$JOURNEYS_DATABASE_URL`` (default ``sqlite:///journeys.db``), which the factory opens for as long as the
tooling uses the graph and closes after: nothing is opened at import time, nothing is left open.
The guide phrases with the chat model ``$JOURNEYS_GUIDE_MODEL`` names (as ``journeys serve`` does).

``config["configurable"]`` may pick what the graph is built from: ``journey_type`` the structured/saga
template (default ``content_migration``), ``process`` the catalog process (default ``pr_review``).

``langgraph.json`` lists exactly these factories; :func:`langgraph_graphs` says what its ``graphs`` are.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.graph import StateGraph

from agents.guide_model import load_guide_model
from checkpoints.url import DEFAULT_STORE_URL
from graphs.kernel.patterns import get_pattern, registered_patterns
from graphs.runtime import JourneyRuntime

Factory = Callable[[RunnableConfig | None], AbstractAsyncContextManager[StateGraph[Any]]]
THIS_FILE = "./graphs/entrypoints.py"


@asynccontextmanager
async def tooling_runtime() -> AsyncIterator[JourneyRuntime]:
    """The runtime on ``$JOURNEYS_DATABASE_URL``, open for the block."""
    url = os.environ.get("JOURNEYS_DATABASE_URL", DEFAULT_STORE_URL)
    named = os.environ.get("JOURNEYS_GUIDE_MODEL")
    async with JourneyRuntime.open(url, guide_model=load_guide_model(named) if named else None) as runtime:
        yield runtime


def graph_factory(name: str) -> Factory:
    """The factory ``langgraph.json`` names for pattern ``name``."""

    @asynccontextmanager
    async def factory(config: RunnableConfig | None = None) -> AsyncIterator[StateGraph[Any]]:
        async with tooling_runtime() as runtime:
            yield get_pattern(name).entrypoint(runtime, config or {})

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = f"The {name} pattern's graph, on the journeys store, for as long as the block runs."
    return factory


def langgraph_graphs() -> dict[str, str]:
    """The ``graphs`` of ``langgraph.json``: every registered pattern's factory in this file."""
    return {name: f"{THIS_FILE}:{name}" for name in registered_patterns()}


globals().update({name: graph_factory(name) for name in registered_patterns()})

"""Optional live streaming of graph runs, for front ends (the HTTP server's ``stream_mode``).

Orchestrators run their graphs through :func:`run_graph`. With no sink installed that is a plain
``ainvoke``; inside :func:`streaming_to`, the same run goes through ``astream`` with the sink's modes
and every chunk is handed to the sink, so every pattern streams without knowing it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, cast

from langchain_core.runnables import RunnableConfig
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Durability

STREAMABLE_MODES = ("values", "updates", "custom", "debug", "tasks", "checkpoints")


@dataclass(frozen=True, slots=True)
class StreamSink:
    """Where a run's stream parts go, for the stream modes asked for."""

    modes: tuple[str, ...]
    emit: Callable[[str, Any], Awaitable[None]]


_SINK: ContextVar[StreamSink | None] = ContextVar("journeys_stream_sink", default=None)


@asynccontextmanager
async def streaming_to(modes: Sequence[str], emit: Callable[[str, Any], Awaitable[None]]) -> AsyncIterator[None]:
    """Stream the chunks of every graph run in this context (task) to ``emit(mode, chunk)``."""
    chosen = tuple(m for m in modes if m in STREAMABLE_MODES)
    token = _SINK.set(StreamSink(chosen, emit) if chosen else None)
    try:
        yield
    finally:
        _SINK.reset(token)


async def run_graph(
    graph: CompiledStateGraph[Any, Any, Any, Any], value: Any, config: RunnableConfig, durability: Durability
) -> dict[str, Any] | None:
    """Run the graph; returns its output (values, with ``__interrupt__`` when it stopped at one), or
    None when the run was streamed (read the thread's state then)."""
    sink = _SINK.get()
    if sink is None:
        output = await graph.ainvoke(value, config, durability=durability)
        return output if isinstance(output, dict) else None
    async for mode, chunk in graph.astream(
        value, config, durability=durability, stream_mode=cast(Any, list(sink.modes))
    ):
        await sink.emit(str(mode), chunk)
    return None

"""Optional live streaming of graph runs, for front ends (the HTTP server's ``stream_mode``).

Every run goes through :func:`run_graph` (called by ``JourneyEngine.run`` only). With no sink that is a
plain ``ainvoke``; with a sink (the run's options carry it), the same run goes through ``astream`` with
the sink's modes and every chunk is handed to the sink, so every pattern streams without knowing it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from langchain_core.runnables import RunnableConfig
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Durability

STREAMABLE_MODES = ("values", "updates", "custom", "debug", "tasks", "checkpoints")


@dataclass(frozen=True, slots=True)
class StreamSink:
    """Where a streamed run's chunks go: ``emit(mode, chunk)`` for each chunk of the chosen modes."""

    modes: tuple[str, ...]
    emit: Callable[[str, Any], Awaitable[None]]

    @classmethod
    def of(cls, modes: Sequence[str], emit: Callable[[str, Any], Awaitable[None]]) -> StreamSink | None:
        """A sink for the streamable ones of ``modes``; None when none is (the run is not streamed)."""
        chosen = tuple(m for m in modes if m in STREAMABLE_MODES)
        return cls(chosen, emit) if chosen else None


async def run_graph(
    graph: CompiledStateGraph[Any, Any, Any, Any],
    value: Any,
    config: RunnableConfig,
    durability: Durability,
    sink: StreamSink | None,
) -> dict[str, Any] | None:
    """Run the graph; returns its output (values, with ``__interrupt__`` when it stopped at one), or
    None when the run was streamed to ``sink`` (read the thread's state then)."""
    if sink is None:
        output = await graph.ainvoke(value, config, durability=durability)
        return output if isinstance(output, dict) else None
    async for mode, chunk in graph.astream(
        value, config, durability=durability, stream_mode=cast(Any, list(sink.modes))
    ):
        await sink.emit(str(mode), chunk)
    return None

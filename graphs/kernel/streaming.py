"""Optional live streaming of graph runs, for front ends (the HTTP server's ``stream_mode``).

Every run goes through :func:`run_graph` (called by ``JourneyEngine.run`` only). With no sink that is a
plain ``ainvoke``; with a sink (the run's options carry it), the same run goes through ``astream`` with
the sink's modes and every chunk is handed to the sink, so every pattern streams without knowing it.

The Agent Server's modes beyond LangGraph's own: ``messages-tuple`` is LangGraph's ``messages`` mode (each
LLM token with its metadata, sent as ``messages``); ``messages`` sends each message as it grows
(``messages/metadata`` once, then ``messages/partial``, and ``messages/complete`` when the run ends);
``events`` sends the run's callback events (``astream_events`` v2), the other modes riding along.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from langchain_core.messages import BaseMessageChunk
from langchain_core.runnables import RunnableConfig
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Durability

STREAMABLE_MODES = (
    "values",
    "updates",
    "custom",
    "debug",
    "tasks",
    "checkpoints",
    "messages",
    "messages-tuple",
    "events",
    "tools",  # LangGraph's: each tool call's start, output and end (tool-started … tool-finished or tool-error)
)
# Where a run's output puts the interrupts it stopped at (LangGraph keeps its own constant private).
INTERRUPT = "__interrupt__"
# The config keys a caller may set on a run; the thread and checkpoint are the engine's.
_RESERVED = frozenset({"thread_id", "checkpoint_id", "checkpoint_ns", "checkpoint_map"})
# The config keys a caller's config does not set as given: ``configurable`` is merged (less the keys above), and
# ``callbacks`` are LangChain handler objects, which no client's JSON can make.
_NOT_CALLERS = frozenset({"configurable", "callbacks"})


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


@dataclass(frozen=True, slots=True)
class GraphCall:
    """What a caller adds to a graph run: config (tags, metadata, ``configurable`` keys other than the
    thread's), the run's context, and where to stop before or after nodes."""

    config: Mapping[str, Any] = field(default_factory=dict)
    context: Any = None
    interrupt_before: Sequence[str] | str | None = None
    interrupt_after: Sequence[str] | str | None = None

    @property
    def stops_between_nodes(self) -> bool:
        """Whether the run may stop between two nodes, where no node of it would settle what the one before
        wrote behind it (``EventLog.write_behind``)."""
        return bool(self.interrupt_before or self.interrupt_after)

    def apply(self, config: RunnableConfig) -> RunnableConfig:
        configurable = {k: v for k, v in (self.config.get("configurable") or {}).items() if k not in _RESERVED}
        merged: dict[str, Any] = {k: v for k, v in self.config.items() if k not in _NOT_CALLERS}
        merged.update(config)
        merged["configurable"] = {**configurable, **config.get("configurable", {})}
        if self.stops_between_nodes:
            merged["metadata"] = {**(merged.get("metadata") or {}), BREAKPOINT: True}
        return cast(RunnableConfig, merged)

    def options(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        if self.context is not None:
            found["context"] = self.context
        if self.interrupt_before:
            found["interrupt_before"] = self.interrupt_before
        if self.interrupt_after:
            found["interrupt_after"] = self.interrupt_after
        return found


NO_CALL = GraphCall()
# Checkpoint metadata of a run its caller stops between nodes (interrupt_before/after). LangGraph's savers copy a
# run's config metadata into the checkpoints it writes, so a thread parked at such a stop is told from one a crash
# cut short between nodes: the one waits for a run without input, the other is finished by whoever comes next.
BREAKPOINT = "journeys_breakpoint"


async def run_graph(
    graph: CompiledStateGraph[Any, Any, Any, Any],
    value: Any,
    config: RunnableConfig,
    durability: Durability,
    sink: StreamSink | None,
    call: GraphCall = NO_CALL,
) -> dict[str, Any] | None:
    """Run the graph; returns its output (values, with ``__interrupt__`` when it stopped at one), or
    None when the run was streamed to ``sink`` or its output is not a dict (read the thread's state then)."""
    config = call.apply(config)
    options = call.options()
    if sink is None:
        # Version 2 streams the state alone, with the interrupts in it: version 1 (the default) streams every
        # node's update as well, only to find the interrupts there: 2-6% of an 8-step journey's client CPU.
        output = await graph.ainvoke(value, config, durability=durability, version="v2", **options)
        values, interrupts = output.value, list(output.interrupts)
        if not isinstance(values, dict):  # None (nothing ran), or a state schema's object: read the state instead
            return None
        return {**values, INTERRUPT: interrupts} if interrupts else values
    messages = _Messages(sink) if "messages" in sink.modes else None
    modes = {_LANGGRAPH_MODE.get(m, m) for m in sink.modes if m != "events"}
    if "events" in sink.modes:
        await _stream_events(graph, value, config, durability, options, sink, sorted(modes), messages)
    else:
        async for mode, chunk in graph.astream(
            value, config, durability=durability, stream_mode=cast(Any, sorted(modes)), **options
        ):
            await _emit(sink, messages, str(mode), chunk)
    if messages is not None:
        await messages.complete()
    return None


# Both message modes read LangGraph's "messages" stream.
_LANGGRAPH_MODE = {"messages-tuple": "messages"}


async def _emit(sink: StreamSink, messages: _Messages | None, mode: str, chunk: Any) -> None:
    if mode != "messages":
        await sink.emit(mode, chunk)
        return
    if "messages-tuple" in sink.modes:
        await sink.emit("messages", chunk)
    if messages is not None:
        await messages.add(*chunk)


async def _stream_events(
    graph: CompiledStateGraph[Any, Any, Any, Any],
    value: Any,
    config: RunnableConfig,
    durability: Durability,
    options: dict[str, Any],
    sink: StreamSink,
    modes: list[str],
    messages: _Messages | None,
) -> None:
    """The run's callback events; the root graph's own stream chunks (the other modes) ride in them."""
    async for event in graph.astream_events(
        value, config, version="v2", durability=durability, stream_mode=modes or ["values"], **options
    ):
        await sink.emit("events", event)
        if event["event"] == "on_chain_stream" and not event.get("parent_ids") and modes:
            mode, chunk = event["data"]["chunk"]
            await _emit(sink, messages, str(mode), chunk)


class _Messages:
    """The Agent Server's ``messages`` mode: each message, accumulated as its tokens arrive."""

    def __init__(self, sink: StreamSink) -> None:
        self._sink = sink
        self._by_id: dict[str, Any] = {}

    async def add(self, message: Any, metadata: Mapping[str, Any]) -> None:
        key = str(getattr(message, "id", None) or id(message))
        seen = self._by_id.get(key)
        if seen is None:
            await self._sink.emit("messages/metadata", {key: {"metadata": dict(metadata)}})
            whole = message
        elif isinstance(seen, BaseMessageChunk) and isinstance(message, BaseMessageChunk):
            whole = seen + message
        else:
            whole = message
        self._by_id[key] = whole
        await self._sink.emit("messages/partial", [whole])

    async def complete(self) -> None:
        if self._by_id:
            await self._sink.emit("messages/complete", list(self._by_id.values()))

"""The assistants: every registered pattern, as the Agent Server API sees it.

An assistant says how a run's input maps onto its pattern's API (the same orchestrator calls the
journey endpoints make), and which compiled graph holds a thread's checkpoints. A thread is bound to the
journey instance its first run starts, so ``threads.get_state``/``get_history`` read the journey's own
checkpoints. Input mapping (documented per assistant in ``input_schema``):

- the **first run** on a thread takes ``input`` and starts a journey (of a design stored once per content);
- **later runs** take ``command: {"resume": value}`` and advance it (``value`` is the step result of a
  structured or saga journey, a session action, a lifecycle event, a process task's payload);
- the ``guide`` is a chat graph: every run takes ``input`` (``session_id``/``progress``, ``messages``).

Each pattern registers its assistant with its pattern (:mod:`graphs.kernel.patterns`); this module reads
that registry.
"""

from __future__ import annotations

from collections.abc import Iterator

from graphs.errors import JourneyNotFoundError
from graphs.kernel.patterns import Assistant, Graph, RunContext, View, instance_graph, registered_patterns
from graphs.runtime import JourneyRuntime

__all__ = ["Assistant", "RunContext", "View", "assistants", "get_assistant", "graph_of", "instance_graph"]


def assistants() -> Iterator[Assistant]:
    """Every assistant, in the order the patterns registered."""
    return (pattern.assistant for pattern in registered_patterns().values())


def get_assistant(assistant_id: str) -> Assistant:
    found = registered_patterns().get(assistant_id)
    if found is None:
        raise JourneyNotFoundError(
            f"no assistant {assistant_id!r}; assistants: {', '.join(registered_patterns())}", assistant_id=assistant_id
        )
    return found.assistant


async def graph_of(runtime: JourneyRuntime, assistant: Assistant, instance_id: str) -> Graph:
    return await (assistant.graph or instance_graph)(runtime, instance_id)

"""Saga journeys: a structured journey plus a compensation handler per step.

When a step fails after its retries, the compensation subgraph undoes every completed step in
reverse order. Status: in_progress → compensating → compensated, or completed, or failed.
"""

from __future__ import annotations

from typing import Any

from langgraph.graph import StateGraph
from pydantic import Field

from agents.registry import AgentRegistry
from agents.resilience import RetrySettings
from graphs.structured.builder import StructuredSpec, StructuredState, build_structured_graph, validate_structured
from nodes.compensation import COMPENSATION_RETRY, build_compensation_graph
from nodes.services import NodeServices


class SagaSpec(StructuredSpec):
    """A structured journey whose completed steps are undone by their compensation handlers on failure."""

    compensation_handlers: dict[str, str] = Field(
        default_factory=dict, description="step_id → intent of the agent that undoes it"
    )


def validate_saga(spec: SagaSpec, registry: AgentRegistry | None = None) -> list[str]:
    problems = validate_structured(spec, registry)
    steps = set(spec.step_ids)
    for step_id, handler in spec.compensation_handlers.items():
        if step_id not in steps:
            problems.append(
                f"compensation handler {handler!r} is declared for unknown step {step_id!r}; "
                f"steps: {', '.join(spec.step_ids)}"
            )
        if registry is not None and handler not in registry:
            problems.append(
                f"unknown compensation handler {handler!r} for step {step_id!r}; register an agent for it "
                f"with runtime.agents.register({handler!r}, agent)"
            )
    return problems


def build_saga_graph(
    spec: SagaSpec, services: NodeServices, *, retry: RetrySettings = COMPENSATION_RETRY
) -> StateGraph[StructuredState]:
    compensation: StateGraph[Any] = build_compensation_graph(spec.compensation_handlers, services, retry=retry)
    return build_structured_graph(spec, services, compensation=compensation)

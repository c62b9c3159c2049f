"""What an agent is: anything that takes an :class:`AgentRequest` and returns a JSON-like mapping."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

AgentOutput = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class AgentRequest:
    """One call to an agent.

    ``idempotency_key`` is stable across retries and crash recovery: an agent with external side
    effects should pass it on (as payment APIs accept one) so a repeated call changes nothing.
    """

    intent: str
    payload: Mapping[str, Any]
    instance_id: str
    step: str | None = None
    idempotency_key: str | None = None
    attempt: int = 1
    metadata: Mapping[str, Any] = field(default_factory=dict)


# Sync or async callables are both accepted; the call path awaits what needs awaiting.
Agent = Callable[[AgentRequest], AgentOutput | Awaitable[AgentOutput]]

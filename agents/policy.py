"""Policy checks that run before every agent call. A policy is a plain callable that raises to refuse."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from agents.errors import PolicyViolationError
from agents.registry import RegisteredAgent


@dataclass(frozen=True, slots=True)
class AgentCall:
    """What a policy sees: who is about to be called, for which journey and step, with what."""

    agent: RegisteredAgent
    instance_id: str
    step: str | None
    payload: Mapping[str, Any]
    granted_permissions: frozenset[str] | None  # None: the journey restricts nothing


Policy = Callable[[AgentCall], None]


def require_granted_permissions(call: AgentCall) -> None:
    """Least privilege: an agent may only run where the journey grants every scope it needs."""
    if call.granted_permissions is None:
        return
    missing = call.agent.permissions - call.granted_permissions
    if missing:
        raise PolicyViolationError(
            f"agent {call.agent.name!r} needs permissions {sorted(missing)} that journey step "
            f"{call.step!r} does not grant",
            intent=call.agent.intent,
            missing=sorted(missing),
        )


DEFAULT_POLICIES: tuple[Policy, ...] = (require_granted_permissions,)

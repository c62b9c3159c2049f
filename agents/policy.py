"""Policy checks that run before every agent call. A policy is a plain callable that raises
:class:`PolicyViolationError` to refuse, with the reason; the refusal is recorded as a
``policy.denied`` event. Policies given to the runtime run after :data:`DEFAULT_POLICIES` (least
privilege), never instead of them."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
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
    granted_intents: frozenset[str] | None = None  # the intents the journey's spec may call; None: any


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


def require_granted_intent(call: AgentCall) -> None:
    """Least privilege: a journey calls only the intents its spec declares."""
    if call.granted_intents is not None and call.agent.intent not in call.granted_intents:
        raise PolicyViolationError(
            f"journey step {call.step!r} may not call intent {call.agent.intent!r}; its spec declares "
            f"{sorted(call.granted_intents)}",
            intent=call.agent.intent,
            allowed=sorted(call.granted_intents),
        )


DEFAULT_POLICIES: tuple[Policy, ...] = (require_granted_permissions, require_granted_intent)


def with_defaults(policies: Iterable[Policy], *, defaults: bool = True) -> tuple[Policy, ...]:
    """The policies a runtime runs: the defaults first (unless turned off explicitly), then ``policies``,
    each once."""
    chosen = [*(DEFAULT_POLICIES if defaults else ()), *policies]
    return tuple(dict.fromkeys(chosen))

"""The capability registry: agents are found by the intent they serve, never by import path."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from agents.errors import AgentNotFoundError, DuplicateAgentError
from agents.protocol import Agent


@dataclass(frozen=True, slots=True)
class RegisteredAgent:
    """An agent as registered: the intent it serves, its name, and the permissions it needs."""

    intent: str
    agent: Agent
    name: str
    # Least privilege: the scopes this agent needs; policies check them against what a journey grants.
    permissions: frozenset[str] = field(default_factory=frozenset)
    description: str = ""


class AgentRegistry:
    """Finds the agent for an intent (discovery by intent); one agent per intent unless replaced."""

    def __init__(self) -> None:
        self._agents: dict[str, RegisteredAgent] = {}

    def register(
        self,
        intent: str,
        agent: Agent,
        *,
        name: str | None = None,
        permissions: Iterable[str] = (),
        description: str = "",
        replace: bool = False,
    ) -> RegisteredAgent:
        if not intent or not intent.strip():
            raise ValueError("an agent's intent must be a non-empty string")
        if intent in self._agents and not replace:
            raise DuplicateAgentError(
                f"an agent is already registered for intent {intent!r} "
                f"({self._agents[intent].name}); pass replace=True to swap it",
                intent=intent,
            )
        entry = RegisteredAgent(
            intent=intent,
            agent=agent,
            name=name or str(getattr(agent, "__name__", type(agent).__name__)),
            permissions=frozenset(permissions),
            description=description,
        )
        self._agents[intent] = entry
        return entry

    def agent(self, intent: str, **options: object) -> Callable[[Agent], Agent]:
        """Decorator form of :meth:`register`."""

        def decorate(fn: Agent) -> Agent:
            self.register(intent, fn, **options)  # type: ignore[arg-type]
            return fn

        return decorate

    def resolve(self, intent: str) -> RegisteredAgent:
        try:
            return self._agents[intent]
        except KeyError:
            known = ", ".join(sorted(self._agents)) or "none"
            raise AgentNotFoundError(
                f"no agent is registered for intent {intent!r}; registered intents: {known}",
                intent=intent,
                registered=sorted(self._agents),
            ) from None

    def __contains__(self, intent: object) -> bool:
        return intent in self._agents

    def intents(self) -> list[str]:
        return sorted(self._agents)

"""The capability registry: agents are found by the intent they serve, never by import path."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable, Mapping
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

    def bind(self, agents: Mapping[str, Agent]) -> None:
        """Register agents a spec named by object (``ServiceTask(agent=MyAgent)``), under the intents
        :func:`intent_of` gave them. Binding the same object again is a no-op; a different agent
        already serving one of those intents is refused (:class:`DuplicateAgentError`)."""
        for intent, agent in agents.items():
            known = self._agents.get(intent)
            if known is None:
                self.register(intent, agent, description="registered by the spec that names it")
            elif not _same_agent(known.agent, agent):
                raise DuplicateAgentError(
                    f"a spec names {agent!r} for intent {intent!r}, which {known.name} already serves; "
                    "give the object an `intent` attribute of its own, or name the intent as a string",
                    intent=intent,
                )

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


def intent_of(agent: object) -> str:
    """The intent an agent named by object serves: its ``intent`` attribute, else its (class or
    function) name in snake case: ``WowVisionPrime`` → ``wow_vision_prime``."""
    intent = getattr(agent, "intent", None)
    if isinstance(intent, str) and intent.strip():
        return intent
    name = getattr(agent, "__name__", None) or type(agent).__name__
    intent = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()
    if not _NAMED.match(intent):
        raise ValueError(f"{agent!r} has no usable name for an intent; give it an `intent` attribute or pass a string")
    return intent


_NAMED = re.compile(r"^[a-z_][a-z0-9_]*$")


def _same_agent(known: Agent, given: Agent) -> bool:
    # Functions must be the very object; instances of one class (made afresh from the class each time
    # a spec names it) are the same agent.
    if known is given:
        return True
    return not inspect.isroutine(given) and type(known) is type(given)


def as_agent(value: object) -> Agent:
    """An object given where an agent is expected: a class is instantiated with no arguments; what
    results must be callable with an :class:`~agents.protocol.AgentRequest`."""
    agent = value() if isinstance(value, type) else value
    if not callable(agent):
        raise ValueError(f"{value!r} is not an agent: give a callable taking an AgentRequest, or an intent name")
    return agent  # type: ignore[no-any-return]

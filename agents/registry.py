"""The capability registry: agents are found by the intent they serve, never by import path."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from agents.errors import AgentNotFoundError, DuplicateAgentError
from agents.protocol import Agent
from agents.resilience import RetrySettings, seconds
from checkpoints.errors import InvalidInputError, ResilienceSettingError
from checkpoints.guards import CircuitSettings, RateLimit


@dataclass(frozen=True, slots=True)
class RegisteredAgent:
    """An agent as registered: the intent it serves, its name, and the permissions it needs."""

    intent: str
    agent: Agent
    name: str
    # Least privilege: the scopes this agent needs; policies check them against what a journey grants.
    permissions: frozenset[str] = field(default_factory=frozenset)
    description: str = ""
    # Resilience: each None falls back to the runtime's default (a spec's call options override both).
    timeout: float | None = None  # seconds per attempt
    retry: RetrySettings | None = None
    circuit: CircuitSettings | None = None  # the intent's circuit breaker, shared through the store
    rate_limit: RateLimit | None = None  # calls per second to the intent, across every worker
    pool: str | None = None  # the bulkhead this agent's calls share (default: its intent)
    concurrency: int | None = None  # at most this many calls of the pool at once, per process


class AgentRegistry:
    """Finds the agent for an intent (discovery by intent); one agent per intent unless replaced."""

    def __init__(self) -> None:
        self._agents: dict[str, RegisteredAgent] = {}
        self._pool_limits: dict[str, int] = {}  # the smallest concurrency any agent of a pool declared

    def register(
        self,
        intent: str,
        agent: Agent,
        *,
        name: str | None = None,
        permissions: Iterable[str] = (),
        description: str = "",
        replace: bool = False,
        timeout: float | str | None = None,
        retry: RetrySettings | None = None,
        circuit: CircuitSettings | None = None,
        rate_limit: RateLimit | float | None = None,
        pool: str | None = None,
        concurrency: int | None = None,
    ) -> RegisteredAgent:
        """Register ``agent`` for ``intent``. ``timeout`` (seconds or ISO 8601), ``retry``, ``circuit``,
        ``rate_limit`` (calls per second, or a :class:`RateLimit`), ``pool`` and ``concurrency`` (its
        bulkhead) set how its calls are guarded; see the README's "Resilience"."""
        if concurrency is not None and concurrency < 1:
            raise ResilienceSettingError(
                f"an agent's concurrency is how many of its calls may run at once, at least 1; got {concurrency!r} "
                "(None: no limit)"
            )
        if not isinstance(intent, str) or not intent.strip():
            raise InvalidInputError(
                f"an agent's intent is the capability it serves, a non-empty string (e.g. 'billing.charge'); "
                f"got {intent!r}",
                intent=repr(intent),
            )
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
            timeout=None if timeout is None else seconds(timeout),
            retry=retry,
            circuit=circuit,
            rate_limit=RateLimit(rate_limit) if isinstance(rate_limit, int | float) else rate_limit,
            pool=pool,
            concurrency=concurrency,
        )
        self._agents[intent] = entry
        if concurrency is not None:
            pool_name = entry.pool or intent
            self._pool_limits[pool_name] = min(concurrency, self._pool_limits.get(pool_name, concurrency))
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
            # Every process serving a database runs its journeys' work (a timer fires wherever a scheduler finds
            # it due): a notebook's agent the server lacks fails there, so say where to register it.
            raise AgentNotFoundError(
                f"no agent is registered for intent {intent!r} in this process; every process serving the journey's "
                "database may run its work (a timer fires in whichever finds it due), so register the agent in each: "
                "JourneyRuntime.open(agents=...) or runtime.agents.register, and --plugin on journeys serve and "
                f"journeys worker; registered intents: {known}",
                intent=intent,
                registered=sorted(self._agents),
            ) from None

    def pool_limit(self, pool: str) -> int | None:
        """How many calls of an agent pool may run at once (per process): the smallest ``concurrency`` its
        agents were registered with; None when none declared one."""
        return self._pool_limits.get(pool)

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

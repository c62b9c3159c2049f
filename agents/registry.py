"""The capability registry: agents are found by the intent they serve, never by import path."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from agents.errors import AgentNotFoundError, DuplicateAgentError
from agents.protocol import Agent
from agents.resilience import RetrySettings, seconds
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
            raise ValueError("an agent's concurrency must be at least 1")
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

    def pool_limit(self, pool: str) -> int | None:
        """How many calls of an agent pool may run at once (per process): the smallest ``concurrency`` its
        agents were registered with; None when none declared one."""
        return self._pool_limits.get(pool)

    def __contains__(self, intent: object) -> bool:
        return intent in self._agents

    def intents(self) -> list[str]:
        return sorted(self._agents)

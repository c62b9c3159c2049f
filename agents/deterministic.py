"""Deterministic agents: the defaults, so that demos, tests and notebooks need no network or API key.

They are real agents in every respect but intelligence: they go through the same registry, policy,
retry and event path as an LLM-backed one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from agents.errors import PermanentAgentError, TransientAgentError
from agents.protocol import AgentOutput, AgentRequest


class EchoAgent:
    """Completes the work it is given: reports the intent and echoes the step result's fields."""

    def __init__(self, intent: str, extra: Mapping[str, Any] | None = None) -> None:
        self.intent = intent
        self.extra = dict(extra or {})
        self.__name__ = f"echo:{intent}"

    def __call__(self, request: AgentRequest) -> AgentOutput:
        received = request.payload.get("step_result") or {}
        return {"status": "complete", "intent": self.intent, "received": sorted(received), **self.extra}


class RecordingAgent:
    """Counts its calls per idempotency key and applies each key's effect once: a model of a
    well-behaved external service, used to prove exactly-once effects."""

    def __init__(self, intent: str) -> None:
        self.intent = intent
        self.__name__ = f"recording:{intent}"
        self.calls: Counter[str] = Counter()
        self.effects: dict[str, Mapping[str, Any]] = {}

    def __call__(self, request: AgentRequest) -> AgentOutput:
        key = request.idempotency_key or f"unkeyed-{sum(self.calls.values())}"
        self.calls[key] += 1
        self.effects.setdefault(key, dict(request.payload))
        return {"status": "complete", "intent": self.intent, "effect_key": key}


class FlakyAgent:
    """Fails transiently ``failures`` times, then succeeds: exercises retries."""

    def __init__(self, intent: str, failures: int) -> None:
        self.intent = intent
        self.failures = failures
        self.attempts = 0
        self.__name__ = f"flaky:{intent}"

    def __call__(self, request: AgentRequest) -> AgentOutput:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise TransientAgentError(f"{self.intent}: transient failure {self.attempts}/{self.failures}")
        return {"status": "complete", "intent": self.intent, "attempts": self.attempts}


class FailingAgent:
    """Always fails, transiently (so the retries are spent) or permanently."""

    def __init__(self, intent: str, *, permanent: bool = False, message: str | None = None) -> None:
        self.intent = intent
        self.permanent = permanent
        self.message = message or f"{intent} failed"
        self.attempts = 0
        self.__name__ = f"failing:{intent}"

    def __call__(self, request: AgentRequest) -> AgentOutput:
        self.attempts += 1
        if self.permanent:
            raise PermanentAgentError(self.message, intent=self.intent)
        raise TransientAgentError(self.message, intent=self.intent)

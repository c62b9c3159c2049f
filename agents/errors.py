"""Errors of the agent-call path."""

from __future__ import annotations

from typing import ClassVar

from checkpoints.errors import ErrorCategory, JourneyError


class AgentError(JourneyError):
    """An agent call failed."""


class AgentNotFoundError(AgentError):
    """No agent is registered for this intent."""

    category: ClassVar[ErrorCategory] = "invalid"


class DuplicateAgentError(AgentError):
    """An agent is already registered for this intent; pass replace=True to swap it."""

    category: ClassVar[ErrorCategory] = "conflict"


class PolicyViolationError(AgentError):
    """A policy refused this agent call before it ran."""

    category: ClassVar[ErrorCategory] = "forbidden"


class TransientAgentError(AgentError):
    """A failure worth retrying (timeouts, rate limits, a flaky dependency)."""


class PermanentAgentError(AgentError):
    """A failure that retrying cannot fix (bad input, a business rule said no)."""


class AgentOutputError(PermanentAgentError):
    """The agent's output does not match the declared output schema."""


class AgentOutputTooLargeError(PermanentAgentError):
    """The agent's output is larger than a step may keep (``max_output_bytes``)."""


class AgentReportedFailureError(AgentError):
    """The agent answered that its work failed (an output whose ``status`` is ``"failed"``, its ``error`` saying
    why): a failed attempt, retried as the call's retry policy says, then the step's failure. An agent that knows
    another attempt cannot help raises :class:`PermanentAgentError` instead."""


class AgentCallFailedError(AgentError):
    """The agent call failed after its retries were exhausted."""


class AgentTimeoutError(TransientAgentError):
    """The agent did not answer within its time limit (retried like any transient failure)."""


class RateLimitedError(TransientAgentError):
    """The intent's shared rate limit has no call left this moment (retried after a backoff)."""


class BulkheadFullError(TransientAgentError):
    """Every slot of the agent pool's concurrency limit stayed taken for the bulkhead's wait."""


class CircuitOpenError(AgentCallFailedError):
    """The intent's circuit is open: the call failed fast without reaching the agent."""


class GuideModelError(JourneyError):
    """The guide model setting does not name a factory of a langchain-core chat model."""

    category: ClassVar[ErrorCategory] = "invalid"


class GuideToolError(JourneyError):
    """A guide tool cannot do what it was asked (no session, an unknown pillar); the model is told why."""

    category: ClassVar[ErrorCategory] = "invalid"

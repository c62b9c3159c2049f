"""Agents: the protocol, the capability registry, policies, resilience (time limits, retries, circuit
breakers, rate limits, bulkheads, fallbacks) and deterministic defaults."""

from agents.deterministic import EchoAgent, FailingAgent, FlakyAgent, RecordingAgent
from agents.errors import (
    AgentCallFailedError,
    AgentError,
    AgentNotFoundError,
    AgentOutputError,
    AgentOutputTooLargeError,
    AgentReportedFailureError,
    AgentTimeoutError,
    BulkheadFullError,
    CircuitOpenError,
    DuplicateAgentError,
    PermanentAgentError,
    PolicyViolationError,
    RateLimitedError,
    TransientAgentError,
)
from agents.policy import (
    DEFAULT_POLICIES,
    AgentCall,
    Grants,
    Policy,
    SessionAction,
    TaskCompletion,
    require_granted_intent,
    require_granted_permissions,
    with_defaults,
)
from agents.protocol import Agent, AgentOutput, AgentRequest
from agents.registry import AgentRegistry, RegisteredAgent
from agents.resilience import Bulkheads, CallOptions, RetryPolicy, RetrySettings, call_with_retry
from checkpoints.errors import ResilienceSettingError
from checkpoints.guards import CircuitSettings, RateLimit

__all__ = [
    "DEFAULT_POLICIES",
    "Agent",
    "AgentCall",
    "AgentCallFailedError",
    "AgentError",
    "AgentNotFoundError",
    "AgentOutput",
    "AgentOutputError",
    "AgentOutputTooLargeError",
    "AgentRegistry",
    "AgentReportedFailureError",
    "AgentRequest",
    "AgentTimeoutError",
    "BulkheadFullError",
    "Bulkheads",
    "CallOptions",
    "CircuitOpenError",
    "CircuitSettings",
    "DuplicateAgentError",
    "EchoAgent",
    "FailingAgent",
    "FlakyAgent",
    "Grants",
    "PermanentAgentError",
    "Policy",
    "PolicyViolationError",
    "RateLimit",
    "RateLimitedError",
    "RecordingAgent",
    "RegisteredAgent",
    "ResilienceSettingError",
    "RetryPolicy",
    "RetrySettings",
    "SessionAction",
    "TaskCompletion",
    "TransientAgentError",
    "call_with_retry",
    "require_granted_intent",
    "require_granted_permissions",
    "with_defaults",
]

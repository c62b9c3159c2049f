"""Agents: the protocol, the capability registry, policies, resilience and deterministic defaults."""

from agents.deterministic import EchoAgent, FailingAgent, FlakyAgent, RecordingAgent
from agents.errors import (
    AgentCallFailedError,
    AgentError,
    AgentNotFoundError,
    AgentOutputError,
    AgentOutputTooLargeError,
    DuplicateAgentError,
    PermanentAgentError,
    PolicyViolationError,
    TransientAgentError,
)
from agents.policy import (
    DEFAULT_POLICIES,
    AgentCall,
    Policy,
    require_granted_intent,
    require_granted_permissions,
    with_defaults,
)
from agents.protocol import Agent, AgentOutput, AgentRequest
from agents.registry import AgentRegistry, RegisteredAgent
from agents.resilience import Bulkheads, RetrySettings, call_with_retry

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
    "AgentRequest",
    "Bulkheads",
    "DuplicateAgentError",
    "EchoAgent",
    "FailingAgent",
    "FlakyAgent",
    "PermanentAgentError",
    "Policy",
    "PolicyViolationError",
    "RecordingAgent",
    "RegisteredAgent",
    "RetrySettings",
    "TransientAgentError",
    "call_with_retry",
    "require_granted_intent",
    "require_granted_permissions",
    "with_defaults",
]

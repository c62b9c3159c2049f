"""The kernel every pattern runs on: the engine (one way to run a graph), the instance lifecycle and the
pattern registry."""

from graphs.errors import PatternRegistrationError
from graphs.kernel.designs import DesignKind
from graphs.kernel.instances import FAILED, Instances, Recoverable, failure
from graphs.kernel.patterns import (
    Assistant,
    OrchestratorDeps,
    Pattern,
    RunContext,
    get_pattern,
    register,
    registered_patterns,
)

__all__ = [
    "FAILED",
    "Assistant",
    "DesignKind",
    "Instances",
    "OrchestratorDeps",
    "Pattern",
    "PatternRegistrationError",
    "Recoverable",
    "RunContext",
    "failure",
    "get_pattern",
    "register",
    "registered_patterns",
]

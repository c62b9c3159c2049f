"""The kernel every pattern runs on."""

from graphs.errors import PatternRegistrationError
from graphs.kernel.patterns import (
    Assistant,
    DesignKind,
    OrchestratorDeps,
    Pattern,
    RunContext,
    get_pattern,
    register,
    registered_patterns,
)

__all__ = [
    "Assistant",
    "DesignKind",
    "OrchestratorDeps",
    "Pattern",
    "PatternRegistrationError",
    "RunContext",
    "get_pattern",
    "register",
    "registered_patterns",
]

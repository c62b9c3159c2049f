"""The gated client lifecycle: SANDBOX → PILOT → PRODUCTION, with rollback."""

from graphs.lifecycle.catalog import READY_TO_START, STAGE_METRICS, default_lifecycle_spec
from graphs.lifecycle.machine import JourneyStage, LifecycleSpec, RollbackTrigger, StageSpec, TransitionEvent
from graphs.lifecycle.orchestrator import LifecycleOrchestrator

__all__ = [
    "READY_TO_START",
    "STAGE_METRICS",
    "JourneyStage",
    "LifecycleOrchestrator",
    "LifecycleSpec",
    "RollbackTrigger",
    "StageSpec",
    "TransitionEvent",
    "default_lifecycle_spec",
]

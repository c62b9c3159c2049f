"""Journey specs, the builders that turn them into LangGraph graphs, and the runtime that runs them."""

from agents.errors import (
    AgentCallFailedError,
    AgentError,
    AgentNotFoundError,
    PermanentAgentError,
    PolicyViolationError,
    TransientAgentError,
)
from checkpoints.errors import (
    CheckpointsDeletedError,
    ConcurrentUpdateError,
    DuplicateInstanceError,
    JourneyError,
    RetentionPolicyError,
)
from checkpoints.retention import RetentionPolicy
from graphs.errors import (
    CompensationFailedError,
    EntryCriteriaNotMetError,
    ForkPointError,
    ForkUnsupportedError,
    InterruptNotPendingError,
    InvalidInputError,
    InvalidMetricError,
    InvalidMoveError,
    InvalidRollbackTargetError,
    InvalidTransitionError,
    JourneyFinishedError,
    JourneyNotFoundError,
    JourneyNotStartedError,
    MigrationRefusedError,
    NothingToRetryError,
    ProcessInstanceNotFoundError,
    ProcessStateError,
    ProcessVersionConflictError,
    RecursionLimitError,
    RollbackFailedError,
    RolloutError,
    SpecError,
    StepFailedError,
    StepHaltedError,
    StepMovedOnError,
    StepOrderError,
    TaskClosedError,
    TaskForbiddenError,
    TaskNotFoundError,
    TransitionOptionsError,
    UnitDependencyError,
    UnitOfWorkFailedError,
    UnknownAreaError,
    UnknownProcessError,
    UnknownTemplateError,
    UnknownTransitionEventError,
    UnknownUnitOfWorkError,
    UnmatchedMessageError,
    WrongPatternError,
)
from graphs.lifecycle.catalog import READY_TO_START, STAGE_METRICS, default_lifecycle_spec
from graphs.lifecycle.machine import JourneyStage, LifecycleSpec, RollbackTrigger, StageSpec, TransitionEvent
from graphs.process.spec import ProcessSpec
from graphs.runtime import JourneyRuntime
from graphs.session.builder import Area, SessionSpec
from graphs.session.mvp import MVP_PILLARS, RECOMMENDED_FLOW
from graphs.structured.builder import Branch, Step, StructuredSpec
from graphs.structured.saga import SagaSpec
from graphs.structured.templates import Template, TemplateCatalog, default_catalog
from nodes.criteria import Condition, Criteria
from nodes.errors import ResumeValueError

__all__ = [
    "MVP_PILLARS",
    "RECOMMENDED_FLOW",
    "AgentCallFailedError",
    "AgentError",
    "AgentNotFoundError",
    "Area",
    "Branch",
    "ConcurrentUpdateError",
    "Condition",
    "Criteria",
    "DuplicateInstanceError",
    "ForkPointError",
    "ForkUnsupportedError",
    "InterruptNotPendingError",
    "InvalidInputError",
    "InvalidMoveError",
    "JourneyError",
    "JourneyFinishedError",
    "JourneyNotFoundError",
    "JourneyNotStartedError",
    "JourneyRuntime",
    "NothingToRetryError",
    "PermanentAgentError",
    "PolicyViolationError",
    "ResumeValueError",
    "SagaSpec",
    "SessionSpec",
    "SpecError",
    "Step",
    "StepFailedError",
    "StepHaltedError",
    "StepMovedOnError",
    "StepOrderError",
    "StructuredSpec",
    "Template",
    "TemplateCatalog",
    "TransientAgentError",
    "UnknownAreaError",
    "UnknownTemplateError",
    "WrongPatternError",
    "default_catalog",
]
# Processes (BPMN-style elements, durable timers, the inbox, messages, versions).
__all__ += [
    "CompensationFailedError",
    "MigrationRefusedError",
    "ProcessInstanceNotFoundError",
    "ProcessSpec",
    "ProcessStateError",
    "ProcessVersionConflictError",
    "RecursionLimitError",
    "RolloutError",
    "TaskClosedError",
    "TaskForbiddenError",
    "TaskNotFoundError",
    "UnknownProcessError",
    "UnmatchedMessageError",
]
# The client lifecycle (stages, criteria gates, units of work, rollbacks).
__all__ += [
    "READY_TO_START",
    "STAGE_METRICS",
    "EntryCriteriaNotMetError",
    "InvalidMetricError",
    "InvalidRollbackTargetError",
    "InvalidTransitionError",
    "JourneyStage",
    "LifecycleSpec",
    "RollbackFailedError",
    "RollbackTrigger",
    "StageSpec",
    "TransitionEvent",
    "TransitionOptionsError",
    "UnitDependencyError",
    "UnitOfWorkFailedError",
    "UnknownTransitionEventError",
    "UnknownUnitOfWorkError",
    "default_lifecycle_spec",
]
# Checkpoint retention (what finished journeys keep of their checkpoints).
__all__ += ["CheckpointsDeletedError", "RetentionPolicy", "RetentionPolicyError"]

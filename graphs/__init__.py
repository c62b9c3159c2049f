"""Journey specs, the builders that turn them into LangGraph graphs, and the runtime that runs them."""

from agents.errors import (
    AgentCallFailedError,
    AgentError,
    AgentNotFoundError,
    PermanentAgentError,
    PolicyViolationError,
    TransientAgentError,
)
from checkpoints.errors import JourneyError
from checkpoints.index import DuplicateInstanceError
from graphs.catalog import Template, TemplateCatalog, default_catalog
from graphs.errors import (
    InvalidInputError,
    InvalidMoveError,
    JourneyFinishedError,
    JourneyNotFoundError,
    JourneyNotStartedError,
    SpecError,
    StepFailedError,
    StepOrderError,
    UnknownAreaError,
    UnknownTemplateError,
    WrongPatternError,
)
from graphs.mvp import MVP_PILLARS, RECOMMENDED_FLOW
from graphs.runtime import JourneyRuntime
from graphs.saga import SagaSpec
from graphs.session import Area, SessionSpec
from graphs.structured import Branch, Step, StructuredSpec
from nodes.criteria import Condition, Criteria
from nodes.user_task import ResumeValueError

__all__ = [
    "MVP_PILLARS",
    "RECOMMENDED_FLOW",
    "AgentCallFailedError",
    "AgentError",
    "AgentNotFoundError",
    "Area",
    "Branch",
    "Condition",
    "Criteria",
    "DuplicateInstanceError",
    "InvalidInputError",
    "InvalidMoveError",
    "JourneyError",
    "JourneyFinishedError",
    "JourneyNotFoundError",
    "JourneyNotStartedError",
    "JourneyRuntime",
    "PermanentAgentError",
    "PolicyViolationError",
    "ResumeValueError",
    "SagaSpec",
    "SessionSpec",
    "SpecError",
    "Step",
    "StepFailedError",
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

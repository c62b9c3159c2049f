"""Structured journeys and sagas: their designs and their runs (graphs/structured/orchestrator.py,
graphs/structured/saga_orchestrator.py, graphs/structured/steps.py ``StepJourneys.view``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from server.views.fields import optional_key

# Where a run stands (step_journeys.Standing: a failed step's work, else the graph's own status); the
# journey index keeps the same set.
StructuredRunStatus = Literal["in_progress", "completed", "failed", "queued", "review", "terminated"]
# A saga also compensates (graphs/structured/builder.py, nodes/compensation.py); failed: a step or an undo failed.
SagaRunStatus = Literal[
    "in_progress", "completed", "failed", "compensating", "compensated", "queued", "review", "terminated"
]


class DesignedStep(BaseModel):
    """A step of a design: what it does and where it leads."""

    step_id: str
    name: str = Field(description="the step's title (its name, or its id in words)")
    mode: Literal["user", "auto"] = Field(
        description="user: waits for an advance with the step's result; auto: runs as soon as it is reached"
    )
    agent: str | None = Field(description="intent of the agent that does the step's work")
    milestone: bool
    next_steps: list[str] = Field(description="the steps it can lead to; empty: the journey ends there")


class DesignFields(BaseModel):
    """A structured or saga design, as saved."""

    journey_id: str = Field(description="the design's id: start runs of it with an execution")
    pattern: str
    journey_type: str
    name: str
    requirements: dict[str, Any]
    steps: list[DesignedStep]
    status: Literal["designed"]


class StructuredDesignOut(DesignFields):
    """A structured journey design."""

    pattern: Literal["structured"]


class SagaDesignOut(DesignFields):
    """A saga design, with its compensation handlers."""

    pattern: Literal["saga"]
    compensation_handlers: dict[str, str] = Field(description="step id → intent of the agent that undoes it")


class StepProgress(BaseModel):
    """How many steps are completed, of how many."""

    completed: int
    total: int


class StepRunFields(BaseModel):
    """Where a run of a structured journey or saga stands."""

    journey_id: str
    user_id: str
    instance_id: str
    journey_type: str
    status: str
    current_step: str | None = Field(description="the step it waits on or works at; null once finished or failed")
    completed_steps: list[str] = Field(description="steps completed so far, in order (a looping step repeats)")
    awaiting_input: bool = Field(description="whether it waits for the current step's result (an advance)")
    next_steps: list[str] = Field(description="the steps the current step can lead to")
    progress: StepProgress
    last_output: dict[str, Any] | None = Field(description="the output of the last completed step's agent")
    failed_step: str = optional_key("only while a step's work has failed: that step (retry it)")
    evaluation: dict[str, Any] = optional_key(
        "only for a spec with a workflow tier: the finished run's figures, breaches and review (SPEC G7)"
    )


class StructuredRunView(StepRunFields):
    """A run of a structured journey."""

    status: StructuredRunStatus


class StructuredAdvanceOut(StructuredRunView):
    """A run of a structured journey after an advance."""

    completed_step: str | None = Field(
        description="the step this advance completed; null when it did not (its user reported it failed, so the "
        "journey stands failed there, or its agent's circuit handed it to a person)"
    )


class SagaFailure(BaseModel):
    """The step failure that started a saga's compensation."""

    step: str
    error: str
    error_type: str


class CompensationFailure(BaseModel):
    """An undo that failed for good, stopping a saga's compensation."""

    step: str = Field(description="the step whose undo failed")
    handler: str = Field(description="intent of the compensation handler that failed")
    error: str
    error_type: str


class SagaRunView(StepRunFields):
    """A run of a saga, with what was undone and why."""

    status: SagaRunStatus
    saga_id: str
    compensated_steps: list[str] = Field(description="steps undone so far, last completed first")
    failure: SagaFailure | None = Field(description="the step failure that started compensation")
    compensation_failure: CompensationFailure | None = Field(description="the undo that failed for good")


class SagaAdvanceOut(SagaRunView):
    """A run of a saga after an advance."""

    completed_step: str | None = Field(
        description="the step this advance completed; null when it did not (it failed, so the saga compensates: "
        "failure names it)"
    )

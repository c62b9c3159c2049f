"""Client lifecycle journeys (graphs/lifecycle/orchestrator.py, graphs/lifecycle/machine.py ``journey_view``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from graphs.lifecycle.machine import JourneyStage, RollbackTrigger, TransitionEvent
from nodes.uow import UowStatus
from server.views.fields import optional_key

# graphs/lifecycle/machine.py: pending until its start passes its gate, then STATUS_OF its stage.
LifecycleStatus = Literal["queued", "pending", "active", "rollback", "completed", "cancelled", "terminated"]


class CheckOut(BaseModel):
    """One criterion's check, as a lifecycle answer reports it."""

    name: str
    passed: bool
    actual_value: Any = Field(description="the value found (a metric, a unit's status); null when none was recorded")
    expected_value: Any
    message: str
    actual: Any = Field(description="the earlier name of actual_value")
    expected: Any = Field(description="the earlier name of expected_value")


class ValidationOut(BaseModel):
    """One gate's outcome (nodes/criteria_gate.py ``ValidationResult``): passed only when every check did."""

    validation_id: str
    journey_id: str
    kind: Literal["start", "promotion", "completion", "rollback"]
    event: TransitionEvent
    from_stage: JourneyStage | None
    to_stage: JourneyStage | None
    passed: bool
    summary: str
    checks: list[CheckOut]
    evaluated_at: str
    evaluation_ms: float


class OpenRollback(BaseModel):
    """The rollback a journey is in (its state's copy, without the per-unit results)."""

    rollback_id: str
    from_stage: JourneyStage
    to_stage: JourneyStage
    trigger: RollbackTrigger
    reason: str
    automatic: bool
    auto_complete: bool = Field(description="whether it returns to its target stage as soon as it validates")
    status: Literal["running", "validated", "failed"]
    unwound: list[JourneyStage] = Field(description="the stages it undoes")
    units: list[str] = Field(description="the rollback units of work it runs")
    undo_units: list[str] = optional_key(
        "only when units of the unwound stages have failed runs that left tasks done: their undos, made first"
    )
    initiated_at: str


class LifecycleStateFields(BaseModel):
    """Where a lifecycle journey stands: its stage, the stages behind it, and the events it accepts now."""

    # Null ids, stage and status: only before the journey's first run finished (one a crash cut short).
    journey_id: str | None
    client_id: str | None
    current_stage: JourneyStage | None = Field(description="null until the journey has started")
    previous_stage: JourneyStage | None
    status: LifecycleStatus | None
    started_at: str | None
    stage_started_at: str | None
    completed_stages: list[JourneyStage]
    metadata: dict[str, Any]
    allowed_events: list[TransitionEvent] = Field(description="the events the journey accepts now")
    units: dict[str, UowStatus] = Field(description="unit of work id → the status of its latest run (or pending)")


class LifecycleJourneyView(LifecycleStateFields):
    """A lifecycle journey, with the rollback in progress if any."""

    rollback: OpenRollback | None = Field(description="the rollback in progress, while in the rollback stage")


class RollbackPlan(BaseModel):
    """What a rollback will do: the stages it unwinds, the units it runs and whom it notifies."""

    unwind: list[JourneyStage]
    units: list[str]
    undo: list[str] = optional_key(
        "only when units of the unwound stages have failed runs that left tasks done (an undo failed for good): "
        "those undos are made first, and the rollback validates only once they are"
    )
    notify: str = Field(description="intent of the agent told about the rollback")
    then: Literal["complete_rollback", "wait for complete_rollback"]


class RollbackSnapshot(BaseModel):
    """The checkpoint the rollback returns to (only its stage when the journey never settled there)."""

    stage: JourneyStage
    checkpoint_id: str | None
    stage_started_at: str | None = optional_key("when the journey entered that stage")
    completed_stages: list[JourneyStage] = optional_key("the stages completed at that checkpoint")
    units: dict[str, UowStatus] = optional_key("unit statuses at that checkpoint")
    metadata: dict[str, Any] = optional_key("the journey's metadata at that checkpoint")


class RollbackRecord(BaseModel):
    """A rollback as the rollback history keeps it."""

    rollback_id: str
    journey_id: str
    trigger: RollbackTrigger
    reason: str
    automatic: bool = Field(description="started by a metric crossing a threshold, not by a user")
    from_stage: JourneyStage
    to_stage: JourneyStage
    status: Literal["running", "validated", "failed", "completed", "cancelled"]
    plan: RollbackPlan
    snapshot: RollbackSnapshot | None
    run_ids: list[str] = Field(description="the runs of its rollback units of work")
    validation_id: str | None
    initiated_at: str
    validated_at: str | None
    completed_at: str | None


class RollbackNotification(BaseModel):
    """Whether the stakeholders were notified of a rollback."""

    delivered: bool
    intent: str
    error: str = optional_key("why it was not delivered")


class TransitionRollback(RollbackRecord):
    """The rollback a transition started or completed."""

    notification: RollbackNotification | None = optional_key("only when the transition started the rollback")


class UnitRunOut(BaseModel):
    """One run of a unit of work (nodes/uow.py): its tasks' entries without their outputs, which their
    completion events keep."""

    run_id: str
    uow_id: str
    stage: JourneyStage
    purpose: Literal["entry", "on_demand", "rollback", "undo"]
    status: UowStatus
    tasks: dict[str, dict[str, Any]] = Field(description="task id → its status, attempts and input")
    failure: dict[str, Any] | None


class LifecycleTransitionOut(LifecycleStateFields):
    """The journey after the event, with the gate's validation or the rollback the event started or ended."""

    rollback: TransitionRollback | OpenRollback | None = Field(
        description="the rollback record after initiate_rollback and complete_rollback; otherwise the open one"
    )
    validation: ValidationOut = optional_key("only for the gated events (start and promotions, mark_complete)")
    unit: UnitRunOut = optional_key("only for run_unit_of_work: the unit's run")


class AutomaticRollback(RollbackRecord):
    """A rollback a crossed metric threshold started, with the journey after it."""

    journey: LifecycleJourneyView = Field(description="the journey after the rollback")
    notification: RollbackNotification | None


class MetricsRecordedOut(BaseModel):
    """The metric values recorded, and the rollback they started if any."""

    journey_id: str
    recorded: dict[str, float] = Field(description="the values recorded (booleans as 1.0 and 0.0)")
    recorded_at: str
    rollback: AutomaticRollback | None = Field(description="the rollback a crossed threshold started")

"""Journey endpoints beside the Agent Server subset: structured, saga, session, MVP and lifecycle
operations, and every journey's status and history. Each calls the pattern's orchestrator as is."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends
from pydantic import BaseModel, ConfigDict, Field

from graphs.errors import GateRefusedError
from graphs.kernel.identifiers import MAX_REASON, ClientId, JourneyType, MetricName, UserId
from graphs.kernel.identifiers import METRIC_NAME as METRIC_NAME_WIDTH
from graphs.lifecycle.machine import RUN_UNIT, JourneyStage, RollbackTrigger
from graphs.lifecycle.orchestrator import EVENT_OPTIONS, UNIT_OPTIONS
from graphs.runtime import WENT_ON
from graphs.session.builder import SessionSpec
from graphs.session.mvp import MVP_PILLARS
from graphs.structured.builder import StructuredSpec
from nodes.criteria_gate import METRIC_NAME
from server.api import ViewRoute, errors
from server.auth import Principal, require
from server.models import StartKeyFields
from server.openapi import NOT_BLANK
from server.routing import api_router
from server.services import ServerServices, services
from server.views.lifecycle import LifecycleJourneyView, LifecycleTransitionOut, MetricsRecordedOut
from server.views.sessions import (
    AreaUpdatedOut,
    MvpCompletionOut,
    MvpStartOut,
    NavigatedOut,
    RecommendationOut,
    SessionProgressOut,
    SessionStartOut,
)
from server.views.status import EventOut, JourneyStatusOut
from server.views.steps import (
    SagaAdvanceOut,
    SagaDesignOut,
    SagaRunView,
    StructuredAdvanceOut,
    StructuredDesignOut,
    StructuredRunView,
)

router = api_router(prefix="/journeys", tags=["journeys"], responses=errors(), route_class=ViewRoute)
Reader = Annotated[Principal, Depends(require("read"))]
Writer = Annotated[Principal, Depends(require("journeys"))]
Services = Annotated[ServerServices, Depends(services)]
Name = Annotated[str, Field(min_length=1, max_length=200)]
# Metric name → value; the names the lifecycle accepts (lower_snake_case), as the schema states them.
Metrics = Annotated[
    dict[MetricName, float | bool],
    Field(json_schema_extra={"propertyNames": {"pattern": METRIC_NAME.pattern, "maxLength": METRIC_NAME_WIDTH}}),
]


class Body(BaseModel):
    """A request body of the journey endpoints: fields it does not declare are refused."""

    model_config = ConfigDict(extra="forbid")


class DesignIn(Body):
    """A request to design a structured journey from a template (or from your own steps)."""

    journey_type: JourneyType
    requirements: dict[str, Any] = Field(default_factory=dict)
    spec: StructuredSpec | None = Field(default=None, description="your own steps instead of the template's")


class SagaDesignIn(DesignIn):
    """A request to design a saga: a structured design plus a compensation handler per step."""

    compensation_handlers: dict[str, str] = Field(default_factory=dict)


class ExecuteIn(Body, StartKeyFields):
    """A request to start a run of a design for a user."""

    user_id: UserId
    context: dict[str, Any] = Field(default_factory=dict)


class AdvanceIn(Body):
    """A step's result, to complete the step the journey waits on."""

    step_result: dict[str, Any] = Field(default_factory=dict)
    step_id: str | None = None


class SagaAdvanceIn(AdvanceIn):
    """A step's result for a saga, naming the saga's design and user."""

    journey_id: Name
    user_id: Name


class SessionIn(Body, StartKeyFields):
    """A request to start a session for a user with the given areas."""

    user_id: UserId
    session_config: SessionSpec


class MvpIn(Body, StartKeyFields):
    """A request to start the MVP journey for a user at a pillar."""

    user_id: UserId
    initial_pillar: str = Field(default="content", json_schema_extra={"enum": [p.area_id for p in MVP_PILLARS]})


class NavigateIn(Body):
    """A request to move a session to an area."""

    area_id: Name


class AreaUpdateIn(Body):
    """Updates to merge into an area's state."""

    area_id: Name
    updates: dict[str, Any]


class CloseIn(Body):
    """A request to close a session, with an optional reason."""

    reason: str | None = None


class LifecycleIn(Body, StartKeyFields):
    """A request to start a client lifecycle journey, with initial metadata and metrics."""

    client_id: ClientId = Field(json_schema_extra={"pattern": NOT_BLANK})
    metadata: dict[str, Any] = Field(default_factory=dict)
    metrics: Metrics = Field(default_factory=dict)


def _transition_schema(schema: dict[str, Any]) -> None:
    """One branch per event, with the options that event takes (``EVENT_OPTIONS``, and ``run_unit_of_work``'s
    ``UNIT_OPTIONS``) and their types."""
    metrics = {
        "type": "object",
        "propertyNames": {"pattern": METRIC_NAME.pattern, "maxLength": METRIC_NAME_WIDTH},
        "additionalProperties": {"type": ["number", "boolean"]},
    }
    option_types: dict[str, dict[str, Any]] = {
        "metrics": metrics,
        "metadata": {"type": "object"},
        "reason": {"type": "string", "minLength": 1, "pattern": NOT_BLANK},
        "trigger": {"enum": [t.value for t in RollbackTrigger]},
        "rollback_to": {"enum": [s.value for s in (JourneyStage.SANDBOX, JourneyStage.PILOT)]},
        "complete": {"type": "boolean"},
        "from_stage": {
            "enum": [s.value for s in (JourneyStage.SANDBOX, JourneyStage.PILOT, JourneyStage.PRODUCTION)],
            "description": "the stage the caller saw: a journey found elsewhere answers 409 and nothing is done",
        },
        "uow_id": {"type": "string", "minLength": 1},
    }
    branches = []
    events = [(event.value, takes) for event, takes in EVENT_OPTIONS.items()] + [(RUN_UNIT, UNIT_OPTIONS)]
    for event, (required, optional) in events:
        options = {
            "type": "object",
            "properties": {name: option_types[name] for name in (*required, *optional)},
            "required": list(required),
            "additionalProperties": False,
        }
        body: dict[str, Any] = {"event": {"const": event}, "options": options}
        branches.append(
            {
                "type": "object",
                "properties": body,
                "required": ["event", "options"] if required else ["event"],
                "additionalProperties": False,
            }
        )
    schema.clear()
    schema.update({"title": "TransitionIn", "oneOf": branches})


class TransitionIn(Body):
    """A lifecycle event and its options; the schema states which options each event takes."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_transition_schema)

    event: Name
    options: dict[str, Any] = Field(default_factory=dict)


class ForkIn(Body):
    """Where to fork a journey: right after the last completion of this step."""

    step_id: Name


class TerminateIn(Body):
    """Why a journey is terminated: its ``journey.terminated`` event keeps it."""

    reason: str = Field(min_length=1, max_length=MAX_REASON, json_schema_extra={"pattern": NOT_BLANK})


class ReviewIn(Body):
    """A person's decision on a run its tier's evaluation held for review; who decides is the caller."""

    approved: bool = Field(description="true completes the run (a session closes as it was); false fails it")
    note: str = Field(default="", max_length=MAX_REASON, description="why: the review's event keeps it")


class CancelIn(Body):
    """Why a saga is cancelled: its ``saga.cancelled`` event and its failure keep it."""

    reason: str = Field(min_length=1, max_length=MAX_REASON, json_schema_extra={"pattern": NOT_BLANK})


class MetricsIn(Body):
    """Metric values to record for a lifecycle journey."""

    values: Metrics = Field(min_length=1)


async def _structured(
    svc: ServerServices, caller: Principal, journey_id: str, user_id: str, *, to_act: bool = False
) -> str:
    """The instance of a structured journey named by design and user: the user is the caller (or
    impersonated), named in the caller's tenant, and the instance one the caller may see (and act on:
    ``ServerServices.instance``). The routes act on it by this id: named again by design and user outside
    the caller's tenant, it was another tenant's user's journey."""
    svc.check_user(caller, user_id)
    instance_id = await svc.structured_instance_of(caller, journey_id, user_id)
    await svc.instance(caller, instance_id, to_act=to_act)
    return instance_id


# --- structured -----------------------------------------------------------------------------------


@router.post("/structured/designs", response_model=StructuredDesignOut, summary="Design a structured journey")
async def design_structured(body: DesignIn, caller: Writer, svc: Services) -> dict[str, Any]:
    with svc.acting(caller):  # the design is the caller's tenant's
        return await svc.runtime.structured.design_journey(body.journey_type, body.requirements, spec=body.spec)


@router.post(
    "/structured/{journey_id}/executions", response_model=StructuredRunView, summary="Start a structured journey"
)
async def execute_structured(journey_id: str, body: ExecuteIn, caller: Writer, svc: Services) -> dict[str, Any]:
    svc.check_user(caller, body.user_id)
    instance_id = await svc.structured_instance_of(caller, journey_id, body.user_id)
    with svc.acting(caller):
        return await svc.runtime.structured.execute_journey(
            journey_id,
            body.user_id,
            body.context,
            instance_id=instance_id,
            start_key=body.start_key,
            start_key_window=body.start_key_window,
        )


@router.post(
    "/structured/{journey_id}/users/{user_id:path}/advance",
    response_model=StructuredAdvanceOut,
    summary="Advance a step",
)
async def advance_structured(
    journey_id: str, user_id: str, body: AdvanceIn, caller: Writer, svc: Services
) -> dict[str, Any]:
    instance_id = await _structured(svc, caller, journey_id, user_id, to_act=True)
    return await svc.runtime.structured.advance_run(instance_id, body.step_result, step_id=body.step_id)


@router.post(
    "/structured/{journey_id}/users/{user_id:path}/retry",
    response_model=StructuredRunView,
    summary="Retry the failed step",
)
async def retry_structured(journey_id: str, user_id: str, caller: Writer, svc: Services) -> dict[str, Any]:
    instance_id = await _structured(svc, caller, journey_id, user_id, to_act=True)
    with svc.acting(caller):  # its step.retried event says who retried
        return await svc.runtime.structured.retry_run(instance_id, by=caller.name)


@router.get(
    "/structured/{journey_id}/users/{user_id:path}",
    response_model=StructuredRunView,
    summary="A structured journey's status",
)
async def status_structured(journey_id: str, user_id: str, caller: Reader, svc: Services) -> dict[str, Any]:
    return await svc.runtime.structured.run_status(await _structured(svc, caller, journey_id, user_id))


# --- saga -----------------------------------------------------------------------------------------


@router.post("/sagas/designs", response_model=SagaDesignOut, summary="Design a saga")
async def design_saga(body: SagaDesignIn, caller: Writer, svc: Services) -> dict[str, Any]:
    with svc.acting(caller):  # the design is the caller's tenant's
        return await svc.runtime.saga.design_saga_journey(
            body.journey_type, body.requirements, body.compensation_handlers, spec=body.spec
        )


@router.post("/sagas/designs/{journey_id}/executions", response_model=SagaRunView, summary="Start a saga")
async def execute_saga(journey_id: str, body: ExecuteIn, caller: Writer, svc: Services) -> dict[str, Any]:
    svc.check_user(caller, body.user_id)
    with svc.acting(caller):
        return await svc.runtime.saga.execute_saga_journey(
            journey_id, body.user_id, body.context, start_key=body.start_key, start_key_window=body.start_key_window
        )


@router.post("/sagas/{saga_id:path}/advance", response_model=SagaAdvanceOut, summary="Advance a saga step")
async def advance_saga(saga_id: str, body: SagaAdvanceIn, caller: Writer, svc: Services) -> dict[str, Any]:
    svc.check_user(caller, body.user_id)
    await svc.instance(caller, saga_id, to_act=True)
    return await svc.runtime.saga.advance_saga_step(
        saga_id, body.journey_id, body.user_id, body.step_result, step_id=body.step_id
    )


@router.post(
    "/sagas/{saga_id:path}/retry",
    response_model=SagaRunView,
    summary="Retry a saga's failed step or stopped compensation",
)
async def retry_saga(saga_id: str, caller: Writer, svc: Services) -> dict[str, Any]:
    await svc.instance(caller, saga_id, to_act=True)
    with svc.acting(caller):  # its retry event says who retried
        return await svc.runtime.saga.retry_saga_step(saga_id, by=caller.name)


@router.post(
    "/sagas/{saga_id:path}/cancel",
    response_model=SagaRunView,
    summary="Cancel a saga",
    description="Abandon a saga that has not ended: its completed steps are compensated, last first, as when a "
    "step fails, and it ends compensated (failed at a handler that fails for good: retry resumes it). One that has "
    "ended answers 409 (JourneyFinishedError). Terminate, by contrast, compensates nothing.",
)
async def cancel_saga(saga_id: str, body: CancelIn, caller: Writer, svc: Services) -> dict[str, Any]:
    await svc.instance(caller, saga_id, to_act=True)
    with svc.acting(caller):
        return await svc.runtime.saga.cancel_saga(saga_id, body.reason)


@router.get("/sagas/{saga_id:path}", response_model=SagaRunView, summary="A saga's status")
async def status_saga(saga_id: str, caller: Reader, svc: Services) -> dict[str, Any]:
    await svc.instance(caller, saga_id)
    return await svc.runtime.saga.get_saga_status(saga_id)


# --- session and MVP ------------------------------------------------------------------------------


@router.post("/sessions", response_model=SessionStartOut, summary="Start a session")
async def start_session(body: SessionIn, caller: Writer, svc: Services) -> dict[str, Any]:
    svc.check_user(caller, body.user_id)
    with svc.acting(caller):
        return await svc.runtime.session.start_session(
            body.user_id, body.session_config, start_key=body.start_key, start_key_window=body.start_key_window
        )


@router.post("/sessions/{session_id}/navigate", response_model=NavigatedOut, summary="Go to an area")
async def navigate(session_id: str, body: NavigateIn, caller: Writer, svc: Services) -> dict[str, Any]:
    await svc.instance(caller, session_id, to_act=True)
    with svc.acting(caller):  # the session's policies see who acts
        return await svc.runtime.session.navigate_to_area(session_id, body.area_id)


@router.post("/sessions/{session_id}/updates", response_model=AreaUpdatedOut, summary="Update an area's state")
async def update_area(session_id: str, body: AreaUpdateIn, caller: Writer, svc: Services) -> dict[str, Any]:
    await svc.instance(caller, session_id, to_act=True)
    with svc.acting(caller):  # the session's policies see who acts
        return await svc.runtime.session.update_area_state(session_id, body.area_id, body.updates)


@router.post("/sessions/{session_id}/close", response_model=SessionProgressOut, summary="Close a session")
async def close_session(session_id: str, body: CloseIn, caller: Writer, svc: Services) -> dict[str, Any]:
    await svc.instance(caller, session_id, to_act=True)
    with svc.acting(caller):  # the session's policies see who acts
        return await svc.runtime.session.close_session(session_id, body.reason)


@router.get("/sessions/{session_id}", response_model=SessionProgressOut, summary="A session's progress")
async def session_progress(session_id: str, caller: Reader, svc: Services) -> dict[str, Any]:
    await svc.instance(caller, session_id)
    return await svc.runtime.session.get_session_progress(session_id)


@router.post("/mvp", response_model=MvpStartOut, summary="Start an MVP journey")
async def start_mvp(body: MvpIn, caller: Writer, svc: Services) -> dict[str, Any]:
    svc.check_user(caller, body.user_id)
    with svc.acting(caller):
        return await svc.runtime.mvp.start_mvp_journey(
            body.user_id, body.initial_pillar, start_key=body.start_key, start_key_window=body.start_key_window
        )


@router.post("/mvp/{session_id}/navigate", response_model=NavigatedOut, summary="Go to a pillar")
async def navigate_pillar(session_id: str, body: NavigateIn, caller: Writer, svc: Services) -> dict[str, Any]:
    await svc.instance(caller, session_id, to_act=True)
    with svc.acting(caller):  # the session's policies see who acts
        return await svc.runtime.mvp.navigate_to_pillar(session_id, body.area_id)


@router.post("/mvp/{session_id}/progress", response_model=AreaUpdatedOut, summary="Record a pillar's progress")
async def pillar_progress(session_id: str, body: AreaUpdateIn, caller: Writer, svc: Services) -> dict[str, Any]:
    await svc.instance(caller, session_id, to_act=True)
    with svc.acting(caller):  # the session's policies see who acts
        return await svc.runtime.mvp.update_pillar_progress(session_id, body.area_id, body.updates)


@router.get("/mvp/{session_id}", response_model=SessionProgressOut, summary="An MVP journey's progress")
async def mvp_progress(session_id: str, caller: Reader, svc: Services) -> dict[str, Any]:
    """As ``GET /journeys/sessions/{id}`` for a session, which refuses an MVP journey (another pattern)."""
    await svc.instance(caller, session_id)
    return await svc.runtime.mvp.get_mvp_progress(session_id)


@router.get("/mvp/{session_id}/recommendation", response_model=RecommendationOut, summary="The recommended next pillar")
async def recommendation(session_id: str, caller: Reader, svc: Services) -> dict[str, Any]:
    await svc.instance(caller, session_id)
    return await svc.runtime.mvp.get_recommended_next_pillar(session_id)


@router.get("/mvp/{session_id}/completion", response_model=MvpCompletionOut, summary="Whether the MVP is complete")
async def completion(session_id: str, caller: Reader, svc: Services) -> dict[str, Any]:
    await svc.instance(caller, session_id)
    return await svc.runtime.mvp.check_mvp_completion(session_id)


# --- lifecycle ------------------------------------------------------------------------------------


@router.post("/lifecycle", response_model=LifecycleTransitionOut, summary="Start a client lifecycle journey")
async def start_lifecycle(body: LifecycleIn, caller: Writer, svc: Services) -> dict[str, Any]:
    with svc.acting(caller):
        return await svc.runtime.lifecycle.start_journey(
            body.client_id,
            metadata=body.metadata,
            metrics=body.metrics,
            start_key=body.start_key,
            start_key_window=body.start_key_window,
        )


@router.post(
    "/lifecycle/{journey_id}/transitions",
    response_model=LifecycleTransitionOut,
    summary="Apply a lifecycle event",
    description="One of the seven events with its options, or `run_unit_of_work` with `uow_id`: a unit of work of "
    "the current stage run now (a stage's `required_units` must have completed before it can be left); the answer "
    "then holds the run as `unit`. A gated event (a promotion, `mark_complete`) whose criteria are not met is "
    "refused with 409 `GateRefusedError`, its details holding the `validation` (also in the validation history).",
)
async def lifecycle_transition(journey_id: str, body: TransitionIn, caller: Writer, svc: Services) -> dict[str, Any]:
    await svc.instance(caller, journey_id, to_act=True)
    answer = await svc.runtime.lifecycle.transition(journey_id, body.event, **body.options)
    validation = answer.get("validation")
    if validation is not None and not validation["passed"]:  # not a 200 a client would take for the move
        stage = answer.get("current_stage")
        unmet = "; ".join(str(check.get("message")) for check in validation.get("checks", []) if not check["passed"])
        raise GateRefusedError(
            f"journey {journey_id!r} stays in stage {stage!r}: {validation['summary']} ({unmet})",
            validation=validation,
            current_stage=stage,
        )
    return answer


@router.post("/lifecycle/{journey_id}/metrics", response_model=MetricsRecordedOut, summary="Record lifecycle metrics")
async def lifecycle_metrics(journey_id: str, body: MetricsIn, caller: Writer, svc: Services) -> dict[str, Any]:
    await svc.instance(caller, journey_id, to_act=True)
    return await svc.runtime.lifecycle.record_metrics(journey_id, body.values)


@router.get("/lifecycle/{journey_id}", response_model=LifecycleJourneyView, summary="A lifecycle journey's state")
async def lifecycle_state(journey_id: str, caller: Reader, svc: Services) -> dict[str, Any]:
    await svc.instance(caller, journey_id)
    return await svc.runtime.lifecycle.get_journey_state(journey_id)


# --- any journey ----------------------------------------------------------------------------------


@router.get("/{instance_id:path}/status", response_model=JourneyStatusOut, summary="Any journey's status")
async def journey_status(instance_id: str, caller: Reader, svc: Services) -> dict[str, Any]:
    return await svc.journey_status(caller, instance_id)


@router.post(
    "/{instance_id:path}/fork",
    response_model=JourneyStatusOut,
    summary="Fork a journey from an earlier step",
    description="A new journey, owned by the caller, with this one's history up to the step and its state there; "
    "it goes on from the next step, and this one is left as it is. Journeys with steps in their log (structured, "
    "saga) fork; others are refused (409 ForkUnsupportedError), as is a step not completed (409 ForkPointError).",
)
async def fork_journey(instance_id: str, body: ForkIn, caller: Writer, svc: Services) -> dict[str, Any]:
    await svc.instance(caller, instance_id)  # someone else's journey is not found
    with svc.acting(caller):
        fork = await svc.runtime.fork(instance_id, body.step_id)
    return await svc.journey_status(caller, fork["instance_id"])


@router.post(
    "/{instance_id:path}/terminate",
    response_model=JourneyStatusOut,
    summary="Terminate a journey",
    description="End a journey of any pattern for good where it stands (Temporal's terminate): nothing more of it "
    "runs and nothing is compensated; its inbox tasks, timers and waits are cancelled, and `journey.terminated` is "
    "logged with the reason. Its history stays readable; every later call that would run it on answers 409 "
    "(JourneyFinishedError), as does terminating one that has ended.",
)
async def terminate_journey(instance_id: str, body: TerminateIn, caller: Writer, svc: Services) -> dict[str, Any]:
    await svc.instance(caller, instance_id, to_act=True)  # someone else's journey is not found
    with svc.acting(caller):
        terminated = await svc.runtime.terminate(instance_id, body.reason)
    view = await svc.journey_status(caller, instance_id)
    return {**view, **({WENT_ON: terminated[WENT_ON]} if WENT_ON in terminated else {})}


@router.post(
    "/{instance_id:path}/run-on",
    response_model=JourneyStatusOut,
    summary="Run on a journey left in progress with nothing running it",
    description="An operator's command for a journey that stands `in_progress` while nothing runs it (its "
    "process was killed mid-step): work left in flight is finished, a first run cut short runs from its first "
    "event, and a process's answers not yet delivered are delivered; what waits for a person, a message or a timer "
    "stays waiting. In distributed mode the workers run it (with their agents) and the answer is the journey as it "
    "stands once handed to them. One that another process holds (a run, a request, a worker: it is running, not "
    "stuck) answers 409 ConcurrentUpdateError with nothing done; a failed one 409 StepFailedError (retry it); one "
    "that has ended 409 JourneyFinishedError.",
)
async def run_on_journey(instance_id: str, caller: Writer, svc: Services) -> dict[str, Any]:
    await svc.instance(caller, instance_id, to_act=True)  # someone else's journey is not found
    with svc.acting(caller):
        await svc.runtime.run_on(instance_id)
    return await svc.journey_status(caller, instance_id)


@router.post(
    "/{instance_id:path}/review",
    response_model=JourneyStatusOut,
    summary="Review a journey run held for review",
    description="Pass or fail a run of any pattern that its tier's evaluation held for review (`on_breach: "
    '"review"`, status `review`): `approved` completes it, otherwise it fails with the note as its error. The '
    "decision is logged as `evaluation.reviewed`, naming the caller as the reviewer. A run not in review answers "
    "409 (NotInReviewError).",
)
async def review_journey(instance_id: str, body: ReviewIn, caller: Writer, svc: Services) -> dict[str, Any]:
    await svc.instance(caller, instance_id, to_act=True)  # someone else's journey is not found
    with svc.acting(caller):
        await svc.runtime.review(instance_id, approved=body.approved, by=caller.name, note=body.note)
    return await svc.journey_status(caller, instance_id)


@router.get("/{instance_id:path}/history", response_model=list[EventOut], summary="Any journey's events, in order")
async def journey_history(instance_id: str, caller: Reader, svc: Services) -> list[dict[str, Any]]:
    await svc.instance(caller, instance_id)
    return [
        {"seq": e.seq, "type": e.type, "step": e.step, "payload": e.payload, "created_at": e.created_at.isoformat()}
        for e in await svc.runtime.history(instance_id)
    ]

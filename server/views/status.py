"""Any journey's status and history: the instance index's row, merged with its pattern's own view."""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, Field

from server.views.fields import optional_key
from server.views.lifecycle import LifecycleJourneyView, LifecycleStatus
from server.views.processes import HELD_DESCRIPTION, HeldBack, ProcessInstanceView, ProcessStatus
from server.views.sessions import SessionProgressOut
from server.views.steps import SagaRunStatus, SagaRunView, StructuredRunStatus, StructuredRunView


class WentOnOut(BaseModel):
    """An event the journey logged after a terminate was asked and before it took effect."""

    seq: int
    type: str
    step: str | None


WENT_ON_DESCRIPTION = (
    "a terminate's answer only, when the journey went on before the terminate took effect: the events it logged "
    "meanwhile (a call that held it finished first: a process's service task run inside a request, which no "
    "run's cancel stops, made its effect)"
)


class IndexFields(BaseModel):
    """What the journey index keeps of every journey, whatever its pattern."""

    instance_id: str
    pattern: str
    user_id: str = Field(description="the user; a lifecycle journey's client; a process instance's business key")
    index_status: str = Field(description="the status the journey index keeps (written with the journey's events)")
    held: HeldBack = optional_key(HELD_DESCRIPTION)
    went_on_first: list[WentOnOut] | None = optional_key(WENT_ON_DESCRIPTION)


# Each base lists IndexFields last, so its fields come first in the JSON, as the route merges them.
class StructuredStatusOut(StructuredRunView, IndexFields):
    """The status of a structured journey."""

    pattern: Literal["structured"]
    index_status: StructuredRunStatus


class SagaStatusOut(SagaRunView, IndexFields):
    """The status of a saga."""

    pattern: Literal["saga"]
    index_status: SagaRunStatus


# A session its tier judged when it closed may have failed or be held for review.
SessionIndexStatus = Literal["in_progress", "completed", "closed", "failed", "review", "terminated"]

# Every status the index gives a journey, from the status views' own types: the choices of the dashboard's filter
# and of `journeys instances list --status` (a mistyped one listed nothing, as if no journey had it).
INDEX_STATUSES = tuple(
    dict.fromkeys(
        status
        for statuses in (StructuredRunStatus, SagaRunStatus, SessionIndexStatus, LifecycleStatus, ProcessStatus)
        for status in get_args(statuses)
    )
)


class SessionStatusOut(SessionProgressOut, IndexFields):
    """The status of a session."""

    pattern: Literal["session"]
    index_status: SessionIndexStatus


class MvpStatusOut(SessionProgressOut, IndexFields):
    """The status of an MVP journey."""

    pattern: Literal["mvp"]
    index_status: SessionIndexStatus


class LifecycleStatusOut(LifecycleJourneyView, IndexFields):
    """The status of a lifecycle journey."""

    pattern: Literal["lifecycle"]
    index_status: Literal[
        "in_progress",
        "pending",
        "active",
        "rollback",
        "completed",
        "cancelled",
        "failed",
        "review",
        "queued",
        "terminated",
    ]


class ProcessStatusOut(ProcessInstanceView, IndexFields):
    """The status of a process instance."""

    pattern: Literal["process"]
    index_status: ProcessStatus


JourneyStatusOut = Annotated[
    StructuredStatusOut | SagaStatusOut | SessionStatusOut | MvpStatusOut | LifecycleStatusOut | ProcessStatusOut,
    Field(discriminator="pattern"),
]


class EventOut(BaseModel):
    """One event of a journey's history."""

    seq: int
    type: str
    step: str | None
    payload: dict[str, Any]
    created_at: str

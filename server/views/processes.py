"""BPMN-style processes, their user tasks and messages (graphs/process/orchestrator.py,
graphs/process/inbox.py, checkpoints/process/inbox.py ``UserTaskRow.view``, nodes/waits.py)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from server.views.fields import optional_key

# The instance index's status (the graph's own at start): graphs/process/builder.py and
# process_orchestrator.py write them; migrating: between a migration's intent and its end; review: its
# workflow tier holds it for a person's decision; terminated: ended for good where it stood.
ProcessStatus = Literal[
    "in_progress",
    "completed",
    "failed",
    "compensating",
    "compensated",
    "cancelled",
    "migrating",
    "queued",
    "review",
    "terminated",
]


class DeploymentOut(BaseModel):
    """A deployed process version and its share of new instances."""

    name: str
    version: int
    design_id: str
    deployed_at: str
    weight: float = Field(description="the percentage of new instances this version takes")


class RolloutEntryOut(BaseModel):
    """One share of a process's rollout: the version new instances it takes start on, and its A/B variant."""

    version: int
    weight: float = Field(description="the percentage of new instances it takes (sticky by business key)")
    variant: str | None = Field(description="the A/B variant's name (recorded on each instance), if an A/B test")


class WaitFields(BaseModel):
    """Where a process instance waits."""

    wait_id: str = Field(description="the wait's id (a user task's id is its wait's id)")
    element: str = Field(description="the element the instance waits at")
    kind: str


class UserTaskWait(WaitFields):
    """A wait for a user task."""

    kind: Literal["user_task"]
    title: str
    assignee: str | None
    candidate_groups: list[str]
    response_schema: dict[str, Any] | None = Field(description="JSON Schema the completion payload must match")


class TimerWait(WaitFields):
    """A wait for a timer."""

    kind: Literal["timer"]


class MessageWait(WaitFields):
    """A wait for a message."""

    kind: Literal["message"]
    messages: list[str] = Field(description="the message name it waits for")


class RaceWait(WaitFields):
    """An event gateway: the first of its message and timer events wins."""

    kind: Literal["race"]
    options: list[str] = Field(description="the events that race")


Wait = Annotated[UserTaskWait | TimerWait | MessageWait | RaceWait, Field(discriminator="kind")]


class ProcessFailure(BaseModel):
    """The service task failure that failed a process instance."""

    element: str = Field(description="the service task whose agent failed")
    error: str
    error_type: str


class ProcessCompensationFailure(BaseModel):
    """A compensation handler that failed for good: the instance stands failed at ``compensate`` until retried."""

    element: str = Field(description="the service task whose compensation failed")
    handler: str = Field(description="intent of the compensation handler that failed")
    error: str
    error_type: str


class TimerIncident(BaseModel):
    """A timer whose agent call (an SLA's notification, a reminder) failed after its retries: it fires no more
    until the instance is retried (``POST /processes/instances/{id}/retry``), which re-arms it."""

    timer_id: str
    element: str = Field(description="the timer's element (the user task of an SLA, the boundary of a reminder)")
    purpose: str = Field(description="sla or reminder")
    task_id: str | None = Field(description="the user task it was for")
    intent: str = Field(description="the agent intent that failed")
    error: str
    error_type: str
    attempts: int = Field(description="the attempts the agent's retry policy made")
    failed_at: str


class HeldBack(BaseModel):
    """What holds a journey's continuation back: a timer (fired, its answer undelivered; or an SLA's or a
    reminder's notification, unfired) or an answer left undelivered, kept for a process with the agents its process
    calls, which no process that found it has (register them with ``--plugin`` on every ``journeys serve`` and
    ``journeys worker``). Gone once it goes on."""

    missing_intents: list[str] = Field(description="the intents no agent serves in the processes that found it")
    timer_id: str = optional_key("the timer held back: fired and its answer undelivered, or a notification unfired")
    wait_id: str = optional_key("a wait whose answer is held back undelivered (found again after its lease)")
    since: str = Field(description="when it was first held back")


HELD_DESCRIPTION = "only while some: what holds its continuation back (agents no process serving it has)"


class ProcessInstanceView(BaseModel):
    """A process instance: its version, status, variables and where it waits."""

    instance_id: str
    process: str
    version: int
    variant: str | None = Field(description="the A/B variant the instance got, if the rollout has variants")
    business_key: str
    status: ProcessStatus
    outcome: str | None = Field(description="the end event it reached (its outcome, or its id)")
    variables: dict[str, Any]
    waiting: list[Wait] = Field(description="what it waits for now; empty once finished")
    failure: ProcessFailure | None = Field(description="the failure that started compensation")
    compensated: list[str] = Field(description="the elements undone, last completed first")
    failed_element: str = optional_key(
        "only while an element has failed: that element (retry it); 'compensate' for the compensation"
    )
    compensation_failure: ProcessCompensationFailure = optional_key(
        "only while failed at 'compensate': the handler that failed (the retry calls it again)"
    )
    incidents: list[TimerIncident] = optional_key(
        "only in a status read, and only when some: timers whose agent failed after its retries (retry the instance)"
    )
    held: HeldBack = optional_key(f"in a status read, {HELD_DESCRIPTION}")


class TaskOut(BaseModel):
    """A user task in the inbox."""

    task_id: str
    instance_id: str
    element: str
    title: str
    assignee: str | None
    candidate_groups: list[str]
    claimed_by: str | None
    status: Literal["open", "completed", "cancelled"]
    response_schema: dict[str, Any] | None = Field(description="JSON Schema the completion payload must match")
    sla_due_at: str | None
    escalation: Literal["notify", "reassign", "complete"] | None = Field(
        description="the action its SLA breach took, once breached"
    )
    escalated_at: str | None
    created_at: str
    completed_by: str | None
    result: dict[str, Any] | None = Field(description="the payload it was completed with")


class MessageSentOut(BaseModel):
    """What a sent message did: the instances it resumed or started, or where it was buffered."""

    correlated: list[str] = Field(description="the waiting instances it resumed")
    started: list[str] = Field(description="the instances it started (processes with a message start)")
    buffered: str | None = Field(description="the buffered message's id, when nobody took it yet")
    active: list[str] = optional_key(
        "only when some: the active instances, started by a message with this correlation key, of the processes "
        "it started none of (one active instance per process and key, as Camunda's message starts)"
    )
    expires_at: str = optional_key("only when buffered: until when a new wait can still take it")

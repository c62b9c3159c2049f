"""The user-task inbox (list, claim, complete) and messages. A task can only be claimed or completed by
its assignee or a member of one of its candidate groups: the caller's API key says who and which groups
(with auth off, the request names them)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from graphs.kernel.identifiers import BUSINESS_KEY, MAX_REASON
from graphs.process.spec import ProcessSpec
from nodes.variables import BUSINESS_KEY as BUSINESS_KEY_VARIABLE
from nodes.variables import MAX_NAME
from server.api import ViewRoute, errors
from server.auth import Principal, require
from server.models import MAX_INT, StartKeyFields
from server.services import ServerServices, services
from server.views.processes import DeploymentOut, MessageSentOut, ProcessInstanceView, TaskOut

router = APIRouter(tags=["inbox"], responses=errors(), route_class=ViewRoute)
Reader = Annotated[Principal, Depends(require("read"))]
Worker = Annotated[Principal, Depends(require("tasks"))]
Messenger = Annotated[Principal, Depends(require("messages"))]
Services = Annotated[ServerServices, Depends(services)]


class Actor(BaseModel):
    """Who acts on a user task, when the server runs without API keys."""

    model_config = ConfigDict(extra="forbid")

    # Only read with auth switched off; otherwise the API key names the user and groups.
    user: str | None = Field(default=None, min_length=1, max_length=200)
    groups: list[str] = Field(default_factory=list)


class CompleteIn(Actor):
    """A user task's completion: who completes it and the response payload."""

    payload: dict[str, Any] = Field(default_factory=dict)


class MessageIn(BaseModel):
    """A message to correlate to waiting instances (or to start a process)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    correlation_key: str = Field(min_length=1, max_length=300)
    payload: dict[str, Any] = Field(default_factory=dict)
    message_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        description="the sender's id for this message: sent again with it, it answers as the first time and "
        "changes nothing (another message with a used id: 422)",
    )


def _who(caller: Principal, actor: Actor) -> tuple[str, list[str]]:
    if caller.authenticated:
        return caller.name, list(caller.groups)
    return actor.user or caller.name, list(actor.groups)


@router.get("/tasks", response_model=list[TaskOut], summary="Open user tasks for an assignee or group")
async def list_tasks(
    caller: Reader,
    svc: Services,
    assignee: Annotated[str | None, Query(max_length=200)] = None,
    group: Annotated[str | None, Query(max_length=200)] = None,
    instance_id: Annotated[str | None, Query(max_length=200)] = None,
) -> list[dict[str, Any]]:
    """Tasks for the caller (``assignee``: itself, ``group``: one of its groups), or of an instance it may see."""
    if instance_id is not None:
        await svc.instance(caller, instance_id)
    else:
        svc.check_inbox(caller, assignee, group)
    tasks = await svc.runtime.processes.inbox.list_tasks(
        assignee=assignee, group=group, instance_id=instance_id, tenant=svc.tasks_tenant(caller)
    )
    for shown in dict.fromkeys(task["instance_id"] for task in tasks):
        await svc.know_marks(shown)
    return tasks


@router.get("/tasks/{task_id}", response_model=TaskOut, summary="A user task")
async def get_task(task_id: str, caller: Reader, svc: Services) -> dict[str, Any]:
    return await svc.task(caller, task_id)


@router.post("/tasks/{task_id}/claim", response_model=TaskOut, summary="Claim a task")
async def claim_task(task_id: str, body: Actor, caller: Worker, svc: Services) -> dict[str, Any]:
    await svc.task(caller, task_id)  # one of another tenant's is not found
    user, groups = _who(caller, body)
    return await svc.runtime.processes.inbox.claim(task_id, user, groups=groups)


@router.post(
    "/tasks/{task_id}/complete", response_model=ProcessInstanceView, summary="Complete a task; the process resumes"
)
async def complete_task(task_id: str, body: CompleteIn, caller: Worker, svc: Services) -> dict[str, Any]:
    await svc.task(caller, task_id)  # one of another tenant's is not found
    user, groups = _who(caller, body)
    return await svc.runtime.processes.inbox.complete(task_id, user=user, payload=body.payload, groups=groups)


@router.post("/messages", response_model=MessageSentOut, summary="Send a message to the processes waiting for it")
async def send_message(body: MessageIn, caller: Messenger, svc: Services) -> dict[str, Any]:
    """The message is the caller's tenant's: it reaches that tenant's instances only (an admin's: every tenant's),
    is buffered for them, and its id is unique within the tenant; an instance it starts is the caller's."""
    with svc.acting(caller):
        return await svc.runtime.processes.send_message(
            body.name,
            body.correlation_key,
            body.payload,
            message_id=body.message_id,
            tenant=svc.tasks_tenant(caller),  # the tenant the caller works in, as with its tasks (admin: None)
        )


Deployer = Annotated[Principal, Depends(require("journeys"))]


# A variable a start or a set may name (nodes.variables.check_names): not empty, at most MAX_NAME characters, and
# not the instance's business key (given as the start's own field).
VariableName = Annotated[
    str, Field(min_length=1, max_length=MAX_NAME, json_schema_extra={"not": {"const": BUSINESS_KEY_VARIABLE}})
]


class ProcessStartIn(StartKeyFields):
    """A request to start a process instance: its business key, variables and optional version."""

    model_config = ConfigDict(extra="forbid")

    business_key: str = Field(min_length=1, max_length=BUSINESS_KEY)
    variables: dict[VariableName, Any] = Field(default_factory=dict, description="variable name → its value")
    version: int | None = Field(default=None, ge=1, le=MAX_INT)


@router.post("/processes", response_model=DeploymentOut, summary="Deploy a process (a new version of its name)")
async def deploy_process(body: ProcessSpec, caller: Deployer, svc: Services) -> dict[str, Any]:
    with svc.acting(caller):  # the name is the caller's tenant's from its first deployment on
        return await svc.runtime.processes.deploy(body, agents=svc.settings.holds_agents)


@router.post("/processes/{name}/instances", response_model=ProcessInstanceView, summary="Start a process instance")
async def start_process(name: str, body: ProcessStartIn, caller: Deployer, svc: Services) -> dict[str, Any]:
    with svc.acting(caller):
        return await svc.runtime.processes.start(
            name,
            body.business_key,
            body.variables,
            version=body.version,
            start_key=body.start_key,
            start_key_window=body.start_key_window,
        )


@router.get(
    "/processes/instances/{instance_id}", response_model=ProcessInstanceView, summary="A process instance's status"
)
async def process_status(instance_id: str, caller: Reader, svc: Services) -> dict[str, Any]:
    await svc.instance(caller, instance_id)
    return await svc.runtime.processes.status(instance_id)


class VariablesIn(BaseModel):
    """Variables to set on a running process instance (checked against its process's ``variables_schema``)."""

    model_config = ConfigDict(extra="forbid")

    variables: dict[VariableName, Any] = Field(min_length=1, description="variable name → its new value")
    retry: bool = Field(
        default=False, description="the instance stands failed: run its failed element again on these variables"
    )


class RetryIn(BaseModel):
    """A retry of a failed process instance, optionally with variables set first."""

    model_config = ConfigDict(extra="forbid")

    variables: dict[VariableName, Any] | None = Field(
        default=None, min_length=1, description="variables to set before the element runs"
    )


@router.post(
    "/processes/instances/{instance_id}/variables",
    response_model=ProcessInstanceView,
    summary="Set a process instance's variables (and, with retry, run its failed element again)",
)
async def set_process_variables(instance_id: str, body: VariablesIn, caller: Deployer, svc: Services) -> dict[str, Any]:
    """Camunda's ``setVariables``: a value ``variables_schema`` refuses is 422, nothing set; a failed instance needs
    ``retry: true``, and one inside parallel branches or finished is 409."""
    await svc.instance(caller, instance_id, to_act=True)  # someone else's is not found
    with svc.acting(caller):
        return await svc.runtime.processes.set_variables(instance_id, body.variables, retry=body.retry, by=caller.name)


@router.post(
    "/processes/instances/{instance_id}/retry",
    response_model=ProcessInstanceView,
    summary="Run a failed process instance's failed element again",
)
async def retry_process(
    instance_id: str, caller: Deployer, svc: Services, body: RetryIn | None = None
) -> dict[str, Any]:
    await svc.instance(caller, instance_id, to_act=True)  # someone else's is not found
    with svc.acting(caller):
        return await svc.runtime.processes.retry(instance_id, body.variables if body else None, by=caller.name)


class ProcessCancelIn(BaseModel):
    """Why a process instance is cancelled: its ``process.cancelled`` event keeps it."""

    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, min_length=1, max_length=MAX_REASON)


@router.post(
    "/processes/instances/{instance_id}/cancel",
    response_model=ProcessInstanceView,
    summary="Cancel a process instance",
    description="Stop a process instance where it stands (Camunda's cancel): its inbox tasks, timers, waits and "
    "message subscriptions are cancelled and `process.cancelled` is logged with the reason; nothing is compensated. "
    "A failed one is cancelled too, giving its retry up. One that has ended already answers 409, as does a later "
    "retry; someone else's (another tenant's) is 404.",
)
async def cancel_process(
    instance_id: str, caller: Deployer, svc: Services, body: ProcessCancelIn | None = None
) -> dict[str, Any]:
    await svc.instance(caller, instance_id, to_act=True)  # someone else's is not found
    with svc.acting(caller):
        return await svc.runtime.processes.cancel(instance_id, (body.reason if body else None) or "")

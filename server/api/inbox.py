"""The user-task inbox (list, claim, complete) and messages. A task can only be claimed or completed by
its assignee or a member of one of its candidate groups: the caller's API key says who and which groups
(with auth off, the request names them)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from checkpoints.schema import widths
from graphs.errors import RolloutError
from graphs.kernel.identifiers import BUSINESS_KEY, MAX_REASON
from graphs.process.spec import ELEMENT_ID, ProcessSpec
from nodes.variables import BUSINESS_KEY as BUSINESS_KEY_VARIABLE
from nodes.variables import MAX_NAME
from server.api import ViewRoute, errors
from server.auth import Principal, require
from server.models import MAX_INT, StartKeyFields
from server.routing import api_router
from server.services import ServerServices, services
from server.views.processes import DeploymentOut, MessageSentOut, ProcessInstanceView, RolloutEntryOut, TaskOut

router = api_router(tags=["inbox"], responses=errors(), route_class=ViewRoute)
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


@router.get(
    "/tasks", response_model=list[TaskOut], summary="Open user tasks for an assignee or group (none: the caller's own)"
)
async def list_tasks(
    caller: Reader,
    svc: Services,
    assignee: Annotated[str | None, Query(max_length=200)] = None,
    group: Annotated[str | None, Query(max_length=200)] = None,
    instance_id: Annotated[str | None, Query(max_length=200)] = None,
) -> list[dict[str, Any]]:
    """Tasks for the caller (``assignee``: itself, ``group``: one of its groups), or of an instance it may see;
    with neither, the caller's own inbox (assigned to it or offered to one of its groups; an admin's: all)."""
    inbox, tenant = svc.runtime.processes.inbox, svc.tasks_tenant(caller)
    if instance_id is None and assignee is None and group is None and not svc.viewer(caller).admin:
        tasks = await inbox.for_user(caller.name, caller.groups, tenant=tenant)
    else:
        if instance_id is not None:
            await svc.instance(caller, instance_id)
        else:
            svc.check_inbox(caller, assignee, group)
        tasks = await inbox.list_tasks(assignee=assignee, group=group, instance_id=instance_id, tenant=tenant)
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


# Distributed mode: a process's work (a start's first run, an answer's delivery) is handed to the workers, and
# the call answers the instance as it stands; with wait=true, once the workers have run it on.
Wait = Annotated[
    bool,
    Query(
        description="distributed mode (`journeys serve --distributed`), where the workers run the process: answer "
        "once they have run it on (to where it waits, or ends), as an embedded server answers; without it, at once, "
        "with the instance as it stands (`GET /processes/instances/{id}` shows it move on)"
    ),
]


async def _waited(svc: ServerServices, view: dict[str, Any], wait: bool) -> dict[str, Any]:
    """``view`` (an instance's), or with ``wait`` where its work was handed to the workers, its status once they
    have run it on."""
    if not wait or svc.runtime.processes.hand_off is None:
        return view
    await svc.handed_over(view["instance_id"])
    return await svc.runtime.processes.status(view["instance_id"])


@router.post(
    "/tasks/{task_id}/complete", response_model=ProcessInstanceView, summary="Complete a task; the process resumes"
)
async def complete_task(
    task_id: str, body: CompleteIn, caller: Worker, svc: Services, wait: Wait = False
) -> dict[str, Any]:
    await svc.task(caller, task_id)  # one of another tenant's is not found
    user, groups = _who(caller, body)
    view = await svc.runtime.processes.inbox.complete(task_id, user=user, payload=body.payload, groups=groups)
    return await _waited(svc, view, wait)


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
async def deploy_process(
    body: ProcessSpec,
    caller: Deployer,
    svc: Services,
    weight: Annotated[
        float | None,
        Query(
            ge=0,
            le=100,
            description="the percentage of new instances the new version takes at once, from the default version's "
            "share, the other versions keeping theirs (a gradual rollout; `PUT /processes/{name}/rollout` moves it "
            "on); 409 RolloutConflictError over an A/B test or a default holding less; without it, all",
        ),
    ] = None,
) -> dict[str, Any]:
    with svc.acting(caller):  # the name is the caller's tenant's from its first deployment on
        return await svc.runtime.processes.deploy(body, weight=weight, agents=svc.settings.holds_agents)


@router.get(
    "/processes/{name}/versions",
    response_model=list[DeploymentOut],
    summary="A process's deployed versions, each with its share of new instances",
)
async def process_versions(name: str, caller: Reader, svc: Services) -> list[dict[str, Any]]:
    """Oldest first. Another tenant's process is 404, as if none were deployed."""
    with svc.acting(caller):
        return await svc.runtime.processes.versions(name)


@router.get(
    "/processes/{name}/rollout", response_model=list[RolloutEntryOut], summary="Which versions new instances start on"
)
async def process_rollout(name: str, caller: Reader, svc: Services) -> list[dict[str, Any]]:
    with svc.acting(caller):
        return await svc.runtime.processes.rollout(name)


class RolloutShareIn(BaseModel):
    """One share of a rollout: a deployed version, the percentage of new instances it takes, and for an A/B test
    the variant's name."""

    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1, le=MAX_INT)
    weight: float = Field(ge=0, le=100, description="percent; the shares' weights sum to 100")
    variant: str | None = Field(
        default=None, min_length=1, max_length=100, description="an A/B variant's name: give one to every share or none"
    )


class RolloutIn(BaseModel):
    """A process's new rollout: gradual (``[{version: 2, weight: 10}, {version: 1, weight: 90}]``) or an A/B test
    (each share names its ``variant``)."""

    model_config = ConfigDict(extra="forbid")

    entries: list[RolloutShareIn] = Field(min_length=1, max_length=100)


def _weights_and_variants(
    entries: list[RolloutShareIn],
) -> tuple[dict[int, float], None] | tuple[None, dict[str, tuple[int, float]]]:
    """The rollout as ``set_rollout`` (weights by version) or ``ab_test`` (version and weight by variant) take it;
    :class:`RolloutError` for shares a mapping would silently merge (a version or a variant twice) or mix."""
    named = [e.variant for e in entries if e.variant is not None]
    if named and len(named) != len(entries):
        raise RolloutError(
            "invalid rollout: name a variant for every share (an A/B test) or for none (a gradual rollout)",
            problems=["some shares name a variant and some do not"],
        )
    keys: list[str | int] = list(named) if named else [e.version for e in entries]
    twice = sorted({str(k) for k in keys if keys.count(k) > 1})
    if twice:
        what = "variant" if named else "version"
        problem = f"{what} {', '.join(twice)} is given more than once; give each {what} one share"
        raise RolloutError(f"invalid rollout: {problem}", problems=[problem])
    if named:
        return None, {str(e.variant): (e.version, e.weight) for e in entries}
    return {e.version: e.weight for e in entries}, None


@router.put(
    "/processes/{name}/rollout",
    response_model=list[RolloutEntryOut],
    summary="Set which versions new instances start on (a gradual rollout or an A/B test)",
    description="New instances are routed by business key to the shares' versions, sticky: raising the newest "
    "version's weight 10 → 50 → 100 only moves keys onto it. Instances already started stay on their version "
    "(migrate them with `POST /processes/instances/{id}/migrate`). Weights that do not sum to 100, a version not "
    "deployed, or a version or variant given twice are 422 and change nothing. Only the tenant whose process it is "
    "(the default tenant for a shared one) changes it: 409 `ProcessNameTakenError` for another that may start it, "
    "404 for one that may not.",
)
async def set_process_rollout(name: str, body: RolloutIn, caller: Deployer, svc: Services) -> list[dict[str, Any]]:
    weights, variants = _weights_and_variants(body.entries)
    with svc.acting(caller):
        if variants is not None:
            return await svc.runtime.processes.ab_test(name, variants)
        assert weights is not None
        return await svc.runtime.processes.set_rollout(name, weights)


@router.post("/processes/{name}/instances", response_model=ProcessInstanceView, summary="Start a process instance")
async def start_process(
    name: str, body: ProcessStartIn, caller: Deployer, svc: Services, wait: Wait = False
) -> dict[str, Any]:
    with svc.acting(caller):
        view = await svc.runtime.processes.start(
            name,
            body.business_key,
            body.variables,
            version=body.version,
            start_key=body.start_key,
            start_key_window=body.start_key_window,
        )
    return await _waited(svc, view, wait)


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


ElementId = Annotated[str, Field(min_length=1, max_length=widths.ELEMENT_ID, pattern=ELEMENT_ID.pattern)]
# A mapping's keys are stated without the pattern (pydantic writes a keyed pattern as patternProperties, beside
# which the document's objects allow any other key): a key that names no element is the plan's problem (422).
ElementKey = Annotated[str, Field(min_length=1, max_length=widths.ELEMENT_ID)]


class MigrateIn(BaseModel):
    """A migration plan: the version to move to, and where each element the instance waits at goes in it."""

    model_config = ConfigDict(extra="forbid")

    to_version: int = Field(ge=1, le=MAX_INT, description="a deployed version of the instance's process")
    mapping: dict[ElementKey, ElementId] = Field(
        default_factory=dict,
        max_length=1000,
        description="element the instance waits at → element of the target version (an element the target has "
        "under the same id maps to itself unless given)",
    )


@router.post(
    "/processes/instances/{instance_id}/migrate",
    response_model=ProcessInstanceView,
    summary="Move a waiting process instance to another version of its process",
    description="Camunda's process instance migration: the instance keeps what it waits on (the same user task, "
    "claimed or not, timers with their due times, message subscriptions), now at the mapped elements of "
    "`to_version`, whose definition it follows from then on (a task's title and response schema, its SLA's "
    "escalation, its reminders). The plan is checked whole first: a waiting element with no mapping, one mapped "
    "to an element of another kind or inside a parallel branch is 422 `MigrationRefusedError` listing every "
    "problem, nothing changed. An instance that is not waiting (finished, failed, inside parallel branches) or "
    "whose wait was answered meanwhile is 409; an unknown version 404; someone else's instance 404.",
)
async def migrate_process(instance_id: str, body: MigrateIn, caller: Deployer, svc: Services) -> dict[str, Any]:
    await svc.instance(caller, instance_id, to_act=True)  # someone else's is not found
    with svc.acting(caller):
        return await svc.runtime.processes.migrate(
            instance_id, to_version=body.to_version, mapping=body.mapping, by=caller.name
        )


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

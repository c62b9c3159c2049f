"""Crons: an assistant's runs on a schedule (``/runs/crons``, ``/threads/{thread_id}/runs/crons``).

Each firing creates a run, as ``runs.create`` would: with no thread, on a new thread each time (a fresh
journey per firing); on a thread (chat assistants, e.g. the guide), queued behind any run active there.
Schedules are five-field cron expressions read in ``timezone`` (UTC by default). Firings are durable
timers: never early, and one catch-up firing for the ticks missed while no scheduler ran. A firing that
fails (its run could not be created) is tried again with a backoff; a tick that failed every try is an
incident (``GET /runs/crons/{cron_id}/incidents``, retried with ``POST /runs/crons/{cron_id}/retry``) while
the cron goes on to its next tick.

A cron belongs to the caller that created it (its tenant, shared with its ``share_with`` group), and so
do its firings' runs; every route finds only the crons the caller may see (filtered in the query), and a
cron on a thread needs a thread the caller may see.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

from fastapi import Depends, Path, Response
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from graphs.errors import JourneyNotFoundError
from server.api import errors, one_of_configurable_and_context
from server.api.runs import assistant_options
from server.auth import Principal, require
from server.crons import FIRING_OPTIONS, RUN_OPTIONS, CronFilter, CronRow
from server.input_guard import GuardedRoute
from server.models import (
    MAX_INT,
    NOT_CONFIGURABLE_AND_CONTEXT,
    RunConfig,
    RunStreamModes,
    kept,
    pagination_headers,
    select_of,
)
from server.routing import api_router
from server.services import ServerServices, services

router = api_router(tags=["crons"], responses=errors(), route_class=GuardedRoute)
Reader = Annotated[Principal, Depends(require("read"))]
Runner = Annotated[Principal, Depends(require("runs"))]
Services = Annotated[ServerServices, Depends(services)]
ThreadId = Annotated[str, Path(min_length=1, max_length=200)]
CronId = Annotated[str, Path(min_length=1, max_length=64)]
CronSortBy = Literal["cron_id", "assistant_id", "thread_id", "next_run_date", "end_time", "created_at", "updated_at"]


class CronOut(BaseModel):
    """A cron, as ``langgraph-sdk``'s ``Cron``."""

    cron_id: str
    assistant_id: str
    thread_id: str | None
    on_run_completed: str | None
    end_time: str | None
    schedule: str
    timezone: str | None
    created_at: str
    updated_at: str
    payload: dict[str, Any]
    user_id: str | None
    next_run_date: str | None
    metadata: dict[str, Any]
    enabled: bool


class CronRunOptions(BaseModel):
    """What each firing's run gets, and the cron's schedule."""

    # The SDK sends more (stream_mode, checkpoint_during…).
    model_config = ConfigDict(extra="allow", json_schema_extra=NOT_CONFIGURABLE_AND_CONTEXT)

    input: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    config: RunConfig | None = None
    context: dict[str, Any] | None = None
    durability: Literal["sync", "async", "exit"] | None = None
    # Each firing's run streams (records, for runs.join_stream) these modes, as a run created with them does.
    stream_mode: RunStreamModes = None
    stream_resumable: bool | None = Field(
        None, description="accepted: every run's stream chunks are kept for runs.join_stream here"
    )
    # Each firing's run stops there and calls the webhook when it ends, as a run created with them does.
    interrupt_before: Literal["*"] | list[str] | None = None
    interrupt_after: Literal["*"] | list[str] | None = None
    webhook: str | None = Field(default=None, max_length=2000, pattern="^https?://")
    multitask_strategy: Literal["reject", "enqueue"] | None = Field(
        None,
        description="a cron on a thread, while a run is active there: enqueue (the default) queues the firing's "
        "run behind it; reject skips that tick (interrupt and rollback are refused)",
    )
    end_time: AwareDatetime | None = None
    enabled: bool | None = None
    timezone: str | None = Field(None, min_length=1, max_length=64)
    on_run_completed: Literal["delete", "keep"] | None = Field(
        None,
        description="a cron without a thread: 'delete' (the default, as the Agent Server's) deletes each firing's "
        "new thread when its run ends (its journey stays reachable by its instance id); 'keep' keeps it",
    )

    @field_validator("multitask_strategy", mode="before")
    @classmethod
    def _no_cancelling(cls, strategy: Any) -> Any:
        if strategy in ("interrupt", "rollback"):  # said so, not "Input should be 'reject' or 'enqueue'"
            raise ValueError(
                f"a cron's runs do not take multitask_strategy {strategy!r} (it would cancel the thread's active "
                "run from the scheduler); use enqueue (wait behind it) or reject (skip the tick)"
            )
        return strategy

    @field_validator("end_time")
    @classmethod
    def _end_time_in_utc(cls, end_time: datetime | None) -> datetime | None:
        """The end time as the moment in UTC it names, which is how it is stored and answered: one whose UTC
        moment falls outside the calendar (9999-12-31T23:59-14:00 is in the year 10000) is refused here, as no
        store can keep or read it back."""
        if end_time is None:
            return None
        try:
            return end_time.astimezone(UTC)
        except OverflowError:
            raise ValueError("end_time falls outside the years 1 to 9999 once in UTC") from None

    def payload(self, caller: Principal) -> dict[str, Any]:
        fields = (
            "input",
            "metadata",
            "config",
            "context",
            "durability",
            "multitask_strategy",
            "stream_resumable",
            *FIRING_OPTIONS,
        )
        chosen = {name: getattr(self, name) for name in fields if getattr(self, name) is not None}
        if self.stream_mode is not None:
            chosen["stream_mode"] = [self.stream_mode] if isinstance(self.stream_mode, str) else self.stream_mode
        return {**chosen, "groups": list(caller.groups)}


Options = TypeVar("Options", bound=CronRunOptions)


class CronCreate(CronRunOptions):
    """A new cron: the assistant its firings run and their schedule."""

    assistant_id: str = Field(min_length=1, max_length=100)
    schedule: str = Field(min_length=1, max_length=200)


class CronPatch(CronRunOptions):
    """A change to a cron: only the fields given change."""

    schedule: str | None = Field(None, min_length=1, max_length=200)


class CronSearch(BaseModel):
    """Which crons to list, in which order."""

    assistant_id: str | None = Field(None, max_length=100)
    thread_id: str | None = Field(None, max_length=200)
    enabled: bool | None = None
    metadata: dict[str, Any] | None = None
    limit: int = Field(10, ge=1, le=1000)
    offset: int = Field(0, ge=0, le=MAX_INT)
    sort_by: CronSortBy = "created_at"
    sort_order: Literal["asc", "desc"] = "desc"
    # "now": the server's current time, which the Agent Server's crons carry beside their next_run_date.
    select: select_of(CronOut, answered=("now",)) = None  # type: ignore[valid-type]


class CronCount(BaseModel):
    """Which crons to count."""

    assistant_id: str | None = Field(None, max_length=100)
    thread_id: str | None = Field(None, max_length=200)
    metadata: dict[str, Any] | None = None


def _when(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat() if moment else None


def cron_view(cron: CronRow) -> dict[str, Any]:
    payload = {k: v for k, v in cron.payload.items() if k not in ("groups", RUN_OPTIONS)}
    return {
        "cron_id": cron.cron_id,
        "assistant_id": cron.assistant_id,
        "thread_id": cron.thread_id,
        "on_run_completed": cron.on_run_completed,
        "end_time": _when(cron.end_time),
        "schedule": cron.schedule,
        "timezone": cron.timezone,
        "created_at": _when(cron.created_at),
        "updated_at": _when(cron.updated_at),
        "payload": payload,
        "user_id": cron.user_id,
        "next_run_date": _when(cron.next_run_date),
        "metadata": cron.metadata,
        "enabled": cron.enabled,
    }


def _consolidated(body: Options) -> Options:
    """The cron's run options with config.configurable and context made one (see one_of_configurable_and_context)."""
    config, context = one_of_configurable_and_context(body.config, body.context)
    return body.model_copy(update={"config": config, "context": context})


async def _create(svc: ServerServices, thread_id: str | None, body: CronCreate, caller: Principal) -> dict[str, Any]:
    body = _consolidated(body)
    if thread_id is not None:
        await svc.resolve_thread(thread_id, caller)
    assistant = await svc.resolve_assistant(body.assistant_id, caller)  # a built-in, or one the caller may see
    await svc.check_input_instances(caller, assistant.pattern, body.input)
    payload = body.payload(caller)
    with svc.acting(caller):  # the cron is the caller's
        cron = await svc.crons.create(
            assistant_id=assistant.assistant_id,
            thread_id=thread_id,
            schedule=body.schedule,
            timezone=body.timezone or "UTC",
            end_time=body.end_time,
            payload=payload
            | {RUN_OPTIONS: assistant_options(assistant, payload.get("config"), payload.get("context"))},
            metadata=body.metadata or {},
            enabled=True if body.enabled is None else body.enabled,
            # A firing's thread goes with its run unless kept, as the Agent Server's stateless crons do.
            on_run_completed=body.on_run_completed or ("delete" if thread_id is None else None),
            user_id=caller.name,
        )
    return cron_view(cron)


async def _mine(svc: ServerServices, caller: Principal, cron_id: str) -> CronRow:
    """A cron ``caller`` may see; not found (404, as for one that does not exist) otherwise."""
    found = await svc.crons.store.get(cron_id, viewer=svc.viewer(caller))
    if found is None:
        raise JourneyNotFoundError(f"no cron {cron_id!r}", cron_id=cron_id)
    return found


@router.post("/runs/crons", response_model=CronOut, summary="Create a cron: a new thread per firing")
async def create_cron(body: CronCreate, caller: Runner, svc: Services) -> dict[str, Any]:
    return await _create(svc, None, body, caller)


@router.post("/threads/{thread_id}/runs/crons", response_model=CronOut, summary="Create a cron on a thread")
async def create_thread_cron(thread_id: ThreadId, body: CronCreate, caller: Runner, svc: Services) -> dict[str, Any]:
    return await _create(svc, thread_id, body, caller)


@router.post("/runs/crons/search", response_model=list[CronOut], summary="Search crons")
async def search_crons(
    body: CronSearch, caller: Reader, svc: Services, response: Response
) -> list[dict[str, Any]] | JSONResponse:
    found = await svc.crons.store.search(
        CronFilter(body.assistant_id, body.thread_id, body.enabled, body.metadata),
        limit=body.limit + 1,  # the one past the page: whether another page follows (the paging headers)
        offset=body.offset,
        sort_by=body.sort_by,
        descending=body.sort_order == "desc",
        viewer=svc.viewer(caller),
    )
    views = [cron_view(cron) for cron in found[: body.limit]]
    if body.select and "now" in body.select:
        now = _when(svc.runtime.store.clock.now())  # the clock the crons fire by
        views = [view | {"now": now} for view in views]
    page = kept(views, body.select)
    headers = pagination_headers(body.offset, len(views), len(found) > body.limit)
    (page if isinstance(page, JSONResponse) else response).headers.update(headers)
    return page


@router.post("/runs/crons/count", response_model=int, summary="Count crons")
async def count_crons(body: CronCount, caller: Reader, svc: Services) -> int:
    where = CronFilter(body.assistant_id, body.thread_id, None, body.metadata)
    return await svc.crons.store.count(where, viewer=svc.viewer(caller))


@router.patch("/runs/crons/{cron_id}", response_model=CronOut, summary="Change a cron")
async def update_cron(cron_id: CronId, body: CronPatch, caller: Runner, svc: Services) -> dict[str, Any]:
    given = body.model_fields_set
    body = _consolidated(body)  # a new context replaces the cron's configurable too (and the reverse)
    current = await _mine(svc, caller, cron_id)
    changes: dict[str, Any] = {
        name: getattr(body, name)
        for name in ("schedule", "timezone", "end_time", "enabled", "on_run_completed", "metadata")
        if name in given and (getattr(body, name) is not None or name == "end_time")
    }
    if given & {"input", "config", "context", "durability", *FIRING_OPTIONS}:
        # Metadata is merged by the store (into the runs' as well as the cron's), not replaced here.
        given_options = {k: v for k, v in body.payload(caller).items() if k not in ("groups", "metadata")}
        payload = {**current.payload, **given_options}
        assistant = await svc.resolve_assistant(current.assistant_id, caller)
        await svc.check_input_instances(caller, assistant.pattern, body.input)
        options = assistant_options(assistant, payload.get("config"), payload.get("context"))
        changes["payload"] = payload | {RUN_OPTIONS: options}
    return cron_view(await svc.crons.update(cron_id, changes))


@router.delete("/runs/crons/{cron_id}", status_code=204, response_class=Response, summary="Delete a cron")
async def delete_cron(cron_id: CronId, caller: Runner, svc: Services) -> Response:
    await _mine(svc, caller, cron_id)
    await svc.crons.delete(cron_id)
    return Response(status_code=204)


class CronIncidentOut(BaseModel):
    """A tick of a cron whose firing failed after its retries: when it was due and what failed."""

    timer_id: str
    due_at: str = Field(description="the tick that failed (its run's cron_due_at, once retried)")
    error: str
    error_type: str
    attempts: int
    failed_at: str


@router.get(
    "/runs/crons/{cron_id}/incidents",
    response_model=list[CronIncidentOut],
    summary="A cron's failed ticks (incidents), oldest first",
)
async def cron_incidents(cron_id: CronId, caller: Reader, svc: Services) -> list[dict[str, Any]]:
    await _mine(svc, caller, cron_id)
    return await svc.crons.incidents(cron_id)


@router.post(
    "/runs/crons/{cron_id}/retry",
    response_model=list[CronIncidentOut],
    summary="Fire a cron's failed ticks again",
    description="Each failed tick fires once more at the scheduler's next pass, making the run it failed to make "
    "(once: a tick whose run was made after all makes none). Answers the incidents retried; 409 when there is "
    "none, or while the cron is disabled or past its end time.",
)
async def retry_cron(cron_id: CronId, caller: Runner, svc: Services) -> list[dict[str, Any]]:
    await _mine(svc, caller, cron_id)
    return await svc.crons.retry(cron_id)

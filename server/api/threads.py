"""Threads: create, get, update, delete, search, count, copy, prune, state (now, at a checkpoint, update),
history, and the stream of their runs.

A thread is bound to one journey instance by its first run, so its state and history are that journey's
checkpoints. A journey started through the journey endpoints is a thread too: its instance id is its
thread id.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import Depends, Header, Path, Query, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from checkpoints.errors import JourneyError
from checkpoints.flow import TERMINATED
from checkpoints.ownership import Viewer
from checkpoints.rows import INT64, holds_json
from checkpoints.runs import shown_metadata
from graphs.errors import InvalidInputError, JourneyNotFoundError
from graphs.kernel.engine import failed_task
from graphs.kernel.identifiers import THREAD_ID
from server import thread_stream
from server.api import errors
from server.api.runs import create_run
from server.auth import Principal, require
from server.input_guard import GuardedRoute
from server.models import (
    HistoryQuery,
    RunCreate,
    StateAt,
    StateSelect,
    StateUpdate,
    StateUpdated,
    ThreadCommand,
    ThreadCount,
    ThreadCreate,
    ThreadEventsRequest,
    ThreadOut,
    ThreadPrune,
    ThreadSearch,
    ThreadStateOut,
    ThreadUpdate,
    kept,
    kept_one,
    pagination_headers,
    sorted_page,
)
from server.problems import ApiError
from server.routing import api_router
from server.runs import thread_sse
from server.runs.executor import empty_state, interrupts_of, jsonable, state_view
from server.runs.sse import SSE, opened
from server.runs.store import RunRow, ThreadRow
from server.services import ResolvedThread, ServerServices, services

router = api_router(prefix="/threads", tags=["threads"], responses=errors(), route_class=GuardedRoute)
Reader = Annotated[Principal, Depends(require("read"))]
Runner = Annotated[Principal, Depends(require("runs"))]
Services = Annotated[ServerServices, Depends(services)]
RunThreadId = Annotated[str, Path(max_length=THREAD_ID)]  # run.start may create the thread: its id is stored


async def thread_view(svc: ServerServices, thread: ResolvedThread, *, with_ttl: bool = False) -> dict[str, Any]:
    """The thread as the Agent Server shows it; ``with_ttl``: with its time-to-live (``include=ttl``)."""
    try:
        graph = await svc.thread_graph(thread)
    except JourneyNotFoundError:
        # Bound, but its first run has not created the journey yet: a thread without state so far.
        graph = None
    values: dict[str, Any] = {}
    interrupts: dict[str, list[dict[str, Any]]] = {}
    status = "idle"
    state_updated: str | None = None
    # The journey's index row says how it stands (terminated, failed), as the dashboard and the journey routes say.
    instance = None if thread.instance_id is None else await svc.runtime.store.index.get_instance(thread.instance_id)
    if graph is not None and thread.instance_id is not None:
        snapshot = await graph.aget_state(svc.runtime.engine.config(thread.instance_id))
        values = jsonable(snapshot.values or {})
        state_updated = snapshot.created_at  # its latest checkpoint's time (None: no checkpoint yet)
        for task in snapshot.tasks:
            if task.interrupts:
                interrupts[task.id] = [{"value": jsonable(i.value), "id": i.id} for i in task.interrupts]
        # Waiting for an answer, or stopped before a node (interrupt_before/after): "interrupted", as the Agent
        # Server says of a thread whose checkpoint has a next node.
        if interrupts_of(snapshot) or snapshot.next:
            if instance is not None and instance.status == TERMINATED:  # nothing waits for an answer any more
                interrupts = {}
            else:
                status = "interrupted"
        # A journey failed (a saga's compensation that failed for good, a process's element, a deadline's end) reads
        # failed however it failed, as its status does; a chat thread, not indexed, by its failed task (not a task a
        # cancelled run stopped: that work is in flight).
        if (instance is not None and instance.status == "failed") or failed_task(snapshot) is not None:
            status = "error"
    busy = await svc.runs.active_count(thread.thread_id)
    last = await svc.runs.last_run(thread.thread_id)  # after the count: a run that ended between is the last
    if busy:
        status = "busy"
    elif status == "idle" and last is not None and last.status == "error":
        status = "error"
    created = thread.row.created_at if thread.row else None
    updated = thread.row.updated_at if thread.row else None
    if thread.row is None and instance is not None:
        created, updated = instance.created_at, instance.updated_at
    ran = (last.options or {}) if last else {}  # the latest run's config and context, as the Agent Server's
    metadata = shown_metadata(
        thread.row.metadata if thread.row else {},
        thread.assistant_id,
        thread.instance_id,
        last.assistant_id if last else None,
    )
    view = {
        "thread_id": thread.thread_id,
        "created_at": created.isoformat() if created else "",
        "updated_at": updated.isoformat() if updated else "",
        "metadata": metadata,
        "status": status,
        "values": values if isinstance(values, dict) else {"values": values},
        "interrupts": interrupts,
        "extracted": {},
        "state_updated_at": state_updated or (created.isoformat() if created else ""),
        "config": ran.get("config") or {},
        "context": ran.get("context") or {},
    }
    if with_ttl:
        view["ttl"] = _ttl_view(thread.row, last)
    return view


def _ttl_view(row: ThreadRow | None, last: RunRow | None) -> dict[str, Any] | None:
    """A thread's time-to-live as the Agent Server shows it: its strategy, minutes, and when it expires (that
    long after its last activity: its last write, or its latest run's); None when it has none."""
    ttl = row.ttl if row is not None else None
    if row is None or ttl is None:
        return None
    since = max(row.updated_at, last.updated_at) if last is not None else row.updated_at
    return {"strategy": ttl.strategy, "ttl_minutes": ttl.minutes, "expires_at": ttl.expiry(since).isoformat()}


# A search or count whose filters (values, status) or order (status) are in each thread's view, which reads its
# checkpoint and runs, reads the views of at most this many threads: those its metadata and ids narrow it to.
VIEW_LIMIT = 1_000


# Orders the threads' rows do not hold: a thread's status, and when its state last changed (its checkpoints').
_VIEW_ORDERS = ("status", "state_updated_at")


def _by_view(body: ThreadCount) -> bool:
    """Whether the search needs the threads' views to filter or order them (their rows do not hold it)."""
    return bool(body.values) or body.status is not None or getattr(body, "sort_by", None) in _VIEW_ORDERS


async def _matching(
    svc: ServerServices, body: ThreadCount, viewer: Viewer, ids: list[str] | None = None
) -> list[dict[str, Any]]:
    """The views of the threads ``viewer`` may see whose metadata and values hold the filters' and whose status
    is the one asked; refused (422 ``SearchTooBroad``) when more than :data:`VIEW_LIMIT` threads hold the
    metadata (and ids): each would be read, so narrow the search instead."""
    rows = await svc.runs.search_threads(body.metadata, VIEW_LIMIT + 1, 0, ids, viewer=viewer)
    if len(rows) > VIEW_LIMIT:
        raise ApiError(
            422,
            "SearchTooBroad",
            f"filtering threads by values or status (or sorting them by status or state_updated_at) reads each "
            f"thread's state: more "
            f"than {VIEW_LIMIT} threads hold this metadata; narrow the search with metadata or ids",
            limit=VIEW_LIMIT,
        )
    views = [await thread_view(svc, ResolvedThread.of(r)) for r in rows]
    return [
        v for v in views if holds_json(v["values"], body.values) and (body.status is None or v["status"] == body.status)
    ]


@router.post("", response_model=ThreadOut, summary="Create a thread")
async def create_thread(body: ThreadCreate, caller: Runner, svc: Services) -> dict[str, Any]:
    if body.thread_id and await svc.runtime.store.index.get_instance(body.thread_id) is not None:
        # The id names a journey: never a new thread, on which a first run would start that journey again.
        if await svc.thread_deleted(body.thread_id):
            raise ApiError(
                409, "ThreadExists", f"thread id {body.thread_id!r} was deleted; a deleted thread's id is not reused"
            )
        if body.if_exists == "raise":
            raise ApiError(409, "ThreadExists", f"thread id {body.thread_id!r} is a journey instance's id already")
        try:  # do_nothing: the journey's thread, to a caller who may see the journey
            return await thread_view(svc, ResolvedThread.of(await svc.thread_row(caller, body.thread_id)))
        except JourneyNotFoundError:
            raise ApiError(409, "ThreadExists", f"thread id {body.thread_id!r} is taken") from None
    if body.thread_id:
        await svc.refuse_structured_journeys_id(body.thread_id)
    ttl = body.ttl.value() if body.ttl else None
    row = await svc.runs.create_thread(
        body.thread_id, body.metadata, svc.owner(caller), if_exists=body.if_exists, ttl=ttl
    )
    if not svc.viewer(caller).may_see(row.owner, row.tenant, row.shared_group):  # if_exists: someone else's
        raise ApiError(409, "ThreadExists", f"thread id {row.thread_id!r} is taken")
    return await thread_view(svc, ResolvedThread.of(row))


@router.post("/search", response_model=list[ThreadOut], summary="Search threads")
async def search_threads(
    body: ThreadSearch, caller: Reader, svc: Services, response: Response
) -> list[dict[str, Any]] | JSONResponse:
    """One page of the caller's threads that match. Filters and orders the rows hold are applied and paged
    in the query; the others read the views of the threads the rows' own filters leave (see :func:`_matching`).
    The Agent Server's paging headers say whether another page follows (:func:`pagination_headers`)."""
    viewer = svc.viewer(caller)
    if _by_view(body):
        matching = await _matching(svc, body, viewer, body.ids)
        views = sorted_page(matching, body.sort_by, body.sort_order, body.offset, body.limit)
        more = len(matching) > body.offset + body.limit
    else:
        rows = await svc.runs.search_threads(
            body.metadata,
            body.limit + 1,  # the one past the page: whether another page follows
            body.offset,
            body.ids,
            viewer=viewer,
            sort_by=body.sort_by,
            descending=body.sort_order == "desc",
        )
        more = len(rows) > body.limit
        views = [await thread_view(svc, ResolvedThread.of(r)) for r in rows[: body.limit]]
    for view in views if body.extract else ():
        view["extracted"] = {alias: extracted(view, path) for alias, path in (body.extract or {}).items()}
    # extracted whatever is selected
    page = kept(views, body.select and [*body.select, "extracted"] if body.extract else body.select)
    (page if isinstance(page, JSONResponse) else response).headers.update(
        pagination_headers(body.offset, len(views), more)
    )
    return page


_STEP = re.compile(r"\.?([^.\[\]]+)|\[(-?[0-9]+)\]")


def extracted(view: Mapping[str, Any], path: str) -> Any:
    """What ``path`` (``values.messages[-1].content``: keys, and array indices from the end when negative)
    finds in a thread's view; None where it finds nothing, as the Agent Server's JSONB path does."""
    found: Any = view
    for key, index in _STEP.findall(path):
        if key and isinstance(found, Mapping):
            found = found.get(key)
        elif index and isinstance(found, list) and -len(found) <= int(index) < len(found):
            found = found[int(index)]
        else:
            return None
    return found


@router.post("/count", response_model=int, summary="Count threads")
async def count_threads(body: ThreadCount, caller: Reader, svc: Services) -> int:
    viewer = svc.viewer(caller)
    if _by_view(body):
        return len(await _matching(svc, body, viewer))
    return await svc.runs.count_threads(body.metadata, viewer=viewer)


@router.post("/prune", summary="Prune threads: delete them, or keep only their latest checkpoint")
async def prune_threads(body: ThreadPrune, caller: Runner, svc: Services) -> dict[str, int]:
    return {"pruned_count": await svc.prune_threads(caller, body.thread_ids, body.strategy)}


# The fields a thread read adds when asked (langgraph-sdk's threads.get(include=[...])): "ttl", the thread's
# time-to-live as the Agent Server shows it (null: it has none). The pattern states it in the schema, so a field
# it cannot include is refused (422) there, not ignored.
INCLUDE_LIST = r"^\s*ttl\s*(,\s*ttl\s*)*$"
Include = Annotated[
    str | None,
    Query(max_length=200, pattern=INCLUDE_LIST, description="comma-separated fields to add: ttl"),
]


@router.get("/{thread_id}", response_model=ThreadOut, summary="Get a thread")
async def get_thread(thread_id: str, caller: Reader, svc: Services, include: Include = None) -> dict[str, Any]:
    return await thread_view(svc, await svc.resolve_thread(thread_id, caller), with_ttl=bool(include))


@router.patch(
    "/{thread_id}",
    response_model=ThreadOut,
    summary="Update a thread's metadata (merged) and ttl",
    responses={204: {"description": "updated, with Prefer: return=minimal (no body)"}},
)
async def update_thread(
    thread_id: str,
    body: ThreadUpdate,
    caller: Runner,
    svc: Services,
    prefer: Annotated[str | None, Header(max_length=200)] = None,
) -> dict[str, Any] | Response:
    """The thread as updated; with ``Prefer: return=minimal`` (langgraph-sdk's ``return_minimal=True``) no
    body (204), as the Agent Server answers: the thread is not read back."""
    ttl = body.ttl.value() if body.ttl else None
    updated = await svc.update_thread(caller, thread_id, body.metadata, ttl)
    if prefer is not None and "return=minimal" in prefer.replace(" ", "").lower().split(","):
        return Response(status_code=204)
    return await thread_view(svc, updated)


@router.delete("/{thread_id}", status_code=204, summary="Delete a thread, its runs and its checkpoints")
async def delete_thread(thread_id: str, caller: Runner, svc: Services) -> Response:
    await svc.delete_thread(caller, thread_id)
    return Response(status_code=204)


@router.post("/{thread_id}/copy", response_model=ThreadOut, summary="Copy a (chat) thread with its checkpoints")
async def copy_thread(thread_id: str, caller: Runner, svc: Services) -> dict[str, Any]:
    return await thread_view(svc, ResolvedThread.of(await svc.copy_thread(caller, thread_id)))


@router.get("/{thread_id}/stream", summary="The stream of the thread's runs, one after the other (SSE)", responses=SSE)
async def join_thread_stream(
    thread_id: str,
    caller: Reader,
    svc: Services,
    last_event_id: Annotated[str | None, Header(max_length=20)] = None,
    stream_mode: Annotated[list[thread_sse.ThreadStreamMode] | None, Query(max_length=10)] = None,
    stream_modes: Annotated[str | None, Query(max_length=100, pattern=thread_sse.MODES_LIST)] = None,
) -> StreamingResponse:
    """The events of the thread's runs as they come, run after run, with ``metadata`` ``{"status": "run_done"}``
    after each; it ends only when the thread is deleted. Without ``Last-Event-ID`` only what comes from now
    on (live); with it, what came after that event. ``stream_mode`` (langgraph-sdk's name; ``stream_modes``,
    comma-separated, the Agent Server's): ``run_modes`` (the default), ``lifecycle`` (the runs' metadata
    only) or ``state_update`` (the thread's state as ``threads.update_state`` writes it): a run's own stream
    modes are the ones it was created with. See :mod:`server.runs.thread_sse`."""
    modes = [*(stream_mode or ()), *(m.strip() for m in (stream_modes or "").split(",") if m.strip())]
    await svc.resolve_thread(thread_id, caller)
    slot = svc.streams.take(caller)
    with slot.released_on_error():
        after = thread_sse.after_event(last_event_id)
        events = await opened(thread_sse.thread_events(svc, thread_id, after, modes or ["run_modes"]))
    return slot.response(events)


@router.post("/{thread_id}/commands", summary="A command of the v3 thread stream (run.start, input.respond)")
async def thread_command(thread_id: RunThreadId, body: ThreadCommand, caller: Runner, svc: Services) -> dict[str, Any]:
    """``run.start`` queues a run on the thread (created if new, behind any active run); ``input.respond``
    resumes the thread's journey with the response to its interrupt. Refusals are protocol error envelopes."""
    try:
        if body.method == "run.start":
            run = await create_run(svc, thread_id, _start_request(body.params), caller, streaming=False)
        elif body.method == "input.respond":
            resume = await _respond_request(svc, caller, thread_id, body.params)
            run = await create_run(svc, thread_id, resume, caller, streaming=False)
        else:
            return thread_stream.refused(body.id, "unknown_command", f"{body.method!r} is not served here")
    except JourneyNotFoundError:
        raise  # someone else's thread, or none: 404 like every route
    except ValidationError as exc:
        return thread_stream.refused(body.id, "invalid_argument", str(exc.errors(include_url=False)))
    except _NoSuchInterrupt as exc:
        return thread_stream.refused(body.id, "no_such_interrupt", str(exc))
    except JourneyError as exc:
        return thread_stream.refused(body.id, "invalid_argument", exc.message)
    answer = thread_stream.ok(body.id, {"run_id": run.run_id})
    answer["meta"] = {"applied_through_seq": thread_stream.before_run(run)}
    return answer


class _NoSuchInterrupt(Exception):
    """``input.respond`` named an interrupt the thread is not waiting at."""


def _start_request(params: Mapping[str, Any]) -> RunCreate:
    return RunCreate.model_validate(
        {
            "assistant_id": params.get("assistant_id"),
            "input": params.get("input"),
            "config": params.get("config"),
            "metadata": params.get("metadata") or {},
            "if_not_exists": "create",
            "multitask_strategy": "enqueue",
            "stream_mode": thread_stream.RECORDED_MODES,
        }
    )


async def _respond_request(
    svc: ServerServices, caller: Principal, thread_id: str, params: Mapping[str, Any]
) -> RunCreate:
    """A resume of the thread's journey with ``params.response``, if it waits at ``params.interrupt_id``."""
    thread = await svc.resolve_thread(thread_id, caller)
    graph = await svc.thread_graph(thread)
    waiting: list[dict[str, Any]] = []
    if graph is not None and thread.instance_id is not None:
        waiting = interrupts_of(await graph.aget_state(svc.runtime.engine.config(thread.instance_id)))
    wanted = params.get("interrupt_id")
    if wanted not in {i["id"] for i in waiting}:
        raise _NoSuchInterrupt(f"thread {thread_id!r} is not waiting at interrupt {wanted!r}")
    # The assistant of its last run (a configured one, say); a journey started through the journey endpoints,
    # or whose runs were deleted, has none: its pattern's.
    last = await svc.runs.last_run(thread_id)
    return RunCreate.model_validate(
        {
            "assistant_id": last.assistant_id if last is not None else thread.assistant_id,
            "command": {"resume": {wanted: params.get("response")}},  # answers that interrupt only
            "config": params.get("config"),
            "metadata": params.get("metadata") or {},
            "multitask_strategy": "enqueue",
            "stream_mode": thread_stream.RECORDED_MODES,
        }
    )


@router.post(
    "/{thread_id}/stream/events", summary="The v3 thread stream: its runs' events, filtered (SSE)", responses=SSE
)
async def thread_events(thread_id: str, body: ThreadEventsRequest, caller: Reader, svc: Services) -> StreamingResponse:
    """Every event of the thread's runs that matches the filter, from ``since`` (or from its active runs),
    as long as the client listens."""
    await svc.resolve_thread(thread_id, caller)
    unknown = [c for c in body.channels if c not in thread_stream.CHANNELS and not c.startswith("custom:")]
    if unknown:
        raise InvalidInputError(f"unknown channels {unknown}", allowed=list(thread_stream.CHANNELS))
    wanted = thread_stream.EventFilter(
        frozenset(body.channels),
        tuple(tuple(n) for n in body.namespaces) if body.namespaces is not None else None,
        body.depth,
    )
    slot = svc.streams.take(caller)
    with slot.released_on_error():
        events = await opened(thread_stream.ThreadEvents(svc, thread_id, wanted, body.since).frames())
    return slot.response(events)


# A state read's ``select`` in its query (GET): ``?select=values&select=next``.
SelectQuery = Annotated[StateSelect, Query()]


@router.post("/{thread_id}/state/checkpoint", response_model=ThreadStateOut, summary="The state at a checkpoint")
async def get_state_at(thread_id: str, body: StateAt, caller: Reader, svc: Services) -> dict[str, Any] | JSONResponse:
    return kept_one(await _state_at(svc, caller, thread_id, body.checkpoint.model_dump()), body.select)


@router.get("/{thread_id}/state/{checkpoint_id}", response_model=ThreadStateOut, summary="The state at a checkpoint")
async def get_state_by_id(
    thread_id: str, checkpoint_id: str, caller: Reader, svc: Services, select: SelectQuery = None
) -> dict[str, Any] | JSONResponse:
    return kept_one(await _state_at(svc, caller, thread_id, {"checkpoint_id": checkpoint_id}), select)


async def _state_at(
    svc: ServerServices, caller: Principal, thread_id: str, checkpoint: Mapping[str, Any]
) -> dict[str, Any]:
    thread = await svc.resolve_thread(thread_id, caller)
    graph = await svc.thread_graph(thread)
    if graph is None or thread.instance_id is None:
        return empty_state(thread_id)
    snapshot = await graph.aget_state(svc.checkpoint_config(thread, checkpoint))
    if checkpoint.get("checkpoint_id") and snapshot.created_at is None:  # LangGraph's snapshot of no checkpoint
        raise JourneyNotFoundError(f"thread {thread_id!r} has no checkpoint {checkpoint['checkpoint_id']!r}")
    return state_view(snapshot, thread_id)


@router.get("/{thread_id}/state", response_model=ThreadStateOut, summary="The thread's current state")
async def get_state(
    thread_id: str, caller: Reader, svc: Services, select: SelectQuery = None
) -> dict[str, Any] | JSONResponse:
    thread = await svc.resolve_thread(thread_id, caller)
    graph = await svc.thread_graph(thread)
    if graph is None or thread.instance_id is None:
        return kept_one(empty_state(thread_id), select)
    snapshot = await graph.aget_state(svc.runtime.engine.config(thread.instance_id))
    if snapshot.created_at is None:  # no checkpoint at all: retention may have deleted them (404, saying so)
        await svc.runtime.retention.check_state(await svc.runtime.store.index.get_instance(thread.instance_id))
    return kept_one(state_view(snapshot, thread_id), select)


@router.post("/{thread_id}/state", response_model=StateUpdated, summary="Update the thread's state")
async def update_state(thread_id: str, body: StateUpdate, caller: Runner, svc: Services) -> dict[str, Any]:
    """Write ``values`` into the journey's state as ``as_node`` would (an operator's correction: it
    bypasses the pattern's checks, so it needs the ``runs`` scope and a thread with no active run)."""
    configurable = await svc.update_thread_state(caller, thread_id, body.values, body.as_node, body.from_checkpoint())
    return {
        "checkpoint": {
            "thread_id": thread_id,
            "checkpoint_ns": configurable.get("checkpoint_ns", ""),
            "checkpoint_id": configurable.get("checkpoint_id"),
            "checkpoint_map": None,
        }
    }


@router.post("/{thread_id}/history", response_model=list[ThreadStateOut], summary="The thread's past states")
async def get_history(
    thread_id: str, body: HistoryQuery, caller: Reader, svc: Services
) -> list[dict[str, Any]] | JSONResponse:
    thread = await svc.resolve_thread(thread_id, caller)
    graph = await svc.thread_graph(thread)
    if graph is None or thread.instance_id is None:
        return []
    named = body.checkpoint.model_dump(exclude_none=True) if body.checkpoint is not None else {}
    config = svc.checkpoint_config(thread, named) if named else svc.runtime.engine.config(thread.instance_id)
    before = body.before_id
    before_config = {"configurable": {"thread_id": thread.instance_id, "checkpoint_id": before}} if before else None
    # The savers' filters differ where SQLite's compares JSON paths: a missing key matches a wanted null, true
    # matches 1, objects and arrays compare as text, an integer beyond 64 bits cannot be bound (a 500). Only
    # strings and numbers it binds go to the saver; the rest are compared here as JSONB's @> does, on the states
    # the others select, before the page is cut.
    wanted = body.metadata or {}
    here = {k: v for k, v in wanted.items() if not (type(v) in (str, float) or (type(v) is int and v in INT64))}
    states = [
        state_view(snapshot, thread_id)
        async for snapshot in graph.aget_state_history(
            config,
            filter={k: v for k, v in wanted.items() if k not in here} or None,
            limit=None if here else body.limit,
            before=before_config,  # type: ignore[arg-type]
        )
        if holds_json(snapshot.metadata, here)
    ]
    return kept(states[: body.limit], body.select)

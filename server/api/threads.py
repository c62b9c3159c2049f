"""Threads: create, get, search, state (get, update), history.

A thread is bound to one journey instance by its first run, so its state and history are that journey's
checkpoints. A journey started through the journey endpoints is a thread too: its instance id is its
thread id.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from graphs.errors import JourneyNotFoundError
from server.api import errors
from server.auth import Principal, require
from server.input_guard import GuardedRoute
from server.models import HistoryQuery, StateUpdate, StateUpdated, ThreadCreate, ThreadOut, ThreadSearch, ThreadStateOut
from server.problems import ApiError
from server.runs.executor import empty_state, interrupts_of, jsonable, state_view
from server.services import ResolvedThread, ServerServices, services

router = APIRouter(prefix="/threads", tags=["threads"], responses=errors(), route_class=GuardedRoute)
Reader = Annotated[Principal, Depends(require("read"))]
Runner = Annotated[Principal, Depends(require("runs"))]
Services = Annotated[ServerServices, Depends(services)]


async def thread_view(svc: ServerServices, thread: ResolvedThread) -> dict[str, Any]:
    try:
        graph = await svc.thread_graph(thread)
    except JourneyNotFoundError:
        # Bound, but its first run has not created the journey yet: a thread without state so far.
        graph = None
    values: dict[str, Any] = {}
    interrupts: dict[str, list[dict[str, Any]]] = {}
    status = "idle"
    if graph is not None and thread.instance_id is not None:
        snapshot = await graph.aget_state(svc.runtime.engine.config(thread.instance_id))
        values = jsonable(snapshot.values or {})
        for task in snapshot.tasks:
            if task.interrupts:
                interrupts[task.id] = [{"value": jsonable(i.value), "id": i.id} for i in task.interrupts]
        if interrupts_of(snapshot):
            status = "interrupted"
        if any(t.error for t in snapshot.tasks):
            status = "error"
    if await svc.runs.active_count(thread.thread_id):
        status = "busy"
    elif status == "idle" and (last := await svc.runs.last_run(thread.thread_id)) and last.status == "error":
        status = "error"
    created = thread.row.created_at if thread.row else None
    updated = thread.row.updated_at if thread.row else None
    if thread.row is None and thread.instance_id is not None:
        instance = await svc.runtime.store.index.get_instance(thread.instance_id)
        if instance is not None:
            created, updated = instance.created_at, instance.updated_at
    metadata = dict(thread.row.metadata) if thread.row else {}
    if thread.assistant_id:
        metadata.setdefault("graph_id", thread.assistant_id)
        metadata.setdefault("assistant_id", thread.assistant_id)
    if thread.instance_id:
        metadata.setdefault("instance_id", thread.instance_id)
    return {
        "thread_id": thread.thread_id,
        "created_at": created.isoformat() if created else "",
        "updated_at": updated.isoformat() if updated else "",
        "metadata": metadata,
        "status": status,
        "values": values if isinstance(values, dict) else {"values": values},
        "interrupts": interrupts,
    }


@router.post("", response_model=ThreadOut, summary="Create a thread")
async def create_thread(body: ThreadCreate, caller: Runner, svc: Services) -> dict[str, Any]:
    taken = body.thread_id and await svc.runtime.store.index.get_instance(body.thread_id) is not None
    if taken and body.if_exists == "raise":
        raise ApiError(409, "ThreadExists", f"thread id {body.thread_id!r} is a journey instance's id already")
    row = await svc.runs.create_thread(body.thread_id, body.metadata, svc.owner(caller), if_exists=body.if_exists)
    if not svc.viewer(caller).may_see(row.owner, row.tenant, row.shared_group):  # if_exists: someone else's
        raise ApiError(409, "ThreadExists", f"thread id {row.thread_id!r} is taken")
    return await thread_view(svc, ResolvedThread.of(row))


@router.post("/search", response_model=list[ThreadOut], summary="Search threads")
async def search_threads(body: ThreadSearch, caller: Reader, svc: Services) -> list[dict[str, Any]]:
    rows = await svc.runs.search_threads(body.metadata, body.limit, body.offset, body.ids, viewer=svc.viewer(caller))
    return [await thread_view(svc, ResolvedThread.of(r)) for r in rows]


@router.get("/{thread_id}", response_model=ThreadOut, summary="Get a thread")
async def get_thread(thread_id: str, caller: Reader, svc: Services) -> dict[str, Any]:
    return await thread_view(svc, await svc.resolve_thread(thread_id, caller))


@router.get("/{thread_id}/state", response_model=ThreadStateOut, summary="The thread's current state")
async def get_state(thread_id: str, caller: Reader, svc: Services) -> dict[str, Any]:
    thread = await svc.resolve_thread(thread_id, caller)
    graph = await svc.thread_graph(thread)
    if graph is None or thread.instance_id is None:
        return empty_state(thread_id)
    return state_view(await graph.aget_state(svc.runtime.engine.config(thread.instance_id)), thread_id)


@router.post("/{thread_id}/state", response_model=StateUpdated, summary="Update the thread's state")
async def update_state(thread_id: str, body: StateUpdate, caller: Runner, svc: Services) -> dict[str, Any]:
    """Write ``values`` into the journey's state as ``as_node`` would (an operator's correction: it
    bypasses the pattern's checks, so it needs the ``runs`` scope and a thread with no active run)."""
    configurable = await svc.update_thread_state(caller, thread_id, body.values, body.as_node)
    return {
        "checkpoint": {
            "thread_id": thread_id,
            "checkpoint_ns": configurable.get("checkpoint_ns", ""),
            "checkpoint_id": configurable.get("checkpoint_id"),
            "checkpoint_map": None,
        }
    }


@router.post("/{thread_id}/history", response_model=list[ThreadStateOut], summary="The thread's past states")
async def get_history(thread_id: str, body: HistoryQuery, caller: Reader, svc: Services) -> list[dict[str, Any]]:
    thread = await svc.resolve_thread(thread_id, caller)
    graph = await svc.thread_graph(thread)
    if graph is None or thread.instance_id is None:
        return []
    config = svc.runtime.engine.config(thread.instance_id)
    before = body.before
    before_config = None
    if isinstance(before, str):
        before_config = {"configurable": {"thread_id": thread.instance_id, "checkpoint_id": before}}
    elif isinstance(before, dict) and before.get("checkpoint_id"):
        before_config = {"configurable": {"thread_id": thread.instance_id, "checkpoint_id": before["checkpoint_id"]}}
    return [
        state_view(snapshot, thread_id)
        async for snapshot in graph.aget_state_history(config, limit=body.limit, before=before_config)  # type: ignore[arg-type]
    ]

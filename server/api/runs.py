"""Runs: create in the background, wait, stream (SSE), join, get, list, cancel.

The first run on a thread takes ``input`` and starts a journey; later runs take ``command.resume`` and
advance it (see :mod:`server.assistants`). ``multitask_strategy``: ``reject`` (default) refuses a run
while the thread has an active one (409), ``enqueue`` queues it behind them.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query
from fastapi.responses import StreamingResponse

from checkpoints.redaction import redact
from graphs.errors import InvalidInputError, JourneyNotFoundError
from graphs.kernel.identifiers import THREAD_ID
from server.api import errors
from server.assistants import Assistant, get_assistant
from server.auth import Principal, require
from server.input_guard import GuardedRoute
from server.models import MAX_INT, RunCreate, RunOut, StatelessRunCreate
from server.problems import ApiError
from server.runs.executor import thread_output
from server.runs.store import TERMINAL, RunRow, ThreadRow
from server.runs.watch import next_change, wait_for_run
from server.services import ServerServices, services

router = APIRouter(tags=["runs"], responses=errors(), route_class=GuardedRoute)
Reader = Annotated[Principal, Depends(require("read"))]
Runner = Annotated[Principal, Depends(require("runs"))]
Services = Annotated[ServerServices, Depends(services)]
# A run may create its thread (if_not_exists=create): its id is then stored.
RunThreadId = Annotated[str, Path(max_length=THREAD_ID)]
# Each server-sent event, described as OpenAPI 3.1 describes a stream's items (3.2 would say itemSchema).
SSE_EVENT = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "description": "metadata, a stream mode (values, updates, …), error, or end"},
        "data": {"type": "string", "contentMediaType": "application/json", "description": "the chunk, as JSON"},
        "id": {"type": "string", "description": "the chunk's sequence number: send it back as Last-Event-ID"},
    },
}
SSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {"schema": SSE_EVENT}}, "description": "server-sent events, then end"}
}


async def create_run(
    svc: ServerServices, thread_id: str | None, body: RunCreate, caller: Principal, *, streaming: bool
) -> RunRow:
    assistant = get_assistant(body.assistant_id)
    if body.input is not None:  # checked before anything (the thread included) is stored
        assistant.check_input(body.input)
        if isinstance(body.input, dict) and isinstance(body.input.get("user_id"), str):
            svc.check_user(caller, body.input["user_id"])
    if body.command is not None and "resume" in body.command.model_fields_set:
        assistant.check_resume(body.command.resume)
    row = None if thread_id is None else await _thread_for_run(svc, thread_id, body, caller)
    kind = _run_kind(assistant, body, row, await svc.runs.active_count(row.thread_id) if row else 0)
    modes: list[str] = []
    if streaming:
        chosen = body.stream_mode or "values"
        modes = [chosen] if isinstance(chosen, str) else list(chosen)
    run = await svc.runs.create_run(
        thread_id=row.thread_id if row else None,  # None: a new thread, created with the run
        assistant_id=assistant.assistant_id,
        kind=kind,
        input=body.input,
        command={"resume": body.command.resume} if kind == "resume" and body.command else None,
        stream_modes=modes,
        multitask_strategy=body.multitask_strategy,
        metadata={**body.metadata, "_groups": list(caller.groups)},
        principal=svc.owner(caller),
        enqueue=svc.queue.enqueue,
        durability=body.durability,
    )
    svc.submit(run)
    return run


def _run_kind(assistant: Assistant, body: RunCreate, row: ThreadRow | None, queued: int) -> str:
    """``start`` (input starts a journey) or ``resume`` (command.resume advances it); refuses what the
    thread cannot take. ``row`` None: a new thread."""
    thread = repr(row.thread_id) if row else "(a new thread)"
    instance_id = row.instance_id if row else None
    if row is not None and row.assistant_id is not None and row.assistant_id != assistant.assistant_id:
        raise ApiError(
            409,
            "WrongAssistant",
            f"thread {thread} runs the {row.assistant_id!r} assistant, not {assistant.assistant_id!r}",
            allowed=[row.assistant_id],
        )
    resume = body.command is not None and "resume" in body.command.model_fields_set
    if resume and body.input is not None:
        raise InvalidInputError("give either input (start a journey) or command.resume (advance it), not both")
    if resume:
        if assistant.chat:
            raise InvalidInputError(f"the {assistant.assistant_id!r} assistant takes input, not command.resume")
        if instance_id is None and not queued:
            raise ApiError(409, "NothingToResume", f"thread {thread} has no journey yet; start one with input")
        return "resume"
    if instance_id is not None and body.input is not None and not assistant.chat:
        raise ApiError(409, "JourneyStarted", f"thread {thread} already runs a journey; advance it with command.resume")
    if instance_id is None and body.input is None and not queued:
        if row is None:  # a new thread: the request alone lacks what it needs
            raise InvalidInputError("the first run on a thread needs input", input_schema=assistant.input_schema)
        raise ApiError(  # the thread's state decides: it has no journey yet
            409,
            "NothingToStart",
            f"thread {thread} has no journey yet; start one with input",
            input_schema=assistant.input_schema,
        )
    return "start"


async def _thread_for_run(svc: ServerServices, thread_id: str, body: RunCreate, caller: Principal) -> ThreadRow:
    row = await svc.runs.get_thread(thread_id)
    if row is not None:
        if not svc.viewer(caller).may_see(row.owner, row.tenant, row.shared_group):
            raise JourneyNotFoundError(f"no thread {thread_id!r}", thread_id=thread_id)
        return row
    instance = await svc.runtime.store.index.get_instance(thread_id)
    if instance is not None:  # a journey started through the journey endpoints: its id is a thread id
        await svc.instance(caller, thread_id)  # one the caller may see; its thread is owned like it
        await svc.runs.create_thread(thread_id, {}, instance.owned_by, if_exists="do_nothing")
        await svc.runs.bind(thread_id, instance.pattern, instance.instance_id)
        row = await svc.runs.get_thread(thread_id)
    elif body.if_not_exists == "create":
        row = await svc.runs.create_thread(thread_id, {}, svc.owner(caller))
    else:
        raise JourneyNotFoundError(f"no thread {thread_id!r}; create it first", thread_id=thread_id)
    assert row is not None
    return row


async def final_output(svc: ServerServices, run: RunRow) -> dict[str, Any]:
    """What a waiting caller gets (it created the run, or may see the run's thread)."""
    if run.status == "error":
        return {"__error__": run.error or {"error": "Error", "message": "the run failed"}}
    if run.output is not None and run.status == "success":
        return dict(run.output)  # the executor wrote it as the run finished
    thread = await svc.resolve_thread(run.thread_id, None)  # a cancelled run, or one finished before outputs were kept
    if thread.instance_id is None or thread.assistant_id is None:
        return {}
    return await thread_output(svc.runtime, get_assistant(thread.assistant_id), thread.instance_id)


def _stream_headers(run: RunRow) -> dict[str, str]:
    # Location: where langgraph-sdk reconnects (with Last-Event-ID) when the stream drops mid-run.
    stream = f"/threads/{run.thread_id}/runs/{run.run_id}/stream"
    return {"Content-Location": f"/threads/{run.thread_id}/runs/{run.run_id}", "Location": stream}


async def _wait(svc: ServerServices, run: RunRow) -> RunRow:
    return await wait_for_run(svc.runs, svc.watch, run.run_id, svc.settings.poll_interval)


@router.post("/threads/{thread_id}/runs", response_model=RunOut, summary="Create a run in the background")
async def create_background(thread_id: RunThreadId, body: RunCreate, caller: Runner, svc: Services) -> dict[str, Any]:
    return (await create_run(svc, thread_id, body, caller, streaming=False)).view()


@router.post("/runs", response_model=RunOut, summary="Create a run on a new thread")
async def create_stateless(body: StatelessRunCreate, caller: Runner, svc: Services) -> dict[str, Any]:
    return (await create_run(svc, None, body, caller, streaming=False)).view()


@router.post("/threads/{thread_id}/runs/wait", summary="Create a run and wait for its output")
async def create_and_wait(thread_id: RunThreadId, body: RunCreate, caller: Runner, svc: Services) -> dict[str, Any]:
    run = await _wait(svc, await create_run(svc, thread_id, body, caller, streaming=False))
    return await final_output(svc, run)


@router.post("/runs/wait", summary="Create a run on a new thread and wait for its output")
async def create_stateless_and_wait(body: StatelessRunCreate, caller: Runner, svc: Services) -> dict[str, Any]:
    run = await _wait(svc, await create_run(svc, None, body, caller, streaming=False))
    return await final_output(svc, run)


@router.post("/threads/{thread_id}/runs/stream", summary="Create a run and stream it (SSE)", responses=SSE)
async def create_and_stream(
    thread_id: RunThreadId, body: RunCreate, caller: Runner, svc: Services
) -> StreamingResponse:
    run = await create_run(svc, thread_id, body, caller, streaming=True)
    return StreamingResponse(_sse(svc, run), media_type="text/event-stream", headers=_stream_headers(run))


@router.post("/runs/stream", summary="Create a run on a new thread and stream it (SSE)", responses=SSE)
async def create_stateless_stream(body: StatelessRunCreate, caller: Runner, svc: Services) -> StreamingResponse:
    run = await create_run(svc, None, body, caller, streaming=True)
    return StreamingResponse(_sse(svc, run), media_type="text/event-stream", headers=_stream_headers(run))


async def _sse(svc: ServerServices, run: RunRow, after: int | None = None) -> AsyncIterator[bytes]:
    """The run's chunks as server-sent events, each with its sequence number as ``id``, then ``end``.

    ``after`` (a reconnect's Last-Event-ID) resumes after that chunk; None is a new stream, which opens
    with the run's ``metadata``."""
    if after is None:
        yield _frame("metadata", {"run_id": run.run_id, "attempt": 1})
    seen = after or 0
    with svc.watch.watching(run.run_id) as changed:
        while True:
            current = await svc.runs.get_run(run.run_id)
            finished = current is None or current.status in TERMINAL
            # Read after the status: a run seen finished has written all its chunks.
            for number, event, data in await svc.runs.events_after(run.run_id, seen):
                seen = number
                yield _frame(event, data, number)
            if finished:
                yield _frame("end", None)
                return
            await next_change(changed, svc.settings.poll_interval)


def _frame(event: str, data: Any, number: int | None = None) -> bytes:
    head = f"id: {number}\n" if number is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(redact(data), default=str)}\n\n".encode()


@router.get(
    "/threads/{thread_id}/runs/{run_id}/stream", summary="Join a run's stream (SSE), after Last-Event-ID", responses=SSE
)
async def join_stream(
    thread_id: str,
    run_id: str,
    caller: Reader,
    svc: Services,
    last_event_id: Annotated[str | None, Header(max_length=20)] = None,
) -> StreamingResponse:
    """The chunks of a run created for streaming: all of them, or those after ``Last-Event-ID``."""
    run = await svc.run(caller, thread_id, run_id)
    after = int(last_event_id) if last_event_id and last_event_id.isascii() and last_event_id.isdigit() else 0
    return StreamingResponse(_sse(svc, run, min(after, MAX_INT)), media_type="text/event-stream")


@router.get("/threads/{thread_id}/runs", response_model=list[RunOut], summary="List a thread's runs")
async def list_runs(
    thread_id: str,
    caller: Reader,
    svc: Services,
    limit: Annotated[int, Query(ge=0, le=1000)] = 10,
    offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
) -> list[dict[str, Any]]:
    await svc.resolve_thread(thread_id, caller)
    return [r.view() for r in await svc.runs.list_runs(thread_id, limit=limit, offset=offset)]


@router.get("/threads/{thread_id}/runs/{run_id}", response_model=RunOut, summary="Get a run")
async def get_run(thread_id: str, run_id: str, caller: Reader, svc: Services) -> dict[str, Any]:
    return (await svc.run(caller, thread_id, run_id)).view()


@router.get("/threads/{thread_id}/runs/{run_id}/join", summary="Wait for a run; the thread's values after it")
async def join_run(thread_id: str, run_id: str, caller: Reader, svc: Services) -> dict[str, Any]:
    run = await _wait(svc, await svc.run(caller, thread_id, run_id))
    return await final_output(svc, run)


@router.post("/threads/{thread_id}/runs/{run_id}/cancel", status_code=202, summary="Cancel a run")
async def cancel_run(
    thread_id: str,
    run_id: str,
    caller: Runner,
    svc: Services,
    wait: Annotated[int | bool, Query()] = False,
    action: Annotated[str, Query(pattern="^(interrupt|rollback)$")] = "interrupt",
) -> dict[str, Any]:
    """A queued run is cancelled at once; a running one is stopped where it runs (this process, or the
    worker executing it) and ends ``interrupted``."""
    run = await svc.run(caller, thread_id, run_id)
    if run.status not in TERMINAL:
        await svc.cancel(run)
    if wait:
        run = await _wait(svc, run)
    current = await svc.runs.get_run(run_id)
    assert current is not None
    return current.view()

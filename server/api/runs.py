"""Runs: create in the background (one or a batch), wait, stream (SSE), join, get, list, cancel (one or
many), delete.

The first run on a thread takes ``input`` and starts a journey; later runs take ``command.resume`` and
advance it (see :mod:`server.assistants`). ``multitask_strategy``: ``enqueue`` (the default, as the Agent
Server's) queues it behind the thread's active runs, ``reject`` refuses it while there is one (409),
``interrupt`` cancels them first (their progress stays), ``rollback`` cancels and deletes them and puts the
thread back where the first of them found it (chat threads only).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import ExitStack, nullcontext
from dataclasses import replace
from datetime import timedelta
from functools import partial
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import Body, Depends, Header, Path, Query, Response
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.types import Receive, Scope, Send

from checkpoints.errors import JourneyError, RunNotActiveError
from checkpoints.redaction import mark_sensitive_of
from checkpoints.runs import thread_key
from graphs.errors import InvalidInputError, JourneyNotFoundError
from graphs.kernel.engine import addressed, at_breakpoint, in_flight, stands_failed
from graphs.kernel.identifiers import THREAD_ID
from server.api import errors, one_of_configurable_and_context
from server.assistants import Assistant, get_assistant
from server.auth import Principal, require
from server.input_guard import GuardedRoute
from server.models import (
    MAX_INT,
    BatchRunCreate,
    CancelMany,
    RunCreate,
    RunOut,
    RunSelect,
    RunStatus,
    StatelessRunCreate,
    StreamModeName,
    kept,
)
from server.problems import INTERNAL_ERROR, INTERNAL_MESSAGE, ApiError, JourneyValuesResponse, unexpected_error
from server.routing import api_router
from server.runs.executor import thread_output
from server.runs.sse import SSE, cancelled_when_gone, resumed_after, run_events
from server.runs.store import ACTIVE, GROUPS, TERMINAL, RunRow, ThreadRow
from server.runs.watch import until_finished, wait_for_run
from server.services import ResolvedAssistant, ResolvedThread, ServerServices, services

router = api_router(tags=["runs"], responses=errors(), route_class=GuardedRoute)
Reader = Annotated[Principal, Depends(require("read"))]
Runner = Annotated[Principal, Depends(require("runs"))]
Services = Annotated[ServerServices, Depends(services)]
# A run may create its thread (if_not_exists=create): its id is then stored.
RunThreadId = Annotated[str, Path(max_length=THREAD_ID)]
# on_disconnect in a stream's query (the Agent Server's curl form) as well as in its body (langgraph-sdk's).
OnDisconnect = Annotated[Literal["cancel", "continue"] | None, Query()]
# A join's cancel_on_disconnect: langgraph-sdk sends true/false; the Agent Server's docs also write "cancel".
CancelOnDisconnect = Annotated[bool | Literal["cancel", "continue"], Query()]
# A join's stream_mode: langgraph-sdk sends an empty one when none is given (all modes then).
JoinModes = Annotated[list[StreamModeName | Literal[""]] | None, Query(max_length=20)]


async def create_run(
    svc: ServerServices,
    thread_id: str | None,
    body: RunCreate,
    caller: Principal,
    *,
    streaming: bool,
    run_id: str | None = None,
) -> RunRow:
    config, context = one_of_configurable_and_context(body.config, body.context)
    body = body.model_copy(update={"config": config, "context": context})
    resolved = await svc.resolve_assistant(body.assistant_id, caller)
    assistant = resolved.pattern
    if body.input is not None:  # checked before anything (the thread included) is stored
        with svc.acting(caller):  # as the caller: another tenant's process is none it may start
            await assistant.check_input(body.input, svc.runtime, agents=svc.settings.holds_agents)
        await svc.check_input_instances(caller, assistant, body.input)
        if isinstance(body.input, dict) and isinstance(body.input.get("user_id"), str):
            svc.check_user(caller, body.input["user_id"])
        if isinstance(body.input, dict):  # an inline spec's marks hold in this run's answers from the first
            mark_sensitive_of(body.input.get("spec"))
    if body.command is not None and "resume" in body.command.model_fields_set:
        answer = addressed(body.command.resume)[1]  # the answer, whichever interrupt it names
        assistant.check_resume(answer)
        caller = _answering_as(caller, assistant, answer)
    row = None if thread_id is None else await _thread_for_run(svc, thread_id, body, caller)
    checkpoint_id = _checkpoint_id(body)
    if checkpoint_id and not assistant.chat:
        raise ApiError(
            422,
            "CheckpointUnsupported",
            f"the {assistant.assistant_id!r} assistant runs journeys, whose completed steps are in their event log: "
            "a run cannot go on from an earlier checkpoint (chat threads can)",
        )
    if checkpoint_id:  # one the thread has: a fork of none would drop its state
        await _check_checkpoint(svc, row, checkpoint_id, thread_id)
    modes: list[str] = []
    if streaming or body.stream_mode is not None:  # a background run records its chunks for join_stream
        chosen = body.stream_mode or "values"
        modes = [chosen] if isinstance(chosen, str) else list(chosen)
    double_text = row is not None and body.multitask_strategy in ("interrupt", "rollback")
    # Taking over a thread's runs and queuing the new one is one turn of the thread's control.
    async with svc.thread_control(row.thread_id) if row is not None and double_text else nullcontext():
        if row is not None and double_text:
            await svc.double_text(row.thread_id, assistant, body.multitask_strategy)
        queued = await svc.runs.active_count(row.thread_id) if row else 0
        kind = _run_kind(assistant, body, row, queued, await _stopped_between_nodes(svc, assistant, body, row))
        run = await svc.runs.create_run(
            thread_id=row.thread_id if row else None,  # None: a new thread, created with the run
            assistant_id=resolved.assistant_id,
            kind=kind,
            input=body.input,
            command={"resume": body.command.resume} if kind == "resume" and body.command else None,
            stream_modes=modes,
            multitask_strategy=body.multitask_strategy,
            metadata=body.metadata,
            principal=svc.owner(caller),
            enqueue=svc.queue.enqueue,
            durability=body.durability,
            options=run_options(svc, resolved, body, stateless=thread_id is None) | {GROUPS: list(caller.groups)},
            run_id=run_id,
        )
    svc.submit(run)
    svc.watch.changed(thread_key(run.thread_id))  # a thread's stream waiting for its next run
    return run


def _answering_as(caller: Principal, assistant: Assistant, answer: Any) -> Principal:
    """Whom a run giving ``answer`` acts for: the caller, whose API key says who it is and its groups; with auth
    off, no key says it, so the answer names them (a process task's ``user`` and ``groups``, as the inbox's body
    and the dashboard's form do): the tasks offered to groups could not be answered over runs at all."""
    named = None if caller.authenticated else assistant.answered_by(answer)
    if named is None:
        return caller
    user, groups = named
    return replace(caller, name=user or caller.name, groups=groups)


def assistant_options(
    assistant: ResolvedAssistant, config: dict[str, Any] | None, context: dict[str, Any] | None
) -> dict[str, Any]:
    """A run's graph, and the assistant's config and context under the run's own (a run's request, or a
    cron's for each of its runs)."""
    merged = {**assistant.config, **(config or {})}
    configurable = {**assistant.config.get("configurable", {}), **(config or {}).get("configurable", {})}
    if configurable:
        merged["configurable"] = configurable
    found = {"config": merged, "context": {**assistant.context, **(context or {})}}
    return {"graph_id": assistant.pattern.assistant_id} | {k: v for k, v in found.items() if v}


def run_options(
    svc: ServerServices, assistant: ResolvedAssistant, body: RunCreate, *, stateless: bool = False
) -> dict[str, Any]:
    """What the run keeps of its request beyond input and command: its graph, the assistant's config and
    context under the run's own, and the options the executor applies. A ``stateless`` run (no thread named:
    ``/runs``, ``/runs/wait``, ``/runs/stream``) deletes the thread made for it when it ends unless it asked
    ``on_completion="keep"``, as the Agent Server does."""
    options = assistant_options(assistant, body.config, body.context)
    checkpoint_id = _checkpoint_id(body)
    found = {
        "interrupt_before": body.interrupt_before,
        "interrupt_after": body.interrupt_after,
        "webhook": body.webhook,
        "checkpoint_id": checkpoint_id,
        "on_completion": body.on_completion or ("delete" if stateless else None),
    }
    options |= {k: v for k, v in found.items() if v}
    if body.after_seconds:
        options["not_before"] = (svc.runtime.store.clock.now() + timedelta(seconds=body.after_seconds)).isoformat()
    return options


def _checkpoint_id(body: RunCreate) -> str | None:
    """The checkpoint a run goes on from, however the client named it: ``checkpoint_id``, ``checkpoint``, or its
    config's ``configurable.checkpoint_id`` (where LangGraph itself reads it), each checked as the others are."""
    configured = ((body.config or {}).get("configurable") or {}).get("checkpoint_id")
    return (
        body.checkpoint_id
        or (body.checkpoint.checkpoint_id if body.checkpoint else None)
        or (configured if isinstance(configured, str) and configured else None)
    )


async def _check_checkpoint(
    svc: ServerServices, row: ThreadRow | None, checkpoint_id: str, thread_id: str | None
) -> None:
    """Not found (404) unless the thread has the checkpoint ``checkpoint_id``."""
    thread = ResolvedThread.of(row) if row is not None else None
    graph = await svc.thread_graph(thread) if thread is not None else None
    if thread is None or graph is None or thread.instance_id is None:
        has = False
    else:
        config = svc.checkpoint_config(thread, {"checkpoint_id": checkpoint_id})
        has = (await graph.aget_state(config)).created_at is not None  # LangGraph's snapshot of no checkpoint
    if not has:
        name = repr(thread_id) if thread_id else "(a new thread)"
        raise JourneyNotFoundError(f"thread {name} has no checkpoint {checkpoint_id!r}", checkpoint_id=checkpoint_id)


async def _stopped_between_nodes(
    svc: ServerServices, assistant: Assistant, body: RunCreate, row: ThreadRow | None
) -> bool:
    """Whether a run with neither input nor command.resume goes on with its thread's journey: LangGraph's run
    without input, which resumes a thread a run's interrupt_before/after stopped between two nodes, or where
    a run cancelled on purpose stopped it (``JourneyEngine.halt``), and re-runs a failed step."""
    if row is None or row.instance_id is None or assistant.chat or body.input is not None or body.command is not None:
        return False
    graph = await svc.thread_graph(ResolvedThread.of(row))
    if graph is None:
        return False
    engine = svc.runtime.engine
    snapshot = await graph.aget_state(engine.config(row.instance_id))
    if assistant.retry is not None and stands_failed(snapshot):
        return True  # LangGraph's run without input re-runs a failed task: the assistant retries it
    return at_breakpoint(snapshot) or (in_flight(snapshot) and await engine.halted(row.instance_id, snapshot))


def _run_kind(assistant: Assistant, body: RunCreate, row: ThreadRow | None, queued: int, stopped: bool) -> str:
    """``start`` (input starts a journey), ``resume`` (command.resume advances it) or ``continue`` (no input:
    the journey goes on from where interrupt_before/after stopped it, ``stopped``); refuses what the thread
    cannot take. ``row`` None: a new thread."""
    thread = repr(row.thread_id) if row else "(a new thread)"
    instance_id = row.instance_id if row else None
    if row is not None and row.assistant_id is not None and row.assistant_id != assistant.assistant_id:
        raise ApiError(
            409,
            "WrongAssistant",
            f"thread {thread} runs the {row.assistant_id!r} assistant, not {assistant.assistant_id!r}",
            allowed=[row.assistant_id],
        )
    commands = (body.command.model_extra or {}) if body.command is not None else {}
    # LangGraph's clients send them empty when unset (RemoteGraph: ``goto: []``).
    if ignored := [f"command.{name}" for name in ("update", "goto") if commands.get(name)]:
        raise InvalidInputError(
            f"{' and '.join(ignored)} cannot be taken: a journey moves only through its pattern (command.resume "
            "answers what it waits at; the guide takes input); an operator corrects a journey's state with "
            "threads.update_state",
            unsupported=ignored,
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
    if instance_id is not None and not assistant.chat:
        if stopped and body.input is None:
            return "continue"
        raise ApiError(  # input, or nothing where no breakpoint stopped it: neither would move the journey on
            409,
            "JourneyStarted",
            f"thread {thread} already runs a journey; advance it with command.resume (a run without input goes "
            "on only where interrupt_before/after, or a cancelled run, stopped it, or retries a failed step)",
        )
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
    if row is None:
        instance = await svc.runtime.store.index.get_instance(thread_id)
        if instance is not None and await svc.thread_deleted(thread_id):
            raise JourneyNotFoundError(f"no thread {thread_id!r}: it was deleted", thread_id=thread_id)
        if instance is not None:  # a journey started through the journey endpoints: its id is a thread id
            await svc.instance(caller, thread_id)  # one the caller may see; its thread is owned like it
            await svc.runs.create_thread(thread_id, {}, instance.owned_by, if_exists="do_nothing")
            await svc.runs.bind(thread_id, instance.pattern, instance.instance_id)
            row = await svc.runs.get_thread(thread_id)
        elif body.if_not_exists == "create":  # or the thread another request created with this id meanwhile
            await svc.refuse_structured_journeys_id(thread_id)
            row = await svc.runs.create_thread(thread_id, {}, svc.owner(caller), if_exists="do_nothing")
        else:
            raise JourneyNotFoundError(f"no thread {thread_id!r}; create it first", thread_id=thread_id)
    assert row is not None
    if not svc.viewer(caller).may_see(row.owner, row.tenant, row.shared_group):
        raise JourneyNotFoundError(f"no thread {thread_id!r}", thread_id=thread_id)
    await svc.know_marks(row.instance_id)  # the run's answers show its input and output
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


def _run_path(run: RunRow) -> str:
    """The run's URL path, for the headers that name it: the thread id quoted, since a header holds Latin-1
    only and a client may choose any id but '/' (a raw '%2F' or '?' in it would lead elsewhere)."""
    return f"/threads/{quote(run.thread_id, safe='')}/runs/{quote(run.run_id, safe='')}"


def _stream_headers(run: RunRow) -> dict[str, str]:
    # Location: where langgraph-sdk reconnects (with Last-Event-ID) when the stream drops mid-run.
    return {"Content-Location": _run_path(run), "Location": f"{_run_path(run)}/stream"}


async def _wait(svc: ServerServices, run: RunRow) -> RunRow:
    return await wait_for_run(svc.runs, svc.watch, run.run_id, svc.settings.poll_interval)


async def _create_and_wait(
    svc: ServerServices, thread_id: str | None, body: RunCreate, caller: Principal
) -> StreamingResponse:
    """Create a run and answer with its output once it has finished (see :func:`_waited`). Its watch is
    registered under its id before it exists, so its end cannot slip by unseen and no read is spent finding it
    pending. With ``on_disconnect="cancel"`` the run is cancelled if the client goes away first."""
    run_id = str(uuid.uuid4())
    with ExitStack() as stack:
        changed = stack.enter_context(svc.watch.watching(run_id))
        run = await create_run(svc, thread_id, body, caller, streaming=False, run_id=run_id)
        watched = stack.pop_all()  # closed by the answer, once sent (or its client gone)
    finished = partial(until_finished, svc.runs, run_id, changed, svc.settings.poll_interval, fresh=True)
    return _waited(svc, run, finished, cancel_if_gone=body.on_disconnect == "cancel", closing=watched)


def _waited(
    svc: ServerServices,
    run: RunRow,
    finished: Callable[[], Awaitable[RunRow]],
    *,
    cancel_if_gone: bool,
    closing: ExitStack | None = None,
) -> StreamingResponse:
    """The answer of a request waiting for ``run`` (``runs.wait``, ``runs.join``), as the Agent Server sends
    it: the headers at once, naming the run in Content-Location (langgraph-sdk hands it to ``on_run_created``)
    and its join in Location (where langgraph-sdk reconnects when the answer is cut off); a newline every
    ``Settings.wait_keepalive`` seconds while the run goes on, so that a proxy's idle timeout does not cut a
    long wait; then the thread's values after the run as JSON (``{"__error__": …}`` for a failed run, or a
    failure met after the headers went out). ``cancel_if_gone``: the run is cancelled if the client goes away
    before the answer is sent. ``closing``: what the waiting holds, closed when the answer is done with."""
    join = _run_path(run)
    answer = _answer_when(svc, finished, svc.settings.wait_keepalive, closing or ExitStack())
    if cancel_if_gone:
        answer = cancelled_when_gone(svc, run, answer)
    headers = {"Content-Location": join, "Location": f"{join}/join"}
    return AnswerStream(answer, media_type="application/json", headers=headers)


class Answer(bytes):
    """The last chunk of an :class:`AnswerStream`'s body: the answer itself, which ends the body."""


class AnswerStream(StreamingResponse):
    """A waiting request's streamed answer (see :func:`_waited`): newlines while the run goes on, then the
    answer (an :class:`Answer`), sent with the end of the body in one write where Starlette's StreamingResponse
    made two (the chunk, then the empty last one) and woke the client for each. The client going away cancels
    the stream as with Starlette's, watched by a plain task beside it instead of an anyio task group made per
    request."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        streaming = asyncio.ensure_future(self._stream(send))
        watching = asyncio.ensure_future(self.listen_for_disconnect(receive))
        try:
            await asyncio.wait((streaming, watching), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (streaming, watching):
                task.cancel()
            await asyncio.wait((streaming, watching))  # the body's own cleanup (a cancel of its run) ends first
        if not streaming.cancelled() and (error := streaming.exception()) is not None:
            raise error
        if self.background is not None:
            await self.background()

    async def _stream(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        ended = False
        async for chunk in self.body_iterator:
            ended = isinstance(chunk, Answer)
            body = chunk if isinstance(chunk, bytes | memoryview) else chunk.encode(self.charset)
            await send({"type": "http.response.body", "body": body, "more_body": not ended})
        if not ended:
            await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _answer_when(
    svc: ServerServices, finished: Callable[[], Awaitable[RunRow]], keepalive: float, closing: ExitStack
) -> AsyncIterator[bytes]:
    """Newlines (JSON's whitespace, which every client's parser skips) until ``finished`` gives the run, then
    the waiting caller's answer (:func:`final_output`)."""
    with closing:
        waiting = asyncio.ensure_future(finished())
        try:
            while not (await asyncio.wait((waiting,), timeout=keepalive))[0]:
                yield b"\n"
            try:
                answer = await final_output(svc, waiting.result())
            except Exception as exc:  # the status is sent: the failure is said as a failed run's is
                said = exc if isinstance(exc, JourneyError) else unexpected_error(exc)  # an outage, say
                error = (said.code, said.message) if said is not None else (INTERNAL_ERROR, INTERNAL_MESSAGE)
                answer = {"__error__": dict(zip(("error", "message"), error, strict=True))}
            yield Answer(JourneyValuesResponse(answer).body)
        finally:
            waiting.cancel()


async def _create_and_stream(
    svc: ServerServices, thread_id: str | None, body: RunCreate, caller: Principal, on_disconnect: str | None
) -> StreamingResponse:
    """A run created and streamed; its stream's slot is taken first, so a caller with too many streams open is
    refused (429) before the run exists."""
    slot = svc.streams.take(caller)
    with slot.released_on_error():
        run = await create_run(svc, thread_id, body, caller, streaming=True)
        events = run_events(svc, run)
        if (on_disconnect or body.on_disconnect) == "cancel":
            events = cancelled_when_gone(svc, run, events)
        return slot.response(events, headers=_stream_headers(run))


@router.post("/threads/{thread_id}/runs", response_model=RunOut, summary="Create a run in the background")
async def create_background(
    thread_id: RunThreadId, body: RunCreate, caller: Runner, svc: Services, response: Response
) -> dict[str, Any]:
    return _created(await create_run(svc, thread_id, body, caller, streaming=False), response)


@router.post("/runs", response_model=RunOut, summary="Create a run on a new thread")
async def create_stateless(
    body: StatelessRunCreate, caller: Runner, svc: Services, response: Response
) -> dict[str, Any]:
    return _created(await create_run(svc, None, body, caller, streaming=False), response)


def _created(run: RunRow, response: Response) -> dict[str, Any]:
    """A background run's answer, naming the run in Content-Location as the Agent Server's does: langgraph-sdk
    hands it to ``on_run_created``."""
    response.headers["Content-Location"] = _run_path(run)
    return run.view()


@router.post(
    "/threads/{thread_id}/runs/wait",
    summary="Create a run and wait for its output",
    response_class=JourneyValuesResponse,
    response_model=dict[str, Any],  # the answer's schema: its body is streamed (see _waited)
)
async def create_and_wait(thread_id: RunThreadId, body: RunCreate, caller: Runner, svc: Services) -> StreamingResponse:
    return await _create_and_wait(svc, thread_id, body, caller)


@router.post("/runs/batch", response_model=list[RunOut], summary="Create runs in the background, each on its thread")
async def create_batch(
    body: Annotated[list[BatchRunCreate], Body(max_length=100)], caller: Runner, svc: Services
) -> list[dict[str, Any]]:
    """Every run is checked and created in order; one refused stops the batch there (the ones before it stay)."""
    return [(await create_run(svc, item.thread_id, item, caller, streaming=False)).view() for item in body]


@router.post("/runs/cancel", status_code=204, summary="Cancel the runs of a thread, listed runs, or all with a status")
async def cancel_many(
    body: CancelMany,
    caller: Runner,
    svc: Services,
    action: Annotated[str, Query(pattern="^(interrupt|rollback)$")] = "interrupt",
) -> Response:
    """The pending and running runs named are cancelled, per thread as ``runs.cancel`` cancels one: a thread's
    (this server's; the Agent Server asks for its ``run_ids`` too), listed ones, or the caller's in a ``status``,
    which as on the Agent Server stands alone (422 beside a thread_id or run_ids). Listed ``run_ids`` that have
    ended, or are missing, someone else's or on another thread than ``thread_id``, are passed over; when none is
    left to cancel, 404 as on the Agent Server: :class:`RunNotActiveError` if some listed were found (all ended),
    not found otherwise."""
    named = body.model_dump(include={"thread_id", "run_ids", "status"}, exclude_none=True)
    if body.status is not None and (body.thread_id is not None or body.run_ids):
        raise InvalidInputError(
            "a status cancels the caller's runs in it on every thread: name no thread_id or run_ids beside it",
            **named,
        )
    if body.thread_id is None and not body.run_ids and body.status is None:
        raise InvalidInputError("name a thread_id, run_ids or a status")
    if body.run_ids:
        found = [r for r in [await svc.runs.get_run(i) for i in body.run_ids] if r is not None]
    elif body.thread_id is not None:
        found = await svc.runs.list_runs(body.thread_id, limit=MAX_INT)
    else:
        found = await svc.runs.unfinished()
    found = await svc.visible_runs(caller, found)  # only the caller's own (404-like: others' are not there)
    found = [r for r in found if body.thread_id is None or r.thread_id == body.thread_id]
    statuses = ACTIVE if body.status in (None, "all") else (body.status,)
    by_thread: dict[str, list[RunRow]] = {}
    for run in found:
        if run.status in statuses:
            by_thread.setdefault(run.thread_id, []).append(run)
    if not by_thread:
        if body.run_ids and found:
            raise RunNotActiveError(
                "none of the runs listed is pending or running: only those are cancelled",
                run_ids=body.run_ids,
                statuses={r.run_id: r.status for r in found},
            )
        raise JourneyNotFoundError("no run to cancel: none named is there and pending or running", **named)
    if action == "rollback":  # all refused before any is touched
        for runs in by_thread.values():
            svc.check_rollback(get_assistant(runs[0].graph_id))
    for tid, runs in by_thread.items():  # per thread, as runs.cancel does
        async with svc.thread_control(tid):
            now = [
                r for r in [await svc.runs.get_run(r.run_id) for r in runs] if r is not None and r.status in statuses
            ]
            if action == "rollback":
                await svc.rollback(tid, get_assistant(runs[0].graph_id), now)
            else:
                await svc.cancel_many(now)
    return Response(status_code=204)


@router.post(
    "/runs/wait",
    summary="Create a run on a new thread and wait for its output",
    response_class=JourneyValuesResponse,
    response_model=dict[str, Any],
)
async def create_stateless_and_wait(body: StatelessRunCreate, caller: Runner, svc: Services) -> StreamingResponse:
    return await _create_and_wait(svc, None, body, caller)


@router.post("/threads/{thread_id}/runs/stream", summary="Create a run and stream it (SSE)", responses=SSE)
async def create_and_stream(
    thread_id: RunThreadId, body: RunCreate, caller: Runner, svc: Services, on_disconnect: OnDisconnect = None
) -> StreamingResponse:
    return await _create_and_stream(svc, thread_id, body, caller, on_disconnect)


@router.post("/runs/stream", summary="Create a run on a new thread and stream it (SSE)", responses=SSE)
async def create_stateless_stream(
    body: StatelessRunCreate, caller: Runner, svc: Services, on_disconnect: OnDisconnect = None
) -> StreamingResponse:
    return await _create_and_stream(svc, None, body, caller, on_disconnect)


@router.get(
    "/threads/{thread_id}/runs/{run_id}/stream", summary="Join a run's stream (SSE), after Last-Event-ID", responses=SSE
)
async def join_stream(
    thread_id: str,
    run_id: str,
    caller: Reader,
    svc: Services,
    last_event_id: Annotated[str | None, Header(max_length=20)] = None,
    stream_mode: JoinModes = None,
    cancel_on_disconnect: CancelOnDisconnect = False,
) -> StreamingResponse:
    """The chunks of a run created for streaming: all of them, or those after ``Last-Event-ID``; only those of
    ``stream_mode`` when given. ``cancel_on_disconnect``: the run is cancelled if the client leaves first."""
    run = await svc.run(caller, thread_id, run_id)
    events = run_events(svc, run, resumed_after(last_event_id), {mode for mode in stream_mode or () if mode})
    if cancel_on_disconnect in (True, "cancel"):
        events = cancelled_when_gone(svc, run, events)
    return svc.streams.take(caller).response(events)


@router.get("/threads/{thread_id}/runs", response_model=list[RunOut], summary="List a thread's runs")
async def list_runs(
    thread_id: str,
    caller: Reader,
    svc: Services,
    limit: Annotated[int, Query(ge=0, le=1000)] = 10,
    offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
    status: Annotated[RunStatus | None, Query()] = None,
    select: Annotated[RunSelect, Query()] = None,
) -> list[dict[str, Any]] | JSONResponse:
    await svc.resolve_thread(thread_id, caller)
    runs = await svc.runs.list_runs(thread_id, limit=limit, offset=offset, status=status)
    return kept([r.view() for r in runs], select)


@router.get("/threads/{thread_id}/runs/{run_id}", response_model=RunOut, summary="Get a run")
async def get_run(thread_id: str, run_id: str, caller: Reader, svc: Services) -> dict[str, Any]:
    return (await svc.run(caller, thread_id, run_id)).view()


@router.get(
    "/threads/{thread_id}/runs/{run_id}/join",
    summary="Wait for a run; the thread's values after it",
    response_class=JourneyValuesResponse,
    response_model=dict[str, Any],
)
async def join_run(
    thread_id: str,
    run_id: str,
    caller: Reader,
    svc: Services,
    cancel_on_disconnect: CancelOnDisconnect = False,
) -> StreamingResponse:
    run = await svc.run(caller, thread_id, run_id)
    return _waited(svc, run, lambda: _wait(svc, run), cancel_if_gone=cancel_on_disconnect in (True, "cancel"))


@router.delete("/threads/{thread_id}/runs/{run_id}", status_code=204, summary="Delete a finished run")
async def delete_run(thread_id: str, run_id: str, caller: Runner, svc: Services) -> Response:
    await svc.delete_run(await svc.run(caller, thread_id, run_id))
    return Response(status_code=204)


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
    worker executing it) and ends ``interrupted``. ``action=rollback`` also deletes the run and puts the
    thread back where the run found it (chat threads; a journey's is a 422, as for multitask rollback): the
    answer is the run as it ended. A run that has ended is 404 :class:`RunNotActiveError`, as on the Agent
    Server."""
    async with svc.thread_control(thread_id):  # read inside: an interrupt or rollback before may have ended it
        run = await svc.run(caller, thread_id, run_id)
        if action == "rollback":
            svc.check_rollback(get_assistant(run.graph_id))
        if run.status in TERMINAL:
            raise RunNotActiveError(
                f"run {run_id!r} is {run.status}: only a pending or running run is cancelled",
                run_id=run_id,
                status=run.status,
            )
        if action == "rollback":
            ended = await svc.rollback(thread_id, get_assistant(run.graph_id), [run])
        else:
            await svc.cancel(run)
            ended = [await _wait(svc, run) if wait else await svc.run(caller, thread_id, run_id)]
    if not ended:  # deleted while it ended (the thread or the run deleted once it had)
        raise JourneyNotFoundError(f"run {run_id!r} is gone", run_id=run_id)
    return ended[0].view()

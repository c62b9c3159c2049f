"""The v3 thread stream of the Agent Server API (``client.threads.stream`` in langgraph-sdk 0.4):
commands posted to ``/threads/{id}/commands`` and a filtered event stream of the thread's runs on
``/threads/{id}/stream/events``.

A command is ``{"id", "method", "params"}`` and is answered ``{"type": "success", "id", "result"}`` or
``{"type": "error", "id", "error", "message"}``. ``run.start`` queues a run on the thread (creating the
thread, enqueued behind an active run) and ``input.respond`` answers the thread's interrupt by resuming
its journey. Both go through the same run creation as ``POST /threads/{id}/runs``.

The event stream is made from what the runs already record (their stream chunks and their status), not
from a second recording: per run a ``lifecycle`` ``running`` event, its chunks translated to the protocol's
channels (``values``, ``updates``, ``custom``, ``messages``, ``tasks``, ``checkpoints``), then
``input.requested`` for each interrupt it stopped at and a terminal ``lifecycle`` (``completed``,
``interrupted`` or ``failed``); a run that recorded no chunks (created without ``stream_mode``) tells its
output as ``values`` before its end, as on the v2 thread stream. The stream reads only the runs it still
serves, and ends once its thread is deleted, as the Agent Server's does. Every event has a ``seq`` that is a
pure function of its position in the thread (the run's ordinal, its place among the runs ever created on the
thread, fixed when it was created, and the chunk's number in the run), so a client that reconnects with
``since`` gets exactly what came after, even when runs were deleted meanwhile (a rollback, ``runs.delete``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from checkpoints.runs import thread_key
from graphs.structured.steps import INTERRUPT
from server.problems import redact_answer
from server.runs.sse import OPENED, ending_of_unrecorded
from server.runs.store import ACTIVE, TERMINAL, RunRow

if TYPE_CHECKING:
    from server.services import ServerServices

# The modes a run started by ``run.start`` records, so its stream can be served and replayed.
RECORDED_MODES = ["values", "updates", "custom", "messages-tuple", "tasks", "checkpoints", "tools"]
CHANNELS = ("values", "updates", "messages", "tools", "lifecycle", "input", "checkpoints", "tasks", "custom")
RUN_SPAN = 1 << 26  # seq = the run's ordinal on its thread * RUN_SPAN + the event's place in the run
_PER_CHUNK = 8  # a chunk becomes at most this many events (the last messages' ends, a start, a delta)
# A stream opened without ``since`` replays the thread's active runs, and a run created this recently: the
# SDK opens its stream right after ``run.start`` answers, by when a quick run may have ended. Not the Agent
# Server's replay of every run it keeps (120 s after each): the SDK's lifecycle watcher takes the first run's end
# it meets for the session's own, so thread.output of a session opened then answers the run before it.
RECENT = timedelta(seconds=5)
RUNS_PAGE = 100  # runs read at a time, newest first, to find those a stream still serves


def ok(command_id: Any, result: Mapping[str, Any]) -> dict[str, Any]:
    return {"type": "success", "id": command_id, "result": dict(result)}


def refused(command_id: Any, error: str, message: str) -> dict[str, Any]:
    """A command the protocol refuses; ``error`` is one of its codes (invalid_argument, no_such_interrupt,
    unknown_command, not_supported, …)."""
    return {"type": "error", "id": command_id, "error": error, "message": message}


@dataclass(frozen=True)
class EventFilter:
    """What a subscriber asked for: channels (``custom:<name>`` for one extension), namespace prefixes, depth."""

    channels: frozenset[str]
    namespaces: tuple[tuple[str, ...], ...] | None = None
    depth: int | None = None

    def admits(self, event: Mapping[str, Any]) -> bool:
        channel = _channel(event)
        if channel not in self.channels and not (channel.startswith("custom:") and "custom" in self.channels):
            return False
        namespace = tuple(event["params"]["namespace"])
        if not self.namespaces:
            return True
        for prefix in self.namespaces:
            below = len(namespace) - len(prefix)
            if namespace[: len(prefix)] == prefix and (self.depth is None or below <= self.depth):
                return True
        return False


def _channel(event: Mapping[str, Any]) -> str:
    method = str(event["method"])
    if method == "input.requested":
        return "input"
    if method == "custom":
        name = event["params"]["data"].get("name")
        return f"custom:{name}" if name else "custom"
    return method


@dataclass
class _RunCursor:
    """How far the stream has gone in one run: the last chunk read, and whether its ends were sent."""

    run: RunRow
    ordinal: int
    chunk: int = 0
    started: bool = False
    ended: bool = False
    messages: dict[str, bool] = field(default_factory=dict)  # message ids started in this run: still open?


class ThreadEvents:
    """The protocol events of one thread's runs, from ``since`` on (or from its active runs), as they come."""

    def __init__(self, svc: ServerServices, thread_id: str, wanted: EventFilter, since: int | None) -> None:
        self.svc = svc
        self.thread_id = thread_id
        self.wanted = wanted
        self.since = since
        self._cursors: dict[str, _RunCursor] = {}
        self._first = 0  # the first run's place this stream serves: fixed as frames() begins

    async def frames(self) -> AsyncGenerator[bytes]:
        """Server-sent events until the client goes away, or the thread is deleted (then the stream ends, as
        the Agent Server's does): each event's ``seq`` is its ``id``. :data:`~server.runs.sse.OPENED` first,
        once the stream has fixed the first run it serves (see :func:`~server.runs.sse.opened`)."""
        self._first = await self._first_served()
        yield OPENED
        while True:
            with self._watching() as changed:
                watched = {run_id for run_id, c in self._cursors.items() if not c.ended}
                events = await self._new_events()
                for event in events or ():
                    if (self.since is None or event["seq"] > self.since) and self.wanted.admits(event):
                        yield frame(event)
                if events is None:
                    return
                if any(run_id not in watched for run_id, c in self._cursors.items() if not c.ended):
                    continue  # read again at once, now watching the runs just found: a change since is not missed
                starting = any(c.run.status == "pending" for c in self._cursors.values() if not c.ended)
                await first_of(changed, fallback_poll(self.svc.settings.poll_interval, starting=starting))

    @contextlib.contextmanager
    def _watching(self) -> Iterator[list[asyncio.Event]]:
        keys = [thread_key(self.thread_id), *(c.run.run_id for c in self._cursors.values() if not c.ended)]
        with contextlib.ExitStack() as stack:
            yield [stack.enter_context(self.svc.watch.watching(k)) for k in keys]

    async def _new_events(self) -> list[dict[str, Any]] | None:
        """The events of the runs the stream serves that it has not given yet; None once the thread is deleted
        (no run will come)."""
        runs = await runs_from(self.svc, self.thread_id, self._first)
        if await deleted(self.svc, self.thread_id, runs):
            return None
        listed = {run.run_id for run in runs}
        events: list[dict[str, Any]] = []
        for cursor in self._cursors.values():
            cursor.ended = cursor.ended or cursor.run.run_id not in listed  # deleted (a rollback): nothing comes
        for run in runs:
            cursor = self._cursors.setdefault(run.run_id, _RunCursor(run, run.ordinal))
            cursor.run = run
            if not cursor.ended:
                events.extend(await self._run_events(cursor))
        # The runs before the oldest one still going are done with: not read again.
        going = [c.ordinal for c in self._cursors.values() if not c.ended]
        newest = max((run.ordinal for run in runs), default=self._first - 1)
        self._first = max(self._first, min(going, default=newest + 1))
        self._cursors = {run_id: c for run_id, c in self._cursors.items() if c.ordinal >= self._first}
        return events

    async def _first_served(self) -> int:
        """The place of the first run a stream serves: from ``since``, or its active runs and a run just
        created; later runs are all served."""
        if self.since is not None:
            return max(1, self.since // RUN_SPAN)
        newest = await self.svc.runs.list_runs(self.thread_id, limit=RUNS_PAGE)  # read first: a later run is served
        now = self.svc.runtime.store.clock.now()
        active = [
            r
            for status in ACTIVE
            for r in await self.svc.runs.list_runs(self.thread_id, limit=RUNS_PAGE, status=status)
        ]
        served = [*active, *(r for r in newest if now - r.created_at < RECENT)]
        return min((r.ordinal for r in served), default=(newest[0].ordinal if newest else 0) + 1)

    async def _run_events(self, cursor: _RunCursor) -> list[dict[str, Any]]:
        run = cursor.run
        base = cursor.ordinal * RUN_SPAN
        events: list[dict[str, Any]] = []
        if run.status == "pending":
            return events
        if not cursor.started:
            cursor.started = True
            events.append(event(base, "lifecycle", {"event": "running", "graph_name": run.graph_id}, run.run_id))
        # The status was read first: a run seen finished has written all its chunks.
        for number, mode, data in await self.svc.runs.events_after(run.run_id, cursor.chunk):
            cursor.chunk = number
            events += _chunk_events(base, number, _translate(mode, data, cursor.messages), run.run_id)
        if run.status in TERMINAL:
            cursor.ended = True
            # A run that recorded no chunks (created without stream_mode: a cron's, a background run's) still
            # tells its output as values, numbered as the thread's v2 stream numbers it.
            ending = ending_of_unrecorded(run)
            for number, (mode, data) in enumerate(ending, start=1):
                if number > cursor.chunk:
                    events += _chunk_events(base, number, _translate(mode, data, cursor.messages), run.run_id)
            cursor.chunk = max(cursor.chunk, len(ending))
            end = base + (cursor.chunk + 1) * _PER_CHUNK
            for i, (method, payload) in enumerate(_ending(run, cursor.messages)):
                events.append(event(end + i, method, payload, run.run_id))
        return events


def _chunk_events(base: int, number: int, translated: list[tuple[str, Any]], run_id: str) -> list[dict[str, Any]]:
    return [
        event(base + number * _PER_CHUNK + i, method, payload, run_id) for i, (method, payload) in enumerate(translated)
    ]


async def runs_from(svc: ServerServices, thread_id: str, first: int) -> list[RunRow]:
    """The thread's runs from its ``first``-th on, oldest first: read newest first, a page at a time, until a
    page reaches a run before it (a thread stream reads only the runs it still serves, not all of them)."""
    found: list[RunRow] = []
    while True:
        page = await svc.runs.list_runs(thread_id, limit=RUNS_PAGE, offset=len(found))
        found += page
        if len(page) < RUNS_PAGE or page[-1].ordinal < first:
            return sorted((r for r in found if r.ordinal >= first), key=lambda r: r.ordinal)


async def deleted(svc: ServerServices, thread_id: str, runs: Sequence[RunRow]) -> bool:
    """Whether a thread stream's thread is gone, so no run will come: none of ``runs`` (just read) is going and
    the thread is not there."""
    return not any(r.status in ACTIVE for r in runs) and await svc.runs.get_thread(thread_id) is None


def _translate(mode: str, data: Any, messages: dict[str, bool]) -> list[tuple[str, Any]]:
    """A recorded chunk as protocol events (method, data); ``messages`` is how the run records its
    ``messages-tuple`` chunks (the SDK's event name for them)."""
    if mode in ("values", "tasks", "checkpoints", "tools"):  # LangGraph's tools chunks are the protocol's events
        return [(mode, data)]
    if mode == "updates":
        if isinstance(data, dict) and len(data) == 1:
            ((node, values),) = data.items()
            return [("updates", {"node": node, "values": values})]
        return [("updates", {"values": data})]
    if mode == "custom":
        progress = isinstance(data, dict) and isinstance(data.get("event"), str)
        return [("custom", {"name": "journeys", "payload": data} if progress else {"payload": data})]
    if mode == "messages" and isinstance(data, list) and len(data) == 2 and isinstance(data[0], dict):
        message, metadata = data
        if message.get("type") not in ("ai", "AIMessageChunk"):  # a tool's answer is no model output
            return []
        message_id = str(message.get("id") or "message")
        out: list[tuple[str, Any]] = []
        if message_id not in messages:
            # A new message: the model finished the one before it.
            out += [("messages", {"event": "message-finish", "id": m}) for m in messages if messages[m]]
            messages.update(dict.fromkeys(messages, False))
            messages[message_id] = True
            meta = {k: v for k, v in (metadata or {}).items() if isinstance(v, str | int | float | bool)}
            out.append(("messages", {"event": "message-start", "role": "ai", "id": message_id, "metadata": meta}))
        text = message.get("content")
        if isinstance(text, str) and text:
            delta = {"type": "text-delta", "text": text}
            out.append(("messages", {"event": "content-block-delta", "id": message_id, "index": 0, "delta": delta}))
        return out
    if mode == "error":
        return []  # said by the failed lifecycle event
    return []


def _ending(run: RunRow, messages: Mapping[str, bool]) -> list[tuple[str, Any]]:
    """The events that end a run: its messages finished, its interrupts, and its terminal lifecycle."""
    out: list[tuple[str, Any]] = [("messages", {"event": "message-finish", "id": m}) for m in messages if messages[m]]
    if run.status == "success":
        interrupts = (run.output or {}).get(INTERRUPT) or []
        for interrupt in interrupts:
            value = interrupt.get("value")
            data = {"interrupt_id": interrupt.get("id"), "value": value, "payload": value}
            out.append(("input.requested", data))
        out.append(("lifecycle", {"event": "interrupted" if interrupts else "completed", "graph_name": run.graph_id}))
    else:
        error = run.error or {}
        message = error.get("message") or ("the run was cancelled" if run.status == "interrupted" else "the run failed")
        out.append(("lifecycle", {"event": "failed", "graph_name": run.graph_id, "error": str(message)}))
    return out


def event(seq: int, method: str, data: Any, run_id: str) -> dict[str, Any]:
    return {
        "type": "event",
        "event_id": f"{run_id}:{seq % RUN_SPAN}",
        "seq": seq,
        "method": method,
        "params": {"namespace": [], "data": data},
    }


def frame(item: Mapping[str, Any]) -> bytes:
    """One server-sent event, redacted like every answer of the server (checkpoints.redaction)."""
    return f"id: {item['seq']}\ndata: {json.dumps(redact_answer(item), default=str)}\n\n".encode()


# How many fallback polls an idle thread stream lets pass between its re-reads (see fallback_poll).
IDLE_POLLS = 30


def fallback_poll(poll: float, *, starting: bool) -> float:
    """How long a thread's stream waits for a notice before it reads the thread again. Every change it waits
    for is noticed (a run created on the thread, a run's chunks and its end, the thread's delete; with
    PostgreSQL's NOTIFY across processes), except a queued run's start in a worker: while the stream waits for
    one (``starting``) it re-reads every ``poll``; else only :data:`IDLE_POLLS` times as seldom, a last
    resort, so that a thousand idle streams do not read their threads every second."""
    return poll if starting else poll * IDLE_POLLS


async def first_of(events: list[asyncio.Event], poll: float) -> None:
    """Returns when one of ``events`` is set, or after ``poll`` seconds."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=poll, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def before_run(run: RunRow) -> int:
    """The ``seq`` just before ``run``'s first event: a client streaming ``since`` it gets the whole run."""
    return run.ordinal * RUN_SPAN - 1

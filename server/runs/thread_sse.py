"""A thread's stream (``threads.join_stream``: ``GET /threads/{thread_id}/stream``), as the Agent Server serves it:
the events of the thread's runs, run after run, for as long as the client listens (or until the thread is
deleted: then ``end``).

Each run gives its ``metadata`` (``{"run_id", "attempt"}``) once it has started, the chunks it records (those of
the stream modes it was created with, and its ``error``), then ``metadata`` ``{"status": "run_done", "run_id"}``
once it has ended (a run created without ``stream_mode`` records no chunks: its output, as ``values``, or its
error comes before that). ``stream_mode`` ``run_modes`` (the default) is all of that; ``lifecycle`` only the
two ``metadata`` events; ``state_update`` a ``state_update`` event (``{"state", "thread_id"}``) each time
``threads.update_state`` writes the thread's state, live only (without an id: not replayed after
``Last-Event-ID``).

Every event's id is unique in the thread: the run's ordinal (its place among the runs ever created on the
thread) times :data:`~server.thread_stream.RUN_SPAN`, plus the event's number in its run (0 the metadata, then
the chunks' own numbers, then ``run_done``), so a client that reconnects with ``Last-Event-ID`` gets exactly
what came after, across runs. Without ``Last-Event-ID`` the stream is live, as the Agent Server's is: what the
thread's active runs record from now on, and every later run.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Collection, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from checkpoints.runs import state_key, thread_key
from graphs.errors import JourneyNotFoundError
from server.runs.executor import empty_state, state_view
from server.runs.sse import OPENED, ending_of_unrecorded, frame
from server.runs.store import ACTIVE, TERMINAL, RunRow
from server.thread_stream import RUN_SPAN, RUNS_PAGE, deleted, fallback_poll, first_of, runs_from

if TYPE_CHECKING:
    import asyncio

    from server.services import ServerServices

ThreadStreamMode = Literal["run_modes", "lifecycle", "state_update"]
# The Agent Server's own ``stream_modes``: the same, comma-separated.
MODES_LIST = r"^\s*(run_modes|lifecycle|state_update)\s*(,\s*(run_modes|lifecycle|state_update)\s*)*$"


@dataclass
class _Run:
    """How far the stream has gone in one run: whether its metadata was sent, its last chunk, its end."""

    ordinal: int
    chunk: int = 0
    started: bool = False
    ended: bool = False


def after_event(last_event_id: str | None) -> int | None:
    """Where a thread stream resumes: after this event id (``-1``: from the thread's first run on); None (no
    ``Last-Event-ID``, or one that is no event's) for a live stream."""
    text = (last_event_id or "").strip()
    if text == "-1":
        return -1
    return int(text) if text.isascii() and text.isdigit() else None


async def thread_events(
    svc: ServerServices, thread_id: str, after: int | None, modes: Collection[str]
) -> AsyncGenerator[bytes]:
    """The thread's stream as server-sent events, from ``after`` (see :func:`after_event`) on; it yields
    :data:`~server.runs.sse.OPENED` first, once a live one has fixed its start and watches the thread's state
    (see :func:`~server.runs.sse.opened`)."""
    runs: dict[str, _Run] = {}
    first = await _live_start(svc, thread_id, runs) if after is None else max(1, after // RUN_SPAN)
    sent_state: Any = None  # the checkpoint of the last state_update sent: one update may wake it twice
    with contextlib.ExitStack() as stack:
        # Watched for as long as the stream lasts: an update between two reads of the runs is not missed.
        states = "state_update" in modes
        state_changed = stack.enter_context(svc.watch.watching(state_key(thread_id))) if states else None
        yield OPENED
        while True:
            with _watching(svc, thread_id, runs) as changed:
                found = await runs_from(svc, thread_id, first)
                if await deleted(svc, thread_id, found):
                    yield frame("end", None)  # no run will come
                    return
                unwatched = [run for run in found if run.run_id not in runs]
                for run in found:
                    cursor = runs.setdefault(run.run_id, _Run(run.ordinal))
                    if cursor.ended:
                        continue
                    for number, event, data in await _run_events(svc, run, cursor):
                        seq = run.ordinal * RUN_SPAN + number
                        if (after is None or seq > after) and _shown(event, modes):
                            yield frame(event, data, seq)
                # The runs before the oldest one still going are done with: not read again.
                going = [c.ordinal for c in runs.values() if not c.ended]
                first = max(first, min(going, default=max((r.ordinal for r in found), default=first - 1) + 1))
                runs = {run_id: c for run_id, c in runs.items() if c.ordinal >= first}
                # Else read again at once, now watching the runs just found: a change since is not missed.
                if not any(run.run_id in runs and not runs[run.run_id].ended for run in unwatched):
                    starting = any(
                        r.status == "pending" for r in found if r.run_id in runs and not runs[r.run_id].ended
                    )
                    woken = [*changed, *([state_changed] if state_changed is not None else [])]
                    await first_of(woken, fallback_poll(svc.settings.poll_interval, starting=starting))
            if state_changed is not None and state_changed.is_set():
                state_changed.clear()  # before the read: an update during it wakes the stream again
                # Woken here at once and again by its notice, in a process that listens: sent once.
                update = await _state_update(svc, thread_id)
                if update is not None and update["state"]["checkpoint"] != sent_state:
                    sent_state = update["state"]["checkpoint"]
                    yield frame("state_update", update)


def _shown(event: str, modes: Collection[str]) -> bool:
    """Whether a run's event goes out in these thread stream modes: all of them in ``run_modes``, its two
    ``metadata`` (started, ``run_done``) in ``lifecycle``; none in ``state_update`` alone."""
    return "run_modes" in modes or ("lifecycle" in modes and event == "metadata")


async def _state_update(svc: ServerServices, thread_id: str) -> dict[str, Any] | None:
    """The ``state_update`` event of a thread whose state was updated (``threads.update_state``), as the Agent
    Server sends it: the thread's state now, and its id; None once the thread is gone."""
    try:
        thread = await svc.resolve_thread(thread_id, None)
    except JourneyNotFoundError:
        return None
    graph = await svc.thread_graph(thread)
    if graph is None or thread.instance_id is None:
        return {"state": empty_state(thread_id), "thread_id": thread_id}
    snapshot = await graph.aget_state(svc.runtime.engine.config(thread.instance_id))
    return {"state": state_view(snapshot, thread_id), "thread_id": thread_id}


async def _live_start(svc: ServerServices, thread_id: str, runs: dict[str, _Run]) -> int:
    """A live stream's first run: the oldest active one, picked up after the chunks it has recorded (its
    metadata counted as sent once it has started), or the next run created; the runs ended by now are skipped."""
    last = await svc.runs.last_run(thread_id)  # read first: a run created after it is served whole
    newest = last.ordinal if last else 0
    active = [r for status in ACTIVE for r in await svc.runs.list_runs(thread_id, limit=RUNS_PAGE, status=status)]
    for run in active:
        runs[run.run_id] = _Run(run.ordinal, await svc.runs.last_seq(run.run_id), started=run.status != "pending")
    first = min((r.ordinal for r in active), default=newest + 1)
    for run in await runs_from(svc, thread_id, first):
        runs.setdefault(run.run_id, _Run(run.ordinal, ended=run.ordinal <= newest))
    return first


async def _run_events(svc: ServerServices, run: RunRow, cursor: _Run) -> list[tuple[int, str, Any]]:
    """The events of ``run`` the stream has not given yet: (number in the run, event, data)."""
    events: list[tuple[int, str, Any]] = []
    if run.status == "pending":
        return events
    if not cursor.started:
        cursor.started = True
        events.append((0, "metadata", {"run_id": run.run_id, "attempt": 1}))
    # The status was read first: a run seen finished has written all its chunks.
    for number, event, data in await svc.runs.events_after(run.run_id, cursor.chunk):
        cursor.chunk = number
        events.append((number, event, data))
    if run.status in TERMINAL:
        cursor.ended = True
        ending = ending_of_unrecorded(run)  # a run that recorded no chunks: its output (or error), numbered from 1
        events += [(number, e, data) for number, (e, data) in enumerate(ending, start=1) if number > cursor.chunk]
        cursor.chunk = max(cursor.chunk, len(ending))
        events.append((cursor.chunk + 1, "metadata", {"status": "run_done", "run_id": run.run_id}))
    return events


@contextlib.contextmanager
def _watching(svc: ServerServices, thread_id: str, runs: dict[str, _Run]) -> Iterator[list[asyncio.Event]]:
    """Woken by a run created on the thread (or its delete), or a change (a chunk, its end) to one of its runs
    still going."""
    keys = [thread_key(thread_id), *(run_id for run_id, cursor in runs.items() if not cursor.ended)]
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(svc.watch.watching(key)) for key in keys]

"""A run's stream chunks as server-sent events: read from the run's rows, woken by the run watch."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Collection
from typing import TYPE_CHECKING, Any

import anyio
import structlog

from server.models import MAX_INT
from server.problems import shown
from server.runs.store import TERMINAL, RunRow
from server.runs.watch import next_change

if TYPE_CHECKING:
    from server.services import ServerServices

log = structlog.get_logger("journeys.runs")
# The stream mode a recorded chunk's event belongs to, where its name is not the mode's own.
_MODE_OF_EVENT = {
    "messages": "messages-tuple",
    "messages/metadata": "messages",
    "messages/partial": "messages",
    "messages/complete": "messages",
}
_ALWAYS = frozenset({"metadata", "error", "end"})  # sent whatever modes a joining client asked for

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


OPENED = b""  # what a live stream yields first, once it serves what comes from then on (see opened)


async def opened(events: AsyncGenerator[bytes]) -> AsyncGenerator[bytes]:
    """``events``, run to its first yield (:data:`OPENED`, dropped here): a live stream fixes there what it
    serves from then on. Awaited before the response's headers go out, so a client that has them misses nothing
    that comes after (a run it creates then). Started, a generator the response never reads is still closed
    (asyncio finalises it when it is dropped)."""
    first = await anext(events)
    if first != OPENED:
        raise RuntimeError(f"a live stream's first yield is OPENED, not {first!r}")
    return events


async def run_events(
    svc: ServerServices, run: RunRow, after: int | None = None, modes: Collection[str] | None = None
) -> AsyncIterator[bytes]:
    """The run's chunks as server-sent events, each with its sequence number as ``id``, then ``end``.

    The run's ``metadata`` is event 0 and its chunks are numbered from 1; ``end`` has the number after the
    last. ``after`` (a reconnect's Last-Event-ID, see :func:`resumed_after`) resumes after that event; None
    or -1 is the whole stream, ``metadata`` first. ``modes``: only the chunks of these stream modes (a
    join's ``stream_mode``; None or empty: all), with the run's errors."""
    if after is None or after < 0:
        yield frame("metadata", {"run_id": run.run_id, "attempt": 1}, 0)
    seen = max(after or 0, 0)
    with svc.watch.watching(run.run_id) as changed:
        while True:
            current = await svc.runs.get_run(run.run_id)
            finished = current is None or current.status in TERMINAL
            # Read after the status: a run seen finished has written all its chunks.
            for number, event, data in await svc.runs.events_after(run.run_id, seen):
                seen = number
                if not modes or event in _ALWAYS or _MODE_OF_EVENT.get(event, event) in modes:
                    yield frame(event, data, number)
            if finished:
                ending = ending_of_unrecorded(current)  # numbered as chunks would be: from 1
                for number, (event, data) in enumerate(ending, start=1):
                    if number > seen and (not modes or event in _ALWAYS or event in modes):
                        yield frame(event, data, number)
                seen = max(seen, len(ending))
                # Its own id: without one, a client's SSE decoder gives it the last chunk's.
                yield frame("end", None, seen + 1)
                return
            await next_change(changed, svc.settings.poll_interval)


def ending_of_unrecorded(run: RunRow | None) -> list[tuple[str, Any]]:
    """What the stream of a finished run that recorded no chunks says of its end, from its row: its output as
    ``values`` (the Agent Server's default stream mode, which a run created without ``stream_mode`` streams
    there), or its ``error``. Such a run (raw HTTP, a cron's) records nothing as it goes, which keeps a run no
    one streams cheap; a client joining it still hears how it ended. Empty for a run that recorded its chunks
    (its own tell it), and for one cancelled (``interrupted``): no output is kept for it."""
    if run is None or run.stream_modes:
        return []
    if run.status == "error":
        return [("error", run.error or {"error": "Error", "message": "the run failed"})]
    if run.status == "success" and run.output is not None:
        return [("values", run.output)]
    return []


def resumed_after(last_event_id: str | None) -> int:
    """Where a join resumes from its ``Last-Event-ID``: after that event, or from the very start (the run's
    ``metadata`` included) for ``-1``, as the Agent Server's resumable streams do; without one (or one that is
    no event's), after the metadata."""
    if last_event_id is None or not last_event_id.isascii():
        return 0
    if last_event_id.strip() == "-1":
        return -1
    return min(int(last_event_id), MAX_INT) if last_event_id.isdigit() else 0


def frame(event: str, data: Any, number: int | None = None) -> bytes:
    """One server-sent event, its data :func:`shown`."""
    head = f"id: {number}\n" if number is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(shown(event, data), default=str)}\n\n".encode()


async def cancelled_when_gone(svc: ServerServices, run: RunRow, events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """``events`` (the run's stream), and the run cancelled if the client goes away before the stream ended:
    ``on_disconnect="cancel"`` (``cancel_on_disconnect`` on a join), as the Agent Server does."""
    ended = False
    try:
        async for chunk in events:
            yield chunk
        ended = True
    finally:
        if not ended:
            # Shielded: the request's scope was cancelled when its client went away.
            with anyio.CancelScope(shield=True):
                try:
                    await svc.cancel_if_active(run.thread_id, run.run_id)
                except Exception:  # nobody is left to answer; the run's own client may cancel it still
                    log.exception("could not cancel a run whose client went away", run_id=run.run_id)

"""How many event streams (SSE) each caller may hold open in this process.

An open stream costs the server a re-read of its run or thread every ``poll_interval`` for as long as the client
keeps it, whether anything happens or not: a thousand idle thread streams opened by one caller stalled another
caller's requests for 38 s, then slowed each of them twentyfold. Each caller (tenant and name) holds at most
``Settings.max_streams_per_caller`` streams at once; one more is refused before anything is done for it
(429 ``TooManyStreams``: a run to stream is not created), and a slot is given back when its stream ends,
however it ends.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from server.auth import Principal
from server.problems import ApiError


class StreamSlots:
    """The streams each caller holds open, at most ``limit`` each."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: Counter[tuple[str, str]] = Counter()

    def take(self, caller: Principal) -> StreamSlot:
        """A slot for one more of ``caller``'s streams; 429 when it holds ``limit`` already."""
        key = (caller.tenant, caller.name)
        if self._open[key] >= self.limit:
            raise ApiError(
                429,
                "TooManyStreams",
                f"this caller has {self.limit} streams open already; close one (or wait for a run to end) first",
                limit=self.limit,
            )
        self._open[key] += 1
        return StreamSlot(self, key)

    def held(self, caller: Principal) -> int:
        return self._open[(caller.tenant, caller.name)]

    def _give_back(self, key: tuple[str, str]) -> None:
        self._open[key] -= 1
        if self._open[key] <= 0:
            del self._open[key]


class StreamSlot:
    """One taken slot: given back once, by the stream's response when it ends, or by an error before it."""

    def __init__(self, slots: StreamSlots, key: tuple[str, str]) -> None:
        self._slots = slots
        self._key: tuple[str, str] | None = key

    def release(self) -> None:
        if self._key is not None:
            self._slots._give_back(self._key)
            self._key = None

    @contextmanager
    def released_on_error(self) -> Iterator[None]:
        """Gives the slot back if what the stream needs first (a run) fails."""
        try:
            yield
        except BaseException:
            self.release()
            raise

    def response(self, events: AsyncIterator[bytes], **options: Any) -> StreamingResponse:
        """The SSE response of ``events``, which gives the slot back when it ends (sent, failed or cancelled)."""
        return _SlotResponse(self, events, media_type="text/event-stream", **options)


class _SlotResponse(StreamingResponse):
    def __init__(self, slot: StreamSlot, events: AsyncIterator[bytes], **options: Any) -> None:
        super().__init__(events, **options)
        self._slot = slot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._slot.release()

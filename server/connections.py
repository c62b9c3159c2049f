"""What one HTTP connection may hold of the server before its request has been read.

uvicorn's httptools protocol keeps every byte of a request's line and headers a client sends (llhttp sets
no limit), and waits for ever for a request that comes a byte at a time (its keep-alive timeout applies
only between requests): one endless header grew the server's memory without bound, and connections that
opened and then trickled (slowloris) were held for as long as their clients liked. ``journeys serve``
serves with :func:`guarded_protocol`, uvicorn's protocol with two bounds from
:class:`~server.settings.InputLimits`:

- a request line and headers longer than ``max_head_bytes`` are answered 431 and the connection closed;
- a request not read in full (line, headers and body) within ``read_seconds`` of its connection opening or
  of its first byte (a later request on a kept-alive connection) is answered 408 and the connection closed.
  Only reading a request is timed: an answer may take as long as it takes (a run waited on, a stream).
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from server.settings import InputLimits


class _HeadTooLarge(Exception):
    """Raised from the parser's callbacks to stop it: the request's head is over the limit."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, bounded as the module says (its ``limits`` set by :func:`guarded_protocol`)."""

    limits: ClassVar[InputLimits] = InputLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes = 0  # of the request line and headers parsed so far
        self._head_fed = 0  # bytes handed to the parser since the request began, while its head was incomplete
        self._in_head = True
        self._head_too_large = False
        self._reading: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()  # a connection that sends nothing, or its first request slowly

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            # httptools buffers a header until it ends, before any callback sees it: an endless one is cut off
            # here, at most one read past the limit (a head and a body may come in one read).
            if self._head_fed > self.limits.max_head_bytes:
                self._head_too_large = True
                self.send_400_response("")
                return
            self._head_fed += len(data)
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0
        if self._reading is None:  # a later request on a kept-alive connection: timed from its first byte
            self._arm()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value))
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        self._in_head, self._head_fed = True, 0
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        """uvicorn answers every parser error 400; a head over the limit is told so (431)."""
        if self._head_too_large:
            self._refuse(431, f"the request line and headers are over {self.limits.max_head_bytes} bytes")
        else:
            super().send_400_response(msg)

    def _count(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self.limits.max_head_bytes:
            self._head_too_large = True
            raise _HeadTooLarge  # the parser stops; uvicorn then calls send_400_response

    def _arm(self) -> None:
        self._reading = self.loop.call_later(self.limits.read_seconds, self._read_too_slowly)

    def _disarm(self) -> None:
        if self._reading is not None:
            self._reading.cancel()
            self._reading = None

    def _read_too_slowly(self) -> None:
        self._reading = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        answered = cycle is not None and cycle.response_started and not cycle.response_complete
        if cycle is not None and not cycle.response_complete:
            # The route reading this body sees the client gone (not a body cut short), and answers nothing more.
            cycle.disconnected = True
            cycle.message_event.set()
        if answered:
            self.transport.close()
        else:
            self._refuse(408, f"the request was not received within {self.limits.read_seconds:g} seconds")

    def _refuse(self, status: int, message: str) -> None:
        reason = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}[status]
        body = message.encode("ascii")
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (status, reason, len(body), body)
        )
        self.transport.close()


def guarded_protocol(limits: InputLimits) -> type[GuardedHttpToolsProtocol]:
    """The protocol class to give uvicorn (``http=``), bounded by ``limits``."""
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {"limits": limits})

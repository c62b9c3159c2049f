"""Clients that hold connections instead of sending requests, against a real `journeys serve` process: an
endless header, a request trickled in a byte at a time (slowloris), a connection that sends nothing, a body
that stops half way. Each is cut off (431, 408) while another client's requests are answered at once, and a
long answer (an open stream) is never cut, nor a connection a client keeps idle in its pool for reuse."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import httpx
import pytest

from tests.server_support import journeys_serve

pytestmark = pytest.mark.slow
TIMEOUT = 1.0  # --request-timeout: seconds to send a whole request


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("connections") / "serve.log"


@pytest.fixture(scope="module")
def base(log: Path) -> Iterator[str]:
    """One server for the module's tests (each checks it still answers others): a start costs seconds."""
    options = ("--no-auth", "--request-timeout", str(TIMEOUT), "--max-header-bytes", "8192")
    with journeys_serve(f"sqlite:///{log.parent}/journeys.db", log, *options) as found:
        yield found


def connect(base: str) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def answer(sock: socket.socket) -> bytes:
    """What the server sent until it closed the connection (b"" for a reset)."""
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def ok_latency(base: str) -> float:
    started = time.perf_counter()
    assert httpx.get(f"{base}/ok", timeout=10).status_code == 200
    return time.perf_counter() - started


def test_a_head_over_the_limit_is_refused_431_and_an_endless_one_is_cut_off(base: str) -> None:
    with connect(base) as sock:
        sock.sendall(b"GET /ok HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 9000 + b"\r\n\r\n")
        refused = answer(sock)
    assert refused.startswith(b"HTTP/1.1 431 "), refused[:200]
    assert b"over 8192 bytes" in refused
    # Many small headers count together.
    with connect(base) as sock:
        sock.sendall(
            b"GET /ok HTTP/1.1\r\n" + b"".join(b"X-%d: %s\r\n" % (n, b"b" * 100) for n in range(100)) + b"\r\n"
        )
        assert answer(sock).startswith(b"HTTP/1.1 431 ")
    # A header that never ends: the server stops reading it (it kept every byte: 50 MB went in).
    with connect(base) as sock:
        sock.sendall(b"GET /ok HTTP/1.1\r\nHost: x\r\nX-Endless: ")
        sent = 0
        with pytest.raises(OSError):  # reset or broken pipe once the server has closed the connection
            while sent < 50_000_000:
                sock.sendall(b"a" * 65536)
                sent += 65536
        assert sent < 5_000_000
    assert ok_latency(base) < 0.5


def test_a_request_not_sent_in_time_is_refused_408_while_others_are_served(base: str, log: Path) -> None:
    trickling, idle, half_body = connect(base), connect(base), connect(base)
    with trickling, idle, half_body:
        half_body.sendall(b"POST /threads HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
        half_body.sendall(b'Content-Length: 100\r\n\r\n{"metadata"')
        trickling.sendall(b"GET /ok HTTP/1.1\r\n")
        started = time.monotonic()
        latencies = []
        trickling.settimeout(0.2)
        cut_off = b""
        while time.monotonic() - started < 5 * TIMEOUT and not cut_off:
            try:
                trickling.sendall(b"X")  # one byte of a header name every 0.2 s: never a whole request
                cut_off = trickling.recv(65536)
            except TimeoutError:
                latencies.append(ok_latency(base))
            except (BrokenPipeError, ConnectionResetError):
                break
        waited = time.monotonic() - started
        assert cut_off.startswith(b"HTTP/1.1 408 "), cut_off[:200]
        assert TIMEOUT * 0.9 < waited < TIMEOUT * 3
        assert answer(idle).startswith(b"HTTP/1.1 408 ")  # opened, then nothing sent
        assert answer(half_body).startswith(b"HTTP/1.1 408 ")  # its body stopped after 11 of 100 bytes
    assert latencies and max(latencies) < 0.5, latencies
    assert httpx.post(f"{base}/threads/search", json={}, timeout=10).json() == []  # the half body stored nothing
    # The route reading the half body saw its client gone: not a server error (it logged one, with a traceback).
    assert "unhandled error" not in log.read_text() and "Traceback" not in log.read_text()


def test_a_long_answer_and_a_kept_alive_connection_are_not_cut(base: str) -> None:
    with httpx.Client(base_url=base, timeout=10) as client:
        thread = client.post("/threads", json={}).json()["thread_id"]
        time.sleep(TIMEOUT * 1.5)  # the connection idles (it is kept alive 75 s): its next request is timed anew
        assert client.get("/ok").status_code == 200
        # A thread's event stream stays open while no run comes: it outlives the time to send a request.
        with client.stream(
            "POST",
            f"/threads/{thread}/stream/events",
            json={"channels": ["lifecycle"]},
            timeout=httpx.Timeout(10, read=3 * TIMEOUT),
        ) as stream:
            assert stream.status_code == 200
            started = time.monotonic()
            try:
                for _ in stream.iter_raw():
                    if time.monotonic() - started > 3 * TIMEOUT:
                        break
            except httpx.ReadTimeout:
                pass
            assert time.monotonic() - started >= 2.5 * TIMEOUT  # cut off, it would have ended at once


def test_a_connection_a_client_pools_is_not_closed_before_the_client_drops_it(base: str) -> None:
    """A server that closes an idle connection first races its client's next request on it: a client that
    takes it from its pool just as the close arrives sends its request into a closed connection and fails
    (aiohttp: ServerDisconnectedError; a POST is not sent again). aiohttp keeps idle connections 15 s, and
    `journeys serve` closed them after 5 s (uvicorn's default). The close arriving while the client's loop is
    busy elsewhere, as a loaded client's is, makes the race happen every time: the client sees the close only
    once it has sent its request."""

    async def reuse() -> int:
        async with aiohttp.ClientSession(base_url=base) as client:
            async with client.post("/threads", json={}) as response:
                assert response.status == 200
            time.sleep(6)  # noqa: ASYNC251 - its loop busy: longer than those 5 s, less than its pool's 15 s
            async with client.post("/threads", json={}) as response:
                return response.status

    assert asyncio.run(reuse()) == 200

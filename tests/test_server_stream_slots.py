"""Event streams held open: one caller holds at most ``max_streams_per_caller`` at once, over real HTTP on every
backend. One more is refused 429 before anything is done for it (a run to stream is not created); another caller
is served as before; a stream closed gives its slot back."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack

import httpx
import pytest

from server.app import create_app
from server.settings import ApiKey, Settings
from tests.server_support import serving

WORK = frozenset({"read", "runs"})
KEYS = {"key-ana": ApiKey("ana", WORK), "key-bob": ApiKey("bob", WORK)}
LIMIT = 3
JOURNEY = {"assistant_id": "structured", "input": {"journey_type": "content_migration"}}


@pytest.fixture
def http(store_url: str) -> Iterator[httpx.Client]:
    app = create_app(Settings(database_url=store_url, api_keys=dict(KEYS), max_streams_per_caller=LIMIT))
    with serving(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client


def thread_of(http: httpx.Client, key: str) -> str:
    created = http.post("/threads", json={}, headers={"x-api-key": key})
    assert created.status_code == 200, created.text
    thread_id: str = created.json()["thread_id"]
    return thread_id


def open_stream(stack: ExitStack, http: httpx.Client, key: str, thread_id: str) -> httpx.Response:
    """A thread's event stream, left open (it never ends by itself)."""
    return stack.enter_context(
        http.stream(
            "POST", f"/threads/{thread_id}/stream/events", json={"channels": ["lifecycle"]}, headers={"x-api-key": key}
        )
    )


def open_when_free(stack: ExitStack, http: httpx.Client, key: str, thread_id: str) -> httpx.Response:
    """A stream opened once a slot is free: a stream's slot is given back when the server has seen it end."""
    deadline = time.monotonic() + 10
    while (opened := open_stream(stack, http, key, thread_id)).status_code == 429 and time.monotonic() < deadline:
        opened.close()
        time.sleep(0.1)
    return opened


def test_a_caller_holds_at_most_its_streams_and_others_are_served(http: httpx.Client) -> None:
    ana, bob = {"x-api-key": "key-ana"}, {"x-api-key": "key-bob"}
    thread = thread_of(http, "key-ana")
    with ExitStack() as held:
        streams = [open_stream(held, http, "key-ana", thread) for _ in range(LIMIT)]
        assert [s.status_code for s in streams] == [200] * LIMIT
        refused = http.post(f"/threads/{thread}/stream/events", json={"channels": ["lifecycle"]}, headers=ana)
        assert refused.status_code == 429, refused.text
        assert refused.json()["code"] == "TooManyStreams" and refused.json()["details"]["limit"] == LIMIT
        assert http.get(f"/threads/{thread}/stream", headers=ana).status_code == 429
        # A run to stream is refused before it is created: the thread has no run.
        assert http.post(f"/threads/{thread}/runs/stream", json=JOURNEY, headers=ana).status_code == 429
        assert http.post("/runs/stream", json=JOURNEY, headers=ana).status_code == 429
        assert http.get(f"/threads/{thread}/runs", headers=ana).json() == []
        assert http.post("/threads/count", json={}, headers=ana).json() == 1
        # Another caller streams and is answered as before.
        with http.stream("POST", "/runs/stream", json=JOURNEY, headers=bob) as bobs:
            assert bobs.status_code == 200
            assert b"event: end" in b"".join(bobs.iter_raw())
        assert http.post("/threads/search", json={}, headers=bob).status_code == 200
        streams[0].close()  # a stream closed by its client gives its slot back
        deadline = time.monotonic() + 10
        while (
            again := http.post(f"/threads/{thread}/runs/stream", json=JOURNEY, headers=ana)
        ).status_code == 429 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert again.status_code == 200, again.text
        assert b"event: end" in again.content
    # A stream that ended by itself (the run's) gave its slot back too: all of them are free again.
    with ExitStack() as held:
        assert [open_when_free(held, http, "key-ana", thread).status_code for _ in range(LIMIT)] == [200] * LIMIT

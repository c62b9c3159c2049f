"""A run's webhook is delivered durably: its attempts are process timers, so a delivery that had not got
through when the process that ran the run was killed is made by the next process (embedded mode) or by
another worker (distributed mode), against a real loopback receiver."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from sqlalchemy import Engine, create_engine, select

from checkpoints.schema.tables import process_timers
from checkpoints.url import parse_store_url
from tests.forked import JourneysProcess
from tests.server_support import free_port, start_serving, start_worker, stop_worker

pytestmark = pytest.mark.slow
CONTENT_MIGRATION = {"journey_type": "content_migration", "requirements": {"source": "a", "target": "b"}}


class _Receiver(BaseHTTPRequestHandler):
    """A loopback webhook receiver that keeps the bodies it takes."""

    calls: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        type(self).calls.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def receiving(port: int) -> Iterator[list[dict[str, Any]]]:
    _Receiver.calls = []
    receiver = HTTPServer(("127.0.0.1", port), _Receiver)
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    try:
        yield _Receiver.calls
    finally:
        receiver.shutdown()
        receiver.server_close()


def serve(url: str, port: int, log: Path, *options: str) -> JourneysProcess:
    """A `journeys serve --no-auth` process (killed by the test, so not a context manager)."""
    return start_serving(url, port, log, "--no-auth", *options)


def kill(process: JourneysProcess) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait()


def webhook_timers(engine: Engine, run_id: str) -> list[tuple[str, datetime]]:
    """The status and due time of each armed attempt of ``run_id``'s webhook (its timers), as stored."""
    t = process_timers.c
    with engine.connect() as conn:
        rows = conn.execute(select(t.status, t.due_at).where(t.timer_id.like(f"webhook:{run_id}:%"))).all()
    return [(status, due.replace(tzinfo=due.tzinfo or UTC)) for status, due in rows]


def kill_between_attempts(process: JourneysProcess, url: str, run_id: str) -> None:
    """SIGKILL ``process`` while none of ``run_id``'s webhook attempts is in flight: one failed, and the next
    is armed and not due for a moment (attempts back off from 0.5 s), so no claim can come before the kill.
    An attempt killed in flight would be claimed again only once its lease (a minute) is up: that is the
    timers' own path (tests/test_process_user_tasks.py, a claim is a lease), the same for every purpose."""
    engine = create_engine(parse_store_url(url).sqlalchemy_url.replace("+aiosqlite", ""))  # a sync driver
    deadline = time.monotonic() + 30
    try:
        while True:
            timers = webhook_timers(engine, run_id)
            next_due = min((due for status, due in timers if status == "scheduled"), default=None)
            in_flight = any(status == "firing" for status, _due in timers)
            if next_due is not None and not in_flight and next_due - datetime.now(UTC) > timedelta(seconds=0.2):
                kill(process)
                break
            assert time.monotonic() < deadline, f"no webhook attempt was armed and waiting: {timers}"
            time.sleep(0.02)
        assert "firing" not in {status for status, _due in webhook_timers(engine, run_id)}
    finally:
        engine.dispose()


def run_to_its_end(base: str, hook: str) -> str:
    """A structured journey's first run, with a webhook; its id once it has ended."""
    with httpx.Client(base_url=base, timeout=60) as api:
        tid = api.post("/threads", json={}).json()["thread_id"]
        body = {"assistant_id": "structured", "input": {**CONTENT_MIGRATION, "user_id": "ana"}, "webhook": hook}
        run_id: str = api.post(f"/threads/{tid}/runs", json=body).json()["run_id"]
        api.get(f"/threads/{tid}/runs/{run_id}/join")
        assert api.get(f"/threads/{tid}/runs/{run_id}").json()["status"] == "success"
    return run_id


def delivered(calls: list[dict[str, Any]], seconds: float = 30) -> list[dict[str, Any]]:
    deadline = time.monotonic() + seconds
    while not calls and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1)  # a second call would come now
    return list(calls)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_webhook_not_yet_delivered_when_the_server_was_killed_is_delivered_after_restart(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url: str = request.getfixturevalue(f"{backend}_url")
    hook_port, port = free_port(), free_port()
    first = serve(url, port, tmp_path / "first.log")
    try:
        # The receiver is down while the run ends: the first attempts fail, then the process is killed.
        run_id = run_to_its_end(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{hook_port}/hook")
        kill_between_attempts(first, url, run_id)
    finally:
        kill(first)
    with receiving(hook_port) as calls:
        second = serve(url, port, tmp_path / "second.log")
        try:
            [call] = delivered(calls)
        finally:
            stop_worker(second)
    assert (call["run_id"], call["status"]) == (run_id, "success")


def test_a_webhook_is_delivered_by_another_worker_when_its_worker_was_killed(postgres_url: str, tmp_path: Path) -> None:
    """Distributed mode: the worker that ran the run is killed before the receiver answers; the attempts are
    timers, which the other worker's timer job fires."""
    hook_port, port = free_port(), free_port()
    api = serve(postgres_url, port, tmp_path / "serve.log", "--distributed")
    worker = start_worker(postgres_url)
    try:
        run_id = run_to_its_end(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{hook_port}/hook")
        kill_between_attempts(worker, postgres_url, run_id)
        with receiving(hook_port) as calls:
            worker = start_worker(postgres_url)
            [call] = delivered(calls)
        assert (call["run_id"], call["status"]) == (run_id, "success")
    finally:
        stop_worker(worker)
        stop_worker(api)

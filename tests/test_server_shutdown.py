"""``journeys serve`` stopped by its operator (SIGTERM) while a client waits on a run that cannot finish now
(no worker takes it, or the database went away under it): the server ends, in seconds. Real processes."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.forked import journeys, start_forkserver
from tests.server_support import free_port, start_serving, wait_until_serving
from tests.test_server_crash import run_statuses

SLOW = ("--plugin", "tests.slow_agents:register")
SPEC = {"journey_type": "wait1", "steps": [{"step_id": "s0", "mode": "auto", "agent": "slow"}]}


@pytest.mark.parametrize("mode", ["embedded", "distributed"])
def test_a_server_stops_on_sigterm_while_a_client_waits_on_a_run_that_cannot_finish(
    mode: str, postgres_url: str, tmp_path: Path
) -> None:
    """A server with a client on ``/runs/wait`` for a run that does not end (one no worker took, as after an
    outage with the workers gone; a step stuck in its agent) closed its port on SIGTERM and then waited for that
    request for ever: the process never ended (a kill -9 did). It now gives in-flight requests a bounded grace
    (``--shutdown-grace``), then ends."""
    port, log = free_port(), tmp_path / "serve.log"
    distributed = ["--distributed"] if mode == "distributed" else []
    command = ["serve", "--database-url", postgres_url, "--port", str(port), "--no-auth", *distributed, *SLOW]
    calls = {"JOURNEYS_CALLS": str(tmp_path / "calls"), "JOURNEYS_SLOW_S": "600"}  # a step stuck in its agent
    server = journeys(command, env={**calls, "JOURNEYS_SHUTDOWN_GRACE_S": "2"}, output=log)
    try:
        wait_until_serving(server, port, log)
        body = {"assistant_id": "structured", "input": {"journey_type": "wait1", "spec": SPEC, "user_id": "u"}}

        def wait_for_the_run() -> None:
            with contextlib.suppress(httpx.HTTPError):  # the server ending under it
                httpx.post(f"http://127.0.0.1:{port}/runs/wait", json=body, timeout=120)

        waiting = threading.Thread(target=wait_for_the_run, daemon=True)
        waiting.start()
        deadline = time.monotonic() + 60
        while not run_statuses(postgres_url):  # its run is there: the request is in flight (2 s was a guess)
            assert time.monotonic() < deadline, "the waiting request never created its run:\n" + log.read_text()
            time.sleep(0.05)
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pytest.fail("journeys serve did not end within 20 s of SIGTERM:\n" + log.read_text())
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_a_server_that_does_not_answer_in_time_is_not_left_running(sqlite_url: str, tmp_path: Path) -> None:
    """The suite's `journeys serve` that does not answer /ok within its time fails the test and is gone: the
    webhook tests' server, started on a loaded box, was left serving for the rest of the session after it."""
    start_forkserver()  # a child of the test process for good, not one the failed start left
    before = {child.pid for child in psutil.Process().children()}
    with pytest.raises(AssertionError, match="did not answer within 0 s"):
        start_serving(sqlite_url, free_port(), tmp_path / "serve.log", seconds=0)
    assert [child.cmdline() for child in psutil.Process().children() if child.pid not in before] == []

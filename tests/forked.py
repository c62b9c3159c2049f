"""Child processes forked from multiprocessing's forkserver: one per test process, started at its first use, which
imports what the children run once (``PRELOADED``). A fresh ``python -c`` child paid those imports each time:
2.5-5 CPU-s of a `journeys serve` or `worker` start, or of a crash test's child, on a box the whole suite shares.

Each child is still a process of its own, forked from those imports with nothing of a test run in it, signalled,
SIGKILLed and waited for as a process started afresh would be (its exit code, or the signal that ended it, is the
forkserver's report of its wait status).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.forkserver
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tests import journeys_child

ROOT = Path(__file__).resolve().parent.parent
WARM = multiprocessing.get_context("forkserver")
# tests.crash_child: test_crash_resume's journeys (JourneyRuntime, LangGraph); tests.journeys_child: the CLI's.
PRELOADED = ["tests.crash_child", "tests.journeys_child"]
WARM.set_forkserver_preload(PRELOADED)


class JourneysProcess:
    """`journeys ARGS` (``server.cli``) in a process forked from the forkserver, its stdout on the file
    ``output`` (truncated first; else discarded) and its stderr there too, or on the file ``errors``: the parts
    of :class:`subprocess.Popen` the tests use.

    An environment that sets a variable a preloaded module reads at import (``journeys_child.READ_AT_IMPORT``)
    starts the process afresh instead, with ``python -c``."""

    def __init__(
        self, args: list[str], *, cwd: Path, env: dict[str, str], output: Path | None, errors: Path | None = None
    ) -> None:
        self.args = args
        for path in (output, errors):
            if path is not None:
                path.write_bytes(b"")  # as a fresh child's "wb" descriptor: there, empty, once it started
        self._fresh: subprocess.Popen[bytes] | None = None
        self._forked: Any = None  # multiprocessing's Process (typed per context in typeshed, not per instance)
        if any(name in env for name in journeys_child.READ_AT_IMPORT):
            self._fresh = fresh_journeys(args, cwd=cwd, env=env, output=output, errors=errors)
            self.pid = self._fresh.pid
        else:
            self._forked = WARM.Process(
                target=journeys_child.main,
                args=(args, str(cwd), env, output and str(output), errors and str(errors)),
                daemon=True,
            )
            self._forked.start()
            self.pid = self._forked.pid

    @property
    def returncode(self) -> int | None:
        return self.poll()

    def poll(self) -> int | None:
        """The exit code (minus the signal's number if a signal ended it); None while it runs."""
        if self._fresh is not None:
            return self._fresh.poll()
        code: int | None = self._forked.exitcode
        return code

    def wait(self, timeout: float | None = None) -> int:
        if self._fresh is not None:
            return self._fresh.wait(timeout)
        self._forked.join(timeout)
        if (code := self.poll()) is None:
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        return code

    def send_signal(self, sig: int) -> None:
        """Signal the process, unless it has been waited for already (its pid may be another's by then)."""
        if self._fresh is not None:
            self._fresh.send_signal(sig)
        elif self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def start_forkserver() -> None:
    """Start the forkserver now if this process has not yet (it starts at its first child otherwise): it, and the
    resource tracker multiprocessing starts with it, lives as long as the test process."""
    multiprocessing.forkserver.ensure_running()


def fresh_journeys(
    args: list[str], *, cwd: Path, env: dict[str, str], output: Path | None, errors: Path | None
) -> subprocess.Popen[bytes]:
    """`journeys ARGS` started afresh: ``python -c "from server.cli import app; app()" ARGS``."""
    command = [sys.executable, "-c", "from server.cli import app; app()", *args]
    with contextlib.ExitStack() as files:  # the child keeps its own descriptors
        stdout = files.enter_context(output.open("wb")) if output else subprocess.DEVNULL
        stderr = files.enter_context(errors.open("wb")) if errors else subprocess.STDOUT if output else stdout
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=stdout, stderr=stderr)


def journeys(
    args: list[str],
    *,
    cwd: Path = ROOT,
    env: dict[str, str] | None = None,
    output: Path | None = None,
    errors: Path | None = None,
) -> JourneysProcess:
    """`journeys ARGS` (``serve``, ``worker``, ...) run from ``cwd`` in this process's environment plus ``env``,
    the repository on its PYTHONPATH, its stdout on the file ``output`` (else discarded), its stderr there too or
    on the file ``errors``."""
    environment = {**os.environ, **(env or {}), "PYTHONPATH": str(ROOT)}
    return JourneysProcess(args, cwd=cwd, env=environment, output=output, errors=errors)


def run_journeys(
    args: list[str], *, cwd: Path = ROOT, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`journeys ARGS` run to its end, as ``subprocess.run(..., capture_output=True, text=True)``: its exit
    status and what it wrote on stdout and on stderr (a process killed after ``timeout`` raises TimeoutExpired)."""
    with tempfile.TemporaryDirectory(prefix="journeys-run-") as scratch:
        output, errors = Path(scratch, "stdout"), Path(scratch, "stderr")
        process = journeys(args, cwd=cwd, env=env, output=output, errors=errors)
        try:
            code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
        return subprocess.CompletedProcess(["journeys", *args], code, output.read_text(), errors.read_text())

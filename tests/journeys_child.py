"""The `journeys` command line (``server.cli``) run in a process forked from the test process's forkserver
(``tests/forked.py``), as ``python -c "from server.cli import app; app()" ARGS`` would run it.

The forkserver imports this module once: with it what `journeys serve` and `journeys worker` import when they
start (their commands import them lazily, so that the other commands start quickly), ~2.5-4 CPU-s a fresh
process paid each time. The commands still import them where they always do; here they are found imported.
"""

from __future__ import annotations

import os
import sys

import uvicorn  # noqa: F401 (imported for the forkserver: see above)
import uvloop  # noqa: F401
from prometheus_client import start_http_server  # noqa: F401

import server.app
import server.connections
import server.queues.embedded
import server.queues.worker  # noqa: F401
from server.cli import app

# Variables that a preloaded module reads once, as it is imported: a process given one of them in its environment
# must be started afresh (tests/forked.py), or it would run with the forkserver's reading of it.
# prometheus_client picks its value class (one process's, or files shared between processes) then.
READ_AT_IMPORT = ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir")
_IMPORTED_WITH = {name: os.environ.get(name) for name in READ_AT_IMPORT}


def main(argv: list[str], cwd: str, environment: dict[str, str], output: str | None, errors: str | None) -> None:
    """Run `journeys ARGV` from ``cwd`` with ``environment`` (this process's whole environment, replaced), its
    stdout on the file ``output`` (else discarded) and its stderr there too, or on the file ``errors``, as a fresh
    ``python -c`` process would."""
    if any(environment.get(name) != value for name, value in _IMPORTED_WITH.items()):
        raise SystemExit(f"the forkserver imported its modules with another {', '.join(READ_AT_IMPORT)}")
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(environment)
    sys.path.insert(0, "")  # `python -c` finds modules in its working directory (a test's --plugin module)
    # stderr on ``output`` shares stdout's open file, as subprocess's stderr=STDOUT: opened twice, each had its
    # own offset, and a line on one overwrote the other's (a JSON log line cut by a library's stderr line).
    out = os.open(output or os.devnull, os.O_WRONLY | os.O_CREAT)
    err = os.open(errors, os.O_WRONLY | os.O_CREAT) if errors else out
    for descriptor, sink in ((1, out), (2, err)):
        os.dup2(sink, descriptor)
    for sink in {out, err}:
        os.close(sink)
    sys.argv = ["-c", *argv]
    app()

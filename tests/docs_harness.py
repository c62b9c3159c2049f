"""Runs one docs example and reports what went wrong out of its sight: ``python -m tests.docs_harness BLOCK REPORT``.

An example's agents run inside the runtime (a scheduler's timer, a service task, an escalation), so one of
them failing does not fail the example: the runtime logs it and carries on, and the example exits 0. This
runs the block as ``__main__`` and writes to REPORT, as JSON, every warning or error the runtime logged
(structlog's and the standard library's), every unraisable exception (a task or coroutine dropped with its
error) and every Python warning, so that tests/test_docs.py can fail the block for any it did not declare.
"""

from __future__ import annotations

import json
import logging
import runpy
import sys
import warnings
from collections.abc import MutableMapping
from typing import Any

import structlog

NOTICED = ("warning", "warn", "error", "exception", "critical", "fatal")


def noticing() -> list[dict[str, str]]:
    """From now on, note in the list returned every warning or error logged (structlog's and the standard
    library's), every unraisable exception and every Python warning of this process. tests/test_notebooks.py
    calls it in a notebook's kernel, as :func:`main` does around a docs block."""
    seen: list[dict[str, str]] = []

    def noticed(_logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        if method in NOTICED:
            fields = {k: str(v)[:500] for k, v in event.items() if k != "event"}
            seen.append({"source": "structlog", "event": str(event.get("event")), "level": method, **fields})
        return event

    class Noticed(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append({"source": record.name, "event": record.getMessage()[:500], "level": record.levelname})

    def unraisable(hook: Any) -> None:
        seen.append({"source": "unraisable", "event": f"{hook.exc_type.__name__}: {hook.exc_value}"[:500]})

    def warned(message: Any, category: type[Warning], filename: str, lineno: int, *_rest: Any) -> None:
        seen.append(
            {"source": "warnings", "event": f"{category.__name__}: {message}"[:500], "at": f"{filename}:{lineno}"}
        )

    structlog.configure(processors=[noticed, *structlog.get_config()["processors"]])
    logging.getLogger().addHandler(Noticed(logging.WARNING))
    sys.unraisablehook = unraisable
    warnings.simplefilter("default")
    warnings.showwarning = warned
    return seen


def main(block: str, report: str) -> None:
    seen = noticing()
    try:
        runpy.run_path(block, run_name="__main__")
    finally:
        with open(report, "w") as out:
            json.dump(seen, out, indent=1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

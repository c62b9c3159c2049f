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
import textwrap
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


# What docs/seed-examples.md's escalation was (its on_timeout agent read a key it is not given), beside a step
# whose agent fails once before it works: the code ends without an error all the same. tests/test_docs.py runs
# it as a docs block, tests/test_notebooks.py as a notebook's cell: each must notice the failures.
_BROKEN_HEAD = """
import asyncio
from datetime import timedelta

from agents import AgentRequest, TransientAgentError
from checkpoints import VirtualClock
from graphs import JourneyRuntime

calls = []


def flaky(request: AgentRequest) -> dict:
    calls.append(1)
    if len(calls) == 1:
        raise TransientAgentError("not yet")
    return {"done": True}


def escalate_to_cto(request: AgentRequest) -> dict:
    print("escalated:", request.payload["task_id"])
    return {}
"""
_BROKEN_BODY = """
clock = VirtualClock()
async with JourneyRuntime.open("memory://", clock=clock) as runtime:
    runtime.agents.register("flaky", flaky)
    runtime.agents.register("escalate_to_cto", escalate_to_cto)
    spec = {"journey_type": "j", "steps": [{"step_id": "a", "agent": "flaky", "mode": "auto",
            "retry": {"initial_delay": 0.001}}]}
    journey = await runtime.structured.design_journey("j", spec=spec)
    await runtime.structured.execute_journey(journey["journey_id"], "u")
    await runtime.processes.deploy({
        "name": "review",
        "elements": [
            {"type": "start", "id": "start"},
            {"type": "user_task", "id": "approval", "assignee": "lead", "sla": "PT4H",
             "on_timeout": {"action": "notify", "notify": "escalate_to_cto"}},
            {"type": "end", "id": "end"},
        ],
        "flows": ["start -> approval", "approval -> end"],
    })
    await runtime.processes.start("review", "r-1")
    clock.advance(timedelta(hours=4))
    await runtime.processes.scheduler.run_due()
"""
# What it logs, each an event and the intent it names (as a docs block's "docs-test expects").
BROKEN_NOTICES = [
    "agent attempt failed: flaky",
    "agent attempt failed: escalate_to_cto",
    "agent call failed: escalate_to_cto",
    "timer failed to fire",
]


def broken_in_the_background(*, cell: bool) -> str:
    """The code above as a notebook's cell (``cell``: its await at the top level) or as a script."""
    if cell:
        return _BROKEN_HEAD + _BROKEN_BODY
    main = "\nasync def main() -> None:" + textwrap.indent(_BROKEN_BODY, "    ")
    return _BROKEN_HEAD + main + "\n\nasyncio.run(main())\n"


def check_noticed(noticed: list[dict[str, str]], expects: list[str], what: str) -> None:
    """Fail unless ``noticed`` (see :func:`noticing`) holds each of ``expects`` (an event, with the intent it
    names where it names one: ``agent call failed: quote``) and nothing else; ``what`` says whose they are."""
    seen = [f"{line['event']}: {line['intent']}" if "intent" in line else line["event"] for line in noticed]
    unexpected = [line for line, named in zip(noticed, seen, strict=True) if named not in expects]
    assert not unexpected, f"{what} logged what it does not expect:\n" + "\n".join(map(str, unexpected))
    missing = set(expects) - set(seen)
    assert not missing, f"{what} expects log lines that did not appear: {sorted(missing)}"


def main(block: str, report: str) -> None:
    seen = noticing()
    try:
        runpy.run_path(block, run_name="__main__")
    finally:
        with open(report, "w") as out:
            json.dump(seen, out, indent=1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

"""``transaction.execute_with_compensation([(do, undo), …])`` as a plain runtime call.

The seed's compensation example is a call, not a process element. It runs here as the smallest
process there is (start → transaction → end), so it is as durable as any process: every do and undo
is one keyed call on the shared agent path, an instance killed halfway is recovered like any other,
and running it again never repeats a step that already happened.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from checkpoints.events import Event
from graphs.errors import InvalidInputError
from graphs.process.builder import UNDO_FAILED
from graphs.process.spec import EndEvent, ProcessSpec, StartEvent, Transaction

_ELEMENT = "transaction"


class Processes(Protocol):
    """What a transaction needs of ``runtime.processes``."""

    async def deploy(self, process: ProcessSpec, *, weight: float | None = None) -> dict[str, Any]: ...

    async def start(
        self, name: str, business_key: str, variables: Mapping[str, Any] | None = None
    ) -> dict[str, Any]: ...

    async def history(self, instance_id: str) -> list[Event]: ...


class Transactions:
    """``runtime.transaction``: compensating transactions over agents, named by intent or by object."""

    def __init__(self, processes: Processes) -> None:
        self._processes = processes

    async def execute_with_compensation(
        self,
        steps: Sequence[tuple[Any, Any]],
        *,
        name: str | None = None,
        variables: Mapping[str, Any] | None = None,
        business_key: str | None = None,
    ) -> dict[str, Any]:
        """Run ``steps`` (pairs of agent and undo agent: intents, callables or classes; an undo may be
        None) in order; when one fails for good, undo the done ones, last first.

        Returns ``status`` (``completed``, ``compensated`` or ``failed`` when an undo itself failed for
        good), each done step's ``outputs``, the intents ``undone``, the ``failure`` and any
        ``undo_failure``, with the ``instance_id`` of the process instance that ran it. Failed, that
        instance stands failed at the undo (an incident): ``runtime.processes.retry(instance_id)`` resumes
        the rollback there."""
        if not isinstance(steps, Sequence) or isinstance(steps, str) or not steps:
            raise InvalidInputError("steps must be a non-empty list of (do, undo) pairs")
        element = Transaction(id=_ELEMENT, steps=list(steps), output="status")
        process = ProcessSpec(
            name=f"transaction.{name or _name_of(element)}",
            description="execute_with_compensation, called from the runtime",
            elements=(StartEvent(id="start"), element, EndEvent(id="end")),
            flows=("start -> transaction", "transaction -> end"),
        )
        await self._processes.deploy(process)
        view = await self._processes.start(
            process.name, business_key or f"tx-{uuid.uuid4().hex[:12]}", variables=variables or {}
        )
        history = await self._processes.history(view["instance_id"])
        # Finished, or stopped at an undo that failed for good (the instance stands failed there).
        ended = next(e for e in reversed(history) if e.type in ("transaction.finished", UNDO_FAILED))
        return {
            "instance_id": view["instance_id"],
            "status": ended.payload["status"] if ended.type == "transaction.finished" else "failed",
            "outputs": [e.payload.get("output") for e in history if e.type == "transaction.step_completed"],
            "undone": ended.payload["undone"],
            "failure": ended.payload["failure"],
            "undo_failure": ended.payload["undo_failure"],
        }


def _name_of(element: Transaction) -> str:
    # Same steps, same process: deploying it again is a no-op.
    steps = ",".join(f"{s.do}/{s.undo}" for s in element.steps)
    return hashlib.sha256(steps.encode()).hexdigest()[:16]

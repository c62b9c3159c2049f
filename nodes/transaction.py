"""``execute_with_compensation([(do, undo), …])``: run steps in order; when one fails for good, undo the
ones that were done, last first.

The same ideas as the saga's compensation subgraph (``nodes.compensation``), without a retry loop of
its own: every do and undo is one call on the shared agent path (registry → policy → retry → event),
keyed ``<name>:do:<i>`` / ``<name>:undo:<i>`` and looked up in the event log first, so running the
whole transaction again after a crash repeats nothing that already happened. A step that failed for good is
logged (``transaction.step_failed``, keyed ``<name>:do:<i>:failed``) before its undos run: running the
transaction again (the retry of an undo that failed for good) goes straight back to undoing, without calling
the failed step again, and resumes at the undo that failed (those done replay from the log).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from langchain_core.runnables import RunnableConfig

from agents.errors import AgentError
from agents.resilience import RetrySettings
from checkpoints.events import NewEvent
from nodes.agent_call import Recording
from nodes.service_task import perform_task
from nodes.services import NodeServices, thread_id

# Undo must get through: more patient than a forward step.
UNDO_RETRY = RetrySettings(max_attempts=5, initial_delay=0.05, max_delay=2.0)

Step = tuple[str, str | None]  # (intent that does it, intent that undoes it or None)
STEP_FAILED = "transaction.step_failed"


@dataclass(frozen=True, slots=True)
class TransactionOutcome:
    """How a transaction ended: completed, compensated or failed, with what it undid."""

    status: Literal["completed", "compensated", "failed"]
    outputs: list[dict[str, Any]]
    undone: list[str] = field(default_factory=list)
    failure: dict[str, Any] | None = None  # the step that failed
    undo_failure: dict[str, Any] | None = None  # an undo that failed for good: nothing more was undone


async def execute_with_compensation(
    services: NodeServices,
    config: RunnableConfig,
    steps: Sequence[Step],
    *,
    name: str,
    element: str,
    payload: Mapping[str, Any],
    granted_permissions: frozenset[str] | None = None,
    granted_intents: frozenset[str] | None = None,
    undo_retry: RetrySettings = UNDO_RETRY,
) -> TransactionOutcome:
    """Run ``steps`` under the key prefix ``name`` (unique per run of the transaction)."""
    outputs: list[dict[str, Any]] = []
    instance_id = thread_id(config)
    for index, (do, undo) in enumerate(steps):
        failed_key = f"{name}:do:{index}:failed"
        if (failed := await services.events.find_by_key(instance_id, failed_key)) is not None:
            # Failed for good in an earlier run of the transaction, whose undo did not finish: not called again.
            failure = dict(failed.payload)
            return await _undo(services, config, steps, outputs, failure, name, element, payload, undo_retry)
        try:
            outcome = await perform_task(
                services,
                config,
                intent=do,
                payload={**payload, "index": index, "previous_outputs": list(outputs)},
                step=element,
                key=f"{name}:do:{index}",
                event_type="transaction.step_completed",
                recorder=_recording({"transaction": name, "index": index, "undo": undo}),
                granted_permissions=granted_permissions,
                granted_intents=granted_intents,
                always_replay=True,
            )
        except AgentError as exc:
            failure = {"index": index, "intent": do, "error": str(exc), "error_type": exc.code}
            await services.events.append(instance_id, [NewEvent(STEP_FAILED, failure, element, failed_key)])
            return await _undo(services, config, steps, outputs, failure, name, element, payload, undo_retry)
        outputs.append(outcome.output)
    return TransactionOutcome("completed", outputs)


async def _undo(
    services: NodeServices,
    config: RunnableConfig,
    steps: Sequence[Step],
    outputs: list[dict[str, Any]],
    failure: dict[str, Any],
    name: str,
    element: str,
    payload: Mapping[str, Any],
    retry: RetrySettings,
) -> TransactionOutcome:
    undone: list[str] = []
    for index in reversed(range(len(outputs))):
        do, undo = steps[index]
        if undo is None:
            continue
        try:
            await perform_task(
                services,
                config,
                intent=undo,
                payload={**payload, "index": index, "original_output": outputs[index], "failure": failure},
                step=element,
                key=f"{name}:undo:{index}",
                event_type="transaction.step_undone",
                recorder=_recording({"transaction": name, "index": index, "undoes": do}),
                retry=retry,
                always_replay=True,
            )
        except AgentError as exc:
            undo_failure = {"index": index, "intent": undo, "error": str(exc), "error_type": exc.code}
            return TransactionOutcome("failed", outputs, undone, failure, undo_failure)
        undone.append(do)
    return TransactionOutcome("compensated", outputs, undone, failure)


def _recording(payload: dict[str, Any]) -> Callable[[dict[str, Any]], Recording]:
    def record(_output: dict[str, Any]) -> Recording:
        return Recording(payload)

    return record

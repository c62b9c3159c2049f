"""Compensation as a reverse-traversal subgraph: undo every completed step, last first.

Each undo is one superstep (so a crash resumes at the next one), runs its handler through the shared
agent path with an idempotency key (so it runs once per key even across crashes), and is retried
when it fails transiently. A handler that fails for good stops the traversal with status ``failed``
naming it: nothing is skipped silently. Retrying such a saga (``compensation.retried``) enters the
traversal again; it resumes at the handler that failed, since the steps undone are in the state.
A fork of a saga undoes only the steps it completed itself after its fork point: the steps it copied
from its source are the source's real-world effects, which the source compensates if it ever does.

As Temporal registers a compensation before its activity runs, a step whose agent was called and then
failed or timed out (no completion logged; it may have acted, in part or not at all) is undone too, first,
its handler told ``completed: False``: handlers must be idempotent and accept an effect that never happened.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command
from typing_extensions import TypedDict  # pydantic (Studio's input forms) needs it before 3.12

from agents.errors import AgentError, AgentNotFoundError, CircuitOpenError, PolicyViolationError
from agents.resilience import RetrySettings
from checkpoints.events import NewEvent
from checkpoints.forks import FORKED_FROM
from nodes.agent_call import Recording
from nodes.service_task import perform_task
from nodes.services import NodeServices, thread_id
from nodes.services import failure as failure_event

# Undo must get through: more patient than a forward step (sagas, transactions, units of work).
COMPENSATION_RETRY = RetrySettings(max_attempts=5, initial_delay=0.05, max_delay=2.0)


class CompensationState(TypedDict, total=False):
    """The compensation subgraph's state: the steps undone so far and any undo that failed."""

    context: dict[str, Any]
    status: str
    compensated_steps: list[str]
    failure: dict[str, Any] | None
    failed_call: dict[str, str] | None  # the step and key of a call that may have acted and not completed
    compensation_failure: dict[str, Any] | None


COMPLETED_STEP = "step.completed"
COMPENSATION_RETRIED = "compensation.retried"
SAGA_COMPENSATED = "saga.compensated"  # the saga is undone: its payload lists the steps compensated


def step_key(instance_id: str, step: str, superstep: int | str) -> str:
    """The idempotency key of a step's work in the superstep it ran (shared with the step runner): ``S``, or
    ``S.N`` for the Nth step a node ran after its own in superstep S (``nodes.services.CHAIN_FLAG``)."""
    return f"{instance_id}:{step}:{superstep}"


def called(exc: AgentError) -> bool:
    """Whether a step's failed call may have reached its agent, which may then have acted before it failed or
    timed out: every failure but a refusal before any attempt (no agent, a policy, a circuit open at once)."""
    if isinstance(exc, AgentNotFoundError | PolicyViolationError):
        return False
    return not (isinstance(exc, CircuitOpenError) and int(exc.details.get("attempts") or 1) <= 1)


@dataclass(frozen=True, slots=True)
class _Undo:
    """A step to undo: its name, its idempotency key, what it was given and answered, and whether its
    completion is logged (False: its agent was called and failed or timed out, so it may have acted)."""

    step: str
    key: str
    output: Any
    step_result: Any
    completed: bool


def _to_undo(completed: list[Any], state: CompensationState, handlers: Mapping[str, str]) -> list[_Undo]:
    """The steps a saga's compensation undoes, in the order they were done: its completed steps, then the
    step whose call failed after it may have reached its agent (``failed_call``), when it has a handler
    (without one, nothing of it was done that could be undone)."""
    undo = [
        _Undo(e.step or "", str(e.key), e.payload.get("output"), e.payload.get("step_result", {}), True)
        for e in completed
    ]
    call = state.get("failed_call")
    if call is not None and call["step"] in handlers:
        undo.append(_Undo(call["step"], call["call"], None, {}, False))
    return undo


def build_compensation_graph(
    handlers: Mapping[str, str], services: NodeServices, *, retry: RetrySettings
) -> StateGraph[CompensationState]:
    async def undo(state: CompensationState, config: RunnableConfig) -> Command[str]:
        instance_id = thread_id(config)
        # What was done is the log's completed steps, in order; undo the last one not undone yet. A fork's log
        # starts with copies of its source's steps: their effects are the source's to undo, not the fork's.
        logged = await services.events.list(instance_id, types=[COMPLETED_STEP, FORKED_FROM])
        forked_at = max((n for n, e in enumerate(logged) if e.type == FORKED_FROM), default=-1)
        completed = [e for e in logged[forked_at + 1 :] if e.type == COMPLETED_STEP]
        steps = _to_undo(completed, state, handlers)
        done = list(state.get("compensated_steps") or [])
        if len(done) >= len(steps):
            return Command(goto="finish")
        original = steps[len(steps) - 1 - len(done)]
        step = original.step
        handler = handlers.get(step)
        key = f"{original.key}:compensate"
        if handler is None:
            await services.events.append(
                instance_id,
                [NewEvent("compensation.not_needed", {"reason": "no handler declared"}, step, key)],
            )
            return Command(goto="undo", update={"compensated_steps": [*done, step]})
        try:
            await perform_task(
                services,
                config,
                intent=handler,
                payload={
                    "step_id": step,
                    "original_output": original.output,
                    "step_result": original.step_result,
                    "context": state.get("context") or {},
                    "failure": state.get("failure"),
                    "completed": original.completed,
                },
                step=step,
                key=key,
                event_type="compensation.completed",
                recorder=lambda _output: Recording({"handler": handler}),
                retry=retry,
                always_replay=True,
            )
        except AgentError as exc:
            failure = {"step": step, "handler": handler, "error": str(exc), "error_type": exc.code}
            # One failure event per attempt at the compensation: the first, then one per retry.
            retries = len(await services.events.list(instance_id, types=[COMPENSATION_RETRIED]))
            failed_key = f"{instance_id}:saga-failed" + (f":{retries}" if retries else "")
            await services.events.append(
                instance_id, [failure_event("saga", "compensation", failure, step, failed_key)], status="failed"
            )
            return Command(goto=END, update={"status": "failed", "compensation_failure": failure})
        return Command(goto="undo", update={"compensated_steps": [*done, step]})

    async def finish(state: CompensationState, config: RunnableConfig) -> CompensationState:
        instance_id = thread_id(config)
        summary = {"compensated_steps": state.get("compensated_steps") or []}
        await services.events.append(
            instance_id,
            [NewEvent(SAGA_COMPENSATED, summary, None, f"{instance_id}:saga-compensated")],
            status="compensated",
        )
        return {"status": "compensated"}

    builder: StateGraph[CompensationState] = StateGraph(CompensationState)
    builder.add_node("undo", undo, destinations=("undo", "finish", END))
    builder.add_node("finish", finish)
    builder.add_edge(START, "undo")
    builder.add_edge("finish", END)
    return builder

"""The one path every agent call takes, whatever the pattern:

registry lookup by intent → policy checks → retry with backoff and jitter inside a bulkhead →
the call → output validation → one event appended to the log.

No pattern has its own retry loop, persistence or logging: they all call :meth:`AgentCaller.call`.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import jsonschema
import structlog
from langgraph.config import get_stream_writer

from agents.errors import (
    AgentCallFailedError,
    AgentNotFoundError,
    AgentOutputError,
    PolicyViolationError,
)
from agents.policy import AgentCall, Policy
from agents.protocol import AgentRequest
from agents.registry import AgentRegistry
from agents.resilience import Bulkheads, RetrySettings, call_with_retry
from checkpoints.events import Event, EventLog, NewEvent
from nodes import schemas

log = structlog.get_logger("journeys.agents")


@dataclass(frozen=True, slots=True)
class Recording:
    """What to write with a successful call's event: extra payload, and the instance's new status."""

    payload: Mapping[str, Any]
    status: str | None = None


# Computes the recording from the agent's output, so the one event can say what the output decided.
Recorder = Callable[[dict[str, Any]], Recording]


@dataclass(frozen=True, slots=True)
class CallOutcome:
    """The result of an agent call, how many attempts it took, and whether it was replayed."""

    output: dict[str, Any]
    attempts: int
    replayed: bool  # True: the result came from the event log, the agent was not called again


async def logged(events: EventLog, key: str, *, replay: bool) -> Event | None:
    """The replay lookup every keyed unit of work makes: in a run that replays (crash recovery, a retried
    run, compensation), the event that already recorded the work under ``key``, so the work is not done
    again; None when the work is to be done (not replaying, or not logged yet)."""
    return await events.find_by_key(key) if replay else None


class AgentCaller:
    """Calls agents the one way every node does: policies, retries, bulkheads and logged results."""

    def __init__(
        self,
        registry: AgentRegistry,
        events: EventLog,
        *,
        policies: Sequence[Policy],
        retry: RetrySettings,
        bulkheads: Bulkheads,
    ) -> None:
        self.registry = registry
        self.events = events
        self.policies = tuple(policies)
        self.retry = retry
        self.bulkheads = bulkheads

    async def call(
        self,
        *,
        intent: str,
        payload: Mapping[str, Any],
        instance_id: str,
        step: str | None,
        key: str,
        event_type: str = "agent.completed",
        recorder: Recorder | None = None,
        granted_permissions: frozenset[str] | None = None,
        output_schema: Mapping[str, Any] | None = None,
        retry: RetrySettings | None = None,
        replay: bool = False,
    ) -> CallOutcome:
        """Call the agent for ``intent`` once per ``key``.

        With ``replay`` (crash recovery, compensation), a call whose completion event is already in
        the log is not repeated: its recorded output is returned. ``recorder`` adds to the completion
        event and may set the instance's status in the same transaction.
        """
        if (done := await logged(self.events, key, replay=replay)) is not None:
            return CallOutcome(dict(done.payload.get("output", {})), int(done.payload.get("attempts", 0)), True)

        entry = self.registry.resolve(intent)
        progress({"event": "step.started", "instance_id": instance_id, "step": step, "intent": intent})
        check = AgentCall(entry, instance_id, step, payload, granted_permissions)
        for policy in self.policies:
            policy(check)

        tried = 0

        async def attempt(number: int) -> dict[str, Any]:
            nonlocal tried
            tried = number
            request = AgentRequest(intent, payload, instance_id, step, key, number)
            progress(
                {
                    "event": "agent.called",
                    "instance_id": instance_id,
                    "step": step,
                    "agent": entry.name,
                    "attempt": number,
                }
            )
            async with AsyncExitStack() as stack:
                slot = self.bulkheads.slot(intent)
                if slot is not None:
                    await stack.enter_async_context(slot)
                result = entry.agent(request)
                if inspect.isawaitable(result):
                    result = await result
            return _checked_output(intent, result, output_schema)

        started = time.perf_counter()
        try:
            output, attempts = await call_with_retry(attempt, retry or self.retry)
        except (AgentNotFoundError, PolicyViolationError):
            raise
        except Exception as exc:
            failure = {
                "intent": intent,
                "error": str(exc),
                "error_type": type(exc).__name__,
                "attempts": tried,
            }
            await self.events.append(instance_id, [NewEvent("agent.failed", failure, step)])
            progress({"event": "step.failed", "instance_id": instance_id, "step": step, "error": str(exc)})
            log.warning("agent call failed", intent=intent, instance_id=instance_id, step=step, error=str(exc))
            raise AgentCallFailedError(
                f"agent for intent {intent!r} failed at step {step!r}: {exc}",
                intent=intent,
                step=step,
                error_type=type(exc).__name__,
                attempts=tried,
            ) from exc

        recording = recorder(output) if recorder else Recording({})
        record = {
            "intent": intent,
            "agent": entry.name,
            "output": output,
            "attempts": attempts,
            "duration_ms": round((time.perf_counter() - started) * 1000, 3),
            **recording.payload,
        }
        await self.events.append(instance_id, [NewEvent(event_type, record, step, key)], status=recording.status)
        progress({"event": "step.done", "instance_id": instance_id, "step": step, "attempts": attempts})
        return CallOutcome(output, attempts, False)


def progress(event: Mapping[str, Any]) -> None:
    """Tell a run streamed with the ``custom`` mode how far it got (nothing when it is not streamed, or
    when the call runs outside a graph, e.g. an orchestrator's compensation)."""
    try:
        writer = get_stream_writer()
    except RuntimeError:
        return
    writer(dict(event))


def _checked_output(intent: str, result: object, schema: Mapping[str, Any] | None) -> dict[str, Any]:
    if not isinstance(result, Mapping):
        raise AgentOutputError(
            f"agent for intent {intent!r} returned {type(result).__name__}; agents must return a mapping",
            intent=intent,
        )
    output = dict(result)
    if schema is not None:
        try:
            schemas.validate(output, schema)
        except jsonschema.ValidationError as exc:
            raise AgentOutputError(
                f"agent for intent {intent!r} returned output that breaks its schema: {exc.message}",
                intent=intent,
            ) from exc
    return output

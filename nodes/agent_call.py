"""The one path every agent call takes, whatever the pattern:

registry lookup by intent → policy checks → retry with backoff and jitter, each attempt through the
intent's circuit breaker and rate limit (shared through the store) and its pool's bulkhead, under a
time limit → the call → output validation → one event appended to the log; when the agent fails for
good or its circuit is open, the spec's fallback intents in order, each switch logged.

No pattern has its own retry loop, persistence or logging: they all call :meth:`AgentCaller.call`.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jsonschema
import structlog
from langgraph.config import get_config, get_stream_writer
from langgraph.types import interrupt

from agents.errors import (
    AgentCallFailedError,
    AgentNotFoundError,
    AgentOutputError,
    AgentOutputTooLargeError,
    AgentReportedFailureError,
    AgentTimeoutError,
    BulkheadFullError,
    CircuitOpenError,
    PolicyViolationError,
    RateLimitedError,
)
from agents.policy import AgentCall, Policy, SessionAction, TaskCompletion, enforce
from agents.protocol import AgentRequest
from agents.registry import AgentRegistry, RegisteredAgent
from agents.resilience import Bulkheads, CallOptions, RetrySettings, call_with_retry, is_retryable
from checkpoints.errors import InvalidInputError
from checkpoints.events import Event, EventLog, NewEvent
from checkpoints.guards import CircuitBreakers, CircuitSettings, RateLimits
from checkpoints.values import check_value
from nodes import schemas
from nodes.telemetry import attempt_started, observed_agent_call, rejected_by_bulkhead, rejected_by_rate_limit

log = structlog.get_logger("journeys.agents")
MAX_OUTPUT_BYTES = 1_048_576  # an agent's output as JSON; JourneyRuntime.open(max_output_bytes=...)
_SIZED = json.JSONEncoder(default=str)  # what json.dumps(output, default=str) builds per call, built once

AGENT_COMPLETED = "agent.completed"  # a call's completion event, unless its caller names its own
ATTEMPT_FAILED = "agent.attempt_failed"  # one per failed attempt: a restart continues the count from them
CALL_FAILED = "agent.failed"  # the call failed for good (its attempts, or the intent's circuit)
FALLBACK = "agent.fallback"  # the call goes on with the next intent of its fallback chain
ROUTED_TO_HUMAN = "agent.routed_to_human"  # an open circuit handed the call to a person (on_circuit_open: human)
CIRCUIT_OPEN_TASK = "circuit_open"  # the ``kind`` of the human task such a call waits on
# The status of an output (an agent's, or a person's answering in its place) or a user step's result saying the work
# failed (``{"status": "failed", "error": "why"}``): a failure, never a completion.
REPORTED_FAILED = "failed"
MAX_REPORTED_ERROR = 1_000  # characters of the reported error kept in the failure's message


@dataclass(frozen=True, slots=True)
class Recording:
    """What to write with a successful call's event: extra payload, the instance's new status, and whether
    the event may be written behind the run (``EventLog.write_behind``): only when the run's next node is another
    call, which settles it before its work."""

    payload: Mapping[str, Any]
    status: str | None = None
    behind: bool = False


# Computes the recording from the agent's output, so the one event can say what the output decided.
Recorder = Callable[[dict[str, Any]], Recording]


@dataclass(frozen=True, slots=True)
class CallOutcome:
    """The result of an agent call, how many attempts it took, and whether it was replayed."""

    output: dict[str, Any]
    attempts: int
    replayed: bool  # True: the result came from the event log, the agent was not called again


async def logged(events: EventLog, instance_id: str, key: str, *, replay: bool) -> Event | None:
    """The replay lookup every keyed unit of work makes: in a run that replays (crash recovery, a retried
    run, compensation), the event that already recorded the work under ``key``, so the work is not done
    again; None when the work is to be done (not replaying, or not logged yet)."""
    return await events.find_by_key(instance_id, key) if replay else None


class AgentCaller:
    """Calls agents the one way every node does: policies, time limits, retries, circuit breakers,
    rate limits, bulkheads, fallbacks and logged results.

    ``timeout`` (seconds per attempt) and ``circuit`` are the defaults for agents registered without
    their own; ``breakers`` and ``rate_limits`` are the store's shared guards (None: not guarded).
    """

    def __init__(
        self,
        registry: AgentRegistry,
        events: EventLog,
        *,
        policies: Sequence[Policy],
        retry: RetrySettings,
        bulkheads: Bulkheads,
        breakers: CircuitBreakers | None = None,
        rate_limits: RateLimits | None = None,
        timeout: float | None = None,
        circuit: CircuitSettings | None = None,
        max_output_bytes: int = MAX_OUTPUT_BYTES,
    ) -> None:
        self.max_output_bytes = max_output_bytes
        self.registry = registry
        self.events = events
        self.policies = tuple(policies)
        self.retry = retry
        self.bulkheads = bulkheads
        self.breakers = breakers
        self.rate_limits = rate_limits
        self.timeout = timeout
        self.circuit = circuit

    @observed_agent_call
    async def call(
        self,
        *,
        intent: str,
        payload: Mapping[str, Any],
        instance_id: str,
        step: str | None,
        key: str,
        event_type: str = AGENT_COMPLETED,
        recorder: Recorder | None = None,
        granted_permissions: frozenset[str] | None = None,
        granted_intents: frozenset[str] | None = None,
        output_schema: Mapping[str, Any] | None = None,
        retry: RetrySettings | None = None,
        replay: bool = False,
        options: CallOptions | None = None,
    ) -> CallOutcome:
        """Call the agent for ``intent`` once per ``key``.

        With ``replay`` (crash recovery, compensation), a call whose completion event is already in
        the log is not repeated: its recorded output is returned, and a call cut short goes on with
        the attempts it had left. ``recorder`` adds to the completion event and may set the
        instance's status in the same transaction. ``options`` are the spec's for this call (time
        limit, retry policy, fallbacks); ``retry`` is the caller's own (compensations, units of work).
        """
        await self.events.settle(instance_id)  # the step before this call is durable before it does anything
        if (done := await logged(self.events, instance_id, key, replay=replay)) is not None:
            return CallOutcome(dict(done.payload.get("output", {})), int(done.payload.get("attempts", 0)), True)
        # Routed to a person when its circuit is open: only inside a graph run, where the call can wait.
        human = options is not None and options.on_circuit_open == "human" and _in_graph()
        if human and (routed := await self.events.find_by_key(instance_id, f"{key}:human")) is not None:
            # Routed before this run (the node runs again when the person's answer resumes it).
            return await self._answered(dict(routed.payload), instance_id, step, key, event_type, recorder)
        chain = (intent, *(options.fallbacks if options is not None else ()))
        circuit_open = False
        for position, current in enumerate(chain):
            try:
                return await self._call_one(
                    current,
                    payload=payload,
                    instance_id=instance_id,
                    step=step,
                    key=key,
                    event_type=event_type,
                    recorder=recorder,
                    granted_permissions=granted_permissions,
                    granted_intents=granted_intents,
                    output_schema=output_schema,
                    retry=retry,
                    replay=replay,
                    options=options,
                    primary=intent,
                )
            except AgentCallFailedError as exc:
                circuit_open = circuit_open or isinstance(exc, CircuitOpenError)
                if position + 1 == len(chain):
                    if not (human and circuit_open):
                        raise
                    task = {
                        "task": step,
                        "kind": CIRCUIT_OPEN_TASK,
                        "intent": intent,
                        "title": f"the agent for {intent!r} is unavailable (its circuit is open): give its output",
                        "reason": str(exc),
                        "payload": dict(payload),
                        "schema": dict(output_schema) if output_schema is not None else None,
                    }
                    await self.events.append(instance_id, [NewEvent(ROUTED_TO_HUMAN, task, step, f"{key}:human")])
                    log.info("agent call routed to a person", instance_id=instance_id, step=step, intent=intent)
                    return await self._answered(task, instance_id, step, key, event_type, recorder)
                switch = {
                    "intent": current,
                    "fallback": chain[position + 1],
                    "error": str(exc),
                    "error_type": exc.details.get("error_type", exc.code),
                }
                await self.events.append(instance_id, [NewEvent(FALLBACK, switch, step)])
                log.info("agent call falls back", instance_id=instance_id, step=step, **switch)
        raise AssertionError("unreachable: the chain's last intent returns or raises")

    async def _answered(
        self,
        task: dict[str, Any],
        instance_id: str,
        step: str | None,
        key: str,
        event_type: str,
        recorder: Recorder | None,
    ) -> CallOutcome:
        """The call as a human task: waits (``interrupt``) until a person answers, and their answer, checked
        like an agent's output, is the call's output, logged as its completion."""
        answer = interrupt(task)
        intent = str(task["intent"])
        output = _checked_output(intent, answer, task.get("schema"), self.max_output_bytes)
        recording = recorder(output) if recorder else Recording({})
        record = {"intent": intent, "agent": "human", "output": output, "attempts": 0, **recording.payload}
        await self.events.append(instance_id, [NewEvent(event_type, record, step, key)], status=recording.status)
        progress({"event": "step.done", "instance_id": instance_id, "step": step, "attempts": 0})
        return CallOutcome(output, 0, False)

    async def authorize_completion(
        self,
        instance_id: str,
        step: str | None,
        payload: Mapping[str, Any],
        *,
        user: str | None = None,
        groups: Sequence[str] = (),
    ) -> None:
        """Run the policies on a person's answer before it completes a user task (the same policies as
        agent calls, in the same order): a refusal is a ``policy.denied`` event with its reason, and
        :class:`PolicyViolationError` is raised before anything is resumed."""
        completion = TaskCompletion(instance_id, step, user, payload, tuple(groups))
        await enforce(self.policies, completion, self.events, {"user": user})

    async def authorize_session_action(self, action: SessionAction) -> None:
        """Run the policies on a change to a session (a move, recorded progress, its close) before it is
        made: a refusal is a ``policy.denied`` event with its reason, and :class:`PolicyViolationError` is
        raised with nothing changed."""
        audit = {"user": action.user, "action": action.action, "actor": action.actor}
        await enforce(self.policies, action, self.events, audit)

    async def _call_one(
        self,
        intent: str,
        *,
        payload: Mapping[str, Any],
        instance_id: str,
        step: str | None,
        key: str,
        event_type: str,
        recorder: Recorder | None,
        granted_permissions: frozenset[str] | None,
        granted_intents: frozenset[str] | None,
        output_schema: Mapping[str, Any] | None,
        retry: RetrySettings | None,
        replay: bool,
        options: CallOptions | None,
        primary: str,
    ) -> CallOutcome:
        entry = self.registry.resolve(intent)
        tell = progress_writer()  # taken once for the call's events, not per event
        tell({"event": "step.started", "instance_id": instance_id, "step": step, "intent": intent})
        check = AgentCall(entry, instance_id, step, payload, granted_permissions, granted_intents)
        # Refused before it runs: audited, with the reason.
        await enforce(self.policies, check, self.events, {"intent": intent, "agent": entry.name})
        settings = retry or entry.retry or self.retry
        if options is not None and options.retry is not None:
            settings = options.retry.over(settings)
        timeout = options.timeout if options is not None and options.timeout is not None else None
        timeout = timeout if timeout is not None else entry.timeout if entry.timeout is not None else self.timeout
        circuit = entry.circuit or self.circuit
        # The attempts a crashed process already made count: a restart continues, it does not start over.
        earlier = await self._earlier_attempts(instance_id, key, intent) if replay else 0
        tried = earlier

        async def attempt(number: int) -> dict[str, Any]:
            nonlocal tried
            tried = number
            attempt_started(number)
            tell(
                {
                    "event": "agent.called",
                    "instance_id": instance_id,
                    "step": step,
                    "agent": entry.name,
                    "attempt": number,
                }
            )
            try:
                result = await self._attempt(entry, payload, instance_id, step, key, number, timeout, circuit)
                return _checked_output(intent, result, output_schema, self.max_output_bytes)
            except CircuitOpenError:
                raise
            except Exception as exc:
                failed = {
                    "intent": intent,
                    "call": key,
                    "attempt": number,
                    "error": str(exc),
                    "error_type": type(exc).__name__,
                }
                await self.events.append(instance_id, [NewEvent(ATTEMPT_FAILED, failed, step)])
                # Logged as Temporal's workers log a failed activity attempt: a retry that later succeeds
                # still says an agent is failing, which the journey's answer no longer shows.
                log.warning(
                    "agent attempt failed",
                    intent=intent,
                    instance_id=instance_id,
                    step=step,
                    attempt=number,
                    error=str(exc),
                )
                raise

        started = time.perf_counter()
        try:
            if earlier >= settings.max_attempts:
                raise AgentCallFailedError(
                    f"its {earlier} attempts were made before a restart", intent=intent, attempts=earlier
                )
            output, attempts = await call_with_retry(attempt, settings, first_attempt=earlier + 1)
        except (AgentNotFoundError, PolicyViolationError):
            raise
        except Exception as exc:
            failure = {
                "intent": intent,
                "call": key,
                "error": str(exc),
                "error_type": type(exc).__name__,
                "attempts": tried,
            }
            await self.events.append(instance_id, [NewEvent(CALL_FAILED, failure, step)])
            tell({"event": "step.failed", "instance_id": instance_id, "step": step, "error": str(exc)})
            log.warning("agent call failed", intent=intent, instance_id=instance_id, step=step, error=str(exc))
            failed = CircuitOpenError if isinstance(exc, CircuitOpenError) else AgentCallFailedError
            raise failed(
                f"agent for intent {intent!r} failed at step {step!r}: {exc}",
                intent=intent,
                step=step,
                error_type=type(exc).__name__,
                attempts=tried,
                **({"retry_after_s": exc.details.get("retry_after_s")} if isinstance(exc, CircuitOpenError) else {}),
            ) from exc

        recording = recorder(output) if recorder else Recording({})
        record = {
            "intent": intent,
            "agent": entry.name,
            "output": output,
            "attempts": attempts,
            "duration_ms": round((time.perf_counter() - started) * 1000, 3),
            **({"fallback_from": primary} if intent != primary else {}),
            **recording.payload,
        }
        completion = NewEvent(event_type, record, step, key)

        behind = recording.behind and recording.status is None and key is not None

        async def complete() -> None:
            # With the steps other runs complete meanwhile, written behind or not (a journey's last step, its
            # status with it): one transaction for them all, not one each.
            await self.events.append_together(instance_id, completion, recording.status)
            tell({"event": "step.done", "instance_id": instance_id, "step": step, "attempts": attempts})

        await (self.events.write_behind(instance_id, complete) if behind else complete())
        return CallOutcome(output, attempts, False)

    async def _attempt(
        self,
        entry: RegisteredAgent,
        payload: Mapping[str, Any],
        instance_id: str,
        step: str | None,
        key: str,
        number: int,
        time_limit: float | None,
        circuit: CircuitSettings | None,
    ) -> object:
        """One attempt: through the circuit, the rate limit and the pool's bulkhead, under the time limit."""
        intent = entry.intent
        guarded = circuit is not None and self.breakers is not None
        if guarded:
            assert circuit is not None and self.breakers is not None
            admission = await self.breakers.admit(intent, circuit)
            if not admission.allowed:
                raise CircuitOpenError(
                    f"the circuit of intent {intent!r} is {admission.state.replace('_', '-')}; "
                    f"it lets calls through again in {admission.retry_after:.3g} s",
                    intent=intent,
                    state=admission.state,
                    retry_after_s=admission.retry_after,
                )
        if entry.rate_limit is not None and self.rate_limits is not None:
            wait = await self.rate_limits.acquire(intent, entry.rate_limit)
            if wait > 0:
                rejected_by_rate_limit(intent)
                raise RateLimitedError(
                    f"intent {intent!r} is at its rate limit of {entry.rate_limit.per_second:g} calls a second; "
                    f"the next call is free in {wait:.3g} s",
                    intent=intent,
                    retry_after_s=wait,
                )
        request = AgentRequest(intent, payload, instance_id, step, key, number)
        try:
            pool = entry.pool or intent
            async with self.bulkheads.hold(pool, self.registry.pool_limit(pool)):
                result = entry.agent(request)
                # A synchronous agent's answer (a dict, most often) is not awaited, and is looked at once.
                if type(result) is not dict and inspect.isawaitable(result):
                    if time_limit is None:  # no timer to set and cancel
                        result = await result
                    else:
                        try:
                            async with asyncio.timeout(time_limit):
                                result = await result
                        except TimeoutError:
                            raise AgentTimeoutError(
                                f"agent for intent {intent!r} did not answer within {time_limit:g} s",
                                intent=intent,
                                timeout_s=time_limit,
                            ) from None
        except Exception as exc:
            if isinstance(exc, BulkheadFullError):
                rejected_by_bulkhead(intent)
            # What the agent's service did counts for its circuit; a refusal or a bad request does not.
            if guarded and _counts_against_circuit(exc):
                assert circuit is not None and self.breakers is not None
                await self.breakers.record(intent, circuit, succeeded=False)
            raise
        if guarded:
            assert circuit is not None and self.breakers is not None
            await self.breakers.record(intent, circuit, succeeded=True)
        return result

    async def _earlier_attempts(self, instance_id: str, key: str, intent: str) -> int:
        """How many attempts at this call the log holds since the call last failed for good (a retried
        step or compensation starts a fresh count)."""
        count = 0
        for event in await self.events.list(instance_id, types=[ATTEMPT_FAILED, CALL_FAILED]):
            if (event.payload.get("intent"), event.payload.get("call")) == (intent, key):
                count = 0 if event.type == CALL_FAILED else count + 1
        return count


def _in_graph() -> bool:
    """Whether this code runs in a node of a graph run (where a call can wait for a person)."""
    try:
        get_config()
    except RuntimeError:
        return False
    return True


def progress(event: Mapping[str, Any]) -> None:
    """Tell a run streamed with the ``custom`` mode how far it got (nothing when it is not streamed, or
    when the call runs outside a graph, e.g. an orchestrator's compensation)."""
    progress_writer()(dict(event))


def progress_writer() -> Callable[[dict[str, Any]], None]:
    """What tells the run this code runs in how far it got (see :func:`progress`), for a caller with several
    events to tell: each is handed on as given (a dict of its own, not copied)."""
    try:
        return get_stream_writer()
    except RuntimeError:
        return _untold


def _untold(_event: dict[str, Any]) -> None:
    """Outside a graph run: nobody to tell."""


def _counts_against_circuit(exc: BaseException) -> bool:
    """A failure of the agent's service (an error worth retrying, a timeout), not one of our own guards."""
    return is_retryable(exc) and not isinstance(exc, RateLimitedError | BulkheadFullError)


def _checked_output(
    intent: str, result: object, schema: Mapping[str, Any] | None, max_bytes: int = MAX_OUTPUT_BYTES
) -> dict[str, Any]:
    if type(result) is not dict and not isinstance(result, Mapping):
        raise AgentOutputError(
            f"agent for intent {intent!r} returned {type(result).__name__}; agents must return a mapping",
            intent=intent,
        )
    output = dict(result)
    if output.get("status") == REPORTED_FAILED:  # the agent says its work failed: not an output, a failed attempt
        error = output.get("error")
        said = f": {str(error)[:MAX_REPORTED_ERROR]}" if error not in (None, "") else ""
        raise AgentReportedFailureError(
            f"agent for intent {intent!r} reported that its work failed{said}", intent=intent
        )
    try:  # kept in the event log and the checkpoint: what no store can keep (NaN, a datetime) is refused
        check_value(output, "output")
    except InvalidInputError as exc:
        raise AgentOutputError(
            f"agent for intent {intent!r} returned what no store can keep: {exc}", intent=intent
        ) from None
    size = len(_SIZED.encode(output).encode())
    if size > max_bytes:  # kept in the event log and the checkpoint: refused, not stored
        raise AgentOutputTooLargeError(
            f"agent for intent {intent!r} returned {size} bytes of output; a step keeps at most {max_bytes}",
            intent=intent,
            size=size,
            limit=max_bytes,
        )
    if schema is not None:
        try:
            schemas.validate(output, schema)
        except jsonschema.ValidationError as exc:
            raise AgentOutputError(
                f"agent for intent {intent!r} returned output that breaks its schema: {exc.message}",
                intent=intent,
            ) from exc
    return output

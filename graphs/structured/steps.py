"""Running step journeys (structured and saga): start, advance, retry and report.

Every move is checked against the thread's current state before anything is written: a wrong step,
a finished journey or an invalid result raises a typed error and leaves no trace.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any, cast

from langgraph.graph import START
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Command, StateSnapshot

from agents.errors import AgentReportedFailureError
from checkpoints.errors import CheckpointsDeletedError, JourneyError
from checkpoints.events import Event, NewEvent
from checkpoints.flow import ENDED_STATUSES, TERMINATED
from checkpoints.index import Instance
from graphs.errors import (
    EvaluatorError,
    ExistingStart,
    InvalidInputError,
    JourneyFinishedError,
    JourneyNotFoundError,
    JourneyNotStartedError,
    JourneyQueuedError,
    NothingToRetryError,
    RunInReviewError,
    StepFailedError,
    StepHaltedError,
    StepMovedOnError,
    StepOrderError,
    StepReportedFailedError,
)
from graphs.kernel.designs import DesignBook, PatternName
from graphs.kernel.engine import (
    DEFAULT_RUN,
    RunOptions,
    check_answering,
    failed_task,
    failed_task_of,
    in_flight,
    resume_pending,
    waiting_for,
)
from graphs.kernel.evaluation import IN_REVIEW
from graphs.kernel.flow import QUEUED, StartControls
from graphs.kernel.forks import Forkable
from graphs.kernel.instances import DEADLINE_FAILURE, Recoverable, failure
from graphs.kernel.streaming import INTERRUPT as INTERRUPT  # the server reads run outputs with it
from graphs.structured.builder import (
    AWAIT_SUFFIX,
    COMPENSATE_NODE,
    StructuredSpec,
    StructuredState,
    await_node,
    reported_failed,
    result_schema,
)
from nodes.agent_call import CIRCUIT_OPEN_TASK
from nodes.compensation import COMPENSATION_RETRIED, COMPLETED_STEP, SAGA_COMPENSATED, step_key
from nodes.user_task import validate_resume_value

Graph = CompiledStateGraph[Any, Any, Any, Any]
STARTED = "journey.started"  # a run's first event: what it was started with
FINISHED = ("completed", "compensated", "failed", TERMINATED)


class StepJourneys:
    """The machinery shared by the structured and saga orchestrators."""

    def __init__(self, designs: DesignBook, patterns: tuple[PatternName, ...]) -> None:
        self.designs = designs
        self.engine = designs.engine
        self.index = designs.engine.store.index
        self.events = designs.engine.store.events
        self.instances = designs.instances
        self.patterns = patterns
        forkable = Forkable(frozenset({COMPLETED_STEP}), step_superstep)
        designs.instances.register(
            Recoverable(
                patterns,
                self._instance_graph,
                self._start_input,
                expire=self._expire,
                fork=forkable,
                controls=self._controls,
            )
        )

    async def _controls(self, instance: Instance) -> StartControls | None:
        """The run's concurrency limit and key value, from the context its start was given (its first event, a
        fork's copied from its source's), which a fork of it and a retry of it run under."""
        pattern, spec, _graph = await self._load(instance.journey_id)
        if spec.concurrency is None:
            return None
        [started, *_] = await self.events.list(instance.instance_id, types=[STARTED])
        context = dict(started.payload.get("context") or {})
        return StartControls.of(None, None, spec.concurrency, context, journey_type=f"{pattern}.{spec.journey_type}")

    async def _load(self, journey_id: str, *, to_start: bool = False) -> tuple[str, StructuredSpec, Graph]:
        design, spec = await self.designs.load(journey_id, self.patterns, to_start=to_start)
        return design.pattern, spec, self.designs.graph(design.pattern, spec)

    async def instance(self, instance_id: str) -> Instance:
        found = await self.index.get_instance(instance_id)
        if found is None or found.pattern not in self.patterns:
            runs = " or ".join(self.patterns)
            design = await self.index.get_design(instance_id) if found is None else None
            if design is not None and design.pattern in self.patterns:
                # The id design_saga_journey answers, given where the run's is wanted: say which one that is.
                raise JourneyNotFoundError(
                    f"{instance_id!r} is the id of a {design.pattern} design, not of a run of it: pass the "
                    f"{'saga_id execute_saga_journey' if design.pattern == 'saga' else 'instance_id its start'} "
                    "answered",
                    instance_id=instance_id,
                )
            raise JourneyNotFoundError(f"no {runs} journey run {instance_id!r}", instance_id=instance_id)
        return found

    async def start(
        self,
        journey_id: str,
        user_id: str,
        context: Mapping[str, Any] | None,
        *,
        instance_id: str,
        options: RunOptions = DEFAULT_RUN,
        start_key: str | None = None,
        start_key_window: str | float | timedelta | None = None,
    ) -> dict[str, Any]:
        """Start ``instance_id`` (see :meth:`Instances.start`); with ``start_key``, a start with the same
        key within its window answers the journey it began. The spec's ``concurrency`` limit is keyed on
        the start context."""
        if context is not None and not isinstance(context, Mapping):
            raise InvalidInputError(f"context must be a mapping, got {type(context).__name__}")
        pattern, spec, graph = await self._load(journey_id, to_start=True)
        if spec.evaluation is not None and (missing := self.instances.evaluation.missing(spec.evaluation)):
            raise EvaluatorError(f"register the evaluators {missing} in runtime.evaluators first", missing=missing)
        controls = StartControls.of(
            start_key,
            start_key_window,
            spec.concurrency,
            context or {},
            spec.deadline,
            journey_type=f"{pattern}.{spec.journey_type}",
        )
        started = NewEvent(STARTED, {"journey_id": journey_id, "user_id": user_id, "context": dict(context or {})})
        initial = _initial_state(context)
        completed: dict[str, tuple[str, Any]] = {}  # the steps the run completes, noted by their nodes
        try:
            async with self.engine.exclusive(instance_id):
                created, outcome = await self.instances.start(
                    graph,
                    instance_id,
                    journey_id,
                    pattern,
                    user_id,
                    started,
                    dict(initial),
                    cause="step",
                    options=replace(options, notes=completed),
                    controls=controls,
                )
                standing = await self._evaluate(instance_id, pattern, spec, graph, Standing.of(outcome))
        except ExistingStart as existing:
            return await self.status(existing.instance_id)
        if created is None:  # a start a crash cut short, run again: its log held steps before this run
            return await self.view(await self.instance(instance_id), spec, standing)
        # Registered by this run: its log holds no completed step but those the run noted.
        return await self.view(created, spec, standing, list(completed.values()))

    async def advance(
        self,
        instance_id: str,
        step_result: Mapping[str, Any],
        *,
        step_id: str | None = None,
        options: RunOptions = DEFAULT_RUN,
    ) -> dict[str, Any]:
        # The step the journey stood at when this advance was asked: one that names no step is for that one. Two
        # at once (a double click, two tabs) then do not complete two steps, the second with the first's result.
        arrived = None if step_id or _names_step(step_result) else await self._standing_step(instance_id)
        async with self.engine.acting(instance_id) as found:
            if found is None:
                raise JourneyNotStartedError(
                    f"journey run {instance_id!r} has not been started; execute the journey first",
                    allowed=["execute_journey"],
                    instance_id=instance_id,
                )
            if found.status == IN_REVIEW:
                raise RunInReviewError(
                    f"journey run {instance_id!r} broke a threshold of its tier and waits for review (review_run)",
                    instance_id=instance_id,
                )
            if found.status == QUEUED:
                raise JourneyQueuedError(
                    f"journey run {instance_id!r} is queued behind its concurrency limit; it starts when a slot frees",
                    allowed=[],
                    instance_id=instance_id,
                )
            _, spec, graph = await self._load(found.journey_id)
            snapshot = await self.engine.settled_state(graph, instance_id, options=options)
            if in_flight(snapshot):  # a cancelled run stopped a step (an Agent Server user's multitask "interrupt")
                # It goes on first; the result is for the step the journey then waits at, as an advance that
                # names no step and found it stopped there means.
                stopped = position(snapshot)
                snapshot = await self.instances.before_move(graph, instance_id, options)
                arrived = position(snapshot) if arrived == stopped else arrived
            check_answering(snapshot, instance_id, options.answering)  # before the answer is checked as this step's
            standing = Standing.of(snapshot)
            current = self._current_step(instance_id, spec, standing)
            requested = step_id or (step_result.get("step_id") if isinstance(step_result, Mapping) else None)
            if requested is None and arrived is not None and arrived != current:
                raise StepMovedOnError(
                    f"step {arrived!r} was completed while this advance waited (another advance of it ran first); "
                    f"nothing was applied: the current step is {current!r}. Name the step an advance is for "
                    "(step_id) to make a repeated one fail instead of completing the next step",
                    allowed=[current],
                    current_step=current,
                    completed_step=arrived,
                )
            if requested is not None and requested != current:
                known = "" if requested in spec.step_ids else f" ({requested!r} is not a step of this journey)"
                raise StepOrderError(
                    f"cannot advance step {requested!r}{known}: steps complete in order and the current step "
                    f"is {current!r}",
                    allowed=[current],
                    current_step=current,
                )
            schema = result_schema(spec.step(current), step_result)
            if standing.waiting is not None and standing.waiting.get("kind") == CIRCUIT_OPEN_TASK:
                schema = spec.step(current).output_schema  # a person answers in the agent's place
            result = validate_resume_value(step_result, schema, task=current)
            await self.engine.services.caller.authorize_completion(instance_id, current, result, user=found.user_id)
            explicit = result.get("next_step")
            targets = [b.to for b in spec.branches(current)]
            if explicit is not None and explicit not in targets:
                raise InvalidInputError(
                    f"next_step {explicit!r} is not a branch of step {current!r}; choose one of {targets}",
                    allowed=targets,
                )
            # The steps the run completes, noted by their nodes: the answer names the current one only if it did.
            notes: dict[str, tuple[str, Any]] = {} if options.notes is None else options.notes
            try:
                standing = await self._run(
                    graph, found, resume_pending(snapshot, result), replace(options, notes=notes)
                )
            except StepReportedFailedError:  # recorded: the journey stands failed at the step, as its user said
                standing = Standing.of(await graph.aget_state(self.engine.config(instance_id)))
            standing = await self._evaluate(instance_id, found.pattern, spec, graph, standing)
        view = await self.view(await self.instance(instance_id), spec, standing)
        completed = any(step == current for step, _output in notes.values())
        return {**view, "completed_step": current if completed else None}

    async def _standing_step(self, instance_id: str) -> str | None:
        """The step the journey stands at now, read without its lock (None: not started, or not a step)."""
        found = await self.index.get_instance(instance_id)
        if found is None or found.pattern not in self.patterns:
            return None
        _, _spec, graph = await self._load(found.journey_id)
        return position(await graph.aget_state(self.engine.config(instance_id)))

    async def retry(self, instance_id: str, *, by: str | None = None) -> dict[str, Any]:
        """Run the failed step again (its agent may have recovered), or resume a saga's compensation
        that stopped at a handler that failed for good: the steps it undid are not undone again. ``by``: who
        retried it (its ``step.retried`` or ``compensation.retried`` event names them, for the audit)."""
        found = await self.instance(instance_id)
        _, spec, graph = await self._load(found.journey_id)
        config = self.engine.config(instance_id)
        async with self.engine.acting(instance_id) as current:
            retried = await self.instances.retry(graph, instance_id, "step.retried", by=by)  # a failed step runs again
            if retried in spec.steps_by_id and (again := _started_over(spec, retried, await graph.aget_state(config))):
                await graph.aupdate_state(config, again, as_node=retried)
            stuck = None if retried else stuck_compensation(await graph.aget_state(config))
            if stuck is not None:
                failed_step, stopped = stuck
                payload = {"handler": stopped.get("handler"), "previous_failure": stopped, **({"by": by} if by else {})}
                await self.events.append(
                    instance_id, [NewEvent(COMPENSATION_RETRIED, payload, stopped.get("step"))], status="compensating"
                )
                # The failing step routes to the compensation again, in a checkpoint of its own: a crash
                # from here on leaves the compensation pending, and recovery finishes it.
                reentry = Command(goto=COMPENSATE_NODE, update={"status": "compensating", "compensation_failure": None})
                await graph.aupdate_state(config, reentry, as_node=failed_step)
            elif retried is None:
                ended = current is not None and current.status in ENDED_STATUSES  # nothing to advance either
                raise NothingToRetryError(
                    f"journey run {instance_id!r} has no failed step or compensation to retry"
                    + (f": it is {current.status}" if ended and current is not None else ""),
                    allowed=[] if ended else ["advance_journey_step"],
                )
            standing = await self._run(graph, found, None, DEFAULT_RUN)
        return await self.view(await self.instance(instance_id), spec, standing)

    async def status(self, instance_id: str) -> dict[str, Any]:
        found = await self.instance(instance_id)
        _, spec, graph = await self._load(found.journey_id)
        try:
            async with self.engine.reading(instance_id) as held:
                if held:  # a failure of a crash's work recorded
                    snapshot = await self.instances.settled(graph, instance_id)
                else:  # another call is moving it: as last committed
                    snapshot = await graph.aget_state(self.engine.config(instance_id))
        except CheckpointsDeletedError:
            return await self._retained_view(found, spec)
        standing = Standing.of(snapshot)
        if standing.failed is not None and found.status != "failed":  # failed as the read finished it: recorded
            found = await self.instance(instance_id)
        return await self.view(found, spec, standing)

    async def _retained_view(self, found: Instance, spec: StructuredSpec) -> dict[str, Any]:
        """The view of a finished journey whose checkpoints retention deleted: its status from the index,
        its steps (and a saga's compensations) from the log, ``checkpoints: "deleted"``."""
        view = await self.view(found, spec, Standing({}, found.status, None, None, None))
        if found.pattern == "saga":
            undone = await self.events.list(found.instance_id, types=[SAGA_COMPENSATED])
            view["compensated_steps"] = list(undone[-1].payload.get("compensated_steps") or []) if undone else []
        return view | {"checkpoints": "deleted"}

    async def describe(self, instance_id: str, snapshot: StateSnapshot) -> dict[str, Any]:
        """The view of a thread state already read (by the server, after a run), without running anything."""
        found = await self.instance(instance_id)
        _, spec = await self.designs.load(found.journey_id, self.patterns)
        return await self.view(found, spec, Standing.of(snapshot))

    async def _run(self, graph: Graph, instance: Instance, value: Any, options: RunOptions) -> Standing:
        # A step whose work fails is recorded by the kernel (the instance is failed) and its error
        # raised: the failure is in the checkpoint, and the step can be retried from there.
        outcome = await self.instances.advance(
            graph, instance.instance_id, instance.pattern, value, cause="step", options=options
        )
        return Standing.of(outcome)

    async def _instance_graph(self, instance: Instance) -> Graph:
        return (await self._load(instance.journey_id))[2]

    async def _evaluate(
        self, instance_id: str, pattern: str, spec: StructuredSpec, graph: Graph, standing: Standing
    ) -> Standing:
        """A run that has just completed is evaluated against its tier (once): a breach fails it, or holds it
        for review, as the tier says (under ``exclusive``)."""
        tier = spec.evaluation
        if tier is None or standing.status != "completed":
            return standing
        status = await self.instances.evaluation.judge(instance_id, pattern, tier, [COMPLETED_STEP])
        if status != standing.status:
            await self._set_status(graph, instance_id, status)
        return replace(standing, status=status)

    async def review(self, instance_id: str, *, approved: bool, by: str, note: str = "") -> dict[str, Any]:
        """A person's decision on a run held for review: ``approved`` completes it, otherwise it fails."""
        found = await self.instance(instance_id)
        graph = (await self._load(found.journey_id))[2]
        async with self.engine.exclusive(instance_id):
            status = await self.instances.evaluation.review(
                await self.instance(instance_id), approved=approved, by=by, note=note
            )
            await self._set_status(graph, instance_id, status)
        return await self.status(instance_id)

    async def _set_status(self, graph: Graph, instance_id: str, status: str) -> None:
        """The thread's status after its run was judged, at its last step (the run itself has ended)."""
        steps = await self.events.list(instance_id, types=[COMPLETED_STEP])
        last = steps[-1].step if steps else None
        await graph.aupdate_state(self.engine.config(instance_id), {"status": status}, as_node=last or START)

    async def _expire(self, instance: Instance, graph: Graph, on_expiry: str, passed: NewEvent) -> None:
        """The deadline passed (under ``exclusive``): a saga with ``on_expiry="compensate"`` compensates its
        completed steps, last first; otherwise the journey fails where it stands and moves no further."""
        instance_id, config = instance.instance_id, self.engine.config(instance.instance_id)
        snapshot = await self.engine.settled_state(graph, instance_id)
        standing = Standing.of(snapshot)
        if standing.status in FINISHED or standing.status == "compensating":
            return
        step = standing.position
        reason = {**DEADLINE_FAILURE, "step": step}
        if on_expiry == "compensate" and instance.pattern == "saga" and step is not None:
            # A step a cancelled run stopped mid-work (left in flight) may have acted: undone first, as on cancel.
            cut_short = await self._cut_short(instance_id, (await self._load(instance.journey_id))[1], snapshot)
            await self._compensate(instance, graph, step, reason, passed, f"{instance_id}:deadline", cut_short)
            return
        failed = failure(instance.pattern, "deadline", DEADLINE_FAILURE, step)
        await self.events.append(instance_id, [passed, failed], status="failed")
        # The thread ends where it stood (no step runs after it), so no later advance moves it.
        await graph.aupdate_state(config, {"status": "failed", "failure": reason}, as_node=step or START)

    async def _compensate(
        self,
        instance: Instance,
        graph: Graph,
        step: str,
        reason: dict[str, Any],
        cause: NewEvent,
        key: str,
        cut_short: dict[str, str] | None = None,
    ) -> None:
        """Turn a saga that stands at ``step`` to its compensation (under ``exclusive``), as a failing step does:
        ``cause`` and ``saga.compensating`` logged, then the undo of its completed steps, last first, run now
        (first the step whose work was ``cut_short``, see :meth:`_cut_short`)."""
        instance_id = instance.instance_id
        compensating = NewEvent("saga.compensating", reason, step, f"{key}:compensating")
        await self.events.append(instance_id, [cause, compensating], status="compensating")
        update: dict[str, Any] = {"status": "compensating", "failure": reason}
        if cut_short is not None:
            update["failed_call"] = cut_short
        await graph.aupdate_state(
            self.engine.config(instance_id), Command(goto=COMPENSATE_NODE, update=update), as_node=step
        )
        with contextlib.suppress(JourneyError):  # a failing undo is recorded and can be retried
            await self.instances.advance(graph, instance_id, instance.pattern, None, cause="step")

    async def cancel(self, instance_id: str, reason: str) -> dict[str, Any]:
        """Cancel a saga that has not ended where it stands: its completed steps are compensated, last first,
        and it ends ``compensated`` (or ``failed`` at a handler that fails for good, which a retry resumes). A
        step whose run was cut short (cancelled, or a crash) is not run again first: what the log says was done
        is undone, and the step whose work was under way, whose agent may have acted, is undone first."""
        found = await self.instance(instance_id)
        _, spec, graph = await self._load(found.journey_id)
        async with self.engine.acting(instance_id):
            snapshot = await graph.aget_state(self.engine.config(instance_id))
            if snapshot.created_at is None:  # no checkpoint yet: a start a crash cut short is finished first
                snapshot = await self.engine.settled_state(graph, instance_id)
            standing = Standing.of(snapshot)
            if standing.status in (*FINISHED, "compensating") or standing.position is None:
                raise JourneyFinishedError(
                    f"saga {instance_id!r} cannot be cancelled: it is {standing.status}",
                    allowed=["retry_saga_step"] if standing.values.get("compensation_failure") else [],
                    status=standing.status,
                )
            step = standing.position
            failure = {"step": step, "error": reason, "error_type": "SagaCancelled"}
            cancelled = NewEvent("saga.cancelled", {"reason": reason}, step, f"{instance_id}:cancelled")
            cut_short = await self._cut_short(instance_id, spec, snapshot)
            await self._compensate(found, graph, step, failure, cancelled, f"{instance_id}:cancelled", cut_short)
            standing = Standing.of(await graph.aget_state(self.engine.config(instance_id)))
        return await self.view(await self.instance(instance_id), spec, standing)

    async def _cut_short(
        self, instance_id: str, spec: StructuredSpec, snapshot: StateSnapshot
    ) -> dict[str, str] | None:
        """The step whose work a run cut short (cancelled, or a crash) and its call's key (``failed_call``): its
        agent may have acted. A node may have run steps after its own (``steps_chained``): those whose
        completion is logged under their place in the chain are passed over. None: no step's work was under way."""
        if not in_flight(snapshot):
            return None
        node = next((t.name for t in snapshot.tasks if t.name in spec.step_ids), None)
        if node is None:
            return None
        at = int((snapshot.metadata or {}).get("step", -1)) + 1  # the superstep its tasks run in
        logged = {e.key: e for e in await self.events.list(instance_id, types=[COMPLETED_STEP])}
        step: str | None = node
        visit = 0
        while step is not None and step in spec.step_ids:
            key = step_key(instance_id, step, f"{at}.{visit}" if visit else at)
            done = logged.get(key)
            if done is None:
                return {"step": step, "call": key}
            following = done.payload.get("next_step")
            step, visit = (following if isinstance(following, str) else None), visit + 1
            if step is not None and step in spec.step_ids and spec.step(step).mode == "user":
                return None  # a node goes on to an auto step only: a user step waits for its input first
        return None

    @staticmethod
    async def _start_input(_instance: Instance, started: Event) -> dict[str, Any]:
        """The first run's input, from the ``journey.started`` event (see :meth:`start`)."""
        return dict(_initial_state(started.payload.get("context")))

    def _current_step(self, instance_id: str, spec: StructuredSpec, standing: Standing) -> str:
        if standing.failed is not None:
            raise StepFailedError(
                f"step {standing.failed!r} failed; retry it (retry_journey_step) before advancing",
                allowed=["retry_journey_step"],
                failed_step=standing.failed,
            )
        stopped = standing.values.get("compensation_failure")
        if standing.status == "failed" and isinstance(stopped, Mapping):  # a saga whose undo failed for good
            raise JourneyFinishedError(
                f"saga {instance_id!r} has no step left to advance: its compensation stopped at step "
                f"{stopped.get('step')!r}, whose handler {stopped.get('handler')!r} failed ({stopped.get('error')}); "
                "retry the compensation (retry_saga_step) once the handler can succeed",
                allowed=["retry_saga_step"],
                status=standing.status,
            )
        if standing.status in FINISHED or standing.position is None:
            raise JourneyFinishedError(
                f"journey run {instance_id!r} has finished with status {standing.status!r}; nothing is left to advance",
                allowed=[],
                status=standing.status,
            )
        current = standing.position
        if standing.waiting is None and current in spec.step_ids and standing.status == "in_progress":
            # In flight after a settle: a run cancelled on purpose stopped the step's work (JourneyEngine.halt).
            raise StepHaltedError(
                f"step {current!r} of journey run {instance_id!r} was stopped while its work ran (its run was "
                "cancelled); run it on with retry_journey_step / retry_saga_step (POST .../retry) first",
                allowed=["retry_journey_step"],
                current_step=current,
            )
        if standing.waiting is None or current not in spec.step_ids:
            raise JourneyFinishedError(f"journey run {instance_id!r} is not waiting for a step result", allowed=[])
        return current

    async def view(
        self,
        instance: Instance,
        spec: StructuredSpec,
        standing: Standing,
        done: list[tuple[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """The journey as users see it: where it stands from the graph, what it did from the log (``done``:
        its completed steps and their outputs, in order, from a caller that knows them all; else read)."""
        values = standing.values
        # Queued: registered, not run yet, so nothing stands anywhere. Terminated: it stopped where it stood.
        if instance.status in (QUEUED, TERMINATED):
            standing = Standing(values, instance.status, None, None, None)
        current = standing.position if standing.status not in FINISHED else None
        if done is None:
            logged = await self.events.list(instance.instance_id, types=[COMPLETED_STEP])
            done = [(e.step or "", e.payload.get("output")) for e in logged]
        completed = [step for step, _output in done]
        view: dict[str, Any] = {
            "journey_id": instance.journey_id,
            "user_id": instance.user_id,
            "instance_id": instance.instance_id,
            "journey_type": spec.journey_type,
            "status": standing.status,
            "current_step": current,
            "completed_steps": completed,
            "awaiting_input": standing.waiting is not None,
            "next_steps": [b.to for b in spec.branches(current)] if current else [],
            "progress": {"completed": len(completed), "total": len(spec.steps)},
            "last_output": done[-1][1] if done else None,
        }
        if standing.failed:
            view["failed_step"] = standing.failed
        if spec.evaluation is not None:
            view["evaluation"] = await self.instances.evaluation.verdict(instance.instance_id)
        if instance.pattern == "saga":
            view |= {
                "saga_id": instance.instance_id,
                "compensated_steps": list(values.get("compensated_steps") or []),
                "failure": values.get("failure"),
                "compensation_failure": values.get("compensation_failure"),
            }
        return view


@dataclass(frozen=True, slots=True)
class Standing:
    """Where a step journey stands, read from the thread's state or from what a run returned."""

    values: StructuredState
    status: str  # failed (a step's work failed), a saga's own status, in_progress, or completed
    position: str | None  # the step it waits on, or whose work is pending or failed
    waiting: dict[str, Any] | None  # the human task it waits on
    failed: str | None  # the step whose work failed

    @classmethod
    def of(cls, source: StateSnapshot | Mapping[str, Any]) -> Standing:
        return cls._of_snapshot(source) if isinstance(source, StateSnapshot) else cls._of_output(source)

    @classmethod
    def _of_snapshot(cls, snapshot: StateSnapshot) -> Standing:
        values = cast(StructuredState, snapshot.values)
        failed = failed_task(snapshot)
        pending = bool(snapshot.next or snapshot.tasks)
        status = "failed" if failed else values.get("status") or ("in_progress" if pending else "completed")
        return cls(values, status, position(snapshot), waiting_for(snapshot), failed)

    @classmethod
    def _of_output(cls, output: Mapping[str, Any]) -> Standing:
        # A run that returns stopped at a human task (its interrupt is in the output) or finished: a
        # failed step's work raises instead.
        values = cast(StructuredState, {k: v for k, v in output.items() if k != INTERRUPT})
        interrupts = output.get(INTERRUPT) or []
        waiting = dict(interrupts[0].value) if interrupts and isinstance(interrupts[0].value, Mapping) else None
        task = waiting.get("task") if waiting else None
        status = values.get("status") or ("in_progress" if interrupts else "completed")
        return cls(values, status, task if isinstance(task, str) else None, waiting, None)


def step_superstep(event: Event) -> int | None:
    """The superstep a step's completion event was written in: the last part of its key (``step_key``), up to
    the place in the chain of a step its node ran after its own."""
    last = (event.key or "").rpartition(":")[2].partition(".")[0]
    return int(last) if last.isdigit() else None


def _started_over(spec: StructuredSpec, step: str, snapshot: StateSnapshot) -> Command[str] | None:
    """For a step that failed on an answer saying it failed, which would fail it again if it ran again with it: the
    move that starts it over. Its user's report: it asks them for its result again. A person's, answering in its
    agent's place (its circuit was open): its agent is called again, under a new key (or a person asked again
    while its circuit stays open). None: the step runs again as it failed."""
    if spec.step(step).mode == "user" and reported_failed(snapshot.values.get("step_input")):
        return Command(goto=await_node(step), update={"step_input": None})
    failed = failed_task_of(snapshot)
    if failed is not None and failed.interrupts and _raised(failed.error, AgentReportedFailureError):
        return Command(goto=step)
    return None


def _raised(error: object, kind: type[BaseException]) -> bool:
    """Whether a task's recorded error is a ``kind``: read back from a checkpoint, it is its text (``"Kind(...)"``,
    see :func:`~graphs.kernel.engine.cancelled`)."""
    return isinstance(error, kind) or (isinstance(error, str) and error.startswith(f"{kind.__name__}("))


def stuck_compensation(snapshot: StateSnapshot) -> tuple[str, dict[str, Any]] | None:
    """For a saga whose compensation stopped at a handler that failed for good: the step whose failure
    started the compensation, and the compensation's failure."""
    values = snapshot.values
    cause, failure = values.get("failure"), values.get("compensation_failure")
    if values.get("status") != "failed" or snapshot.next or not (isinstance(cause, Mapping) and failure):
        return None
    return str(cause["step"]), dict(failure)


def position(snapshot: StateSnapshot) -> str | None:
    """The step the journey stands at: the one it waits on, or whose work is pending or failed."""
    for task in snapshot.tasks:
        if task.name in (COMPENSATE_NODE, START):
            continue
        return task.name.removesuffix(AWAIT_SUFFIX)
    for node in snapshot.next:
        if node != COMPENSATE_NODE:
            return node.removesuffix(AWAIT_SUFFIX)
    return None


def _names_step(step_result: Any) -> bool:
    return isinstance(step_result, Mapping) and step_result.get("step_id") is not None


def _initial_state(context: Mapping[str, Any] | None) -> StructuredState:
    """A journey's first state: in progress, with its start context unless that is empty (nodes read a missing
    context as empty; an empty one would cost a checkpoint blob and its index entries in every journey)."""
    initial: StructuredState = {"status": "in_progress"}
    if context:
        initial["context"] = dict(context)
    return initial

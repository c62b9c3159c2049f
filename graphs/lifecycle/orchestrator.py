"""The client lifecycle engine's API (SPEC L1 to L6): ``runtime.lifecycle``.

    journey = await runtime.lifecycle.start_journey("client-123", metrics=READY_TO_START)
    await runtime.lifecycle.record_metrics(journey["journey_id"], {"search_precision": 0.86, ...})
    result = await runtime.lifecycle.promote(journey["journey_id"])   # a ValidationResult

Every move is checked against the journey's current state before anything is written: an event the
stage does not allow raises :class:`InvalidTransitionError` naming the allowed events and changes
nothing. Metrics recorded through :meth:`record_metric` are watched: one that crosses a rollback
threshold of the current stage starts an automatic rollback.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Command, StateSnapshot

from agents.protocol import Agent
from checkpoints.errors import ConcurrentUpdateError
from checkpoints.events import Event, NewEvent
from checkpoints.flow import TERMINATED
from checkpoints.index import Instance
from checkpoints.lifecycle import LifecycleStore, journey_moved, metric_rows, rollbacks_given_up
from checkpoints.ownership import Viewer
from graphs.errors import (
    EntryCriteriaNotMetError,
    EvaluatorError,
    InvalidInputError,
    InvalidMetricError,
    InvalidRollbackTargetError,
    InvalidTransitionError,
    JourneyFinishedError,
    JourneyNotFoundError,
    RollbackFailedError,
    TransitionOptionsError,
    UnitDependencyError,
    UnitOfWorkFailedError,
    UnknownTransitionEventError,
    UnknownUnitOfWorkError,
)
from graphs.kernel.designs import DesignBook, PatternName, new_instance_id, parse_spec
from graphs.kernel.engine import DEFAULT_RUN, RunOptions, in_flight, refuse_terminated
from graphs.kernel.flow import QUEUED, ExistingStart, StartControls
from graphs.kernel.instances import DEADLINE_FAILURE, Recoverable
from graphs.lifecycle.catalog import default_lifecycle_spec
from graphs.lifecycle.machine import (
    ACTIVE_STAGES,
    AWAIT,
    FINAL_STAGES,
    RUN_UNIT,
    LifecycleDeps,
    LifecycleSpec,
    LifecycleState,
    RollbackTrigger,
    TransitionEvent,
    allowed_events,
    build_lifecycle_graph,
    default_rollback_target,
    journey_view,
    rollback_targets,
)
from graphs.lifecycle.metrics import LifecycleMetrics
from nodes.criteria_gate import (
    METRIC_NAME,
    CriteriaCheck,
    MetricSource,
    TableMetricSource,
    ValidationResult,
    evaluate_criteria,
)
from nodes.services import failure

Graph = CompiledStateGraph[Any, Any, Any, Any]
PATTERN: PatternName = "lifecycle"
# The events a completed journey's evaluation measures: its units' agent calls.
MEASURED = ("task.completed",)
PROMOTIONS = {"sandbox": TransitionEvent.PROMOTE_TO_PILOT, "pilot": TransitionEvent.PROMOTE_TO_PRODUCTION}
GATED_EVENTS = (TransitionEvent.PROMOTE_TO_PILOT, TransitionEvent.PROMOTE_TO_PRODUCTION, TransitionEvent.MARK_COMPLETE)
CREATED = "lifecycle.created"  # a journey's first event: its client and metadata
# The options transition() takes with each event: (required, optional). Each goes to the event's own method.
EVENT_OPTIONS: dict[TransitionEvent, tuple[tuple[str, ...], tuple[str, ...]]] = {
    TransitionEvent.START_JOURNEY: ((), ("metrics",)),  # a start refused before: only its metrics are new
    TransitionEvent.PROMOTE_TO_PILOT: ((), ("metadata",)),
    TransitionEvent.PROMOTE_TO_PRODUCTION: ((), ("metadata",)),
    TransitionEvent.MARK_COMPLETE: ((), ("metadata",)),
    TransitionEvent.INITIATE_ROLLBACK: (("reason",), ("trigger", "rollback_to", "complete", "from_stage")),
    TransitionEvent.COMPLETE_ROLLBACK: ((), ()),
    TransitionEvent.CANCEL_JOURNEY: ((), ("reason",)),
}
# transition() also runs an on-demand unit of work of the current stage (not a stage change): over HTTP and
# the Agent Server API it is the only way to run the units a stage requires before it can be left.
UNIT_OPTIONS: tuple[tuple[str, ...], tuple[str, ...]] = (("uow_id",), ())


class LifecycleOrchestrator:
    """The client lifecycle's API: the seven events, units of work, metrics with automatic rollback,
    and the journey's views (state, validations, rollbacks, units, card, dashboard)."""

    def __init__(self, designs: DesignBook, *, metrics: MetricSource | None = None) -> None:
        self._designs = designs
        self._engine = designs.engine
        self._store = designs.engine.store
        self._rows = LifecycleStore(self._store.engine, self._store.sealer)
        self.deps = LifecycleDeps(self._rows, metrics or TableMetricSource(self._store.engine))
        self.metrics = LifecycleMetrics(self._store.engine)
        # Every lifecycle graph on this book runs on these deps, whoever asks for it (the server, recovery).
        designs.use_builder(PATTERN, lambda spec, services: build_lifecycle_graph(spec, services, self.deps))
        designs.instances.register(
            Recoverable(
                (PATTERN,),
                self._instance_graph,
                self._start_input,
                expire=self._expire,
                terminated=self._terminated,
                controls=self._controls,
            )
        )

    # --- plugging in -------------------------------------------------------------------------------

    def use_metric_source(self, source: MetricSource) -> None:
        """Read metric values from ``source`` from now on (the default reads ``record_metric``'s table)."""
        if not all(callable(getattr(source, method, None)) for method in ("latest", "window")):
            raise InvalidInputError(
                f"a metric source needs async methods latest() and window() (see MetricSource), got {source!r}"
            )
        self.deps.metrics = source

    def use_notifier(self, notifier: Agent, *, intent: str = "notify_stakeholders") -> None:
        """Send rollback notifications through ``notifier`` (an agent: it receives the notification as
        its payload and goes through the shared agent path, so its call is retried and logged)."""
        if not callable(notifier):
            raise InvalidInputError(f"a notifier is an agent: a callable taking an AgentRequest, got {notifier!r}")
        self._designs.registry.register(intent, notifier, name="lifecycle notifier", replace=True)

    # --- designs ------------------------------------------------------------------------------------

    async def design(
        self,
        spec: LifecycleSpec | Mapping[str, Any] | None = None,
        *,
        thresholds: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
    ) -> dict[str, Any]:
        """Check and store a lifecycle design (the default one, or ``spec``, with ``thresholds`` overridden)."""
        design_id, chosen = await self._design_for(spec, thresholds)
        return {"design_id": design_id, "pattern": PATTERN, "spec": chosen.model_dump(mode="json")}

    async def _design_for(
        self,
        spec: LifecycleSpec | Mapping[str, Any] | None,
        thresholds: Mapping[str, Mapping[str, Mapping[str, Any]]] | None,
    ) -> tuple[str, LifecycleSpec]:
        chosen = (
            parse_spec(LifecycleSpec, spec, spec_name="lifecycle") if spec is not None else default_lifecycle_spec()
        )
        if thresholds:
            if not isinstance(thresholds, Mapping):
                raise InvalidInputError("thresholds must be a mapping shaped like STAGE_METRICS")
            chosen = chosen.with_thresholds(thresholds)
        # Saved under its content's id: every journey of the same design (in any process) shares it.
        design, saved = await self._designs.save_shared(PATTERN, chosen, prefix=PATTERN)
        return design.journey_id, saved

    async def _spec(self, design_id: str) -> LifecycleSpec:
        spec: LifecycleSpec = (await self._designs.load(design_id, (PATTERN,)))[1]
        return spec

    def _graph(self, spec: LifecycleSpec) -> Graph:
        graph: Graph = self._designs.graph(PATTERN, spec)
        return graph

    async def _design_of(self, journey_id: str, *, acting: bool = False) -> str:
        """The design a journey runs. ``acting``: for a call that changes it, which a terminated journey
        refuses (a run's own lock checks again, with :meth:`JourneyEngine.acting`)."""
        _check_id(journey_id, "journey_id")
        instance = await self._store.index.get_instance(journey_id)
        if instance is None or instance.pattern != PATTERN:
            raise JourneyNotFoundError(f"no client lifecycle journey {journey_id!r}", journey_id=journey_id)
        if acting:
            refuse_terminated(instance)
        return instance.journey_id

    async def _load(self, journey_id: str) -> tuple[LifecycleSpec, Graph]:
        design_id = await self._design_of(journey_id)
        spec = await self._spec(design_id)
        return spec, self._graph(spec)

    # --- the seven events -----------------------------------------------------------------------

    async def start_journey(
        self,
        client_id: str,
        *,
        journey_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        metrics: Mapping[str, float | bool] | None = None,
        spec: LifecycleSpec | Mapping[str, Any] | None = None,
        thresholds: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
        run_options: RunOptions = DEFAULT_RUN,
        start_key: str | None = None,
        start_key_window: str | float | timedelta | None = None,
    ) -> dict[str, Any]:
        """Start a client's journey in SANDBOX, once the sandbox entry criteria hold.

        ``metrics`` are recorded first (e.g. ``contract_signed``); ``spec``/``thresholds`` customise this
        journey's criteria. A journey whose start was refused can be started again with its ``journey_id``.
        The start goes through the one instance lifecycle (``Instances.create``), like every pattern's:
        ``start_key`` (within ``start_key_window``, default 24 hours) answers the journey an earlier start
        with that key began; the spec's ``concurrency`` limit (keyed on ``{"client_id": …, **metadata}``)
        queues or refuses the start above it, and its ``deadline`` is armed.
        """
        if not isinstance(client_id, str) or not client_id.strip():
            raise InvalidInputError("client_id must be a non-empty string")
        if metadata is not None and not isinstance(metadata, Mapping):
            raise InvalidInputError(f"metadata must be a mapping, got {type(metadata).__name__}")
        values = _checked_metrics(metrics or {}, allow_empty=True)
        if journey_id is not None:
            _check_id(journey_id, "journey_id")
        design_id, chosen = await self._design_for(spec, thresholds)
        evaluation = self._designs.instances.evaluation
        if chosen.evaluation is not None and (missing := evaluation.missing(chosen.evaluation)):
            raise EvaluatorError(f"register the evaluators {missing} in runtime.evaluators first", missing=missing)
        start_input = {"client_id": client_id, **dict(metadata or {})}
        controls = StartControls.of(
            start_key,
            start_key_window,
            chosen.concurrency,
            start_input,
            chosen.deadline,
            journey_type=f"{PATTERN}.{chosen.journey_type}",
        )
        journey_id = journey_id or new_instance_id(self._engine, PATTERN)
        try:
            return await self._start(journey_id, client_id, design_id, chosen, metadata, values, controls, run_options)
        except ExistingStart as existing_start:  # another start took the key meanwhile
            return await self._started(existing_start.instance_id)

    async def _start(
        self,
        journey_id: str,
        client_id: str,
        design_id: str,
        chosen: LifecycleSpec,
        metadata: Mapping[str, Any] | None,
        values: Mapping[str, float],
        controls: StartControls | None,
        run_options: RunOptions,
    ) -> dict[str, Any]:
        async with self._engine.acting(journey_id) as existing:
            if existing is not None and existing.status == QUEUED:
                raise ExistingStart(journey_id)
            if existing is not None:
                if existing.pattern != PATTERN or existing.user_id != client_id:
                    raise InvalidInputError(
                        f"journey {journey_id!r} exists and belongs to {existing.pattern} client {existing.user_id!r}",
                        journey_id=journey_id,
                    )
                design_id = existing.journey_id
                chosen = await self._spec(design_id)
                graph = self._graph(chosen)
                snapshot = await self._before_move(graph, journey_id, run_options)
                if snapshot.values:  # its start was refused before: try again
                    self._expect(snapshot, TransitionEvent.START_JOURNEY)
                    await self._record(journey_id, values)
                    snapshot = await self._resume(
                        graph, journey_id, snapshot, {"event": TransitionEvent.START_JOURNEY}, run_options
                    )
            else:
                created = NewEvent(
                    CREATED,
                    {"client_id": client_id, "design_id": design_id, "metadata": dict(metadata or {})},
                )
                graph = self._graph(chosen)
                registered = await self._designs.instances.create(
                    journey_id, design_id, PATTERN, client_id, created, graph, controls=controls
                )
                if registered is not None and registered.status == QUEUED:  # it starts once a slot frees
                    await self._record(journey_id, values)
                    return self._queued_view(registered, chosen)
            if existing is None or not snapshot.values:  # new, or a crash cut its first run short: run it
                await self._record(journey_id, values)
                initial = _initial_state(journey_id, client_id, design_id, metadata)
                snapshot = await self._run(graph, journey_id, initial, run_options)
        outcome = _outcome(snapshot)
        validation = ValidationResult.from_dict(outcome["validation"])
        if not validation.passed:
            failed = {c.name for c in validation.failed_checks}
            needed = [f"{c.metric} {c.expected}" for c in chosen.stage("sandbox").entry_criteria if c.label in failed]
            fix = f"; record {', '.join(needed)} in the start's metrics" if needed else ""
            raise EntryCriteriaNotMetError(
                f"journey {journey_id!r} cannot start: {validation.summary}{fix}, and start it again with "
                f"journey_id {journey_id!r}",
                validation=validation,
            )
        _raise_for_unit(outcome, journey_id)
        return {**journey_view(snapshot.values, chosen), "validation": validation.to_dict()}

    async def _started(self, journey_id: str) -> dict[str, Any]:
        """The start view of a journey an earlier start began (its start key named it)."""
        instance = await self._store.index.get_instance(journey_id)
        if instance is not None and instance.status == QUEUED:
            return self._queued_view(instance, await self._spec(instance.journey_id))
        state = await self.get_journey_state(journey_id)
        validation = next(reversed(await self.validation_history(journey_id)), None)
        return {**state, "validation": validation.to_dict() if validation else None}

    @staticmethod
    def _queued_view(instance: Instance, spec: LifecycleSpec) -> dict[str, Any]:
        """A journey queued behind its spec's concurrency limit: no stage yet."""
        return {**journey_view(_queued_values(instance), spec), "allowed_events": [], "validation": None}

    async def promote(
        self,
        journey_id: str,
        *,
        from_stage: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        run_options: RunOptions = DEFAULT_RUN,
    ) -> ValidationResult:
        """Promote SANDBOX → PILOT or PILOT → PRODUCTION if the current stage's exit criteria and the next
        stage's entry criteria all pass; then run the next stage's entry units. Returns the validation:
        when it did not pass, nothing moved (the validation itself is stored).

        ``from_stage``: the stage the caller saw the journey in. A promotion that finds it elsewhere (a second
        click, after the first promoted it) is refused with :class:`ConcurrentUpdateError` and does nothing."""
        asked_in = _stage_named(from_stage)
        return await self._gated_move(journey_id, None, metadata, run_options, asked_in=asked_in)

    async def mark_complete(
        self, journey_id: str, *, metadata: Mapping[str, Any] | None = None, run_options: RunOptions = DEFAULT_RUN
    ) -> ValidationResult:
        """PRODUCTION → COMPLETED once production's success metrics pass. Returns the validation."""
        return await self._gated_move(journey_id, TransitionEvent.MARK_COMPLETE, metadata, run_options)

    async def _gated_move(
        self,
        journey_id: str,
        event: TransitionEvent | None,
        metadata: Mapping[str, Any] | None,
        run_options: RunOptions,
        *,
        asked_in: str | None = None,
    ) -> ValidationResult:
        request_metadata = _metadata(metadata)
        spec, graph = await self._load(journey_id)
        # A promotion promotes from the stage the journey is in when it is asked for (or the one its caller
        # names): one that waited while another call moved the journey must not go on to the next stage's gate.
        named = asked_in is not None
        if event is None and asked_in is None:
            asked_in = await self._stage_now(graph, journey_id)
        async with self._engine.acting(journey_id):
            snapshot = await self._before_move(graph, journey_id, run_options)
            stage = snapshot.values.get("current_stage")
            if event is None:  # promote: the promotion event of the current stage
                self._expect_stage(journey_id, asked_in, stage, "promote", named=named)
                chosen = PROMOTIONS.get(str(stage))
                if chosen is None or not _waiting(snapshot):
                    raise InvalidTransitionError(
                        f"journey {journey_id!r} cannot be promoted from stage {stage!r}; "
                        f"allowed events: {', '.join(self._allowed(snapshot)) or 'none'}",
                        current_stage=stage,
                        event="promote",
                        allowed=self._allowed(snapshot),
                    )
                event = chosen
            self._expect(snapshot, event)
            request = {"event": event.value, "metadata": request_metadata}
            snapshot = await self._resume(graph, journey_id, snapshot, request, run_options)
            if snapshot.values.get("current_stage") == "completed" and spec.evaluation is not None:
                # The journey's run has ended: its tier judges it (the instance may fail or wait for review).
                await self._designs.instances.evaluation.judge(journey_id, PATTERN, spec.evaluation, MEASURED)
        result = _gate_result(snapshot, journey_id)
        if result.passed:
            await self._watch_entered(journey_id, run_options)
        return result

    async def _watch_entered(self, journey_id: str, run_options: RunOptions) -> dict[str, Any] | None:
        # A stage entered (again) while one of its rollback thresholds already holds rolls back now, not
        # at the next recorded metric: a pilot re-entered with satisfaction still at 3.2 does not stay.
        return await self._watch(journey_id, await self._design_of(journey_id), None, run_options)

    async def transition(
        self, journey_id: str, event: str, *, run_options: RunOptions = DEFAULT_RUN, **options: Any
    ) -> dict[str, Any]:
        """Apply any of the seven events by name, as the seed's ``JourneyStateMachine.transition`` does, or
        ``run_unit_of_work`` (option ``uow_id``): :meth:`run_unit_of_work`, answered with the journey and the
        run as ``unit``.

        ``options`` go to the event's own method (``reason``, ``trigger``, ``rollback_to``, ``complete``
        for a rollback; ``reason`` for a cancellation; ``metadata`` for a promotion or completion;
        ``metrics`` for a start refused before). An unknown event raises
        :class:`UnknownTransitionEventError`, a missing or unknown option :class:`TransitionOptionsError`,
        an event the current stage does not allow :class:`InvalidTransitionError`; none changes anything.
        """
        _spec, graph = await self._load(journey_id)
        if event == RUN_UNIT:
            _check_options(RUN_UNIT, options, UNIT_OPTIONS)
            unit = await self.run_unit_of_work(journey_id, options["uow_id"], run_options=run_options)
            return {**await self.get_journey_state(journey_id), "unit": unit}
        snapshot = await graph.aget_state(self._engine.config(journey_id))
        try:
            chosen = TransitionEvent(event)
        except ValueError:
            stage = snapshot.values.get("current_stage")
            raise UnknownTransitionEventError(
                f"unknown event {event!r}; the events are {', '.join(e.value for e in TransitionEvent)} "
                f"(and {RUN_UNIT} with the option uow_id, to run a unit of work of the current stage); "
                f"in stage {stage!r} these are allowed: {', '.join(self._allowed(snapshot)) or 'none'}",
                current_stage=stage,
                event=str(event),
                allowed=self._allowed(snapshot),
            ) from None
        _check_options(chosen.value, options, EVENT_OPTIONS[chosen])
        if not in_flight(snapshot):  # mid-run (another call's, or a cancelled one): judged under the lock
            self._expect(snapshot, chosen)
        if chosen == TransitionEvent.START_JOURNEY:
            instance = await self._store.index.get_instance(journey_id)
            assert instance is not None
            return await self.start_journey(
                instance.user_id, journey_id=journey_id, metrics=options.get("metrics"), run_options=run_options
            )
        if chosen in GATED_EVENTS:
            validation = await self._gated_move(journey_id, chosen, options.get("metadata"), run_options)
            return {**await self.get_journey_state(journey_id), "validation": validation.to_dict()}
        if chosen == TransitionEvent.INITIATE_ROLLBACK:
            rollback = await self.initiate_rollback(journey_id, **options, run_options=run_options)
            return {**rollback["journey"], "rollback": {k: v for k, v in rollback.items() if k != "journey"}}
        if chosen == TransitionEvent.COMPLETE_ROLLBACK:
            return await self.complete_rollback(journey_id, run_options=run_options)
        return await self.cancel(journey_id, options.get("reason"), run_options=run_options)

    async def cancel(
        self, journey_id: str, reason: str | None = None, *, run_options: RunOptions = DEFAULT_RUN
    ) -> dict[str, Any]:
        """Give the journey up (from any active stage, or from ROLLBACK)."""
        if reason is not None and not isinstance(reason, str):
            raise InvalidInputError("reason must be a string")
        spec, graph = await self._load(journey_id)
        async with self._engine.acting(journey_id):
            snapshot = await self._before_move(graph, journey_id, run_options)
            self._expect(snapshot, TransitionEvent.CANCEL_JOURNEY)
            metadata = {"cancel_reason": reason} if reason else {}
            request = {"event": TransitionEvent.CANCEL_JOURNEY.value, "metadata": metadata}
            snapshot = await self._resume(graph, journey_id, snapshot, request, run_options)
        return journey_view(snapshot.values, spec)

    async def initiate_rollback(
        self,
        journey_id: str,
        reason: str,
        *,
        trigger: RollbackTrigger | str = RollbackTrigger.CLIENT_REQUEST,
        rollback_to: str | None = None,
        complete: bool = False,
        from_stage: str | None = None,
        automatic: bool = False,
        run_options: RunOptions = DEFAULT_RUN,
    ) -> dict[str, Any]:
        """Roll the journey back: plan → rollback units → validation → notification.

        Returns to ``rollback_to`` or the previous stage. With ``complete`` the journey goes there as
        soon as the rollback validates; otherwise it waits in ROLLBACK for :meth:`complete_rollback`.
        A unit of work running meanwhile stops after its current tasks and is compensated.

        ``from_stage``: the stage the caller saw the journey in, which it rolls back. A rollback that finds the
        journey elsewhere (a second click, after the first rolled it back) is refused with
        :class:`ConcurrentUpdateError` (:class:`JourneyFinishedError` once it has ended) and does nothing; without
        it, the rollback rolls back the stage the journey is in when it is asked.
        """
        if not isinstance(reason, str) or not reason.strip():
            raise InvalidInputError("a rollback needs a reason (a non-empty string)")
        if rollback_to is not None and not isinstance(rollback_to, str):
            raise InvalidInputError(f"rollback_to must be a stage name, got {type(rollback_to).__name__}")
        for flag, value in (("complete", complete), ("automatic", automatic)):
            if not isinstance(value, bool):
                raise InvalidInputError(f"{flag} must be true or false, got {value!r}")
        try:
            chosen_trigger = RollbackTrigger(trigger)
        except ValueError:
            allowed = [t.value for t in RollbackTrigger]
            raise InvalidInputError(
                f"unknown rollback trigger {trigger!r}; triggers: {', '.join(allowed)}", allowed=allowed
            ) from None
        named = _stage_named(from_stage)
        spec, graph = await self._load(journey_id)
        # Checked first without the journey's lock, so a unit of work holding it can be told to stop.
        peek = await graph.aget_state(self._engine.config(journey_id))
        peeked = peek.values.get("current_stage")
        asked_in = peeked if named is None else named
        if named is not None and peeked in [s.value for s in (*ACTIVE_STAGES, *FINAL_STAGES)]:
            self._expect_stage(journey_id, named, peeked, "roll back", named=True)
        try:
            target = self._rollback_target(journey_id, peek, rollback_to, running=True)
        except InvalidTransitionError:
            # The peek may have caught another call's run mid-way (a rollback under way): a stage that has
            # moved once the journey is free is a conflict (ask again); one that has not is refused as peeked.
            async with self._engine.exclusive(journey_id):
                settled = await self._engine.settled_state(graph, journey_id, options=run_options)
            settled_stage = settled.values.get("current_stage")
            self._expect_stage(journey_id, asked_in, settled_stage, "roll back", named=named is not None)
            raise
        # A durable request: a unit of work running now, in this process or another, stops between waves.
        await self._rows.request_rollback(journey_id, reason, self._store.clock.now())
        try:
            async with self._engine.acting(journey_id):
                snapshot = await self._before_move(graph, journey_id, run_options)
                # Rolls back the stage it was asked in, once: not the stage another rollback returned to.
                self._expect_stage(
                    journey_id, asked_in, snapshot.values.get("current_stage"), "roll back", named=named is not None
                )
                target = self._rollback_target(journey_id, snapshot, rollback_to)
                request = {
                    "event": TransitionEvent.INITIATE_ROLLBACK.value,
                    "reason": reason,
                    "trigger": chosen_trigger.value,
                    "to_stage": target,
                    "automatic": automatic,
                    "complete": complete,
                    "snapshot": await self._snapshot(graph, journey_id, snapshot, target),
                }
                snapshot = await self._resume(graph, journey_id, snapshot, request, run_options)
        finally:
            await self._rows.clear_rollback_requests(journey_id)
        outcome = _outcome(snapshot)
        record = await self.rollback(journey_id, str(outcome["rollback_id"]))
        return {**record, "journey": journey_view(snapshot.values, spec), "notification": outcome.get("notification")}

    async def complete_rollback(self, journey_id: str, *, run_options: RunOptions = DEFAULT_RUN) -> dict[str, Any]:
        """ROLLBACK → the rollback's target stage. A rollback that failed to validate is run again first."""
        spec, graph = await self._load(journey_id)
        async with self._engine.acting(journey_id):
            snapshot = await self._before_move(graph, journey_id, run_options)
            self._expect(snapshot, TransitionEvent.COMPLETE_ROLLBACK)
            rollback_id = str((snapshot.values.get("rollback") or {}).get("rollback_id"))
            snapshot = await self._resume(
                graph, journey_id, snapshot, {"event": TransitionEvent.COMPLETE_ROLLBACK.value}, run_options
            )
        outcome = _outcome(snapshot)
        record = await self.rollback(journey_id, rollback_id)
        if not outcome.get("ok"):
            raise RollbackFailedError(
                f"rollback {rollback_id!r} of journey {journey_id!r} did not complete: "
                f"{outcome.get('error') or record.get('status')}; complete it again or cancel the journey",
                rollback=record,
            )
        again = await self._watch_entered(journey_id, run_options)
        return {**(again["journey"] if again else journey_view(snapshot.values, spec)), "rollback": record}

    async def run_unit_of_work(
        self, journey_id: str, uow_id: str, *, run_options: RunOptions = DEFAULT_RUN
    ) -> dict[str, Any]:
        """Run an on-demand unit of work of the current stage; returns its result (status and tasks)."""
        _check_id(uow_id, "uow_id")
        spec, graph = await self._load(journey_id)
        async with self._engine.acting(journey_id):
            snapshot = await self._before_move(graph, journey_id, run_options)
            values = snapshot.values
            stage = values.get("current_stage")
            if stage not in [s.value for s in ACTIVE_STAGES] or not _waiting(snapshot):
                raise InvalidTransitionError(
                    f"units of work run in an active stage; journey {journey_id!r} is in {stage!r}",
                    current_stage=stage,
                    event=RUN_UNIT,
                    allowed=allowed_events(stage),
                )
            stage_units = [u.uow_id for u in spec.stage(stage).units]
            if uow_id not in stage_units:
                raise UnknownUnitOfWorkError(
                    f"stage {stage} has no unit of work {uow_id!r}; its units: {', '.join(stage_units)}",
                    allowed=stage_units,
                    uow_id=uow_id,
                )
            done = values.get("units") or {}
            missing = [d for d in spec.units()[uow_id].dependencies if done.get(d) != "completed"]
            if missing:
                raise UnitDependencyError(
                    f"unit {uow_id!r} depends on {', '.join(missing)}, which must complete first",
                    allowed=[
                        u for u in stage_units if all(done.get(d) == "completed" for d in spec.units()[u].dependencies)
                    ],
                    missing=missing,
                )
            snapshot = await self._resume(
                graph, journey_id, snapshot, {"event": RUN_UNIT, "uow_id": uow_id}, run_options
            )
        outcome = _outcome(snapshot)
        return dict(outcome["units"][-1])

    # --- metrics and automatic rollback ------------------------------------------------------------

    async def record_metric(
        self, journey_id: str, metric: str, value: float | bool, *, at: datetime | None = None
    ) -> dict[str, Any]:
        return await self.record_metrics(journey_id, {metric: value}, at=at)

    async def record_metrics(
        self,
        journey_id: str,
        values: Mapping[str, float | bool],
        *,
        at: datetime | None = None,
        run_options: RunOptions = DEFAULT_RUN,
    ) -> dict[str, Any]:
        """Record metric values (at the clock's now, or an earlier ``at``); if one crosses a rollback
        threshold of the current stage, roll back automatically. Returns what was recorded and the rollback."""
        checked = _checked_metrics(values, allow_empty=False)
        now = self._store.clock.now()
        if at is not None and not isinstance(at, datetime):
            raise InvalidMetricError(f"a metric's time must be a datetime, got {type(at).__name__}")
        if at is not None and (at.tzinfo is None or at > now):
            raise InvalidMetricError(f"a metric's time must be timezone-aware and not after now ({now.isoformat()})")
        when = at or now
        design_id = await self._design_of(journey_id, acting=True)
        position = await self._rows.position(journey_id)
        if position is not None and position[0] in FINAL_STAGES:
            raise JourneyFinishedError(
                f"journey {journey_id!r} is {position[0]}: no metric is recorded for an ended journey (no gate or "
                "rollback threshold reads it any more)",
                allowed=[],
                current_stage=position[0],
            )
        await self._record(journey_id, checked, when)
        rollback = await self._watch(journey_id, design_id, set(checked), run_options, position)
        return {"journey_id": journey_id, "recorded": checked, "recorded_at": when.isoformat(), "rollback": rollback}

    async def check_rollback_triggers(self, journey_id: str) -> dict[str, Any] | None:
        """Evaluate every rollback threshold of the current stage now (for metric sources that are not fed
        through :meth:`record_metric`); roll back if one fires."""
        return await self._watch(journey_id, await self._design_of(journey_id, acting=True), None, DEFAULT_RUN)

    async def _watch(
        self,
        journey_id: str,
        design_id: str,
        metrics: set[str] | None,
        run_options: RunOptions,
        position: tuple[str, str] | None = None,
    ) -> dict[str, Any] | None:
        """Roll back if a rollback threshold of the current stage holds. ``position``: the journey's (stage,
        status) when the caller has just read it."""
        spec = await self._spec(design_id)
        watched = {t.metric for stage in ACTIVE_STAGES for t in spec.stage(stage).rollback_thresholds}
        if metrics is not None and not metrics & watched:
            return None  # no threshold watches these metrics: no need to look at the journey
        position = position or await self._rows.position(journey_id)
        if position is None or position[1] != "active":
            return None
        thresholds = [t for t in spec.stage(position[0]).rollback_thresholds if metrics is None or t.metric in metrics]
        if not thresholds:
            return None
        checks = await evaluate_criteria(thresholds, self.deps.metrics, journey_id, self._store.clock.now())
        for threshold, check in zip(thresholds, checks, strict=True):
            if check.actual is not None and check.passed:  # the threshold's condition holds: it fires
                reason = f"automatic: {threshold.label}: {threshold.metric} is {check.actual:g} ({threshold.expected})"
                try:
                    # From the stage whose threshold fired only: not the stage another rollback left it in.
                    return await self.initiate_rollback(
                        journey_id,
                        reason,
                        trigger=threshold.trigger,
                        complete=spec.auto_complete_rollback,
                        from_stage=position[0],
                        automatic=True,
                        run_options=run_options,
                    )
                except (InvalidTransitionError, ConcurrentUpdateError):
                    return None  # it moved on meanwhile (another rollback, a cancel): nothing to do
        return None

    async def _record(self, journey_id: str, values: Mapping[str, float], at: datetime | None = None) -> None:
        if not values:
            return
        when = at or self._store.clock.now()
        event = NewEvent("metric.recorded", {"values": dict(values), "at": when.isoformat()})
        await self._store.events.append(journey_id, [event], also=[metric_rows(journey_id, values, when)])

    # --- views --------------------------------------------------------------------------------------

    async def get_journey_state(self, journey_id: str) -> dict[str, Any]:
        """The journey's state; with a workflow tier, its ``evaluation`` (once completed) and the
        instance's ``run_status`` (``completed``, or ``failed``/``review`` after a breach)."""
        spec, graph = await self._load(journey_id)
        async with self._engine.reading(journey_id) as held:
            if held:
                snapshot = await self._engine.settled_state(graph, journey_id)
            else:  # another call is moving it (a unit of work's agents): as last committed
                snapshot = await graph.aget_state(self._engine.config(journey_id))
            instance = await self._store.index.get_instance(journey_id)
        values = snapshot.values
        if instance is not None and instance.status == QUEUED:
            values = _queued_values(instance)
        view = journey_view(values, spec)
        # Queued: registered behind its limit, no stage yet. Terminated: it stopped where it stood.
        if instance is not None and instance.status in (QUEUED, TERMINATED):
            view |= {"status": instance.status, "allowed_events": []}
        if spec.evaluation is not None:
            view["run_status"] = instance.status if instance is not None else None
            view["evaluation"] = await self._designs.instances.evaluation.verdict(journey_id)
        return view

    async def review_journey(self, journey_id: str, *, approved: bool, by: str, note: str = "") -> dict[str, Any]:
        """A person's decision on a completed journey its tier's evaluation held for review: ``approved``
        completes its run, otherwise it fails."""
        await self._load(journey_id)
        async with self._engine.exclusive(journey_id):
            found = await self._store.index.get_instance(journey_id)
            assert found is not None  # _load found it
            await self._designs.instances.evaluation.review(found, approved=approved, by=by, note=note)
        return await self.get_journey_state(journey_id)

    async def stages(self, journey_ids: Sequence[str]) -> dict[str, str]:
        """Journey id → its current stage, for listings (one query; journeys not started are left out)."""
        return await self._rows.stages(journey_ids)

    async def state_at(self, journey_id: str, checkpoint_id: str) -> dict[str, Any]:
        """The journey as it was at one of its checkpoints (e.g. a rollback's snapshot)."""
        spec, graph = await self._load(journey_id)
        _check_id(checkpoint_id, "checkpoint_id")
        config = self._engine.config(journey_id)
        config["configurable"]["checkpoint_id"] = checkpoint_id
        snapshot = await graph.aget_state(config)
        if not snapshot.values:
            raise JourneyNotFoundError(f"journey {journey_id!r} has no checkpoint {checkpoint_id!r}")
        return journey_view(snapshot.values, spec)

    async def validation_history(self, journey_id: str) -> list[ValidationResult]:
        await self._design_of(journey_id)
        return [ValidationResult.from_dict(row) for row in await self._rows.validations(journey_id)]

    async def rollback_history(self, journey_id: str) -> list[dict[str, Any]]:
        await self._design_of(journey_id)
        return [_rollback_view(row) for row in await self._rows.rollbacks(journey_id)]

    async def rollback(self, journey_id: str, rollback_id: str) -> dict[str, Any]:
        await self._design_of(journey_id)
        _check_id(rollback_id, "rollback_id")
        row = await self._rows.rollback(journey_id, rollback_id)
        if row is None:
            raise JourneyNotFoundError(f"journey {journey_id!r} has no rollback {rollback_id!r}")
        return _rollback_view(row)

    async def units_of_work(self, journey_id: str) -> list[dict[str, Any]]:
        """Every run of every unit of work of the journey, oldest first."""
        await self._design_of(journey_id)
        return await self._rows.units_of_work(journey_id)

    async def journey_card(self, journey_id: str) -> dict[str, Any]:
        """The dashboard card of one journey, with the seed's fields (``GleanDashboardPublisher``):
        ``client_id, current_stage, started_at, stage_duration_days`` (whole days, as the seed counts
        them), ``exit_criteria`` (the current stage's exit criteria evaluated now: nothing is stored or
        moved) and ``recent_activities``; with the stage's unit progress and the last stored validation."""
        state = await self.get_journey_state(journey_id)
        spec, _graph = await self._load(journey_id)
        stage = state["current_stage"]
        now = self._store.clock.now()
        entered = state.get("stage_started_at")
        active = stage in [s.value for s in ACTIVE_STAGES]
        stage_units = [u.uow_id for u in spec.stage(stage).units] if active else []
        done = [u for u in stage_units if state["units"].get(u) == "completed"]
        validations = await self.validation_history(journey_id)
        events = await self._store.events.list(journey_id)
        exit_now = await self._exit_criteria_now(journey_id, spec, state, now) if active else None
        return {
            "journey_id": journey_id,
            "client_id": state["client_id"],
            "current_stage": stage,
            "status": state["status"],
            "started_at": state["started_at"],
            "stage_duration_days": (now - datetime.fromisoformat(entered)).days if entered else None,
            "exit_criteria": exit_now.to_dict() if exit_now else None,
            "stage_progress": {"completed_units": len(done), "units": len(stage_units)},
            "last_validation": validations[-1].to_dict() if validations else None,
            "recent_activities": [
                {"type": e.type, "step": e.step, "at": e.created_at.isoformat()} for e in events[-10:]
            ],
        }

    async def _exit_criteria_now(
        self, journey_id: str, spec: LifecycleSpec, state: Mapping[str, Any], now: datetime
    ) -> ValidationResult:
        name = str(state["current_stage"])
        stage = spec.stage(name)
        checks = await evaluate_criteria(stage.exit_criteria, self.deps.metrics, journey_id, now)
        for uow_id in stage.required_units:
            status = state["units"].get(uow_id) or "not run yet"
            passed = status == "completed"
            message = f"unit of work {uow_id!r} has completed" if passed else f"unit of work {uow_id!r} is {status}"
            checks.append(CriteriaCheck(f"unit:{uow_id}", passed, status, "completed", message))
        event = PROMOTIONS.get(name, TransitionEvent.MARK_COMPLETE)
        return ValidationResult(
            f"{journey_id}:exit-now", journey_id, "exit_criteria", event.value, name, None, tuple(checks), now
        )

    async def dashboard(self, *, viewer: Viewer | None = None) -> dict[str, Any]:
        """Journey visibility across all clients (or those ``viewer`` may see): every lifecycle metric with
        the seed's targets."""
        return await self.metrics.seen_by(viewer).summary()

    async def _expire(self, instance: Instance, graph: Graph, _on_expiry: str, passed: NewEvent) -> None:
        """A journey whose deadline passed (under ``exclusive``, from ``Instances.expire``): it is cancelled
        where its stage allows (so no event moves it any more), and the instance fails."""
        journey_id = instance.instance_id
        snapshot = await self._engine.settled_state(graph, journey_id)
        await self._store.events.append(journey_id, [passed])
        if TransitionEvent.CANCEL_JOURNEY.value in self._allowed(snapshot):
            request = {"event": TransitionEvent.CANCEL_JOURNEY.value, "metadata": {"cancel_reason": "deadline"}}
            await self._run(graph, journey_id, Command(resume=request), DEFAULT_RUN)
        await self._store.events.append(journey_id, [failure(PATTERN, "deadline", DEADLINE_FAILURE)], status="failed")

    @staticmethod
    def _terminated(journey_id: str, at: datetime) -> list[Any]:
        """Its own rows, ended with it: its state row, and a rollback it waited in."""
        return [journey_moved(journey_id, status=TERMINATED), rollbacks_given_up(journey_id, at)]

    async def _instance_graph(self, instance: Instance) -> Graph:
        return self._graph(await self._spec(instance.journey_id))

    async def _controls(self, instance: Instance) -> StartControls | None:
        """The journey's concurrency limit and key value, from the client and metadata it started with (keyed on
        ``{"client_id": …, **metadata}`` as :meth:`start_journey` keys it), which a retry of it once it failed
        runs under as its start did."""
        spec = await self._spec(instance.journey_id)
        if spec.concurrency is None:
            return None
        [created, *_] = await self._store.events.list(instance.instance_id, types=[CREATED])
        start_input = {"client_id": created.payload["client_id"], **dict(created.payload.get("metadata") or {})}
        journey_type = f"{PATTERN}.{spec.journey_type}"
        return StartControls.of(None, None, spec.concurrency, start_input, journey_type=journey_type)

    @staticmethod
    async def _start_input(instance: Instance, created: Event) -> dict[str, Any]:
        """The first run's input, from the ``lifecycle.created`` event (see :meth:`start_journey`)."""
        data = created.payload
        return _initial_state(
            instance.instance_id, str(data["client_id"]), str(data["design_id"]), data.get("metadata")
        )

    # --- helpers ---------------------------------------------------------------------------------

    async def _before_move(self, graph: Graph, journey_id: str, run_options: RunOptions) -> StateSnapshot:
        """The journey's state under its lock, for a call that moves it on (an event, a unit of work): work a
        run cancelled on purpose stopped (``JourneyEngine.halt``) goes on first, as a run without input would,
        so the event is judged where that work leaves the journey, not refused mid-unit. Not past the journey's
        deadline (:class:`DeadlineExceededError`): its stage could not cancel it mid-unit, and nothing runs after."""
        return await self._designs.instances.before_move(graph, journey_id, run_options)

    async def _stage_now(self, graph: Graph, journey_id: str) -> str | None:
        """The journey's stage as last checkpointed, read without its lock (a move in flight has not left it)."""
        snapshot = await graph.aget_state(self._engine.config(journey_id))
        stage = snapshot.values.get("current_stage")
        return None if stage is None else str(stage)

    @staticmethod
    def _expect_stage(
        journey_id: str, asked_in: str | None, stage: str | None, move: str, *, named: bool = False
    ) -> None:
        """A move asked in ``asked_in`` finds the journey in ``stage`` once it may act: another call moved it
        meanwhile. It may be asked again from where the journey is, unless the journey has ended there.
        ``named``: the caller named ``asked_in`` (the stage it saw, ``from_stage``), which it may have seen
        before this call began (a second click, after the first moved the journey)."""
        if stage == asked_in:
            return
        seen = (
            f"is {stage}, not in {asked_in}, the stage this call to {move} was asked from"
            if named
            else f"was {stage} while this call to {move} (asked in {asked_in}) waited for it"
        )
        if stage in FINAL_STAGES:
            raise JourneyFinishedError(
                f"journey {journey_id!r} {seen}; nothing was done, and a {stage} journey moves no further",
                allowed=[],
                asked_in_stage=asked_in,
                current_stage=stage,
            )
        moved = (
            f"is in {stage}, not in {asked_in}, the stage this call to {move} was asked from: it moved meanwhile"
            if named
            else f"moved from {asked_in} to {stage} while this call to {move} waited for it"
        )
        raise ConcurrentUpdateError(
            f"journey {journey_id!r} {moved}; nothing was done (ask again to {move} from {stage})",
            journey_id=journey_id,
            asked_in_stage=asked_in,
            current_stage=stage,
        )

    @staticmethod
    def _allowed(snapshot: StateSnapshot) -> list[str]:
        return allowed_events(snapshot.values.get("current_stage")) if _waiting(snapshot) else []

    def _expect(self, snapshot: StateSnapshot, event: TransitionEvent) -> None:
        stage = snapshot.values.get("current_stage")
        allowed = self._allowed(snapshot)
        if event.value not in allowed:
            where = f"stage {stage!r}" if stage else "a journey that has not started"
            raise InvalidTransitionError(
                f"{event.value} is not allowed in {where}; allowed events: {', '.join(allowed) or 'none'}",
                current_stage=stage,
                event=event.value,
                allowed=allowed,
            )

    def _rollback_target(
        self, journey_id: str, snapshot: StateSnapshot, rollback_to: str | None, *, running: bool = False
    ) -> str:
        """The rollback's target, checked. ``running``: the snapshot may be mid-run (a unit of work in
        flight), so only its stage counts, not whether it waits for an event yet."""
        if not running or snapshot.values.get("current_stage") not in [s.value for s in ACTIVE_STAGES]:
            self._expect(snapshot, TransitionEvent.INITIATE_ROLLBACK)
        stage = str(snapshot.values.get("current_stage"))
        targets = rollback_targets(stage)
        target = rollback_to or default_rollback_target(stage)
        if target not in targets:
            raise InvalidRollbackTargetError(
                f"journey {journey_id!r} in {stage} can roll back to {', '.join(targets)}, not {target!r}",
                allowed=targets,
                current_stage=stage,
            )
        return target

    async def _snapshot(self, graph: Graph, journey_id: str, current: StateSnapshot, target: str) -> dict[str, Any]:
        """The checkpoint to return to: the last settled one in the target stage (for a rollback to the
        current stage, the one where it was entered)."""
        chosen: StateSnapshot | None = None
        stage_now = current.values.get("current_stage")
        async for past in graph.aget_state_history(self._engine.config(journey_id)):
            in_target = past.values.get("current_stage") == target and past.next == (AWAIT,)
            if target == stage_now:
                if past.values.get("current_stage") != target:
                    break
                chosen = past if in_target else chosen
            elif in_target:
                chosen = past
                break
        if chosen is None:
            return {"stage": target, "checkpoint_id": None}
        values = chosen.values
        return {
            "stage": target,
            "checkpoint_id": chosen.config["configurable"].get("checkpoint_id"),
            "stage_started_at": values.get("stage_started_at"),
            "completed_stages": list(values.get("completed_stages") or []),
            "units": dict(values.get("units") or {}),
            "metadata": dict(values.get("metadata") or {}),
        }

    async def _run(self, graph: Graph, journey_id: str, value: Any, run_options: RunOptions) -> StateSnapshot:
        return await self._engine.run_to_state(graph, journey_id, value, options=run_options)

    async def _resume(
        self,
        graph: Graph,
        journey_id: str,
        snapshot: StateSnapshot,
        request: dict[str, Any],
        run_options: RunOptions,
    ) -> StateSnapshot:
        if not _waiting(snapshot):
            stage = snapshot.values.get("current_stage")
            raise InvalidTransitionError(
                f"journey {journey_id!r} has ended ({stage}); no event is allowed",
                current_stage=stage,
                event=str(request.get("event")),
                allowed=[],
            )
        return await self._run(graph, journey_id, Command(resume=request), run_options)


def _queued_values(instance: Instance) -> dict[str, Any]:
    """The state a journey queued behind its spec's concurrency limit shows: who it is for, and no stage."""
    return {"journey_id": instance.instance_id, "client_id": instance.user_id, "status": QUEUED}


def _initial_state(
    journey_id: str, client_id: str, design_id: str, metadata: Mapping[str, Any] | None
) -> dict[str, Any]:
    """A journey before its first event: no stage yet, asked to start."""
    state: LifecycleState = {
        "journey_id": journey_id,
        "client_id": client_id,
        "design_id": design_id,
        "current_stage": None,
        "previous_stage": None,
        "started_at": None,
        "stage_started_at": None,
        "completed_stages": [],
        "metadata": dict(metadata or {}),
        "status": "pending",
        "moves": 0,
        "runs": 0,
        "units": {},
        "queue": [],
        "rollback": None,
        "request": {"event": TransitionEvent.START_JOURNEY.value},
    }
    return dict(state)


def _stage_named(from_stage: str | None) -> str | None:
    """A caller's ``from_stage`` (the stage it saw the journey in), checked: an active stage's name, or None."""
    stages = [s.value for s in ACTIVE_STAGES]
    if from_stage is not None and from_stage not in stages:
        raise InvalidInputError(
            f"from_stage must be the stage the journey was seen in, one of {', '.join(stages)}; got {from_stage!r}",
            allowed=stages,
        )
    return from_stage


def _check_id(value: object, name: str) -> None:
    if not isinstance(value, str) or not value:
        raise InvalidInputError(f"{name} must be a non-empty string, got {value!r}", argument=name)


def _check_options(event: str, options: Mapping[str, Any], takes: tuple[tuple[str, ...], tuple[str, ...]]) -> None:
    required, optional = takes
    accepted = [*required, *optional]
    missing = [name for name in required if name not in options]
    unknown = sorted(name for name in options if name not in accepted)
    if not (missing or unknown):
        return
    problems = [f"{event} needs the option {name!r}" for name in missing]
    if unknown:
        problems.append(f"{event} does not take {', '.join(map(repr, unknown))}")
    offered = f"it takes {', '.join(accepted)}" if accepted else "it takes no options"
    raise TransitionOptionsError(
        f"{'; '.join(problems)} ({offered})", event=event, missing=missing, unknown=unknown, accepted=accepted
    )


def _waiting(snapshot: StateSnapshot) -> bool:
    return any(task.interrupts for task in snapshot.tasks)


def _metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    if metadata is not None and not isinstance(metadata, Mapping):
        raise InvalidInputError(f"metadata must be a mapping, got {type(metadata).__name__}")
    return dict(metadata or {})


def _outcome(snapshot: StateSnapshot) -> dict[str, Any]:
    return dict(snapshot.values.get("outcome") or {})


def _gate_result(snapshot: StateSnapshot, journey_id: str) -> ValidationResult:
    outcome = _outcome(snapshot)
    validation = ValidationResult.from_dict(outcome["validation"])
    if validation.passed:
        _raise_for_unit(outcome, journey_id)
    return validation


def _raise_for_unit(outcome: Mapping[str, Any], journey_id: str) -> None:
    if outcome.get("ok"):
        return
    units = outcome.get("units") or [{}]
    raise UnitOfWorkFailedError(
        f"journey {journey_id!r}: {outcome.get('error') or 'a unit of work failed'}; the stage did not change",
        unit=dict(units[-1]),
        event=outcome.get("event"),
    )


def _checked_metrics(values: Mapping[str, float | bool], *, allow_empty: bool) -> dict[str, float]:
    if not isinstance(values, Mapping) or (not values and not allow_empty):
        raise InvalidMetricError("metrics must be a non-empty mapping of metric name → number")
    checked: dict[str, float] = {}
    problems = []
    for name, value in values.items():
        if not isinstance(name, str) or not METRIC_NAME.match(name):
            problems.append(f"metric name {name!r} must be lower_snake_case")
        elif isinstance(value, bool):
            checked[name] = 1.0 if value else 0.0
        elif isinstance(value, int | float) and math.isfinite(value):
            checked[name] = float(value)
        else:
            problems.append(f"metric {name!r} needs a finite number or a bool, got {value!r}")
    if problems:
        raise InvalidMetricError("; ".join(problems), problems=problems)
    return checked


def _rollback_view(row: Mapping[str, Any]) -> dict[str, Any]:
    data = dict(row)
    for key in ("initiated_at", "validated_at", "completed_at"):
        if data.get(key) is not None:
            data[key] = data[key].isoformat()
    return data

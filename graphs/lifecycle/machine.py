"""The client lifecycle (SPEC L1 to L4): SANDBOX → PILOT → PRODUCTION → COMPLETED, with ROLLBACK and
CANCELLED, as one LangGraph ``StateGraph`` built from a declarative, validated :class:`LifecycleSpec`.

The graph is a hub. ``await_event`` (an ``interrupt()``) takes the next event; ``apply`` checks it
against the seed's transition table, runs the criteria gate for promotions, and either commits the
transition or first runs the units of work the move needs (the ``unit`` subgraph, a task DAG fanned
out with ``Send``). A rollback goes: plan → rollback units → ``validate_rollback`` → ``notify`` →
(complete_rollback, at once or when asked). Every write is keyed by the journey's move number, so a
run resumed after a crash writes nothing twice. History lives in the event log and the lifecycle
tables; the checkpointed state holds only the journey's current position.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, cast

from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, interrupt
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql import Executable
from typing_extensions import TypedDict  # pydantic (Studio's input forms) needs it before 3.12

from agents.errors import AgentError
from agents.policy import Grants
from agents.registry import AgentRegistry
from checkpoints.encryption import Sealer
from checkpoints.events import NewEvent
from checkpoints.lifecycle import (
    STAGE_STATUS,
    LifecycleStore,
    journey_moved,
    journey_started,
    next_position,
    rollback_changed,
    rollback_started,
    transition_row,
    units_rolled_back,
)
from graphs.errors import SpecError
from nodes.agent_call import Recording, logged
from nodes.criteria_gate import (
    CriteriaCheck,
    MetricCriterion,
    MetricSource,
    Stopwatch,
    TableMetricSource,
    ValidationResult,
    evaluate_criteria,
    validation_statement,
)
from nodes.evaluation import EvaluationSpec
from nodes.flow import ConcurrencySpec, DeadlineSpec
from nodes.service_task import perform_task
from nodes.services import NodeServices, is_replay, thread_id
from nodes.uow import UNDO, UnitHooks, UnitOfWorkSpec, build_uow_graph, find_cycle, unit_request, validate_unit


class JourneyStage(StrEnum):
    """The stages of the client lifecycle."""

    SANDBOX = "sandbox"
    PILOT = "pilot"
    PRODUCTION = "production"
    ROLLBACK = "rollback"  # temporary, while a rollback runs
    COMPLETED = "completed"  # final: success
    CANCELLED = "cancelled"  # final: given up


class TransitionEvent(StrEnum):
    """The events that move a lifecycle journey between stages."""

    START_JOURNEY = "start_journey"
    PROMOTE_TO_PILOT = "promote_to_pilot"
    PROMOTE_TO_PRODUCTION = "promote_to_production"
    INITIATE_ROLLBACK = "initiate_rollback"
    COMPLETE_ROLLBACK = "complete_rollback"
    CANCEL_JOURNEY = "cancel_journey"
    MARK_COMPLETE = "mark_complete"


class RollbackTrigger(StrEnum):
    """Why a rollback was started."""

    SECURITY_VULNERABILITY = "security_vulnerability"
    DATA_QUALITY_LOW = "data_quality_low"
    USER_SATISFACTION_LOW = "user_satisfaction_low"
    CRITICAL_BUG = "critical_bug"
    PERFORMANCE_DEGRADATION = "performance_degradation"
    MAJOR_INCIDENT = "major_incident"
    CLIENT_REQUEST = "client_request"


S, E = JourneyStage, TransitionEvent
ACTIVE_STAGES: tuple[JourneyStage, ...] = (S.SANDBOX, S.PILOT, S.PRODUCTION)
FINAL_STAGES: tuple[JourneyStage, ...] = (S.COMPLETED, S.CANCELLED)
STAGE_ORDER = {stage: position for position, stage in enumerate(ACTIVE_STAGES)}

# The seed's table, (from, event) -> to. None as a target: decided at run time (the rollback's target).
TRANSITIONS: dict[tuple[JourneyStage | None, TransitionEvent], JourneyStage | None] = {
    (None, E.START_JOURNEY): S.SANDBOX,
    (S.SANDBOX, E.PROMOTE_TO_PILOT): S.PILOT,
    (S.PILOT, E.PROMOTE_TO_PRODUCTION): S.PRODUCTION,
    (S.PRODUCTION, E.MARK_COMPLETE): S.COMPLETED,
    (S.SANDBOX, E.INITIATE_ROLLBACK): S.ROLLBACK,
    (S.PILOT, E.INITIATE_ROLLBACK): S.ROLLBACK,
    (S.PRODUCTION, E.INITIATE_ROLLBACK): S.ROLLBACK,
    (S.ROLLBACK, E.COMPLETE_ROLLBACK): None,
    (S.SANDBOX, E.CANCEL_JOURNEY): S.CANCELLED,
    (S.PILOT, E.CANCEL_JOURNEY): S.CANCELLED,
    (S.PRODUCTION, E.CANCEL_JOURNEY): S.CANCELLED,
    # Beyond the seed's table, following its design notes ("resume or cancel" after a rollback): a
    # journey whose rollback cannot complete can still be given up.
    (S.ROLLBACK, E.CANCEL_JOURNEY): S.CANCELLED,
}
# Events that pass a criteria gate first, and the kind of validation they store.
GATED: dict[str, str] = {
    E.START_JOURNEY: "start",
    E.PROMOTE_TO_PILOT: "promotion",
    E.PROMOTE_TO_PRODUCTION: "promotion",
    E.MARK_COMPLETE: "completion",
}
STATUS_OF: dict[str, str] = STAGE_STATUS  # a stage's journey status (checkpoints.lifecycle: the rebuild's too)
RUN_UNIT = "run_unit_of_work"  # not a stage change: runs an on-demand unit of the current stage
AWAIT = "await_event"


def as_stage(value: str | None) -> JourneyStage | None:
    return JourneyStage(value) if value is not None else None


def allowed_events(stage: str | None) -> list[str]:
    current = as_stage(stage)
    return [event.value for event in TransitionEvent if (current, event) in TRANSITIONS]


def rollback_targets(stage: str) -> list[str]:
    """Where a rollback from ``stage`` may return: the stage itself or an earlier active stage."""
    position = STAGE_ORDER[JourneyStage(stage)]
    return [s.value for s in ACTIVE_STAGES if STAGE_ORDER[s] <= position]


def default_rollback_target(stage: str) -> str:
    """The previous stage in the progression; the sandbox rolls back to a fresh sandbox."""
    position = STAGE_ORDER[JourneyStage(stage)]
    return ACTIVE_STAGES[max(position - 1, 0)].value


def unwound_stages(from_stage: str, to_stage: str) -> list[str]:
    """The stages a rollback undoes, latest first: down to (not including) the target, or the stage itself."""
    if from_stage == to_stage:
        return [from_stage]
    low, high = STAGE_ORDER[JourneyStage(to_stage)], STAGE_ORDER[JourneyStage(from_stage)]
    return [s.value for s in reversed(ACTIVE_STAGES) if low < STAGE_ORDER[s] <= high]


# --- the spec -------------------------------------------------------------------------------------


class RollbackThreshold(MetricCriterion):
    """Fires (starts an automatic rollback) when the condition holds, e.g. ``user_satisfaction < 3.5``."""

    trigger: RollbackTrigger


class StageSpec(BaseModel):
    """One lifecycle stage: its entry and exit criteria, units of work and rollback thresholds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = ""
    entry_criteria: tuple[MetricCriterion, ...] = ()
    exit_criteria: tuple[MetricCriterion, ...] = ()
    required_units: tuple[str, ...] = Field(default=(), description="units that must have completed to leave")
    units: tuple[UnitOfWorkSpec, ...] = ()
    rollback_thresholds: tuple[RollbackThreshold, ...] = ()
    rollback_unit: UnitOfWorkSpec | None = Field(default=None, description="undoes this stage in a rollback")
    rollback_validation: tuple[MetricCriterion, ...] = Field(
        default=(), description="must hold after this stage was rolled back"
    )


class LifecycleSpec(Grants):
    """A client lifecycle design: the sandbox, pilot and production stages and how rollbacks run."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    journey_type: str = "client_lifecycle"
    name: str = "Client lifecycle"
    sandbox: StageSpec
    pilot: StageSpec
    production: StageSpec
    notify_intent: str = Field(default="notify_stakeholders", description="the agent that notifies of rollbacks")
    auto_complete_rollback: bool = Field(
        default=True, description="automatic rollbacks return to their target as soon as they validate"
    )
    # Flow control, applied by the one instance lifecycle (graphs/kernel/instances.py) as for every pattern:
    # the concurrency key is a path into {"client_id": ..., **metadata}; a deadline that passes before the
    # journey ends cancels it and fails the instance.
    concurrency: ConcurrencySpec | None = None
    deadline: DeadlineSpec | None = None
    # The workflow tier (graphs/kernel/evaluation.py), as for every pattern: judged when the journey
    # completes, over its units' agent calls.
    evaluation: EvaluationSpec | None = Field(
        default=None, description="the workflow tier: thresholds a completed journey's unit tasks meet"
    )

    def stage(self, stage: str) -> StageSpec:
        spec: StageSpec = getattr(self, JourneyStage(stage).value)
        return spec

    def units(self) -> dict[str, UnitOfWorkSpec]:
        """Every unit of work of the design, stage units and rollback units, by id."""
        found: dict[str, UnitOfWorkSpec] = {}
        for stage in ACTIVE_STAGES:
            spec = self.stage(stage)
            for unit in (*spec.units, *([spec.rollback_unit] if spec.rollback_unit else [])):
                found.setdefault(unit.uow_id, unit)
        return found

    def stage_of(self, uow_id: str) -> str:
        for stage in ACTIVE_STAGES:
            spec = self.stage(stage)
            if uow_id in [u.uow_id for u in spec.units] or (spec.rollback_unit and spec.rollback_unit.uow_id == uow_id):
                return stage.value
        raise KeyError(uow_id)

    def with_thresholds(self, overrides: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> LifecycleSpec:
        """Exit criteria overridden in the ``STAGE_METRICS`` shape: ``{"pilot": {"user_satisfaction":
        {"threshold": 4.2, "operator": ">="}}}``. A metric the stage does not check yet is added."""
        problems: list[str] = []
        stages: dict[str, StageSpec] = {}
        for stage_name, metrics in overrides.items():
            if stage_name not in [s.value for s in ACTIVE_STAGES]:
                problems.append(f"thresholds: unknown stage {stage_name!r}; stages: sandbox, pilot, production")
                continue
            if not isinstance(metrics, Mapping):
                problems.append(f"thresholds.{stage_name}: expected a mapping of metric → settings like STAGE_METRICS")
                continue
            stage = self.stage(stage_name)
            criteria = list(stage.exit_criteria)
            for metric, settings in metrics.items():
                if not isinstance(settings, Mapping):
                    problems.append(f"thresholds.{stage_name}.{metric}: expected a mapping like STAGE_METRICS")
                    continue
                position = next((i for i, c in enumerate(criteria) if c.metric == metric), None)
                base = criteria[position].model_dump() if position is not None else {"metric": metric}
                try:
                    criterion = MetricCriterion.model_validate({**base, **settings, "metric": metric})
                except ValidationError as exc:
                    problems += [f"thresholds.{stage_name}.{metric}: {e['msg']}" for e in exc.errors()]
                    continue
                if position is None:
                    criteria.append(criterion)
                else:
                    criteria[position] = criterion
            stages[stage_name] = stage.model_copy(update={"exit_criteria": tuple(criteria)})
        if problems:
            raise SpecError(problems, spec_name="lifecycle thresholds")
        return self.model_copy(update=stages)


def validate_lifecycle(spec: LifecycleSpec, registry: AgentRegistry | None = None) -> list[str]:
    """Every design problem, each with how to fix it. Empty when the spec is sound."""
    problems: list[str] = []
    seen: dict[str, str] = {}
    stage_units: dict[str, UnitOfWorkSpec] = {}
    for stage in ACTIVE_STAGES:
        spec_of = spec.stage(stage)
        for unit in (*spec_of.units, *([spec_of.rollback_unit] if spec_of.rollback_unit else [])):
            if unit.uow_id in seen:
                problems.append(
                    f"unit of work id {unit.uow_id!r} is used in {seen[unit.uow_id]} and {stage.value}; ids are unique"
                )
            seen[unit.uow_id] = stage.value
        stage_units.update({u.uow_id: u for u in spec_of.units})
    if problems:
        return problems
    everything = spec.units()
    for unit in everything.values():
        problems += validate_unit(unit, registry, everything)
    for stage in ACTIVE_STAGES:
        spec_of = spec.stage(stage)
        problems += _unit_order_problems(spec, stage, spec_of, stage_units)
        if spec_of.rollback_unit is not None and spec_of.rollback_unit.dependencies:
            problems.append(
                f"rollback unit {spec_of.rollback_unit.uow_id!r} of {stage.value} must not depend on other units; "
                "it runs whatever state the stage is in"
            )
        for required in spec_of.required_units:
            owner = seen.get(required)
            if required not in stage_units or owner is None or STAGE_ORDER[JourneyStage(owner)] > STAGE_ORDER[stage]:
                problems.append(
                    f"{stage.value} requires unit {required!r} to leave, but it is not a unit of {stage.value} "
                    "or an earlier stage"
                )
    cycle = find_cycle({u.uow_id: list(u.dependencies) for u in stage_units.values()})
    if cycle:
        problems.append(
            f"units of work depend on each other in a cycle ({' -> '.join(cycle)}); remove one of those dependencies"
        )
    if registry is not None and spec.notify_intent not in registry:
        problems.append(
            f"notify_intent {spec.notify_intent!r} has no agent; register one with "
            f"runtime.agents.register({spec.notify_intent!r}, agent)"
        )
    return problems


def _unit_order_problems(
    spec: LifecycleSpec, stage: JourneyStage, spec_of: StageSpec, stage_units: Mapping[str, UnitOfWorkSpec]
) -> list[str]:
    problems = []
    order = [u.uow_id for u in spec_of.units]
    for unit in spec_of.units:
        for dep in unit.dependencies:
            if dep not in stage_units:
                problems.append(
                    f"unit {unit.uow_id!r} depends on unknown unit {dep!r}; units: {', '.join(stage_units)}"
                )
                continue
            dep_stage = JourneyStage(spec.stage_of(dep))
            if STAGE_ORDER[dep_stage] > STAGE_ORDER[stage]:
                problems.append(
                    f"unit {unit.uow_id!r} ({stage.value}) depends on {dep!r} of the later stage {dep_stage.value}"
                )
            elif unit.trigger == "on_entry" and dep_stage == stage:
                before = order[: order.index(unit.uow_id)]
                if stage_units[dep].trigger != "on_entry" or dep not in before:
                    problems.append(
                        f"on_entry unit {unit.uow_id!r} depends on {dep!r}, which does not run before it on entering "
                        f"{stage.value}; make {dep!r} an on_entry unit listed earlier"
                    )
    return problems


def check_lifecycle(spec: LifecycleSpec, registry: AgentRegistry | None = None) -> LifecycleSpec:
    problems = validate_lifecycle(spec, registry)
    if problems:
        raise SpecError(problems, spec_name="lifecycle")
    return spec


# --- the graph ------------------------------------------------------------------------------------


class LifecycleState(TypedDict, total=False):
    """The lifecycle graph's state: where the journey stands and how it got there."""

    journey_id: str
    client_id: str
    design_id: str
    current_stage: str | None
    previous_stage: str | None
    started_at: str | None
    stage_started_at: str | None
    completed_stages: list[str]
    metadata: dict[str, Any]
    status: str  # pending, active, rollback, completed, cancelled
    request: dict[str, Any] | None
    moves: int
    runs: int
    units: dict[str, str]  # uow_id -> status of its latest run
    queue: list[dict[str, str]]  # units still to run for the current request: {uow_id, stage, purpose}
    uow_request: dict[str, Any] | None
    uow_result: dict[str, Any] | None
    rollback: dict[str, Any] | None
    outcome: dict[str, Any] | None


@dataclass
class LifecycleDeps:
    """What lifecycle nodes need beyond :class:`NodeServices`: the metric source (swappable, read at
    each gate) and the lifecycle tables (earlier units' outputs, rollback requests)."""

    rows: LifecycleStore
    metrics: MetricSource

    @classmethod
    def on(cls, engine: AsyncEngine, sealer: Sealer) -> LifecycleDeps:
        """Deps on the database of ``engine``, with the default metric source (the recorded metrics)."""
        return cls(LifecycleStore(engine, sealer), TableMetricSource(engine))

    def hooks(self) -> UnitHooks:
        # Units of work load earlier units' outputs for ``units.<uow>.<task>`` input paths, stop between
        # waves when a rollback asked for their run (from any process), and undo first what an earlier run of
        # theirs left when its undo failed for good.
        return UnitHooks(self.rows.unit_outputs, self.rows.rollback_reason, self.rows.left_undone)


def journey_document(state: Mapping[str, Any], stage: str | None = None) -> dict[str, Any]:
    return {
        "journey_id": state.get("journey_id"),
        "client_id": state.get("client_id"),
        "stage": stage or state.get("current_stage"),
        "metadata": dict(state.get("metadata") or {}),
    }


def build_lifecycle_graph(
    spec: LifecycleSpec, services: NodeServices, deps: LifecycleDeps | None = None
) -> StateGraph[LifecycleState]:
    deps = deps or LifecycleDeps.on(services.events.engine, services.events.sealer)
    units = spec.units()
    executor = build_uow_graph(units, services, deps.hooks(), grants=spec)
    clock, events = services.clock, services.events

    def entry_queue(stage: str, done: Mapping[str, str]) -> list[dict[str, str]]:
        if JourneyStage(stage) not in ACTIVE_STAGES:
            return []
        return [
            {"uow_id": u.uow_id, "stage": stage, "purpose": "entry"}
            for u in spec.stage(stage).units
            if u.trigger == "on_entry" and done.get(u.uow_id) != "completed"
        ]

    def run_next(state: LifecycleState, queue: list[dict[str, str]], update: dict[str, Any]) -> Command[str]:
        """Start the first unit of ``queue``; the rest wait in state."""
        first, rest = queue[0], queue[1:]
        runs = int(state.get("runs") or 0) + 1
        merged = {**state, **update}
        request = unit_request(
            f"{state['journey_id']}:u{runs}",
            units[first["uow_id"]],
            stage=first["stage"],
            purpose=first["purpose"],
            journey=journey_document(merged, first["stage"]),
        )
        return Command(goto="unit", update={**update, "runs": runs, "queue": rest, "uow_request": request})

    async def commit(
        state: LifecycleState,
        move: int,
        event: str,
        target: str,
        also: Sequence[Executable] = (),
        *,
        at: datetime | None = None,
        rollback: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Make the transition: one event, the journey-state and transition rows, in one transaction.
        ``at``: the moment ``also`` was written with (default now); ``rollback``: the history row a
        rollback starts with, recorded on the event so the row can be rebuilt from the log."""
        journey_id = state["journey_id"]
        now = at or clock.now()
        source = state.get("current_stage")
        request = state.get("request") or {}
        entered = state.get("stage_started_at")
        started_at = state.get("started_at") or now.isoformat()
        # The same rule rebuilds the row from the log (checkpoints.rebuild).
        values = next_position(state, event, target, now, request.get("metadata"))
        status, completed, metadata = values["status"], values["completed_stages"], values["metadata"]
        projection: Executable
        if event == E.START_JOURNEY:
            projection = journey_started(
                journey_id, state["client_id"], state["design_id"], now, sealer=events.sealer, **values
            )
        else:
            projection = journey_moved(journey_id, sealer=events.sealer, **values)
        transition = transition_row(
            journey_id=journey_id,
            move=move,
            event=event,
            from_stage=source,
            to_stage=target,
            at=now,
            from_stage_seconds=(now - _parse(entered)).total_seconds() if entered else None,
        )
        payload: dict[str, Any] = {"event": event, "from_stage": source, "to_stage": target, "at": now.isoformat()}
        if request.get("metadata"):
            payload["metadata"] = request["metadata"]
        if rollback is not None:
            payload["rollback"] = dict(rollback)
        record = NewEvent("lifecycle.transition", payload, target, f"{journey_id}:m{move}:{event}")
        await events.append(journey_id, [record], status=status, also=[projection, transition, *also])
        return {
            "current_stage": target,
            "previous_stage": source,
            "status": status,
            "started_at": started_at,
            "stage_started_at": now.isoformat(),
            "completed_stages": completed,
            "metadata": metadata,
        }

    async def gate(
        state: LifecycleState, config: RunnableConfig, move: int, event: str, target: str
    ) -> ValidationResult:
        journey_id = state["journey_id"]
        source = state.get("current_stage")
        validation_id = f"{journey_id}:m{move}:gate"
        if (done := await logged(events, journey_id, validation_id, replay=is_replay(config))) is not None:
            return ValidationResult.from_dict(done.payload)  # decided before a crash: never re-decide
        watch = Stopwatch()
        now = clock.now()
        criteria: list[MetricCriterion] = []
        if source is not None:
            criteria += spec.stage(source).exit_criteria
        if JourneyStage(target) in ACTIVE_STAGES:
            criteria += spec.stage(target).entry_criteria
        checks = await evaluate_criteria(criteria, deps.metrics, journey_id, now)
        checks += unit_checks(state, source, target)
        result = ValidationResult(
            validation_id, journey_id, GATED[event], event, source, target, tuple(checks), now, watch.ms
        )
        record = NewEvent("lifecycle.validated", result.to_dict(), source or "start", validation_id)
        refused_start = event == E.START_JOURNEY and not result.passed
        await events.append(
            journey_id, [record], status="pending" if refused_start else None, also=[validation_statement(result)]
        )
        return result

    def unit_checks(state: LifecycleState, source: str | None, target: str) -> list[CriteriaCheck]:
        """Units the current stage requires, and units the target's entry units depend on."""
        needed: list[str] = list(spec.stage(source).required_units) if source else []
        for entry in entry_queue(target, {}):
            needed += [d for d in units[entry["uow_id"]].dependencies if d not in needed]
        done = state.get("units") or {}
        checks = []
        for uow_id in dict.fromkeys(needed):
            status = done.get(uow_id)
            passed = status == "completed"
            message = (
                f"unit of work {uow_id!r} has completed"
                if passed
                else f"unit of work {uow_id!r} must complete first (it is {status or 'not run yet'})"
            )
            checks.append(CriteriaCheck(f"unit:{uow_id}", passed, status or "not run", "completed", message))
        return checks

    # --- nodes --------------------------------------------------------------------------------

    async def await_event(state: LifecycleState) -> LifecycleState:
        stage = state.get("current_stage")
        request = interrupt({"kind": "lifecycle_event", "stage": stage, "allowed": allowed_events(stage)})
        return {"request": dict(request)}

    async def apply(state: LifecycleState, config: RunnableConfig) -> Command[str]:
        seeded = _seed_empty_start(state, config)  # {} as input (Studio, langgraph dev): start the journey
        state = {**state, **seeded}  # type: ignore[typeddict-item]
        request = dict(state.get("request") or {})
        event = str(request.get("event"))
        stage = state.get("current_stage")
        move = int(state.get("moves") or 0) + 1
        outcome: dict[str, Any] = {"move": move, "event": event, "ok": False, "units": []}
        base: dict[str, Any] = {**seeded, "moves": move, "outcome": outcome, "queue": []}
        if event == RUN_UNIT:
            uow_id = str(request["uow_id"])
            return run_next(state, [{"uow_id": uow_id, "stage": str(stage), "purpose": "on_demand"}], base)
        if event not in allowed_events(stage):  # the orchestrator refuses these first; never trust input
            outcome["error"] = f"{event!r} is not allowed in stage {stage!r}"
            return Command(goto=AWAIT, update=base)
        if event in GATED:
            target = TRANSITIONS[(as_stage(stage), TransitionEvent(event))]
            assert target is not None
            validation = await gate(state, config, move, event, target.value)
            outcome |= {"validation": validation.to_dict(), "from_stage": stage, "to_stage": target.value}
            if not validation.passed:
                return Command(goto=AWAIT, update=base)
            queue = entry_queue(target.value, state.get("units") or {})
            if queue:
                return run_next(state, queue, base)
            return await finish_move(state, move, event, target.value, base)
        if event == E.INITIATE_ROLLBACK:
            return await start_rollback(state, request, move, base)
        if event == E.COMPLETE_ROLLBACK:
            rollback = dict(state.get("rollback") or {})
            if rollback.get("status") == "validated":
                queue = entry_queue(rollback["to_stage"], state.get("units") or {})
                if queue:
                    return run_next(state, queue, base)
                return await finish_move(state, move, E.COMPLETE_ROLLBACK, rollback["to_stage"], base)
            # The rollback failed before: run its units again, then validate.
            rollback |= {"status": "running", "results": {}}
            return rollback_queue(state, rollback, {**base, "rollback": rollback})
        # cancel_journey
        open_rollback = state.get("rollback")
        also: list[Executable] = []
        now = clock.now()
        if open_rollback:
            also.append(rollback_changed(open_rollback["rollback_id"], status="cancelled", completed_at=now))
        return await finish_move(
            state, move, E.CANCEL_JOURNEY, S.CANCELLED.value, {**base, "rollback": None}, also, at=now
        )

    async def finish_move(
        state: LifecycleState,
        move: int,
        event: str,
        target: str,
        update: dict[str, Any],
        also: Sequence[Executable] = (),
        *,
        at: datetime | None = None,
    ) -> Command[str]:
        merged = _merged(state, update)
        also = list(also)
        now = at or clock.now()  # the transition's moment, which ends an open rollback too
        if event == E.COMPLETE_ROLLBACK and state.get("rollback"):
            rollback_id = (state.get("rollback") or {})["rollback_id"]
            also.append(rollback_changed(rollback_id, status="completed", completed_at=now))
            update = {**update, "rollback": None}
        changes = await commit(merged, move, event, target, also, at=now)
        outcome = {**(update.get("outcome") or {}), "ok": True, "from_stage": state.get("current_stage")}
        outcome["to_stage"] = target
        goto = END if JourneyStage(target) in FINAL_STAGES else AWAIT
        return Command(goto=goto, update={**update, **changes, "outcome": outcome, "request": None})

    async def start_rollback(
        state: LifecycleState, request: dict[str, Any], move: int, base: dict[str, Any]
    ) -> Command[str]:
        source = str(state.get("current_stage"))
        target = str(request.get("to_stage") or default_rollback_target(source))
        unwound = unwound_stages(source, target)
        plan_units = [u.uow_id for s in unwound if (u := spec.stage(s).rollback_unit) is not None]
        # Units of the unwound stages whose failed runs left tasks done (their undo failed for good): undone first.
        left = [u.uow_id for s in unwound for u in spec.stage(s).units]
        leftovers = [u for u in left if await deps.rows.left_undone(state["journey_id"], u)]
        now = clock.now()
        auto = bool(request.get("complete"))
        rollback: dict[str, Any] = {
            "rollback_id": f"{state['journey_id']}:rb{move}",
            "from_stage": source,
            "to_stage": target,
            "trigger": request.get("trigger") or RollbackTrigger.CLIENT_REQUEST.value,
            "reason": str(request.get("reason") or ""),
            "automatic": bool(request.get("automatic")),
            "auto_complete": auto,
            "status": "running",
            "unwound": unwound,
            "units": plan_units,
            **({"undo_units": leftovers} if leftovers else {}),
            "results": {},
            "runs": {},
            "initiated_at": now.isoformat(),
        }
        plan = {
            "unwind": unwound,
            "units": plan_units,
            **({"undo": leftovers} if leftovers else {}),
            "notify": spec.notify_intent,
            "then": "complete_rollback" if auto else "wait for complete_rollback",
        }
        started = {
            "rollback_id": rollback["rollback_id"],
            "trigger": rollback["trigger"],
            "reason": rollback["reason"],
            "automatic": rollback["automatic"],
            "to_stage": target,
            "plan": plan,
            "snapshot": request.get("snapshot"),
        }
        row = rollback_started(
            sealer=services.events.sealer,
            **started,
            journey_id=state["journey_id"],
            from_stage=source,
            status="running",
            run_ids=[],
            initiated_at=now,
        )
        changes = await commit(state, move, E.INITIATE_ROLLBACK, S.ROLLBACK.value, [row], at=now, rollback=started)
        outcome = {**base["outcome"], "rollback_id": rollback["rollback_id"], "from_stage": source, "to_stage": target}
        update = {**base, **changes, "rollback": rollback, "outcome": outcome}
        return rollback_queue(_merged(state, changes), rollback, update)

    def rollback_queue(state: LifecycleState, rollback: dict[str, Any], update: dict[str, Any]) -> Command[str]:
        undo = [{"uow_id": u, "stage": spec.stage_of(u), "purpose": UNDO} for u in rollback.get("undo_units", [])]
        queue = undo + [{"uow_id": u, "stage": spec.stage_of(u), "purpose": "rollback"} for u in rollback["units"]]
        if not queue:
            return Command(goto="validate_rollback", update=update)
        return run_next(state, queue, update)

    async def unit_done(state: LifecycleState, config: RunnableConfig) -> Command[str]:
        result = dict(state.get("uow_result") or {})
        uow_id, status = result["uow_id"], result["status"]
        done = {**(state.get("units") or {}), uow_id: status}
        outcome = dict(state.get("outcome") or {})
        outcome["units"] = [*outcome.get("units", []), result]
        update: dict[str, Any] = {"units": done, "outcome": outcome, "uow_request": None}
        rollback = dict(state.get("rollback") or {})
        rolling = rollback.get("status") == "running"
        if rolling:
            rollback["results"] = {**rollback["results"], uow_id: status}
            rollback["runs"] = {**rollback.get("runs", {}), uow_id: result["run_id"]}
            update["rollback"] = rollback
        queue = list(state.get("queue") or [])
        if status != _done_status(result):
            if rolling:
                return Command(goto="validate_rollback", update={**update, "queue": []})
            outcome["error"] = f"unit of work {uow_id!r} ended {status}" + _failure_text(result.get("failure"))
            return Command(goto=AWAIT, update={**update, "queue": [], "request": None})
        merged = _merged(state, update)
        if queue:
            return run_next(merged, queue, update)
        if rolling:
            return Command(goto="validate_rollback", update=update)
        request = state.get("request") or {}
        event = str(request.get("event"))
        if event == RUN_UNIT:
            outcome["ok"] = True
            return Command(goto=AWAIT, update={**update, "request": None})
        move = int(state.get("moves") or 0)
        if event in (E.COMPLETE_ROLLBACK, E.INITIATE_ROLLBACK):
            return await finish_move(merged, move, E.COMPLETE_ROLLBACK, rollback["to_stage"], update)
        target = TRANSITIONS[(as_stage(state.get("current_stage")), TransitionEvent(event))]
        assert target is not None
        return await finish_move(merged, move, event, target.value, update)

    async def validate_rollback(state: LifecycleState, config: RunnableConfig) -> LifecycleState:
        journey_id = state["journey_id"]
        rollback = dict(state.get("rollback") or {})
        move = int(state.get("moves") or 0)
        validation_id = f"{journey_id}:m{move}:rollback"
        request = state.get("request") or {}
        existing = await logged(events, journey_id, validation_id, replay=is_replay(config))
        if existing is not None:
            result = ValidationResult.from_dict(existing.payload)
        else:
            watch = Stopwatch()
            now = clock.now()
            checks = []
            for uow_id in rollback.get("undo_units", []):
                status = rollback["results"].get(uow_id)
                passed = status == "rolled_back"
                message = (
                    f"what failed runs of unit {uow_id!r} left done was undone"
                    if passed
                    else f"unit {uow_id!r} has tasks a failed run left done, not undone (it is {status or 'not run'})"
                )
                checks.append(CriteriaCheck(f"unit:{uow_id}", passed, status or "not run", "rolled_back", message))
            for uow_id in rollback["units"]:
                status = rollback["results"].get(uow_id)
                passed = status == "completed"
                message = (
                    f"rollback unit {uow_id!r} completed"
                    if passed
                    else f"rollback unit {uow_id!r} did not complete (it is {status or 'not run'})"
                )
                checks.append(CriteriaCheck(f"unit:{uow_id}", passed, status or "not run", "completed", message))
            criteria = [c for s in rollback["unwound"] for c in spec.stage(s).rollback_validation]
            checks += await evaluate_criteria(criteria, deps.metrics, journey_id, now)
            result = ValidationResult(
                validation_id,
                journey_id,
                "rollback",
                str(request.get("event")),
                rollback["from_stage"],
                rollback["to_stage"],
                tuple(checks),
                now,
                watch.ms,
            )
            undone = [u.uow_id for s in rollback["unwound"] for u in spec.stage(s).units]
            run_ids = list(rollback.get("runs", {}).values())
            also: list[Executable] = [
                validation_statement(result),
                rollback_changed(
                    rollback["rollback_id"],
                    status="validated" if result.passed else "failed",
                    validation_id=validation_id,
                    validated_at=now,
                    run_ids=run_ids,
                ),
            ]
            if result.passed and undone:
                also.append(units_rolled_back(journey_id, undone))
            # The rollback's runs and the units it undoes, so its rows can be rebuilt from the log.
            recorded = {**result.to_dict(), "run_ids": run_ids, "undone": undone if result.passed else []}
            record = NewEvent("lifecycle.validated", recorded, "rollback", validation_id)
            await events.append(journey_id, [record], also=also)
        rollback["status"] = "validated" if result.passed else "failed"
        rollback["validation"] = result.to_dict()
        done = dict(state.get("units") or {})
        if result.passed:
            for s in rollback["unwound"]:
                for unit in spec.stage(s).units:
                    if done.get(unit.uow_id) == "completed":
                        done[unit.uow_id] = "rolled_back"
        outcome = {**(state.get("outcome") or {}), "validation": result.to_dict()}
        return {"rollback": rollback, "units": done, "outcome": outcome}

    async def notify(state: LifecycleState, config: RunnableConfig) -> Command[str]:
        journey_id = state["journey_id"]
        rollback = dict(state.get("rollback") or {})
        move = int(state.get("moves") or 0)
        validated = rollback.get("status") == "validated"
        notification = {
            "journey_id": journey_id,
            "client_id": state.get("client_id"),
            "rollback_id": rollback["rollback_id"],
            "trigger": rollback["trigger"],
            "reason": rollback["reason"],
            "automatic": rollback["automatic"],
            "from_stage": rollback["from_stage"],
            "to_stage": rollback["to_stage"],
            "status": rollback["status"],
            "summary": (rollback.get("validation") or {}).get("summary"),
        }
        outcome = dict(state.get("outcome") or {})
        try:
            await perform_task(
                services,
                config,
                intent=spec.notify_intent,
                payload=notification,
                step="rollback",
                key=f"{journey_id}:m{move}:notify",
                event_type="lifecycle.notified",
                recorder=lambda _output: Recording({"notification": notification}),
                granted_permissions=spec.granted_permissions,
                granted_intents=spec.granted_intents,
            )
            outcome["notification"] = {"delivered": True, "intent": spec.notify_intent}
        except AgentError as exc:  # a lost notification does not undo a rollback; it is reported
            outcome["notification"] = {"delivered": False, "intent": spec.notify_intent, "error": str(exc)}
        update: dict[str, Any] = {"outcome": outcome}
        request = state.get("request") or {}
        if validated and (request.get("event") == E.COMPLETE_ROLLBACK or rollback.get("auto_complete")):
            queue = entry_queue(rollback["to_stage"], state.get("units") or {})
            if queue:
                return run_next(state, queue, update)
            return await finish_move(state, move, E.COMPLETE_ROLLBACK, rollback["to_stage"], update)
        outcome["ok"] = validated
        if not validated:
            outcome["error"] = f"rollback {rollback['rollback_id']!r} did not validate: " + str(notification["summary"])
        return Command(goto=AWAIT, update={**update, "request": None})

    builder: StateGraph[LifecycleState] = StateGraph(LifecycleState)
    builder.add_node(AWAIT, await_event)
    builder.add_node("apply", apply, destinations=("unit", "validate_rollback", AWAIT, END))
    builder.add_node("unit", executor)
    builder.add_node("unit_done", unit_done, destinations=("unit", "validate_rollback", AWAIT, END))
    builder.add_node("validate_rollback", validate_rollback)
    builder.add_node("notify", notify, destinations=("unit", AWAIT, END))
    builder.add_edge(START, "apply")
    builder.add_edge(AWAIT, "apply")
    builder.add_edge("unit", "unit_done")
    builder.add_edge("validate_rollback", "notify")
    return builder


def _seed_empty_start(state: LifecycleState, config: RunnableConfig) -> dict[str, Any]:
    """What a journey run with ``{}`` as its input (LangGraph Studio, ``langgraph dev``) starts from: a
    start request for a client named after the thread, in no stage yet; nothing when the state has a start
    already (the orchestrators always give one)."""
    if state.get("request") or state.get("moves") or state.get("current_stage") is not None:
        return {}
    journey_id = state.get("journey_id") or thread_id(config)
    return {
        "journey_id": journey_id,
        "client_id": state.get("client_id") or journey_id,
        "design_id": state.get("design_id") or journey_id,
        "current_stage": None,
        "previous_stage": None,
        "completed_stages": [],
        "metadata": {},
        "status": "pending",
        "units": {},
        "rollback": None,
        "request": {"event": TransitionEvent.START_JOURNEY.value},
    }


def _merged(state: LifecycleState, update: Mapping[str, Any]) -> LifecycleState:
    """The state as it will be once ``update`` is applied (for helpers that look ahead)."""
    return cast(LifecycleState, {**state, **update})


def _done_status(result: Mapping[str, Any]) -> str:
    """The status a unit's run ends with when it did what it was run for: an undo run's ``rolled_back``."""
    return "rolled_back" if result.get("purpose") == UNDO else "completed"


def _failure_text(failure: Mapping[str, Any] | None) -> str:
    """Why a unit of work did not complete, as its error says it: and, when undoing one of its completed tasks
    failed for good too, which (its effect stays: the unit is not rolled back whole)."""
    if not failure:
        return ""
    text = f": stopped for a rollback ({failure['aborted']})" if failure.get("aborted") else f": {failure.get('error')}"
    broken = failure.get("compensation_failure")
    if isinstance(broken, Mapping):
        text += (
            f"; undoing task {broken.get('task_id')!r} with {broken.get('handler')!r} failed for good too "
            f"({broken.get('error')}), so task {broken.get('task_id')!r} was not undone"
        )
    return text


def _parse(moment: str) -> datetime:
    return datetime.fromisoformat(moment)


def journey_view(values: Mapping[str, Any], spec: LifecycleSpec | None = None) -> dict[str, Any]:
    """The journey's state as the seed's ``JourneyState.to_dict()``, plus what it may do next. With the
    ``spec``, ``units`` also lists the stage units that have not run yet, as ``pending``."""
    stage = values.get("current_stage")
    rollback = values.get("rollback")
    units = {u.uow_id: "pending" for s in ACTIVE_STAGES for u in spec.stage(s).units} if spec else {}
    return {
        "journey_id": values.get("journey_id"),
        "client_id": values.get("client_id"),
        "current_stage": stage,
        "previous_stage": values.get("previous_stage"),
        "status": values.get("status"),
        "started_at": values.get("started_at"),
        "stage_started_at": values.get("stage_started_at"),
        "completed_stages": list(values.get("completed_stages") or []),
        "metadata": dict(values.get("metadata") or {}),
        "allowed_events": allowed_events(stage),
        "units": {**units, **(values.get("units") or {})},
        "rollback": (
            {k: v for k, v in rollback.items() if k not in ("results", "runs", "validation")} if rollback else None
        ),
    }

"""Structured journeys: steps in an enforced order, with branching chosen by the step result.

The spec is declarative and validated when compiled; :func:`build_structured_graph` turns it into a
``StateGraph`` with, per step, an optional human-input node (``<step>.await``, an ``interrupt()``)
and a work node (``<step>``) that calls the step's agent through the shared call path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property, partial
from typing import Any, Literal, cast

import jsonschema
from langchain_core.runnables import RunnableConfig
from langgraph._internal._config import DEFAULT_RECURSION_LIMIT  # what LangGraph bounds a run with unless told
from langgraph.errors import GraphRecursionError
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command
from pydantic import BaseModel, ConfigDict, Field, field_validator
from typing_extensions import TypedDict  # pydantic (Studio's input forms) needs it before 3.12

from agents.errors import AgentError
from agents.policy import Grants
from agents.registry import AgentRegistry
from agents.resilience import CallOptions
from checkpoints.events import NewEvent
from graphs.errors import StepReportedFailedError
from graphs.kernel.engine import NOTES
from nodes import schemas
from nodes.agent_call import REPORTED_FAILED, Recording, logged
from nodes.compensation import called, step_key
from nodes.criteria import Criteria
from nodes.evaluation import EvaluationSpec
from nodes.flow import ConcurrencySpec, DeadlineSpec
from nodes.ids import SNAKE_ID
from nodes.service_task import perform_task
from nodes.services import NodeServices, is_replay, not_replaying, steps_chained, superstep, thread_id
from nodes.telemetry import chained_node
from nodes.user_task import make_user_task_node

STEP_ID = SNAKE_ID
# A user step's result saying the step failed ({"status": "failed", "error": "..."}, REPORTED_FAILED): a saga
# compensates, a structured journey stands failed at the step until retried.
STEP_REPORTED_FAILED = "StepReportedFailed"  # the error type of such a failure


class Branch(BaseModel):
    """Go to ``to`` when ``when`` holds for the step result; a branch without ``when`` is the default."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    to: str
    when: Criteria | None = None


class Step(CallOptions):
    """One step of a structured journey: the agent that does it, or the user, and where it leads; its
    agent call's ``timeout``, ``retry`` and ``fallbacks`` (:class:`CallOptions`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    step_id: str = Field(json_schema_extra={"pattern": STEP_ID.pattern})  # checked below, with a fix
    name: str = ""
    description: str = ""
    agent: str | None = Field(default=None, description="intent of the agent that does this step's work")
    mode: Literal["user", "auto"] = Field(
        default="user",
        description="user: waits for advance_journey_step; auto: runs as soon as it is reached",
    )
    input_schema: dict[str, Any] | None = None
    output_schema: dict[str, Any] | None = None
    next_steps: tuple[str | Branch, ...] | None = Field(
        default=None, description="None: the next step in order; (): the journey ends here"
    )
    milestone: bool = True

    @field_validator("step_id")
    @classmethod
    def _step_id_shape(cls, value: str) -> str:
        if not STEP_ID.match(value):
            raise ValueError(f"step_id {value!r} must be lower_snake_case (letters, digits, underscores)")
        return value

    @property
    def title(self) -> str:
        return self.name or self.step_id.replace("_", " ").capitalize()


class StructuredSpec(Grants):
    """A structured journey design: steps run in order, with optional branches."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    journey_type: str = Field(min_length=1)
    name: str = ""
    steps: tuple[Step, ...] = Field(min_length=1)
    requirements: dict[str, Any] = Field(default_factory=dict)
    concurrency: ConcurrencySpec | None = Field(
        default=None, description="at most `limit` running journeys per value of `key` in the start context"
    )
    deadline: DeadlineSpec | None = Field(
        default=None, description="the whole run's deadline: it fails, or a saga compensates, when it passes"
    )
    evaluation: EvaluationSpec | None = Field(
        default=None, description="the workflow tier: thresholds each finished run is evaluated against"
    )

    @property
    def step_ids(self) -> list[str]:
        return [s.step_id for s in self.steps]

    def step(self, step_id: str) -> Step:
        return self.steps_by_id[step_id]  # KeyError for an unknown id

    @cached_property
    def steps_by_id(self) -> dict[str, Step]:
        """Each step by its id, built once: a run looks steps up at every step (a scan made a long journey's run
        quadratic in its steps). A repeated id (a design validation refuses) names its first step."""
        found: dict[str, Step] = {}
        for step in self.steps:
            found.setdefault(step.step_id, step)
        return found

    def branches(self, step_id: str) -> list[Branch]:
        """The resolved outgoing branches of a step (the implicit "next in order" made explicit)."""
        return list(self.outgoing[step_id])

    @cached_property
    def outgoing(self) -> dict[str, tuple[Branch, ...]]:
        """Each step's resolved outgoing branches, built once: the spec is frozen, and a run asks at every step."""
        ids = self.step_ids
        resolved: dict[str, tuple[Branch, ...]] = {}
        for position, step in enumerate(self.steps):
            if step.step_id in resolved:  # a repeated id (a design validation refuses): the first one counts
                continue
            if step.next_steps is None:
                resolved[step.step_id] = (Branch(to=ids[position + 1]),) if position + 1 < len(ids) else ()
            else:
                resolved[step.step_id] = tuple(b if isinstance(b, Branch) else Branch(to=b) for b in step.next_steps)
        return resolved

    def choose_next(self, step_id: str, result: Mapping[str, Any]) -> str | None:
        """The step after ``step_id`` for this result, or None when the journey ends there."""
        branches = self.outgoing[step_id]
        if not branches:
            return None
        explicit = result.get("next_step")
        if isinstance(explicit, str) and explicit in {b.to for b in branches}:
            return explicit
        for branch in branches:
            if branch.when is not None and branch.when.holds(result):
                return branch.to
        return next(b.to for b in branches if b.when is None)  # validated: a default exists


class StructuredState(TypedDict, total=False):
    """What a step journey checkpoints. Progress (completed steps, outputs) is history and lives in
    the event log; the current step is where the graph waits. A step in the middle writes nothing here
    but its routing, so it costs the checkpointer no more than a hand-written node does."""

    context: dict[str, Any]
    status: str  # in_progress from the start; completed by the last step; a saga's compensating/compensated/failed
    step_input: dict[str, Any] | None  # the answer of the last user step, read by that step's work node
    failure: dict[str, Any] | None
    failed_call: dict[str, str] | None  # a saga: the step and key of a call that may have acted and not completed
    compensated_steps: list[str]
    compensation_failure: dict[str, Any] | None


# What a user's report that a step failed is checked against, instead of the step's input_schema (which describes
# the result of a step that succeeded, so that a report could not pass it).
FAILURE_REPORT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "status": {"const": REPORTED_FAILED},
        "error": {"type": "string", "description": "why the step failed"},
        "step_id": {"type": "string"},
    },
    "required": ["status"],
}


def reported_failed(result: Mapping[str, Any] | None) -> bool:
    """Whether a user step's result says the step failed (``{"status": "failed", "error": "why"}``)."""
    return result is not None and result.get("status") == REPORTED_FAILED


def result_schema(step: Step, result: object) -> dict[str, Any] | None:
    """The schema a user's ``result`` for ``step`` is checked against: the step's ``input_schema``, or, for a
    report that the step failed, :data:`FAILURE_REPORT_SCHEMA`."""
    if isinstance(result, Mapping) and reported_failed(result):
        return FAILURE_REPORT_SCHEMA
    return step.input_schema


def validate_structured(spec: StructuredSpec, registry: AgentRegistry | None = None) -> list[str]:
    """Every design problem, each with how to fix it. Empty when the spec is sound."""
    problems: list[str] = []
    ids = spec.step_ids
    known = set(ids)
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        return [f"step ids must be unique; rename the repeated {duplicates}"]
    edges: dict[str, list[str]] = {}
    for step in spec.steps:
        branches = spec.branches(step.step_id)
        targets = [b.to for b in branches]
        for target in targets:
            if target not in known:
                problems.append(
                    f"step {step.step_id!r} lists unknown next step {target!r}; known steps: {', '.join(ids)}"
                )
        defaults = [b for b in branches if b.when is None]
        if len(defaults) > 1:
            problems.append(f"step {step.step_id!r} has {len(defaults)} default branches; keep one without `when`")
        if branches and not defaults:
            problems.append(
                f"step {step.step_id!r} branches on conditions but has no default; "
                "add a branch without `when` for results that match none"
            )
        if step.mode == "auto" and step.input_schema is not None:
            problems.append(f"auto step {step.step_id!r} takes no input; drop its input_schema or make it a user step")
        for label, schema in (("input_schema", step.input_schema), ("output_schema", step.output_schema)):
            if schema is not None:
                try:
                    schemas.check_schema(schema)
                except jsonschema.SchemaError as exc:
                    problems.append(f"step {step.step_id!r} has an invalid {label}: {exc.message}")
        for intent in (step.agent, *step.fallbacks) if registry is not None else ():
            if intent is not None and registry is not None and intent not in registry:
                problems.append(
                    f"step {step.step_id!r} needs an agent for intent {intent!r}; register one with "
                    f"runtime.agents.register({intent!r}, agent)"
                )
        edges[step.step_id] = [t for t in targets if t in known]
    if problems:
        return problems

    reachable = _reachable(ids[0], edges)
    for step_id in ids:
        if step_id not in reachable:
            problems.append(
                f"step {step_id!r} is unreachable from the first step {ids[0]!r}; "
                "list it in some step's next_steps or remove it"
            )
    reverse: dict[str, list[str]] = {i: [] for i in ids}
    for source, targets in edges.items():
        for target in targets:
            reverse[target].append(source)
    can_finish: set[str] = set()
    for end in (i for i in ids if not edges[i]):
        can_finish |= _reachable(end, reverse)
    for step_id in ids:
        if step_id in reachable and step_id not in can_finish:
            problems.append(f"step {step_id!r} has no path to an end; give a step it leads to an empty next_steps")
    return problems


def _reachable(start: str, edges: Mapping[str, list[str]]) -> set[str]:
    seen, stack = {start}, [start]
    while stack:
        for nxt in edges[stack.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return seen


AWAIT_SUFFIX = ".await"


def await_node(step_id: str) -> str:
    return f"{step_id}{AWAIT_SUFFIX}"


def entry_node(step: Step) -> str:
    return await_node(step.step_id) if step.mode == "user" else step.step_id


COMPENSATE_NODE = "compensate"


def _noted(config: RunnableConfig, key: str, step_id: str, output: dict[str, Any]) -> None:
    """A step's completion, logged already (or behind the run, settled before the run returns), noted for the
    caller that asked for the run's notes (``RunOptions.notes``): per step's key (a step visited again has
    another), its id and its agent's output, as its ``step.completed`` event records them."""
    notes = (config.get("configurable") or {}).get(NOTES)
    if notes is not None:
        notes[key] = (step_id, output)


def build_structured_graph(
    spec: StructuredSpec,
    services: NodeServices,
    *,
    compensation: StateGraph[Any] | None = None,
) -> StateGraph[StructuredState]:
    """Compile-ready graph for ``spec``. With ``compensation`` (a saga), a failing step routes there."""
    work = _StepWork(spec, services, spec.granted_permissions, compensating=compensation is not None)
    builder: StateGraph[StructuredState] = StateGraph(StructuredState)
    for step in spec.steps:
        if step.mode == "user":
            ask = make_user_task_node(
                step.step_id,
                {"kind": "step_input", "title": step.title},
                step.input_schema,
                "step_input",
                schema_of=partial(result_schema, step),
            )
            builder.add_node(await_node(step.step_id), cast(Any, ask))
            builder.add_edge(await_node(step.step_id), step.step_id)
        targets = {entry_node(spec.step(b.to)) for b in spec.branches(step.step_id)} or {END}
        if compensation is not None:
            targets.add(COMPENSATE_NODE)
        builder.add_node(
            step.step_id,
            _step_runner(step, work),
            destinations=tuple(sorted(targets)),
        )
    if compensation is not None:
        builder.add_node(COMPENSATE_NODE, compensation.compile())
        builder.add_edge(COMPENSATE_NODE, END)
    builder.add_edge(START, entry_node(spec.steps[0]))
    return builder


def _step_runner(step: Step, work: _StepWork) -> Any:
    async def run_step(state: StructuredState, config: RunnableConfig) -> Command[str]:
        # A user step's result was written by its own await node just before; an auto step has none.
        current, result = step, (state.get("step_input") or {}) if step.mode == "user" else {}
        # A saga's steps are not replayed from the log after a crash (see CHAIN_FLAG): one node each.
        at, chained = superstep(config), steps_chained(config) and not work.compensating
        visits = _chain_limit(config)
        for visit in range(visits):
            if visit:
                chained_node(config, current.step_id)  # its own span and duration, as a node of its own has
            # The superstep (and, for a step chained after others in it, its place in the chain) tells visits
            # of a looping step apart, and is the same when a crash replays them.
            key = step_key(thread_id(config), current.step_id, f"{at}.{visit}" if visit else at)
            if visit and is_replay(config):
                key = await work.logged_apart(current, at + visit, config) or key
            done = await work.perform(current, result, state, key, config)
            if isinstance(done, Command):
                return done
            following_id, replayed = done
            if following_id is None:
                return Command(goto=END, update={"status": "completed"})
            following = work.spec.step(following_id)
            if not chained or following.mode == "user":
                return Command(goto=entry_node(following))
            current, result = following, {}
            if not replayed and is_replay(config):  # done now, so nothing after it is logged: no more look-ups
                config = not_replaying(config)
        raise GraphRecursionError(
            f"journey {thread_id(config)!r} ran {visits} auto steps in a row without reaching a user step or its "
            "end; give the loop of auto steps an exit (a branch to a user step or an end), or raise the run's "
            "recursion_limit"
        )

    run_step.__name__ = f"run_{step.step_id}"
    return run_step


def _chain_limit(config: RunnableConfig) -> int:
    """How many steps one node may run in a row: the run's recursion limit (LangGraph's default unless the run
    sets one), as LangGraph bounds the run's supersteps."""
    limit = config.get("recursion_limit")
    return limit if isinstance(limit, int) and limit > 0 else DEFAULT_RECURSION_LIMIT


@dataclass(frozen=True, slots=True)
class _StepWork:
    """How any step of one design does its work: shared by its step nodes, since a node may go on to the next
    auto step itself (``steps_chained``)."""

    spec: StructuredSpec
    services: NodeServices
    granted: frozenset[str] | None
    compensating: bool  # a saga: a failing step sends the journey to its compensation

    async def logged_apart(self, step: Step, at: int, config: RunnableConfig) -> str | None:
        """The key under which a run that ran each step in a superstep of its own (before nodes went on to
        the next step themselves) logged ``step`` in superstep ``at``; None when it did not. Such a run, cut
        short by a crash and replayed by this version, finds its steps there and does not repeat them."""
        key = step_key(thread_id(config), step.step_id, at)
        return key if await logged(self.services.events, thread_id(config), key, replay=True) is not None else None

    async def perform(
        self, step: Step, result: dict[str, Any], state: StructuredState, key: str, config: RunnableConfig
    ) -> tuple[str | None, bool] | Command[str]:
        """``step``'s work, logged under ``key``: the id of the step it leads to (None: the journey ends there)
        and whether the work was found logged (replayed) rather than done; or, in a saga whose step failed, the
        command that sends the journey to its compensation."""
        spec = self.spec
        if step.mode == "user" and reported_failed(result):
            # The user says the step failed, so its agent is not called: the step fails as when its agent fails (a
            # saga undoes what it completed; a structured journey stands failed here until retried).
            reason = result.get("error")
            error = reason if isinstance(reason, str) and reason else f"step {step.step_id!r} was reported failed"
            if self.compensating:
                return await self.compensate(step, key, config, error, STEP_REPORTED_FAILED)
            raise StepReportedFailedError(
                f"step {step.step_id!r} was reported failed: {error}; retry it (retry_journey_step) to give its "
                "result again",
                step=step.step_id,
                reported=error,
            )
        chosen: tuple[dict[str, Any], str | None] | None = None  # the output recorded, and the step it chose

        def record(output: dict[str, Any]) -> Recording:
            nonlocal chosen
            following = spec.choose_next(step.step_id, {**result, "output": output})
            chosen = (output, following)
            # Every step writes one of these: defaults (no result, a milestone) are left out.
            recorded: dict[str, Any] = {"next_step": following}
            if result:
                recorded["step_result"] = result
            if not step.milestone:
                recorded["milestone"] = False
            # Written behind the run when the next step's work comes next (in this node or the next), which
            # settles it first.
            behind = following is not None and spec.step(following).mode != "user"
            return Recording(recorded, status="completed" if following is None else None, behind=behind)

        try:
            outcome = await perform_task(
                self.services,
                config,
                intent=step.agent,
                payload={
                    "step_id": step.step_id,
                    "step_result": result,
                    "context": state.get("context") or {},
                    "requirements": spec.requirements,
                },
                step=step.step_id,
                key=key,
                event_type="step.completed",
                recorder=record,
                granted_permissions=self.granted,
                granted_intents=spec.granted_intents,
                output_schema=step.output_schema,
                options=step,
            )
        except AgentError as exc:
            if not self.compensating:
                raise
            # Its agent may have acted: the compensation undoes it too (see nodes.compensation).
            return await self.compensate(step, key, config, str(exc), exc.code, called=called(exc))
        _noted(config, key, step.step_id, outcome.output)
        # No state update: the step's record is its event, and where the journey stands is the route: the one
        # its record chose (its branches judged once), else (replayed from the log) chosen from the output logged.
        if chosen is not None and chosen[0] is outcome.output:
            return chosen[1], outcome.replayed
        return spec.choose_next(step.step_id, {**result, "output": outcome.output}), outcome.replayed

    async def compensate(
        self, step: Step, key: str, config: RunnableConfig, error: str, error_type: str, *, called: bool = False
    ) -> Command[str]:
        """Send a saga whose ``step`` failed to its compensation (logged under ``key``, once). ``called``: the
        step's agent was called and may have acted, so its call is undone too."""
        failure = {"step": step.step_id, "error": error, "error_type": error_type}
        await self.services.events.append(
            thread_id(config),
            [NewEvent("saga.compensating", failure, step.step_id, f"{key}:failed")],
            status="compensating",
        )
        update: dict[str, Any] = {"status": "compensating", "failure": failure}
        if called:
            update["failed_call"] = {"step": step.step_id, "call": key}
        return Command(goto=COMPENSATE_NODE, update=update)

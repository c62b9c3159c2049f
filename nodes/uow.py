"""The unit-of-work executor: a task DAG run as a LangGraph subgraph, fanned out with ``Send``.

    start ──▶ plan ──Send(k)──▶ run_task ──▶ plan ──▶ … ──▶ finish
                 └──(a task failed, or a rollback was requested)──▶ compensate ──▶ finish

- ``plan`` releases the tasks whose ``depends_on`` have all completed, at most ``max_parallel`` at a
  time; they run in parallel in one superstep.
- ``run_task`` builds the task's input from static values and declarative ``input_from`` paths into
  earlier outputs, checks it against ``input_schema``, and calls the agent found by intent through the
  shared agent path (per-task retries, output checked against ``output_schema``, one keyed event).
- When a task fails for good, or a rollback is requested mid-run, ``compensate`` undoes the completed
  tasks that declare a compensation, dependents first; tasks that never started stay ``pending``.
  Nothing is left half-done: every task ends pending, completed, failed or rolled_back.
- An undo that fails for good leaves its task (and those after it) done, and the run failed. A later run
  of the unit first undoes what such runs left (``undo_left``, keyed as their own undo, ``uow.undone``);
  while that still fails, none of its own tasks starts. A run whose purpose is ``undo`` (a rollback's, of
  the stage it unwinds) does only that, and ends ``rolled_back``.

The subgraph is compiled without a checkpointer of its own: a crash re-runs it from ``start``, and
every write in it is keyed, so completed tasks are replayed from the event log, never called twice.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import jsonschema
from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Send
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator
from typing_extensions import TypedDict  # pydantic (Studio's input forms) needs it before 3.12

from agents.errors import AgentError
from agents.policy import Grants
from agents.registry import AgentRegistry
from agents.resilience import CallOptions
from checkpoints.events import NewEvent
from checkpoints.lifecycle import UNIT_UNDONE, run_totals, task_row, tasks_undone, unit_finished, unit_started
from nodes import schemas
from nodes.agent_call import Recorder, Recording
from nodes.compensation import COMPENSATION_RETRY
from nodes.service_task import perform_task
from nodes.services import NodeServices, thread_id

TASK_ID = re.compile(r"^[a-z][a-z0-9_-]*$")
UNIT_ID = TASK_ID  # the seed's ids read "uow-sandbox-medtronic-001"
UowStatus = Literal["pending", "running", "completed", "failed", "rolled_back"]
JSON_TYPES = {"string", "number", "integer", "boolean", "array", "object", "null"}
SCHEMA_KEYWORDS = {"type", "properties", "required", "$schema", "items", "enum", "const", "allOf", "anyOf", "oneOf"}
INPUT_ROOTS = ("tasks", "units", "journey")


def schema_from_shorthand(value: Any) -> Any:
    """Accept the seed's ``{"client_id": "string", "data_sources": "array"}`` as well as JSON Schema."""
    if not isinstance(value, Mapping) or not value or SCHEMA_KEYWORDS & set(value):
        return value
    if all(isinstance(v, str) and v in JSON_TYPES for v in value.values()):
        return {
            "type": "object",
            "properties": {k: {"type": v} for k, v in value.items()},
            "required": list(value),
        }
    return value


class TaskSpec(CallOptions):
    """One task of a unit of work: the agent that does it and the tasks it depends on; its call's
    ``timeout``, ``retry`` and ``fallbacks`` (:class:`CallOptions`; ``max_retries`` sets the attempts
    unless ``retry.max_attempts`` does).

    The seed's spellings are accepted: ``input_data`` for ``input``, and a task that names only its
    ``agent_id`` is served by the agent registered for that id as its intent."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)
    human_route: ClassVar[bool] = False  # a unit runs to its end or compensates: it does not wait for people

    task_id: str
    name: str = ""
    description: str = ""
    intent: str = Field(min_length=1, description="the agent is discovered by this intent in the registry")
    agent_id: str | None = Field(default=None, description="informational: the agent expected to serve it")
    depends_on: tuple[str, ...] = ()
    input: dict[str, Any] = Field(
        default_factory=dict, validation_alias=AliasChoices("input", "input_data"), description="static input values"
    )
    input_from: dict[str, str] = Field(
        default_factory=dict,
        description="input field → path: tasks.<task>.<field>, units.<uow>.<task>.<field> or journey.<field>",
    )
    input_schema: dict[str, Any] | None = None
    output_schema: dict[str, Any] | None = None
    max_retries: int = Field(default=3, ge=0, le=20)
    compensation: str | None = Field(default=None, description="intent of the agent that undoes this task")

    @model_validator(mode="before")
    @classmethod
    def _agent_id_as_intent(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "intent" not in data and isinstance(data.get("agent_id"), str):
            return {**data, "intent": data["agent_id"]}
        return data

    @field_validator("task_id")
    @classmethod
    def _task_id_shape(cls, value: str) -> str:
        if not TASK_ID.match(value):
            raise ValueError(f"task_id {value!r} must be lowercase letters, digits, '-' or '_', starting with a letter")
        return value

    @field_validator("input_schema", "output_schema", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return schema_from_shorthand(value)

    @property
    def title(self) -> str:
        return self.name or self.task_id


class UnitOfWorkSpec(BaseModel):
    """A unit of work: tasks that complete together or are compensated together."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    uow_id: str
    name: str = ""
    description: str = ""
    tasks: tuple[TaskSpec, ...] = Field(min_length=1)
    dependencies: tuple[str, ...] = Field(default=(), description="other units of work that must complete first")
    trigger: Literal["on_entry", "on_demand"] = Field(
        default="on_demand", description="on_entry: runs as part of entering its stage; on_demand: when asked"
    )
    max_parallel: int = Field(default=4, ge=1, le=256, description="tasks in flight at once")

    @field_validator("uow_id")
    @classmethod
    def _uow_id_shape(cls, value: str) -> str:
        if not UNIT_ID.match(value):
            raise ValueError(f"uow_id {value!r} must be lowercase letters, digits, '-' or '_', starting with a letter")
        return value

    @property
    def task_ids(self) -> list[str]:
        return [t.task_id for t in self.tasks]

    def task(self, task_id: str) -> TaskSpec:
        for task in self.tasks:
            if task.task_id == task_id:
                return task
        raise KeyError(task_id)

    def topological_order(self) -> list[str]:
        """Task ids with every task after its dependencies (spec order among equals). Needs a valid DAG."""
        done: list[str] = []
        remaining = list(self.tasks)
        while remaining:
            ready = [t for t in remaining if all(d in done for d in t.depends_on)]
            if not ready:
                raise ValueError(f"unit {self.uow_id!r} has a dependency cycle")
            done.extend(t.task_id for t in ready)
            remaining = [t for t in remaining if t.task_id not in done]
        return done

    def upstream(self, task_id: str) -> set[str]:
        """Every task ``task_id`` depends on, directly or not."""
        seen: set[str] = set()
        stack = list(self.task(task_id).depends_on)
        while stack:
            current = stack.pop()
            if current not in seen and current in self.task_ids:
                seen.add(current)
                stack.extend(self.task(current).depends_on)
        return seen


def task_base(task: TaskSpec) -> dict[str, Any]:
    """What the spec fixes of a task's record (:data:`checkpoints.lifecycle.TASK_FIELDS`)."""
    return {
        "task_id": task.task_id,
        "name": task.title,
        "agent_id": task.agent_id or task.intent,
        "intent": task.intent,
        "input_data": dict(task.input),
        "max_retries": task.max_retries,
    }


def task_record(task: TaskSpec, entry: Mapping[str, Any]) -> dict[str, Any]:
    """A task as a unit-of-work run stores it (:func:`checkpoints.lifecycle.task_row`)."""
    return task_row(task_base(task), entry)


def find_cycle(edges: Mapping[str, Sequence[str]]) -> list[str] | None:
    """A dependency cycle as a path that returns to its start (``[a, b, a]``), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in edges.get(node, ()):
            if nxt not in edges:
                continue
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if state.get(nxt) is None and (found := visit(nxt, [*path, nxt])):
                return found
        state[node] = 2
        return None

    for node in edges:
        if state.get(node) is None and (found := visit(node, [node])):
            return found
    return None


def validate_unit(
    unit: UnitOfWorkSpec, registry: AgentRegistry | None = None, units: Mapping[str, UnitOfWorkSpec] | None = None
) -> list[str]:
    """Every problem of one unit's task DAG, each with how to fix it."""
    where = f"unit {unit.uow_id!r}"
    ids = unit.task_ids
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        return [f"{where}: task ids must be unique; rename the repeated {duplicates}"]
    problems: list[str] = []
    for task in unit.tasks:
        for dep in task.depends_on:
            if dep == task.task_id:
                problems.append(f"{where}: task {task.task_id!r} depends on itself; remove it from depends_on")
            elif dep not in ids:
                problems.append(
                    f"{where}: task {task.task_id!r} depends on unknown task {dep!r}; tasks: {', '.join(ids)}"
                )
    cycle = find_cycle({t.task_id: [d for d in t.depends_on if d != t.task_id] for t in unit.tasks})
    if cycle:
        problems.append(
            f"{where}: tasks depend on each other in a cycle ({' -> '.join(cycle)}); "
            "break it by removing one of those depends_on"
        )
    if problems:
        return problems
    for task in unit.tasks:
        problems += _input_problems(unit, task, units)
        for label, schema in (("input_schema", task.input_schema), ("output_schema", task.output_schema)):
            if schema is not None:
                try:
                    schemas.check_schema(schema)
                except jsonschema.SchemaError as exc:
                    problems.append(f"{where}: task {task.task_id!r} has an invalid {label}: {exc.message}")
        if registry is not None:
            roles = [(task.intent, "its work"), (task.compensation, "its compensation")]
            for intent, role in [*roles, *((fallback, "a fallback") for fallback in task.fallbacks)]:
                if intent is not None and intent not in registry:
                    problems.append(
                        f"{where}: task {task.task_id!r} needs an agent for intent {intent!r} ({role}); "
                        f"register one with runtime.agents.register({intent!r}, agent)"
                    )
    return problems


def _input_problems(unit: UnitOfWorkSpec, task: TaskSpec, units: Mapping[str, UnitOfWorkSpec] | None) -> list[str]:
    where = f"unit {unit.uow_id!r}: task {task.task_id!r}"
    problems = []
    upstream = unit.upstream(task.task_id)
    for field, path in task.input_from.items():
        parts = path.split(".")
        root = parts[0]
        if root not in INPUT_ROOTS or len(parts) < 2:
            problems.append(
                f"{where}: input {field!r} maps from {path!r}; paths start with tasks.<task>, "
                "units.<uow>.<task> or journey.<field>"
            )
        elif root == "tasks" and parts[1] not in upstream:
            hint = "add it to depends_on" if parts[1] in unit.task_ids else f"tasks: {', '.join(unit.task_ids)}"
            problems.append(
                f"{where}: input {field!r} maps from task {parts[1]!r}, which does not run before it; {hint}"
            )
        elif root == "units":
            if parts[1] not in unit.dependencies:
                problems.append(
                    f"{where}: input {field!r} maps from unit {parts[1]!r}; list it in the unit's dependencies"
                )
            elif (
                units is not None and parts[1] in units and (len(parts) < 3 or parts[2] not in units[parts[1]].task_ids)
            ):
                problems.append(
                    f"{where}: input {field!r} maps from {path!r}, but unit {parts[1]!r} has no such task; "
                    f"its tasks: {', '.join(units[parts[1]].task_ids)}"
                )
    return problems


def _recorder(payload: dict[str, Any]) -> Recorder:
    """What a task's completion event adds to the agent's output: which run and unit it belongs to."""

    def record(_output: dict[str, Any]) -> Recording:
        return Recording(payload)

    return record


def resolve(document: Mapping[str, Any], path: str) -> tuple[bool, Any]:
    """(found, value) at a dotted ``path`` into nested mappings."""
    current: Any = document
    for part in path.split("."):
        if not isinstance(current, Mapping) or part not in current:
            return False, None
        current = current[part]
    return True, current


# --- the subgraph ---------------------------------------------------------------------------------


UNDO = "undo"  # the purpose of a run that only undoes what failed runs of its unit left (undo_left), then ends


def _next_phase(state: UowState) -> str:
    return str(state["phase"])


def _merge(left: dict[str, Any] | None, right: dict[str, Any]) -> dict[str, Any]:
    return {**(left or {}), **right}


class UowInput(TypedDict):
    """What a unit of work graph is started with."""

    uow_request: dict[str, Any]


class UowOutput(TypedDict):
    """What a unit of work graph returns."""

    uow_result: dict[str, Any]


class UowState(TypedDict, total=False):
    """The unit of work graph's state: task results, what was undone and any failure."""

    uow_request: dict[str, Any]
    uow_result: dict[str, Any]
    upstream: dict[str, dict[str, Any]]
    tasks: Annotated[dict[str, dict[str, Any]], _merge]
    phase: str
    aborted: str | None
    failure: dict[str, Any] | None
    compensation_failure: dict[str, Any] | None
    task: str
    left: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class UnitHooks:
    """What the executor needs from its host: earlier units' outputs, why a run must stop early
    (a rollback asked for it, by run id; None: it goes on), and the earlier runs of a unit whose undo failed
    for good (by journey and unit: each run's id and task records), which a new run undoes first."""

    load_outputs: Callable[[str, Sequence[str]], Awaitable[dict[str, dict[str, Any]]]]
    abort_reason: Callable[[str], Awaitable[str | None]]
    left_undone: Callable[[str, str], Awaitable[list[dict[str, Any]]]]


def unit_request(
    run_id: str, unit: UnitOfWorkSpec, *, stage: str, purpose: str, journey: Mapping[str, Any]
) -> dict[str, Any]:
    """The input of one run of a unit (``run_id`` is unique per journey and keys every write)."""
    return {"run_id": run_id, "uow_id": unit.uow_id, "stage": stage, "purpose": purpose, "journey": dict(journey)}


def build_uow_graph(
    units: Mapping[str, UnitOfWorkSpec], services: NodeServices, hooks: UnitHooks, *, grants: Grants | None = None
) -> CompiledStateGraph[Any, Any, Any, Any]:
    """The executor for any of ``units`` (chosen by ``uow_request.uow_id``), compiled to add as a node.
    ``grants``: the host spec's least privilege, applied to every task's agent call."""
    granted_permissions = grants.granted_permissions if grants is not None else None
    granted_intents = grants.granted_intents if grants is not None else None

    def unit_of(state: UowState) -> UnitOfWorkSpec:
        return units[state["uow_request"]["uow_id"]]

    async def start(state: UowState, config: RunnableConfig) -> UowState:
        request = state["uow_request"]
        unit = units[request["uow_id"]]
        journey_id = thread_id(config)
        now = services.clock.now()
        pending = {t: {"status": "pending", "attempts": 0} for t in unit.task_ids}
        row = unit_started(
            sealer=services.events.sealer,
            run_id=request["run_id"],
            journey_id=journey_id,
            uow_id=unit.uow_id,
            stage=request["stage"],
            purpose=request["purpose"],
            status="running",
            dependencies=list(unit.dependencies),
            tasks={t.task_id: task_record(t, pending[t.task_id]) for t in unit.tasks},
            tasks_total=0,
            tasks_failed=0,
            task_attempts=0,
            created_at=now,
            started_at=now,
        )
        # With what its row needs, so the row can be rebuilt from the log (checkpoints.rebuild).
        started = {
            "run_id": request["run_id"],
            "stage": request["stage"],
            "purpose": request["purpose"],
            "dependencies": list(unit.dependencies),
            "tasks": {t.task_id: task_base(t) for t in unit.tasks},
            "at": now.isoformat(),
        }
        event = NewEvent("uow.started", started, unit.uow_id, f"{request['run_id']}:started")
        await services.events.append(journey_id, [event], also=[row])
        needs_upstream = any(p.startswith("units.") for t in unit.tasks for p in t.input_from.values())
        upstream = await hooks.load_outputs(journey_id, unit.dependencies) if needs_upstream else {}
        left = await hooks.left_undone(journey_id, unit.uow_id)
        phase = "undo_left" if left else "finish" if request["purpose"] == UNDO else "plan"
        return {"tasks": pending, "upstream": upstream, "phase": phase, "aborted": None, "failure": None, "left": left}

    async def undo(
        config: RunnableConfig,
        unit: UnitOfWorkSpec,
        run_id: str,
        done: Mapping[str, Any],
        journey: Mapping[str, Any],
        reason: Mapping[str, Any],
    ) -> tuple[dict[str, str | None], dict[str, Any] | None]:
        """Undo the tasks of run ``run_id`` that ``done`` names (task id → its output), dependents first, each
        keyed as that run's undo (one already made replays from the log). Answers the handler of each task undone
        (None: nothing to undo) and, when a handler failed for good, that failure (the tasks before it in the
        order stay done)."""
        undone: dict[str, str | None] = {}
        for task_id in reversed(unit.topological_order()):
            if task_id not in done:
                continue
            task = unit.task(task_id)
            if task.compensation is not None:
                try:
                    await perform_task(
                        services,
                        config,
                        intent=task.compensation,
                        payload={
                            "task_id": task_id,
                            "original_output": done[task_id],
                            "journey": dict(journey),
                            "reason": dict(reason),
                        },
                        step=f"{unit.uow_id}.{task_id}",
                        key=f"{run_id}:{task_id}:compensate",
                        event_type="task.compensated",
                        recorder=_recorder({"run_id": run_id, "handler": task.compensation}),
                        retry=COMPENSATION_RETRY,
                        always_replay=True,
                    )
                except AgentError as exc:
                    return undone, {"task_id": task_id, "handler": task.compensation, "error": str(exc)}
            undone[task_id] = task.compensation
        return undone, None

    async def undo_left(state: UowState, config: RunnableConfig) -> UowState:
        """Undo what earlier runs of the unit left done when their undo failed for good, before this run does
        anything: running the unit again must not add its effects to theirs."""
        request = state["uow_request"]
        unit = units[request["uow_id"]]
        journey_id = thread_id(config)
        for earlier in state.get("left") or []:
            run_id, records = earlier["run_id"], earlier["tasks"]
            done = {t: r.get("output_data") for t, r in records.items() if r["status"] == "completed"}
            reason = {"undone_before_run": request["run_id"]}
            undone, broken = await undo(config, unit, run_id, done, request["journey"], reason)
            if undone:
                now = services.clock.now()
                payload = {"run_id": run_id, "undone": undone, "by_run": request["run_id"], "at": now.isoformat()}
                row = unit_finished(run_id, sealer=services.events.sealer, tasks=tasks_undone(records, undone))
                key = f"{run_id}:undone:{request['run_id']}"
                await services.events.append(journey_id, [NewEvent(UNIT_UNDONE, payload, unit.uow_id, key)], also=[row])
            if broken is not None:
                failure = {
                    "error": (
                        f"an earlier run of unit {unit.uow_id!r} ({run_id}) failed leaving tasks done, and this run "
                        "starts none of its own until they are undone"
                    ),
                    "error_type": "CompensationFailedError",
                }
                return {"phase": "finish", "failure": failure, "compensation_failure": {**broken, "run_id": run_id}}
        return {"phase": "finish" if request["purpose"] == UNDO else "plan"}

    async def plan(state: UowState, config: RunnableConfig) -> UowState:
        unit = unit_of(state)
        tasks = state.get("tasks") or {}
        failed = [t for t in unit.task_ids if tasks[t]["status"] == "failed"]
        if failed:
            first = tasks[failed[0]]
            failure = {"task_id": failed[0], "error": first.get("error"), "error_type": first.get("error_type")}
            return {"phase": "compensate", "failure": failure}
        request = state["uow_request"]
        if request["purpose"] != "rollback" and (reason := await hooks.abort_reason(request["run_id"])):
            return {"phase": "compensate", "aborted": reason}
        completed = {t for t in unit.task_ids if tasks[t]["status"] == "completed"}
        if len(completed) == len(unit.tasks):
            return {"phase": "finish"}
        ready = [
            t.task_id for t in unit.tasks if tasks[t.task_id]["status"] == "pending" and set(t.depends_on) <= completed
        ][: unit.max_parallel]
        if not ready:  # unreachable for a validated DAG; never end the run silently
            return {"phase": "compensate", "failure": {"error": "no task can start", "error_type": "StuckUnitError"}}
        return {"phase": "run", "tasks": {t: {**tasks[t], "status": "running"} for t in ready}}

    async def route(state: UowState) -> list[Send] | str:
        phase = state.get("phase")
        if phase == "run":
            tasks = state.get("tasks") or {}
            running = [t for t in unit_of(state).task_ids if tasks[t]["status"] == "running"]
            return [Send("run_task", {**state, "task": t}) for t in running]
        return "compensate" if phase == "compensate" else "finish"

    async def run_task(state: UowState, config: RunnableConfig) -> UowState:
        request = state["uow_request"]
        unit = units[request["uow_id"]]
        task = unit.task(state["task"])
        tasks = state.get("tasks") or {}

        def failed(message: str, error_type: str, attempts: int, given: Mapping[str, Any] | None = None) -> UowState:
            entry = {"status": "failed", "attempts": attempts, "error": message, "error_type": error_type}
            return {"tasks": {task.task_id: entry if given is None else {**entry, "input": dict(given)}}}

        document = {
            "journey": request["journey"],
            "tasks": {t: v.get("output") or {} for t, v in tasks.items() if v["status"] == "completed"},
            "units": state.get("upstream") or {},
        }
        payload = dict(task.input)
        for field, path in task.input_from.items():
            found, value = resolve(document, path)
            if not found:
                message = f"task {task.task_id!r}: input {field!r} maps from {path!r}, which has no value"
                return failed(message, "InputMappingError", 0)
            payload[field] = value
        if task.input_schema is not None:
            try:
                schemas.validate(payload, task.input_schema)
            except jsonschema.ValidationError as exc:
                message = f"task {task.task_id!r}: its input breaks input_schema: {exc.message}"
                return failed(message, "InputSchemaError", 0, payload)
        base = services.caller.retry
        try:
            outcome = await perform_task(
                services,
                config,
                intent=task.intent,
                payload=payload,
                step=f"{unit.uow_id}.{task.task_id}",
                key=f"{request['run_id']}:{task.task_id}",
                event_type="task.completed",
                recorder=_recorder({"run_id": request["run_id"], "uow_id": unit.uow_id}),
                granted_permissions=granted_permissions,
                granted_intents=granted_intents,
                output_schema=task.output_schema,
                retry=dataclasses.replace(base, max_attempts=task.max_retries + 1),
                options=task,
            )
        except AgentError as exc:
            attempts = int(exc.details.get("attempts") or 0)  # 0: refused before any call
            return failed(f"task {task.task_id!r}: {exc}", exc.code, attempts, payload)
        done = {"status": "completed", "attempts": outcome.attempts, "output": outcome.output, "input": payload}
        return {"tasks": {task.task_id: done}}

    async def compensate(state: UowState, config: RunnableConfig) -> UowState:
        request = state["uow_request"]
        unit = units[request["uow_id"]]
        tasks = dict(state.get("tasks") or {})
        reason = state.get("failure") or {"aborted": state.get("aborted")}
        done = {t: entry.get("output") for t, entry in tasks.items() if entry["status"] == "completed"}
        undone, broken = await undo(config, unit, request["run_id"], done, request["journey"], reason)
        updates = {t: {**tasks[t], "status": "rolled_back", "compensation": handler} for t, handler in undone.items()}
        if broken is not None:
            return {"tasks": updates, "compensation_failure": broken, "phase": "finish"}
        return {"tasks": updates, "phase": "finish"}

    async def finish(state: UowState, config: RunnableConfig) -> UowState:
        request = state["uow_request"]
        unit = units[request["uow_id"]]
        tasks = state.get("tasks") or {}
        status: UowStatus
        if state.get("compensation_failure") or state.get("failure"):
            status = "failed"
        elif state.get("aborted") or request["purpose"] == UNDO:
            status = "rolled_back"
        else:
            status = "completed"
        failure = state.get("failure") or ({"aborted": state.get("aborted")} if state.get("aborted") else None)
        if state.get("compensation_failure"):
            failure = {**(failure or {}), "compensation_failure": state.get("compensation_failure")}
        # The outputs are in the tasks' own completion events; the summary has the rest of each entry.
        summary = {t: {k: v for k, v in tasks[t].items() if k != "output"} for t in unit.task_ids}
        now = services.clock.now()
        row = unit_finished(
            request["run_id"],
            sealer=services.events.sealer,
            status=status,
            tasks={t.task_id: task_record(t, tasks[t.task_id]) for t in unit.tasks},
            **run_totals(tasks),
            failure=failure,
            completed_at=now,
        )
        event = NewEvent(
            f"uow.{status}",
            {"run_id": request["run_id"], "tasks": summary, "failure": failure, "at": now.isoformat()},
            unit.uow_id,
            f"{request['run_id']}:finished",
        )
        await services.events.append(thread_id(config), [event], also=[row])
        result = {
            "run_id": request["run_id"],
            "uow_id": unit.uow_id,
            "stage": request["stage"],
            "purpose": request["purpose"],
            "status": status,
            "tasks": summary,
            "failure": failure,
        }
        return {"uow_result": result}

    builder: StateGraph[UowState, Any, UowInput, UowOutput] = StateGraph(
        UowState, input_schema=UowInput, output_schema=UowOutput
    )
    builder.add_node("start", start)
    builder.add_node("undo_left", undo_left)
    builder.add_node("plan", plan)
    builder.add_node("run_task", run_task)
    builder.add_node("compensate", compensate)
    builder.add_node("finish", finish)
    builder.add_edge(START, "start")
    builder.add_conditional_edges("start", _next_phase, ["undo_left", "plan"])
    builder.add_conditional_edges("undo_left", _next_phase, ["plan", "finish"])
    builder.add_conditional_edges("plan", route, ["run_task", "compensate", "finish"])
    builder.add_edge("run_task", "plan")
    builder.add_edge("compensate", "finish")
    builder.add_edge("finish", END)
    return builder.compile(checkpointer=False, name="unit_of_work")

"""The BPMN-style process spec: elements and the sequence flows between them (SPEC B1-B5).

A :class:`ProcessSpec` is declarative data, validated when deployed (``graphs.process.validation``)
and compiled by one builder into a LangGraph ``StateGraph`` (``graphs.process.builder``):

- ``service_task``: an agent call, with input and output variables and an optional compensation;
- ``user_task``: a human task in the inbox (assignee or candidate groups, response schema, SLA with
  an ``on_timeout`` escalation: notify, reassign, or complete with a default);
- ``exclusive_gateway`` (conditions on variables, one default flow), ``parallel_gateway`` (fork and
  join) and ``event_gateway`` (a race between the message and timer events it leads to);
- ``timer`` and ``message``: intermediate catch events; ``boundary_timer``: a timer on a user task;
- ``start`` (plain, message or timer) and ``end`` events;
- ``transaction``: ``execute_with_compensation`` over ``(do, undo)`` agent pairs.

Flows may be written ``"a -> b"``; a flow out of an exclusive gateway carries ``when`` (criteria on
the process variables, or one condition as a shorthand) or ``default: true``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

import jsonschema
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.config import JsonDict

from agents.policy import Grants
from agents.protocol import Agent
from agents.registry import RegisteredAgent, as_agent, intent_of
from agents.resilience import CallOptions, RetryPolicy
from checkpoints.schema import widths
from graphs.errors import SpecError
from graphs.kernel.designs import validation_problems
from nodes import schemas
from nodes.criteria import Criteria
from nodes.evaluation import EvaluationSpec
from nodes.flow import ConcurrencySpec, DeadlineSpec
from nodes.ids import SNAKE_ID
from nodes.timer import LONGEST, MissedTicks, TimerDefinition

ELEMENT_ID = SNAKE_ID
LONGEST_HOURS = LONGEST.total_seconds() / 3600
# Names a definition gives that its tables keep, as long as their columns (PostgreSQL refused longer ones
# when an instance reached the element, failing it; SQLite kept them).
Group = Annotated[str, Field(max_length=widths.GROUP)]
Assignee = Annotated[str, Field(max_length=widths.ASSIGNEE)]
MessageName = Annotated[str, Field(min_length=1, max_length=widths.MESSAGE_NAME)]
PROCESS_NAME = re.compile(r"^[a-z][a-z0-9_.\-]*$")
VariableMap = dict[str, str]  # variable name → field of the agent output / response / message payload
# An agent slot as the seed fills it: an intent name, or the agent itself (a callable, a class, a registry entry).
AgentSlot = str | object


def _as_mapping(value: Any) -> Any:
    # ["a", "b"] is shorthand for {"a": "a", "b": "b"}.
    if isinstance(value, list | tuple):
        return {str(v): str(v) for v in value}
    return value


def _kind_required(schema: JsonDict) -> None:
    # An element's type picks its model in the Element union, so the schema must ask for it, default or not.
    required = schema.get("required")
    schema["required"] = [*(required if isinstance(required, list) else []), "type"]


def _named_by_object(value: Any) -> bool:
    return value is not None and not isinstance(value, str | Mapping | list | tuple | BaseModel)


def _bind(agent: Any, bindings: dict[str, Agent]) -> str:
    intent = intent_of(agent)
    # A registry entry (runtime.agents.resolve(...)) stands for the agent it holds.
    bindings[intent] = agent.agent if isinstance(agent, RegisteredAgent) else as_agent(agent)
    return intent


class _BuiltInCode(BaseModel):
    """A model a user builds in code, as the design review writes a process (``ServiceTask(...)``,
    ``ProcessSpec(...)``): a mistake is the :class:`SpecError` that deploying the same spec as a dict raises,
    each problem on a line of its own, not pydantic's ``ValidationError``. (Validating data, as the server
    and ``processes.deploy`` do, goes through ``model_validate`` and is unchanged.)"""

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            named = f" {data['id']!r}" if isinstance(data.get("id"), str) else ""
            raise SpecError(validation_problems(exc), spec_name=f"{type(self).__name__}{named}") from None

    # pydantic calls a model's own __init__ when it validates the model nested in another, which would turn an
    # element's errors into a SpecError without their place in the spec; marked as its base __init__ is (as
    # RootModel's is), this one runs only when the model is built in code.
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]


class _Element(_BuiltInCode):
    """What every element shares. An agent slot (``agent``, ``compensation``, ``on_timeout``,
    ``notify``) takes an intent name or, as the seed writes it, the agent itself (a callable, or a
    class made with no arguments): the element keeps the intent and remembers the object, which
    ``processes.deploy`` registers for the user (:meth:`ProcessSpec.agent_bindings`)."""

    model_config = ConfigDict(frozen=True, extra="forbid", json_schema_extra=_kind_required, populate_by_name=True)
    _agent_slots: ClassVar[tuple[str, ...]] = ()

    id: str = Field(max_length=widths.ELEMENT_ID, json_schema_extra={"pattern": ELEMENT_ID.pattern})  # checked below
    name: str = Field(default="", max_length=widths.TASK_TITLE)  # a user task's title when it has none
    _bindings: dict[str, Agent] = PrivateAttr(default_factory=dict)

    @model_validator(mode="wrap")
    @classmethod
    def _agents_by_object(cls, data: Any, handler: ModelWrapValidatorHandler[Any]) -> Any:
        bindings: dict[str, Agent] = {}
        if isinstance(data, Mapping):
            data = cls._take_agents(dict(data), bindings)
        element = handler(data)
        element._bindings.update(bindings)
        return element

    @classmethod
    def _take_agents(cls, data: dict[str, Any], bindings: dict[str, Agent]) -> dict[str, Any]:
        for slot in cls._agent_slots:
            if _named_by_object(value := data.get(slot)):
                data[slot] = cls._slot_value(slot, _bind(value, bindings))
        return data

    @classmethod
    def _slot_value(cls, _slot: str, intent: str) -> Any:
        return intent

    @field_validator("id")
    @classmethod
    def _id_shape(cls, value: str) -> str:
        if not ELEMENT_ID.match(value):
            raise ValueError(f"element id {value!r} must be lower_snake_case (letters, digits, underscores)")
        return value

    @property
    def label(self) -> str:
        return self.name or self.id.replace("_", " ").capitalize()


class StartEvent(_Element):
    """Where instances begin: a plain start (``start()``), a message start, or a timer start."""

    type: Literal["start"] = "start"
    message: MessageName | None = Field(default=None, description="a message name that starts new instances")
    correlation: str | None = Field(
        default=None, description="message start: the variable that receives the message's correlation key"
    )
    timer: TimerDefinition | None = Field(default=None, description="a timer that starts new instances")

    @model_validator(mode="after")
    def _one_trigger(self) -> StartEvent:
        if self.message is not None and self.timer is not None:
            raise ValueError(f"start event {self.id!r} has both a message and a timer; split it into two starts")
        if self.correlation is not None and self.message is None:
            raise ValueError(f"start event {self.id!r} names a correlation variable but no message")
        return self

    @property
    def trigger(self) -> Literal["none", "message", "timer"]:
        if self.message is not None:
            return "message"
        return "timer" if self.timer is not None else "none"


class EndEvent(_Element):
    """Where a path of the process ends."""

    type: Literal["end"] = "end"
    outcome: str | None = Field(default=None, description="recorded as the instance's outcome; defaults to the id")


class ServiceTask(_Element, CallOptions):
    """A process step done by an agent, named by intent; its call's ``timeout``, ``retry`` and
    ``fallbacks`` (:class:`CallOptions`)."""

    _agent_slots = ("agent", "compensation")
    human_route: ClassVar[bool] = False  # people work from the inbox: a user task on the failure path

    type: Literal["service_task"] = "service_task"
    agent: str = Field(min_length=1, description="intent of the agent that does the work")
    inputs: tuple[str, ...] | None = Field(
        default=None,
        validation_alias=AliasChoices("inputs", "input_variables"),
        description="variables passed to the agent (the seed's input_variables); None: all",
    )
    outputs: VariableMap = Field(
        default_factory=dict,
        validation_alias=AliasChoices("outputs", "output_variables"),
        description="variable → field of the agent's output (the seed's output_variables: a list of names)",
    )
    compensation: str | None = Field(default=None, description="intent of the agent that undoes this task")
    output_schema: dict[str, Any] | None = None

    @field_validator("outputs", mode="before")
    @classmethod
    def _outputs_shorthand(cls, value: Any) -> Any:
        return _as_mapping(value)

    if TYPE_CHECKING:  # the seed's names typed as well (type checkers read the fields', not their aliases)

        def __init__(
            self,
            *,
            id: str,
            agent: AgentSlot,
            name: str = "",
            inputs: Sequence[str] | None = None,
            input_variables: Sequence[str] | None = None,
            outputs: Mapping[str, str] | Sequence[str] = ...,
            output_variables: Mapping[str, str] | Sequence[str] = ...,
            compensation: AgentSlot | None = None,
            output_schema: Mapping[str, Any] | None = None,
            timeout: float | str | None = None,
            retry: RetryPolicy | Mapping[str, Any] | None = None,
            fallbacks: Sequence[str] = (),
            on_circuit_open: Literal["fail", "human"] = "fail",
            type: Literal["service_task"] = "service_task",
        ) -> None: ...


class Escalation(_BuiltInCode):
    """What happens when a user task's SLA is breached (exactly once per task)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    action: Literal["notify", "reassign", "complete"]
    notify: str = Field(default="notify", description="intent of the agent told about the breach")
    assignee: Assignee | None = Field(default=None, description="reassign: the new assignee")
    candidate_groups: tuple[Group, ...] = Field(default=(), description="reassign: the new candidate groups")
    default: dict[str, Any] | None = Field(default=None, description="complete: the response to complete it with")

    @model_validator(mode="after")
    def _fits_action(self) -> Escalation:
        if self.action == "reassign" and self.assignee is None and not self.candidate_groups:
            raise ValueError("a reassign escalation needs an assignee or candidate_groups to reassign to")
        if self.action == "complete" and self.default is None:
            raise ValueError("a complete escalation needs a default response ({'default': {...}})")
        return self


# What an SLA without ``on_timeout`` does at its breach: it tells the agent of intent "notify". Listed with the intents
# the process calls (``validation.intents``), so the deploy checks it is registered as for any other agent.
DEFAULT_ESCALATION = Escalation(action="notify")


class UserTask(_Element):
    """A process step done by a person: assigned, claimed and completed through the inbox."""

    _agent_slots = ("on_timeout",)

    type: Literal["user_task"] = "user_task"
    title: str = Field(default="", max_length=widths.TASK_TITLE)
    description: str = ""
    assignee: Assignee | None = None
    candidate_groups: tuple[Group, ...] = ()
    response_schema: dict[str, Any] | None = None
    outputs: VariableMap | None = Field(default=None, description="variable → response field; None: every field")
    sla: str | None = Field(default=None, description="ISO 8601 duration, e.g. PT4H")
    # At most a century, as any duration (nodes.timer.LONGEST): a larger one overflowed to infinity in seconds (500).
    sla_hours: float | None = Field(
        default=None, gt=0, le=LONGEST_HOURS, allow_inf_nan=False, description="the seed's spelling of sla"
    )
    on_timeout: Escalation | None = None

    @field_validator("outputs", mode="before")
    @classmethod
    def _outputs_shorthand(cls, value: Any) -> Any:
        return _as_mapping(value)

    @field_validator("sla_hours", mode="before")
    @classmethod
    def _sla_within_a_century(cls, value: Any) -> Any:
        # Before the field's own bound (``le``, which the document states), to say what any too long duration says.
        if isinstance(value, int | float) and math.isfinite(value) and value > LONGEST_HOURS:
            raise ValueError(f"sla_hours {value:g} is longer than {LONGEST.days} days (a century); shorten it")
        return value

    @model_validator(mode="after")
    def _sla_once(self) -> UserTask:
        if self.sla is not None and self.sla_hours is not None:
            raise ValueError(f"user task {self.id!r} gives both sla and sla_hours; keep one")
        if self.sla_hours is not None and round(self.sla_hours * 3600) < 1:
            raise ValueError(
                f"user task {self.id!r}: sla_hours {self.sla_hours} is under a second; give at least 0.0003, "
                "or an sla such as 'PT30S'"
            )
        _ = self.sla_timer  # raises with a fix when unreadable or out of range
        return self

    @classmethod
    def _slot_value(cls, _slot: str, intent: str) -> Any:
        # on_timeout=escalate_to_cto: tell that agent about the breach.
        return {"action": "notify", "notify": intent}

    @field_validator("on_timeout", mode="before")
    @classmethod
    def _escalate_to_intent(cls, value: Any) -> Any:
        return {"action": "notify", "notify": value} if isinstance(value, str) else value

    @property
    def label(self) -> str:
        return self.title or self.name or self.id.replace("_", " ").capitalize()

    @property
    def escalation(self) -> Escalation | None:
        """What a breach of the task's SLA does (None: it has no SLA)."""
        return None if self.sla_timer is None else self.on_timeout or DEFAULT_ESCALATION

    @property
    def sla_timer(self) -> TimerDefinition | None:
        if self.sla is not None:
            return TimerDefinition(duration=self.sla)
        if self.sla_hours is not None:
            return TimerDefinition(duration=f"PT{round(self.sla_hours * 3600)}S")
        return None


class ExclusiveGateway(_Element):
    """Takes the first outgoing flow whose condition holds (or the default)."""

    type: Literal["exclusive_gateway"] = "exclusive_gateway"


class ParallelGateway(_Element):
    """Forks into every outgoing flow, or joins them again."""

    type: Literal["parallel_gateway"] = "parallel_gateway"


class EventGateway(_Element):
    """Waits for whichever of its following timer or message events comes first."""

    type: Literal["event_gateway"] = "event_gateway"


def _timer_shorthand(data: Any) -> Any:
    # TimerEvent(id=..., duration="P7D") is shorthand for timer={"duration": "P7D"}.
    if isinstance(data, Mapping) and "timer" not in data and TIMER_KEYS & set(data):
        data = dict(data)
        data["timer"] = {key: data.pop(key) for key in (*TIMER_KEYS, "timezone", "missed") if key in data}
    return data


TIMER_KEYS = frozenset({"duration", "date", "cycle", "cron"})


class TimerEvent(_Element):
    """Waits until a timer fires: a duration ("wait 7 days"), a cycle or cron ("daily at 9am") or a date."""

    type: Literal["timer"] = "timer"
    timer: TimerDefinition

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return _timer_shorthand(data)

    if TYPE_CHECKING:  # the seed's shorthand (``duration=...``) typed as well as ``timer=``

        def __init__(
            self,
            *,
            id: str,
            name: str = "",
            timer: TimerDefinition | Mapping[str, Any] = ...,
            duration: str | None = None,
            date: str | None = None,
            cycle: str | None = None,
            cron: str | None = None,
            timezone: str = "UTC",
            missed: MissedTicks = "coalesce",
            type: Literal["timer"] = "timer",
        ) -> None: ...


class MessageEvent(_Element):
    """Waits for a message correlated to this instance."""

    type: Literal["message"] = "message"
    message: MessageName
    correlation: str = Field(default="business_key", description="the variable whose value is the correlation key")
    outputs: VariableMap | None = Field(default=None, description="variable → payload field; None: every field")

    @field_validator("outputs", mode="before")
    @classmethod
    def _outputs_shorthand(cls, value: Any) -> Any:
        return _as_mapping(value)


class BoundaryTimer(_Element):
    """A timer on a user task. Interrupting: cancels the task and leaves by its own flow. Non-interrupting:
    the task stays open and ``notify`` is told at every tick (a reminder; cycles allowed)."""

    _agent_slots = ("notify",)

    type: Literal["boundary_timer"] = "boundary_timer"
    attached_to: str
    timer: TimerDefinition
    interrupting: bool = True
    notify: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return _timer_shorthand(data)

    if TYPE_CHECKING:  # the timer shorthand and an agent object for ``notify``, typed

        def __init__(
            self,
            *,
            id: str,
            attached_to: str,
            name: str = "",
            timer: TimerDefinition | Mapping[str, Any] = ...,
            duration: str | None = None,
            date: str | None = None,
            cycle: str | None = None,
            cron: str | None = None,
            timezone: str = "UTC",
            missed: MissedTicks = "coalesce",
            interrupting: bool = True,
            notify: AgentSlot | None = None,
            type: Literal["boundary_timer"] = "boundary_timer",
        ) -> None: ...


class CompensableStep(BaseModel):
    """A step of a transaction with the agent that undoes it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    do: str = Field(min_length=1, description="intent of the agent that does the step")
    undo: str | None = Field(default=None, description="intent of the agent that undoes it; None: nothing to undo")


class Transaction(_Element):
    """``execute_with_compensation``: the steps run in order; when one fails, the done ones are undone in
    reverse. ``output`` receives ``completed`` or ``compensated``. An undo that fails for good fails the instance
    there (``CompensationFailedError``): its retry resumes the rollback at that undo."""

    type: Literal["transaction"] = "transaction"
    steps: tuple[CompensableStep, ...] = Field(min_length=1)
    inputs: tuple[str, ...] | None = None
    output: str | None = Field(default=None, description="variable for the outcome; defaults to <id>_status")

    @classmethod
    def _take_agents(cls, data: dict[str, Any], bindings: dict[str, Agent]) -> dict[str, Any]:
        # [(create_issue, delete_issue), …]: the seed's pairs of functions.
        steps = data.get("steps")
        if isinstance(steps, list | tuple):
            data["steps"] = [
                tuple(_bind(v, bindings) if _named_by_object(v) else v for v in step)
                if isinstance(step, list | tuple)
                else step
                for step in steps
            ]
        return data

    @field_validator("steps", mode="before")
    @classmethod
    def _pairs(cls, value: Any) -> Any:
        # [("publish", "unpublish"), …] is shorthand for [{"do": "publish", "undo": "unpublish"}, …].
        if not isinstance(value, list | tuple):
            return value
        for position, step in enumerate(value):
            if isinstance(step, list | tuple) and len(step) != 2:
                raise ValueError(
                    f"step {position} has {len(step)} items: a step is a pair (do, undo), undo None if none"
                )
        return [{"do": v[0], "undo": v[1]} if isinstance(v, list | tuple) else v for v in value]

    @property
    def output_variable(self) -> str:
        return self.output or f"{self.id}_status"


class MapTask(_Element):
    """Fan-out, as Step Functions' Map: ``agent`` is called once per item of the list variable ``items``, at
    most ``max_concurrency`` at a time. Results go to ``output`` (a list in item order, None where an item
    failed) and failures to ``failures`` (``[{"index", "error", "error_type"}]``). The map fails when more
    items fail than ``tolerated_failure_count`` or ``tolerated_failure_percentage`` allow (by default none
    may). Each item's result is logged as it completes: a crash mid-map re-runs only unfinished items."""

    type: Literal["map"] = "map"
    items: str = Field(min_length=1, max_length=100, description="the list variable to map over")
    agent: str = Field(min_length=1, description="intent of the agent called for each item")
    max_concurrency: int = Field(default=10, ge=1, le=1000)
    tolerated_failure_count: int | None = Field(default=None, ge=0)
    tolerated_failure_percentage: float | None = Field(default=None, ge=0, le=100)
    output: str | None = Field(default=None, description="variable for the results; defaults to <id>_results")
    failures: str | None = Field(default=None, description="variable for the failures; defaults to <id>_failures")
    output_schema: dict[str, Any] | None = None

    @property
    def output_variable(self) -> str:
        return self.output or f"{self.id}_results"

    @property
    def failures_variable(self) -> str:
        return self.failures or f"{self.id}_failures"

    def tolerates(self, failed: int, total: int) -> bool:
        """Whether ``failed`` failures out of ``total`` items stay within the tolerance (either bound)."""
        if failed == 0:
            return True
        by_count = self.tolerated_failure_count is not None and failed <= self.tolerated_failure_count
        by_share = self.tolerated_failure_percentage is not None and failed * 100 <= (
            self.tolerated_failure_percentage * total
        )
        return by_count or by_share


Element = Annotated[
    StartEvent
    | EndEvent
    | ServiceTask
    | UserTask
    | ExclusiveGateway
    | ParallelGateway
    | EventGateway
    | TimerEvent
    | MessageEvent
    | BoundaryTimer
    | Transaction
    | MapTask,
    Field(discriminator="type"),
]
WAIT_TYPES = ("user_task", "timer", "message", "event_gateway")
ELEMENT_TYPES: dict[str, type[_Element]] = {
    model.model_fields["type"].default: model
    for model in (
        StartEvent,
        EndEvent,
        ServiceTask,
        UserTask,
        ExclusiveGateway,
        ParallelGateway,
        EventGateway,
        TimerEvent,
        MessageEvent,
        BoundaryTimer,
        Transaction,
        MapTask,
    )
}


def _spelling(name: str) -> str:
    return name.replace("_", "").replace("-", "").lower()


# BPMN's element names (as jBPM and Camunda users write them: startEvent, serviceTask, eventBasedGateway) and
# the classes' names, in any case and with or without underscores, each to the one type it stands for here.
_TYPE_SPELLINGS = {
    **{_spelling(model.__name__): element_type for element_type, model in ELEMENT_TYPES.items()},
    **{_spelling(f"{element_type}_event"): element_type for element_type in ("start", "end", "timer", "message")},
    "eventbasedgateway": "event_gateway",
    "boundarytimerevent": "boundary_timer",
}
# BPMN's names that stand for more than one type here: what to write instead.
_TYPE_HINTS = {
    "intermediatecatchevent": "'timer' or 'message' (an intermediate catch event waits for one of them)",
    "boundaryevent": "'boundary_timer' (a boundary event here is a timer on a user task)",
    "subprocess": "'transaction' (execute_with_compensation), or a process of its own",
}


class Flow(_BuiltInCode):
    """A directed connection between two elements, with an optional condition."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str
    target: str
    when: Criteria | None = None
    default: bool = False

    @model_validator(mode="before")
    @classmethod
    def _shorthands(cls, value: Any) -> Any:
        if isinstance(value, str):
            source, arrow, target = value.partition("->")
            if not arrow:
                raise ValueError(f"flow {value!r} must read 'source -> target'")
            return {"source": source.strip(), "target": target.strip()}
        return value

    def describe(self) -> str:
        return f"{self.source} -> {self.target}"


_INDEX = "_process_index"
VARIABLES_SCHEMA_ID = "urn:journeys:process-variables"
DECLARED_SCHEMA_ID = "urn:journeys:declared"


def _at(path: str, schema: Any) -> dict[str, Any]:
    """A schema that applies ``schema`` to the field at dotted ``path`` of a document, when it is there."""
    found: dict[str, Any] = {}
    for part in reversed(path.split(".")):
        found = {"properties": {part: schema}}
        schema = found
    return found


def checked_against(own: Mapping[str, Any] | None, variables: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """One schema for both an element's own schema (``output_schema``, ``response_schema``) and what its
    assignments owe ``variables_schema`` (:meth:`ProcessSpec.assignment_schema`). Each keeps its own ``$id``, so
    each one's ``$ref``s resolve in it; the dialect (``$schema``) is declared once, at the root."""
    if variables is None:
        return dict(own) if own is not None else None
    if own is None:
        return dict(variables)
    dialect = own.get("$schema", variables.get("$schema"))
    declared = {"$id": DECLARED_SCHEMA_ID, **{k: v for k, v in own.items() if k != "$schema"}}
    rest = {k: v for k, v in variables.items() if k != "$schema"}
    return {**({"$schema": dialect} if dialect is not None else {}), "allOf": [declared, rest]}


@dataclass(frozen=True, slots=True)
class _Index:
    """A process's elements by id, and its flows and boundary timers by element, in the order the spec lists them
    (an id given twice, which validation refuses, is found as its first element)."""

    elements: tuple[Any, ...]
    flows: tuple[Flow, ...]
    by_id: dict[str, Any]
    outgoing: dict[str, list[Flow]]
    incoming: dict[str, list[Flow]]
    boundaries: dict[str, list[BoundaryTimer]]

    @classmethod
    def of(cls, elements: tuple[Any, ...], flows: tuple[Flow, ...]) -> _Index:
        by_id: dict[str, Any] = {}
        outgoing: dict[str, list[Flow]] = {}
        incoming: dict[str, list[Flow]] = {}
        boundaries: dict[str, list[BoundaryTimer]] = {}
        for element in elements:
            by_id.setdefault(element.id, element)
            if isinstance(element, BoundaryTimer):
                boundaries.setdefault(element.attached_to, []).append(element)
        for flow in flows:
            outgoing.setdefault(flow.source, []).append(flow)
            incoming.setdefault(flow.target, []).append(flow)
        return cls(elements, flows, by_id, outgoing, incoming, boundaries)


class ProcessSpec(_BuiltInCode, Grants):
    """A BPMN-style process design: its elements, the flows between them and its variables."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=100, json_schema_extra={"pattern": PROCESS_NAME.pattern})
    version: int = Field(default=1, ge=1)
    description: str = ""
    elements: tuple[Element, ...] = Field(min_length=1)
    flows: tuple[Flow, ...] = ()
    variables: dict[str, Any] = Field(default_factory=dict, description="defaults for new instances")
    variables_schema: dict[str, Any] | None = Field(
        default=None, description="JSON Schema of the variables; enums here make gateway conditions exhaustive"
    )
    concurrency: ConcurrencySpec | None = Field(
        default=None, description="at most `limit` running instances per value of `key` in the start variables"
    )
    deadline: DeadlineSpec | None = Field(
        default=None, description="the whole run's deadline: the instance fails when it passes before it ends"
    )
    evaluation: EvaluationSpec | None = Field(
        default=None, description="the workflow tier: thresholds each completed instance's service tasks meet"
    )

    @field_validator("elements", mode="before")
    @classmethod
    def _type_spelling(cls, value: Any) -> Any:
        """An element type spelled another way (BPMN's ``serviceTask``) is refused naming this spelling, before
        pydantic reports that it matches no type."""
        if not isinstance(value, list | tuple):
            return value
        for position, element in enumerate(value):
            named = element.get("type") if isinstance(element, Mapping) else None
            if not isinstance(named, str) or named in ELEMENT_TYPES:
                continue
            spelled = _spelling(named)
            if (instead := _TYPE_SPELLINGS.get(spelled)) is not None:
                raise ValueError(f"element {position} has type {named!r}: write {instead!r}, its name here")
            if (hint := _TYPE_HINTS.get(spelled)) is not None:
                raise ValueError(f"element {position} has type {named!r}: write {hint}")
        return value

    @field_validator("name")
    @classmethod
    def _name_shape(cls, value: str) -> str:
        if not PROCESS_NAME.match(value):
            raise ValueError(f"process name {value!r} must be lower case (letters, digits, '_', '.', '-')")
        return value

    @property
    def journey_type(self) -> str:
        return self.name

    def agent_bindings(self) -> dict[str, Agent]:
        """The agents its elements name by object, by the intent each was given (see ``_Element``)."""
        return {intent: agent for element in self.elements for intent, agent in element._bindings.items()}

    def _indexed(self) -> _Index:
        # Built once per elements and flows (a copy with other ones builds its own): checks, the block analysis
        # and the builder look elements and flows up per element, which scanning made quadratic in the size.
        # Kept in the instance's __dict__ beside the fields, which equality and dumps leave out (a private
        # attribute would make a spec that was looked into unequal to its copy that was not).
        index = self.__dict__.get(_INDEX)
        if not isinstance(index, _Index) or index.elements is not self.elements or index.flows is not self.flows:
            index = self.__dict__[_INDEX] = _Index.of(self.elements, self.flows)
        return index

    def element(self, element_id: str) -> Any:
        return self._indexed().by_id[element_id]

    def ids(self) -> list[str]:
        return [e.id for e in self.elements]

    def outgoing(self, element_id: str) -> list[Flow]:
        return list(self._indexed().outgoing.get(element_id, ()))

    def incoming(self, element_id: str) -> list[Flow]:
        return list(self._indexed().incoming.get(element_id, ()))

    def boundaries(self, task_id: str) -> list[BoundaryTimer]:
        return list(self._indexed().boundaries.get(task_id, ()))

    def assignment_schema(self, mapping: Mapping[str, str] | None) -> dict[str, Any] | None:
        """The JSON Schema a document (an agent's output, a person's answer) must match for the variables
        ``mapping`` takes from it (variable → field; None: every field, as the variable of its name) to match
        ``variables_schema``, which an exclusive gateway's conditions may rely on to cover every case; None
        when it declares none of them. Self-contained: its ``$id`` keeps the variables' ``$ref``s to their
        ``$defs`` apart from those of a schema it is combined with (:func:`checked_against`)."""
        schema = self.variables_schema or {}
        declared = schema.get("properties")
        if not isinstance(declared, Mapping):
            return None
        pairs = [(name, name) for name in declared] if mapping is None else list(mapping.items())
        parts = [_at(field, declared[variable]) for variable, field in pairs if variable in declared]
        if not parts:
            return None
        kept: dict[str, Any] = {key: schema[key] for key in ("$schema", "$defs", "definitions") if key in schema}
        return {"$id": VARIABLES_SCHEMA_ID, **kept, "allOf": parts}

    def misfit(self, mapping: Mapping[str, str] | None, document: Mapping[str, Any]) -> tuple[str, str] | None:
        """Where (a JSON pointer's parts joined by "/", or "(root)") and why ``document`` breaks the
        :meth:`assignment_schema` of ``mapping``; None when it fits, or when the schema declares none of its
        variables."""
        schema = self.assignment_schema(mapping)
        if schema is None:
            return None
        try:
            schemas.validate(dict(document), schema)
        except jsonschema.ValidationError as exc:
            return "/".join(str(p) for p in exc.absolute_path) or "(root)", exc.message
        return None

    @property
    def compensable(self) -> bool:
        """Whether a service task declares a compensation: a failure then compensates the completed ones."""
        return any(isinstance(e, ServiceTask) and e.compensation for e in self.elements)

    def starts(self) -> list[StartEvent]:
        return [e for e in self.elements if isinstance(e, StartEvent)]

    def plain_start(self) -> StartEvent | None:
        plain = [s for s in self.starts() if s.trigger == "none"]
        return plain[0] if plain else None

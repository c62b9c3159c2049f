"""Compile-time checks of a process: every problem at once, each with how to fix it."""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable
from typing import Any

import jsonschema

from agents.registry import AgentRegistry
from checkpoints.errors import InvalidInputError
from checkpoints.values import check_value
from graphs.process.blocks import analyse, is_option
from graphs.process.builder import COMPENSATE
from graphs.process.spec import (
    DEFAULT_ESCALATION,
    BoundaryTimer,
    EndEvent,
    EventGateway,
    ExclusiveGateway,
    MapTask,
    MessageEvent,
    ParallelGateway,
    ProcessSpec,
    ServiceTask,
    StartEvent,
    TimerEvent,
    Transaction,
    UserTask,
    checked_against,
)
from nodes import schemas
from nodes.gateways import exhaustive
from nodes.timer import TimerDefinition


def validate_process(spec: ProcessSpec, registry: AgentRegistry | None = None) -> list[str]:
    duplicates = sorted(i for i, n in Counter(spec.ids()).items() if n > 1)
    if duplicates:
        return [f"element ids must be unique; rename the repeated {duplicates}"]
    problems = _flow_references(spec)
    if problems:
        return problems
    problems += _reserved(spec)
    problems += _degrees(spec)
    problems += _gateways(spec)
    problems += _events(spec)
    problems += _user_tasks(spec)
    problems += _schemas(spec)
    problems += _values(spec)
    if registry is not None:
        problems += _agents(spec, registry)
    structure = analyse(spec)
    problems += _reachability(spec, set(structure.level_of))
    return problems + [p for p in structure.problems if p not in problems]


def _flow_references(spec: ProcessSpec) -> list[str]:
    known = set(spec.ids())
    problems = []
    for flow in spec.flows:
        for end, name in (("source", flow.source), ("target", flow.target)):
            if name not in known:
                problems.append(
                    f"flow {flow.describe()!r} names unknown {end} {name!r}; elements: {', '.join(spec.ids())}"
                )
    seen = set()
    for flow in spec.flows:
        if (flow.source, flow.target) in seen:
            problems.append(f"flow {flow.describe()!r} is listed twice; keep one")
        seen.add((flow.source, flow.target))
    return problems


def _reserved(spec: ProcessSpec) -> list[str]:
    """An element may not take the name of a node the builder adds: the graph could not be built, and every start
    of the deployed process would fail."""
    if spec.compensable and COMPENSATE in spec.ids():
        return [
            f"element id {COMPENSATE!r} is the name of the step that runs the process's compensations (its service "
            "tasks declare some); rename the element"
        ]
    return []


def _degrees(spec: ProcessSpec) -> list[str]:
    problems = []
    if not spec.starts():
        problems.append("the process has no start event; add {'type': 'start', 'id': 'start'} and a flow from it")
    if len([s for s in spec.starts() if s.trigger == "none"]) > 1:
        problems.append("the process has several plain start events; start() could not choose: keep one")
    if not any(isinstance(e, EndEvent) for e in spec.elements):
        problems.append("the process has no end event; add {'type': 'end', 'id': 'end'} and lead a flow to it")
    for element in spec.elements:
        ins, outs = len(spec.incoming(element.id)), len(spec.outgoing(element.id))
        if isinstance(element, StartEvent | BoundaryTimer) and ins:
            problems.append(f"{element.type} {element.id!r} has incoming flows; nothing may flow into it")
        if isinstance(element, StartEvent) and outs != 1:
            problems.append(f"start event {element.id!r} needs exactly one outgoing flow (has {outs})")
        if isinstance(element, EndEvent) and outs:
            problems.append(f"end event {element.id!r} has outgoing flows; an end event ends its path")
        single_out = (ServiceTask, UserTask, TimerEvent, MessageEvent, Transaction, MapTask)
        if isinstance(element, single_out) and outs != 1:
            problems.append(
                f"{element.type} {element.id!r} needs exactly one outgoing flow (has {outs}); "
                "branch after it with an exclusive or parallel gateway"
            )
        if isinstance(element, ParallelGateway):
            if ins > 1 and outs > 1:
                problems.append(
                    f"parallel gateway {element.id!r} both joins and forks; split it into a join followed by a fork"
                )
            elif ins <= 1 and outs <= 1:
                problems.append(
                    f"parallel gateway {element.id!r} neither forks nor joins (one flow in, one out); remove it"
                )
        if isinstance(element, ExclusiveGateway) and not outs:
            problems.append(f"exclusive gateway {element.id!r} has no outgoing flow")
    return problems


def _gateways(spec: ProcessSpec) -> list[str]:
    problems = []
    for flow in spec.flows:
        source = spec.element(flow.source)
        if (flow.when is not None or flow.default) and not isinstance(source, ExclusiveGateway):
            problems.append(
                f"flow {flow.describe()!r} has a condition but leaves a {source.type}; only flows out of an "
                "exclusive gateway carry conditions or default"
            )
    for element in spec.elements:
        if isinstance(element, ExclusiveGateway):
            problems += _exclusive(spec, element)
        if isinstance(element, EventGateway):
            outs = spec.outgoing(element.id)
            if len(outs) < 2:
                problems.append(f"event gateway {element.id!r} races fewer than two events; give it two or more")
            for flow in outs:
                target = spec.element(flow.target)
                if not isinstance(target, MessageEvent | TimerEvent):
                    problems.append(
                        f"event gateway {element.id!r} leads to {target.type} {target.id!r}; an event gateway may "
                        "only lead to message or timer events"
                    )
                elif len(spec.incoming(target.id)) != 1:
                    problems.append(
                        f"{target.type} event {target.id!r} follows event gateway {element.id!r} and must have no "
                        "other incoming flow"
                    )
    return problems


def _exclusive(spec: ProcessSpec, gateway: ExclusiveGateway) -> list[str]:
    outs = spec.outgoing(gateway.id)
    if not outs:
        return []
    problems = []
    defaults = [f for f in outs if f.default]
    if len(defaults) > 1:
        problems.append(f"exclusive gateway {gateway.id!r} has {len(defaults)} default flows; keep one")
    for flow in outs:
        if flow.default and flow.when is not None:
            problems.append(f"flow {flow.describe()!r} is the default and has a condition; drop one of the two")
        if not flow.default and flow.when is None and len(outs) > 1:
            problems.append(
                f"flow {flow.describe()!r} leaves exclusive gateway {gateway.id!r} without a condition; add "
                "`when` or mark it `default: true`"
            )
    conditions = [f.when for f in outs if f.when is not None]
    covered = exhaustive(conditions, spec.variables_schema)
    if not defaults and len(outs) == 1 and outs[0].when is not None and not covered:
        # Accepted, it failed every instance whose variables did not meet the condition (NoFlowError).
        problems.append(
            f"exclusive gateway {gateway.id!r} has one flow, {outs[0].describe()!r}, with a condition and no "
            "default flow: an instance for which the condition does not hold could go nowhere; add a flow marked "
            "`default: true` for that case, or drop the condition"
        )
    elif not defaults and len(conditions) == len(outs) and not covered:
        problems.append(
            f"exclusive gateway {gateway.id!r} has no default flow and its conditions do not cover every case; "
            "mark one flow `default: true`, or declare the variable's enum (or boolean type) in variables_schema "
            "and cover every value"
        )
    return problems


def _once(timer: TimerDefinition, what: str) -> list[str]:
    if timer.cycle is not None:
        return [
            f"{what} fires once, but its timer is a repeating cycle ({timer.cycle!r}); use a duration or a date "
            "(or cron for 'the next 9:00')"
        ]
    return []


def _events(spec: ProcessSpec) -> list[str]:
    problems = []
    known = set(spec.ids())
    for element in spec.elements:
        if isinstance(element, TimerEvent):
            problems += _once(element.timer, f"timer event {element.id!r}")
        if isinstance(element, StartEvent) and element.timer is not None and element.timer.duration is not None:
            problems.append(f"timer start {element.id!r} has a duration; a timer start needs a date, a cycle or cron")
        if isinstance(element, BoundaryTimer):
            host = spec.element(element.attached_to) if element.attached_to in known else None
            if not isinstance(host, UserTask):
                problems.append(
                    f"boundary timer {element.id!r} is attached to {element.attached_to!r}, which is not a user "
                    "task; attach it to a user task"
                )
            outs = len(spec.outgoing(element.id))
            if element.interrupting:
                problems += _once(element.timer, f"interrupting boundary timer {element.id!r}")
                if outs != 1:
                    problems.append(
                        f"interrupting boundary timer {element.id!r} needs exactly one outgoing flow (has {outs}): "
                        "where the process goes when it fires"
                    )
            else:
                if outs:
                    problems.append(
                        f"non-interrupting boundary timer {element.id!r} has outgoing flows; it only reminds "
                        "(notify) while the task stays open: remove them, or make it interrupting"
                    )
                if element.notify is None:
                    problems.append(
                        f"non-interrupting boundary timer {element.id!r} needs `notify`: the intent told at each tick"
                    )
    return problems


def _user_tasks(spec: ProcessSpec) -> list[str]:
    problems = []
    for task in (e for e in spec.elements if isinstance(e, UserTask)):
        if task.assignee is None and not task.candidate_groups:
            problems.append(f"user task {task.id!r} has neither an assignee nor candidate_groups; give it one")
        if task.on_timeout is not None and task.sla_timer is None:
            problems.append(f"user task {task.id!r} has on_timeout but no sla; add sla (e.g. 'PT4H') or sla_hours")
        escalation = task.on_timeout
        answered = checked_against(task.response_schema, spec.assignment_schema(task.outputs))
        if escalation is not None and escalation.action == "complete" and answered is not None:
            try:
                schemas.validate(escalation.default, answered)
            except (jsonschema.ValidationError, jsonschema.SchemaError) as exc:
                problems.append(
                    f"user task {task.id!r}: the on_timeout default does not match its response_schema: "
                    f"{exc.message}; fix the default"
                )
    return problems


def _values(spec: ProcessSpec) -> list[str]:
    """The values the design hands instances (variable defaults, an escalation's default answer) must be ones
    every store keeps: a NaN default became None on one store and failed on another."""
    found: list[tuple[str, Any]] = [("variables", spec.variables)]
    for task in (e for e in spec.elements if isinstance(e, UserTask)):
        if task.on_timeout is not None and task.on_timeout.default is not None:
            found.append((f"user task {task.id!r} on_timeout.default", task.on_timeout.default))
    problems = []
    for where, value in found:
        try:
            check_value(value, where)
        except InvalidInputError as exc:
            problems.append(str(exc))
    return problems


def _schemas(spec: ProcessSpec) -> list[str]:
    problems = []
    found: list[tuple[str, dict[str, Any] | None]] = [("variables_schema", spec.variables_schema)]
    for element in spec.elements:
        if isinstance(element, ServiceTask):
            found.append((f"service task {element.id!r} output_schema", element.output_schema))
        if isinstance(element, MapTask):
            found.append((f"map {element.id!r} output_schema", element.output_schema))
        if isinstance(element, UserTask):
            found.append((f"user task {element.id!r} response_schema", element.response_schema))
    for label, schema in found:
        if schema is None:
            continue
        try:
            schemas.check_schema(schema)
        except jsonschema.SchemaError as exc:
            problems.append(f"{label} is not a valid JSON Schema: {exc.message}")
    return problems


def intents(spec: ProcessSpec) -> Iterable[tuple[str, str]]:
    """(intent, what needs it) for every agent the process calls."""
    for element in spec.elements:
        if isinstance(element, ServiceTask):
            yield element.agent, f"service task {element.id!r}"
            if element.compensation:
                yield element.compensation, f"the compensation of {element.id!r}"
            for fallback in element.fallbacks:
                yield fallback, f"the fallbacks of {element.id!r}"
        if isinstance(element, MapTask):
            yield element.agent, f"map {element.id!r}"
        if isinstance(element, Transaction):
            for step in element.steps:
                yield step.do, f"transaction {element.id!r}"
                if step.undo:
                    yield step.undo, f"the undo of {step.do!r} in transaction {element.id!r}"
        escalation = (element.on_timeout or element.escalation) if isinstance(element, UserTask) else None
        if escalation is not None and escalation.action == "notify":  # without on_timeout: the default agent
            default = "" if escalation is not DEFAULT_ESCALATION else " (an SLA without on_timeout)"
            yield escalation.notify, f"the SLA escalation of {element.id!r}{default}"
        if isinstance(element, BoundaryTimer) and element.notify:
            yield element.notify, f"boundary timer {element.id!r}"


def _agents(spec: ProcessSpec, registry: AgentRegistry) -> list[str]:
    problems = []
    for intent, needed_by in intents(spec):
        if intent not in registry:
            message = f"{needed_by} needs an agent for intent {intent!r}; register one with runtime.agents.register"
            message += f"({intent!r}, agent)"
            if message not in problems:
                problems.append(message)
    return problems


def _reachability(spec: ProcessSpec, reached: set[str]) -> list[str]:
    problems = []
    for element in spec.elements:
        if element.id not in reached:
            problems.append(
                f"{element.type} {element.id!r} is unreachable from any start event; lead a flow to it or remove it"
            )
    # Every reached element must have a way to an end.
    reverse: dict[str, list[str]] = {i: [] for i in spec.ids()}
    for flow in spec.flows:
        reverse[flow.target].append(flow.source)
    for boundary in (e for e in spec.elements if isinstance(e, BoundaryTimer)):
        reverse[boundary.id].append(boundary.attached_to)
    finishing: set[str] = set()
    queue = deque(e.id for e in spec.elements if isinstance(e, EndEvent))
    while queue:
        current = queue.popleft()
        if current in finishing:
            continue
        finishing.add(current)
        queue.extend(reverse[current])
    for element in spec.elements:
        stuck = element.id not in finishing and element.id in reached and not isinstance(element, BoundaryTimer)
        if stuck and not is_option(spec, element.id):
            problems.append(
                f"{element.type} {element.id!r} has no path to an end event; lead one of the flows after it to an end"
            )
    return problems

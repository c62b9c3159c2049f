"""Durable waits as two nodes: ``<element>.arm`` then ``<element>`` (the ``interrupt()``).

- **arm** writes what the wait needs to be found and resolved: the wait row, its timers, message
  subscriptions and inbox task, all in the transaction of the event that records it (keyed, so a
  replayed arm writes nothing twice). A message already in the buffer is taken here, and a replayed
  arm picks up a resolution that arrived meanwhile: either is handed on in state (``early``).
- **wait** uses an early resolution if there is one, else calls ``interrupt()`` and gets the
  resolution as the resume value. Nothing comes before the interrupt; what follows it (the completion
  event) is keyed by the wait id, so re-running the node with the same resolution repeats nothing.

Whoever resolves a wait (``checkpoints.process.waits.WaitStore.resolve``) stores the resolution first and
then resumes the thread with it, addressed by the interrupt id, which the wait node stores on the wait row
when it parks.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any, cast

from langchain_core.runnables import RunnableConfig
from langgraph.errors import GraphInterrupt
from langgraph.graph import END
from langgraph.types import Command, interrupt

from checkpoints.events import NewEvent
from checkpoints.process.messages import BufferedMessage
from checkpoints.process.waits import completed_event
from checkpoints.schema.widths import CORRELATION_KEY
from nodes import schemas
from nodes.criteria import lookup
from nodes.errors import CorrelationError
from nodes.gateways import merge_variables
from nodes.process_services import ProcessServices
from nodes.services import steps_chained, thread_id
from nodes.telemetry import chained_node
from nodes.timer import TimerDefinition
from nodes.variables import values

_MISSING = lookup({}, "missing")


@dataclass(frozen=True, slots=True)
class TimerPlan:
    """A timer a wait arms."""

    element: str  # the timer event, boundary timer, or (SLA) the task itself
    purpose: str  # catch | boundary | reminder | sla
    definition: TimerDefinition
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SubscriptionPlan:
    """A message subscription a wait arms."""

    element: str  # the message event
    message: str
    correlation: str  # the variable whose value is the correlation key
    # What a payload must match for the variables it assigns to fit the process's variables_schema (None: anything).
    schema: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class TaskPlan:
    """A user task a wait opens."""

    title: str
    assignee: str | None
    candidate_groups: tuple[str, ...]
    response_schema: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class WaitPlan:
    """Everything one wait arms: its timers, subscriptions and task."""

    element: str
    kind: str  # user_task | timer | message | race
    timers: tuple[TimerPlan, ...] = ()
    subscriptions: tuple[SubscriptionPlan, ...] = ()
    task: TaskPlan | None = None


def wait_id_for(instance_id: str, element: str, visit: int) -> str:
    return f"{instance_id}:{element}:{visit}"


def timer_id_for(wait_id: str, plan: TimerPlan) -> str:
    return f"{wait_id}:{plan.purpose}:{plan.element}"


def subscription_id_for(wait_id: str, plan: SubscriptionPlan) -> str:
    return f"{wait_id}:{plan.element}"


def correlation_key(variables: Mapping[str, Any], subscription: SubscriptionPlan) -> str:
    """The key ``subscription`` waits under: its correlation variable's value, as a sender names it. Raises
    :class:`CorrelationError`, saying how to fix it, when the variable holds no key."""
    key = lookup(variables, subscription.correlation)
    if key is _MISSING or key is None:
        raise CorrelationError(
            f"message event {subscription.element!r} correlates on variable {subscription.correlation!r}, "
            "which is not set; set it before the process reaches the event (or with the retry: "
            "set_variables(..., retry=True))",
            element=subscription.element,
        )
    # A sender names the key as a string (or an integer): the text of a list or a mapping is no key one
    # could send (it waited for "{'a': 1}").
    if isinstance(key, bool) or not isinstance(key, str | int) or key == "":
        raise CorrelationError(
            f"message event {subscription.element!r} correlates on variable {subscription.correlation!r}, "
            f"whose value {key!r} is not a correlation key; give it a non-empty string or an integer "
            "(set_variables(..., retry=True))",
            element=subscription.element,
        )
    if len(str(key)) > CORRELATION_KEY:  # the subscription's column would refuse it (PostgreSQL)
        raise CorrelationError(
            f"message event {subscription.element!r} correlates on variable {subscription.correlation!r}, "
            f"whose value is {len(str(key))} characters long; a correlation key has at most "
            f"{CORRELATION_KEY}: give it a shorter one (set_variables(..., retry=True))",
            element=subscription.element,
        )
    return str(key)


def make_arm_node(plan: WaitPlan, services: ProcessServices) -> Callable[[Any, RunnableConfig], Awaitable[Any]]:
    async def arm(state: Mapping[str, Any], config: RunnableConfig) -> dict[str, Any]:
        instance_id = thread_id(config)
        visit = int((state.get("visits") or {}).get(plan.element, 0)) + 1
        wait_id = wait_id_for(instance_id, plan.element, visit)
        now = services.node.clock.now().astimezone(UTC)
        variables = values(state.get("variables"))
        # Rows, not statements: their statements are built only where they run (see IgnoredRow).
        rows = [services.waits.arm_row(wait_id, instance_id, plan.element, plan.kind)]
        described: dict[str, Any] = {"wait_id": wait_id, "kind": plan.kind, "timers": [], "messages": []}
        for timer in plan.timers:
            due = timer.definition.first_due(now)
            rows.append(
                services.timers.schedule_row(
                    timer_id_for(wait_id, timer),
                    element=timer.element,
                    purpose=timer.purpose,
                    definition=timer.definition.to_row(),
                    due_at=due,
                    origin=now,
                    instance_id=instance_id,
                    wait_id=wait_id,
                    data=timer.data,
                )
            )
            described["timers"].append({"element": timer.element, "purpose": timer.purpose, "due_at": due.isoformat()})
        keys = {}
        for subscription in plan.subscriptions:
            key = correlation_key(variables, subscription)
            keys[subscription.element] = key
            rows.append(
                services.messages.subscribe_row(
                    subscription_id_for(wait_id, subscription),
                    wait_id=wait_id,
                    instance_id=instance_id,
                    element=subscription.element,
                    name=subscription.message,
                    key=key,
                )
            )
            described["messages"].append(
                {"element": subscription.element, "message": subscription.message, "correlation_key": key}
            )
        if plan.task is not None:
            sla = next((t for t in plan.timers if t.purpose == "sla"), None)
            sla_due = sla.definition.first_due(now) if sla else None
            rows += services.inbox.open_rows(
                wait_id,
                instance_id=instance_id,
                element=plan.element,
                title=plan.task.title,
                assignee=plan.task.assignee,
                candidate_groups=plan.task.candidate_groups,
                response_schema=plan.task.response_schema,
                sla_due_at=sla_due,
            )
            described["task"] = {
                "task_id": wait_id,
                "title": plan.task.title,
                "assignee": plan.task.assignee,
                "candidate_groups": list(plan.task.candidate_groups),
                "sla_due_at": sla_due.isoformat() if sla_due else None,
                "response_schema": plan.task.response_schema,  # the whole row: the inbox is rebuilt from this
            }
        event_type = "task.created" if plan.task is not None else "wait.armed"
        written = await services.node.events.append(
            instance_id, [NewEvent(event_type, described, plan.element, f"{wait_id}:armed")], also=rows
        )
        early = None
        for subscription in plan.subscriptions:
            early = await _take_buffered(services, instance_id, wait_id, subscription, keys[subscription.element])
            if early is not None:
                break
        if early is None and not all(written):
            # Armed before, by a run a crash cut short: the wait may have been resolved since.
            early = await services.waits.resolution(wait_id)
        update: dict[str, Any] = {"visits": {plan.element: visit}, "waits": {plan.element: wait_id}}
        if early is not None:
            update["early"] = {wait_id: early}
        return update

    arm.__name__ = f"arm_{plan.element}"
    return arm


async def _take_buffered(
    services: ProcessServices, instance_id: str, wait_id: str, plan: SubscriptionPlan, key: str
) -> dict[str, Any] | None:
    """The oldest message that arrived before anyone waited for it (and has not expired, and was sent for the
    instance's tenant or every tenant) and fits the process's variables_schema resolves the wait now.

    One that does not fit is passed over, not taken (a send to the waiting instance is refused likewise): it
    must not stand in the way of a later one that fits, as it did while only the oldest was looked at. It
    stays buffered for a wait it fits (another process's), until its time-to-live ends; this instance's log
    says why it was passed over (``message.passed_over``, once per wait)."""
    subscription_id = subscription_id_for(wait_id, plan)
    taken, passed_over = None, []
    for buffered in await services.messages.buffered(plan.message, key, instance_id):
        misfit = _misfit(plan.schema, buffered.payload)
        if misfit is None:
            taken = await take_buffered(
                services, buffered, wait_id=wait_id, element=plan.element, subscription_id=subscription_id
            )
            if taken is not None:
                break
            continue
        about = {"wait_id": wait_id, "message": buffered.name, "message_id": buffered.message_id, "reason": misfit}
        key_of = f"{wait_id}:passed_over:{buffered.message_id}"
        passed_over.append(NewEvent("message.passed_over", about, plan.element, key_of))
    for event in passed_over:  # keyed: a replayed arm logs none twice
        await services.node.events.append(instance_id, [event])
    return taken


def _misfit(schema: Mapping[str, Any] | None, payload: Mapping[str, Any]) -> str | None:
    """Why ``payload`` does not fit ``schema`` (what a message's payload must match), None if it does. It names
    the path and the rule broken, not the value (the log keeps it, and a value is redacted by its field's name)."""
    error = None if schema is None else schemas.first_error(payload, schema)
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "(root)"
    rule = json.dumps(error.validator_value)[:200]
    return f"its payload does not fit the process's variables_schema at {where}: it breaks {error.validator} {rule}"


async def take_buffered(
    services: ProcessServices, buffered: BufferedMessage, *, wait_id: str, element: str, subscription_id: str
) -> dict[str, Any] | None:
    """Resolve the wait with the buffered message, which its subscription takes (once: the message, the wait
    and the subscription are each claimed in one transaction). The resolution, or None if one was taken."""
    resolution = {
        "option": element,
        "kind": "message",
        "message": buffered.name,
        "correlation_key": buffered.correlation_key,
        "payload": buffered.payload,
        "message_id": buffered.message_id,
        "tenant": buffered.tenant,
        "buffered": True,
    }
    won = await services.waits.resolve(
        wait_id,
        resolution,
        keep_subscription=subscription_id,
        claims=[
            services.messages.take_claim(buffered, subscription_id),
            services.messages.consume_subscription_claim(subscription_id),
        ],
    )
    return resolution if won else None


# The resolution of a wait in a parallel branch whose sibling failed in a process that compensates: the branch
# ends at once, so that its join can run the compensation (``ProcessOrchestrator.run``).
ABANDONED = "abandoned"

# Given the state and the resolution: where to go, the variables to assign, and extra event payload.
Resolved = Callable[[Mapping[str, Any], dict[str, Any]], tuple[str, dict[str, Any]]]
Assigner = Callable[[Mapping[str, Any], Mapping[str, Any]], tuple[dict[str, Any], list[dict[str, Any]]]]
# An end event's node: the state it is reached with → its update.
Ending = Callable[[Mapping[str, Any], RunnableConfig], Awaitable[Mapping[str, Any]]]


def make_wait_node(
    plan: WaitPlan,
    services: ProcessServices,
    *,
    describe: Mapping[str, Any],
    route: Resolved,
    assign: Assigner,
    by_id: bool = True,
    ending: Mapping[str, Ending] | None = None,
) -> Callable[[Any, RunnableConfig], Awaitable[Any]]:
    """The interrupt node. ``route`` maps a resolution to (next node, variable updates). ``by_id``: record the
    interrupt it parks on, for its resolution to be delivered by that id alone (see ``ProcessOrchestrator``).
    ``ending``: the end events' nodes it may lead to, by name, which it runs itself when the run lets a node
    run on (``nodes.services.CHAIN_FLAG``; a fired timer's continuation, say): an end's work is one keyed
    event, and its superstep of LangGraph's was most of the continuation's cost but the saver's."""

    async def wait(state: Mapping[str, Any], config: RunnableConfig) -> Command[str]:
        instance_id = thread_id(config)
        wait_id = str((state.get("waits") or {})[plan.element])
        resolution = (state.get("early") or {}).get(wait_id)
        if resolution is None:
            try:
                answer = interrupt({"wait_id": wait_id, "element": plan.element, "kind": plan.kind, **describe})
            except GraphInterrupt as parking:
                # Parks here: the wait row names the interrupt, so its resolution is delivered by that id
                # without reading the thread's state first (``ProcessOrchestrator.deliver``).
                if by_id:
                    await services.waits.parked(wait_id, parking.args[0][0].id)
                raise
            resolution = dict(answer) if isinstance(answer, Mapping) else {"option": plan.element, "value": answer}
        if resolution.get("kind") == ABANDONED:
            # The branch ends here, and says so: a join in a fork nested in the branch sees only its own
            # branch's state, not the sibling's failure, and would otherwise go on past it.
            return Command(goto=END, update={"abandoned": True})
        target, updates = route(state, resolution)
        cells, changes = assign(cast(Mapping[str, Any], state.get("variables") or {}), updates)
        # The wait row is marked done by whoever delivered the resolution, once this run's checkpoint is
        # written (until then a crash could still lose it, and the resolution must stay deliverable).
        # A fired timer's completion was logged when it fired (a timer assigns no variables).
        if not resolution.get("logged"):
            await services.node.events.append(
                instance_id, [completed_event(plan.element, wait_id, resolution, changes)]
            )
        # No variable changed (a timer's, say): no write, which would give the variables a new version, and
        # the checkpoint a copy of them, for nothing.
        update: dict[str, Any] = {"variables": cells} if cells else {}
        if wait_id in (state.get("early") or {}):
            update["early"] = {wait_id: None}  # consumed: drop it from the state
        end = (ending or {}).get(target)
        if end is None or not steps_chained(config):
            return Command(goto=target, update=update)
        chained_node(config, target)  # its own span and duration, as a node of its own has
        reached = {**state, "variables": merge_variables(state.get("variables"), cells)}
        return Command(goto=END, update={**update, **await end(reached, config)})

    wait.__name__ = f"wait_{plan.element}"
    return wait

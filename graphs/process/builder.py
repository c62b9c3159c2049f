"""One builder turns a validated :class:`ProcessSpec` into a LangGraph ``StateGraph``.

Elements become nodes and sequence flows become routes (``Command(goto=…)``):

- a service task is one node that calls its agent on the shared path;
- a user task, timer, message event or event gateway is ``<id>.arm`` followed by ``<id>`` (the
  ``interrupt()``), see ``nodes.waits``; an event gateway's message and timer events are the options
  of its one wait, so the first to resolve it wins and the others are cancelled with it;
- an exclusive gateway is a node that picks one flow by the variables;
- a parallel fork has one subgraph per branch (``<fork>.branch<i>``), joined by a multi-source edge
  into the join node, so a branch that waits never holds up the others;
- when the process declares compensations, a failing service task (after its retries) leads to the
  ``compensate`` node, which undoes the completed tasks last first, the steps of completed transactions
  among them (a handler failing for good fails the instance there, and its retry resumes the
  compensation); otherwise the failure is recorded in the
  checkpoint and the instance can be retried.

Graph state holds only the variables (with versions), visit counters and current wait ids: history
goes to the event log.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, cast

from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command
from typing_extensions import TypedDict  # pydantic (Studio's input forms) needs it before 3.12

from agents.errors import AgentError
from checkpoints.events import EventLog, NewEvent
from checkpoints.process.waits import cancel_pending
from graphs.errors import CompensationFailedError, MapFailedError, NoFlowError
from graphs.process.blocks import Level, analyse, is_fork, is_join
from graphs.process.spec import (
    EndEvent,
    EventGateway,
    ExclusiveGateway,
    MapTask,
    MessageEvent,
    ParallelGateway,
    ProcessSpec,
    ServiceTask,
    TimerEvent,
    Transaction,
    UserTask,
    checked_against,
)
from nodes.agent_call import Recording
from nodes.compensation import COMPENSATION_RETRY
from nodes.gateways import choose, either, first_failure, merge_latest, merge_max, merge_present, merge_variables
from nodes.process_services import ProcessServices
from nodes.service_task import perform_task
from nodes.services import NodeServices, thread_id
from nodes.services import failure as failure_event
from nodes.transaction import execute_with_compensation
from nodes.variables import Cell, assign, pick, values
from nodes.waits import SubscriptionPlan, TaskPlan, TimerPlan, WaitPlan, make_arm_node, make_wait_node

COMPENSATE = "compensate"
UNDO_FAILED = "transaction.undo_failed"  # a transaction's rollback stopped at an undo that failed for good
COMPENSATION_FAILED = "compensation.failed"  # the compensation stopped at a handler that failed for good
WAITING_ELEMENTS = (UserTask, TimerEvent, MessageEvent, EventGateway)


class ProcessState(TypedDict, total=False):
    """The process graph's state: variables, visits, waits and the first failure."""

    variables: Annotated[dict[str, Cell], merge_variables]
    visits: Annotated[dict[str, int], merge_max]
    waits: Annotated[dict[str, str], merge_latest]  # element → the wait id it is parked on
    early: Annotated[dict[str, Any], merge_present]  # wait id → a resolution that came before the interrupt
    failure: Annotated[dict[str, Any] | None, first_failure]
    abandoned: Annotated[bool, either]  # a wait of this level (or a branch of it) was abandoned: see ``join_node``
    entry: str
    variant: str | None
    status: str
    outcome: str | None
    compensated: list[str]


class BranchOutput(TypedDict, total=False):
    """What a parallel branch hands back to its parent: only reducer channels, so siblings merge."""

    variables: Annotated[dict[str, Cell], merge_variables]
    visits: Annotated[dict[str, int], merge_max]
    waits: Annotated[dict[str, str], merge_latest]
    early: Annotated[dict[str, Any], merge_present]
    failure: Annotated[dict[str, Any] | None, first_failure]
    abandoned: Annotated[bool, either]


def arm_node(element_id: str) -> str:
    return f"{element_id}.arm"


def element_of(node: str) -> str:
    """The element a graph node belongs to (``<id>.arm`` arms ``<id>``; element ids have no dots)."""
    return node.removesuffix(".arm")


def describe_wait(spec: ProcessSpec, element: Any) -> dict[str, Any]:
    """What a wait at ``element`` shows besides its id, element and kind: the interrupt's value, and the entry
    of the instance's ``waiting`` list (``ProcessOrchestrator.view``)."""
    if isinstance(element, UserTask):
        return {
            "title": element.label,
            "assignee": element.assignee,
            "candidate_groups": list(element.candidate_groups),
            "response_schema": element.response_schema,
        }
    if isinstance(element, MessageEvent):
        return {"messages": [element.message]}
    if isinstance(element, EventGateway):
        return {"options": [flow.target for flow in spec.outgoing(element.id)]}
    return {}


def task_timers(spec: ProcessSpec, task: UserTask) -> list[TimerPlan]:
    """The timers a wait at ``task`` arms: its SLA, with its escalation, and its boundary timers, with whom they
    notify. A migration gives a moved task's timers the target task's (``graphs.process.migration``)."""
    timers = []
    sla = task.sla_timer
    if sla is not None:
        escalation = task.on_timeout.model_dump(mode="json") if task.on_timeout else None
        timers.append(TimerPlan(task.id, "sla", sla, {"escalation": escalation}))
    for boundary in spec.boundaries(task.id):
        purpose = "boundary" if boundary.interrupting else "reminder"
        timers.append(TimerPlan(boundary.id, purpose, boundary.timer, {"notify": boundary.notify}))
    return timers


def build_process_graph(spec: ProcessSpec, services: NodeServices) -> StateGraph[Any]:
    builder = _Builder(spec, ProcessServices.of(services))
    return builder.level(analyse(spec).top)


class _Builder:
    def __init__(self, spec: ProcessSpec, services: ProcessServices) -> None:
        self.spec = spec
        self.services = services
        self.granted = spec.granted_permissions
        self.intents = spec.granted_intents
        self.compensable = spec.compensable

    # --- naming ----------------------------------------------------------------------------------

    def node_of(self, element_id: str, level: Level) -> str:
        if element_id == level.exit:
            return END
        if isinstance(self.spec.element(element_id), WAITING_ELEMENTS):
            return arm_node(element_id)
        return element_id

    def after(self, element_id: str, level: Level) -> str:
        """The node the single outgoing flow of ``element_id`` leads to."""
        return self.node_of(self.spec.outgoing(element_id)[0].target, level)

    def fail_target(self, level: Level) -> str:
        return COMPENSATE if level.key == "" else END

    # --- levels ----------------------------------------------------------------------------------

    def level(self, level: Level) -> StateGraph[Any]:
        top = level.key == ""
        builder: StateGraph[Any] = (
            StateGraph(ProcessState) if top else StateGraph(ProcessState, output_schema=BranchOutput)
        )
        for member in level.members:
            self.add_element(builder, member, level)
        for fork in level.forks.values():
            branch_nodes = []
            for index, branch in enumerate(fork.branches):
                name = fork.branch_node(index)
                if branch.members:
                    builder.add_node(name, self.level(branch).compile(name=name))
                else:  # fork → join directly: a branch with nothing to do
                    builder.add_node(name, cast(Any, _nothing))
                builder.add_edge(fork.fork, name)
                branch_nodes.append(name)
            builder.add_edge(branch_nodes, fork.join)
        if top:
            entries = {s.id: self.node_of(self.spec.outgoing(s.id)[0].target, level) for s in self.spec.starts()}
            plain = self.spec.plain_start()
            # {} as input (LangGraph Studio, langgraph dev) enters by the plain start, as start() does.
            default_entry = (plain or self.spec.starts()[0]).id

            def route_entry(state: ProcessState) -> str:
                return entries[state.get("entry") or default_entry]

            builder.add_conditional_edges(START, route_entry, sorted(set(entries.values())))
            if self.compensable:
                builder.add_node(COMPENSATE, self.compensate_node())
                builder.add_edge(COMPENSATE, END)
        else:
            builder.add_edge(START, self.node_of(level.entries[0], level))
        return builder

    def add_element(self, builder: StateGraph[Any], element_id: str, level: Level) -> None:
        element = self.spec.element(element_id)
        if isinstance(element, ServiceTask):
            builder.add_node(element_id, self.service_node(element, level))
        elif isinstance(element, Transaction):
            builder.add_node(element_id, self.transaction_node(element, level))
        elif isinstance(element, MapTask):
            builder.add_node(element_id, self.map_node(element, level))
        elif isinstance(element, ExclusiveGateway):
            builder.add_node(element_id, self.exclusive_node(element, level))
        elif isinstance(element, ParallelGateway):
            if is_fork(self.spec, element_id):
                builder.add_node(element_id, cast(Any, _nothing))
            else:
                assert is_join(self.spec, element_id)
                builder.add_node(element_id, self.join_node(element, level))
        elif isinstance(element, EndEvent):
            builder.add_node(element_id, self.end_node(element))
            builder.add_edge(element_id, END)
        elif isinstance(element, WAITING_ELEMENTS):
            plan = self.wait_plan(element)
            builder.add_node(arm_node(element_id), cast(Any, make_arm_node(plan, self.services)))

            def route(state: Mapping[str, Any], resolution: dict[str, Any]) -> tuple[str, dict[str, Any]]:
                return self.route_wait(element, level, resolution, state.get("waits") or {})

            # Only a top-level wait is delivered by its interrupt id alone. In a fork's branch, a sibling
            # branch's failure can share the checkpoint the wait parked at, a crash can keep that failure
            # from the instance's row, and any resume would run the failed element again: its delivery
            # reads the thread's state, which shows the failure (``ProcessOrchestrator.deliver``).
            wait = make_wait_node(
                plan,
                self.services,
                describe=self.describe(element),
                route=route,
                assign=assign,
                by_id=level.key == "",
                ending=self.ends(level),
            )
            builder.add_node(element_id, cast(Any, wait))
            builder.add_edge(arm_node(element_id), element_id)
        else:  # pragma: no cover - validation admits no other node elements
            raise AssertionError(f"no node for {element.type}")

    # --- waits -----------------------------------------------------------------------------------

    def wait_plan(self, element: Any) -> WaitPlan:
        if isinstance(element, UserTask):
            timers = task_timers(self.spec, element)
            task = TaskPlan(element.label, element.assignee, element.candidate_groups, element.response_schema)
            return WaitPlan(element.id, "user_task", tuple(timers), (), task)
        if isinstance(element, TimerEvent):
            return WaitPlan(element.id, "timer", (TimerPlan(element.id, "catch", element.timer),))
        if isinstance(element, MessageEvent):
            return WaitPlan(element.id, "message", (), (self.subscription_plan(element),))
        assert isinstance(element, EventGateway)
        timers, subscriptions = [], []
        for flow in self.spec.outgoing(element.id):
            option = self.spec.element(flow.target)
            if isinstance(option, TimerEvent):
                timers.append(TimerPlan(option.id, "catch", option.timer))
            else:
                subscriptions.append(self.subscription_plan(option))
        return WaitPlan(element.id, "race", tuple(timers), tuple(subscriptions))

    def subscription_plan(self, event: MessageEvent) -> SubscriptionPlan:
        schema = self.spec.assignment_schema(event.outputs)
        return SubscriptionPlan(event.id, event.message, event.correlation, schema)

    def describe(self, element: Any) -> dict[str, Any]:
        return describe_wait(self.spec, element)

    def route_wait(
        self, element: Any, level: Level, resolution: Mapping[str, Any], waits: Mapping[str, str]
    ) -> tuple[str, dict[str, Any]]:
        """Where an answer to the wait at ``element`` leads, and the variables it assigns. ``waits``: the state's
        element → wait id."""
        option = str(resolution.get("option") or element.id)
        if option != element.id and option in waits and waits[option] == waits.get(element.id):
            # The wait's name before a migration renamed it (the state keeps both): an answer read before the
            # move (a task completed, a message or a timer taken as it migrated) is the element's own.
            option = element.id
        payload = resolution.get("payload") or {}
        if isinstance(element, EventGateway):
            chosen = self.spec.element(option)
            updates = pick(chosen.outputs, payload) if isinstance(chosen, MessageEvent) else {}
            return self.after(option, level), updates
        if option != element.id:  # an interrupting boundary timer of a user task
            return self.after(option, level), {}
        if isinstance(element, UserTask | MessageEvent):
            return self.after(element.id, level), pick(element.outputs, payload)
        return self.after(element.id, level), {}

    # --- work ------------------------------------------------------------------------------------

    def service_node(self, task: ServiceTask, level: Level) -> Any:
        node, spec = self.services.node, self.spec
        # An output that would give a variable a value variables_schema refuses fails the call, before it is
        # logged: a retry calls the agent again (a gateway that relied on the schema could never decide).
        output_schema = checked_against(task.output_schema, spec.assignment_schema(task.outputs))

        async def run(state: ProcessState, config: RunnableConfig) -> Command[str]:
            instance_id = thread_id(config)
            visit = int((state.get("visits") or {}).get(task.id, 0)) + 1
            key = f"{instance_id}:{task.id}:{visit}"
            known = values(state.get("variables"))
            inputs = known if task.inputs is None else {k: known[k] for k in task.inputs if k in known}

            def record(output: dict[str, Any]) -> Recording:
                _cells, changes = assign(state.get("variables"), pick(task.outputs, output))
                return Recording(
                    {"element": task.id, "visit": visit, "compensation": task.compensation, "changes": changes}
                )

            try:
                outcome = await perform_task(
                    node,
                    config,
                    intent=task.agent,
                    payload={"element": task.id, "process": spec.name, "variables": inputs},
                    step=task.id,
                    key=key,
                    event_type="task.completed",
                    recorder=record,
                    granted_permissions=self.granted,
                    granted_intents=self.intents,
                    output_schema=output_schema,
                    options=task,
                )
            except AgentError as exc:
                if not self.compensable:
                    raise
                failure = {"element": task.id, "error": str(exc), "error_type": exc.code}
                await node.events.append(
                    instance_id,
                    [failure_event("process", "task", failure, task.id, f"{key}:failed")],
                    status="compensating",
                )
                return Command(goto=self.fail_target(level), update={"failure": failure, "visits": {task.id: visit}})
            cells, _changes = assign(state.get("variables"), pick(task.outputs, outcome.output))
            return Command(goto=self.after(task.id, level), update={"variables": cells, "visits": {task.id: visit}})

        run.__name__ = f"run_{task.id}"
        return run

    def map_node(self, task: MapTask, level: Level) -> Any:
        node, spec = self.services.node, self.spec

        async def run(state: ProcessState, config: RunnableConfig) -> Command[str]:
            instance_id = thread_id(config)
            visit = int((state.get("visits") or {}).get(task.id, 0)) + 1
            name = f"{instance_id}:{task.id}:{visit}"
            items = values(state.get("variables")).get(task.items)
            if not isinstance(items, list):
                raise MapFailedError(
                    f"map {task.id!r} maps over variable {task.items!r}, which is not a list", element=task.id
                )
            gate = asyncio.Semaphore(task.max_concurrency)

            async def one(index: int, item: Any) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
                key = f"{name}:{index}"
                async with gate:
                    failed = await node.events.find_by_key(instance_id, f"{key}:failed")
                    if failed is not None:  # failed for good before a crash: not called again
                        return None, dict(failed.payload)
                    try:
                        outcome = await perform_task(
                            node,
                            config,
                            intent=task.agent,
                            payload={"element": task.id, "process": spec.name, "index": index, "item": item},
                            step=task.id,
                            key=key,
                            event_type="map.item_completed",
                            recorder=lambda _output: Recording({"element": task.id, "index": index}),
                            granted_permissions=self.granted,
                            granted_intents=self.intents,
                            output_schema=task.output_schema,
                        )
                    except AgentError as exc:
                        failure = {"index": index, "error": str(exc), "error_type": exc.code}
                        await node.events.append(
                            instance_id, [NewEvent("map.item_failed", failure, task.id, f"{key}:failed")]
                        )
                        return None, failure
                return outcome.output, None

            async with asyncio.TaskGroup() as group:
                runs = [group.create_task(one(i, item)) for i, item in enumerate(items)]
            done = [r.result() for r in runs]
            results = [output for output, _failure in done]
            failures = [failure for _output, failure in done if failure is not None]
            summary = {"items": len(items), "succeeded": len(items) - len(failures), "failed": len(failures)}
            if not task.tolerates(len(failures), len(items)):
                error = f"{len(failures)} of {len(items)} items failed, more than map {task.id!r} tolerates"
                if not self.compensable:
                    raise MapFailedError(error, **summary, failures=failures)
                failure = {
                    "element": task.id,
                    "error": error,
                    "error_type": MapFailedError.__name__,
                    "failures": failures,
                }
                await node.events.append(
                    instance_id,
                    [failure_event("process", "map", failure, task.id, f"{name}:failed")],
                    status="compensating",
                )
                return Command(goto=self.fail_target(level), update={"failure": failure, "visits": {task.id: visit}})
            cells, changes = assign(
                state.get("variables"), {task.output_variable: results, task.failures_variable: failures}
            )
            await node.events.append(
                instance_id,
                [
                    NewEvent(
                        "map.finished",
                        {**summary, "failures": failures, "changes": changes},
                        task.id,
                        f"{name}:finished",
                    )
                ],
            )
            return Command(goto=self.after(task.id, level), update={"variables": cells, "visits": {task.id: visit}})

        run.__name__ = f"run_{task.id}"
        return run

    def transaction_node(self, transaction: Transaction, level: Level) -> Any:
        node = self.services.node

        async def run(state: ProcessState, config: RunnableConfig) -> Command[str]:
            instance_id = thread_id(config)
            visit = int((state.get("visits") or {}).get(transaction.id, 0)) + 1
            name = f"{instance_id}:{transaction.id}:{visit}"
            known = values(state.get("variables"))
            inputs = known if transaction.inputs is None else {k: known[k] for k in transaction.inputs if k in known}
            outcome = await execute_with_compensation(
                node,
                config,
                [(s.do, s.undo) for s in transaction.steps],
                name=name,
                element=transaction.id,
                payload={"element": transaction.id, "process": self.spec.name, "variables": inputs},
                granted_permissions=self.granted,
                granted_intents=self.intents,
            )
            if outcome.status == "failed":
                # Not an outcome the flow goes on from: the instance fails here, and its retry runs the transaction
                # again, which resumes the rollback at the undo that failed.
                stopped = {"undone": outcome.undone, "failure": outcome.failure, "undo_failure": outcome.undo_failure}
                await node.events.append(instance_id, [NewEvent(UNDO_FAILED, stopped, transaction.id)])
                undo = outcome.undo_failure or {}
                raise CompensationFailedError(
                    f"transaction {transaction.id!r} could not be rolled back: undo {undo.get('intent')!r} of step "
                    f"{undo.get('index')} failed for good ({undo.get('error')}); steps {outcome.undone} were undone. "
                    "Retry the instance to resume the rollback there",
                    element=transaction.id,
                    **stopped,
                )
            cells, changes = assign(state.get("variables"), {transaction.output_variable: outcome.status})
            record = {
                "status": outcome.status,
                "undone": outcome.undone,
                "failure": outcome.failure,
                "undo_failure": None,
                "changes": changes,
            }
            await node.events.append(
                instance_id, [NewEvent(TRANSACTION_FINISHED, record, transaction.id, f"{name}:finished")]
            )
            return Command(
                goto=self.after(transaction.id, level), update={"variables": cells, "visits": {transaction.id: visit}}
            )

        run.__name__ = f"run_{transaction.id}"
        return run

    def exclusive_node(self, gateway: ExclusiveGateway, level: Level) -> Any:
        flows = self.spec.outgoing(gateway.id)
        events = self.services.node.events

        async def decide(state: ProcessState, config: RunnableConfig) -> Command[str]:
            instance_id = thread_id(config)
            known = values(state.get("variables"))
            index = choose([(str(i), f.when, f.default) for i, f in enumerate(flows)], known)
            if index is None:
                raise NoFlowError(
                    f"no flow out of exclusive gateway {gateway.id!r} holds for the variables {sorted(known)}; "
                    "add a default flow or set the variables its conditions test",
                    gateway=gateway.id,
                )
            flow = flows[int(index)]
            visit = int((state.get("visits") or {}).get(gateway.id, 0)) + 1
            await events.append(
                instance_id,
                [
                    NewEvent(
                        "gateway.decided",
                        {"target": flow.target, "default": flow.default or flow.when is None},
                        gateway.id,
                        f"{instance_id}:{gateway.id}:{visit}",
                    )
                ],
            )
            return Command(goto=self.node_of(flow.target, level), update={"visits": {gateway.id: visit}})

        decide.__name__ = f"decide_{gateway.id}"
        return decide

    def join_node(self, join: ParallelGateway, level: Level) -> Any:
        def joined(state: ProcessState) -> Command[str]:
            # A wait abandoned in a branch: a branch of an enclosing fork failed, and this join's level ends so
            # that the join that sees the failure compensates.
            if state.get("failure") or state.get("abandoned"):
                return Command(goto=self.fail_target(level))
            return Command(goto=self.after(join.id, level))

        joined.__name__ = f"join_{join.id}"
        return joined

    def ends(self, level: Level) -> dict[str, Any]:
        """The nodes of the end events ``level`` holds, by name, for a wait to run itself (``make_wait_node``):
        only at the top level, whose end is the run's."""
        if level.key != "":
            return {}
        members = (self.spec.element(m) for m in level.members)
        return {end.id: self.end_node(end) for end in members if isinstance(end, EndEvent)}

    def end_node(self, end: EndEvent) -> Any:
        events = self.services.node.events
        outcome = end.outcome or end.id

        async def finish(state: ProcessState, config: RunnableConfig) -> ProcessState:
            instance_id = thread_id(config)
            record = {"outcome": outcome, "variables": values(state.get("variables"))}
            # Written with the other ends reached meanwhile (a wave of continuations): one transaction for them.
            event = NewEvent("process.completed", record, end.id, f"{instance_id}:completed")
            await events.append_together(instance_id, event, "completed")
            return {"status": "completed", "outcome": outcome}

        finish.__name__ = f"end_{end.id}"
        return finish

    def compensate_node(self) -> Any:
        node = self.services.node

        async def compensate(state: ProcessState, config: RunnableConfig) -> ProcessState:
            instance_id = thread_id(config)
            failure = state.get("failure")
            undone: list[str] = []
            last: _Undo | None = None
            for work in reversed(await _undoable(node.events, instance_id)):
                try:
                    await perform_task(
                        node,
                        config,
                        intent=work.handler,
                        payload={
                            "element": work.element,
                            **work.payload,
                            "variables": values(state.get("variables")),
                            "failure": failure,
                        },
                        step=work.element,
                        key=work.key,
                        event_type=work.event_type,
                        recorder=_recording(work.recording),
                        retry=COMPENSATION_RETRY,
                        always_replay=True,
                    )
                except AgentError as exc:
                    # The instance fails here, at the compensation: its retry runs it again, which replays the undos
                    # done from the log and calls this handler again (as Temporal and Camunda retry a compensation).
                    element, handler = work.element, work.handler
                    broken = {"element": element, "handler": handler, "error": str(exc), "error_type": exc.code}
                    await node.events.append(
                        instance_id,
                        [NewEvent(COMPENSATION_FAILED, {**broken, "compensated": undone}, element)],
                        also=cancel_pending(instance_id),
                    )
                    raise CompensationFailedError(
                        f"the compensation of {element!r} ({handler!r}) failed for good: {exc}; {undone} were "
                        "undone. Retry the instance to resume the compensation there",
                        **broken,
                        compensated=undone,
                    ) from exc
                if not (last and work.transaction and work.transaction == last.transaction):
                    undone.append(work.element)  # a transaction once, however many of its steps are undone
                last = work
            await node.events.append(
                instance_id,
                [
                    NewEvent(
                        "process.compensated",
                        {"compensated": undone, "failure": failure},
                        None,
                        f"{instance_id}:compensated",
                    )
                ],
                status="compensated",
                also=cancel_pending(instance_id),
            )
            return {"status": "compensated", "compensated": undone}

        return compensate


@dataclass(frozen=True, slots=True)
class _Undo:
    """One undo a process's compensation makes: its element, handler, key, event and what its handler is given."""

    element: str
    handler: str
    key: str
    event_type: str
    payload: dict[str, Any]
    recording: dict[str, Any]
    transaction: str | None = None  # the run of a transaction whose step it undoes


TRANSACTION_FINISHED = "transaction.finished"


async def _undoable(events: EventLog, instance_id: str) -> list[_Undo]:
    """What a process's compensation undoes, in the order it was done: its service tasks completed with a
    compensation, and the steps with an undo of its transactions that completed (a transaction that rolled itself
    back undid its own), each keyed as the transaction's own undo of that step."""
    logged = await events.list(
        instance_id, types=["task.completed", "transaction.step_completed", TRANSACTION_FINISHED]
    )
    completed = {
        str(e.key).removesuffix(":finished")
        for e in logged
        if e.type == TRANSACTION_FINISHED and e.payload.get("status") == "completed"
    }
    undos = []
    for event in logged:
        data, element = event.payload, str(event.step)
        if event.type == "task.completed" and data.get("compensation"):
            handler = str(data["compensation"])
            undos.append(
                _Undo(
                    element,
                    handler,
                    f"{event.key}:compensate",
                    "compensation.completed",
                    {"original_output": data.get("output")},
                    {"handler": handler, "undoes": event.key},
                )
            )
        elif event.type == "transaction.step_completed" and data.get("undo") and data.get("transaction") in completed:
            name, index = str(data["transaction"]), int(data["index"])
            undos.append(
                _Undo(
                    element,
                    str(data["undo"]),
                    f"{name}:undo:{index}",
                    "transaction.step_undone",
                    {"index": index, "original_output": data.get("output")},
                    {"transaction": name, "index": index, "undoes": data.get("intent")},
                    transaction=name,
                )
            )
    return undos


def _nothing(_state: Any) -> dict[str, Any]:
    return {}


def _recording(payload: dict[str, Any]) -> Callable[[dict[str, Any]], Recording]:
    def record(_output: dict[str, Any]) -> Recording:
        return Recording(payload)

    return record

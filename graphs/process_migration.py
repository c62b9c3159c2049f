"""Moving a waiting instance to another version of its process, with a node mapping (SPEC B6).

The plan maps each element the instance waits at to an element of the target version (an element
with the same id maps to itself unless told otherwise). It is checked whole before anything is
written, and refused, listing every problem, when a waiting element has no mapping, maps to an
element of another kind, or waits inside a parallel branch (migrate after the join). Applied, it
keeps what the instance waits on: the same wait, task, timers (with their due times) and
subscriptions, now under the target element; boundary timers the target task lacks are cancelled.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from langgraph.types import StateSnapshot
from sqlalchemy import Executable, update

from checkpoints.tables import process_subscriptions, process_timers, process_waits, user_tasks
from graphs.engine import failed_task
from graphs.process import EventGateway, ProcessSpec, UserTask
from graphs.process_blocks import TOP, analyse
from graphs.process_builder import arm_node
from graphs.process_errors import MigrationRefusedError, ProcessStateError, UnknownProcessError

if TYPE_CHECKING:
    from graphs.process_orchestrator import ProcessOrchestrator


def _waiting(snapshot: StateSnapshot) -> list[tuple[str, dict[str, Any]]]:
    """(top-level node the wait hangs under, interrupt payload) for every wait of the thread."""
    return [
        (task.name, dict(i.value)) for task in snapshot.tasks for i in task.interrupts if isinstance(i.value, Mapping)
    ]


def _options(spec: ProcessSpec, gateway: str) -> set[str]:
    return {f.target for f in spec.outgoing(gateway)}


def check_plan(
    source: ProcessSpec, target: ProcessSpec, waiting: list[tuple[str, dict[str, Any]]], mapping: Mapping[str, str]
) -> tuple[list[str], dict[str, str]]:
    """Every problem with the plan, and the resolved element mapping of the waits."""
    problems = []
    source_ids, target_ids = set(source.ids()), set(target.ids())
    for element, mapped in mapping.items():
        if element not in source_ids:
            problems.append(f"the plan maps {element!r}, which is not an element of v{source.version}")
        if mapped not in target_ids:
            problems.append(
                f"the plan maps {element!r} to {mapped!r}, which is not an element of v{target.version}; "
                f"its elements: {', '.join(target.ids())}"
            )
    levels = analyse(target).level_of
    resolved: dict[str, str] = {}
    for node, payload in waiting:
        element = str(payload.get("element"))
        if node != element:
            problems.append(
                f"the instance waits at {element!r} inside parallel branch {node!r}; migrate it once the branches "
                "have joined"
            )
            continue
        to = mapping.get(element) or (element if element in target_ids else None)
        if to is None:
            problems.append(
                f"waiting node {element!r} has no mapping: v{target.version} has no element {element!r}; add "
                f"{{{element!r}: <element of v{target.version}>}} to the plan"
            )
            continue
        if to not in target_ids:
            continue  # reported above
        before, after = source.element(element), target.element(to)
        if before.type != after.type:
            problems.append(
                f"waiting node {element!r} is a {before.type} but its mapping {to!r} is a {after.type}; map it to "
                f"a {before.type}"
            )
            continue
        if levels.get(to, TOP) != TOP:
            problems.append(f"{to!r} lies inside a parallel branch of v{target.version}; map {element!r} elsewhere")
            continue
        if isinstance(before, EventGateway) and not _options(source, element) <= _options(target, to):
            missing = sorted(_options(source, element) - _options(target, to))
            problems.append(f"event gateway {to!r} of v{target.version} lacks the events {missing} the instance races")
            continue
        resolved[element] = to
    return problems, resolved


async def migrate(
    processes: ProcessOrchestrator, instance_id: str, to_version: int, mapping: Mapping[str, str] | None
) -> dict[str, Any]:
    instance, deployment, source, graph = await processes.loaded(instance_id)
    target_deployment = await processes.deployment(deployment.name, to_version)
    if target_deployment is None:
        raise UnknownProcessError(
            f"process {deployment.name!r} has no version {to_version}", name=deployment.name, version=to_version
        )
    if instance.status != "in_progress":
        raise ProcessStateError(
            f"process instance {instance_id!r} is {instance.status}; only a waiting instance can migrate", allowed=[]
        )
    target = processes.spec_of(target_deployment)
    target_graph = processes.graph_of(target)
    config = processes.engine.config(instance_id)
    async with processes.engine.exclusive(instance_id):
        snapshot = await processes.settled(graph, instance_id)
        waiting = _waiting(snapshot)
        if failed_task(snapshot) or not waiting:
            raise ProcessStateError(
                f"process instance {instance_id!r} is not waiting anywhere; only a waiting instance can migrate",
                allowed=[],
            )
        problems, moves = check_plan(source, target, waiting, dict(mapping or {}))
        if problems:
            raise MigrationRefusedError(
                f"cannot migrate {instance_id!r} from v{deployment.version} to v{to_version}: " + "; ".join(problems),
                problems=problems,
            )
        statements: list[Executable] = []
        target_nodes = set(target_graph.nodes)
        for _node, payload in waiting:
            element, wait_id = str(payload["element"]), str(payload["wait_id"])
            to = moves[element]
            statements += _move_rows(source, target, element, to, wait_id)
            if to == element:
                continue  # the target graph has a node of that name waiting on the same interrupt
            if element in target_nodes:  # the old node exists in the target too: settle its pending task
                await target_graph.aupdate_state(config, {}, as_node=element)
            visits = dict(snapshot.values.get("visits") or {})
            await target_graph.aupdate_state(
                config,
                {"waits": {to: wait_id}, "visits": {to: max(visits.get(to, 0), visits.get(element, 0))}},
                as_node=arm_node(to),
            )
        record = {
            "from_version": deployment.version,
            "to_version": to_version,
            "mapping": moves,
            "waits": [p["wait_id"] for _n, p in waiting],
        }
        await processes.repoint(instance_id, target_deployment, statements, record)
        if any(to != element for element, to in moves.items()):
            await processes.run(target_graph, instance_id, None)  # park at the mapped nodes
    return await processes.status(instance_id)


def _move_rows(source: ProcessSpec, target: ProcessSpec, element: str, to: str, wait_id: str) -> list[Executable]:
    statements: list[Executable] = []
    if to != element:
        statements += [
            update(process_waits).where(process_waits.c.wait_id == wait_id).values(element=to),
            update(user_tasks).where(user_tasks.c.task_id == wait_id).values(element=to),
            update(process_subscriptions)
            .where(process_subscriptions.c.wait_id == wait_id, process_subscriptions.c.element == element)
            .values(element=to),
            update(process_timers)
            .where(process_timers.c.wait_id == wait_id, process_timers.c.element == element)
            .values(element=to),
        ]
    before, after = source.element(element), target.element(to)
    if isinstance(before, UserTask) and isinstance(after, UserTask):
        kept = [b.id for b in target.boundaries(to)]
        statements.append(
            update(process_timers)
            .where(
                process_timers.c.wait_id == wait_id,
                process_timers.c.purpose.in_(("boundary", "reminder")),
                process_timers.c.element.not_in(kept),
                process_timers.c.status == "scheduled",
            )
            .values(status="cancelled")
        )
        if after.sla_timer is None:
            statements.append(
                update(process_timers)
                .where(
                    process_timers.c.wait_id == wait_id,
                    process_timers.c.purpose == "sla",
                    process_timers.c.status == "scheduled",
                )
                .values(status="cancelled")
            )
    return statements

"""Moving a waiting instance to another version of its process, with a node mapping (SPEC B6).

The plan maps each element the instance waits at to an element of the target version (an element
with the same id maps to itself unless told otherwise). It is checked whole before anything is
written, and refused, listing every problem, when a waiting element has no mapping, maps to an
element of another kind, or waits inside a parallel branch (migrate after the join). Applied, it
keeps what the instance waits on: the same wait, task, timers (with their due times) and
subscriptions, now under the target element; boundary timers the target task lacks are cancelled, and
those it keeps fire as it says (its SLA's escalation, whom its reminders notify); a subscription waits for
the target's message under the key its correlation variable holds (refused when it holds none).

A migration touches two stores, the thread's checkpoint and our rows, which no transaction spans.
So it goes in three steps, each atomic, and is never left half-applied:

1. **intent**: one transaction logs ``process.migrating`` (the whole plan, and the id of the
   checkpoint it starts from) and sets the instance's status to ``migrating``;
2. **checkpoint**: the thread's state moves to the target's nodes in one checkpoint (one
   ``abulk_update_state`` superstep: a single checkpoint write, which lands or does not);
3. **finish**: one transaction re-points the instance to the target deployment, moves its rows,
   logs ``process.migrated`` and sets the status back to ``in_progress``.

An instance found ``migrating`` (a crash or an error came between the steps) is settled before
anything else touches it (:func:`settle_migration`): if its thread's latest checkpoint is the one
step 2 writes (its metadata names the migration), step 2 landed and step 3 is completed (it is
idempotent); otherwise the migration is rolled back (``process.migration_rolled_back``, status
``in_progress``, the thread re-parks where it was). ``recover()`` settles every such instance at
startup, a scheduler pass those abandoned longer than the lease, and any call on the instance its
own (see ``settle_migration``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from typing import Any

import structlog
from langchain_core.runnables import RunnableConfig
from langgraph.types import StateSnapshot, StateUpdate

from checkpoints.errors import ConcurrentUpdateError
from checkpoints.events import NewEvent
from checkpoints.index import Instance
from checkpoints.process.deployments import Deployment
from checkpoints.process.migrations import MigrationRows, MigrationStep, RowMove, TaskFields
from graphs.errors import (
    MigrationInProgressError,
    MigrationRefusedError,
    ProcessStateError,
    UnknownProcessError,
)
from graphs.kernel.designs import new_id
from graphs.kernel.engine import JourneyEngine, failed_task
from graphs.process.blocks import TOP, analyse
from graphs.process.builder import arm_node, task_timers
from graphs.process.context import PATTERN, DeployedVersions, Graph, ThreadRunner
from graphs.process.spec import EventGateway, MessageEvent, ProcessSpec, UserTask
from nodes.errors import CorrelationError
from nodes.variables import values
from nodes.waits import SubscriptionPlan, correlation_key

log = structlog.get_logger("journeys.processes")

MIGRATING = "migrating"  # the instance status between a migration's intent and its finish (or rollback)
INTENT, DONE, ROLLED_BACK = "process.migrating", "process.migrated", "process.migration_rolled_back"
MIGRATION_KEY = "journeys_migration"  # in the metadata of the checkpoint a migration writes: its id


@dataclass(frozen=True, slots=True)
class MovedWait:
    """A wait of an instance being migrated: where it waited and where it waits afterwards."""

    wait_id: str
    element: str  # where the instance waits in the source version
    to: str  # the element of the target version it waits at afterwards
    # (source message event, target message event, the target's message name, its correlation key) of each
    # subscription of the wait: it waits for the target's message afterwards, not the source's
    messages: tuple[tuple[str, str, str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class MigrationPlan:
    """Everything needed to finish a migration, logged with its intent before anything else changes."""

    migration_id: str
    from_version: int
    to_version: int
    to_design: str
    waits: tuple[MovedWait, ...]
    source_checkpoint: str | None  # the checkpoint the thread's move starts from (for the record)
    rewrites_checkpoint: bool  # False when every wait keeps its element: only rows change
    owner: str  # the orchestrator that runs it (see settle_migration)
    by: str | None = None  # who migrated it (its three events name them); None in intents logged before it was

    @property
    def mapping(self) -> dict[str, str]:
        return {w.element: w.to for w in self.waits}

    @property
    def wait_ids(self) -> tuple[str, ...]:
        return tuple(w.wait_id for w in self.waits)

    def record(self) -> dict[str, Any]:
        return {
            "migration_id": self.migration_id,
            "from_version": self.from_version,
            "to_version": self.to_version,
            "mapping": self.mapping,
            "waits": [w.wait_id for w in self.waits],
            "by": self.by,
        }

    def to_payload(self) -> dict[str, Any]:
        return {**asdict(self), "waits": [asdict(w) for w in self.waits]}

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> MigrationPlan:
        waits = tuple(
            MovedWait(**{**w, "messages": tuple(tuple(m) for m in w.get("messages", ()))}) for w in payload["waits"]
        )
        given = payload.keys() - {"waits"}  # an intent logged before a field was added lacks it: its default
        return cls(waits=waits, **{f.name: payload[f.name] for f in fields(cls) if f.name in given})


@dataclass(frozen=True, slots=True)
class Migrations:
    """What migrating an instance needs, handed over by the orchestrator (which this module does not know)."""

    engine: JourneyEngine  # the instance lock, the thread's config and checkpoints, the index and the log
    versions: DeployedVersions
    threads: ThreadRunner  # runs the thread and records its failure
    rows: MigrationRows  # the transaction of each step
    owner: str  # names the migrations this orchestrator runs (see settle_migration)


def _waiting(snapshot: StateSnapshot) -> list[tuple[str, dict[str, Any]]]:
    """(top-level node the wait hangs under, interrupt payload) for every wait of the thread."""
    return [
        (task.name, dict(i.value)) for task in snapshot.tasks for i in task.interrupts if isinstance(i.value, Mapping)
    ]


def _options(spec: ProcessSpec, gateway: str) -> set[str]:
    return {f.target for f in spec.outgoing(gateway)}


async def _undos_dropped(
    migrations: Migrations, instance_id: str, source: ProcessSpec, target: ProcessSpec
) -> list[str]:
    """The tasks the instance completed with a compensation (its handler is in their completion event) when the
    target declares none: its graph has no compensation, so a failure after the migration would undo nothing."""
    if target.compensable:
        return []
    done = await migrations.engine.store.events.list(instance_id, types=["task.completed"])
    return [
        f"task {event.step!r} completed under v{source.version} with compensation {event.payload['compensation']!r}, "
        f"and v{target.version} declares no compensation: a failure after the migration would never undo it; "
        "migrate to a version that declares one"
        for event in done
        if event.payload.get("compensation")
    ]


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


def _moved(
    target: ProcessSpec, waiting: Mapping[str, Any], to: str, variables: Mapping[str, Any]
) -> tuple[MovedWait, list[str]]:
    """The wait ``waiting`` moving to ``to``, with the target's message name and correlation key for each of its
    subscriptions (an event gateway's options keep their ids: see :func:`check_plan`); and the problems of the
    plan with it: a target message correlating on a variable that holds no key."""
    element = str(waiting["element"])
    after = target.element(to)
    if isinstance(after, MessageEvent):
        events = [(element, after)]
    elif isinstance(after, EventGateway):
        options = [target.element(flow.target) for flow in target.outgoing(to)]
        events = [(option.id, option) for option in options if isinstance(option, MessageEvent)]
    else:
        events = []
    messages, problems = [], []
    for was, event in events:
        try:
            key = correlation_key(variables, SubscriptionPlan(event.id, event.message, event.correlation))
        except CorrelationError as error:
            problems.append(f"v{target.version}'s {error}")
            continue
        messages.append((was, event.id, event.message, key))
    return MovedWait(str(waiting["wait_id"]), element, to, tuple(messages)), problems


async def migrate(
    migrations: Migrations,
    loaded: tuple[Instance, Deployment, ProcessSpec, Graph],
    to_version: int,
    mapping: Mapping[str, str] | None,
    by: str | None = None,
) -> None:
    """Move the instance ``loaded`` (as the orchestrator read it, settled) to ``to_version``; ``by``: who
    migrates it."""
    instance, deployment, source, graph = loaded
    instance_id = instance.instance_id
    target_deployment = await migrations.versions.get(deployment.name, to_version)
    if target_deployment is None:
        raise UnknownProcessError(
            f"process {deployment.name!r} has no version {to_version}", name=deployment.name, version=to_version
        )
    if instance.status != "in_progress":
        raise ProcessStateError(
            f"process instance {instance_id!r} is {instance.status}; only a waiting instance can migrate", allowed=[]
        )
    target = await migrations.versions.spec_of(target_deployment)
    target_graph = await migrations.versions.graph_of(target_deployment)
    threads = migrations.threads
    async with migrations.engine.exclusive(instance_id):
        now = await migrations.engine.store.index.get_instance(instance_id)
        if now is None or (now.journey_id, now.status) != (instance.journey_id, instance.status):
            # Another call migrated or moved it while this one waited: what was checked above is out of date.
            raise ConcurrentUpdateError(
                f"process instance {instance_id!r} was changed by another call while this migration waited for "
                f"it (it is now {now.status if now else 'gone'}); nothing was done: read its status and migrate "
                "it from there",
                instance_id=instance_id,
            )
        snapshot = await threads.settled(graph, instance_id)
        waiting = _waiting(snapshot)
        if failed_task(snapshot) or not waiting:
            raise ProcessStateError(
                f"process instance {instance_id!r} is not waiting anywhere; only a waiting instance can migrate",
                allowed=[],
            )
        problems, moves = check_plan(source, target, waiting, dict(mapping or {}))
        variables = values(snapshot.values.get("variables"))
        moved = [
            _moved(target, p, moves[str(p["element"])], variables) for _n, p in waiting if str(p["element"]) in moves
        ]
        problems += [problem for _wait, found in moved for problem in found]
        problems += await _undos_dropped(migrations, instance_id, source, target)
        if problems:
            raise MigrationRefusedError(
                f"cannot migrate {instance_id!r} from v{deployment.version} to v{to_version}: " + "; ".join(problems),
                problems=problems,
            )
        waits = tuple(wait for wait, _found in moved)
        plan = MigrationPlan(
            migration_id=new_id("mig"),
            from_version=deployment.version,
            to_version=to_version,
            to_design=target_deployment.design_id,
            waits=waits,
            source_checkpoint=snapshot.config["configurable"].get("checkpoint_id"),
            rewrites_checkpoint=any(w.to != w.element for w in waits),
            owner=migrations.owner,
            by=by,
        )
        await _log_intent(migrations, instance_id, plan)
        try:
            if plan.rewrites_checkpoint:
                await _rewrite_checkpoint(migrations, target_graph, instance_id, plan, snapshot)
            finished = await _finish(migrations, instance_id, plan, source, target)
        except Exception as exc:
            # Settle it now if we can; if not, the instance stays "migrating" and is settled later.
            outcome = None
            try:
                outcome = await settle_locked(migrations, instance_id)
            except Exception as again:
                log.warning("migration left to settle later", instance_id=instance_id, error=str(again))
            if outcome != "completed":
                raise
            log.info("migration completed after an error", instance_id=instance_id, error=str(exc))
            return
        if not finished:  # a wait was answered while it moved: the instance goes back to where it was
            await settle_locked(migrations, instance_id)
            raise _answered(instance_id, plan)
        if plan.rewrites_checkpoint:
            await threads.run(target_graph, instance_id, None)  # park at the mapped nodes


async def settle_migration(
    migrations: Migrations, instance_id: str, *, started_before: datetime | None = None, force: bool = False
) -> str | None:
    """Complete or roll back the migration an instance is left in; returns "completed", "rolled_back" or None.

    A migration that another orchestrator may still be running is left alone: one started by this
    orchestrator is settled (its ``migrate`` call holds the instance's lock while it runs, so one
    found open here has failed); one started elsewhere only once it is older than ``started_before``
    (a lease: that process has died), and otherwise :class:`MigrationInProgressError` is raised.
    ``force`` settles whatever is open (``recover()`` at startup, when nothing else runs).
    """
    async with migrations.engine.exclusive(instance_id):
        return await settle_locked(migrations, instance_id, started_before=started_before, force=force)


async def settle_locked(
    migrations: Migrations, instance_id: str, *, started_before: datetime | None = None, force: bool = False
) -> str | None:
    """:func:`settle_migration` for a caller that holds the instance's lock."""
    engine, versions, threads = migrations.engine, migrations.versions, migrations.threads
    instance = await engine.store.index.get_instance(instance_id)
    if instance is None or instance.status != MIGRATING:
        return None
    found = await _open_intent(migrations, instance_id)
    if found is None:  # pragma: no cover - the status and the intent are written in one transaction
        raise ProcessStateError(f"process instance {instance_id!r} is migrating but logged no plan", allowed=[])
    plan, started_at = found
    mine = plan.owner == migrations.owner
    abandoned = started_before is not None and started_at <= started_before
    if not (force or mine or abandoned):
        raise MigrationInProgressError(
            f"process instance {instance_id!r} is being migrated to v{plan.to_version} (since "
            f"{started_at.isoformat()}); try again shortly",
            instance_id=instance_id,
        )
    latest = await engine.store.saver.aget_tuple(engine.config(instance_id))
    landed = latest is not None and latest.metadata.get(MIGRATION_KEY) == plan.migration_id
    source_deployment = await versions.of_design(instance.journey_id)
    source = await versions.spec_of(source_deployment)
    target_deployment = await versions.of_design(plan.to_design)
    finished = (landed or not plan.rewrites_checkpoint) and await _finish(
        migrations, instance_id, plan, source, await versions.spec_of(target_deployment)
    )
    if finished:
        await threads.settled(await versions.graph_of(target_deployment), instance_id)  # park at `to`
        outcome = "completed"
    else:  # step 2 did not land, or a wait was answered after step 1: back to the source version
        source_graph = await versions.graph_of(source_deployment)
        if landed:  # the thread resumes from a copy of the checkpoint the migration started from
            config = engine.config(instance_id)
            # Its namespace named too: the copy of a thread's first checkpoint (a start's, which checkpoints where
            # it parks) is written under the config it was read with, and SQLite's saver requires one there.
            config["configurable"] |= {"checkpoint_ns": "", "checkpoint_id": plan.source_checkpoint}
            await source_graph.aupdate_state(config, None, as_node="__copy__")
        elif latest is not None:
            # Step 2 stores its update's writes on the source checkpoint before writing the new one, so a crash
            # between the two leaves them there. They match no task of the source graph, but rather than rely
            # on that, the thread resumes from a clean copy (its waiting node runs again up to its interrupt()).
            await source_graph.aupdate_state(engine.config(instance_id), None, as_node="__copy__")
        rolled_back = NewEvent(ROLLED_BACK, plan.record(), None, f"{plan.migration_id}:rolled_back")
        await _commit(migrations, instance_id, MigrationStep(expect=MIGRATING, status="in_progress"), rolled_back)
        await threads.settled(source_graph, instance_id)  # re-park where it waited
        outcome = "rolled_back"
    log.info("migration settled", instance_id=instance_id, migration_id=plan.migration_id, outcome=outcome)
    return outcome


async def migrating_instances(migrations: Migrations) -> list[str]:
    return await migrations.engine.store.index.ids_in_status(PATTERN, MIGRATING)


async def _open_intent(migrations: Migrations, instance_id: str) -> tuple[MigrationPlan, datetime] | None:
    """The last migration intent of the instance that was neither finished nor rolled back."""
    events = await migrations.engine.store.events.list(instance_id, types=[INTENT, DONE, ROLLED_BACK])
    closed = {e.payload.get("migration_id") for e in events if e.type != INTENT}
    for event in reversed(events):
        if event.type == INTENT and event.payload["migration_id"] not in closed:
            return MigrationPlan.from_payload(event.payload), event.created_at
    return None


def _answered(instance_id: str, plan: MigrationPlan) -> ProcessStateError:
    waits = ", ".join(f"{w.wait_id} at {w.element!r}" for w in plan.waits)
    return ProcessStateError(
        f"process instance {instance_id!r} has a wait that was answered (a task completed, a timer fired or a "
        f"message taken) and is being resumed on v{plan.from_version} (its waits: {waits}); nothing was "
        "changed: migrate it once it waits again",
        allowed=[],
    )


async def _log_intent(migrations: Migrations, instance_id: str, plan: MigrationPlan) -> None:
    """Step 1: the plan in the log and the instance marked migrating, in one transaction, provided none of
    the waits it moves has been answered (see :class:`MigrationStep`)."""
    intent = NewEvent(INTENT, plan.to_payload(), None, f"{plan.migration_id}:intent")
    step = MigrationStep(expect="in_progress", status=MIGRATING, unanswered=plan.wait_ids)
    if not await _commit(migrations, instance_id, step, intent):
        now = await migrations.engine.store.index.get_instance(instance_id)
        if now is not None and now.status == "in_progress":
            raise _answered(instance_id, plan)
        raise ProcessStateError(
            f"process instance {instance_id!r} is no longer in progress; only a waiting instance can migrate",
            allowed=[],
        )


async def _rewrite_checkpoint(
    migrations: Migrations, target_graph: Graph, instance_id: str, plan: MigrationPlan, snapshot: StateSnapshot
) -> None:
    """Step 2: the thread's state, moved to the target's nodes, as one checkpoint (one superstep)."""
    visits = dict(snapshot.values.get("visits") or {})
    target_nodes = set(target_graph.nodes)
    updates: list[StateUpdate] = []
    for wait in plan.waits:
        if wait.to == wait.element:
            continue  # the target graph has a node of that name waiting on the same interrupt
        if wait.element in target_nodes:  # the old node exists in the target too: settle its pending task
            updates.append(StateUpdate({}, wait.element))
        seen = max(visits.get(wait.to, 0), visits.get(wait.element, 0))
        updates.append(StateUpdate({"waits": {wait.to: wait.wait_id}, "visits": {wait.to: seen}}, arm_node(wait.to)))
    config: RunnableConfig = {
        **migrations.engine.config(instance_id),
        "metadata": {MIGRATION_KEY: plan.migration_id},
    }
    await target_graph.abulk_update_state(config, [updates])  # the savers keep config metadata on the checkpoint


async def _finish(
    migrations: Migrations, instance_id: str, plan: MigrationPlan, source: ProcessSpec, target: ProcessSpec
) -> bool:
    """Step 3 (idempotent): re-point the instance, move its rows, log the migration, end ``migrating``.

    False, with nothing changed, when one of the waits was answered after step 1: the migration must then
    be rolled back (:func:`settle_locked` does). Raises when someone else settled it meanwhile."""
    moves = [_row_move(source, target, wait) for wait in plan.waits]
    # The tasks' new fields are logged with the move, so the inbox rebuilt from the log has them too.
    tasks = {move.wait_id: move.task.as_row() for move in moves if move.task is not None}
    done = NewEvent(DONE, {**plan.record(), "tasks": tasks}, None, f"{plan.migration_id}:migrated")
    step = MigrationStep(
        expect=MIGRATING, status="in_progress", to_design=plan.to_design, moves=moves, unanswered=plan.wait_ids
    )
    if await _commit(migrations, instance_id, step, done):
        return True
    now = await migrations.engine.store.index.get_instance(instance_id)
    if now is None or now.status != MIGRATING:
        raise ProcessStateError(
            f"migration {plan.migration_id} of {instance_id!r} was settled by someone else meanwhile", allowed=[]
        )
    return False


async def _commit(migrations: Migrations, instance_id: str, step: MigrationStep, event: NewEvent) -> bool:
    """One step's transaction; False, with nothing applied, if the instance was not in ``step.expect``."""
    return await migrations.rows.apply(instance_id, step, event)


def _row_move(source: ProcessSpec, target: ProcessSpec, wait: MovedWait) -> RowMove:
    """How the rows of ``wait`` follow it: its element, and for a user task the timers the target task keeps."""
    before, after = source.element(wait.element), target.element(wait.to)
    if wait.messages:
        return RowMove(wait.wait_id, wait.element, wait.to, messages=wait.messages)
    if isinstance(before, UserTask) and isinstance(after, UserTask):
        boundaries = tuple(b.id for b in target.boundaries(wait.to))
        timer_data = tuple((plan.element, plan.data) for plan in task_timers(target, after))
        return RowMove(
            wait.wait_id,
            wait.element,
            wait.to,
            boundaries=boundaries,
            keeps_sla=after.sla_timer is not None,
            timer_data=timer_data,
            task=TaskFields(after.label, after.response_schema),
        )
    return RowMove(wait.wait_id, wait.element, wait.to)

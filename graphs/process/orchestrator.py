"""``runtime.processes``: deploy BPMN-style processes as (name, version), route new instances by rollout,
start them, correlate messages, and report their status and history (SPEC B1-B8).

    process = await runtime.processes.deploy(spec)                    # v1 takes 100% of new instances
    view = await runtime.processes.start("onboarding", "cust-42", {"plan": "pro"})
    await runtime.processes.send_message("payment.received", "cust-42", {"amount": 10})
    await runtime.processes.inbox.complete(task_id, user="ana", payload={"approved": True})
    await runtime.processes.scheduler.run_due()                       # fire the timers that are due

Every instance is pinned to the version it started on (its design), so deploying v2 changes nothing
for instances already running; ``migrate`` moves a waiting instance on purpose.

Resuming a waiting instance is always two steps: resolve its wait row (atomic: the first of a timer,
a message or a human wins), then deliver the stored resolution to the thread with
``Command(resume=…)``. A crash between the two loses nothing: ``runtime.recover()`` (and every scheduler
pass) delivers resolutions that were not consumed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, nullcontext, suppress
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import partial
from typing import Any, cast

import jsonschema
from langgraph._internal._constants import CONFIG_KEY_STRICT_RESUME
from langgraph.errors import UnknownInterruptError
from langgraph.types import Command, Interrupt, StateSnapshot

from agents.deterministic import EchoAgent
from checkpoints.errors import ConcurrentUpdateError, JourneyError
from checkpoints.events import Event, NewEvent
from checkpoints.index import Instance, InstanceFilter
from checkpoints.ownership import DEFAULT_TENANT, Owner, Viewer, current_owner
from checkpoints.process.deployments import Deployment, DeploymentStore
from checkpoints.process.messages import EVERY_TENANT, Subscription
from checkpoints.process.migrations import MigrationRows
from checkpoints.process.timers import DEFAULT_LEASE, FAILED, Timer
from checkpoints.process.waits import Delivery, cancel_pending
from checkpoints.schema.widths import CORRELATION_KEY
from checkpoints.values import check_value
from graphs.errors import (
    DeadlineExceededError,
    EvaluatorError,
    InvalidInputError,
    MessageIdConflictError,
    MigrationInProgressError,
    ProcessInstanceNotFoundError,
    ProcessNameTakenError,
    ProcessStateError,
    ProcessVersionConflictError,
    UnknownProcessError,
    UnmatchedMessageError,
)
from graphs.kernel.designs import DesignBook, new_id, new_instance_id, parse_spec, spec_digest
from graphs.kernel.engine import (
    CONTINUATION,
    DEFAULT_RUN,
    ON_CANCEL,
    RunOptions,
    failed_task,
    failed_task_of,
    in_flight,
)
from graphs.kernel.flow import QUEUED, ExistingStart, StartControls
from graphs.kernel.identifiers import MAX_REASON
from graphs.kernel.instances import (
    DEADLINE_FAILURE,
    Recoverable,
    failure,
    kept_failure,
    never_checkpointed,
    passed_key,
    refuse_ended,
)
from graphs.kernel.instances import FAILED as INSTANCE_FAILED
from graphs.kernel.streaming import INTERRUPT
from graphs.process.blocks import analyse
from graphs.process.builder import COMPENSATE, COMPENSATION_FAILED, describe_wait, element_of
from graphs.process.catalog import ProcessCatalog, default_process_catalog
from graphs.process.context import FINISHED, PATTERN, DeployedVersions, Graph
from graphs.process.inbox import TaskInbox
from graphs.process.migration import (
    MIGRATING,
    Migrations,
    migrate,
    migrating_instances,
    settle_locked,
    settle_migration,
)
from graphs.process.spec import MessageEvent, ProcessSpec
from graphs.process.timers import TIMER_RETRIED, TimerScheduler, default_worker_id, schedule_start_timers
from graphs.process.validation import intents
from graphs.process.versions import describe, rollout_after_deploy, variants_rollout, weights_rollout
from nodes import schemas
from nodes.criteria import lookup
from nodes.process_services import ProcessServices
from nodes.variables import assign, check_names, values
from nodes.waits import ABANDONED, take_buffered

DEFAULT_MESSAGE_TTL = timedelta(hours=1)
# How long a sent message's id answers a repeat (as a start key's default window does), and its longest form.
MESSAGE_ID_WINDOW = timedelta(hours=24)
MESSAGE_ID_CHARS = 100
# The events a process's evaluation measures: its agent calls (service tasks and map items).
MEASURED = ("task.completed", "map.item_completed")
# How many ``variables.set`` the thread has applied, kept in its ``visits`` under a name no element id can have.
SETS = "(variables.set)"
STARTED = "process.started"  # an instance's first event: its version and the variables it started with


def set_key(instance_id: str, number: int) -> str:
    """The key of the instance's ``number``-th ``variables.set``: logged before its graph update, found again
    after a crash between the two (see ``ProcessOrchestrator._lost_set``)."""
    return f"{instance_id}:variables.set:{number}"


def message_start_key(tenant: str, message_id: str, process: str) -> str:
    """The start key of the instance of ``process`` that message ``message_id`` of ``tenant`` starts, so that a
    send taken over starts nothing twice. The tenant is part of it (message ids are per tenant; outside a request
    a start key is stored as given), and a digest fits the 200 characters a start key may have, which an id and
    a process name of 100 each did not."""
    return "message:" + hashlib.sha256(json.dumps([tenant, message_id, process]).encode()).hexdigest()


def may_use(owner: Owner | None, deployed: bool, tenant: str | None, *, to_deploy: bool = False) -> bool:
    """Whether ``owner`` (None: the runtime itself) may start, or ``to_deploy`` deploy a version of, a process name
    that is ``deployed`` or not, the first version of which ``tenant`` deployed (None: shared); see
    ``ProcessOrchestrator._callers``."""
    if owner is None or not deployed:
        return True
    if tenant is None:
        return not to_deploy or owner.tenant == DEFAULT_TENANT
    return tenant == owner.tenant


@dataclass(frozen=True, slots=True)
class MessageStart:
    """An instance a message starts: the process, the version its rollout picks, its start event and variables, and
    the message's name."""

    process: str
    version: int
    start_event: str
    variables: dict[str, Any]
    message: str


def parked(snapshot: StateSnapshot) -> Iterator[tuple[Interrupt, str]]:
    """The interrupts the thread is parked on, each with the id of its wait."""
    for task in snapshot.tasks:
        for pending in task.interrupts:
            if isinstance(pending.value, Mapping) and pending.value.get("wait_id") is not None:
                yield pending, str(pending.value["wait_id"])


def failed_element(snapshot: StateSnapshot) -> str | None:
    """The element that failed. In a parallel branch (its state read with ``subgraphs=True``) that is the
    branch's failed element, not the branch; a sibling branch the failure cancelled is not it."""
    failed = failed_task_of(snapshot)
    if failed is None:
        return None
    inner = failed_element(failed.state) if isinstance(failed.state, StateSnapshot) else None
    return inner or element_of(failed.name)


def strict(options: RunOptions) -> RunOptions:
    """``options`` for a run that resumes interrupts by id and must refuse, before it writes anything, an id
    the thread is not parked on (``UnknownInterruptError``) rather than run on answering nothing."""
    return _STRICT_CONTINUATION if options is CONTINUATION else _strict(options)


def _strict(options: RunOptions) -> RunOptions:
    call = options.call
    configurable = {**(call.config.get("configurable") or {}), CONFIG_KEY_STRICT_RESUME: True}
    return replace(options, call=replace(call, config={**call.config, "configurable": configurable}))


_STRICT_CONTINUATION = _strict(CONTINUATION)  # every fired timer's continuation's: built once
# How many designs' called intents an orchestrator keeps (ProcessOrchestrator.agents_missing) before it forgets them.
CALLED_INTENTS_KEPT = 512


class ProcessOrchestrator:
    """``runtime.processes``: deploys process versions, starts and resumes their instances, and builds the
    inbox, the timer scheduler and the migrations, handing each only what it needs."""

    def __init__(self, designs: DesignBook, *, catalog: ProcessCatalog | None = None) -> None:
        self._designs = designs
        self.engine = designs.engine
        self.store = designs.engine.store
        self.clock = self.store.clock
        self.services = ProcessServices.of(self.engine.services)
        self.deployments = DeploymentStore(self.store.backend, self.clock)
        self.deployed = DeployedVersions(designs, self.deployments)
        # The intents each deployed design's process calls (agents_missing, asked at every fired timer's
        # continuation), found once per design: a design never changes.
        self._called: dict[str, frozenset[str]] = {}
        self.catalog = catalog or default_process_catalog()
        self.owner = default_worker_id()  # names the migrations this orchestrator runs (see process_migration)
        self.inbox = TaskInbox(
            self.services.inbox, self.services.waits, self.clock, self, self.services.node.caller, self.store.events
        )
        self.migrations = Migrations(
            self.engine,
            self.deployed,
            self,
            MigrationRows(self.store.engine, self.clock, self.store.events),
            self.owner,
        )
        self.scheduler = TimerScheduler(self)
        # Where the work a call stores for an instance runs (a start's first run, the delivery of a task's answer
        # or a message): None, in this process, within the call; else handed to this, which has it done elsewhere
        # by :meth:`run_on` (a distributed API process's: a run its workers execute, with their agents).
        self.hand_off: Callable[[str], Awaitable[None]] | None = None
        designs.instances.register(
            Recoverable(
                (PATTERN,),
                self._instance_graph,
                self._start_input,
                before=self._settle_migrations,
                after=self._deliver_undelivered,
                expire=self._expire,
                controls=self._controls,
            )
        )

    # --- deployment and versions -------------------------------------------------------------------

    async def deploy(
        self, process: ProcessSpec | Mapping[str, Any], *, weight: float | None = None, agents: bool = True
    ) -> dict[str, Any]:
        """Validate and register ``process`` as (name, version). ``agents=False``: an intent no agent of this
        process serves is not refused (the server's API in distributed mode: its workers hold the agents).

        Agents the spec names by object (``ServiceTask(agent=MyAgent, compensation=undo_it)``) are
        registered first, under the intents the spec records for them.

        Without ``weight`` the new version takes every new instance; with ``weight`` (a percentage) it
        takes that share from the current default version (the largest share), the other versions keeping
        theirs (a gradual rollout), read and written in one transaction: weighted deploys made at once each
        take their share. :class:`RolloutConflictError` (nothing deployed) when the rollout runs an A/B test, or
        its default holds less than ``weight``. Deploying the very same definition again is a no-op; a
        different definition under a taken version is refused.
        """
        spec = parse_spec(ProcessSpec, process, spec_name="process")
        if not await self._callers(spec.name, to_deploy=True):
            raise self._name_taken(spec.name)
        self._designs.registry.bind(spec.agent_bindings())
        self._designs.check(PATTERN, spec, agents=agents)
        existing = await self.deployments.get(spec.name, spec.version)
        if existing is not None:
            digest = spec_digest(spec)
            # A release that added spec fields since this version was deployed changed its digest, not its
            # definition: the stored one is compared as today's spec reads it, as its instances run it.
            if existing.digest != digest and spec_digest(await self.spec_of(existing)) != digest:
                raise ProcessVersionConflictError(
                    f"version {spec.version} of process {spec.name!r} is already deployed with a different "
                    f"definition; deploy it as version {await self._next_version(spec.name)}",
                    name=spec.name,
                    version=spec.version,
                )
            await self._arm_start_timers(spec)  # idempotent: arms what a crash after the deploy left out
            return self._deployment_view(existing, await self.deployments.rollout(spec.name))
        if weight is not None and not 0 <= weight <= 100:
            raise InvalidInputError(f"weight must be a percentage between 0 and 100, got {weight}")
        design = self._designs.drafted(PATTERN, spec, prefix="process", agents=agents)  # stored with the deployment
        message_starts = [(start.message, start.id) for start in spec.starts() if start.message is not None]
        added = await self.deployments.add(
            spec.name,
            spec.version,
            design,
            spec_digest(spec),
            rollout=partial(rollout_after_deploy, spec.name, spec.version, weight),
            message_starts=message_starts,
            may_deploy=partial(may_use, current_owner(), to_deploy=True),
        )
        if added == "name taken":  # another tenant's first deploy of the name committed meanwhile
            raise self._name_taken(spec.name)
        if added == "version taken":  # a concurrent deploy of the same version won
            return await self.deploy(spec, weight=weight, agents=agents)
        self._designs.saved(design)
        await self._arm_start_timers(spec)
        deployment = await self.deployments.get(spec.name, spec.version)
        assert deployment is not None
        return self._deployment_view(deployment, await self.deployments.rollout(spec.name))

    async def deploy_template(
        self,
        name: str,
        *,
        version: int = 1,
        weight: float | None = None,
        default_agents: bool = True,
        **options: Any,
    ) -> dict[str, Any]:
        """Deploy a catalog template (see ``graphs.process.catalog``). ``default_agents`` registers a
        deterministic agent for every intent it names that has none yet, so it runs offline."""
        spec = self.catalog.build(name, version=version, **options)
        if default_agents:
            self.register_default_agents(spec)
        return await self.deploy(spec, weight=weight)

    def register_default_agents(self, spec: ProcessSpec) -> None:
        """A deterministic agent for every intent ``spec`` names that has none yet, so it runs offline."""
        registry = self._designs.registry
        for intent in sorted({intent for intent, _needed_by in intents(spec)}):
            if intent not in registry:
                registry.register(intent, EchoAgent(intent), description="deterministic default")

    async def _newest_version(self, name: str) -> int:
        return max((d.version for d in await self.deployments.find(name)), default=0)

    async def _next_version(self, name: str) -> int:
        return await self._newest_version(name) + 1

    async def _arm_start_timers(self, spec: ProcessSpec) -> None:
        """The timer starts of the newest version run (see ``schedule_start_timers``); an older one deployed
        late changes nothing."""
        if spec.version == await self._newest_version(spec.name):
            await schedule_start_timers(self.services.timers, self.clock.now(), spec)

    async def set_rollout(self, name: str, weights: Mapping[int, float]) -> list[dict[str, Any]]:
        """Route new instances of ``name`` by percentage per version, e.g. ``{2: 50, 1: 50}``."""
        deployed = [d.version for d in await self._visible(name, to_change=True)]
        entries = weights_rollout(weights, deployed)
        await self.deployments.set_rollout(name, entries)
        return describe(entries)

    async def ab_test(self, name: str, variants: Mapping[str, tuple[int, float]]) -> list[dict[str, Any]]:
        """A/B variants: ``{"A": (1, 50), "B": (2, 50)}``; each instance records the variant it got."""
        deployed = [d.version for d in await self._visible(name, to_change=True)]
        entries = variants_rollout(variants, deployed)
        await self.deployments.set_rollout(name, entries)
        return describe(entries)

    async def rollout(self, name: str) -> list[dict[str, Any]]:
        await self._visible(name)
        return describe(await self.deployments.rollout(name))

    async def versions(self, name: str) -> list[dict[str, Any]]:
        deployed = await self._visible(name)
        rollout = await self.deployments.rollout(name)
        return [self._deployment_view(d, rollout) for d in deployed]

    async def _visible(self, name: str, *, to_change: bool = False) -> list[Deployment]:
        """The deployed versions of ``name``, for a caller that may start it (another tenant's process is
        :class:`UnknownProcessError`, as if none were deployed) and, ``to_change`` its rollout, deploy it
        (:class:`ProcessNameTakenError` otherwise: a shared process's rollout is the default tenant's)."""
        if not await self._callers(name):
            raise UnknownProcessError(f"no process named {name!r} is deployed", name=name)
        if to_change and not await self._callers(name, to_deploy=True):
            raise self._name_taken(name)
        return await self._deployed(name)

    async def route(self, name: str, business_key: str) -> dict[str, Any]:
        """The rollout entry a new instance with ``business_key`` would get (sticky by key)."""
        return await self.deployed.route(name, business_key)

    async def routed(self, name: str, business_key: str) -> tuple[Deployment, ProcessSpec]:
        """The version a new instance with ``business_key`` goes to, and its spec."""
        version = int((await self.route(name, business_key))["version"])
        deployment = await self.deployment(name, version)
        if deployment is None:  # pragma: no cover - a rollout names deployed versions only
            raise UnknownProcessError(f"process {name!r} has no version {version}", name=name, version=version)
        return deployment, await self.spec_of(deployment)

    async def check_start(
        self,
        name: str,
        business_key: str,
        variables: Mapping[str, Any] | None = None,
        *,
        version: int | None = None,
    ) -> None:
        """Refuses what :meth:`start` would refuse of these arguments before it writes anything (no process
        deployed that the caller may start, no such version, no plain start event, variables its schema
        refuses...), storing nothing: the server checks a process run's input so when the run is created,
        instead of queuing a run that fails in a worker."""
        await self._planned(name, business_key, variables, version, None)

    async def _planned(
        self,
        name: str,
        business_key: str,
        variables: Mapping[str, Any] | None,
        version: int | None,
        start_event: str | None,
    ) -> tuple[Deployment, str | None, ProcessSpec, str, dict[str, Any]]:
        """What a start of ``name`` for ``business_key`` would be, each refusal before anything is written: the
        deployment it goes to (``version``, or the one its rollout picks), its rollout variant, its spec, the
        start event it enters at and its variables."""
        if not isinstance(business_key, str) or not business_key:
            raise InvalidInputError("business_key must be a non-empty string", business_key=business_key)
        if variables is not None and not isinstance(variables, Mapping):
            raise InvalidInputError(f"variables must be a mapping, got {type(variables).__name__}")
        check_names(variables or {})
        if not await self._callers(name):  # another tenant's process: as if none were deployed
            raise UnknownProcessError(f"no process named {name!r} is deployed", name=name)
        variant = None
        if version is None:
            entry = await self.route(name, business_key)
            version, variant = int(entry["version"]), entry.get("variant")
        deployment = await self.deployment(name, version)
        if deployment is None:
            raise UnknownProcessError(f"process {name!r} has no version {version}", name=name, version=version)
        spec = await self.spec_of(deployment)
        entry_id = start_event or (spec.plain_start().id if spec.plain_start() else None)  # type: ignore[union-attr]
        if entry_id is None or entry_id not in {s.id for s in spec.starts()}:
            triggers = [f"{s.id} ({s.trigger})" for s in spec.starts()]
            raise ProcessStateError(
                f"process {name!r} v{version} has no start event {start_event or '(plain)'}; its starts: {triggers}",
                allowed=triggers,
            )
        if spec.evaluation is not None and (missing := self._designs.instances.evaluation.missing(spec.evaluation)):
            raise EvaluatorError(f"register the evaluators {missing} in runtime.evaluators first", missing=missing)
        return deployment, variant, spec, entry_id, self._start_variables(spec, variables, business_key)

    async def _callers(self, name: str, *, to_deploy: bool = False) -> bool:
        """Whether the caller the server acts for may start (or, ``to_deploy``, deploy a version of) process
        ``name``. A name a caller deployed first is its tenant's: no other tenant starts it or changes what its
        instances run. A shared one (deployed by the runtime's own code, a plugin say, or before tenants were
        kept) every tenant starts, and callers of the default tenant redeploy. A name nobody deployed is free;
        the runtime's own calls (no caller: timers, in-process use) may use every name."""
        owner = current_owner()
        if owner is None:
            return True
        deployed, tenant = await self.deployments.tenant_of(name)
        return may_use(owner, deployed, tenant, to_deploy=to_deploy)

    @staticmethod
    def _name_taken(name: str) -> ProcessNameTakenError:
        return ProcessNameTakenError(
            f"process name {name!r} is another tenant's (or shared, which only the default tenant "
            "redeploys); deploy your process under another name",
            name=name,
        )

    async def names(self, viewer: Viewer | None = None) -> list[str]:
        """The deployed process names, sorted: with ``viewer`` (not an admin), those of its tenant and the
        shared ones, as :meth:`_callers` lets it start them."""
        first: dict[str, Deployment] = {}
        for deployment in await self.deployments.find():  # by name and version: a name's first version first
            first.setdefault(deployment.name, deployment)
        if viewer is None or viewer.admin:
            return sorted(first)
        return sorted(name for name, d in first.items() if d.tenant in (None, viewer.tenant))

    async def _deployed(self, name: str) -> list[Deployment]:
        found = await self.deployments.find(name)
        if not found:
            raise UnknownProcessError(f"no process named {name!r} is deployed", name=name)
        return found

    def _deployment_view(self, deployment: Deployment, rollout: list[dict[str, Any]]) -> dict[str, Any]:
        weight = sum(float(e["weight"]) for e in rollout if int(e["version"]) == deployment.version)
        return {
            "name": deployment.name,
            "version": deployment.version,
            "design_id": deployment.design_id,
            "deployed_at": deployment.deployed_at.isoformat(),
            "weight": weight,
        }

    async def deployment(self, name: str, version: int) -> Deployment | None:
        return await self.deployed.get(name, version)

    async def spec_of(self, deployment: Deployment) -> ProcessSpec:
        return await self.deployed.spec_of(deployment)

    def graph_of(self, spec: ProcessSpec) -> Graph:
        return self._designs.graph(PATTERN, spec)

    async def deployment_of(self, instance: Instance) -> Deployment:
        return await self.deployed.of_design(instance.journey_id)

    async def agents_missing(self, instance_id: str, *, instance: Instance | None = None) -> list[str]:
        """The intents the instance's process calls that no agent serves in this process (a notebook's own
        agent, a worker started without its plugin): its fired timers are left to a process that has them."""
        instance = instance or await self.instance(instance_id)
        called = self._called.get(instance.journey_id)
        if called is None:
            spec = await self.spec_of(await self.deployment_of(instance))
            if len(self._called) >= CALLED_INTENTS_KEPT:
                self._called.clear()
            called = self._called[instance.journey_id] = frozenset(intent for intent, _needed_by in intents(spec))
        registry = self._designs.registry
        return sorted(intent for intent in called if intent not in registry)

    # --- instances ---------------------------------------------------------------------------------

    async def start(
        self,
        name: str,
        business_key: str,
        variables: Mapping[str, Any] | None = None,
        *,
        version: int | None = None,
        instance_id: str | None = None,
        start_event: str | None = None,
        run_options: RunOptions = DEFAULT_RUN,
        start_key: str | None = None,
        start_key_window: str | float | timedelta | None = None,
        message: str | None = None,
    ) -> dict[str, Any]:
        """Start an instance of ``name`` for ``business_key``, on ``version`` or the one the rollout picks.

        ``message``: the message that starts it (:meth:`send_message`'s starts), logged with its start; only such
        an instance counts for a message start's one active instance per correlation key.

        ``start_key``: a start with the same key within ``start_key_window`` (seconds or ISO 8601, default
        24 hours) answers the instance that start began. The spec's ``concurrency`` limit is keyed on the
        start variables: above it the instance is ``queued`` or refused (:mod:`graphs.kernel.flow`)."""
        deployment, variant, spec, entry_id, merged = await self._planned(
            name, business_key, variables, version, start_event
        )
        version = deployment.version
        controls = StartControls.of(
            start_key, start_key_window, spec.concurrency, merged, spec.deadline, journey_type=f"{PATTERN}.{name}"
        )
        instance_id = instance_id or new_instance_id(self.engine, "proc")
        cells, changes = assign({}, merged)
        started = NewEvent(
            STARTED,
            {
                "process": name,
                "version": version,
                "variant": variant,
                "business_key": business_key,
                "start_event": entry_id,
                "message": message,
                "changes": changes,
            },
            entry_id,
            f"{instance_id}:started",
        )
        graph = self.graph_of(spec)
        try:
            async with self.engine.exclusive(instance_id):
                created = await self._designs.instances.create(
                    instance_id, deployment.design_id, PATTERN, business_key, started, graph, controls=controls
                )
                if created is not None and created.status == QUEUED:  # it runs once a slot frees
                    return self.view(created, deployment, await graph.aget_state(self.engine.config(instance_id)))
                initial = {"variables": cells, "entry": entry_id, "status": "in_progress", "variant": variant}
                if self.hand_off is not None:  # registered: its first run is handed over, and it answers as it stands
                    await self.hand_off(instance_id)
                    return self.view_of(created or await self.instance(instance_id), deployment, initial, [], None)
                outcomes = run_options.outcomes if run_options.outcomes is not None else {}
                # Each step is logged before the next starts, and a start cut short before it stops has no
                # checkpoint and is run again from its first event: it checkpoints where it stops (CONTINUATION).
                # Not in a server's run (ON_CANCEL), which a client may cancel and whose thread it reads while it
                # runs: its halt is recorded where the thread stands, a branch cut beside one that waits included.
                logged = ON_CANCEL.get() is None
                options = replace(run_options, outcomes=outcomes, logged_steps=logged)
                # Registered just now (not a start a crash cut short): nothing can be saved on its thread yet.
                fresh = created is not None
                went_through = await self.run(graph, instance_id, initial, options, spec=spec, fresh=fresh)
                outcome = outcomes.get(instance_id)
                # A run that went through without a failure answered with its values and interrupts: the view is
                # built from them, without reading the thread's state back (a checkpoint read per start).
                if not (went_through and isinstance(outcome, dict) and not outcome.get("failure")):
                    outcome = await self._with_branches(graph, instance_id)
        except ExistingStart as existing:
            return await self.status(existing.instance_id)
        values = outcome.values if isinstance(outcome, StateSnapshot) else outcome
        status = str(values.get("status") or "in_progress") if went_through else "failed"
        instance = Instance(
            instance_id, deployment.design_id, PATTERN, business_key, status, self.clock.now(), self.clock.now()
        )
        if isinstance(outcome, StateSnapshot):
            view = self.view(instance, deployment, outcome)
        else:
            state = {k: v for k, v in outcome.items() if k != INTERRUPT}
            view = self.view_of(instance, deployment, state, outcome.get(INTERRUPT) or [], None)
        await self._explain_failed(instance_id, spec, view)
        return view

    async def _open_waits(self, instance_id: str, spec: ProcessSpec) -> list[dict[str, Any]]:
        """Where a failed instance still waits, from its wait rows. A retry runs its failed element again with its
        other waits open (their answers are held for it), so they are listed, as its inbox lists their tasks. Not
        from the thread: a branch that parked (or was only armed) in the step its sibling failed in is recorded
        there as cancelled, with no interrupt."""
        waiting = [
            {"wait_id": w.wait_id, "element": w.element, "kind": w.kind, **describe_wait(spec, spec.element(w.element))}
            for w in await self.services.waits.open_waits(instance_id)
        ]
        return sorted(waiting, key=lambda w: str(w["element"]))

    @classmethod
    def _start_variables(
        cls, spec: ProcessSpec, variables: Mapping[str, Any] | None, business_key: str
    ) -> dict[str, Any]:
        """A new instance's variables: the spec's defaults, then those given, then its business key; checked
        against the spec's ``variables_schema``."""
        merged = {**spec.variables, **(variables or {}), "business_key": business_key}
        cls._check_variables(spec, merged)
        return merged

    @staticmethod
    def _check_variables(spec: ProcessSpec, variables: Mapping[str, Any]) -> None:
        """Refuse variables that break the spec's ``variables_schema``, or give a message event a correlation key
        longer than the stores keep (refused now, not when the instance reaches the event)."""
        for event in spec.elements:
            if not isinstance(event, MessageEvent):
                continue
            key = lookup(variables, event.correlation)
            if isinstance(key, str | int) and not isinstance(key, bool) and len(str(key)) > CORRELATION_KEY:
                raise InvalidInputError(
                    f"variable {event.correlation!r} is the correlation key of message event {event.id!r}, and its "
                    f"value is {len(str(key))} characters long; a correlation key has at most {CORRELATION_KEY}",
                    variable=event.correlation,
                    element=event.id,
                )
        if spec.variables_schema is None:
            return
        try:
            schemas.validate(dict(variables), spec.variables_schema)
        except jsonschema.ValidationError as exc:
            where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
            raise InvalidInputError(
                f"the variables of process {spec.name!r} do not match its variables_schema at {where}: {exc.message}",
                path=where,
            ) from exc

    async def instance(self, instance_id: str) -> Instance:
        found = await self.store.index.get_instance(instance_id)
        if found is None or found.pattern != PATTERN:
            raise ProcessInstanceNotFoundError(f"no process instance {instance_id!r}", instance_id=instance_id)
        return found

    async def loaded(
        self, instance_id: str, *, instance: Instance | None = None, locked: bool = False, settle: bool = True
    ) -> tuple[Instance, Deployment, ProcessSpec, Graph]:
        """The instance (read now unless given, e.g. by a bulk read), its deployment, spec and graph; a
        migration a crash cut short is settled first, unless not ``settle`` (a read while another call holds
        the instance: that call may be the migration). ``locked``: the caller holds the instance's lock (see
        :meth:`locked`)."""
        if instance is None:
            instance = await self.instance(instance_id)
        if settle and instance.status == MIGRATING:  # a migration was cut short: finish or undo it first
            settling = settle_locked if locked else settle_migration
            await settling(self.migrations, instance_id, started_before=self.clock.now() - DEFAULT_LEASE)
            instance = await self.instance(instance_id)
        deployment = await self.deployment_of(instance)
        return instance, deployment, await self.spec_of(deployment), await self.deployed.graph_of(deployment)

    @asynccontextmanager
    async def locked(
        self, instance_id: str, *, wait: float | None = None
    ) -> AsyncIterator[tuple[Instance, Deployment, ProcessSpec, Graph]]:
        """The instance's lock (``exclusive``, waited for ``wait`` seconds at most) and, read under it, the
        instance, its deployment, spec and graph.

        Read under the lock, not before it: a migration (by another process, say) can take the lock first, and
        a graph loaded before would then be the old version's.
        """
        async with self.engine.exclusive(instance_id, wait=wait):
            yield await self.loaded(instance_id, locked=True)

    async def expire(self, instance_id: str, on_expiry: str, due_at: datetime) -> bool:
        """A journey's (any pattern's) deadline passed: end it as its spec says (see ``Instances.expire``)."""
        return await self._designs.instances.expire(instance_id, on_expiry, due_at)

    async def _expire(self, instance: Instance, _graph: Graph, _on_expiry: str, passed: NewEvent) -> None:
        """A process whose deadline passed fails: everything it waits on (tasks, timers, messages) is cancelled."""
        failed = failure(PATTERN, "deadline", DEADLINE_FAILURE)
        await self.store.events.append(
            instance.instance_id,
            [passed, failed],
            status="failed",
            also=cancel_pending(instance.instance_id),
        )

    async def dispatch_queued(self) -> list[str]:
        """Start the journeys (of every pattern) queued behind a concurrency limit whose slot has freed."""
        return await self._designs.instances.dispatch_queued()

    async def grants_of(self, instance_id: str) -> ProcessSpec:
        """What the instance's spec grants its agent calls: its timers' calls (SLA notifications, reminders)
        are held to it like its service tasks."""
        return await self.instance_spec(instance_id)

    async def instance_spec(self, instance_id: str) -> ProcessSpec:
        """The spec of the version the instance runs on."""
        return await self.spec_of(await self.deployment_of(await self.instance(instance_id)))

    async def instances_by_id(self, instance_ids: Sequence[str]) -> dict[str, Instance]:
        """Process instances by id, in one read (ids that are not process instances are left out)."""
        found = await self.store.index.get_instances(instance_ids)
        self.engine.telemetry.seen(found)
        return {i.instance_id: i for i in found if i.pattern == PATTERN}

    async def run(
        self,
        graph: Graph,
        instance_id: str,
        value: Any,
        run_options: RunOptions = DEFAULT_RUN,
        *,
        spec: ProcessSpec | None = None,
        fresh: bool = False,
    ) -> bool:
        """Run the thread (under ``exclusive``). A node's failure is recorded, not raised: the instance is
        ``failed`` and can be retried. Returns whether the run went through. ``spec``: the spec ``graph``
        was built from, if the caller has it (else it is read from the instance should the run complete).
        ``fresh``: the first run of an instance registered by the same call, whose thread has no checkpoint to read
        (see :meth:`JourneyEngine.run`); it still looks its keyed work up in the log (``replay``)."""
        try:
            outcome = await self._designs.instances.advance(
                graph, instance_id, PATTERN, value, fresh=fresh, options=run_options
            )
        except JourneyError:  # recorded by the kernel
            return False
        values = outcome.values if isinstance(outcome, StateSnapshot) else outcome
        if values.get("failure") and values.get("status") not in FINISHED:
            return await self._abandon_branches(graph, instance_id, run_options, spec=spec)
        if values.get("status") == "completed":  # it reached an end event: its tier judges the run
            if spec is None:
                spec = await self.spec_of(await self.deployment_of(await self.instance(instance_id)))
            if spec.evaluation is not None:
                evaluation = self._designs.instances.evaluation
                await evaluation.judge(instance_id, PATTERN, spec.evaluation, MEASURED)
        return True

    async def _abandon_branches(
        self, graph: Graph, instance_id: str, run_options: RunOptions, *, spec: ProcessSpec | None
    ) -> bool:
        """Under ``exclusive``, after a run that left a failure to compensate: a parallel branch failed while its
        siblings wait (for a person, a message, a timer), and the join that compensates waits for them. Their
        waits are cancelled (their tasks leave the inbox) and each branch is resumed to its end at once, so the
        join runs the compensation now rather than once everything else has been answered."""
        parked_on = list(parked(await graph.aget_state(self.engine.config(instance_id))))
        if not parked_on:
            return True
        abandoned = {"kind": ABANDONED, "logged": True}
        await self.store.events.append(
            instance_id,
            [NewEvent("process.branches_abandoned", {"waits": [wait_id for _i, wait_id in parked_on]})],
            also=cancel_pending(instance_id),
        )
        resume: Command[Any] = Command(
            resume={pending.id: {**abandoned, "wait_id": wait_id} for pending, wait_id in parked_on}
        )
        return await self.run(graph, instance_id, resume, run_options, spec=spec)

    async def review_run(self, instance_id: str, *, approved: bool, by: str, note: str = "") -> dict[str, Any]:
        """A person's decision on an instance its tier's evaluation held for review: ``approved`` completes
        it, otherwise it fails."""
        await self.instance(instance_id)
        async with self.engine.exclusive(instance_id):
            await self._designs.instances.evaluation.review(
                await self.instance(instance_id), approved=approved, by=by, note=note
            )
        return await self.status(instance_id)

    async def settled(self, graph: Graph, instance_id: str, run_options: RunOptions = DEFAULT_RUN) -> StateSnapshot:
        """Under ``exclusive``: the thread's state after finishing what a crash left in flight (a failure of that
        work recorded: ``Instances.settled``)."""
        return await self._designs.instances.settled(graph, instance_id, run_options)

    async def go_on(self, instance_id: str, run_options: RunOptions = DEFAULT_RUN) -> None:
        """For a caller about to answer what the process waits at (a run's ``command.resume``): work a run
        cancelled on purpose stopped (a service task) goes on first, so the answer is for the task the process
        then waits at (see ``Instances.before_move``, which records a failure there)."""
        _instance, _deployment, _spec, graph = await self.loaded(instance_id)
        if not in_flight(await graph.aget_state(self.engine.config(instance_id))):
            return  # nothing stopped (a hint read without the lock; checked again under it)
        async with self.engine.acting(instance_id):
            await self._designs.instances.before_move(graph, instance_id, run_options)

    async def deliver(
        self,
        instance_id: str,
        wait_id: str,
        *,
        consumed: list[str] | None = None,
        instance: Instance | None = None,
        run_options: RunOptions = DEFAULT_RUN,
    ) -> bool:
        """Resume the thread parked on ``wait_id`` with its stored resolution. False: nothing parked there,
        nothing to deliver (the resolution was consumed, or cancelled with its instance), or held (below).

        The wait is marked done once the run has written its checkpoints (or the thread has moved on), so
        a resolution stays deliverable until it has certainly been consumed. ``consumed``: a list to add the
        wait to instead, for the caller to mark (the scheduler marks a whole batch at once). ``instance``: its
        index row, if the caller has read it already (the scheduler reads a batch's in one query).

        While another element of the instance stands failed (in a parallel branch), the resolution is held:
        resuming the thread would run that element again (LangGraph re-runs a failed task with any resume),
        so it stays stored, and :meth:`retry` delivers it along with the failed element's new attempt.

        The instance and its graph may be read before its lock: its wait is answered already, and a
        migration never moves a wait whose answer is undelivered (it is refused, or rolled back), so the
        version read is the one the answer is delivered on.
        """
        if self.hand_off is not None:  # run on elsewhere, if there is anything to deliver
            if await self.services.waits.delivery(wait_id) is None:
                return False
            await self.hand_off(instance_id)
            return True
        found, _deployment, spec, graph = await self.loaded(instance_id, instance=instance)
        async with self.engine.exclusive(instance_id):
            delivered = await self._deliver(graph, spec, instance_id, wait_id, consumed, run_options)
        if delivered:
            await self.went_on(found)
        return delivered

    async def deliver_answering(
        self, instance_id: str, wait_id: str, *, run_options: RunOptions = DEFAULT_RUN
    ) -> dict[str, Any]:
        """:meth:`deliver`, answering the instance's view as the delivery left it (built under the same lock: a
        call by another client right after it does not show in the answer). Handed over (``hand_off``): the
        instance as it stands once handed."""
        if self.hand_off is not None:
            await self.hand_off(instance_id)
            return await self.status(instance_id)
        found, deployment, spec, graph = await self.loaded(instance_id)
        async with self.engine.exclusive(instance_id):
            if await self._deliver(graph, spec, instance_id, wait_id, None, run_options):
                await self.went_on(found)
            return await self._status(instance_id, deployment, spec, graph)

    async def held_back(self, instance_id: str, held: Mapping[str, Any]) -> None:
        """Store what holds the instance's continuation back (agents no process that found it has: see
        ``graphs.process.timers``), shown by its views until it goes on (:meth:`went_on`)."""
        await self.store.index.hold(instance_id, held)

    async def went_on(self, instance: Instance | None, instance_id: str | None = None) -> None:
        """The instance went on (an answer delivered, a held timer fired): nothing holds it back. Written only
        where something did: ``instance``, its index row as read before, says so; without one (``instance_id``)
        the write is conditional."""
        if instance is not None and instance.held is not None:
            await self.store.index.release(instance.instance_id)
        elif instance is None and instance_id is not None:
            await self.store.index.release(instance_id)

    async def _deliver(
        self,
        graph: Graph,
        spec: ProcessSpec,
        instance_id: str,
        wait_id: str,
        consumed: list[str] | None,
        run_options: RunOptions,
    ) -> bool:
        """:meth:`deliver`'s work, under the instance's lock."""
        # Read under the lock: an instance cancelled (or expired) since the wait was answered keeps its
        # checkpoint parked there, but its undelivered answer was cancelled with it.
        delivery = await self.services.waits.delivery(wait_id)
        if delivery is None:
            return False  # consumed already (by another worker, say), or cancelled: nothing to deliver
        lost: dict[str, Any] | None = None
        if delivery.variables_set and not delivery.instance_failed:  # a failed one's retry applies it
            # A set a crash kept from the thread is applied with the answer: nothing runs on the old values.
            lost = await self._lost_set(instance_id, await graph.aget_state(self.engine.config(instance_id))) or None
        delivered = await self._resume_by_id(graph, instance_id, delivery, run_options, spec, lost)
        if delivered is None:
            delivered = await self._resume_parked(graph, instance_id, wait_id, delivery, run_options, spec, lost)
            if delivered is None:
                return False  # held for the retry
        if consumed is None:
            await self.services.waits.finish([wait_id])
        else:
            consumed.append(wait_id)
        return delivered

    async def _resume_by_id(
        self,
        graph: Graph,
        instance_id: str,
        delivery: Delivery,
        run_options: RunOptions,
        spec: ProcessSpec,
        update: dict[str, Any] | None = None,
    ) -> bool | None:
        """The fast way to deliver: resume the interrupt the wait row names without reading the thread's state.

        LangGraph's strict resume refuses, before writing anything, an id the thread is not parked on (it
        moved on, a crash left it in flight, it parked anew after a crash), and the caller then goes the
        careful way (:meth:`_resume_parked`). None when this way cannot tell: no id recorded, or an element
        of the instance stands failed (its resolution is held, which only the thread's state can tell apart).
        """
        if delivery.interrupt_id is None or delivery.instance_failed:
            return None
        try:
            await self.run(
                graph,
                instance_id,
                Command(resume={delivery.interrupt_id: delivery.resolution}, update=update),
                strict(run_options),
                spec=spec,
            )
        except UnknownInterruptError:
            return None
        return True

    async def _resume_parked(
        self,
        graph: Graph,
        instance_id: str,
        wait_id: str,
        delivery: Delivery,
        run_options: RunOptions,
        spec: ProcessSpec,
        update: dict[str, Any] | None = None,
    ) -> bool | None:
        """The careful way to deliver: finish what a crash left in flight, then resume the interrupt the
        thread's state shows parked on ``wait_id``. False if it is not parked there; None if held for the
        retry of a failed element (see :meth:`deliver`).

        Work a run cancelled on purpose stopped (``settled`` leaves it) goes on first, as a resume by the
        interrupt's id runs it on with the answer: a cancel can land as the wait parks (its task armed, its
        interrupt not yet recorded), and the answer then waits at the interrupt that work reaches."""
        snapshot = await self.settled(graph, instance_id, run_options)
        if in_flight(snapshot):
            try:
                snapshot = await self._designs.instances.before_move(graph, instance_id, run_options)
            except DeadlineExceededError:
                raise
            except JourneyError:  # recorded by before_move: the answer is held for the retry (below)
                snapshot = await graph.aget_state(self.engine.config(instance_id))
        pending = next((i for i, parked_on in parked(snapshot) if parked_on == wait_id), None)
        if pending is None:
            return False
        if (failed := failed_task_of(snapshot)) is not None:
            if not delivery.instance_failed:  # a crash came between the failed run's checkpoint and its log
                # As the checkpoint kept it (its text, not its class): recorded with the type the run raised.
                await self._designs.instances.fail(instance_id, PATTERN, kept_failure(failed.error))
            return None
        resume: Command[Any] = Command(resume={pending.id: delivery.resolution}, update=update)
        await self.run(graph, instance_id, resume, run_options, spec=spec)
        return True

    async def run_on(
        self, instance_id: str, run_options: RunOptions = DEFAULT_RUN, *, wait: float | None = None
    ) -> dict[str, Any]:
        """Run the instance on from where it stands, doing what is stored for it and not done yet: the first run of
        an instance registered without it (a start handed over, or one a crash cut short before its first
        checkpoint), work in flight (a killed process's, or a cancelled run's), a variables set its thread lacks,
        and the answers (tasks completed, messages, timers fired) it has not taken. What waits for a person, a
        message or a timer stays waiting; a failed node is not run again (:meth:`retry` does that), and an
        instance that has ended is left as it is. Under the instance's lock, waited for ``wait`` seconds at most
        (default: the store's lock timeout): :class:`ConcurrentUpdateError` when another call holds it longer (it
        is running there). Answers its status."""
        async with self.locked(instance_id, wait=wait) as (instance, deployment, spec, graph):
            if instance.status == "in_progress":
                snapshot = await graph.aget_state(self.engine.config(instance_id))
                if never_checkpointed(snapshot):
                    [started] = await self.store.events.list(instance_id, types=[STARTED])
                    first = await self._start_input(instance, started)
                    await self.run(graph, instance_id, first, run_options, spec=spec)
                elif in_flight(snapshot):
                    with suppress(JourneyError):  # recorded: the instance stands failed, and its retry runs it again
                        await self._designs.instances.before_move(graph, instance_id, run_options, go_on=True)
                for answered in await self.services.waits.undelivered(instance_id=instance_id):
                    await self._deliver(graph, spec, instance_id, answered.wait_id, None, run_options)
            return await self._status(instance_id, deployment, spec, graph)

    async def migrate(
        self, instance_id: str, *, to_version: int, mapping: Mapping[str, str] | None = None, by: str | None = None
    ) -> dict[str, Any]:
        """Move a waiting instance to ``to_version``; ``mapping`` maps the elements it waits at to elements
        of that version (same id: itself). Refused, with nothing changed, when a waiting element has no
        mapping (see ``graphs.process.migration``). ``by``: who migrates it (its ``process.migrating``,
        ``process.migrated`` or ``process.migration_rolled_back`` events name them)."""
        await migrate(self.migrations, await self.loaded(instance_id), to_version, mapping, by)
        return await self.status(instance_id)

    async def settle_abandoned_migrations(self, started_before: datetime) -> None:
        """Settle the migrations left open since before ``started_before`` (their process died midway)."""
        for instance_id in await migrating_instances(self.migrations):
            with suppress(MigrationInProgressError):
                await settle_migration(self.migrations, instance_id, started_before=started_before)

    async def retry(
        self, instance_id: str, variables: Mapping[str, Any] | None = None, *, by: str | None = None
    ) -> dict[str, Any]:
        """Run a failed node again (its agent may have recovered), delivering with it the answers that reached
        the instance's other waits while it stood failed (see :meth:`deliver`), and re-arm its failed timers
        (its ``incidents``: an SLA notification or a reminder whose agent failed after its retries), which the
        next pass fires again (``timer.retried`` each).

        ``variables``: set first, as :meth:`set_variables` does (Camunda's ``setVariables`` and then resolving
        the incident): a gateway that found no flow, say, decides again on them. Refused, with nothing changed,
        when they break ``variables_schema``, or when no node failed (only timers: set them with
        :meth:`set_variables`). ``by``: who retries it (its ``process.retried``, ``timer.retried`` and
        ``variables.set`` events name them)."""
        async with self.locked(instance_id) as (instance, deployment, spec, graph):
            refuse_ended(instance)  # before its variables are logged: the kernel's retry refuses it too
            snapshot = await graph.aget_state(self.engine.config(instance_id))
            failed = failed_task(snapshot)
            incidents = await self._failed_timers(instance_id)
            if failed is None and not incidents:
                raise ProcessStateError(
                    f"process instance {instance_id!r} has no failed node nor failed timer to retry", allowed=[]
                )
            if failed is None and variables is not None:
                raise ProcessStateError(
                    f"process instance {instance_id!r} has no failed node to run again on variables, only failed "
                    "timers: retry it without variables, and set them with set_variables",
                    allowed=["retry", "set_variables"],
                )
            if incidents:
                retried = [NewEvent(TIMER_RETRIED, {"timer_id": t.timer_id, "by": by}, t.element) for t in incidents]
                timers = self.services.timers
                await self.store.events.append(
                    instance_id, retried, also=[timers.rearm_statement(t) for t in incidents]
                )
                self.scheduler.wake()
            if failed is None:
                return await self._status(instance_id, deployment, spec, graph)
            if variables is not None:
                update = await self._set(instance_id, spec, snapshot, variables, by=by, at=element_of(failed))
            else:
                update = await self._lost_set(instance_id, snapshot)
            await self._designs.instances.retry(graph, instance_id, "process.retried", settle=False, by=by)
            held: dict[str, Any] = {}
            for pending, wait_id in parked(snapshot):
                if (delivery := await self.services.waits.delivery(wait_id)) is not None:
                    held[wait_id] = (pending.id, delivery.resolution)
            resume = dict(held.values()) if held else None
            command: Command[Any] | None = (
                Command(resume=resume, update=update or None) if resume is not None or update else None
            )
            await self.run(graph, instance_id, command, spec=spec)
            await self.services.waits.finish(list(held))
            return await self._status(instance_id, deployment, spec, graph)

    async def set_variables(
        self, instance_id: str, variables: Mapping[str, Any], *, retry: bool = False, by: str | None = None
    ) -> dict[str, Any]:
        """Set variables of a running instance (Camunda's ``setVariables``): each is checked as a start's are
        (``variables_schema``, values every store keeps), logged with its new version (``variables.set``, with
        ``by``), and seen by every element that runs after. ``retry``: the instance stands failed, and its failed
        element runs again on them (:meth:`retry`); without it a failed instance is refused, as its element would
        not see them until retried.

        Only variables of the process's top level are set: while parallel branches are under way (or one
        failed), their elements would keep the values they started with, so that is refused with
        :class:`ProcessStateError` (set them once the branches have joined)."""
        if retry:
            return await self.retry(instance_id, variables, by=by)
        async with self.locked(instance_id) as (instance, deployment, spec, graph):
            snapshot = await self.settled(graph, instance_id)
            if (failed := failed_task(snapshot)) is not None:
                raise ProcessStateError(
                    f"process instance {instance_id!r} stands failed at {failed!r}; set its variables with the retry "
                    "(retry=True) so that the failed element runs again on them",
                    allowed=["retry"],
                )
            if instance.status != "in_progress":
                raise ProcessStateError(
                    f"process instance {instance_id!r} is {instance.status}; variables are set while it runs or "
                    "stands failed",
                    allowed=[],
                )
            update = await self._set(instance_id, spec, snapshot, variables, by=by, at=None)
            await self.run(graph, instance_id, Command(update=update), spec=spec)
            return await self._status(instance_id, deployment, spec, graph)

    async def _set(
        self,
        instance_id: str,
        spec: ProcessSpec,
        snapshot: StateSnapshot,
        variables: Mapping[str, Any],
        *,
        by: str | None,
        at: str | None,
    ) -> dict[str, Any]:
        """Check ``variables`` against the instance's state and log them: the graph update that sets them."""
        if not isinstance(variables, Mapping) or not variables:
            raise InvalidInputError("variables must be a non-empty mapping of variable name to value")
        check_names(variables, set_later=True)
        check_value(dict(variables), "variables")
        branches = {
            fork.branch_node(index) for fork in analyse(spec).top.forks.values() for index in range(len(fork.branches))
        }
        if under_way := sorted({task.name for task in snapshot.tasks} & branches):
            raise ProcessStateError(
                f"process instance {instance_id!r} is inside parallel branches ({', '.join(under_way)}), whose "
                "elements would not see variables set now; set them once the branches have joined",
                allowed=[],
            )
        # A set logged before a crash kept it from the thread is applied with this one (its versions come first).
        lost = await self._lost_set(instance_id, snapshot)
        current = {**(snapshot.values.get("variables") or {}), **lost.get("variables", {})}
        self._check_variables(spec, {**values(current), **variables})
        cells, changes = assign(current, dict(variables))
        number = int((snapshot.values.get("visits") or {}).get(SETS, 0)) + (2 if lost else 1)
        logged = NewEvent("variables.set", {"changes": changes, "by": by}, at, set_key(instance_id, number))
        await self.store.events.append(instance_id, [logged])
        return {"variables": {**lost.get("variables", {}), **cells}, "visits": {SETS: number}}

    async def _lost_set(self, instance_id: str, snapshot: StateSnapshot) -> dict[str, Any]:
        """The graph update of a ``variables.set`` the log has but the thread does not ({} if none).

        A set is logged first and then applied to the thread, which no transaction spans: a crash between the
        two leaves the log naming values the thread never took. The log is the record of what was decided (the
        caller may have seen it), so the update is applied by recovery, and at the instance's next delivery, set,
        retry or status read (before anything moves it on), with the versions the log gave it. The thread counts
        the sets it applied (:data:`SETS`), so the one it lacks is found by its key, in one read."""
        number = int((snapshot.values.get("visits") or {}).get(SETS, 0)) + 1
        event = await self.store.events.find_by_key(instance_id, set_key(instance_id, number))
        if event is None:
            return {}
        cells = {c["name"]: {"value": c["value"], "version": c["version"]} for c in event.payload.get("changes") or []}
        return {"variables": cells, "visits": {SETS: number}}

    async def cancel(self, instance_id: str, reason: str = "") -> dict[str, Any]:
        """Stop an instance: every wait, timer, subscription and inbox task it has is cancelled. A failed one that
        could be retried is cancelled too (Camunda cancels an instance with an incident): it gives the retry up.
        ``reason`` (at most ``MAX_REASON`` characters, may be empty) is kept in its ``process.cancelled`` event."""
        if not isinstance(reason, str) or len(reason) > MAX_REASON:
            raise InvalidInputError(f"a cancellation's reason is a string of at most {MAX_REASON} characters")
        check_value(reason, "reason")
        async with self.locked(instance_id) as (instance, deployment, spec, graph):
            if instance.status in FINISHED and not await self._retryable(instance, graph):
                raise ProcessStateError(
                    f"process instance {instance_id!r} has already finished ({instance.status})", allowed=[]
                )
            await self._designs.instances.cancel(
                instance_id, "process.cancelled", reason, also=cancel_pending(instance_id)
            )
            return await self._status(instance_id, deployment, spec, graph)

    async def _retryable(self, instance: Instance, graph: Graph) -> bool:
        """Whether ``instance`` (read under its lock) stands failed at an element a retry runs again: not one
        whose deadline passed, nor one that ended otherwise."""
        if instance.status != "failed":
            return False
        if failed_task(await graph.aget_state(self.engine.config(instance.instance_id))) is None:
            return False
        return await self.store.events.find_by_key(instance.instance_id, passed_key(instance.instance_id)) is None

    async def _settle_migrations(self) -> list[str]:
        """Recovery, first: settle every migration a crash cut short (at startup, no other process migrates)."""
        resumed = await migrating_instances(self.migrations)
        for instance_id in resumed:
            await settle_migration(self.migrations, instance_id, force=True)
        return resumed

    async def _deliver_undelivered(self) -> list[str]:
        """Recovery, last: apply every ``variables.set`` and deliver every resolution that a crash kept from its
        thread (the sets first: an answer delivered moves the instance on, which must see them)."""
        resumed: list[str] = []
        with_sets = await self.store.events.instances_with("variables.set", pattern=PATTERN, status="in_progress")
        for instance_id in with_sets:
            if await self._apply_lost_set(instance_id):
                resumed.append(instance_id)
        for wait in await self.services.waits.undelivered():
            if await self.deliver(wait.instance_id, wait.wait_id) and wait.instance_id not in resumed:
                resumed.append(wait.instance_id)
        return resumed

    async def _apply_lost_set(self, instance_id: str) -> bool:
        """Under the instance's lock, apply a ``variables.set`` its log has and its thread lacks (see
        :meth:`_lost_set`) to a running instance (a failed one's retry applies it). Whether there was one."""
        async with self.locked(instance_id) as (instance, _deployment, spec, graph):
            snapshot = await self.settled(graph, instance_id)
            if instance.status != "in_progress" or failed_task(snapshot) is not None:
                return False
            lost = await self._lost_set(instance_id, snapshot)
            if lost:
                await self.run(graph, instance_id, Command(update=lost), spec=spec)
            return bool(lost)

    async def _instance_graph(self, instance: Instance) -> Graph:
        return await self.deployed.graph_of(await self.deployment_of(instance))

    async def _controls(self, instance: Instance) -> StartControls | None:
        """The instance's concurrency limit (its version's) and key value, from the variables it started with,
        which a retry of it once it failed runs under as its start did."""
        spec = await self.spec_of(await self.deployment_of(instance))
        if spec.concurrency is None:
            return None
        [started, *_] = await self.store.events.list(instance.instance_id, types=[STARTED])
        variables = {c["name"]: c["value"] for c in started.payload.get("changes") or []}
        return StartControls.of(None, None, spec.concurrency, variables, journey_type=f"{PATTERN}.{spec.name}")

    @staticmethod
    async def _start_input(_instance: Instance, started: Event) -> dict[str, Any]:
        """The first run's input, from the ``process.started`` event (see :meth:`start`)."""
        data = started.payload
        cells, _changes = assign({}, {c["name"]: c["value"] for c in data.get("changes") or []})
        return {"variables": cells, "entry": started.step, "status": "in_progress", "variant": data.get("variant")}

    # --- messages ----------------------------------------------------------------------------------

    async def send_message(
        self,
        name: str,
        correlation_key: str,
        payload: Mapping[str, Any] | None = None,
        *,
        ttl: timedelta | None = DEFAULT_MESSAGE_TTL,
        message_id: str | None = None,
        tenant: str | None = None,
    ) -> dict[str, Any]:
        """Deliver a message to every instance waiting for (``name``, ``correlation_key``), and start an
        instance of every process with a message start for ``name``.

        ``tenant``: the tenant the message is sent for (the server passes its caller's). It reaches only that
        tenant's instances (one with no tenant counts as ``DEFAULT_TENANT``'s), is buffered for them only, and its
        ``message_id`` is unique within that tenant. None (the default): every tenant, as for the runtime's own
        sends. An instance it starts belongs to whoever the caller acts as (``checkpoints.ownership.acting_as``).

        A message that matches neither is buffered for ``ttl`` (default one hour): a wait armed for it
        within that time takes it. With ``ttl=None`` (or zero) it is refused with
        :class:`UnmatchedMessageError` instead, and nothing is kept.

        A message starts no instance of a process that has one active which a message with the same correlation
        key started (Camunda's message start events do the same): the answer names that one under ``active``
        instead, and the message is not buffered for a later start.

        ``message_id`` (the sender's id for this message, as Camunda's ``messageId``): a send of the same
        message with the same id within :data:`MESSAGE_ID_WINDOW` answers as the first did and changes
        nothing, so a sender may retry safely. The same id with another message is refused with
        :class:`MessageIdConflictError`; while the first send is still under way, a repeat gets
        :class:`ConcurrentUpdateError` (try again shortly).
        """
        if not isinstance(name, str) or not name:
            raise InvalidInputError("a message needs a non-empty name")
        if not isinstance(correlation_key, str | int) or correlation_key == "":
            raise InvalidInputError("a message needs a correlation key (a string)")
        if payload is not None and not isinstance(payload, Mapping):
            raise InvalidInputError(f"a message payload must be a mapping, got {type(payload).__name__}")
        if message_id is not None and (not isinstance(message_id, str) or not 0 < len(message_id) <= MESSAGE_ID_CHARS):
            raise InvalidInputError(f"a message id must be a string of 1 to {MESSAGE_ID_CHARS} characters")
        check_value(name, "name")
        check_value(correlation_key, "correlation_key")
        if len(str(correlation_key)) > CORRELATION_KEY:  # no waiting instance can have a longer one
            raise InvalidInputError(
                f"a message's correlation key has at most {CORRELATION_KEY} characters, not {len(str(correlation_key))}"
            )
        check_value(dict(payload or {}), "payload")
        if message_id is not None:
            check_value(message_id, "message_id")
        if tenant is not None and (not isinstance(tenant, str) or not tenant or tenant == EVERY_TENANT):
            raise InvalidInputError("a message's tenant must be a tenant's name", tenant=tenant)
        scope = EVERY_TENANT if tenant is None else tenant
        key, body = str(correlation_key), json.loads(json.dumps(dict(payload or {})))  # as the database keeps it
        if message_id is None:
            return await self._send(name, key, body, ttl, scope, None)
        earlier = await self.services.messages.claim_id(scope, message_id, name, key, body, MESSAGE_ID_WINDOW)
        if earlier is not None:
            if (earlier.name, earlier.correlation_key, earlier.payload) != (name, key, body):
                raise MessageIdConflictError(
                    f"message id {message_id!r} was sent with another message ({earlier.name!r}, "
                    f"{earlier.correlation_key!r}); give a new message a new id",
                    message_id=message_id,
                )
            if earlier.outcome is not None:
                return earlier.outcome
            # Its send is under way, or its sender died mid-way (its claim is older than a lease): take it over.
            stale = earlier.claimed_at <= self.clock.now() - DEFAULT_LEASE
            if not stale or not await self.services.messages.take_over_id(earlier):
                raise ConcurrentUpdateError(
                    f"message {message_id!r} is being sent right now; try again shortly", message_id=message_id
                )
        try:
            outcome = await self._send(name, key, body, ttl, scope, message_id, taken_over=earlier is not None)
        except (UnmatchedMessageError, InvalidInputError):  # refused, nothing kept: the id is free again
            await self.services.messages.settle_id(scope, message_id, None)
            raise
        await self.services.messages.settle_id(scope, message_id, outcome)
        return outcome

    async def _send(
        self,
        name: str,
        key: str,
        body: dict[str, Any],
        ttl: timedelta | None,
        tenant: str,
        message_id: str | None,
        *,
        taken_over: bool = False,
    ) -> dict[str, Any]:
        """:meth:`send_message`, its input checked, for ``tenant`` (or EVERY_TENANT). With ``message_id`` every
        step is keyed by it, so a send
        ``taken_over`` after its sender died repeats none of them: a wait is resolved once (the waits it resolved
        already, directly or from the buffer, are found by the id and answered again), an instance it
        starts has a start key from it, and it is buffered under that id."""
        received_at = self.clock.now().isoformat()
        messages = self.services.messages
        # Before anything changes: a start the message would be refused (its payload breaks the process's
        # variables_schema) refuses the message, which must not have resumed waiting instances by then.
        starts = await self._message_starts(name, key, body)
        won = await messages.taken(name, key, message_id, tenant) if taken_over and message_id else []
        waiting = await messages.waiting(name, key, tenant)
        if (misfit := await self._misfit(name, body, waiting)) is not None:
            raise misfit
        for subscription in waiting:
            resolution = {
                "option": subscription.element,
                "kind": "message",
                "message": name,
                "correlation_key": key,
                "payload": body,
                "received_at": received_at,
                **({"message_id": message_id, "tenant": tenant} if message_id is not None else {}),
            }
            if await self.services.waits.resolve(
                subscription.wait_id,
                resolution,
                keep_subscription=subscription.subscription_id,
                claims=[messages.consume_subscription_claim(subscription.subscription_id)],
            ):
                won.append(subscription)
        for subscription in won:
            await self.deliver(subscription.instance_id, subscription.wait_id)
        started, active = await self._start_on_message(starts, key, tenant, message_id)
        correlated = sorted({s.instance_id for s in won})
        if correlated or started or active:
            return {
                "correlated": correlated,
                "started": started,
                "buffered": None,
                **({"active": active} if active else {}),
            }
        if ttl is None or ttl <= timedelta(0):
            raise UnmatchedMessageError(
                f"no instance waits for message {name!r} with correlation key {key!r}, and no process starts on it",
                message_name=name,
                correlation_key=key,
            )
        buffered = await messages.buffer(tenant, message_id or new_id("msg"), name, key, body, ttl)
        # A wait armed since the look-up above looked for a buffered message before this one was kept, so it
        # is looked for again now that it is: of an arm and a send, the later to commit sees the other's row.
        for subscription in await messages.waiting(name, key, tenant):
            if await self._misfit(name, body, [subscription]) is not None:
                continue  # it would break that instance's variables: it stays buffered (see ``_take_buffered``)
            taken = await take_buffered(
                self.services,
                buffered,
                wait_id=subscription.wait_id,
                element=subscription.element,
                subscription_id=subscription.subscription_id,
            )
            if taken is not None:
                await self.deliver(subscription.instance_id, subscription.wait_id)
                return {"correlated": [subscription.instance_id], "started": [], "buffered": None}
        return {
            "correlated": [],
            "started": [],
            "buffered": buffered.message_id,
            "expires_at": buffered.expires_at.isoformat(),
        }

    async def _misfit(
        self, message: str, payload: dict[str, Any], waiting: Sequence[Subscription]
    ) -> InvalidInputError | None:
        """Why the message cannot be delivered, if its payload would give one of the ``waiting`` instances a
        variable its process's ``variables_schema`` refuses (as a task's answer would be refused): an exclusive
        gateway relying on the schema could then never decide. Checked before any wait is resolved."""
        instances = await self.instances_by_id(sorted({s.instance_id for s in waiting}))
        for subscription in waiting:
            instance = instances.get(subscription.instance_id)
            if instance is None:
                continue
            spec = await self.spec_of(await self.deployment_of(instance))
            element = spec.element(subscription.element)
            misfit = spec.misfit(element.outputs if isinstance(element, MessageEvent) else None, payload)
            if misfit is not None:
                where, why = misfit
                return InvalidInputError(
                    f"the payload of message {message!r} does not fit the variables_schema of process {spec.name!r} "
                    f"(instance {instance.instance_id!r} waits for it at {element.id!r}) at {where}: {why}; "
                    "nothing was delivered",
                    path=where,
                    instance_id=instance.instance_id,
                )
        return None

    async def _message_starts(self, message: str, key: str, payload: dict[str, Any]) -> list[MessageStart]:
        """The instances message (``message``, ``key``) with ``payload`` starts, their variables checked: a
        payload that breaks a process's ``variables_schema`` is :class:`InvalidInputError`, before the message
        has changed anything."""
        starts = []
        for name in await self.deployments.started_by(message):  # indexed: no scan of every deployment
            if not await self._callers(name):  # another tenant's process: its messages are its own
                continue
            deployment, spec = await self.routed(name, key)
            start = next((s for s in spec.starts() if s.message == message), None)
            if start is None:  # the version the rollout picked does not start on this message
                continue
            variables = {**payload, **({start.correlation: key} if start.correlation else {})}
            self._start_variables(spec, variables, key)
            starts.append(MessageStart(name, deployment.version, start.id, variables, message))
        return starts

    async def _start_on_message(
        self, starts: Sequence[MessageStart], key: str, tenant: str, message_id: str | None
    ) -> tuple[list[str], list[str]]:
        """Start the ``starts`` of message (…, ``key``) of ``tenant``: the instances started, and those of the
        processes it started none of, as one of them that a message with ``key`` started is still active.

        As Camunda's message start events do, a process has at most one active instance per correlation key
        among those messages started (of any version; active: neither completed, failed, cancelled nor
        terminated), so a message sent again (by a sender retrying without a message id, say) starts no second
        one. The look-up and the start hold a lock named by the process and the key, so two senders on two
        processes cannot both start one."""
        started, active = [], []
        for start in starts:
            start_key = None if message_id is None else message_start_key(tenant, message_id, start.process)
            async with self.engine.exclusive(f"message-start:{tenant}:{start.process}:{key}"):
                existing = await self._active_message_start(start.process, key, tenant)
                # The instance this very message started (a send taken over after its sender died) is its own.
                if existing is not None and (
                    start_key is None or await self._designs.instances.started_with(start_key, PATTERN) != existing
                ):
                    active.append(existing)
                    continue
                view = await self.start(
                    start.process,
                    key,
                    start.variables,
                    version=start.version,
                    start_event=start.start_event,
                    start_key=start_key,
                    message=start.message,
                )
            started.append(str(view["instance_id"]))
        return started, active

    async def _active_message_start(self, process: str, key: str, tenant: str) -> str | None:
        """The active instance of ``process`` (any version) that a message with correlation key ``key`` started,
        among those a message of ``tenant`` reaches; None if there is none. As Camunda 8's, an instance started
        otherwise (through the API, even at the message start event, with business key ``key``) does not count."""
        designs = {d.design_id: d for d in await self.deployments.find(process)}
        # A message start's business key is its correlation key.
        where = InstanceFilter(user_id=key, journey_ids=tuple(designs))
        for instance in await self.store.index.list_instances(pattern=PATTERN, where=where, limit=100_000):
            deployment = designs.get(instance.journey_id)
            if deployment is None or instance.status in FINISHED:
                continue
            if tenant != EVERY_TENANT and (instance.tenant or DEFAULT_TENANT) != tenant:
                continue
            started = await self.store.events.find_by_key(instance.instance_id, f"{instance.instance_id}:started")
            payload = started.payload if started is not None else {}
            if "message" in payload:
                if payload["message"] is not None:
                    return instance.instance_id
                continue
            # Logged before a start named its message: a start at a message start event stands for one.
            spec = await self.spec_of(deployment)
            if any(s.id == payload.get("start_event") and s.message is not None for s in spec.starts()):
                return instance.instance_id
        return None

    # --- views -------------------------------------------------------------------------------------

    async def status(self, instance_id: str) -> dict[str, Any]:
        """The instance's view, with its ``incidents`` (failed timers, see :meth:`retry`) when it has some. Where
        its work is handed over (``hand_off``), the read finishes none of it (a crash's work in flight, say): that
        work needs agents this process may not hold, and is run on where they are."""
        reading = self.engine.reading(instance_id) if self.hand_off is None else nullcontext(False)
        async with reading as held:
            instance, deployment, spec, graph = await self.loaded(instance_id, locked=held, settle=held)
            view = await self._status(instance_id, deployment, spec, graph, instance, settle=held)
            if incidents := await self._failed_timers(instance_id):
                view["incidents"] = [{**(t.data.get("incident") or {}), "element": t.element} for t in incidents]
            if instance.held is not None:  # an answer or a timer left for a process with its agents
                view["held"] = instance.held
            return view

    async def _failed_timers(self, instance_id: str) -> list[Timer]:
        """The instance's timers that stand failed (incidents an operator retries)."""
        return [t for t in await self.services.timers.find(instance_id=instance_id) if t.status == FAILED]

    async def _status(
        self,
        instance_id: str,
        deployment: Deployment,
        spec: ProcessSpec,
        graph: Graph,
        instance: Instance | None = None,
        *,
        settle: bool = True,
    ) -> dict[str, Any]:
        """The instance's view, built under its lock: a call that changed it answers the state it left, not
        what another client's call did after it. ``instance``: as read under the lock, if nothing changed it.
        Not ``settle``: another call holds the instance (see ``JourneyEngine.reading``), so its state as last
        committed, nothing finished or applied."""
        instance = instance or await self.instance(instance_id)
        if settle:
            snapshot = await self.settled(graph, instance_id)
            running = instance.status == "in_progress" and failed_task(snapshot) is None  # else its retry applies
            if running and (lost := await self._lost_set(instance_id, snapshot)):
                await self.run(graph, instance_id, Command(update=lost), spec=spec)
                snapshot = await graph.aget_state(self.engine.config(instance_id))
        else:
            snapshot = await graph.aget_state(self.engine.config(instance_id))
        snapshot = await self._with_branches(graph, instance_id, snapshot)
        instance = await self.instance(instance_id)
        if not settle and snapshot.created_at is None:
            # A start under way, which checkpoints only where it stops (``start``): the instance as it started, not
            # a view with none of its variables.
            [started] = await self.store.events.list(instance_id, types=[STARTED])
            view = self.view_of(instance, deployment, await self._start_input(instance, started), [], None)
        else:
            view = self.view(instance, deployment, snapshot)
        await self._explain_failed(instance_id, spec, view)
        view["waiting"] = await self._as_assigned(instance_id, view["waiting"])
        if spec.evaluation is not None:
            view["evaluation"] = await self._designs.instances.evaluation.verdict(instance_id)
        return view

    async def _explain_failed(self, instance_id: str, spec: ProcessSpec, view: dict[str, Any]) -> None:
        """A failed instance's ``view`` completed from its rows and log: where it still waits (see
        :meth:`_open_waits`), why it failed when its state does not say (see :meth:`_logged_failure`), and, failed
        at its compensation, the handler that failed (``compensation_failure``)."""
        if view["status"] != "failed":
            return
        if "failed_element" in view:
            view["waiting"] = await self._open_waits(instance_id, spec)
        if view["failure"] is None:
            view["failure"] = await self._logged_failure(instance_id, view.get("failed_element"))
        if view.get("failed_element") == COMPENSATE:  # which undo stopped it (failure: what it undoes)
            stopped = await self.store.events.list(instance_id, types=[COMPENSATION_FAILED])
            if stopped:
                view["compensation_failure"] = {k: v for k, v in stopped[-1].payload.items() if k != "compensated"}

    async def _logged_failure(self, instance_id: str, element: str | None) -> dict[str, Any] | None:
        """Why a failed instance whose state holds no ``failure`` failed, from its log: a deadline that expired it
        (its graph never ran again to record it), or the error of its last failed run (a step that crashed, a
        database that refused a write), for the element that failed."""
        passed = await self.store.events.find_by_key(instance_id, passed_key(instance_id))
        if passed is not None:
            return {**DEADLINE_FAILURE, "deadline": passed.payload.get("deadline")}
        failed = await self.store.events.list(instance_id, types=[INSTANCE_FAILED])
        if not failed:
            return None
        payload = failed[-1].payload
        return {"element": element, "error": payload.get("error"), "error_type": payload.get("error_type")}

    async def _as_assigned(self, instance_id: str, waiting: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``waiting`` with each open user task's assignee, candidate groups, title and response schema as its inbox
        row has them: the wait describes them as the spec gave them when it was armed, and an SLA's reassign (the
        assignment) or a migration (the title and schema: the target version's) changes them afterwards."""
        if not any(w.get("kind") == "user_task" for w in waiting):
            return waiting  # no read for an instance that waits at no task
        rows = {row.task_id: row for row in await self.services.inbox.find(instance_id=instance_id)}
        return [
            {
                **w,
                "assignee": row.assignee,
                "candidate_groups": list(row.candidate_groups),
                "title": row.title,
                "response_schema": row.response_schema,
            }
            if (row := rows.get(str(w.get("wait_id")))) is not None
            else w
            for w in waiting
        ]

    async def _with_branches(
        self, graph: Graph, instance_id: str, snapshot: StateSnapshot | None = None
    ) -> StateSnapshot:
        """The thread's state (``snapshot``, if read already), read with its parallel branches when a task
        failed, so that the view names the element that failed in a branch rather than the branch."""
        config = self.engine.config(instance_id)
        snapshot = snapshot or await graph.aget_state(config)
        return snapshot if failed_task(snapshot) is None else await graph.aget_state(config, subgraphs=True)

    @classmethod
    def view(cls, instance: Instance, deployment: Deployment, snapshot: StateSnapshot) -> dict[str, Any]:
        interrupts = [i for t in snapshot.tasks for i in t.interrupts]
        return cls.view_of(
            instance, deployment, cast(dict[str, Any], snapshot.values), interrupts, failed_element(snapshot)
        )

    @staticmethod
    def view_of(
        instance: Instance,
        deployment: Deployment,
        state: Mapping[str, Any],
        interrupts: Sequence[Interrupt],
        failed: str | None,
    ) -> dict[str, Any]:
        """An instance's view from its thread's values, the interrupts it waits at and the element that failed."""
        waiting = [dict(i.value) for i in interrupts if isinstance(i.value, Mapping)]
        status = instance.status
        if failed and status not in FINISHED:
            status = "failed"
        view = {
            "instance_id": instance.instance_id,
            "process": deployment.name,
            "version": deployment.version,
            "variant": state.get("variant"),
            "business_key": instance.user_id,
            "status": status,
            "outcome": state.get("outcome"),
            "variables": values(state.get("variables")),
            # A failed instance's open waits are read from their rows (``open_waits``): see ``status``.
            "waiting": sorted(waiting, key=lambda w: str(w.get("element"))) if status not in FINISHED else [],
            "failure": state.get("failure"),
            "compensated": list(state.get("compensated") or []),
        }
        if failed:
            view["failed_element"] = failed
        return view

    async def history(self, instance_id: str) -> list[Event]:
        await self.instance(instance_id)
        return await self.store.events.list(instance_id)

    async def variable_history(self, instance_id: str, name: str | None = None) -> list[dict[str, Any]]:
        """Every change of the instance's variables (or of one), with its version, in order."""
        changes = []
        for event in await self.history(instance_id):
            for change in event.payload.get("changes") or []:
                if name is None or change["name"] == name:
                    changes.append({**change, "event": event.type, "element": event.step, "seq": event.seq})
        return changes

    async def instances(
        self, name: str | None = None, *, status: str | None = None, viewer: Viewer | None = None
    ) -> list[dict[str, Any]]:
        """Instance summaries (id, process, version, business key, status), oldest first; those ``viewer`` may
        see, with one."""
        found = await self.store.index.list_instances(pattern=PATTERN, status=status, limit=100_000, viewer=viewer)
        by_design = {d.design_id: d for d in await self.deployments.find(name)}
        return [
            {
                "instance_id": i.instance_id,
                "process": by_design[i.journey_id].name,
                "version": by_design[i.journey_id].version,
                "business_key": i.user_id,
                "status": i.status,
            }
            for i in found
            if i.journey_id in by_design
        ]

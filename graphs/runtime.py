"""The composition root: one object, opened by store URL, that owns the checkpointer, our tables, the
agent registry and an orchestrator for every registered pattern (:mod:`graphs.kernel.patterns`).

    async with JourneyRuntime.open("sqlite:///journeys.db") as runtime:
        journey = await runtime.structured.design_journey("content_migration", {...})
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from langgraph.store.base import IndexConfig
from langgraph.types import Durability

from agents.deterministic import EchoAgent
from agents.guide import ModelFactory
from agents.policy import Policy, with_defaults
from agents.registry import AgentRegistry
from agents.resilience import Bulkheads, RetrySettings, seconds
from checkpoints.clock import Clock
from checkpoints.errors import ConcurrentUpdateError
from checkpoints.events import Event
from checkpoints.flow import TERMINATED_EVENT
from checkpoints.guards import CircuitSettings
from checkpoints.locks import DEFAULT_LOCK_TIMEOUT_S
from checkpoints.retention import CheckpointRetention, RetentionPolicy
from checkpoints.store import Store, open_store
from checkpoints.url import DEFAULT_STORE_URL
from checkpoints.values import check_value
from graphs.analytics import JourneyAnalytics, MilestoneTracker
from graphs.errors import (
    InvalidInputError,
    JourneyNotFoundError,
    NothingToRetryError,
    NotInReviewError,
    StepFailedError,
)
from graphs.kernel.designs import DesignBook
from graphs.kernel.engine import JourneyEngine
from graphs.kernel.identifiers import MAX_REASON
from graphs.kernel.instances import refuse_ended
from graphs.kernel.patterns import (
    OrchestratorDeps,
    design_kind,
    get_pattern,
    registered_patterns,
    retry_failed_task,
)
from graphs.lifecycle.catalog import DEFAULT_AGENT_OUTPUTS
from graphs.process.transactions import Transactions
from graphs.structured.templates import TemplateCatalog, default_catalog
from nodes.agent_call import MAX_OUTPUT_BYTES, AgentCaller
from nodes.services import NodeServices

if TYPE_CHECKING:
    from checkpoints.index import Instance
    from graphs.lifecycle.orchestrator import LifecycleOrchestrator
    from graphs.process.orchestrator import ProcessOrchestrator
    from graphs.session.mvp import MVPOrchestrator
    from graphs.session.orchestrator import SessionOrchestrator
    from graphs.structured.orchestrator import StructuredOrchestrator
    from graphs.structured.saga_orchestrator import SagaOrchestrator

# A terminate's answer's key for the events the journey logged between the terminate's call and its taking effect.
WENT_ON = "went_on_first"

# Seconds an operator's run on (:meth:`JourneyRuntime.run_on`) waits for a journey another process holds before it
# says the journey runs there: a stuck one is held by nobody, and a step's wait for its lock is far shorter.
RUN_ON_WAIT_S = 2.0


class JourneyRuntime:
    """Reach every orchestrator from here: ``structured``, ``session``, ``mvp``, ``saga``, ``lifecycle``
    and ``processes`` (and ``transaction``: compensating transactions as a plain call); each registered
    pattern's orchestrator is the attribute it names, and :meth:`orchestrator` finds one by pattern name."""

    # The built-in patterns' orchestrators, typed; each is set from the pattern registry.
    structured: StructuredOrchestrator
    saga: SagaOrchestrator
    session: SessionOrchestrator
    mvp: MVPOrchestrator
    lifecycle: LifecycleOrchestrator
    processes: ProcessOrchestrator

    def __init__(
        self,
        store: Store,
        *,
        agents: AgentRegistry,
        templates: TemplateCatalog,
        policies: Sequence[Policy],
        retry: RetrySettings,
        bulkhead_limit: int | None,
        durability: Durability,
        guide_model: ModelFactory | None = None,
        agent_timeout: float | None = None,
        circuit: CircuitSettings | None = None,
        bulkhead_wait: float | None = None,
        max_output_bytes: int = MAX_OUTPUT_BYTES,
        retention: RetentionPolicy | None = None,
    ) -> None:
        self.store = store
        self.guide_model = guide_model  # the chat model the guide graph phrases with (None: deterministic)
        self.agents = agents
        self.templates = templates
        caller = AgentCaller(
            agents,
            store.events,
            policies=policies,
            retry=retry,
            bulkheads=Bulkheads(bulkhead_limit, wait=bulkhead_wait),
            breakers=store.breakers,
            rate_limits=store.rate_limits,
            timeout=agent_timeout,
            circuit=circuit,
            max_output_bytes=max_output_bytes,
        )
        self.engine = JourneyEngine(store, NodeServices(caller, store.events, store.clock), durability=durability)
        # What finished journeys keep of their checkpoints: ``await runtime.retention.run()`` applies it.
        self.retention = CheckpointRetention(
            store.saver, store.backend, store.clock, retention or RetentionPolicy(), exclusive=self.engine.exclusive
        )
        self.engine.retention = self.retention
        designs = DesignBook(
            self.engine, agents, design_kind, logged_steps=lambda name: get_pattern(name).assistant.replays_from_log
        )
        built: dict[str, Any] = {}
        deps = OrchestratorDeps(designs, templates, built)
        for name, pattern in registered_patterns().items():
            if pattern.orchestrator is not None:
                built[name] = pattern.orchestrator(deps)
                if pattern.attribute is not None:
                    setattr(self, pattern.attribute, built[name])
        self._orchestrators = built
        self.transaction = Transactions(self.processes)  # the seed's transaction.execute_with_compensation
        self.milestones = MilestoneTracker(store)
        self.analytics = JourneyAnalytics(store)
        self._designs = designs
        self.instances = designs.instances  # the one instance lifecycle every pattern goes through
        # How the host that executes server runs (the API's queue, the CLI's reach to the workers) stops the runs
        # moving a journey, in any process: :meth:`terminate` calls it first. None: no runs to stop.
        self.stop_runs: Callable[[str], Awaitable[None]] | None = None
        # Workflow tiers (SPEC G7): ``evaluators.register(name, fn)`` and ``evaluators.set_prices({...})``.
        self.evaluators = designs.instances.evaluation

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        url: str = DEFAULT_STORE_URL,
        *,
        agents: AgentRegistry | None = None,
        templates: TemplateCatalog | None = None,
        policies: Iterable[Policy] = (),
        default_policies: bool = True,
        retry: RetrySettings | None = None,
        bulkhead_limit: int | None = None,
        clock: Clock | None = None,
        durability: Durability = "async",
        default_agents: bool = True,
        pool_size: int = 10,
        guide_model: ModelFactory | None = None,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S,
        agent_timeout: float | str | None = None,
        circuit: CircuitSettings | None = None,
        bulkhead_wait: float | None = None,
        encryption_key: bytes | str | None = None,
        max_output_bytes: int = MAX_OUTPUT_BYTES,
        prices: Mapping[str, Mapping[str, float]] | None = None,
        store_index: IndexConfig | None = None,
        retention: RetentionPolicy | None = None,
    ) -> AsyncIterator[JourneyRuntime]:
        """Open the store at ``url`` (``memory://``, ``sqlite:///path``, ``postgresql://…``) and everything on it.

        ``default_agents`` registers a deterministic agent for every intent the templates name that
        has no agent yet, so the catalog runs offline. Register your own before or after opening.
        ``lock_timeout``: seconds a call waits for a journey that another call (of this process or
        another) is changing, before it gets :class:`ConcurrentUpdateError`. ``prices``: model name →
        ``{"input_per_1k": …, "output_per_1k": …}``, what evaluated runs' token usage costs.

        Resilience defaults for agents registered without their own: ``agent_timeout`` per attempt (seconds
        or ISO 8601), ``circuit`` (a breaker per intent, shared through the store), ``bulkhead_limit``
        calls at once per agent pool, waiting ``bulkhead_wait`` seconds for a slot at most.
        ``policies`` run before every agent call after the default ones (least privilege:
        :data:`agents.policy.DEFAULT_POLICIES`); ``default_policies=False`` drops those, explicitly.
        ``encryption_key`` (else ``$JOURNEYS_ENCRYPTION_KEY``; 16, 24 or 32 bytes): checkpoints and the
        server's run inputs are encrypted at rest (:mod:`checkpoints.encryption`).
        ``max_output_bytes``: an agent output larger than this (as JSON) fails its step with
        :class:`AgentOutputTooLargeError` instead of being stored. ``store_index``: vector search
        for the graph store (``runtime.store.graph_store``, LangGraph's ``BaseStore``), off by default.
        ``retention``: what finished journeys keep of their checkpoints when ``runtime.retention.run()``
        runs (default: their latest one; :mod:`checkpoints.retention`).
        """
        registry = agents or AgentRegistry()
        catalog = templates or default_catalog()
        if default_agents:
            for intent in sorted(catalog.intents()):
                if intent not in registry:
                    registry.register(intent, EchoAgent(intent), description="deterministic default")
            for intent, output in sorted(DEFAULT_AGENT_OUTPUTS.items()):  # the client lifecycle's units of work
                if intent not in registry:
                    registry.register(intent, EchoAgent(intent, output), description="deterministic default")
        async with open_store(
            url,
            clock=clock,
            pool_size=pool_size,
            lock_timeout=lock_timeout,
            encryption_key=encryption_key,
            store_index=store_index,
        ) as store:
            runtime = cls(
                store,
                agents=registry,
                templates=catalog,
                policies=with_defaults(policies, defaults=default_policies),
                retry=retry or RetrySettings(),
                bulkhead_limit=bulkhead_limit,
                durability=durability,
                guide_model=guide_model,
                agent_timeout=None if agent_timeout is None else seconds(agent_timeout),
                circuit=circuit,
                bulkhead_wait=bulkhead_wait,
                max_output_bytes=max_output_bytes,
                retention=retention,
            )
            runtime.evaluators.set_prices(prices or {})
            try:
                yield runtime
            finally:  # a read a cancelled caller left running ends before its connection does
                await runtime._designs.settle()

    async def history(self, instance_id: str) -> list[Event]:
        """Every event of one journey run, in order."""
        return await self.store.events.list(instance_id)

    async def fork(self, instance_id: str, step_id: str, *, fork_id: str | None = None) -> dict[str, Any]:
        """Fork a journey right after its last completion of ``step_id``: a new journey (``fork_id``, or a new
        id), owned by the caller acting, with the source's history up to that step and its state there, which
        goes on from the next step; the source is left as it is (it only logs ``journey.forked``). Journeys
        with steps in their log fork (structured, saga); others raise :class:`ForkUnsupportedError`, and a
        step not completed :class:`ForkPointError`. Answers the fork's status view, with ``forked_from``."""
        made = await self.instances.fork(instance_id, step_id, fork_id=fork_id)
        return {
            **await self._status_view(made.instance),
            "instance_id": made.instance.instance_id,
            "pattern": made.instance.pattern,
            "forked_from": {"instance_id": made.source_id, "step_id": made.step_id},
        }

    async def terminate(self, instance_id: str, reason: str) -> dict[str, Any]:
        """End a journey of any pattern for good where it stands (Temporal's terminate). In one transaction
        ``journey.terminated`` is logged with ``reason``, the instance marked ``terminated``, and everything it
        waits on cancelled: inbox tasks, timers, waits, its place in a queue. Nothing is compensated (cancel a
        saga's or a process's own way for that). Its history stays readable, and every later call that would
        run it on is refused with :class:`JourneyFinishedError`. A failed journey is terminated too (its retry
        is given up); one that has ended raises :class:`JourneyFinishedError`, an unknown one
        :class:`JourneyNotFoundError`, either before any run is stopped. Answers its status view.

        A run moving it (:attr:`stop_runs`) is cancelled first, as Temporal's terminate stops a running workflow:
        its step in flight is stopped and its result dropped, the run ends ``interrupted``, no later step starts,
        and the journey is terminated once the run has let it go (not refused as busy while a step works). A call
        that holds it otherwise (a process's service task run inside a request, in embedded mode) is not stopped:
        the termination waits for it (the lock's timeout at most), and the answer lists what it did meanwhile
        under :data:`WENT_ON` (its events' seq, type and step), so the effect of that step is reported."""
        if not isinstance(reason, str) or not reason.strip() or len(reason) > MAX_REASON:
            raise InvalidInputError(
                f"a termination needs a reason: a non-empty string of at most {MAX_REASON} characters"
            )
        check_value(reason, "reason")
        logged = await self.store.events.list(instance_id)  # where it stands as asked (see WENT_ON)
        if self.stop_runs is not None:
            # Refused before any run is stopped: a refused terminate cancels nothing (a run queued on an ended
            # journey's thread stays queued). One that ends meanwhile is refused below, as it stands then.
            refuse_ended(await self._instance(instance_id))
            await self.stop_runs(instance_id)
        terminated = await self.instances.terminate(instance_id, reason)
        instance = await self._instance(instance_id)
        if not terminated:
            refuse_ended(instance)
        answer = await self._answer(instance)
        after = logged[-1].seq if logged else 0
        went_on = [e for e in await self.store.events.list(instance_id, after_seq=after) if e.type != TERMINATED_EVENT]
        if went_on:
            answer[WENT_ON] = [{"seq": e.seq, "type": e.type, "step": e.step} for e in went_on]
        return answer

    async def run_on(self, instance_id: str, *, wait: float = RUN_ON_WAIT_S) -> dict[str, Any]:
        """An operator's run on of a journey of any pattern that stands ``in_progress`` with nothing running it (its
        process was killed mid-step, and no startup recovery or read has taken it up): work left in flight is
        finished, a first run cut short runs from its first event, and a process's stored answers not yet delivered
        are delivered (``ProcessOrchestrator.run_on``). What waits for a person, a message or a timer stays waiting.
        Where the work is handed over (``processes.hand_off``: a distributed API process), the journey is checked
        free here and run on there, and the answer is its status as it stands once handed.
        Refused with :class:`ConcurrentUpdateError` when another process holds the journey past ``wait`` seconds
        (it is running there, not stuck), :class:`StepFailedError` when it stands failed (retry it),
        :class:`JourneyFinishedError` when it has ended, :class:`JourneyNotFoundError` when unknown. Answers its
        status view, as :meth:`retry` does."""
        instance = await self._instance(instance_id)
        refuse_ended(instance)
        if instance.status == "failed":
            raise StepFailedError(
                f"journey {instance_id!r} stands failed: retry it (journeys instances retry) to run its failed step "
                "again",
                allowed=["retry"],
                instance_id=instance_id,
            )
        try:
            if (hand_off := self.processes.hand_off) is not None:  # the agents are elsewhere: run on there
                async with self.engine.exclusive(instance_id, wait=wait):  # held by nobody now (else refused)
                    pass
                await hand_off(instance_id)
            elif instance.pattern == "process":
                await self.processes.run_on(instance_id, wait=wait)
            else:
                await self.instances.run_on(instance_id, wait=wait)
        except ConcurrentUpdateError as exc:
            raise ConcurrentUpdateError(
                f"journey {instance_id!r} is running elsewhere: another process (a run, a request, a worker) held it "
                f"for the {wait:g} s this call waited, so it is not stuck; nothing was done",
                instance_id=instance_id,
                waited_s=wait,
            ) from exc
        return await self._answer(await self._instance(instance_id))

    async def retry(self, instance_id: str, *, by: str | None = None) -> dict[str, Any]:
        """Run again what a failed journey of any pattern failed at, by its pattern's own retry: a structured
        run's or a saga's failed step (or a saga's failed compensation, resumed at that handler), a process's
        failed node and failed timers (its incidents), and the task a lifecycle or session journey stands failed
        at (a run without input). ``by``: who retried it (the retry's event names them, for the audit). Nothing
        failed raises :class:`NothingToRetryError` (a process: ``ProcessStateError``), an ended journey
        :class:`JourneyFinishedError`, an unknown one :class:`JourneyNotFoundError`; a retry past the journey's
        deadline or into a full concurrency key is refused as the pattern's own retry refuses it. Answers its
        status view, as :meth:`terminate` does."""
        instance = await self._instance(instance_id)
        match instance.pattern:
            case "structured":
                await self.structured.retry_run(instance_id, by=by)
            case "saga":
                await self.saga.retry_saga_step(instance_id, by=by)
            case "process":
                await self.processes.retry(instance_id, by=by)
            case "lifecycle" | "session" | "mvp":  # no retry of their own: the task they failed at runs again
                await retry_failed_task(self, instance_id, by=by)
            case _:
                raise NothingToRetryError(f"a {instance.pattern} journey has no retry", allowed=[])
        return await self._answer(await self._instance(instance_id))

    async def status(self, instance_id: str) -> dict[str, Any]:
        """A journey of any pattern as :meth:`retry` and :meth:`terminate` answer it: its pattern's status view,
        with its id, pattern and status. An unknown one raises :class:`JourneyNotFoundError`."""
        return await self._answer(await self._instance(instance_id))

    async def _instance(self, instance_id: str) -> Instance:
        instance = await self.store.index.get_instance(instance_id)
        if instance is None:
            raise JourneyNotFoundError(f"no journey instance {instance_id!r}", instance_id=instance_id)
        return instance

    async def _status_view(self, instance: Instance) -> dict[str, Any]:
        """What its pattern's status view says of ``instance`` (nothing for a pattern without one)."""
        status = get_pattern(instance.pattern).status
        return await status(self, instance) if status is not None else {}

    async def _answer(self, instance: Instance) -> dict[str, Any]:
        """The answer of a call on one journey of any pattern: its status view, with its id, pattern and status."""
        view = await self._status_view(instance)
        return {**view, "instance_id": instance.instance_id, "pattern": instance.pattern, "status": instance.status}

    async def review(self, instance_id: str, *, approved: bool, by: str, note: str = "") -> dict[str, Any]:
        """A person's decision (``by``) on a run of any pattern its tier's evaluation held for review (G7's
        ``on_breach: "review"``): ``approved`` completes it (a session closes as it was), otherwise it fails,
        by its pattern's own review. One not in review raises :class:`NotInReviewError`, an unknown one
        :class:`JourneyNotFoundError`. Answers its status view, as :meth:`terminate` does."""
        instance = await self._instance(instance_id)
        match instance.pattern:
            case "structured":
                await self.structured.review_run(instance_id, approved=approved, by=by, note=note)
            case "saga":
                await self.saga.review_saga_run(instance_id, approved=approved, by=by, note=note)
            case "session":
                await self.session.review_session(instance_id, approved=approved, by=by, note=note)
            case "mvp":
                await self.mvp.sessions.review_session(instance_id, approved=approved, by=by, note=note)
            case "lifecycle":
                await self.lifecycle.review_journey(instance_id, approved=approved, by=by, note=note)
            case "process":
                await self.processes.review_run(instance_id, approved=approved, by=by, note=note)
            case _:  # a pattern with no evaluation: none of its runs is ever held for review
                raise NotInReviewError(
                    f"journey run {instance_id!r} ({instance.pattern}) is {instance.status}, not in review", allowed=[]
                )
        return await self._answer(await self._instance(instance_id))  # a review deletes nothing

    async def recover(self, *, leave: Callable[[str], Awaitable[bool]] | None = None) -> list[str]:
        """Finish the work that a crashed process left in flight, for every journey still running, of
        every pattern: runs cut short (also before their first checkpoint) are finished, a process's
        migrations cut short are settled and its resolved waits delivered.

        Runs that wait for a human or a timer are left waiting, and so are the journeys for which ``leave``
        answers True (a server's runs take them up) or that another process holds. Returns the ids of the
        runs resumed.
        """
        return await self._designs.instances.recover(leave=leave)

    def orchestrator(self, pattern: str) -> Any:
        """The orchestrator of a registered pattern, by the pattern's name."""
        found = self._orchestrators.get(pattern)
        if found is None:
            get_pattern(pattern)  # an unknown pattern: JourneyNotFoundError naming the registered ones
            raise JourneyNotFoundError(f"pattern {pattern!r} has no orchestrator", pattern=pattern)
        return found

    def graph_for(self, pattern: str, spec: Any) -> Any:
        """The compiled LangGraph graph for a spec, on this runtime's checkpointer."""
        return self._designs.graph(pattern, spec)

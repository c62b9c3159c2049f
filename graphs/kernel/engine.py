"""The shared engine under every orchestrator: compiles specs to graphs on the store's checkpointer,
serialises runs per journey thread, and finishes work a crashed process left in flight."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import structlog
from langchain_core.runnables import Runnable, RunnableConfig
from langgraph._internal._constants import CONFIG_KEY_CHECKPOINTER  # the saver a run uses, lent by its config
from langgraph.errors import GraphRecursionError
from langgraph.graph import START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Command, Durability, PregelTask, RetryPolicy, StateSnapshot

from checkpoints.backends.base import Statement
from checkpoints.database import conflicted, refusal, unreachable
from checkpoints.errors import ConcurrentUpdateError, JourneyError
from checkpoints.events import NewEvent
from checkpoints.flow import TERMINATED
from checkpoints.index import Instance
from checkpoints.locks import busy, held_elsewhere
from checkpoints.retention import CheckpointRetention
from checkpoints.savers import fresh_thread
from checkpoints.store import Store
from graphs.errors import (
    InterruptNotPendingError,
    InvalidInputError,
    JourneyFinishedError,
    RecursionLimitError,
    StepCrashedError,
)
from graphs.kernel.streaming import BREAKPOINT, NO_CALL, GraphCall, StreamSink, run_graph
from nodes.services import CHAIN_FLAG, REPLAY_FLAG, NodeServices
from nodes.telemetry import InstanceTelemetry, ObservedRun, observed_node, run_observed

GraphFactory = Callable[[], StateGraph[Any]]
# What a run ended with: its output (values, with ``__interrupt__`` when it stopped at one) or, for a
# streamed run, the thread's state.
Outcome = dict[str, Any] | StateSnapshot


@dataclass(frozen=True, slots=True)
class RunOptions:
    """How its caller (the server's run queue) wants one run carried out, passed along with the run.

    ``durability``: how the run checkpoints (None: the engine's own setting). A caller that retries a
    whole run after a crash may choose "exit" for journeys whose steps replay from the event log: the
    log already records each step, and the retried run replays those steps instead of executing them
    again. ``stream``: where the run's chunks go, for a run created for streaming. ``outcomes``: filled,
    per thread, with what the last run of that thread ended with. ``call``: the caller's config, context
    and interrupt_before/after for the graph run. ``logged_steps``: each step the run executes is durable in
    the event log before the next starts, and a run a crash cuts short is run again from the log, so it
    checkpoints only where it stops (see :data:`CONTINUATION`; a process's start outside a server's run).
    ``answering``: the interrupt a human's answer was given to (see :func:`addressed`); a resume of any other
    interrupt raises :class:`InterruptNotPendingError`.
    ``registered_with``: statements that a start's registration of its instance commits in its own
    statement (``Instances.start``): the server's bind of the run's thread. ``notes``: where the run's nodes
    note what they did (by key; a step journey's completed steps), reached as ``config["configurable"]``
    [:data:`NOTES`], for a caller that then need not read it back.
    """

    durability: Durability | None = None
    stream: StreamSink | None = None
    outcomes: dict[str, Outcome] | None = None
    call: GraphCall = NO_CALL
    logged_steps: bool = False
    answering: str | None = None
    registered_with: tuple[Statement, ...] = ()
    notes: dict[str, Any] | None = None


DEFAULT_RUN = RunOptions()
# How long a read of a journey's state waits for its lock before it answers the state as last committed (see
# JourneyEngine.reading): long enough for a quick call in flight to finish, short for a client polling progress.
READ_PATIENCE_S = 2.0
# The event that a run of the instance was cancelled on purpose (``runs.cancel``) where its payload's
# ``checkpoint_id`` stands (see :meth:`JourneyEngine.halt`).
HALTED = "run.halted"


@dataclass(frozen=True, slots=True)
class OnCancel:
    """What the current run does when it is cancelled (:data:`ON_CANCEL`).

    ``taken``: once its graph call has taken the cancel and writes its way out (see :func:`_to_its_end`): the
    server's run executor stops cancelling it again. ``halt``: inside the instance's lock (given the instance),
    before the lock goes: the server's run executor records a cancel asked for (:meth:`JourneyEngine.halt`) there,
    so no other caller, which would take the unrecorded halt for a crash's work and run it on, gets the journey
    first."""

    taken: Callable[[], None]
    halt: Callable[[str], Awaitable[None]]


ON_CANCEL: ContextVar[OnCancel | None] = ContextVar("journeys_on_cancel", default=None)
# Seconds a cancelled run's graph call has to end the work of its nodes before it is cancelled again: a cancel can be
# lost in a node's wait (Python 3.11's asyncio.wait_for, as psycopg_pool's wait for a connection uses it, drops one
# landing as its wait completes), and the run would go on to its next steps.
LOST_CANCEL_S = 5.0
# Seconds a cancelled run's graph call may take to write its way out, its nodes stopped, before it is cancelled
# again, loudly: LangGraph then stops waiting for those writes, which may land after the journey is let go.
UNWIND_S = 60.0
NOTES = "journeys_notes"  # the configurable key of a run's ``RunOptions.notes`` (no checkpoint metadata: not a scalar)
# A fired timer's continuation of a parked journey checkpoints when it stops (durability "exit"), unless the
# engine runs "sync": each of its steps is durable in the event log before the next starts, and a continuation
# a crash cuts short is delivered again from the wait's stored resolution, replaying the logged steps. Its
# intermediate checkpoints served nothing (a process cannot be forked) and were most of a continuation's cost.
# The runs of a graph compiled with ``logged_steps`` (a structured journey's) checkpoint the same way, and so does
# a process's start outside a server's run (its first run: one cut short before it stops has no checkpoint, and is
# run again from its first event, replaying the logged steps; see ProcessOrchestrator.start).
CONTINUATION = RunOptions(logged_steps=True)
log = structlog.get_logger("journeys.engine")
T = TypeVar("T")


def refuse_terminated(instance: Instance | None) -> None:
    """:class:`JourneyFinishedError` (409) for a terminated instance: its history is kept, but nothing more
    of it runs, whoever asks (an orchestrator's method, a server route, a run the worker picked up)."""
    if instance is not None and instance.status == TERMINATED:
        raise JourneyFinishedError(
            f"journey {instance.instance_id!r} was terminated: nothing more of it runs (its history is kept)",
            allowed=[],
            instance_id=instance.instance_id,
            status=TERMINATED,
        )


class JourneyEngine:
    """The one way a journey's graph runs, whatever its pattern: compiled once per design on the store's
    checkpointer, one writer per instance at a time (:meth:`exclusive`), and every run through :meth:`run`."""

    def __init__(
        self, store: Store, services: NodeServices, *, durability: Durability = "async", cache_size: int = 512
    ):
        self.store = store
        self.services = services
        self._durability: Durability = durability
        self._graphs: OrderedDict[str, CompiledStateGraph[Any, Any, Any, Any]] = OrderedDict()
        # The compiled graphs whose every step is in the event log (see :meth:`compiled`).
        self._logged_steps: weakref.WeakSet[CompiledStateGraph[Any, Any, Any, Any]] = weakref.WeakSet()
        self._cache_size = cache_size
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        # Set by the runtime: a thread with no checkpoint may be a finished journey retention deleted.
        self.retention: CheckpointRetention | None = None
        # Set by the instance lifecycle: the input to run a registered instance's start again with, when a crash
        # cut its first run short before it saved any checkpoint (None: it is not to be run again).
        self.start_again: Callable[[Instance], Awaitable[dict[str, Any] | None]] | None = None
        # Instances started and ended, by pattern, whichever orchestrator moved them (metrics).
        self.telemetry = InstanceTelemetry(store.index)
        store.index.on_created(self.telemetry.created)
        store.events.on_status(self.telemetry.status_changed)

    @property
    def durability(self) -> Durability:
        """How runs checkpoint unless a run's options say otherwise."""
        return self._durability

    def _durability_of(self, graph: CompiledStateGraph[Any, Any, Any, Any], options: RunOptions) -> Durability:
        """How a run checkpoints: as its options say, else as the engine does, except that "async" becomes
        "exit" when every step the run executes is durable in the event log before the next starts: a
        continuation (:data:`CONTINUATION`), or any run of a graph compiled with ``logged_steps``. A run a
        crash cuts short then replays its logged steps, so the checkpoints between its stops served only
        history and forks, and were a third of its cost. "sync" keeps every checkpoint."""
        if options.durability is not None:
            return options.durability
        logged = options.logged_steps or graph in self._logged_steps
        return "exit" if logged and self._durability == "async" else self._durability

    def compiled(
        self, cache_key: str, factory: GraphFactory, *, logged_steps: bool = False
    ) -> CompiledStateGraph[Any, Any, Any, Any]:
        """The compiled graph for a design, built once and kept in a small LRU. ``logged_steps``: every step
        of the graph is in the event log before the next starts, and a replaying run finds it there (its
        runs then checkpoint only where they stop unless the engine runs "sync")."""
        graph = self._graphs.get(cache_key)
        if graph is None:
            builder = factory()
            for name, node in builder.nodes.items():  # each spanned and timed (no LangChain callback handler)
                runnable = cast(Runnable[Any, Any], node.runnable)  # StateGraph.add_node made every node one
                builder.nodes[name] = dataclasses.replace(node, runnable=observed_node(name, runnable))
            graph = builder.compile(checkpointer=self.store.saver, store=self.store.graph_store, name=cache_key)
            graph.retry_policy = (LOST_DATABASE_RETRY,)  # every node without a policy of its own
            if logged_steps:
                self._logged_steps.add(graph)
            self._graphs[cache_key] = graph
            if len(self._graphs) > self._cache_size:
                self._graphs.popitem(last=False)
        else:
            self._graphs.move_to_end(cache_key)
        return graph

    @staticmethod
    def config(instance_id: str, *, replay: bool = False) -> RunnableConfig:
        configurable: dict[str, Any] = {"thread_id": instance_id}
        if replay:
            configurable[REPLAY_FLAG] = True
        return {"configurable": configurable}

    @asynccontextmanager
    async def exclusive(self, instance_id: str, *, wait: float | None = None) -> AsyncIterator[None]:
        """At most one writer per journey instance at a time, across processes.

        This process's callers queue on an in-process lock first (cheap, and first come first served);
        its holder then takes the store's lock for the instance (see ``checkpoints.locks``), which keeps
        other processes out. A caller that cannot have both within the store's wait limit (or ``wait``
        seconds, if shorter) gets :class:`ConcurrentUpdateError`. Read the instance's state inside the
        block, not before it.
        """
        locks = self.store.locks
        waited = locks.timeout if wait is None else min(wait, locks.timeout)
        deadline = asyncio.get_running_loop().time() + waited
        lock = self._locks.get(instance_id)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[instance_id] = lock
        try:
            async with asyncio.timeout_at(deadline):
                await lock.acquire()
        except TimeoutError:
            raise busy(instance_id, waited) from None
        try:
            async with locks.hold(instance_id, deadline):
                try:
                    yield
                except asyncio.CancelledError:
                    if (on_cancel := ON_CANCEL.get()) is not None:  # not cut by a cancel after this one
                        await _ended_regardless(asyncio.ensure_future(on_cancel.halt(instance_id)))
                    raise
        finally:
            lock.release()

    @asynccontextmanager
    async def reading(self, instance_id: str) -> AsyncIterator[bool]:
        """For a read of a journey's state (its status view): True when the read holds the journey, taken within
        :data:`READ_PATIENCE_S`, so that it may finish work a crash left in flight as under :meth:`exclusive`;
        False when another call holds it (an agent call of a minute, a compensation): the read then answers the
        state as last committed and finishes nothing, since that call is alive (a dead holder's lock is released
        with it) and moves the journey on itself. A read waiting out the whole lock timeout answered 409 instead,
        so a client polling a journey's progress never saw it move."""
        async with AsyncExitStack() as stack:
            try:
                await stack.enter_async_context(self.exclusive(instance_id, wait=READ_PATIENCE_S))
            except ConcurrentUpdateError as exc:
                if not held_elsewhere(exc):
                    raise
                held = False
            else:
                held = True
            yield held

    @asynccontextmanager
    async def acting(self, instance_id: str) -> AsyncIterator[Instance | None]:
        """:meth:`exclusive`, for a call that runs the instance on or changes it: the instance as it stands
        once the lock is held (None: not indexed), and :class:`JourneyFinishedError` for a terminated one.
        Read under the lock, since ``Instances.terminate`` takes it too: a check made before the lock could
        let a call that raced a termination run the terminated journey on."""
        async with self.exclusive(instance_id):
            instance = await self.store.index.get_instance(instance_id)
            refuse_terminated(instance)
            yield instance

    async def settled_state(
        self,
        graph: CompiledStateGraph[Any, Any, Any, Any],
        instance_id: str,
        *,
        options: RunOptions = DEFAULT_RUN,
        go_on: bool = False,
        resume_halted: bool = False,
    ) -> StateSnapshot:
        """The thread's state once any work a crash left in flight has been finished (call under ``exclusive``).

        For a graph whose steps are all logged, that includes a first run cut short before it saved any
        checkpoint (its runs checkpoint where they stop: one killed after its last step's event said
        ``completed``, say): it runs again from its first event, replaying the steps the log holds. Other
        patterns start such a run again their own way (``Instances.recover``, or their start). A thread its
        run's breakpoints stopped between nodes, or whose run was cancelled on purpose (:meth:`halt`), stays
        where it stopped unless ``go_on`` (see :func:`at_breakpoint`): a read never executes a cancelled step.
        ``resume_halted``: the caller moves the instance on now (a lifecycle event, a session action), so work a
        cancelled run stopped goes on first, as a run without input would (LangGraph runs a thread's pending
        tasks before it takes a new ``Command(resume=...)``), and a first run it cut short starts again."""
        snapshot = await graph.aget_state(self.config(instance_id))
        unsettled = in_flight(snapshot) or snapshot.created_at is None
        if unsettled and not (go_on or resume_halted) and await self.halted(instance_id, snapshot):
            return snapshot  # a run cancelled on purpose left it there: only a new run goes on
        if in_flight(snapshot) or (go_on and at_breakpoint(snapshot)):
            # Work left in flight is finished, unless the instance was terminated meanwhile: it stays as it stood.
            instance = await self.store.index.get_instance(instance_id)
            if instance is not None and instance.status == TERMINATED:
                return snapshot
            snapshot = await self.run_to_state(graph, instance_id, None, options=options)
        elif snapshot.created_at is None:  # no checkpoint at all: deleted by retention, or never saved?
            instance = await self.store.index.get_instance(instance_id)
            if self.retention is not None:
                await self.retention.check_state(instance)
            again = graph in self._logged_steps or resume_halted  # others: recovery starts a crashed one again
            if again and instance is not None and self.start_again is not None:
                start = await self.start_again(instance)
                if start is not None:
                    snapshot = await self.run_to_state(graph, instance_id, start, options=options)
        return snapshot

    async def halt(self, graph: CompiledStateGraph[Any, Any, Any, Any], instance_id: str) -> bool:
        """Record that a run of the instance was cancelled on purpose (``runs.cancel``; call under ``exclusive``
        once the run has stopped): the work it left in flight, or a first run it cut short before any
        checkpoint, stays where it stopped, as the Agent Server leaves a cancelled run's thread at its last
        checkpoint. Reads and recovery then leave it there (:meth:`settled_state`); a new run goes on from it
        (a run without input, or a retry). A crash leaves no such record: its work is still finished. Whether
        anything was left to halt.

        A first run stopped before the thread's first checkpoint leaves the thread the state that run started
        from, its first step pending, as LangGraph's input checkpoint would have: else reads would take the
        empty thread for a finished journey, and neither a cancellation nor a run without input found a step."""
        snapshot = await graph.aget_state(self.config(instance_id))
        # Any pending task, not only work in flight as it reads now: LangGraph writes a cancelled task's error once
        # the run has unwound, in a write nothing waits for, so a task cut beside a sibling that waits can still
        # read as a plain wait here, and then as work a crash left (a read would run it again) once its write lands.
        if not (snapshot.tasks or snapshot.next or snapshot.created_at is None):
            return False
        instance = await self.store.index.get_instance(instance_id)
        if instance is None:  # no journey (a chat thread): no log
            return False
        if snapshot.created_at is None and self.start_again is not None:
            start = await self.start_again(instance)
            if start is not None:
                await graph.aupdate_state(self.config(instance_id), start, as_node=START)
                snapshot = await graph.aget_state(self.config(instance_id))
        checkpoint = checkpoint_of(snapshot)
        step = next((t.name for t in snapshot.tasks if not t.interrupts), None)  # not a sibling that waits
        halted = NewEvent(HALTED, {"checkpoint_id": checkpoint}, step, f"{instance_id}:halted:{checkpoint}")
        await self.store.events.append(instance_id, [halted])
        return True

    async def halted(self, instance_id: str, snapshot: StateSnapshot) -> bool:
        """Whether the thread stands where a run cancelled on purpose left it (see :meth:`halt`): a later run
        that moved it on makes the record stale."""
        events = await self.store.events.list(instance_id, types=[HALTED])
        return bool(events) and events[-1].payload.get("checkpoint_id") == checkpoint_of(snapshot)

    async def run(
        self,
        graph: CompiledStateGraph[Any, Any, Any, Any],
        instance_id: str,
        value: dict[str, Any] | Command[Any] | None,
        *,
        replay: bool = True,
        fresh: bool = False,
        options: RunOptions = DEFAULT_RUN,
    ) -> Outcome:
        """Run the instance's thread (under ``exclusive``) and answer with the run's output when it has one,
        which saves reading the checkpoint back; a streamed run answers with the thread's state.

        Every run looks a keyed agent call up in the event log before making it: with durability
        "async" a checkpoint is written behind the run, so a crash can lose the checkpoint of a step
        whose completion event is already logged, and the resumed run (a repeated advance, say) would
        otherwise call that agent again. Only the first run of an instance registered in the same call,
        which cannot have logged any call yet, passes ``replay=False`` to skip the lookups; and ``fresh``, since
        nothing can have been saved on its thread either: LangGraph's read of the thread's latest checkpoint
        is answered without a round trip (:func:`~checkpoints.savers.fresh_thread`).

        A resume given for one interrupt (``options.answering``) is checked against the thread first: a
        repeated answer must not be taken as the answer to whatever the journey waits at by now.
        """
        if options.answering is not None and isinstance(value, Command):
            check_answering(await graph.aget_state(self.config(instance_id)), instance_id, options.answering)
        config = self.config(instance_id, replay=replay)
        if fresh:
            config["configurable"][CONFIG_KEY_CHECKPOINTER] = fresh_thread(self.store.saver, instance_id)
        if options.notes is not None:
            config["configurable"][NOTES] = options.notes
        durability = self._durability_of(graph, options)
        # A graph whose steps are logged, checkpointed only where it stops, writes each step's completion
        # behind it: the next step settles it before its work (see ``EventLog.write_behind``). Not
        # when the caller stops it before or after a node: its checkpoint there could overtake the write.
        between = durability == "exit" and not options.call.stops_between_nodes  # nothing stops between nodes
        behind = between and graph in self._logged_steps
        if between and options.stream is None:  # nobody watches it node by node: a node may run on (CHAIN_FLAG)
            config["configurable"][CHAIN_FLAG] = True
        # One span per run in the journey's trace, with the instance in every log line of the run; its nodes
        # (observed_node, as compiled) span and time themselves.
        with run_observed(instance_id, graph.name, await self.telemetry.describe(instance_id)) as observed:
            async with self.store.events.writing_behind(instance_id, behind):
                try:
                    output = await _to_its_end(
                        run_graph(graph, value, config, durability, options.stream, options.call), observed
                    )
                except GraphRecursionError as exc:  # a loop with no way out: the instance's failure, typed
                    raise RecursionLimitError(f"journey {instance_id!r} did not stop: {exc}") from exc
                except JourneyError:
                    raise
                except Exception as exc:
                    if (conflict := conflicted(exc)) is not None and unreachable(exc) is None:
                        await self._failed_by_conflict(graph, instance_id, conflict)
                    if _database_went_away(exc):  # an outage or a conflict: the caller's to run again, as raised
                        raise
                    if type(exc).__module__.startswith("langgraph."):  # the run's own refusal (a resume to an
                        raise  # interrupt it is not parked on, an empty input): the caller's, nothing failed
                    # Typed, so that it is recorded as the instance's failure (Instances.advance) and retried.
                    # A database's refusal is named as the database gave it (not SQLAlchemy's statement dump).
                    raised = refusal(exc) or exc
                    reason = " ".join(str(raised).split())
                    raise StepCrashedError(
                        f"journey {instance_id!r} failed: a step raised {type(raised).__name__}: {reason}; "
                        "retry it once the cause is fixed",
                        error_type=type(raised).__name__,
                    ) from exc
        outcome = output if output is not None else await graph.aget_state(self.config(instance_id))
        if options.outcomes is not None:
            options.outcomes[instance_id] = outcome
        return outcome

    async def _failed_by_conflict(
        self, graph: CompiledStateGraph[Any, Any, Any, Any], instance_id: str, conflict: BaseException
    ) -> None:
        """A run the database rolled back for a conflict: when a step's conflict outlasted its retries
        (:data:`LOST_DATABASE_RETRY`), LangGraph recorded it as the step's failure, and the thread stands failed
        there; raised typed, so that the instance is recorded ``failed`` as for any step's failure (its row stayed
        ``in_progress`` beside a failed thread) and retried there. A conflict outside the steps failed none: the
        caller runs it again, as raised."""
        if failed_task_of(await graph.aget_state(self.config(instance_id))) is None:
            return
        reason = " ".join(str(conflict).split())
        raise StepCrashedError(
            f"journey {instance_id!r} failed: a step's database write kept conflicting with other work on the "
            f"database ({type(conflict).__name__}: {reason}) through its retries; retry it",
            error_type=type(conflict).__name__,
        ) from conflict

    async def run_to_state(
        self,
        graph: CompiledStateGraph[Any, Any, Any, Any],
        instance_id: str,
        value: dict[str, Any] | Command[Any] | None,
        *,
        replay: bool = True,
        options: RunOptions = DEFAULT_RUN,
    ) -> StateSnapshot:
        """:meth:`run`, answering with the thread's state after the run."""
        outcome = await self.run(graph, instance_id, value, replay=replay, options=options)
        return outcome if isinstance(outcome, StateSnapshot) else await graph.aget_state(self.config(instance_id))


def _database_went_away(error: Exception) -> bool:
    return unreachable(error) is not None or conflicted(error) is not None


async def _to_its_end(call: Awaitable[T], observed: ObservedRun) -> T:
    """A run's graph call, made in a task of its own that a cancel of the caller reaches once: LangGraph then writes
    the run's last checkpoint and pending writes on its way out and waits for them (its loop's exit), and a second
    cancel landing in that wait (a re-cancel of a cancel that looked lost, a second ``runs.cancel``, a shutdown)
    would cut it short, so that they landed after the run's halt was recorded and its journey let go. The caller
    returns, or raises, once the call has ended, its writes landed; further cancels of the caller are answered then.

    ``observed``: the run, whose nodes say whether one is at work. A cancel lost in a node's wait leaves it at work,
    and the call is cancelled again every :data:`LOST_CANCEL_S`; once its nodes have stopped it is only writing, and
    is cancelled again, with an error logged, only past :data:`UNWIND_S`. No step of it begins once it was cancelled
    (``ObservedRun.stop``): a node whose work lost the cancel and ended does not go on to the next step meanwhile."""
    running = asyncio.ensure_future(call)
    try:
        return await asyncio.shield(running)
    except asyncio.CancelledError:
        if running.done() and not running.cancelled():
            # Ended in the pass of the loop the cancel came in, its work done and its writes landed: the cancel came
            # too late to stop anything, and what the call ended with stands (a run recorded interrupted, with a halt
            # where the finished call left its journey, would say its step did not happen). Its cancel is taken.
            if (caller := asyncio.current_task()) is not None:
                caller.uncancel()
            if (on_cancel := ON_CANCEL.get()) is not None:
                on_cancel.taken()
            log.info("a run's cancel came as its graph call ended; the call's outcome stands")
            return running.result()
        if running.done():
            raise
        if (on_cancel := ON_CANCEL.get()) is not None:
            on_cancel.taken()
        observed.stop()
        running.cancel()
        clock = asyncio.get_running_loop()
        since = clock.time()

        def looked() -> None:
            nonlocal since
            if observed.working():
                log.warning("a run's cancel was lost in a node's work; it is cancelled again")
                running.cancel()
            elif clock.time() - since >= UNWIND_S:
                log.error(
                    "a cancelled run did not write its way out in time; LangGraph stops waiting for its last writes, "
                    "which may land after its journey is let go",
                    waited_s=round(clock.time() - since, 1),
                )
                running.cancel()
                since = clock.time()

        await _ended_regardless(running, LOST_CANCEL_S, looked)
        if running.cancelled() or running.exception() is None:
            raise  # the caller's cancel, also when the call ran to its end regardless
        return running.result()  # raises what the call raised on its way out


async def _ended_regardless(
    task: asyncio.Future[Any], every: float | None = None, looked: Callable[[], None] = lambda: None
) -> None:
    """Return once ``task`` has ended, part of a cancelled caller's way out: cancels of the caller meanwhile are
    answered by the cancel it is leaving on already. ``looked`` is called every ``every`` seconds until then."""
    while not task.done():
        try:
            await asyncio.wait({task}, timeout=every)
        except asyncio.CancelledError:
            continue
        if not task.done():
            looked()


# A step the database went away under (a restart, a failover: a write's connection ended) runs again in the
# same run, as a crash's recovery would run it (its logged agent calls replay): without this, LangGraph recorded
# the driver's error as the step's failure, and once the database answered the journey stood "failed" there.
# So does a step whose write the database rolled back for a conflict (a deadlock, a lock timeout), up to the
# policy's attempts: a conflict that persists is the step's failure, where an outage is waited out by the run.
LOST_DATABASE_RETRY = RetryPolicy(initial_interval=0.5, max_attempts=5, retry_on=_database_went_away)


def in_flight(snapshot: StateSnapshot) -> bool:
    """Pending work that is neither waiting for a human nor a recorded failure: a crash interrupted it, or a
    cancellation (a run cancelled on purpose, see :meth:`JourneyEngine.halt`; a shutdown).

    That includes a superstep whose tasks all finished (their writes are saved) but whose next
    checkpoint a crash lost: LangGraph then lists the tasks but no ``next``, and resuming the thread
    applies their writes and goes on without running them again. A task cancelled mid-work is in flight even
    beside a sibling branch that waits for a human: its work stands undone (see :func:`cancelled`).
    """
    if failed_task_of(snapshot) is not None or at_breakpoint(snapshot):
        return False
    cut = any(t.error is not None for t in snapshot.tasks)  # every error a cancellation (no failure, above)
    waits = any(t.interrupts for t in snapshot.tasks)
    return bool(snapshot.next or snapshot.tasks) and (cut or not waits)


def cancelled(error: object) -> bool:
    """Whether a task's recorded error is a cancellation, which failed nothing. LangGraph records a cancelled
    task's ``CancelledError`` as its error (whoever cancelled it: ``runs.cancel``, a shutdown, a sibling's
    failure); read back from a checkpoint, an error is its text (``"CancelledError()"``), not the exception."""
    if isinstance(error, str):
        return error.startswith("CancelledError")
    return isinstance(error, asyncio.CancelledError) or type(error).__name__ == "CancelledError"


def checkpoint_of(snapshot: StateSnapshot) -> str | None:
    """The id of the checkpoint ``snapshot`` was read from (None: the thread has none)."""
    checkpoint = (snapshot.config or {}).get("configurable", {}).get("checkpoint_id")
    return str(checkpoint) if checkpoint else None


def at_breakpoint(snapshot: StateSnapshot) -> bool:
    """Stopped between two nodes by its run's interrupt_before/after: parked (not in flight) until a run without
    input goes on (``settled_state(go_on=True)``), as LangGraph's run without input does."""
    return bool(snapshot.next) and bool((snapshot.metadata or {}).get(BREAKPOINT))


def failed_task_of(snapshot: StateSnapshot) -> PregelTask | None:
    """The task that failed, with its error: not one a cancellation stopped (:func:`cancelled`), whose work is
    in flight, nor a sibling branch a failure cancelled. None: nothing failed."""
    return next((t for t in snapshot.tasks if t.error and not cancelled(t.error)), None)


def failed_task(snapshot: StateSnapshot) -> str | None:
    """The name of the task that failed (see :func:`failed_task_of`)."""
    failed = failed_task_of(snapshot)
    return None if failed is None else failed.name


def stands_failed(snapshot: StateSnapshot) -> bool:
    """Whether the thread stands failed, for a retry to run on: at a failed task (see :func:`failed_task_of`), or
    ended there by a node that recorded its failure (a saga's compensation that failed for good: the retry resumes
    it at that handler)."""
    ended_failed = not snapshot.next and (snapshot.values or {}).get("status") == "failed"
    return ended_failed or failed_task_of(snapshot) is not None


# LangGraph's test for a resume that maps interrupt ids to answers (``Command(resume={id: answer})``): a
# non-empty dict whose keys are all interrupt ids, 32 hex digits (``langgraph.pregel._utils``).
_INTERRUPT_ID = re.compile(r"[0-9a-f]{32}")


def addressed(resume: Any) -> tuple[str | None, Any]:
    """The interrupt a resume value answers, and the answer: LangGraph's addressed form
    ``{interrupt_id: answer}`` names it; any other value answers whatever the journey waits at (None).
    A journey waits at one interrupt at a time: a map answering several is refused."""
    if not (
        isinstance(resume, dict) and resume and all(isinstance(k, str) and _INTERRUPT_ID.fullmatch(k) for k in resume)
    ):
        return None, resume
    if len(resume) > 1:
        raise InvalidInputError(
            f"command.resume answers {len(resume)} interrupts; a journey waits at one interrupt at a time: "
            "answer one interrupt per run",
            interrupts=sorted(resume),
        )
    [(interrupt_id, answer)] = resume.items()
    return interrupt_id, answer


def pending_interrupts(snapshot: StateSnapshot) -> list[str]:
    """The ids of the interrupts the thread waits at."""
    return [pending.id for task in snapshot.tasks for pending in task.interrupts]


def check_answering(snapshot: StateSnapshot, instance_id: str, interrupt_id: str | None) -> None:
    """:class:`InterruptNotPendingError` unless the instance's thread waits at ``interrupt_id`` (None: any
    answer goes to whatever it waits at)."""
    if interrupt_id is None:
        return
    waiting = pending_interrupts(snapshot)
    if interrupt_id not in waiting:
        raise InterruptNotPendingError(
            f"journey {instance_id!r} does not wait at interrupt {interrupt_id!r}: it was answered already, or the "
            "journey moved on; read the thread's state for the interrupt it waits at now",
            allowed=waiting,
            interrupt_id=interrupt_id,
        )


def resume_pending(snapshot: StateSnapshot, value: Any) -> Command[Any]:
    """Resume the interrupt the thread waits on, addressed by its id.

    A bare ``Command(resume=value)`` is not enough: LangGraph reads a dict whose keys all look like
    interrupt ids as a map of answers, so an empty result ``{}`` would be taken for an empty map and
    silently answer nothing.
    """
    for task in snapshot.tasks:
        for pending in task.interrupts:
            return Command(resume={pending.id: value})
    return Command(resume=value)


def waiting_for(snapshot: StateSnapshot) -> dict[str, Any] | None:
    """The payload of the human task the thread waits on, if any."""
    for task in snapshot.tasks:
        for pending in task.interrupts:
            value = pending.value
            return dict(value) if isinstance(value, dict) else {"value": value}
    return None

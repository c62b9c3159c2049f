"""One lifecycle for every journey instance, whatever its pattern: start (with duplicate detection),
advance, retry, cancel, fail and recover.

Orchestrators keep their public API and their views; the moves of an instance go through here:

- **start**: the instance's index row and its first event commit in one transaction before its graph
  runs, so an accepted start is durable: a start that a crash cuts short before the first checkpoint is
  finished by :meth:`Instances.recover` (or by starting it again with the same id), from its first event.
- **advance**: a run of the instance's thread, through ``JourneyEngine.run`` (the one way to run a graph).
- **fail**: one event, :data:`FAILED`, naming the pattern and what failed.
- **retry**: the failed task runs again, after one retry event.
- **cancel**: one event, and the instance is ``cancelled``.
- **recover**: one pass over every open instance of every pattern.
- **flow control** (:mod:`graphs.kernel.flow`): a start may carry a start key (an earlier start with
  the same key answers instead) and a concurrency key (queued or refused above its limit); queued
  starts run when a slot frees (:meth:`Instances.dispatch_queued`).
"""

from __future__ import annotations

import ast
import contextlib
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import isodate
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Command, StateSnapshot

from checkpoints.backends.base import Statement
from checkpoints.errors import (
    CheckpointsDeletedError,
    ConcurrentUpdateError,
    DuplicateInstanceError,
    InvalidInputError,
    JourneyError,
)
from checkpoints.events import Event, NewEvent
from checkpoints.flow import ENDED_STATUSES, TERMINATED, TERMINATED_EVENT, FlowControl
from checkpoints.index import Instance
from checkpoints.ownership import Owner, acting_as, current_owner
from checkpoints.process.timers import TimerStore
from checkpoints.process.waits import cancel_pending
from checkpoints.schema.widths import INSTANCE_USER
from checkpoints.values import check_value
from graphs.errors import (
    DeadlineExceededError,
    InterruptNotPendingError,
    JourneyFinishedError,
    JourneyNotFoundError,
    StartKeyConflictError,
    StepCrashedError,
)
from graphs.kernel.engine import (
    DEFAULT_RUN,
    JourneyEngine,
    Outcome,
    RunOptions,
    at_breakpoint,
    failed_task,
    in_flight,
    pending_interrupts,
    refuse_terminated,
)
from graphs.kernel.evaluation import Evaluation
from graphs.kernel.flow import (
    DEADLINE_PASSED,
    DEADLINE_PURPOSE,
    DEQUEUED,
    QUEUED,
    ConcurrencyLimitError,
    DeadlineSpec,
    ExistingStart,
    StartControls,
)
from graphs.kernel.forks import Fork, Forkable, fork_point, new_fork_id, refuse, register_fork
from nodes.services import FAILED, failure

Graph = CompiledStateGraph[Any, Any, Any, Any]
__all__ = ["FAILED", "OPEN_STATUSES", "Instances", "Recoverable", "failure", "never_checkpointed", "refuse_ended"]

# Statuses of an instance that may still have work to finish (the others are final, or wait for a person
# in a way recovery cannot change): a saga compensating, a lifecycle journey pending/active/rolling back.
OPEN_STATUSES = ("in_progress", "compensating", "pending", "active", "rollback")
# What a deadline's failure event says.
DEADLINE_FAILURE = {"error": "the journey's deadline passed before it ended", "error_type": "DeadlineExceededError"}
# Registering an instance with a start key or a concurrency slot retries when another start wins a race.
_REGISTER_ATTEMPTS = 20
# Statuses nothing can take an instance out of (a failed one may still be retried).
FINAL_STATUSES = (*(s for s in ENDED_STATUSES if s != "failed"), "closed")


def refuse_ended(instance: Instance | None) -> None:
    """:class:`JourneyFinishedError` (409) for an instance that has ended otherwise than failed (completed,
    compensated, cancelled, terminated, closed): its failed task may still stand in its thread, but a retry
    must not run it on. Read the instance under its lock (``exclusive``), as every retry does."""
    refuse_terminated(instance)
    if instance is not None and instance.status in FINAL_STATUSES:
        raise JourneyFinishedError(
            f"journey {instance.instance_id!r} has ended ({instance.status}): nothing of it runs again",
            allowed=[],
            instance_id=instance.instance_id,
            status=instance.status,
        )


# An error as a checkpoint keeps it: LangGraph's serializer stores an exception as its ``repr``.
_KEPT_ERROR = re.compile(r"([A-Za-z_]\w*)\((.*)\)", re.DOTALL)


def kept_failure(error: object) -> JourneyError:
    """The failure to record for a task's error as its checkpoint kept it (for a failure a crash kept from the log):
    the error itself, or, for its text (``ClassName('message')``), its message with its type, so that the log
    names the error the run raised, as :meth:`Instances.fail` records it when the run raises it."""
    if isinstance(error, JourneyError):
        return error
    if isinstance(error, BaseException):
        return StepCrashedError(str(error), error_type=type(error).__name__)
    text = str(error)
    if (found := _KEPT_ERROR.fullmatch(text)) is None:
        return StepCrashedError(text, error_type=JourneyError.__name__)
    try:
        message = ast.literal_eval(found[2]) if found[2] else ""
    except (ValueError, SyntaxError, MemoryError, RecursionError):  # not one literal: keep the text as it is
        message = found[2]
    return StepCrashedError(message if isinstance(message, str) else text, error_type=found[1])


def error_details(exc: JourneyError) -> dict[str, Any]:
    """What a failure event records of ``exc``: its message and type (for a step that raised an error none of
    the runtime's, the type of that error)."""
    return {"error": str(exc), "error_type": exc.error_type if isinstance(exc, StepCrashedError) else exc.code}


@dataclass(frozen=True, slots=True)
class Recoverable:
    """What a pattern tells the kernel so that :meth:`Instances.recover` can finish its instances.

    ``graph``: the compiled graph an instance runs on. ``start_input``: the input of the instance's
    first run, rebuilt from its first event (for a start a crash cut short before the first checkpoint).
    ``before``/``after``: the pattern's own recovery, run before/after its instances are settled (a
    process settles cut-short migrations first and delivers resolved waits after); each returns the ids
    of the instances it resumed.
    """

    patterns: tuple[str, ...]
    graph: Callable[[Instance], Awaitable[Graph]]
    start_input: Callable[[Instance, Event], Awaitable[dict[str, Any]]]
    before: Callable[[], Awaitable[list[str]]] | None = None
    after: Callable[[], Awaitable[list[str]]] | None = None
    # The pattern's end of a run whose deadline passed (under ``exclusive``): it logs ``passed`` and fails
    # the instance, or compensates when ``on_expiry`` says so and the pattern can.
    expire: Callable[[Instance, Graph, str, NewEvent], Awaitable[None]] | None = None
    # How its instances are forked at a step (:mod:`graphs.kernel.forks`); None: they cannot be.
    fork: Forkable | None = None
    # An instance's start controls (its spec's concurrency limit and the key's value its start took), which a
    # fork of it and a retry of it once it failed run under as its start did; None: its pattern has none.
    controls: Callable[[Instance], Awaitable[StartControls | None]] | None = None
    # Statements the pattern adds to a termination's transaction (the instance, and the moment its event
    # records): its own rows that say where an instance stands (a lifecycle's state row), so that they say it
    # ended with it, as a rebuild from that event says too.
    terminated: Callable[[str, datetime], Sequence[Any]] | None = None  # statements checkpoints/ builds


class Instances:
    """The lifecycle every orchestrator's instances go through (one per engine, reached as
    ``DesignBook.instances``)."""

    def __init__(self, engine: JourneyEngine) -> None:
        self.engine = engine
        self.index = engine.store.index
        self.events = engine.store.events
        self.flow = FlowControl(engine.store.backend, engine.store.clock)
        self.timers = TimerStore(engine.store.backend, engine.store.clock)
        self.evaluation = Evaluation(self.events)  # evaluators and prices for the runs of specs with a workflow tier
        self._kinds: dict[str, Recoverable] = {}
        engine.start_again = self._start_again

    def register(self, kind: Recoverable) -> None:
        """Let :meth:`recover` finish the instances of ``kind.patterns``."""
        for pattern in kind.patterns:
            self._kinds[pattern] = kind

    # --- start ---------------------------------------------------------------------------------------

    async def create(
        self,
        instance_id: str,
        design_id: str,
        pattern: str,
        user_id: str,
        first_event: NewEvent,
        graph: Graph,
        *,
        controls: StartControls | None = None,
        joined: Sequence[Statement] = (),
    ) -> Instance | None:
        """Register the instance with its first event, in one transaction (call under ``exclusive``), with
        ``joined`` (statements of the caller's: see ``RunOptions.registered_with``).

        An id registered before is refused with :class:`DuplicateInstanceError`, unless a crash cut its
        start short before the first checkpoint: None then, and the caller runs the start again (with
        ``replay``, so that work its first try logged is not done twice). A queued instance, or one
        that ``controls.start_key`` names, raises :class:`ExistingStart`: the caller answers that one.
        With a concurrency key and no free slot, the instance is registered ``queued`` (its caller does
        not run it) or refused with :class:`ConcurrencyLimitError`, as the spec says.

        Its user and its first event's payload (what the caller started it with) are checked first: a value
        no store can keep is refused (:class:`InvalidInputError`) before anything is written.
        """
        if not isinstance(user_id, str) or len(user_id) > INSTANCE_USER:
            raise InvalidInputError(f"the user id must be a string of at most {INSTANCE_USER} characters")
        check_value(user_id, "user_id")
        check_value(first_event.payload, "input")
        register = (instance_id, design_id, pattern, user_id, first_event, graph, joined)
        if controls is None:
            return await self._register(*register)
        if controls.deadline is not None:
            await self._arm_deadline(instance_id, controls.deadline)
        for _attempt in range(_REGISTER_ATTEMPTS):
            status, also = "in_progress", []
            if controls.start_key is not None:
                existing = await self.started_with(controls.start_key, pattern)
                if existing is not None and existing != instance_id:
                    raise ExistingStart(existing)
                if existing == instance_id:  # this very start again: go on with one a crash cut short
                    try:
                        return await self._register(*register)
                    except DuplicateInstanceError:
                        raise ExistingStart(instance_id) from None
                if existing is None:
                    await self.flow.drop_expired(controls.start_key)
                    expires_at = self.engine.store.clock.now() + controls.window
                    also.append(self.flow.claim_key(controls.start_key, instance_id, expires_at))
            key = controls.concurrency_key
            if key is not None and controls.concurrency is not None:
                limit = controls.concurrency.limit
                slot = await self.flow.free_slot(key, limit)
                if slot is not None:
                    also.append(self.flow.take_slot(key, slot, instance_id))
                elif controls.concurrency.on_limit == "reject":
                    raise ConcurrencyLimitError(
                        f"{limit} journey(s) with {key} are running already, the limit of its spec",
                        concurrency_key=key,
                        limit=limit,
                    )
                else:
                    status = QUEUED
                    also.append(self.flow.queue(instance_id, key, limit))
            try:
                return await self.index.create_instance(
                    instance_id,
                    design_id,
                    pattern,
                    user_id,
                    first_event=first_event,
                    status=status,
                    also=also,
                    joined=joined,
                )
            except DuplicateInstanceError:
                if await self.index.get_instance(instance_id) is not None:
                    return await self._register(*register)
                # Another start took the key or the slot meanwhile: look again.
        raise ConcurrentUpdateError(f"could not register {instance_id!r}: its start key or slots kept changing")

    async def started_with(self, start_key: str, pattern: str) -> str | None:
        """The journey ``start_key`` began within its window (None: none), for a start of ``pattern``. One of
        another pattern is refused (:class:`StartKeyConflictError`): a journey answers a start of its own
        kind only (a process's view of a saga cannot be built)."""
        existing = await self.flow.started_with(start_key)
        if existing is None:
            return None
        found = await self.index.get_instance(existing)
        if found is not None and found.pattern != pattern:
            raise StartKeyConflictError(
                f"start key {start_key!r} began {found.pattern} journey {existing!r} within its window; "
                f"give this {pattern} start another key",
                start_key=start_key,
                instance_id=existing,
            )
        return existing

    async def _arm_deadline(self, instance_id: str, deadline: DeadlineSpec) -> None:
        """Arm the instance's deadline before it is registered, so no registered instance lacks it (a timer
        of a start refused or cut short finds no instance when it fires, and is dropped)."""
        now = self.engine.store.clock.now()
        after = deadline.after
        arm = self.timers.schedule_row(
            f"deadline:{instance_id}",
            element="(deadline)",
            purpose=DEADLINE_PURPOSE,
            definition={"duration": after if isinstance(after, str) else isodate.duration_isoformat(deadline.duration)},
            due_at=deadline.due(now),
            origin=now,
            instance_id=instance_id,
            data={"on_expiry": deadline.on_expiry},
        )
        await self.timers.execute([arm])

    async def expire(self, instance_id: str, on_expiry: str, due_at: datetime) -> bool:
        """The instance's deadline has passed: unless it has ended, log it and end it as ``on_expiry`` says
        (a queued instance never starts: it fails). False when there was nothing to end."""
        instance = await self.index.get_instance(instance_id)
        kind = None if instance is None else self._kinds.get(instance.pattern)
        if instance is None or kind is None or kind.expire is None:
            return False
        passed = NewEvent(
            DEADLINE_PASSED, {"deadline": due_at.isoformat(), "on_expiry": on_expiry}, None, passed_key(instance_id)
        )
        graph = await kind.graph(instance)
        async with self.engine.exclusive(instance_id):
            instance = await self.index.get_instance(instance_id)  # read under the lock: it may have ended
            if instance is None or not await self._may_run_on(instance, graph):
                return False
            if instance.status == QUEUED:
                failed = failure(instance.pattern, "deadline", DEADLINE_FAILURE)
                await self.events.append(
                    instance_id, [passed, failed], status="failed", also=[self.flow.unqueue(instance_id)]
                )
            else:
                await kind.expire(instance, graph, on_expiry, passed)
        return True

    async def _may_run_on(self, instance: Instance, graph: Graph) -> bool:
        """Whether the instance has not ended for good: it is open, or it failed at a task that a retry would run
        again and its deadline has not expired it yet (a deadline is a fixed moment, which a failure does not
        hold off)."""
        instance_id = instance.instance_id
        if instance.status not in ENDED_STATUSES:
            return True
        if instance.status != "failed" or await self.events.find_by_key(instance_id, passed_key(instance_id)):
            return False
        return failed_task(await graph.aget_state(self.engine.config(instance_id))) is not None

    async def _register(
        self,
        instance_id: str,
        design_id: str,
        pattern: str,
        user_id: str,
        first_event: NewEvent,
        graph: Graph,
        joined: Sequence[Statement],
    ) -> Instance | None:
        try:
            return await self.index.create_instance(
                instance_id, design_id, pattern, user_id, first_event=first_event, joined=joined
            )
        except DuplicateInstanceError:
            found = await self.index.get_instance(instance_id)
            # Its thread deleted, a terminated journey has no checkpoint either: it is not a start cut short.
            refuse_terminated(found)
            if found is not None and found.status == QUEUED:
                raise ExistingStart(instance_id) from None
            # No checkpoint because retention deleted them: a finished journey, not a start a crash cut short.
            retention = self.engine.retention
            if found is not None and retention is not None and await retention.deleted_at(found) is not None:
                raise
            if (await graph.aget_state(self.engine.config(instance_id))).values:
                raise
            return None

    async def start(
        self,
        graph: Graph,
        instance_id: str,
        design_id: str,
        pattern: str,
        user_id: str,
        first_event: NewEvent,
        initial: dict[str, Any],
        *,
        cause: str = "run",
        options: RunOptions = DEFAULT_RUN,
        controls: StartControls | None = None,
    ) -> tuple[Instance | None, Outcome]:
        """Register the instance (see :meth:`create`) and run its first run from ``initial`` (under
        ``exclusive``; a failure is recorded as in :meth:`advance`). Answers the instance registered
        (None: a start resumed) and the run's outcome (empty for a queued instance, which does not run)."""
        joined = options.registered_with  # the server's bind of the run's thread, say
        created = await self.create(
            instance_id, design_id, pattern, user_id, first_event, graph, controls=controls, joined=joined
        )
        if created is not None and created.status == QUEUED:
            return created, {}
        # The first run of an instance registered just now has no logged work to look up; a resumed
        # start (one a crash cut short) looks each keyed unit of work up before doing it.
        outcome = await self.advance(
            graph,
            instance_id,
            pattern,
            initial,
            replay=created is None,
            fresh=created is not None,
            cause=cause,
            options=options,
        )
        return created, outcome

    # --- advance, fail, retry, cancel ----------------------------------------------------------------

    async def advance(
        self,
        graph: Graph,
        instance_id: str,
        pattern: str,
        value: dict[str, Any] | Command[Any] | None,
        *,
        replay: bool = True,
        fresh: bool = False,
        cause: str = "run",
        options: RunOptions = DEFAULT_RUN,
    ) -> Outcome:
        """Run the instance's thread on (under ``exclusive``). A run that fails is recorded (see :meth:`fail`,
        with ``cause``) and its error raised: the failure is in the checkpoint, and the run can be retried
        from there. ``replay`` and ``fresh``: see :meth:`JourneyEngine.run`."""
        try:
            return await self.engine.run(graph, instance_id, value, replay=replay, fresh=fresh, options=options)
        except InterruptNotPendingError:  # a repeated answer: nothing ran, so nothing failed
            raise
        except JourneyError as exc:
            await self.fail(instance_id, pattern, exc, cause=cause)
            raise

    async def fail(
        self, instance_id: str, pattern: str, exc: JourneyError, *, cause: str = "run", step: str | None = None
    ) -> None:
        """Record that a run of the instance failed: its failure is in the checkpoint, and the instance is
        ``failed`` until it is retried."""
        await self.events.append(instance_id, [failure(pattern, cause, error_details(exc), step)], status="failed")

    async def retry(
        self, graph: Graph, instance_id: str, retried: str, *, settle: bool = True, by: str | None = None
    ) -> str | None:
        """Under ``exclusive``: when the thread stopped at a failed task, or at one a run cancelled on purpose
        left in flight (``JourneyEngine.halt``), log ``retried`` for it (the instance is ``in_progress``
        again) and answer the task's name; None when there is none. The
        caller then runs the thread on. ``settle``: finish work a crash left in flight first. An instance that
        ended otherwise than failed is refused (:func:`refuse_ended`, nothing logged or settled) while its thread
        still stands at a task; with none, there is nothing to retry (None), as for any instance. ``by``: who
        retried it (the event names them, for the audit)."""
        config = self.engine.config(instance_id)
        instance = await self.index.get_instance(instance_id)
        if instance is not None and instance.status in FINAL_STATUSES:
            if (await graph.aget_state(config)).next:  # a failed or cut-short task stands, but nothing of it runs
                refuse_ended(instance)
            return None
        snapshot = await self.engine.settled_state(graph, instance_id) if settle else await graph.aget_state(config)
        failed = failed_task(snapshot)
        if failed is None and in_flight(snapshot) and await self.engine.halted(instance_id, snapshot):
            # A run cancelled on purpose: its step runs on now (not a sibling branch that waits).
            failed = next((t.name for t in snapshot.tasks if not t.interrupts), None)
        if failed is not None:
            await self.refuse_past_deadline(instance_id)
            payload = {} if by is None else {"by": by}
            await self._run_again(instance_id, instance, NewEvent(retried, payload, failed))
        return failed

    async def _run_again(self, instance_id: str, instance: Instance | None, retried: NewEvent) -> None:
        """Log ``retried`` and make the instance ``in_progress`` again. A failed one freed its concurrency slot
        (a failure must not hold its key's other journeys back), so it takes one again in the same transaction,
        as its start did, or is refused (:class:`ConcurrencyLimitError`) while its key's slots are all held."""
        kind = None if instance is None or instance.status not in ENDED_STATUSES else self._kinds.get(instance.pattern)
        for _attempt in range(_REGISTER_ATTEMPTS):
            free = None
            if kind is not None and instance is not None:
                free = await self._slot_under(kind, instance, "a retry counts too", instance.owned_by)
            also = [] if free is None else [self.flow.held_slot(*free, instance_id)]
            try:
                await self.events.append(instance_id, [retried], status="in_progress", also=also)
                return
            except Exception as exc:
                if not (also and self.engine.store.backend.is_unique_violation(exc)):
                    raise
                # Another start or retry took that slot meanwhile: look again.
        raise ConcurrentUpdateError(f"could not retry {instance_id!r}: its key's slots kept changing")

    async def before_move(
        self, graph: Graph, instance_id: str, options: RunOptions = DEFAULT_RUN, *, go_on: bool = False
    ) -> StateSnapshot:
        """The instance's state under its lock, for a call that moves it on now (an advance, a lifecycle event,
        a run without input): work a run cancelled on purpose stopped (``JourneyEngine.halt``) goes on first, as
        a run without input would (LangGraph runs a thread's pending tasks before it takes a new
        ``Command(resume=...)``), so the move applies where that work leaves the instance. ``go_on``: a run
        without input, which also goes on from where breakpoints stopped it. Nothing stopped goes on past the
        instance's deadline (:class:`DeadlineExceededError`), whether or not the scheduler has fired it yet. Work
        that fails as it goes on is recorded as :meth:`advance` records a run's failure, and its error raised.

        An answer addressed to an interrupt (``options.answering``) the instance does not wait at now is refused
        (:class:`InterruptNotPendingError`) before anything goes on: the interrupt the stopped work will reach
        does not exist yet, so the answer cannot be for it (a repeated answer, say), and the work must not run
        for an answer that is then refused."""
        snapshot = await self.engine.settled_state(graph, instance_id, options=options)
        if not (in_flight(snapshot) or (go_on and at_breakpoint(snapshot))):
            return snapshot
        if options.answering is not None and options.answering not in pending_interrupts(snapshot):
            stopped = [t.name for t in snapshot.tasks if not t.interrupts]
            raise InterruptNotPendingError(
                f"journey {instance_id!r} does not wait at interrupt {options.answering!r}: its work stands "
                f"stopped at {', '.join(stopped) or 'its next node'} (by a cancelled run, or a breakpoint), and "
                "nothing was run for this answer; go on with a run without input, then answer the interrupt it waits "
                "at then",
                allowed=pending_interrupts(snapshot),
                interrupt_id=options.answering,
            )
        await self.refuse_past_deadline(instance_id)
        try:
            return await self.engine.settled_state(graph, instance_id, options=options, go_on=go_on, resume_halted=True)
        except JourneyError as exc:
            if (instance := await self.index.get_instance(instance_id)) is not None:
                await self.fail(instance_id, instance.pattern, exc)
            raise

    async def settled(self, graph: Graph, instance_id: str, options: RunOptions = DEFAULT_RUN) -> StateSnapshot:
        """``JourneyEngine.settled_state`` for a read (under ``exclusive``): work a crash left in flight that fails
        as it is finished is recorded as :meth:`advance` records a run's failure (the instance is ``failed``, and
        can be retried), and the read answers the state it failed in rather than the step's error."""
        try:
            return await self.engine.settled_state(graph, instance_id, options=options)
        except CheckpointsDeletedError:  # a finished instance's state retention deleted: not a failure
            raise
        except JourneyError as exc:
            if (instance := await self.index.get_instance(instance_id)) is not None:
                await self.fail(instance_id, instance.pattern, exc)
            return await graph.aget_state(self.engine.config(instance_id))

    async def refuse_past_deadline(self, instance_id: str) -> None:
        """:class:`DeadlineExceededError` once the instance's deadline is due, whether or not a scheduler has
        fired it yet: nothing of a journey runs after its deadline (Temporal's execution timeout)."""
        deadline = await self.timers.get(f"deadline:{instance_id}")
        if deadline is not None and deadline.due_at <= self.engine.store.clock.now():
            raise DeadlineExceededError(
                f"the deadline of journey {instance_id!r} passed at {deadline.due_at.isoformat()}: it cannot run again",
                allowed=[],
                instance_id=instance_id,
                deadline=deadline.due_at.isoformat(),
            )

    async def cancel(self, instance_id: str, cancelled: str, reason: str, *, also: Sequence[Any] = ()) -> None:
        """Under ``exclusive``, once the caller has checked that the instance has not finished: log
        ``cancelled`` (once per instance) and mark the instance ``cancelled``, with ``also`` (statements)
        in the same transaction."""
        event = NewEvent(cancelled, {"reason": reason}, None, f"{instance_id}:cancelled")
        # A queued instance leaves the queue with it: it must never start once a slot frees.
        also = [*also, self.flow.unqueue(instance_id)]
        await self.events.append(instance_id, [event], status="cancelled", also=also)

    async def terminate(self, instance_id: str, reason: str, *, then: Sequence[NewEvent] = ()) -> bool:
        """End the instance for good where it stands, unless it has (Temporal's terminate: nothing more of it
        runs, and nothing is compensated). In one transaction, under its lock: ``journey.terminated`` is logged,
        the instance marked ``terminated``, and everything it waits on cancelled (waits, timers, subscriptions,
        inbox tasks, its place in a queue). A failed instance is terminated too: its retry is given up.
        ``then``: events logged after it, or alone when the instance had ended already. Answers whether it
        was terminated now; False too for an unknown id.

        Nothing runs it on after: every orchestrator's acting method takes its lock with
        ``JourneyEngine.acting``, which refuses a terminated instance, and processes refuse a finished one."""
        async with self.engine.exclusive(instance_id):
            instance = await self.index.get_instance(instance_id)
            if instance is None:
                return False
            if instance.status in FINAL_STATUSES:
                if then:
                    await self.events.append(instance_id, then)
                return False
            at = self.engine.store.clock.now()
            payload = {"reason": reason, "at": at.isoformat()}
            terminated = NewEvent(TERMINATED_EVENT, payload, None, f"{instance_id}:{TERMINATED}")
            kind = self._kinds.get(instance.pattern)
            own = kind.terminated(instance_id, at) if kind is not None and kind.terminated is not None else ()
            also = [*cancel_pending(instance_id), self.flow.unqueue(instance_id), *own]
            await self.events.append(instance_id, [terminated, *then], status=TERMINATED, also=also)
            return True

    # --- fork ----------------------------------------------------------------------------------------

    def kind(self, pattern: str) -> Recoverable | None:
        """What ``pattern`` registered with the kernel (None: nothing)."""
        return self._kinds.get(pattern)

    async def fork(self, source_id: str, step_id: str, *, fork_id: str | None = None) -> Fork:
        """A new instance that goes on from right after ``step_id`` of ``source_id`` (see
        :mod:`graphs.kernel.forks`), owned by the caller acting; the source is left as it is."""
        source = await self.index.get_instance(source_id)
        if source is None:
            raise JourneyNotFoundError(f"no journey instance {source_id!r}", instance_id=source_id)
        kind = self._kinds.get(source.pattern)
        if kind is None or kind.fork is None:
            raise refuse(source)
        graph = await kind.graph(source)
        fork_id = fork_id or new_fork_id()
        async with self.engine.exclusive(source_id):  # its log and checkpoints hold still while copied
            history = await self.events.list(source_id)
            point = await fork_point(kind.fork, graph, self.engine.config(source_id), history, step_id)
            slot: list[Any] = []
            if point.checkpoint.next:  # a fork that runs on: the source's limits hold for it too
                if (free := await self._slot_under(kind, source, "a fork counts too", current_owner())) is not None:
                    slot = [self.flow.take_slot(*free, fork_id)]
                await self._carry_deadline(source_id, fork_id)
            try:
                created = await register_fork(self.engine.store, source, fork_id, history, point, slot)
            except DuplicateInstanceError:
                if slot and await self.index.get_instance(fork_id) is None:
                    raise ConcurrentUpdateError(f"the concurrency slot {fork_id!r} took was taken meanwhile") from None
                raise
        if point.checkpoint.next:  # on to where the fork waits, as its source went on after the step
            async with self.engine.exclusive(fork_id):
                with contextlib.suppress(JourneyError):  # a failure is recorded: the fork can be retried
                    await self.advance(graph, fork_id, source.pattern, None, cause="fork")
        return Fork(created, source_id, step_id)

    async def _slot_under(
        self, kind: Recoverable, instance: Instance, why: str, owner: Owner | None
    ) -> tuple[str, int] | None:
        """A free slot of ``instance``'s concurrency key (the key, the slot), for a fork of it or for it retried
        once it failed (which freed its slot); None when its start had no limit. :class:`ConcurrencyLimitError`
        when every slot is held: neither is queued, as only a start is. ``owner``: whose tenant the key is within,
        the journey's that takes the slot (a retried journey's own, not the caller's who retries it: an operator of
        another tenant, the system)."""
        controls = None if kind.controls is None else await kind.controls(instance)
        with acting_as(owner):
            key = None if controls is None else controls.concurrency_key
        if controls is None or key is None or controls.concurrency is None:
            return None
        limit = controls.concurrency.limit
        slot = await self.flow.free_slot(key, limit)
        if slot is None:
            raise ConcurrencyLimitError(
                f"{limit} journey(s) with {key} are running already, the limit of its spec; {why}",
                concurrency_key=key,
                limit=limit,
            )
        return key, slot

    async def _carry_deadline(self, source_id: str, fork_id: str) -> None:
        """Arm the fork's deadline at the source's moment (the whole run's, not a new window), before the fork
        is registered as a start's is."""
        deadline = await self.timers.get(f"deadline:{source_id}")
        if deadline is None:
            return
        arm = self.timers.schedule_row(
            f"deadline:{fork_id}",
            element=deadline.element,
            purpose=DEADLINE_PURPOSE,
            definition=dict(deadline.definition),
            due_at=deadline.due_at,
            origin=deadline.origin,
            instance_id=fork_id,
            data=dict(deadline.data),
        )
        await self.timers.execute([arm])

    # --- recover -------------------------------------------------------------------------------------

    async def recover(self, *, leave: Callable[[str], Awaitable[bool]] | None = None) -> list[str]:
        """Finish the work a crashed process left in flight, for every open instance of every pattern:
        a run in flight is run on, and a start cut short before its first checkpoint is run from its first
        event. Instances that wait for a person, a message or a timer are left waiting, and so are those for
        which ``leave`` answers True (a server's runs take them up) or that another process holds (it works on
        them). Meant for startup. Returns the ids of the instances resumed."""
        kinds = list({id(kind): kind for kind in self._kinds.values()}.values())
        resumed: list[str] = []

        def note(ids: list[str]) -> None:
            for instance_id in ids:
                if instance_id not in resumed:
                    resumed.append(instance_id)

        for kind in kinds:
            if kind.before is not None:
                note(await kind.before())
        for status in OPEN_STATUSES:
            for instance in await self.index.list_instances(status=status, limit=1_000_000):
                of = self._kinds.get(instance.pattern)
                if of is None:
                    continue
                try:
                    if await self._recover_one(of, instance, leave):
                        note([instance.instance_id])
                except ConcurrentUpdateError:  # held past the lock timeout: its holder is working on it
                    continue
        for kind in kinds:
            if kind.after is not None:
                note(await kind.after())
        note(await self.dispatch_queued(leave))
        return resumed

    async def run_on(self, instance_id: str, options: RunOptions = DEFAULT_RUN, *, wait: float | None = None) -> bool:
        """Run on one open instance as :meth:`recover` runs each: work a killed process left in flight is finished
        and a first run cut short before its first checkpoint runs from its first event; one that waits (for a
        person, a message, a timer), ended, or was stopped by a cancelled run is left as it is. Under its lock,
        waited for ``wait`` seconds at most: :class:`ConcurrentUpdateError` when another caller holds it longer
        (it runs there). Whether anything ran."""
        instance = await self.index.get_instance(instance_id)
        kind = None if instance is None else self._kinds.get(instance.pattern)
        if instance is None or kind is None:
            return False
        return await self._recover_one(kind, instance, wait=wait, options=options)

    async def dispatch_queued(self, leave: Callable[[str], Awaitable[bool]] | None = None) -> list[str]:
        """Start the queued instances whose concurrency key has a free slot again, oldest first, and run
        their first run. Any process may call it at any time (every scheduler pass and ``recover`` do):
        the slot's unique key and the keyed dequeue event let one caller start each. ``leave``, as for
        :meth:`recover`: a started instance for which it answers True has its first run left to whoever it
        handed it to (a distributed API's workers). Returns the ids of those run here."""
        started: list[str] = []
        full: set[str] = set()
        for queued in await self.flow.queued():
            if queued.concurrency_key in full:
                continue
            slot = await self.flow.free_slot(queued.concurrency_key, queued.limit)
            if slot is None:
                full.add(queued.concurrency_key)
                continue
            instance = await self.index.get_instance(queued.instance_id)
            kind = None if instance is None else self._kinds.get(instance.pattern)
            if instance is None or kind is None:
                continue
            dequeued = NewEvent(
                DEQUEUED,
                {"concurrency_key": queued.concurrency_key, "slot": slot},
                None,
                f"{queued.instance_id}:dequeued",
            )
            try:
                [won] = await self.events.append(
                    queued.instance_id, [dequeued], also=self.flow.dequeue(queued, slot, instance_status="in_progress")
                )
            except Exception as exc:
                if not self.engine.store.backend.is_unique_violation(exc):
                    raise
                continue  # another caller took that slot first
            if won and await self._recover_one(kind, replace(instance, status="in_progress"), leave):
                started.append(queued.instance_id)
        return started

    async def graph(self, instance: Instance) -> Graph:
        """The compiled graph ``instance`` runs on (its pattern must be registered)."""
        return await self._kinds[instance.pattern].graph(instance)

    async def _start_again(self, instance: Instance) -> dict[str, Any] | None:
        """The input of ``instance``'s first run, for an instance that has no checkpoint (see
        ``JourneyEngine.settled_state``): one whose run a crash cut short, open or ended by what its log
        says (a last step's event completes it), runs again, replaying its logged steps. Not one that never
        started (queued), was cancelled, or failed (running it again would retry unasked)."""
        kind = self._kinds.get(instance.pattern)
        if kind is None or instance.status in (QUEUED, "cancelled", TERMINATED, "failed"):
            return None
        return await kind.start_input(instance, (await self.events.list(instance.instance_id))[0])

    async def _recover_one(
        self,
        kind: Recoverable,
        instance: Instance,
        leave: Callable[[str], Awaitable[bool]] | None = None,
        *,
        wait: float | None = None,
        options: RunOptions = DEFAULT_RUN,
    ) -> bool:
        instance_id = instance.instance_id
        graph = await kind.graph(instance)
        if leave is not None:
            # A first look without the lock: most open instances wait (for a person, a message, a timer), and
            # ``leave`` is asked only of those with work in flight, whose run (if any) may hold the lock a while.
            snapshot = await graph.aget_state(self.engine.config(instance_id))
            if not (in_flight(snapshot) or never_checkpointed(snapshot)) or await leave(instance_id):
                return False
        async with self.engine.exclusive(instance_id, wait=wait):
            # Read again under the lock: the instance may have ended (been cancelled, say) since it was listed.
            current = await self.index.get_instance(instance_id)
            if current is None or current.status in ENDED_STATUSES:
                return False
            snapshot = await graph.aget_state(self.engine.config(instance_id))
            if await self.engine.halted(instance_id, snapshot):  # cancelled on purpose: a new run goes on
                return False
            if in_flight(snapshot):
                value = None
            elif never_checkpointed(snapshot):
                value = await kind.start_input(instance, (await self.events.list(instance_id))[0])
            else:
                return False
            with contextlib.suppress(JourneyError):  # recorded: the instance can be retried
                await self.advance(graph, instance_id, instance.pattern, value, options=options)
        return True


def passed_key(instance_id: str) -> str:
    """The key of the instance's :data:`DEADLINE_PASSED` event: a deadline expires an instance once."""
    return f"{instance_id}:deadline"


def never_checkpointed(snapshot: StateSnapshot) -> bool:
    """No checkpoint at all: a registered instance whose first run a crash cut short before it saved one."""
    return snapshot.created_at is None and not snapshot.values

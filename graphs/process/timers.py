"""Firing durable timers: the one place it happens (SPEC B4).

:func:`fire_due_timers` claims every timer due at ``now`` (``TimerStore.claim_due``: one atomic claim of
the scheduled ones, so two workers never fire the same timer and none fires early) and fires each:

- ``catch`` / ``boundary``: resolves the timer's wait (it may have lost the race: then it never fires)
  and resumes the thread with ``Command(resume=…)``. These fire as a set, one transaction per batch
  (``TimerStore.fire_waits``): once it commits the firing is durable, and resumption follows;
- ``sla``: the user task's escalation, exactly once: notify (an agent call keyed by the timer),
  reassign (in the transaction of its event) or complete with the default response;
- ``reminder``: a non-interrupting boundary timer tells its ``notify`` agent, once per tick;

  both calls are held to the spec's grants like every other agent call: a refused one is a
  ``policy.denied`` event and a :class:`~agents.errors.PolicyViolationError` in the report's errors, and
  fails safe: the timer ends, and the task stays open for a person. A call whose agent failed after the
  agent's retry policy (or for good, or whose intent has no agent) is an incident, as Camunda's failed job
  with no retries left: the timer stands ``failed``, ``timer.failed`` is logged, the instance's status lists
  it, the task stays open for a person, and nothing calls the agent again until an operator retries the
  instance (``ProcessOrchestrator.retry``), which re-arms the timer;
- ``start``: starts a new instance (its id is derived from the tick, so a repeated firing starts none);
- any other purpose: the handler registered for it (``TimerScheduler.handlers``, e.g. the server's
  crons), rescheduled like a timer start, and spent past its ``data["until"]``. A handler that raises is
  tried again with a doubling backoff; a tick that failed every attempt is an incident (kept as a failed
  timer of its own, which an operator re-arms) and the timer goes on to its next tick (``_handler_failed``).

Repeating timers are rescheduled from their own schedule, not from when they fired; ticks missed
while nothing ran follow the timer's ``missed`` policy (``nodes.timer``). Embedded mode runs
:class:`TimerScheduler`'s loop in-process; a distributed worker can call :func:`fire_due_timers`
(or ``run_due``) from its own periodic job instead.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from agents.errors import AgentCallFailedError, AgentNotFoundError, PolicyViolationError
from checkpoints.database import OUTAGE, lost_database
from checkpoints.errors import DuplicateInstanceError, JourneyError
from checkpoints.events import NewEvent
from checkpoints.index import Instance
from checkpoints.process.timers import DEFAULT_LEASE, RETRY_KEYS, TICK_OF, Timer, TimerStore
from checkpoints.process.waits import Wait, WaitStore
from checkpoints.rows import Write
from graphs.kernel.engine import CONTINUATION
from graphs.kernel.flow import DEADLINE_PURPOSE
from graphs.process.context import TimerHost
from graphs.process.spec import DEFAULT_ESCALATION, ProcessSpec
from nodes.agent_call import CALL_FAILED, Recording
from nodes.telemetry import timers_fired
from nodes.timer import TimerDefinition

log = structlog.get_logger("journeys.timers")
# Continuations run at once by default: a wave of them. Its stages go to the database together (one lock statement,
# one read of the deliveries, of the checkpoints, one write of the events, of the checkpoints: each batched up to 64),
# and the worker idles while each is on the wire, so a wave of 64 pays those round trips once for 64 threads, not
# for 16. 10,000 timers due together (benchmarks/timers.py's phases, medians of 6): PostgreSQL's CPU per continuation
# 0.55 against 0.76 ms, the worker's 2.1 against 2.2. A wave holds no pooled connection per thread (the journey locks
# share one, each batch takes one), so the pool's size does not bound it. This many in all, in WAVES_IN_FLIGHT waves.
RESUME_CONCURRENCY = 128
# Waves of continuations under way at once. One wave alone left the worker idle while each of its batches was on the
# wire (PostgreSQL's share of a continuation, a quarter of the time): a second wave's Python runs meanwhile.
WAVES_IN_FLIGHT = 2
# Batches one pass claims at most: a repeating timer catching up tick by tick (``fire_all``, a start long past)
# stays due after each firing, and kept the pass from ever ending, so the threads its fired timers resume, the
# redeliveries and the queued starts after the loop waited for ever. The next pass goes on at once.
MAX_ROUNDS = 100
# How long a wave of continuations (``fire_due_timers``) keeps its finished threads' slots from the next one.
STRAGGLER_S = 0.2
TIMER_FAILED = "timer.failed"  # an incident: a timer's agent call failed after its retries (see _end_if_given_up)
TIMER_RETRIED = "timer.retried"  # an operator's retry re-armed a failed timer
# A registered handler that raises is tried again this many times in all, HANDLER_BACKOFF after its first
# failure, then twice as long after each next one (15 s, 30 s, 1 min, 2 min: about 4 min for a tick), before the
# tick is an incident (_handler_failed).
HANDLER_ATTEMPTS = 5
HANDLER_BACKOFF = timedelta(seconds=15)
# The timers and waits _held has warned of in this process; past this many it forgets them (and warns again).
WARNED_HELD_LIMIT = 10_000
_WARNED_HELD: set[tuple[str, str | None]] = set()
# Fires a timer of a purpose the process engine does not know (the server's crons); True if it took effect.
TimerHandler = Callable[[Timer], Awaitable[bool]]


@dataclass
class FiringReport:
    """What one pass over due timers did: fired, dropped, failed and resumed, and how late."""

    fired: int = 0  # timers that took effect (won their wait, escalated, started an instance, reminded)
    dropped: int = 0  # timers whose wait had been won by something else: they never fire
    failed: int = 0
    resumed: int = 0  # threads resumed with a fired timer's resolution
    redelivered: int = 0  # resolutions a crash had kept from their thread, delivered now
    held: int = 0  # resolutions left for a process with the agents their instance's process calls (see _held)
    dequeued: int = 0  # journeys queued behind a concurrency limit, started now that a slot freed
    lateness: list[float] = field(default_factory=list)  # per fired timer: seconds from due to fired
    resume_lateness: list[float] = field(default_factory=list)  # per resumed thread: seconds from due to resumed
    errors: list[str] = field(default_factory=list)


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


async def fire_due_timers(
    processes: TimerHost,
    *,
    now: datetime | None = None,
    worker: str | None = None,
    batch: int = 500,
    concurrency: int = RESUME_CONCURRENCY,
    lease: timedelta = DEFAULT_LEASE,
    handlers: Mapping[str, TimerHandler] | None = None,
) -> FiringReport:
    """Fire every timer due at ``now`` (default: the clock's now), batch by batch, until none is due or
    :data:`MAX_ROUNDS` batches are through (the next pass goes on).

    Timers that end a wait (catch, boundary) fire as a set: one transaction per batch resolves their
    waits, and from then on the outcome is durable. Their threads resume as their batches fire, up to
    ``concurrency`` at a time, while later batches fire and other timers take effect (an SLA's agent call,
    a cron's handler).
    """
    worker = worker or default_worker_id()
    report = FiringReport()
    gate = asyncio.Semaphore(concurrency)
    timers = processes.services.timers

    delivered = _Consumed(processes.services.waits, batch)

    async def resume(timer: Timer, index_rows: asyncio.Task[dict[str, Instance]]) -> None:
        assert timer.instance_id is not None and timer.wait_id is not None
        try:
            instance = (await asyncio.shield(index_rows)).get(str(timer.instance_id))  # shared by the batch's threads
            if await _held(processes, timer, instance, report):
                return
            delivered_now = await processes.deliver(
                timer.instance_id,
                timer.wait_id,
                consumed=delivered.wait_ids,
                instance=instance,
                run_options=CONTINUATION,
            )
            delivered.added()
            if delivered_now:
                report.resumed += 1
                report.resume_lateness.append((processes.clock.now() - timer.due_at).total_seconds())
        except Exception as exc:  # one broken instance must not stop the others; recovery redelivers
            report.failed += 1
            report.errors.append(f"{timer.timer_id}: {type(exc).__name__}: {exc}")
            log.warning("timer resumption failed", timer_id=timer.timer_id, error=str(exc))

    async def resume_fired(fired: _Fired) -> None:
        # In waves: a wave takes the next threads at once and goes through its stages together (one lock statement
        # and one delivery read for it, not one per two or three threads as they trickle in): 10% less CPU per
        # continuation than refilling each slot as it frees (measured on 1,000). WAVES_IN_FLIGHT of them at a time,
        # so that one's Python runs while another's batch is on the wire (see WAVES_IN_FLIGHT). A wave still running
        # after STRAGGLER_S (an agent call after the timer, say) holds only its own slots: the next wave takes the
        # free ones. Threads are taken as their timers fire; one waiting its turn costs no task.
        wave_size = max(1, concurrency // WAVES_IN_FLIGHT)
        running: set[asyncio.Task[None]] = set()
        live: set[asyncio.Task[Any]] = set()  # a wave each: done once it is through, or STRAGGLER_S after it began
        arrival: asyncio.Task[None] | None = None  # done once more timers have fired, or firing is over
        firing_over: asyncio.Task[None] | None = None
        async with asyncio.TaskGroup() as tasks:
            while True:
                free = concurrency - len(running)
                waves = 1 if fired.firing else WAVES_IN_FLIGHT  # firing first: it makes the timers' outcome durable
                wave = [] if len(live) >= waves else fired.take(min(wave_size, free))
                if wave:
                    started = [tasks.create_task(resume(timer, index_rows)) for timer, index_rows in wave]
                    running.update(started)
                    for task in started:
                        task.add_done_callback(running.discard)
                    live.add(tasks.create_task(asyncio.wait(started, timeout=STRAGGLER_S)))
                    await asyncio.sleep(0)  # its threads ask first: the next wave's go in the batches after theirs
                    continue
                if not running and fired.over:
                    return
                # A wave through (or straggling) makes room for the next; with every slot taken (or only stragglers
                # left), so does a thread; with room for a wave, more timers fired; with a wave under way while
                # firing, the end of the firing (a second wave may start then).
                waits = set(live if free and live else running)
                if free and not fired.over and len(live) < waves:
                    if arrival is None or arrival.done():
                        arrival = tasks.create_task(fired.arrival())
                    waits.add(arrival)
                elif free and fired.firing:
                    if firing_over is None:
                        firing_over = tasks.create_task(fired.fired_all())
                    waits.add(firing_over)
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                live = {wave_through for wave_through in live if not wave_through.done()}

    async def fire_one(timer: Timer) -> None:
        async with gate:
            try:
                intent = _notifies(timer)
                if intent is not None and await _held(processes, timer, None, report, intent=intent):
                    return  # left claimed: past its lease, a pass in a process that has the agent fires it
                fired = await _fire_other(processes, timer, worker, handlers or {}, lease)
                if intent is not None and timer.instance_id is not None:  # it may have been held back before
                    await processes.went_on(None, timer.instance_id)
            except Exception as exc:  # left "firing" (or "failed": an incident): see _end_if_given_up
                report.failed += 1
                report.errors.append(f"{timer.timer_id}: {type(exc).__name__}: {exc}")
                log.warning("timer failed to fire", timer_id=timer.timer_id, error=str(exc))
                return
            if fired:
                report.fired += 1
                report.lateness.append((processes.clock.now() - timer.due_at).total_seconds())
            else:
                report.dropped += 1

    # The fired timers' threads resume as their batches fire, not once all have: while a batch is on the wire (the
    # firing waits for PostgreSQL half the time), the worker runs the threads fired before it, one wave at a time
    # until firing is over (two waves took most of the worker from the firing, which then lagged).
    fired = _Fired(processes.instances_by_id)
    resuming = asyncio.ensure_future(resume_fired(fired))
    try:
        for _round in range(MAX_ROUNDS):
            moment = (now or processes.clock.now()).astimezone(UTC)
            claimed = await timers.claim_due(moment, worker, limit=batch, lease=lease)
            if not claimed:
                break
            ending_waits = [t for t in claimed if t.purpose in ("catch", "boundary")]
            won = await timers.fire_waits(ending_waits, worker)
            fired_at = processes.clock.now()
            report.fired += len(won)
            report.dropped += len(ending_waits) - len(won)
            report.lateness += [(fired_at - t.due_at).total_seconds() for t, _resolution in won]
            fired.add([timer for timer, _resolution in won])
            others = [fire_one(t) for t in claimed if t.purpose not in ("catch", "boundary")]
            if others:  # the threads fired so far resume meanwhile: a slow pager holds none of them back
                await asyncio.gather(*others)
        fired.close()
        await resuming
    except Exception:
        fired.close()
        await asyncio.gather(resuming, return_exceptions=True)  # those fired before a failure go on; the pass fails
        raise
    finally:
        if not resuming.done():  # the pass was cancelled: so are the continuations under way
            resuming.cancel()
            await asyncio.gather(resuming, return_exceptions=True)
        await fired.closed()
        await delivered.under_way()
    await delivered.finish_rest()
    moment = (now or processes.clock.now()).astimezone(UTC)
    await processes.settle_abandoned_migrations(moment - lease)
    for wait in await processes.services.waits.undelivered(resolved_before=moment - lease):
        try:
            if await _held(processes, wait, None, report):
                continue
            if await processes.deliver(wait.instance_id, wait.wait_id, run_options=CONTINUATION):
                report.redelivered += 1
        except Exception as exc:  # one broken instance must not keep the others, nor the rest of the pass
            report.failed += 1
            report.errors.append(f"{wait.wait_id}: {type(exc).__name__}: {exc}")
            log.warning("redelivery failed", wait_id=wait.wait_id, error=str(exc))
    await processes.services.messages.expire()
    report.dequeued = len(await processes.dispatch_queued())
    return report


class _Consumed:
    """The waits whose resolutions their threads consumed in a pass (their runs' checkpoints written, so nothing is left
    to deliver), marked done a batch at a time as they add up, while later threads still resume: at the end of the
    pass, the batches of 10,000 continuations took half a second more, one after another."""

    def __init__(self, waits: WaitStore, batch: int) -> None:
        self._waits = waits
        self._batch = batch
        self.wait_ids: list[str] = []  # in the order consumed (``ProcessOrchestrator.deliver`` adds to it)
        self._done = 0  # wait_ids[:_done] are done, or being marked so
        self._finishing: asyncio.Task[None] | None = None

    def added(self) -> None:
        """A thread has resumed: mark the next full batch done, if there is one and no batch is on its way (nor
        failed: the pass raises its error at its end, from :meth:`finish_rest`)."""
        running = self._finishing
        if running is not None and (not running.done() or running.cancelled() or running.exception() is not None):
            return
        if len(self.wait_ids) - self._done >= self._batch:
            self._finishing = asyncio.ensure_future(self._finish_full())

    async def _finish_full(self) -> None:
        while len(self.wait_ids) - self._done >= self._batch:
            start = self._done
            self._done += self._batch
            await self._waits.finish(self.wait_ids[start : self._done])

    async def finish_rest(self) -> None:
        """Once every thread has resumed: mark the rest done (a batch's error raised here, failing the pass)."""
        if self._finishing is not None:
            await self._finishing
        while self._done < len(self.wait_ids):
            start = self._done
            self._done = min(start + self._batch, len(self.wait_ids))
            await self._waits.finish(self.wait_ids[start : self._done])

    async def under_way(self) -> None:
        """Until the batch on its way, if any, is through, however the pass ends (its error is raised by
        :meth:`finish_rest`, or dropped with a pass that fails otherwise: a resolution not marked done is delivered
        again after its lease, to a thread no longer parked on it, which takes nothing)."""
        if self._finishing is not None:
            await asyncio.gather(self._finishing, return_exceptions=True)


class _Fired:
    """The fired timers whose threads are to resume, in firing order, added batch by batch as they fire. Each batch's
    index rows are read in one statement, sent as it fires: its threads' reads are then a lookup."""

    def __init__(self, read: Callable[[list[str]], Awaitable[dict[str, Instance]]]) -> None:
        self._read = read
        self._waiting: deque[tuple[Timer, asyncio.Task[dict[str, Instance]]]] = deque()
        self._reads: list[asyncio.Task[dict[str, Instance]]] = []
        self._added = asyncio.Event()
        self._over = asyncio.Event()
        self._firing = True

    def add(self, timers: list[Timer]) -> None:
        if timers:
            read = asyncio.ensure_future(self._read([str(timer.instance_id) for timer in timers]))
            self._reads.append(read)
            self._waiting.extend((timer, read) for timer in timers)
            self._added.set()

    def close(self) -> None:
        """Firing is over: nothing more will be added."""
        self._firing = False
        self._added.set()
        self._over.set()

    @property
    def firing(self) -> bool:
        """More may be added."""
        return self._firing

    @property
    def over(self) -> bool:
        """Firing is over and every thread has been taken."""
        return not self._firing and not self._waiting

    def take(self, most: int) -> list[tuple[Timer, asyncio.Task[dict[str, Instance]]]]:
        """Up to ``most`` threads to resume, the earliest fired first, with the read of their index rows."""
        taken = [self._waiting.popleft() for _ in range(min(most, len(self._waiting)))]
        if not self._waiting and self._firing:
            self._added.clear()
        return taken

    async def arrival(self) -> None:
        """Until more threads have been added, or firing is over."""
        await self._added.wait()

    async def fired_all(self) -> None:
        """Until firing is over."""
        await self._over.wait()

    async def closed(self) -> None:
        """Cancel the reads of threads a cancel kept from resuming, and wait for them."""
        for read in self._reads:
            read.cancel()
        await asyncio.gather(*self._reads, return_exceptions=True)


async def _held(
    processes: TimerHost,
    held: Timer | Wait,
    instance: Instance | None,
    report: FiringReport,
    *,
    intent: str | None = None,
) -> bool:
    """Whether a fired timer's resolution is left stored, undelivered, because this process lacks an agent its
    instance's process calls: every process serving the database fires timers, and the continuation would
    fail the instance here for a deployment's mistake (a notebook's own agent, a worker without its plugin).
    A process that has them delivers it (its pass redelivers a resolution left a lease), this one too once
    the agent is registered; meanwhile the first pass that holds it warns, naming the agents and where to register
    them.
    ``intent``: a timer that calls that one agent itself (an SLA's or a reminder's notify), held unfired, claimed,
    until its lease hands it to a pass that has the agent."""
    assert held.instance_id is not None
    missing = await processes.agents_missing(held.instance_id, instance=instance)
    if intent is not None:
        missing = [intent] if intent in missing else []
    if not missing:
        return False
    report.held += 1
    # A timer by its own id (its wait_id is the task it watches), a resolution left undelivered by its wait's.
    named = {"timer_id": held.timer_id} if isinstance(held, Timer) else {"wait_id": held.wait_id}
    # Once per process for a timer held unfired, or a resolution (a fired catch timer's, kept by its wait): each
    # pass past its lease holds it again for as long as no process has the agent, and an operator's log said the
    # same every lease (the report still counts every hold).
    key = ("timer", held.timer_id) if intent is not None and isinstance(held, Timer) else ("wait", held.wait_id)
    if key in _WARNED_HELD:
        return True
    if len(_WARNED_HELD) >= WARNED_HELD_LIMIT:
        _WARNED_HELD.clear()
    _WARNED_HELD.add(key)
    # Stored too, so the instance's views say why it stands still (an operator reads no worker's log there).
    since = processes.clock.now().astimezone(UTC).isoformat()
    await processes.held_back(held.instance_id, {"missing_intents": missing, **named, "since": since})
    log.warning(
        "fired timer left for a process with its agents",
        instance_id=held.instance_id,
        **named,
        missing_intents=missing,
        hint="register them in every process serving this database: JourneyRuntime.open(agents=...) or "
        "runtime.agents.register, --plugin on journeys serve and journeys worker",
    )
    return True


async def _fire_other(
    processes: TimerHost, timer: Timer, worker: str, handlers: Mapping[str, TimerHandler], lease: timedelta
) -> bool:
    """Timers that do not end a wait: SLA escalations, reminders, timer starts, deadlines, registered purposes."""
    timers = processes.services.timers
    if timer.purpose == DEADLINE_PURPOSE:  # a journey's whole-run deadline, for any pattern
        assert timer.instance_id is not None
        fired = await processes.expire(timer.instance_id, str(timer.data.get("on_expiry") or "fail"), timer.due_at)
        done = timers.fired_statement(timer, worker, next_due=None, ticks=timer.ticks + 1)
        await timers.execute([done if fired else timers.dropped_statement(timer, worker)])
        return fired
    definition = TimerDefinition.model_validate(timer.definition)
    fired_at = processes.clock.now().astimezone(UTC)
    ticks = timer.ticks + 1
    if timer.purpose == "sla":
        return await _escalate(processes, timer, worker, ticks)
    next_due, skipped = definition.after_firing(timer.origin, ticks, timer.due_at, fired_at)
    if (handler := handlers.get(timer.purpose)) is not None:
        until = timer.data.get("until")
        if next_due is not None and until is not None and next_due > datetime.fromisoformat(until):
            next_due = None
        if TICK_OF in timer.data:  # a failed tick an operator retried: it fires once
            next_due = None
        try:
            took = await handler(timer)
        except Exception as exc:
            await _handler_failed(processes, timer, worker, exc, lease, next_due=next_due, ticks=ticks + skipped)
            raise
        if not took:  # what it fired for is gone: the timer ends
            await timers.execute([timers.dropped_statement(timer, worker)])
            return False
        done = timers.fired_statement(
            timer, worker, next_due=next_due, ticks=ticks + skipped, data=_without_retries(timer.data)
        )
        await timers.execute([done])
        return True
    if timer.purpose == "reminder":
        fired = await _remind(processes, timer, worker, ticks, skipped)
        if not fired:  # its task is no longer open: the reminder ends
            await timers.execute([timers.dropped_statement(timer, worker)])
            return False
    else:
        fired = await _start(processes, timer, ticks, skipped)
    await timers.execute([timers.fired_statement(timer, worker, next_due=next_due, ticks=ticks + skipped)])
    return fired


def _without_retries(data: dict[str, Any]) -> dict[str, Any] | None:
    """``data`` without the failed attempts of a tick that is now through (None: it had none)."""
    return {k: v for k, v in data.items() if k not in RETRY_KEYS} if RETRY_KEYS[0] in data else None


async def _handler_failed(
    processes: TimerHost,
    timer: Timer,
    worker: str,
    exc: Exception,
    lease: timedelta,
    *,
    next_due: datetime | None,
    ticks: int,
) -> None:
    """A registered handler (a cron's firing) raised at ``timer``'s tick. It is tried again after a backoff
    (:data:`HANDLER_BACKOFF`, doubling), the failed attempts counted in the timer's data; after
    :data:`HANDLER_ATTEMPTS` the tick is an incident, as Temporal's activity past its retry policy and Camunda's
    job with no retries left: kept as a failed timer of its own (``TimerStore.incident_statement``) that an
    operator retries, while the timer goes on to its next tick, so a schedule keeps firing. Not recorded when
    the database is what failed (the write fails too): the claim's lease brings the tick back, as after a
    crash."""
    timers = processes.services.timers
    now = processes.clock.now().astimezone(UTC)
    attempts = int(timer.data.get("attempts") or 0) + 1
    error = f"{type(exc).__name__}: {exc}"
    try:
        if attempts < HANDLER_ATTEMPTS:
            retry_at = now + HANDLER_BACKOFF * 2 ** (attempts - 1)
            data = {**timer.data, "attempts": attempts, "last_error": error}
            await timers.execute([timers.retry_statement(timer, worker, at=retry_at, lease=lease, data=data)])
            log.warning(
                "timer handler failed; tried again later",
                timer_id=timer.timer_id,
                purpose=timer.purpose,
                attempts=attempts,
                retry_at=retry_at.isoformat(),
                error=error,
            )
            return
        incident = {
            "timer_id": timer.timer_id,
            "purpose": timer.purpose,
            "due_at": timer.due_at.isoformat(),
            "error": f"{error}; fix the cause, then retry it to fire this tick again",
            "error_type": type(exc).__name__,
            "attempts": attempts,
            "failed_at": now.isoformat(),
        }
        if TICK_OF in timer.data:  # a retried tick failed again: it stands failed once more
            statements = [timers.failed_statement(timer, worker, incident)]
        else:
            done = timers.fired_statement(
                timer, worker, next_due=next_due, ticks=ticks, data=_without_retries(timer.data)
            )
            statements = [timers.incident_statement(timer, incident), done]
        await timers.execute(statements)
        log.error("timer handler failed for good: an incident", **incident)
    except Exception as recording:  # the database is away: the lease brings the tick back
        log.warning("could not record a timer handler's failure", timer_id=timer.timer_id, error=str(recording))


def _escalation(timer: Timer) -> dict[str, Any]:
    """An SLA timer's escalation (notify, reassign or complete)."""
    return dict(timer.data.get("escalation") or DEFAULT_ESCALATION.model_dump(mode="json"))


def _notifies(timer: Timer) -> str | None:
    """The intent a timer calls when it fires (an SLA's notify escalation, a reminder), if it calls one."""
    if timer.purpose == "reminder":
        return str(timer.data.get("notify") or "notify")
    if timer.purpose == "sla" and (escalation := _escalation(timer))["action"] == "notify":
        return str(escalation.get("notify") or "notify")
    return None


async def _escalate(processes: TimerHost, timer: Timer, worker: str, ticks: int) -> bool:
    """The SLA of a user task was breached: its escalation, once (keyed by the timer)."""
    services = processes.services
    assert timer.wait_id is not None and timer.instance_id is not None
    task = await services.inbox.get(timer.wait_id)
    done = services.timers.fired_statement(timer, worker, next_due=None, ticks=ticks)
    if task is None or task.status != "open":
        await services.timers.execute([services.timers.dropped_statement(timer, worker)])
        return False
    escalation = _escalation(timer)
    action, key = str(escalation["action"]), f"{timer.timer_id}:escalation"
    record: dict[str, Any] = {"task_id": task.task_id, "action": action, "sla_due_at": timer.due_at.isoformat()}
    if action == "notify":
        grants = await processes.grants_of(timer.instance_id)
        try:
            await services.node.caller.call(
                intent=str(_notifies(timer)),
                payload={"task": task.view(), "breach": record},
                instance_id=timer.instance_id,
                step=task.element,
                key=key,
                event_type="task.escalated",
                recorder=lambda _output: Recording(record),
                granted_permissions=grants.granted_permissions,
                granted_intents=grants.granted_intents,
                replay=True,
            )
        except (PolicyViolationError, AgentCallFailedError, AgentNotFoundError) as exc:
            await _end_if_given_up(processes, timer, worker, exc)
            raise
        await services.timers.execute([services.inbox.escalated_statement(task.task_id, action), done])
        return True
    if action == "reassign":
        groups = list(escalation.get("candidate_groups") or [])
        record |= {"from": {"assignee": task.assignee, "candidate_groups": task.candidate_groups}}
        record |= {"to": {"assignee": escalation.get("assignee"), "candidate_groups": groups}}
        # Only while the task is open: one completed since it was read above keeps its people, and nothing logs
        # a reassign that did not happen.
        reassigned = await services.inbox.reassign(
            task.task_id,
            assignee=escalation.get("assignee"),
            groups=groups,
            events=services.node.events,
            event=NewEvent("task.escalated", record, task.element, key),
            instance_id=timer.instance_id,
            also=[services.inbox.escalated_statement(task.task_id, action), done],
        )
        if not reassigned:
            await services.timers.execute([services.timers.dropped_statement(timer, worker)])
        return reassigned
    # complete: resolve the task with the default response, as the SLA's own decision.
    default = dict(escalation.get("default") or {})
    resolution = {"option": task.element, "kind": "escalation", "payload": default, "by": "sla-escalation"}
    won = await services.waits.resolve(
        task.task_id,
        resolution,
        keep_timer=timer.timer_id,
        task_status="completed",
        claims=[
            services.inbox.completion_claim(
                task.task_id, by="sla-escalation", result=default, claimed_by=task.claimed_by
            )
        ],
        also=[services.inbox.escalated_statement(task.task_id, action), done],
    )
    if not won:
        await services.timers.execute([services.timers.dropped_statement(timer, worker)])
        return False
    await processes.deliver(timer.instance_id, task.task_id)
    return True


async def _remind(processes: TimerHost, timer: Timer, worker: str, ticks: int, skipped: int) -> bool:
    """A non-interrupting boundary timer: tell ``notify`` once per tick while the task stays open."""
    services = processes.services
    assert timer.instance_id is not None and timer.wait_id is not None
    task = await services.inbox.get(timer.wait_id)
    if task is None or task.status != "open":
        return False
    record = {"task_id": task.task_id, "tick": ticks, "missed_ticks": skipped, "boundary": timer.element}
    grants = await processes.grants_of(timer.instance_id)
    try:
        await services.node.caller.call(
            intent=str(_notifies(timer)),
            payload={"task": task.view(), "reminder": record},
            instance_id=timer.instance_id,
            step=task.element,
            key=f"{timer.timer_id}:{ticks}",
            event_type="task.reminded",
            recorder=lambda _output: Recording(record),
            granted_permissions=grants.granted_permissions,
            granted_intents=grants.granted_intents,
            replay=True,
        )
    except (PolicyViolationError, AgentCallFailedError, AgentNotFoundError) as exc:
        await _end_if_given_up(processes, timer, worker, exc)
        raise
    return True


async def _end_if_given_up(processes: TimerHost, timer: Timer, worker: str, exc: JourneyError) -> None:
    """A timer's notification failed. A refusal (audited as ``policy.denied``) ends the timer: fail safe, the task
    stays open for a person. An agent that failed after its retry policy (for a passing reason or for good), or
    no agent registered for the intent (a deployment's mistake), is an incident: the timer stands ``failed`` and
    ``timer.failed`` says what failed and how to go on, in one transaction, so that no lease brings the firing
    back every minute for ever; an operator's retry of the instance re-arms it. For no agent, which the caller
    logs nothing for, the journey's log also gets one ``agent.failed`` saying what to register."""
    timers = processes.services.timers
    if isinstance(exc, PolicyViolationError):
        await timers.execute([timers.dropped_statement(timer, worker)])
        return
    assert timer.instance_id is not None
    intent = str(exc.details.get("intent"))
    logged: list[NewEvent] = []
    if isinstance(exc, AgentNotFoundError):
        error = f"no agent is registered for intent {intent!r}: register one, or give the task's timer another agent"
        failure = {"intent": intent, "call": timer.timer_id, "error": error, "error_type": type(exc).__name__}
        logged.append(NewEvent(CALL_FAILED, failure, timer.element))
    else:
        error = str(exc)
    incident = {
        "timer_id": timer.timer_id,
        "purpose": timer.purpose,
        "task_id": timer.wait_id,
        "intent": intent,
        "error": f"{error}; fix the cause, then retry the instance to fire this {timer.purpose} timer again",
        "error_type": str(exc.details.get("error_type") or type(exc).__name__),
        "attempts": int(exc.details.get("attempts") or 0),
        "failed_at": processes.clock.now().astimezone(UTC).isoformat(),
    }
    logged.append(NewEvent(TIMER_FAILED, incident, timer.element))
    also = [timers.failed_statement(timer, worker, incident)]
    await processes.services.node.events.append(timer.instance_id, logged, also=also)


async def _start(processes: TimerHost, timer: Timer, ticks: int, skipped: int) -> bool:
    """A timer start event: a new instance per tick (missed ticks per the timer's policy)."""
    name, start = str(timer.data["process"]), str(timer.data["start"])
    tick_key = f"{name}@{timer.due_at.strftime('%Y%m%dT%H%M%S.%fZ')}"
    deployment, spec = await processes.routed(name, tick_key)
    if start not in {s.id for s in spec.starts()}:
        log.warning("timer start skipped: the routed version has no such start", process=name, start=start)
        return False
    variables = {"timer": {"due_at": timer.due_at.isoformat(), "tick": ticks, "missed_ticks": skipped}}
    with suppress(DuplicateInstanceError):  # this tick's instance exists: an earlier firing got that far
        await processes.start(
            name,
            tick_key,
            variables,
            version=deployment.version,
            instance_id=f"{name}:{start}:{timer.due_at.strftime('%Y%m%dT%H%M%S.%f')}",
            start_event=start,
        )
    return True


async def schedule_start_timers(timers: TimerStore, now: datetime, spec: ProcessSpec) -> None:
    """Make the timer start events of ``spec``'s process those of ``spec``, the newest version just deployed.

    One timer runs per start event of the newest version: a start event whose timer is unchanged keeps
    its schedule, one that changed or is new is armed from now, and the timers of start events the
    newest version no longer has (or has with another timer) are cancelled, in one transaction, so
    two versions never both fire. Each tick starts an instance on the version the rollout routes it
    to (``_start``). The caller calls it for the newest version only: deploying an older version number
    late changes nothing.
    """
    now = now.astimezone(UTC)
    wanted = {start.id: start.timer for start in spec.starts() if start.timer is not None}
    active = [
        timer
        for timer in await timers.find(purpose="start")
        if timer.data.get("process") == spec.name and timer.status in ("scheduled", "firing")
    ]
    statements: list[Write] = []
    kept: set[str] = set()
    for timer in active:
        definition = wanted.get(timer.element)
        if definition is not None and timer.definition == definition.to_row() and timer.element not in kept:
            kept.add(timer.element)  # the same timer: it keeps its schedule (and its ticks so far)
            continue
        statements.append(timers.cancel_statement(timer.timer_id))
    for start_id, definition in wanted.items():
        if start_id in kept:
            continue
        statements.append(
            timers.schedule_row(
                f"start:{spec.name}:{start_id}:v{spec.version}",
                element=start_id,
                purpose="start",
                definition=definition.to_row(),
                due_at=definition.first_due(now),
                origin=definition.origin(now),
                data={"process": spec.name, "start": start_id},
            )
        )
    if statements:
        await timers.execute(statements)


class TimerScheduler:
    """Fires timers for one runtime: ``run_due()`` on demand (tests drive a virtual clock and call it),
    or a background loop (``start()`` / ``stop()``, or ``async with scheduler.running():``)."""

    def __init__(
        self,
        processes: TimerHost,
        *,
        worker: str | None = None,
        poll_interval: float = 1.0,
        batch: int = 500,
        concurrency: int = RESUME_CONCURRENCY,
    ) -> None:
        self._processes = processes
        self.worker = worker or default_worker_id()
        self.poll_interval = poll_interval
        self.batch = batch
        self.concurrency = concurrency
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        # Timers of other purposes and who fires them: the server registers its crons' handler here.
        self.handlers: dict[str, TimerHandler] = {}

    async def run_due(self, now: datetime | None = None) -> FiringReport:
        report = await fire_due_timers(
            self._processes,
            now=now,
            worker=self.worker,
            batch=self.batch,
            concurrency=self.concurrency,
            handlers=self.handlers,
        )
        timers_fired(report.lateness)
        return report

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = asyncio.create_task(self._loop(), name=f"timer-scheduler:{self.worker}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def wake(self) -> None:
        """Look for due timers now rather than at the next poll (e.g. after arming a short timer)."""
        self._wake.set()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[TimerScheduler]:
        self.start()
        try:
            yield self
        finally:
            await self.stop()

    async def _loop(self) -> None:
        while True:
            delay = self.poll_interval
            try:
                await self.run_due()
                next_due = await self._processes.services.timers.next_due()
                if next_due is not None:
                    until = (next_due - self._processes.clock.now()).total_seconds()
                    delay = min(max(until, 0.01), self.poll_interval)
            except Exception as exc:
                # A database hiccup (a deadlock, a dropped connection: the driver's errors are neither ours nor
                # OSError) or a bug: the loop must outlive it, else no timer of this process fires again. What
                # the pass claimed is claimed again once its lease is up; the next poll tries again.
                if (lost := lost_database(exc)) is not None:
                    OUTAGE.say_away("a timer pass", lost.message)
                else:
                    log.warning("timer pass failed", error=str(exc), error_type=type(exc).__name__)
            self._wake.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=delay)

"""Executing runs: the one code path both the in-process runner and the procrastinate worker call.

A run is claimed (one executor at a time), mapped onto its assistant's pattern API, and finished with a
status. A run that is picked up again after its executor died does not apply its input twice: a first
run whose thread is already bound only finishes the journey's in-flight work (completed steps are not
re-executed: the engine replays them from the event log), and a resume whose thread has moved past the
checkpoint it was meant for is not applied again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import ssl
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import httpx
import structlog
from langgraph.types import Command, Durability, StateSnapshot

from checkpoints.backends.base import Statement
from checkpoints.database import lost_database
from checkpoints.errors import JourneyError, StartedElsewhereError
from checkpoints.locks import held_elsewhere
from checkpoints.ownership import acting_as
from checkpoints.process.timers import Timer
from checkpoints.runs import thread_key
from graphs.errors import JourneyNotFoundError, StepCrashedError
from graphs.kernel.engine import ON_CANCEL, OnCancel, Outcome, RunOptions, addressed, in_flight, stands_failed
from graphs.kernel.patterns import RUN_ON, Graph
from graphs.kernel.streaming import GraphCall, StreamSink
from graphs.runtime import JourneyRuntime
from graphs.structured.steps import INTERRUPT
from nodes.services import FAILED, failure_error
from server.assistants import Assistant, RunContext, View, get_assistant, graph_of
from server.problems import ApiError, redact_answer, shown
from server.runs.store import NO_STATE, TERMINAL, RunRow, RunStore

log = structlog.get_logger("journeys.runs")


def jsonable(value: Any) -> Any:
    """Graph values and stream chunks as JSON: interrupts, messages and dataclasses included."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Command):
        return {"resume": jsonable(value.resume), "goto": jsonable(value.goto), "update": jsonable(value.update)}
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return jsonable(dump())
    return str(value)


def interrupts_of(snapshot: StateSnapshot) -> list[dict[str, Any]]:
    return [{"value": jsonable(i.value), "id": i.id} for task in snapshot.tasks for i in task.interrupts]


def state_view(snapshot: StateSnapshot, thread_id: str) -> dict[str, Any]:
    """A LangGraph ``ThreadState`` as the Agent Server API returns it."""
    configurable = (snapshot.config or {}).get("configurable", {})
    parent = (snapshot.parent_config or {}).get("configurable") if snapshot.parent_config else None
    return {
        "values": jsonable(snapshot.values or {}),
        "next": list(snapshot.next),
        "tasks": [
            {
                "id": t.id,
                "name": t.name,
                "error": str(t.error) if t.error else None,
                "interrupts": [{"value": jsonable(i.value), "id": i.id} for i in t.interrupts],
                "checkpoint": None,
                "state": None,
                "result": jsonable(t.result) if t.result is not None else None,
            }
            for t in snapshot.tasks
        ],
        "checkpoint": _checkpoint(thread_id, configurable),
        "metadata": jsonable(snapshot.metadata or {}),
        "created_at": snapshot.created_at,
        "parent_checkpoint": _checkpoint(thread_id, parent) if parent else None,
        "interrupts": interrupts_of(snapshot),
    }


def empty_state(thread_id: str) -> dict[str, Any]:
    return {
        "values": {},
        "next": [],
        "tasks": [],
        "checkpoint": _checkpoint(thread_id, {}),
        "metadata": {},
        "created_at": None,
        "parent_checkpoint": None,
        "interrupts": [],
    }


def _checkpoint(thread_id: str, configurable: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "thread_id": thread_id,
        "checkpoint_ns": configurable.get("checkpoint_ns", ""),
        "checkpoint_id": configurable.get("checkpoint_id"),
        "checkpoint_map": None,
    }


def outcome_values(outcome: Outcome) -> dict[str, Any]:
    """``output_values`` of what a run answered: its output (values, ``__interrupt__``) or the thread's state."""
    if isinstance(outcome, StateSnapshot):
        return output_values(outcome)
    out = {str(k): jsonable(v) for k, v in outcome.items() if k != INTERRUPT}
    if interrupts := outcome.get(INTERRUPT):
        out[INTERRUPT] = [{"value": jsonable(i.value), "id": i.id} for i in interrupts]
    return out


def output_values(snapshot: StateSnapshot) -> dict[str, Any]:
    """What ``runs.wait``/``join`` return: the thread's values, with ``__interrupt__`` when it waits."""
    values = jsonable(snapshot.values or {})
    out = dict(values) if isinstance(values, dict) else {"values": values}
    if interrupts := interrupts_of(snapshot):
        out[INTERRUPT] = interrupts
    return out


async def thread_output(runtime: JourneyRuntime, assistant: Assistant, instance_id: str) -> dict[str, Any]:
    """What ``runs.wait``/``join`` answer: the thread's values (and interrupts), with the journey's view."""
    graph = await graph_of(runtime, assistant, instance_id)
    snapshot = await graph.aget_state(runtime.engine.config(instance_id))
    output = output_values(snapshot)
    if assistant.describe is not None:
        output |= await assistant.describe(runtime, instance_id, snapshot)
    return output


# Seconds a cancelled run's task has to take the cancel before it is cancelled again. One its graph call took is not
# made again (OnCancel.taken), nor does a further cancel cut that call's writes on its way out (the engine's
# _to_its_end), so this guards the run's other awaits (its claim, its reads of its row).
RECANCEL_S = 5.0
# The statuses the work of the run executing in this context gave journey instances, the last one per instance, as the
# event log commits them (EventLog.on_status): a run whose work left its instance failed without raising (a process's
# failed node, an incident; a saga's compensation that failed for good) ends "error", as one whose step raised does.
GIVEN_STATUSES: ContextVar[dict[str, str] | None] = ContextVar("journeys_given_statuses", default=None)
WEBHOOK_PURPOSE = "webhook"  # the timers that deliver a finished run's webhook
WEBHOOK_ATTEMPTS = 5
WEBHOOK_BACKOFF = 0.5  # seconds before the second attempt; doubled after each failed one


@functools.cache
def _webhook_tls() -> ssl.SSLContext:
    """The TLS context of every webhook call, built once: a client building its own loads the CA bundle, ~30 ms of
    CPU a call (more than a whole 8-step journey), also for a plain-HTTP URL."""
    return httpx.create_ssl_context()


def webhook_payload(run: RunRow, sent_at: datetime) -> dict[str, Any]:
    """What a finished run's webhook posts, as the Agent Server's does: the run, the thread's ``values`` as it
    ended (None for a run that kept none), when it ended and when this was sent."""
    ended = {"values": run.output, "run_ended_at": run.updated_at.isoformat(), "webhook_sent_at": sent_at.isoformat()}
    payload: dict[str, Any] = jsonable({**run.view(), **ended})
    return payload


async def call_webhook(url: str, run: RunRow, sent_at: datetime) -> bool:
    """POST the finished run to ``url`` once (:func:`webhook_payload`); True once it was taken (any answer
    below 500)."""
    try:
        async with httpx.AsyncClient(timeout=10, verify=_webhook_tls()) as client:
            answer = await client.post(url, json=webhook_payload(run, sent_at))
    except httpx.HTTPError as exc:
        log.warning("webhook call failed", run_id=run.run_id, url=url, error=repr(exc))
        return False
    if answer.status_code >= 500:
        log.warning("webhook call refused", run_id=run.run_id, url=url, status=answer.status_code)
        return False
    return True


class Webhooks:
    """Durable webhook delivery: a run's webhook is a process timer (purpose ``webhook``), armed before the
    run is marked finished and fired by whichever scheduler fires timers (the API's in embedded mode, the
    workers' timer job in distributed mode). A failed attempt arms the next one with exponential backoff, so
    a delivery outlives the process that ran the run. Delivery is at least once: a process killed after a
    POST was taken but before its timer was marked fired posts again."""

    def __init__(self, runtime: JourneyRuntime, runs: RunStore) -> None:
        self.runtime = runtime
        self.runs = runs
        runtime.processes.scheduler.handlers[WEBHOOK_PURPOSE] = self.deliver

    async def arm(self, run: RunRow, attempt: int = 0, delay: float = 0.0) -> None:
        """Arm attempt ``attempt`` of ``run``'s webhook ``delay`` seconds from now (armed once per attempt:
        the timer's id names it)."""
        timers = self.runtime.processes.services.timers
        due = self.runtime.store.clock.now() + timedelta(seconds=delay)
        statement = timers.schedule_row(
            f"webhook:{run.run_id}:{attempt}",
            element="webhook",
            purpose=WEBHOOK_PURPOSE,
            definition={"date": due.astimezone(UTC).isoformat()},
            due_at=due,
            origin=due,
            data={"run_id": run.run_id, "attempt": attempt},
        )
        await timers.execute([statement])

    async def deliver(self, timer: Timer) -> bool:
        """One attempt: POST the run if it has ended (a run still running is looked at again later), and
        arm the next attempt if it failed. False when the run is gone."""
        run = await self.runs.get_run(str(timer.data.get("run_id")))
        url = (run.options or {}).get("webhook") if run is not None else None
        if run is None or not url:
            return False
        attempt = int(timer.data.get("attempt") or 0)
        if run.status not in TERMINAL:  # armed just before its end, whose process died: it ends when retried
            await self.arm(run, attempt + 1, WEBHOOK_BACKOFF * 2 ** min(attempt, 6))
            return True
        if await call_webhook(str(url), run, self.runtime.store.clock.now()):
            return True
        if attempt + 1 < WEBHOOK_ATTEMPTS:
            await self.arm(run, attempt + 1, WEBHOOK_BACKOFF * 2**attempt)
        else:
            log.error("webhook gave up", run_id=run.run_id, url=url, attempts=attempt + 1)
        return True


async def fork_back(runtime: JourneyRuntime, graph: Graph, instance_id: str, checkpoint_id: str) -> None:
    """Make a copy of an earlier checkpoint the thread's latest (LangGraph's fork: an update with no values),
    so the next run goes on from there; the checkpoints after it stay in the history."""
    config: Any = {"configurable": {"thread_id": instance_id, "checkpoint_ns": "", "checkpoint_id": checkpoint_id}}
    async with runtime.engine.exclusive(instance_id):
        if (await graph.aget_state(config)).created_at is None:  # LangGraph's snapshot of no checkpoint
            raise JourneyNotFoundError(f"no checkpoint {checkpoint_id!r} on this thread", checkpoint_id=checkpoint_id)
        await graph.aupdate_state(config, None)


async def _note_status(instance_id: str, status: str) -> None:
    """The event log's listener of status changes: noted for the run whose work made it (see GIVEN_STATUSES)."""
    if (given := GIVEN_STATUSES.get()) is not None:
        given[instance_id] = status


def graph_call(run: RunRow) -> GraphCall:
    """The config, context and interrupt_before/after a run's graph runs with."""
    options = run.options or {}
    return GraphCall(
        config=options.get("config") or {},
        context=options.get("context") or None,
        interrupt_before=options.get("interrupt_before"),
        interrupt_after=options.get("interrupt_after"),
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Taken:
    """A run its queue took for an executor: claimed in the statement that took its job ``job_id``
    (``claimed`` as :meth:`~checkpoints.runs.RunStore.claim` answers it), and ended with the run's final
    status, after which ``ended`` is told the job's id (its queue then does not end it again).

    ``claimed`` None: the statement claimed nothing, because the run had ended, or because the run committed
    after that statement's snapshot was taken while procrastinate's fetch (a function, with a snapshot of its
    own) already saw its job. The executor then claims the run on its own, which tells the two apart."""

    job_id: int
    claimed: tuple[RunRow, str | None] | None
    ended: Callable[[int], None]


class RunExecutor:
    """Executes one queued run on its thread's journey and records its status and outcome."""

    def __init__(
        self, runtime: JourneyRuntime, runs: RunStore, *, notify: Any = None, durability: Durability | None = None
    ) -> None:
        self.runtime = runtime
        self.runs = runs
        self._notify = notify  # an object with .changed(run_id, finished): wakes in-process waiters
        self._durability = durability  # for assistants whose runs replay from the event log; None: the engine's
        self.webhooks = Webhooks(runtime, runs)
        runtime.store.events.on_status(_note_status)
        # Runs being executed whose cancel has reached them (their lock's handler, their graph call or their own): a
        # queue that cancelled one and sees it missing here cancels again, since a cancel can be lost on its way.
        self.stopping: set[str] = set()

    async def cancel_again_while_lost(
        self, task: asyncio.Task[Any], run_id: str, executing: Callable[[], bool] = lambda: True
    ) -> None:
        """Until ``task`` (cancelled to stop the run ``run_id``) is done, cancel it again every :data:`RECANCEL_S`
        seconds while it executes the run (``executing``) and the cancel has not reached the run (:attr:`stopping`).

        A cancel can be lost on its way (Python 3.11's ``asyncio.wait_for``, as psycopg_pool's wait for a pooled
        connection uses it, drops one that lands as its wait completes), and the run would go on to its end, its
        cancel asked for and never taken. Its queue cancels once (procrastinate's abort of a job, the embedded
        runner's cancel of a driver): the queue calls this once it has."""
        while not task.done():
            await asyncio.wait({task}, timeout=RECANCEL_S)
            if not task.done() and executing() and run_id not in self.stopping:
                log.warning("a run's cancel was lost on its way; it is cancelled again", run_id=run_id)
                task.cancel()

    async def execute(self, run_id: str, *, due: bool = False, taken: Taken | None = None) -> RunRow | None:
        """Claim and execute the run. ``due``: its queue held it back until its due time (``after_seconds``)
        already, so it is not read again to check. ``taken``: its queue claimed it already, with its job."""
        # A cancel asked for is recorded under the journey's lock, where the cancel lands (see ON_CANCEL).
        # One its graph call took is not made again: the call writes its way out (OnCancel.taken).
        halt = functools.partial(self._halt_if_asked, run_id)
        token = ON_CANCEL.set(OnCancel(taken=functools.partial(self.stopping.add, run_id), halt=halt))
        given = GIVEN_STATUSES.set({})
        try:
            with structlog.contextvars.bound_contextvars(run_id=run_id):  # in every log line and span of the run
                return await self._execute(run_id, due, taken)
        finally:
            GIVEN_STATUSES.reset(given)
            ON_CANCEL.reset(token)
            self.stopping.discard(run_id)

    async def _execute(self, run_id: str, due: bool, taken: Taken | None) -> RunRow | None:
        if not due and (pending := await self.runs.get_run(run_id)) is not None:
            await self.when_due(pending)
        try:
            # Not claimed with its job: claimed now (see Taken), else a run committed late would be dropped.
            claimed = (taken.claimed if taken is not None else None) or await self.runs.claim(run_id)
            if claimed is None:
                return None
            # Running now: a stream of its thread here says so (its metadata) at once. Its thread's key, not the
            # run's: a waiter on the run (runs.wait) would only read it back, still running.
            self._changed(thread_key(claimed[0].thread_id))
            return await self._execute_claimed(*claimed, taken)
        except asyncio.CancelledError:
            self.stopping.add(run_id)
            # A cancel asked for (recorded before the run is stopped, see ServerServices.cancel) ends the run
            # interrupted wherever it lands, else its queue would take it up again. One nobody asked for is its
            # process stopping: the run is left unfinished for its queue, which finishes it as after a crash.
            if await self._cancel_asked(run_id):
                await self._interrupted(run_id)
            raise

    async def _cancel_asked(self, run_id: str) -> bool:
        """Whether a cancel of the run was asked for (not its process's shutdown: see :meth:`_execute`)."""
        run = await self.runs.get_run(run_id)
        return run is not None and run.cancel_requested_at is not None

    async def _halt_if_asked(self, run_id: str, instance_id: str) -> None:
        """A run cancelled on purpose (runs.cancel, recorded before it was stopped) leaves its journey where it
        stopped (``JourneyEngine.halt``): no read or recovery runs the cancelled step on; a new run does. A run
        stopped by its process's shutdown was not asked to stop: its work is finished on restart, as a crash's.
        Called as the run is cancelled in ``instance_id``'s lock (``ON_CANCEL``), before it lets the lock go."""
        self.stopping.add(run_id)
        try:
            run = await self.runs.get_run(run_id)
            if run is None or run.cancel_requested_at is None:
                return
            thread = await self.runs.get_thread(run.thread_id)
            if thread is None or thread.instance_id != instance_id:  # another journey's lock: not this run's
                return
            graph = await graph_of(self.runtime, get_assistant(run.graph_id), instance_id)
            await self.runtime.engine.halt(graph, instance_id)
        except Exception as exc:  # the run still ends interrupted; its step is then finished as a crash's would be
            if lost_database(exc) is not None:  # the outage that stopped it (its lock lost): no fault of the run
                log.info("a cancelled run's halt is not recorded: the database is away", run_id=run_id)
                return
            log.exception("could not record a cancelled run's halt", run_id=run_id)

    async def _execute_claimed(self, run: RunRow, instance_id: str | None, taken: Taken | None) -> RunRow | None:
        run_id = run.run_id
        if run.cancel_requested_at is not None:  # a retry of a run cancelled as its worker died: not again
            await self._interrupted(run_id)
            return await self.runs.get_run(run_id)
        assistant = get_assistant(run.graph_id)
        if (
            taken is not None
            and not self._binds_first(run, assistant, instance_id)
            and (now := await self.runs.get_run(run_id)) is not None
            and now.status in TERMINAL
        ):
            # Its queue took the run twice (a worker's heartbeat late: a pause, a blocked loop) and the other attempt
            # ran it to its end while this one waited, be this one the first, resumed, or the retry: it would run it
            # again (a guide's turn twice; a start refused, its stream given a stale "error" chunk). Left as that
            # attempt ended it; one still under way is met below (its journey held, or registered first). A start
            # that binds its thread first is not read: its bind is refused instead (see _binds_first).
            raise self._superseded(run)
        if instance_id is None and run.attempts > 1 and await self.runs.get_thread(run.thread_id) is None:
            # A retry whose thread went as the run ended (on_completion="delete"; a thread deleted otherwise takes
            # its runs along) before its worker died: its work is done, and run again it would start anew.
            job_id = taken.job_id if taken is not None else None
            finished = await self.runs.finish(run_id, "success", job_id=job_id)
            if finished is not None and taken is not None:
                taken.ended(taken.job_id)
            self._changed(run_id, finished)
            return finished or await self.runs.get_run(run_id)
        principal = run.principal or "local"
        groups = run.groups
        seq = await self.runs.last_seq(run_id) if run.stream_modes else 0  # a retried run streams on

        async def emit(mode: str, chunk: Any) -> None:
            nonlocal seq
            seq += 1
            await self.runs.append_event(run_id, seq, mode, shown(mode, jsonable(chunk)))
            self._changed(run_id)

        def binding(bound: str) -> Statement:  # committed by the caller (with the instance's registration)
            nonlocal instance_id
            instance_id = bound
            return self.runs.binding(run.thread_id, run.graph_id, bound, by=run)

        async def bind(bound: str) -> None:
            await self.runs.commit(binding(bound))

        outcomes: dict[str, Outcome] = {}
        sink = StreamSink.of(run.stream_modes, emit)
        options = RunOptions(self._durability_of(run, assistant), sink, outcomes, graph_call(run))
        ctx = RunContext(self.runtime, run.thread_id, principal, groups, bind, binding, options)
        status, error, output = "success", None, None
        view: View = None
        try:
            with acting_as(run.owner):  # the journey it starts is owned by whoever created the run
                view = await self._run(run, assistant, ctx, instance_id)
        except Exception as exc:
            if lost_database(exc) is not None:  # the database went away, the run did not fail: its queue runs it again
                raise
            if taken is not None and self.runs.bound_elsewhere(exc):
                # Its queue took the run again while an attempt lived on (a heartbeat late), both before the thread
                # was bound: the other attempt registered its journey first, and this one's registration (or bind)
                # was refused before any step ran. Left to that attempt, as a journey held elsewhere is.
                raise self._superseded(run) from exc
            if taken is not None and held_elsewhere(exc) and run.attempts > 1:
                # A run its queue took again for a dead worker's while that worker lives on (its heartbeat was late:
                # a pause, a blocked loop) and still holds the journey: not failed, its queue takes it again later
                # (the first worker's end of the run ends the job).
                raise
            if taken is not None and await self._moved_on(run):
                # This attempt, past the check above, met what the other attempt did meanwhile (it holds the
                # journey, started it, or ended the run): the run ends as that attempt ends it, not as this one's
                # error (nor with its "error" chunk in the stream).
                raise self._superseded(run) from exc
            if not isinstance(exc, JourneyError):
                log.exception("run failed", run_id=run_id)
                status, error = "error", {"error": type(exc).__name__, "message": str(exc)}
            elif isinstance(exc, StepCrashedError):  # a bug in a step: its traceback, and its type as LangGraph's
                log.exception("run failed", run_id=run_id)
                status, error = "error", {"error": exc.error_type, "message": exc.message, "category": exc.category}
            else:
                status, error = "error", {"error": exc.code, "message": exc.message, "category": exc.category}
        else:
            if instance_id is not None and (GIVEN_STATUSES.get() or {}).get(instance_id) == "failed":
                status, error = "error", await self._left_failed(instance_id)
        if error is not None:
            await emit("error", error) if run.stream_modes else None
        elif instance_id is not None:
            outcome = outcomes.get(instance_id)
            if view is not None and outcome is not None:
                output = outcome_values(outcome) | jsonable(view)
            else:
                output = await self._output(assistant, instance_id)
        if (run.options or {}).get("on_completion") == "delete":  # gone before anyone hears the run ended
            await self._delete_thread(run)
        if (run.options or {}).get("webhook"):  # armed before the end: a process killed after it still calls
            await self.webhooks.arm(run)
        # Kept only to be shown (waiting clients read it): redacted here, where the design's marks are known.
        job_id = taken.job_id if taken is not None else None  # ended with the run: one commit
        finished = await self.runs.finish(
            run_id, status, error, redact_answer(output) if output else output, job_id=job_id
        )
        if finished is not None and taken is not None:
            taken.ended(taken.job_id)
        self._changed(run_id, finished)
        if finished is not None:
            self.finished(finished)
        return finished or await self.runs.get_run(run_id)

    @staticmethod
    def _binds_first(run: RunRow, assistant: Assistant, instance_id: str | None) -> bool:
        """Whether the run's first write is its thread's bind, refused once the run has ended (``binding(by=)``): a
        start on a thread bound to no journey yet, but a chat one's (it notes its base first). Every pattern's start
        binds before it writes (``RunContext.bind``, or in its journey's registration): refused, it starts nothing,
        and the attempt leaves the run as the other attempt ended it."""
        return run.kind == "start" and instance_id is None and not assistant.chat

    async def _moved_on(self, run: RunRow) -> bool:
        """Whether the run went on without this attempt since its claim (``run``): its queue took it again (another
        attempt lives, or ended it), or it has ended."""
        now = await self.runs.get_run(run.run_id)
        return now is not None and (now.attempts > run.attempts or now.status in TERMINAL)

    @staticmethod
    def _superseded(run: RunRow) -> StartedElsewhereError:
        """This attempt's leave of a run its queue gave to another (see :func:`~checkpoints.locks.held_elsewhere`):
        its worker's retry strategy takes the job again later, which finds the run ended by that attempt."""
        return StartedElsewhereError(
            f"run {run.run_id!r}: another attempt of it runs the journey of thread {run.thread_id!r}",
            run_id=run.run_id,
            thread_id=run.thread_id,
        )

    async def _left_failed(self, instance_id: str) -> dict[str, Any]:
        """The error of a run whose work left its instance failed without raising: the failure its log recorded
        last (the incident a retry clears), as a run whose step raised it would end."""
        failures = await self.runtime.store.events.list(instance_id, types=[FAILED])
        error, message = failure_error(failures[-1].payload if failures else {})
        return {"error": error, "message": message, "category": "failed"}

    def delay(self, run: RunRow) -> float:
        """Seconds until a delayed run (``after_seconds``) may start; its due time is in its row, so a
        restart keeps it. 0 for a run cancelled meanwhile: claimed at once, it ends interrupted."""
        due = (run.options or {}).get("not_before")
        if not due or run.status != "pending" or run.cancel_requested_at is not None:
            return 0.0
        return max(0.0, (datetime.fromisoformat(due) - self.runtime.store.clock.now()).total_seconds())

    async def when_due(self, run: RunRow) -> None:
        """Wait until a delayed run may start (see :meth:`delay`)."""
        if (delay := self.delay(run)) > 0:
            await asyncio.sleep(delay)

    async def _delete_thread(self, run: RunRow) -> None:
        """``on_completion="delete"``: the run's thread goes (a chat thread's checkpoints too; a journey it
        started stays reachable by its instance id). The run's record stays: waiting clients read its output."""
        thread = await self.runs.get_thread(run.thread_id)
        if thread is not None and thread.instance_id is not None and get_assistant(run.graph_id).chat:
            await self.runtime.store.saver.adelete_thread(thread.instance_id)
        await self.runs.delete_thread(run.thread_id, runs=False)

    def finished(self, run: RunRow) -> None:
        """What a run asked for when it has ended: its webhook timer (armed already) is looked at now."""
        if (run.options or {}).get("webhook"):
            self.runtime.processes.scheduler.wake()

    def _durability_of(self, run: RunRow, assistant: Assistant) -> Durability | None:
        """The client's choice, else the server's; "exit" only for journeys whose steps replay from the log
        (others keep the engine's own setting). None: the engine's own setting."""
        requested = cast("Durability | None", run.durability) or self._durability  # quoted: no union built per run
        if requested == "exit" and not assistant.replays_from_log:
            return None
        return requested if run.durability or assistant.replays_from_log else None

    async def _interrupted(self, run_id: str) -> None:
        finished = await self.runs.finish(
            run_id, "interrupted", {"error": "Cancelled", "message": "the run was cancelled"}
        )
        self._changed(run_id, finished)

    async def _run(self, run: RunRow, assistant: Assistant, ctx: RunContext, instance_id: str | None) -> View:
        """The run's work; the journey's view when the assistant answered with one (see ``View``)."""
        if run.kind == "start" and (instance_id is None or assistant.chat):
            if instance_id is not None and await self._turn_taken(run, assistant, instance_id):
                await self._finish_in_flight(assistant, instance_id, ctx.options)
                return None
            turn_from = NO_STATE  # a chat turn's: where the thread stands as this attempt takes it (RunContext)
            if instance_id is not None:  # where a rollback would put the thread back
                turn_from = await self._remember_base(run, assistant, instance_id)
                if checkpoint_id := (run.options or {}).get("checkpoint_id"):
                    graph = await graph_of(self.runtime, assistant, instance_id)
                    await fork_back(self.runtime, graph, instance_id, checkpoint_id)
                    turn_from = await self._checkpoint_now(assistant, instance_id)
            elif assistant.chat:
                await self.runs.set_base_checkpoint(run.run_id, NO_STATE)
            if assistant.chat:
                ctx = dataclasses.replace(ctx, turn_from=turn_from)
            return await assistant.start(ctx, run.input or {})
        if instance_id is None:  # queued behind the thread's first run, which started nothing (failed, cancelled)
            raise ApiError(409, "NothingToResume", f"thread {run.thread_id!r} has no journey; start one with input")
        if run.kind == RUN_ON:  # work the API stored and handed over, or an operator's run on
            if assistant.run_on is not None:
                await assistant.run_on(ctx, instance_id)
            else:
                await self.runtime.instances.run_on(instance_id, ctx.options)
            return None
        if run.kind == "start":
            if run.attempts == 1:  # claimed for the first time on a bound thread: another start run bound it
                raise ApiError(
                    409,
                    "JourneyStarted",
                    f"thread {run.thread_id!r} already runs a journey (a run queued before this one started it); "
                    "advance it with command.resume",
                )
            await self._restart(assistant, ctx, run, instance_id)  # a retried first run: its earlier attempt bound it
            return None
        if run.kind == "continue":  # on from where interrupt_before/after stopped it, to the next stop
            if assistant.retry is not None and await self._failed(assistant, instance_id):
                await assistant.retry(ctx, instance_id)  # a failed step runs again (the retry checks it locked)
            else:
                await self._finish_in_flight(assistant, instance_id, ctx.options, go_on=True)
            return None
        return await self._resume(run, assistant, ctx, instance_id)

    async def _remember_base(self, run: RunRow, assistant: Assistant, instance_id: str) -> str:
        """Note the thread's checkpoint as the run's base; it."""
        base = await self._checkpoint_now(assistant, instance_id)
        await self.runs.set_base_checkpoint(run.run_id, base)
        return base

    async def _checkpoint_now(self, assistant: Assistant, instance_id: str) -> str:
        """The thread's latest checkpoint's id (``NO_STATE``: it has none)."""
        graph = await graph_of(self.runtime, assistant, instance_id)
        current = await graph.aget_state(self.runtime.engine.config(instance_id))
        checkpoint = (current.config or {}).get("configurable", {}).get("checkpoint_id")
        return str(checkpoint) if checkpoint else NO_STATE

    async def _turn_taken(self, run: RunRow, assistant: Assistant, instance_id: str) -> bool:
        """Whether a retried chat run's turn was taken by an earlier attempt (its worker or server died before the
        run's end): the thread moved on from the checkpoint that attempt noted as its base. Taken again, its input
        would be a second turn (its messages twice). Not for a run forking from a checkpoint (``checkpoint_id``):
        its fork moves the thread before its turn, so a move says nothing of the turn."""
        if not assistant.chat or run.attempts == 1 or run.base_checkpoint is None:
            return False
        if (run.options or {}).get("checkpoint_id"):
            return False
        return run.base_checkpoint != await self._checkpoint_now(assistant, instance_id)

    async def _output(self, assistant: Assistant, instance_id: str) -> dict[str, Any] | None:
        try:
            return await thread_output(self.runtime, assistant, instance_id)
        except Exception:  # the run itself succeeded: readers rebuild the output from the thread instead
            log.exception("could not record a run's output", instance_id=instance_id)
            return None

    async def _resume(self, run: RunRow, assistant: Assistant, ctx: RunContext, instance_id: str) -> View:
        graph = await graph_of(self.runtime, assistant, instance_id)
        config = self.runtime.engine.config(instance_id)
        current = await graph.aget_state(config)
        checkpoint = (current.config or {}).get("configurable", {}).get("checkpoint_id")
        if run.attempts > 1 and run.base_checkpoint is not None and run.base_checkpoint != checkpoint:
            # An earlier attempt got past the checkpoint this resume was for: it was applied already.
            if in_flight(current):
                await self._finish_in_flight(assistant, instance_id, ctx.options)
            return None
        await self.runs.set_base_checkpoint(run.run_id, checkpoint)
        # An answer naming its interrupt answers that one only (a repeated answer fails, applying nothing).
        answering, answer = addressed((run.command or {}).get("resume"))
        answered = dataclasses.replace(ctx, options=dataclasses.replace(ctx.options, answering=answering))
        return await assistant.resume(answered, instance_id, answer)

    async def _restart(self, assistant: Assistant, ctx: RunContext, run: RunRow, instance_id: str) -> None:
        """A first run whose executor died after binding its thread: start what never started, finish
        what is in flight; steps whose completion is logged are not executed again."""
        if await self.runtime.store.index.get_instance(instance_id) is None:
            await assistant.start(ctx, run.input or {})  # died before the journey was registered
            return
        if assistant.restart is not None:
            await assistant.restart(ctx, instance_id, run.input or {})
            return
        await self._finish_in_flight(assistant, instance_id, ctx.options)

    async def _failed(self, assistant: Assistant, instance_id: str) -> bool:
        """Whether the journey's thread stands failed (see ``stands_failed``; read without its lock: a hint)."""
        graph = await graph_of(self.runtime, assistant, instance_id)
        return stands_failed(await graph.aget_state(self.runtime.engine.config(instance_id)))

    async def _finish_in_flight(
        self, assistant: Assistant, instance_id: str, options: RunOptions, *, go_on: bool = False
    ) -> None:
        """Finish the work a crash left in flight (and, ``go_on``, go on from where breakpoints or a cancelled
        run stopped it, not past the journey's deadline)."""
        graph = await graph_of(self.runtime, assistant, instance_id)
        async with self.runtime.engine.exclusive(instance_id):
            if go_on:
                await self.runtime.instances.before_move(graph, instance_id, options, go_on=True)
            else:
                await self.runtime.engine.settled_state(graph, instance_id, options=options)

    def _changed(self, run_id: str, finished: RunRow | None = None) -> None:
        """Wake the run's waiters in this process; ``finished``: the run, which has just finished (they need not
        read it back)."""
        if self._notify is not None:
            self._notify.changed(run_id, finished)

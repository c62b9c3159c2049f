"""The run queue: where a created run goes to be executed. One interface, two implementations:
:class:`~server.queues.embedded.EmbeddedQueue` executes runs in the API process,
:class:`~server.queues.procrastinate.ProcrastinateQueue` hands them to ``journeys worker`` processes
through PostgreSQL. The server calls only this interface; which one it opens is a setting."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

from checkpoints.index import Instance
from graphs.kernel.patterns import RUN_ON
from server.runs.store import Enqueue, RunRow, RunStore


class RunQueue(ABC):
    """Takes runs to execute, in the order they were created on each thread, and stops them on request."""

    @property
    def enqueue(self) -> Enqueue | None:
        """How a new run reaches the queue inside the transaction that creates it (so the run and its job
        commit together); None: the queue learns of the run from :meth:`submit`, after the commit."""
        return None

    def submit(self, run: RunRow) -> None:  # noqa: B027 - a queue fed by enqueue has nothing to do here
        """The run is committed: a queue that was not handed it in its transaction takes it now."""

    @abstractmethod
    async def withdraw(self, run: RunRow) -> bool:
        """Take ``run`` off the queue if no executor has taken it yet; False when it has started."""

    @abstractmethod
    async def stop(self, run: RunRow) -> None:
        """Stop ``run``, which has started, where it executes; its executor marks it interrupted."""


async def cancel_run(
    queue: RunQueue, runs: RunStore, run: RunRow, changed: Callable[[str, RunRow | None], None]
) -> None:
    """Cancel ``run`` on ``queue``: a queued run ends interrupted at once (``changed`` is told its row), a running
    one is stopped where it executes, in this process or in a worker.

    The cancel is recorded first: whoever claims the run from then on (its executor after a failure, a fresh
    driver, a retried job) ends it interrupted instead of executing it."""
    await runs.request_cancel(run.run_id)
    if await queue.withdraw(run):
        finished = await runs.finish(run.run_id, "interrupted", {"error": "Cancelled", "message": "cancelled"})
        changed(run.run_id, finished)  # its waiters take the row: no read of it back
    else:
        await queue.stop(run)


async def queue_run_on(runs: RunStore, instance: Instance, enqueue: Enqueue | None) -> RunRow:
    """Queue a ``run_on`` run of the journey ``instance`` (the work a call stored for it, or an operator's run on,
    for whoever executes the database's runs: ``enqueue`` defers its job with it in distributed mode) on its thread,
    the thread named by its id, made and bound to it if it has none and owned as the journey is."""
    instance_id = instance.instance_id
    await runs.create_thread(instance_id, {}, instance.owned_by, if_exists="do_nothing")
    await runs.bind(instance_id, instance.pattern, instance_id)
    return await runs.create_run(
        thread_id=instance_id,
        assistant_id=instance.pattern,
        kind=RUN_ON,
        input=None,
        command=None,
        stream_modes=[],
        multitask_strategy="enqueue",
        metadata={},
        principal=instance.owned_by,
        enqueue=enqueue,
    )


class ElsewhereQueue(RunQueue):
    """The runs another process executes with no queue between it and this one (an embedded ``journeys serve``),
    seen from a process that executes none (``journeys instances terminate``): the cancel :func:`cancel_run`
    records is how one reaches that process, which stops the run once it sees it (the embedded runner's watch of
    recorded cancels), or ends it interrupted as it takes it up. Nothing is stopped from here; a run still pending
    (waiting for its ``after_seconds``, say) is withdrawn, as a queue's own withdraw does."""

    def __init__(self, runs: RunStore) -> None:
        self.runs = runs

    async def withdraw(self, run: RunRow) -> bool:
        # Read after the cancel was recorded: a run pending now is claimed, if ever, with its cancel seen, and its
        # executor ends it interrupted without running it. Ending it here at once spares its waiters its delay.
        now = await self.runs.get_run(run.run_id)
        return now is not None and now.status == "pending"

    async def stop(self, run: RunRow) -> None:
        pass

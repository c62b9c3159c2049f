"""What the routers call, opened once in the app's lifespan and reached through ``request.app.state``.

Routers call these services; they take no locks and write no graph state themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Request

from graphs.errors import InvalidInputError, JourneyNotFoundError
from graphs.kernel.patterns import Graph, get_pattern
from graphs.runtime import JourneyRuntime
from server.assistants import get_assistant, graph_of
from server.crons import CronService
from server.problems import ApiError
from server.queues.base import RunQueue
from server.runs.executor import RunExecutor
from server.runs.store import RunRow, RunStore, ThreadRow
from server.runs.watch import RunWatch
from server.settings import Settings


@dataclass(frozen=True, slots=True)
class ResolvedThread:
    """A thread as the server knows it: its row (None for a journey started through the journey
    endpoints, whose instance id is its thread id), and the assistant and instance it is bound to."""

    thread_id: str
    row: ThreadRow | None
    assistant_id: str | None
    instance_id: str | None

    @classmethod
    def of(cls, row: ThreadRow) -> ResolvedThread:
        return cls(row.thread_id, row, row.assistant_id, row.instance_id)


@dataclass
class ServerServices:
    """What the server opens at startup and the routers use: settings, runtime, runs and the executor."""

    settings: Settings
    runtime: JourneyRuntime
    runs: RunStore
    watch: RunWatch
    executor: RunExecutor
    queue: RunQueue
    crons: CronService

    def submit(self, run: RunRow) -> None:
        """After the run is committed: the queue takes it (unless it was enqueued in that transaction)."""
        self.queue.submit(run)

    async def cancel(self, run: RunRow) -> None:
        """A queued run is cancelled at once; a running one is stopped, in this process or in a worker."""
        if await self.queue.withdraw(run):
            await self.runs.finish(run.run_id, "interrupted", {"error": "Cancelled", "message": "cancelled"})
            self.watch.changed(run.run_id)
        else:
            await self.queue.stop(run)

    # --- threads ----------------------------------------------------------------------------------

    async def resolve_thread(self, thread_id: str) -> ResolvedThread:
        row = await self.runs.get_thread(thread_id)
        if row is not None:
            return ResolvedThread.of(row)
        instance = await self.runtime.store.index.get_instance(thread_id)
        if instance is None:
            raise JourneyNotFoundError(f"no thread {thread_id!r}", thread_id=thread_id)
        return ResolvedThread(thread_id, None, instance.pattern, instance.instance_id)

    async def thread_graph(self, thread: ResolvedThread) -> Graph | None:
        """The compiled graph holding the thread's checkpoints; None while the thread is not bound."""
        if thread.instance_id is None or thread.assistant_id is None:
            return None
        return await graph_of(self.runtime, get_assistant(thread.assistant_id), thread.instance_id)

    async def update_thread_state(
        self, thread_id: str, values: dict[str, Any] | None, as_node: str | None
    ) -> dict[str, Any]:
        """Write ``values`` into the journey's state as ``as_node`` would (an operator's correction: it
        bypasses the pattern's checks), on a thread with no active run; the config of the checkpoint written."""
        thread = await self.resolve_thread(thread_id)
        graph = await self.thread_graph(thread)
        if graph is None or thread.instance_id is None:
            raise ApiError(409, "NoState", f"thread {thread_id!r} has no state yet; start a run on it first")
        if await self.runs.active_count(thread_id):
            raise ApiError(409, "ThreadBusy", f"thread {thread_id!r} has an active run")
        async with self.runtime.engine.exclusive(thread.instance_id):
            if as_node is not None and as_node not in graph.nodes:
                raise ApiError(  # which nodes there are depends on the journey the thread runs: a conflict
                    409,
                    "UnknownNode",
                    f"as_node {as_node!r} is not a node of this thread's graph",
                    allowed=list(graph.nodes),
                )
            try:
                written = await graph.aupdate_state(
                    self.runtime.engine.config(thread.instance_id), values, as_node=as_node
                )
            except (ValueError, KeyError, TypeError) as exc:
                raise InvalidInputError(f"cannot apply this state update: {exc}") from exc
        configurable: dict[str, Any] = written.get("configurable", {})
        return configurable

    # --- journeys ---------------------------------------------------------------------------------

    async def journey_status(self, instance_id: str) -> dict[str, Any]:
        """Any journey's status: its index row, with its pattern's status view."""
        instance = await self.runtime.store.index.get_instance(instance_id)
        if instance is None:
            raise JourneyNotFoundError(f"no journey instance {instance_id!r}", instance_id=instance_id)
        try:
            status = get_pattern(instance.pattern).status
        except JourneyNotFoundError:
            status = None
        if status is None:  # a pattern a newer server wrote, or one without instances of its own
            raise JourneyNotFoundError(
                f"journey instance {instance_id!r} is of pattern {instance.pattern!r}, which this server has no "
                "view of",
                instance_id=instance_id,
            )
        view = await status(self.runtime, instance)
        return {
            "instance_id": instance_id,
            "pattern": instance.pattern,
            "user_id": instance.user_id,
            "index_status": instance.status,
            **view,
        }


def services(request: Request) -> ServerServices:
    found: ServerServices = request.app.state.services
    return found

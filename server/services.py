"""What the routers call, opened once in the app's lifespan and reached through ``request.app.state``.

Routers call these services; they take no locks and write no graph state themselves.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import Request

from checkpoints.figures import live_figures
from checkpoints.index import Instance
from checkpoints.ownership import Owner, Viewer, acting_as
from graphs.errors import ImpersonationError, InvalidInputError, JourneyNotFoundError
from graphs.kernel.patterns import Graph, get_pattern
from graphs.runtime import JourneyRuntime
from nodes.telemetry import circuit_states, exposition
from server.assistants import get_assistant, graph_of
from server.auth import Authenticator, Principal, resolve_authenticator
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
    authenticator: Authenticator | None = None  # None: the settings' (API keys by default)

    def __post_init__(self) -> None:
        if self.authenticator is None:
            self.authenticator = resolve_authenticator(self.settings)

    # --- ownership: every route that creates or reads a caller's objects goes through these -------------

    def owner(self, caller: Principal) -> Owner:
        """Who owns what ``caller`` creates (the authenticator's ``on_create``)."""
        assert self.authenticator is not None
        return self.authenticator.on_create(caller)

    def viewer(self, caller: Principal) -> Viewer:
        """Which stored objects ``caller`` may see and act on (the authenticator's ``read_filter``)."""
        assert self.authenticator is not None
        return self.authenticator.read_filter(caller)

    @contextmanager
    def acting(self, caller: Principal) -> Iterator[None]:
        """Objects created inside (journey instances, and any store that reads
        :func:`checkpoints.ownership.current_owner`) are owned by ``caller``."""
        with acting_as(self.owner(caller)):
            yield

    def check_user(self, caller: Principal, user_id: str | None) -> None:
        """A ``user_id`` named in a path or body must be the caller's own, unless it may impersonate."""
        if user_id is None or user_id == caller.name or caller.allows("impersonate"):
            return
        raise ImpersonationError(
            f"{caller.name!r} may not act as user {user_id!r}: that needs the 'impersonate' scope", user_id=user_id
        )

    async def instance(self, caller: Principal, instance_id: str) -> Instance:
        """A journey instance ``caller`` may see; not found (404, as for one that does not exist) otherwise."""
        found = await self.runtime.store.index.get_instance(instance_id, viewer=self.viewer(caller))
        if found is None:
            raise JourneyNotFoundError(f"no journey instance {instance_id!r}", instance_id=instance_id)
        return found

    def check_inbox(self, caller: Principal, assignee: str | None, group: str | None) -> None:
        """An inbox is listed by its user (or one who may impersonate) or a member of its group."""
        if assignee is None and group is None and not self.viewer(caller).admin:
            raise ImpersonationError("name the assignee (yourself) or one of your groups", user_id=None)
        self.check_user(caller, assignee)
        if group is not None and group not in caller.groups and not caller.allows("impersonate"):
            raise ImpersonationError(f"{caller.name!r} is not in group {group!r}", group=group)

    async def task(self, caller: Principal, task_id: str) -> dict[str, Any]:
        """A user task the caller may see: its assignee's, its candidate groups' members', or its instance
        owner's; not found otherwise."""
        task = await self.runtime.processes.inbox.get_task(task_id)
        viewer = self.viewer(caller)
        offered = task.get("assignee") == caller.name or set(task.get("candidate_groups") or ()) & set(caller.groups)
        if not (viewer.admin or offered):
            await self.instance(caller, task["instance_id"])
        return task

    async def run(self, caller: Principal, thread_id: str, run_id: str) -> RunRow:
        """A run on a thread ``caller`` may see; not found otherwise."""
        await self.resolve_thread(thread_id, caller)
        run = await self.runs.get_run(run_id)
        if run is None or run.thread_id != thread_id:
            raise JourneyNotFoundError(f"no run {run_id!r} on thread {thread_id!r}", run_id=run_id)
        return run

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

    async def metrics(self) -> bytes:
        """The Prometheus exposition: what the processes counted, and the live figures of the database."""
        store = self.runtime.store
        return exposition(await live_figures(store.backend, store.clock.now()), await circuit_states(store))

    # --- threads ----------------------------------------------------------------------------------

    async def resolve_thread(self, thread_id: str, caller: Principal | None) -> ResolvedThread:
        """A thread (or journey instance) ``caller`` may see (None: the server's own reads); not found
        otherwise, whether it exists or not."""
        viewer = self.viewer(caller) if caller is not None else None
        row = await self.runs.get_thread(thread_id, viewer=viewer)
        if row is not None:
            return ResolvedThread.of(row)
        if viewer is not None and await self.runs.get_thread(thread_id) is not None:
            raise JourneyNotFoundError(f"no thread {thread_id!r}", thread_id=thread_id)
        instance = await self.runtime.store.index.get_instance(thread_id, viewer=viewer)
        if instance is None:
            raise JourneyNotFoundError(f"no thread {thread_id!r}", thread_id=thread_id)
        return ResolvedThread(thread_id, None, instance.pattern, instance.instance_id)

    async def thread_graph(self, thread: ResolvedThread) -> Graph | None:
        """The compiled graph holding the thread's checkpoints; None while the thread is not bound."""
        if thread.instance_id is None or thread.assistant_id is None:
            return None
        return await graph_of(self.runtime, get_assistant(thread.assistant_id), thread.instance_id)

    async def update_thread_state(
        self, caller: Principal, thread_id: str, values: dict[str, Any] | None, as_node: str | None
    ) -> dict[str, Any]:
        """Write ``values`` into the journey's state as ``as_node`` would (an operator's correction: it
        bypasses the pattern's checks), on a thread with no active run; the config of the checkpoint written."""
        thread = await self.resolve_thread(thread_id, caller)
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

    async def journey_status(self, caller: Principal, instance_id: str) -> dict[str, Any]:
        """Any journey's status (one ``caller`` may see): its index row, with its pattern's status view."""
        instance = await self.instance(caller, instance_id)
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

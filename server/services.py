"""What the routers call, opened once in the app's lifespan and reached through ``request.app.state``.

Routers call these services; they take no locks and write no graph state themselves.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import structlog
from fastapi import Request
from langchain_core.runnables import RunnableConfig
from pydantic.errors import PydanticUserError

from checkpoints.assistants import AssistantFilter, AssistantRow, AssistantStore
from checkpoints.errors import SystemAssistantError, ThreadBusyError
from checkpoints.events import NewEvent
from checkpoints.figures import live_figures
from checkpoints.index import Instance
from checkpoints.ownership import DEFAULT_TENANT, Owner, Viewer, acting_as
from checkpoints.redaction import mark_sensitive_of
from checkpoints.rows import holds_json
from checkpoints.runs import state_key, thread_key
from checkpoints.savers import copy_checkpoints
from graphs.errors import ImpersonationError, InvalidInputError, JourneyNotFoundError, TaskNotFoundError
from graphs.kernel.engine import refuse_terminated
from graphs.kernel.patterns import Graph, get_pattern, registered_patterns
from graphs.runtime import JourneyRuntime
from graphs.structured.orchestrator import structured_instance_id
from nodes.telemetry import circuit_states, exposition
from server.assistants import Assistant, assistants, get_assistant, graph_of
from server.auth import Authenticator, Principal, resolve_authenticator
from server.crons import CronService
from server.problems import ApiError
from server.queues.base import RunQueue, cancel_run, queue_run_on
from server.runs.executor import RunExecutor, fork_back
from server.runs.store import ACTIVE, NO_STATE, TERMINAL, RunRow, RunStore, ThreadRow, ThreadTTL
from server.runs.watch import RunWatch, wait_for_run
from server.settings import Settings
from server.stream_slots import StreamSlots
from server.thread_ends import THREAD_DELETED, delete_thread_data, thread_control_key

log = structlog.get_logger("journeys.server")
# What a journey logs when its thread is deleted; its key too (once per journey).
# What a journey logs when an operator writes its state (threads.update_state); its checkpoint's metadata names
# the writer under STATE_UPDATED_BY.
STATE_UPDATED = "state.updated"
STATE_UPDATED_BY = "updated_by"
_MARKED_LIMIT = 100_000


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


@dataclass(frozen=True, slots=True)
class ResolvedAssistant:
    """An assistant: its pattern (the graph it runs), and its row unless it is a built-in (system) one."""

    pattern: Assistant
    row: AssistantRow | None

    @property
    def assistant_id(self) -> str:
        return self.row.assistant_id if self.row else self.pattern.assistant_id

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.row.config) if self.row else {}

    @property
    def context(self) -> dict[str, Any]:
        return dict(self.row.context) if self.row else {}


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
    authenticator: Authenticator | None = None  # None: the settings' (API keys by default)
    assistant_rows: AssistantStore = field(init=False)
    streams: StreamSlots = field(init=False)  # the event streams each caller holds open (server/stream_slots.py)
    # The journeys and designs whose sensitive marks this process knows (see know_marks), bounded.
    _marked: set[str] = field(init=False, default_factory=set)

    def __post_init__(self) -> None:
        if self.authenticator is None:
            self.authenticator = resolve_authenticator(self.settings)
        self.assistant_rows = AssistantStore(self.runtime.store.backend, self.runtime.store.clock)
        self.streams = StreamSlots(self.settings.max_streams_per_caller)

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

    async def instance(self, caller: Principal, instance_id: str, *, to_act: bool = False) -> Instance:
        """A journey instance ``caller`` may see; not found (404, as for one that does not exist) otherwise.
        ``to_act``: one that may still run, too; a terminated one (its thread deleted, say) is refused with
        :class:`JourneyFinishedError` (409): its history is kept, but nothing more of it runs."""
        found = await self.runtime.store.index.get_instance(instance_id, viewer=self.viewer(caller))
        if found is None:
            raise JourneyNotFoundError(f"no journey instance {instance_id!r}", instance_id=instance_id)
        if to_act:
            refuse_terminated(found)
        return found

    async def structured_instance_of(self, caller: Principal, journey_id: str, user_id: str) -> str:
        """The instance id of ``user_id``'s structured journey of design ``journey_id`` in the caller's tenant
        (:func:`structured_instance_id`). A journey another tenant than the default one started before its ids
        carried the tenant kept ``<journey id>:<user id>``, the default tenant's id: it is that journey while the
        tenant has none under its own id (only a journey of this tenant, design and user: the old id was shared
        by every tenant), and the default tenant's user of that name has the digest form of the default tenant's
        id instead (instances are never deleted: the plain id stays the other tenant's)."""
        tenant = self.owner(caller).tenant
        instance_id = structured_instance_id(journey_id, user_id, tenant)
        index = self.runtime.store.index
        if tenant == DEFAULT_TENANT:
            taken = await index.get_instance(instance_id)
            if taken is None or taken.tenant in (None, DEFAULT_TENANT):  # no tenant: started outside any caller
                return instance_id
            return structured_instance_id(journey_id, user_id, tenant, qualified=True)
        if await index.get_instance(instance_id) is not None:
            return instance_id
        legacy_id = structured_instance_id(journey_id, user_id, DEFAULT_TENANT)
        legacy = await index.get_instance(legacy_id)
        if (
            legacy is not None
            and legacy.tenant == tenant
            and (legacy.pattern, legacy.journey_id, legacy.user_id) == ("structured", journey_id, user_id)
        ):
            return legacy_id
        return instance_id

    async def check_input_instances(self, caller: Principal, assistant: Assistant, data: Any) -> None:
        """The journey instances a run's input names for its assistant to act on (``Assistant.instance_inputs``)
        are ones ``caller`` may act on: not found (404) otherwise, as for a thread of someone else's."""
        if isinstance(data, Mapping):
            for name in assistant.instance_inputs:
                if isinstance(data.get(name), str):
                    await self.instance(caller, data[name], to_act=True)

    def check_inbox(self, caller: Principal, assignee: str | None, group: str | None) -> None:
        """An inbox is listed by its user (or one who may impersonate) or a member of its group."""
        self.check_user(caller, assignee)
        if group is not None and group not in caller.groups and not caller.allows("impersonate"):
            raise ImpersonationError(f"{caller.name!r} is not in group {group!r}", group=group)

    async def task(self, caller: Principal, task_id: str) -> dict[str, Any]:
        """A user task the caller may see and work on: offered to it (its assignee, a member of one of its
        candidate groups) in the caller's tenant, or of an instance the caller may see; not found otherwise.
        People and groups are named per tenant: another tenant's "finance" group is not offered the task."""
        task = await self.runtime.processes.inbox.get_task(task_id)
        viewer = self.viewer(caller)
        offered = task.get("assignee") == caller.name or set(task.get("candidate_groups") or ()) & set(caller.groups)
        if not (viewer.admin or (offered and await self._of_tenant(task["instance_id"], viewer.tenant))):
            try:
                await self.instance(caller, task["instance_id"])
            except JourneyNotFoundError:
                raise TaskNotFoundError(f"no user task {task_id!r}", task_id=task_id) from None
        await self.know_marks(task["instance_id"])
        return task

    def tasks_tenant(self, caller: Principal) -> str | None:
        """The tenant whose tasks ``caller`` lists (None: an admin's, every tenant's)."""
        viewer = self.viewer(caller)
        return None if viewer.admin else viewer.tenant

    async def _of_tenant(self, instance_id: str, tenant: str) -> bool:
        instance = await self.runtime.store.index.get_instance(instance_id)
        return instance is not None and (instance.tenant or DEFAULT_TENANT) == tenant

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

    @asynccontextmanager
    async def thread_control(self, thread_id: str) -> AsyncIterator[None]:
        """The interrupts and rollbacks of a thread's runs (runs.cancel, and double-texting), one at a time per
        thread across processes: each reads the thread's runs inside, once the one before it is done, so two
        at once end as one after the other, never half of each. A thread's delete, copy and the row a journey
        is given (:meth:`thread_row`) take it too: none of them sees the thread half deleted. The store's lock
        (as a journey's writer takes), on a key of the thread's own: its journey's lock is for its runs to take
        meanwhile."""
        async with self.runtime.engine.exclusive(thread_control_key(thread_id)):
            yield

    async def cancel(self, run: RunRow) -> None:
        """A queued run is cancelled at once; a running one is stopped, in this process or in a worker
        (:func:`~server.queues.base.cancel_run`)."""
        await cancel_run(self.queue, self.runs, run, self.watch.changed)

    async def hand_off(self, instance_id: str) -> None:
        """Hand the work a call stored for the journey (a process started, a task answered, a message delivered)
        to the runs' queue, as distributed mode's ``runtime.processes.hand_off``: a ``run_on`` run on its thread
        (the thread named by its id, made and bound to it if it has none, owned as it is), which a worker executes
        with its agents. The run is committed before the call answers, so a worker (or, the API killed before it
        was, startup recovery) does the work."""
        instance = await self.runtime.store.index.get_instance(instance_id)
        if instance is None:  # registered in the call's transaction: never the case
            raise JourneyNotFoundError(f"no journey {instance_id!r}", instance_id=instance_id)
        self.submit(await queue_run_on(self.runs, instance, self.queue.enqueue))
        self.watch.changed(thread_key(instance_id))

    async def handed_over(self, instance_id: str) -> None:
        """Once the runs moving the journey now (those :meth:`hand_off` queued, say) have ended: a caller that
        asked to wait for the work it handed to the workers."""
        for run in await self.runs.active_of_instance(instance_id):
            await wait_for_run(self.runs, self.watch, run.run_id, self.settings.poll_interval)

    async def stop_runs(self, instance_id: str) -> None:
        """Cancel the active runs of the threads moving the journey ``instance_id``, each thread's in
        :meth:`thread_control` as runs.cancel does: a terminate's first step (``JourneyRuntime.stop_runs``)."""
        for thread_id in sorted({run.thread_id for run in await self.runs.active_of_instance(instance_id)}):
            async with self.thread_control(thread_id):  # read again inside: an interrupt may have ended them
                active = await self.runs.active_of_instance(instance_id)
                await self.cancel_many([run for run in active if run.thread_id == thread_id])

    async def cancel_if_active(self, thread_id: str, run_id: str) -> None:
        """Cancel the run unless it has ended: its client went away (``on_disconnect="cancel"``). Read in
        :meth:`thread_control`, as runs.cancel reads it: an interrupt or rollback before may have ended it."""
        async with self.thread_control(thread_id):
            run = await self.runs.get_run(run_id)
            if run is not None and run.status not in TERMINAL:
                await self.cancel(run)

    async def metrics(self) -> bytes:
        """The Prometheus exposition: what the processes counted, and the live figures of the database."""
        store = self.runtime.store
        return exposition(await live_figures(store.backend, store.clock.now()), await circuit_states(store))

    async def visible_runs(self, caller: Principal, runs: Sequence[RunRow]) -> list[RunRow]:
        """The runs of ``runs`` on threads ``caller`` may see."""
        visible = []
        for run in runs:
            try:
                await self.resolve_thread(run.thread_id, caller)
            except JourneyNotFoundError:
                continue
            visible.append(run)
        return visible

    async def cancel_many(self, runs: Sequence[RunRow]) -> int:
        """Cancel each active run of ``runs``; how many were."""
        cancelled = 0
        for run in runs:
            if run.status in ACTIVE:
                await self.cancel(run)
                cancelled += 1
        return cancelled

    async def double_text(self, thread_id: str, assistant: Assistant, strategy: str) -> None:
        """Before a run with ``multitask_strategy`` interrupt or rollback is queued (in :meth:`thread_control`,
        with its queuing): the thread's active runs are cancelled; with rollback they are also deleted, and the
        thread's state goes back to the checkpoint the first of them started from (see :meth:`rollback`)."""
        active = [r for r in await self.runs.list_runs(thread_id, limit=10_000) if r.status in ACTIVE]
        if strategy == "rollback":
            await self.rollback(thread_id, assistant, active)
        else:
            await self.cancel_many(active)

    @staticmethod
    def check_rollback(assistant: Assistant) -> None:
        """A rollback of a journey thread is refused (422): see :meth:`rollback`."""
        if not assistant.chat:
            raise ApiError(
                422,
                "RollbackUnsupported",
                f"the {assistant.assistant_id!r} assistant runs journeys, whose completed steps a rollback of "
                "checkpoints cannot undo; use multitask_strategy='interrupt' or action='interrupt'",
            )

    async def rollback(self, thread_id: str, assistant: Assistant, runs: Sequence[RunRow]) -> list[RunRow]:
        """Cancel ``runs`` (active runs of the thread, read in :meth:`thread_control`, which the caller holds),
        delete them, and put the thread's state back at the checkpoint the first of them started from (a fork
        of it becomes the latest checkpoint); the runs as they ended. For chat threads only: a journey's steps
        are in its event log and may have acted on the world, which no checkpoint can take back (422). Runs
        deleted meanwhile (with their thread, once ended) are left out."""
        self.check_rollback(assistant)
        await self.cancel_many(runs)
        if not runs:
            return []
        ended = []
        for run in runs:
            try:
                ended.append(await wait_for_run(self.runs, self.watch, run.run_id, self.settings.poll_interval))
            except JourneyNotFoundError:  # deleted once it ended (the run, or its thread)
                continue
        # A run that never noted its base changed nothing: the first that did is where the thread goes back.
        bases = [r.base_checkpoint for r in sorted(ended, key=lambda r: r.created_at) if r.base_checkpoint is not None]
        thread = await self.resolve_thread(thread_id, None)
        graph = await self.thread_graph(thread)
        if bases and graph is not None and thread.instance_id is not None:
            base = bases[0]
            if base == NO_STATE:  # the thread had no state before it
                async with self.runtime.engine.exclusive(thread.instance_id):
                    await self.runtime.store.saver.adelete_thread(thread.instance_id)
            else:
                await fork_back(self.runtime, graph, thread.instance_id, base)
        for run in ended:
            await self.runs.delete_run(run.run_id)
        return ended

    async def delete_run(self, run: RunRow) -> None:
        """A finished run (and its chunks); an active one is refused: cancel it first."""
        if run.status not in TERMINAL:
            raise ApiError(409, "RunActive", f"run {run.run_id!r} is {run.status}; cancel it first")
        await self.runs.delete_run(run.run_id)

    # --- assistants -------------------------------------------------------------------------------

    async def resolve_assistant(self, assistant_id: str, caller: Principal | None = None) -> ResolvedAssistant:
        """A built-in pattern's assistant (its id is the pattern's: every caller sees it), or one a caller
        created that ``caller`` may see (not found otherwise; None: no owner filter)."""
        if assistant_id in registered_patterns():
            return ResolvedAssistant(get_assistant(assistant_id), None)
        viewer = self.viewer(caller) if caller is not None else None
        row = await self.assistant_rows.require(assistant_id, viewer=viewer)
        return ResolvedAssistant(get_assistant(row.graph_id), row)

    async def create_assistant(self, caller: Principal, if_exists: str, **fields: Any) -> ResolvedAssistant:
        pattern = get_assistant(fields["graph_id"])  # an unknown graph is a 404
        if fields.get("assistant_id") in registered_patterns():
            if if_exists == "do_nothing":
                return ResolvedAssistant(pattern, None)
            raise SystemAssistantError(f"{fields['assistant_id']!r} is a system assistant's id")
        row = await self.assistant_rows.create(
            owner=self.owner(caller), if_exists=if_exists, viewer=self.viewer(caller), **fields
        )
        return ResolvedAssistant(get_assistant(row.graph_id), row)

    async def update_assistant(self, caller: Principal, assistant_id: str, **changes: Any) -> ResolvedAssistant:
        await self._refuse_system(assistant_id)
        if changes.get("graph_id") is not None:
            get_assistant(changes["graph_id"])
        row = await self.assistant_rows.update(assistant_id, viewer=self.viewer(caller), **changes)
        return ResolvedAssistant(get_assistant(row.graph_id), row)

    async def set_latest_assistant(self, caller: Principal, assistant_id: str, version: int) -> ResolvedAssistant:
        await self._refuse_system(assistant_id)
        row = await self.assistant_rows.set_latest(assistant_id, version, viewer=self.viewer(caller))
        return ResolvedAssistant(get_assistant(row.graph_id), row)

    async def assistant_versions(
        self, caller: Principal, assistant_id: str, metadata: Mapping[str, Any] | None, limit: int, offset: int
    ) -> list[AssistantRow] | list[ResolvedAssistant]:
        if assistant_id in registered_patterns():  # a system assistant has one version
            return [ResolvedAssistant(get_assistant(assistant_id), None)][offset : offset + limit]
        return await self.assistant_rows.versions(
            assistant_id, metadata=metadata, limit=limit, offset=offset, viewer=self.viewer(caller)
        )

    async def delete_assistant(self, caller: Principal, assistant_id: str, *, delete_threads: bool = False) -> None:
        """The assistant, its versions and its crons; with ``delete_threads``, the threads its runs ran on that
        ``caller`` may see too (other people's threads stay)."""
        await self._refuse_system(assistant_id)
        viewer = self.viewer(caller)
        await self.assistant_rows.require(assistant_id, viewer=viewer)
        if delete_threads:
            threads = await self._deletable_threads(caller, await self.runs.threads_of_assistant(assistant_id))
            for thread_id in threads:
                try:
                    await self.delete_thread(caller, thread_id)
                except JourneyNotFoundError:
                    continue
        await self.assistant_rows.delete(assistant_id, viewer=viewer)
        await self.crons.store.delete_of_assistant(assistant_id)

    async def _refuse_system(self, assistant_id: str) -> None:
        if assistant_id in registered_patterns():
            raise SystemAssistantError(
                f"{assistant_id!r} is a built-in (system) assistant; create an assistant on its graph instead",
                assistant_id=assistant_id,
            )

    async def search_assistants(
        self,
        caller: Principal,
        graph_id: str | None,
        name: str | None,
        metadata: Mapping[str, Any] | None,
        *,
        sort_by: str = "created_at",
        descending: bool = True,
        limit: int | None = None,
    ) -> list[ResolvedAssistant]:
        """The system assistants that match, then the first ``limit`` (None: all) created ones ``caller`` may
        see, in ``sort_by`` order (newest first by default)."""
        where = AssistantFilter(graph_id, name, metadata, registered_patterns())
        rows = await self.assistant_rows.search(
            where, viewer=self.viewer(caller), sort_by=sort_by, descending=descending, limit=limit
        )
        found = self._system_assistants(graph_id, name, metadata)
        return found + [ResolvedAssistant(get_assistant(r.graph_id), r) for r in rows]

    async def count_assistants(
        self, caller: Principal, graph_id: str | None, name: str | None, metadata: Mapping[str, Any] | None
    ) -> int:
        """How many assistants :meth:`search_assistants` finds (the created ones counted in the query)."""
        where = AssistantFilter(graph_id, name, metadata, registered_patterns())
        created = await self.assistant_rows.count(where, viewer=self.viewer(caller))
        return len(self._system_assistants(graph_id, name, metadata)) + created

    @staticmethod
    def _system_assistants(
        graph_id: str | None, name: str | None, metadata: Mapping[str, Any] | None
    ) -> list[ResolvedAssistant]:
        return [
            ResolvedAssistant(a, None)
            for a in assistants()
            if (graph_id is None or a.assistant_id == graph_id)
            and (name is None or name.casefold() in a.assistant_id.casefold())  # as the query matches created ones
            and holds_json(system_metadata(a), metadata)
        ]

    async def assistant_schemas(self, assistant: ResolvedAssistant) -> dict[str, Any]:
        """The JSON schemas of the assistant's graph: input as the assistant checks it, the rest as
        LangGraph derives them from a sample of the graph."""
        pattern = assistant.pattern
        schemas: dict[str, Any] = {
            "graph_id": pattern.assistant_id,
            "input_schema": pattern.input_schema,
            "output_schema": None,
            "state_schema": None,
            "config_schema": None,
            "context_schema": None,
        }
        if pattern.sample is not None:
            graph = await pattern.sample(self.runtime)
            try:
                schemas["output_schema"] = graph.get_output_jsonschema()
                schemas["state_schema"] = graph.get_output_jsonschema()
                schemas["context_schema"] = graph.get_context_jsonschema()
            except PydanticUserError:  # a state declared with typing.TypedDict (Python < 3.12): not describable
                log.warning("no JSON schema for this graph's state", graph_id=pattern.assistant_id)
        return schemas

    async def assistant_subgraphs(
        self, assistant: ResolvedAssistant, namespace: str | None, recurse: bool
    ) -> dict[str, Any]:
        pattern = assistant.pattern
        if pattern.sample is None:
            return {}
        graph = await pattern.sample(self.runtime)
        found: dict[str, Any] = {}
        async for ns, subgraph in graph.aget_subgraphs(namespace=namespace, recurse=recurse):
            found[ns] = {
                "graph_id": pattern.assistant_id,
                "input_schema": subgraph.get_input_jsonschema(),
                "output_schema": subgraph.get_output_jsonschema(),
                "state_schema": subgraph.get_output_jsonschema(),
                "config_schema": None,
                "context_schema": None,
            }
        return found

    # --- threads ----------------------------------------------------------------------------------

    async def update_thread(
        self, caller: Principal, thread_id: str, metadata: Mapping[str, Any], ttl: ThreadTTL | None = None
    ) -> ResolvedThread:
        """Merge ``metadata`` into the thread's; with ``ttl``, its time-to-live from now on."""
        await self.thread_row(caller, thread_id)
        await self.runs.merge_thread_metadata(thread_id, metadata, ttl)
        return await self.resolve_thread(thread_id, caller)

    async def thread_row(self, caller: Principal, thread_id: str) -> ThreadRow:
        """The row of a thread ``caller`` may see. A journey instance without one (started through the
        journey endpoints, or its thread was deleted: the journey stays) gets a row now, bound to it: in
        :meth:`thread_control`, as a delete, so that a thread deleted meanwhile is not given one back.
        Not found (404) when the thread is deleted before or meanwhile."""
        thread = await self.resolve_thread(thread_id, caller)
        if thread.row is None:
            async with self.thread_control(thread_id):
                thread = await self.resolve_thread(thread_id, caller)  # deleted while this waited: not found
                if thread.row is None:
                    # A journey's own thread, not one a client created: no default TTL ends the journey.
                    owner = self.owner(caller)
                    await self.runs.create_thread(thread_id, {}, owner, if_exists="do_nothing", default_ttl=False)
                    if thread.instance_id and thread.assistant_id:
                        await self.runs.bind(thread_id, thread.assistant_id, thread.instance_id)
        return await self._thread_row_now(thread_id)

    async def _thread_row_now(self, thread_id: str) -> ThreadRow:
        """The thread's row as it is now: not found when it was deleted since the caller found it."""
        row = await self.runs.get_thread(thread_id)
        if row is None:
            raise JourneyNotFoundError(f"no thread {thread_id!r}", thread_id=thread_id)
        return row

    async def delete_thread(self, caller: Principal, thread_id: str) -> None:
        """The thread, its runs, its crons and its checkpoints; a thread with an active run is refused.

        Its journey is terminated if it has not ended (nothing of it may run or wait on with no thread to
        show it: its inbox tasks and timers are cancelled), and ``thread.deleted`` is logged: the event log
        stays, the audit trail of what the journey did, and the id never names a thread again. A crash
        part-way leaves the thread gone and the rest done by deleting it again."""
        async with self.thread_control(thread_id):  # not while it is copied, or given a row (thread_row)
            thread = await self.resolve_thread(thread_id, caller)  # deleted while this waited: not found
            await delete_thread_data(
                self.runtime, self.runs, thread_id, thread.instance_id, caller.name, changed=self.watch.changed
            )

    async def _deletable_threads(self, caller: Principal, thread_ids: Sequence[str]) -> list[str]:
        """Those of ``thread_ids`` ``caller`` may see, once none of them has an active run: a delete of several
        threads is refused (:class:`ThreadBusyError`, 409) before any goes, where deleting them one by one
        stopped at the busy one, the threads before it deleted (their journeys terminated) and the rest kept."""
        found = []
        for thread_id in dict.fromkeys(thread_ids):
            try:
                await self.resolve_thread(thread_id, caller)
            except JourneyNotFoundError:  # not there, or someone else's
                continue
            if await self.runs.active_count(thread_id):
                raise ThreadBusyError(
                    f"thread {thread_id!r} has an active run; cancel it first (no thread was deleted)",
                    thread_id=thread_id,
                )
            found.append(thread_id)
        return found

    async def copy_thread(self, caller: Principal, thread_id: str) -> ThreadRow:
        """A new thread with the thread's metadata (its ``thread_id`` the copy's) and checkpoints. Only chat
        threads (and threads without state) copy: a journey's progress also lives in its instance's event log
        and index, which a copy of checkpoints would not carry, so the copy would be a journey that never
        happened."""
        async with self.thread_control(thread_id):  # the thread is not deleted while it is copied
            thread = await self.resolve_thread(thread_id, caller)
            pattern = get_assistant(thread.assistant_id) if thread.assistant_id else None
            if pattern is not None and not pattern.chat:
                raise ApiError(
                    409,
                    "CopyUnsupported",
                    f"thread {thread_id!r} runs a {pattern.assistant_id!r} journey, whose progress is in its event "
                    "log too; only chat threads are copied",
                )
            copy_id = str(uuid.uuid4())
            # The source's metadata, naming the copy as its thread (as the Agent Server's copy does).
            metadata = {**(thread.row.metadata if thread.row else {}), "thread_id": copy_id}
            # No TTL, neither the source's nor the server's default: the Agent Server's copy inserts the thread
            # row alone (its TTL is a row of its own that a copy does not write).
            copy = await self.runs.create_thread(copy_id, metadata, self.owner(caller), default_ttl=False)
            if pattern is not None and thread.instance_id is not None:
                await copy_checkpoints(self.runtime.store.saver, thread.instance_id, copy.thread_id)
                await self.runs.bind(copy.thread_id, pattern.assistant_id, copy.thread_id)
        return await self._thread_row_now(copy.thread_id)  # its caller may have deleted it already

    async def prune_threads(self, caller: Principal, thread_ids: Sequence[str], strategy: str) -> int:
        """``delete``: the threads go (as :meth:`delete_thread`); ``keep_latest``: only their latest
        checkpoint stays (as checkpoint retention prunes a finished journey)."""
        pruned = 0
        if strategy == "delete":
            thread_ids = await self._deletable_threads(caller, thread_ids)
        for thread_id in dict.fromkeys(thread_ids):
            try:
                thread = await self.resolve_thread(thread_id, caller)
            except JourneyNotFoundError:  # not there, or someone else's
                continue
            if strategy == "delete":
                await self.delete_thread(caller, thread_id)
            elif thread.instance_id is not None and not await self.runtime.retention.prune_to_latest(
                [thread.instance_id]
            ):
                raise ApiError(409, "ThreadBusy", f"thread {thread_id!r} is being written; prune it again")
            pruned += 1
        return pruned

    def checkpoint_config(self, thread: ResolvedThread, checkpoint: Mapping[str, Any]) -> RunnableConfig:
        """The config of one of the thread's checkpoints (the SDK names the thread by its own id)."""
        assert thread.instance_id is not None
        configurable = {"thread_id": thread.instance_id, "checkpoint_ns": checkpoint.get("checkpoint_ns") or ""}
        if checkpoint.get("checkpoint_id"):
            configurable["checkpoint_id"] = checkpoint["checkpoint_id"]
        return {"configurable": configurable}

    # --- threads ----------------------------------------------------------------------------------

    async def resolve_thread(self, thread_id: str, caller: Principal | None) -> ResolvedThread:
        """A thread (or journey instance) ``caller`` may see (None: the server's own reads); not found
        otherwise, whether it exists or not."""
        viewer = self.viewer(caller) if caller is not None else None
        row = await self.runs.get_thread(thread_id, viewer=viewer)
        if row is not None:
            await self.know_marks(row.instance_id)
            return ResolvedThread.of(row)
        if viewer is not None and await self.runs.get_thread(thread_id) is not None:
            raise JourneyNotFoundError(f"no thread {thread_id!r}", thread_id=thread_id)
        instance = await self.runtime.store.index.get_instance(thread_id, viewer=viewer)
        if instance is None or await self.thread_deleted(thread_id):
            raise JourneyNotFoundError(f"no thread {thread_id!r}", thread_id=thread_id)
        await self.know_marks(instance.instance_id)
        return ResolvedThread(thread_id, None, instance.pattern, instance.instance_id)

    async def know_marks(self, instance_id: str | None) -> None:
        """Learn the ``sensitive`` marks of the journey ``instance_id``'s design, so that they apply to what
        this process shows of it. Marks are known per process (checkpoints.redaction): the worker that ran a
        journey knows them, but the API process answering about it may never have loaded its design."""
        if instance_id is None or instance_id in self._marked:
            return
        instance = await self.runtime.store.index.get_instance(instance_id)
        if instance is not None and instance.journey_id not in self._marked:
            design = await self.runtime.store.index.get_design(instance.journey_id)
            mark_sensitive_of(design.spec if design is not None else None)
            self._remember_marked(instance.journey_id)
        self._remember_marked(instance_id)

    def _remember_marked(self, key: str) -> None:
        if len(self._marked) >= _MARKED_LIMIT:  # marks themselves are never forgotten: only whose were read
            self._marked.clear()
        self._marked.add(key)

    async def refuse_structured_journeys_id(self, thread_id: str) -> None:
        """Refuse a new thread's chosen id that a structured journey of a stored design takes when its user starts
        it (``<design id>:<user id>``, another tenant's ``<design id>@…:<user id>``): a journey's thread is its
        instance's, so a thread another caller made first under that id hid the journey from its own user (its
        thread reads answered 404) and shared the journey's thread id with that caller."""
        design_id = re.split("[:@]", thread_id, maxsplit=1)[0]
        if design_id == thread_id:
            return
        design = await self.runtime.store.index.get_design(design_id)
        if design is not None and design.pattern == "structured":
            raise ApiError(
                409,
                "ThreadExists",
                f"thread id {thread_id!r} is kept for a structured journey of design {design_id!r}",
                thread_id=thread_id,
            )

    async def thread_deleted(self, instance_id: str) -> bool:
        """Whether the journey ``instance_id`` was a thread that was deleted (:meth:`delete_thread`)."""
        return await self.runtime.store.events.find_by_key(instance_id, THREAD_DELETED) is not None

    async def thread_graph(self, thread: ResolvedThread) -> Graph | None:
        """The compiled graph holding the thread's checkpoints; None while the thread is not bound."""
        if thread.instance_id is None or thread.assistant_id is None:
            return None
        return await graph_of(self.runtime, get_assistant(thread.assistant_id), thread.instance_id)

    async def update_thread_state(
        self,
        caller: Principal,
        thread_id: str,
        values: dict[str, Any] | None,
        as_node: str | None,
        checkpoint: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Write ``values`` into the journey's state as ``as_node`` would (an operator's correction: it
        bypasses the pattern's checks), on a thread with no active run; the config of the checkpoint written.
        ``checkpoint``: write on that earlier checkpoint instead (the state forks from it; chat threads only,
        as runs from a checkpoint are)."""
        thread = await self.resolve_thread(thread_id, caller)
        graph = await self.thread_graph(thread)
        if graph is None or thread.instance_id is None:
            raise ApiError(409, "NoState", f"thread {thread_id!r} has no state yet; start a run on it first")
        assistant = get_assistant(str(thread.assistant_id))
        await self.check_input_instances(caller, assistant, values)  # the state's next runs act on them
        if checkpoint is not None and not assistant.chat:
            raise ApiError(
                422,
                "CheckpointUnsupported",
                f"thread {thread_id!r} runs a journey, whose completed steps are in its event log: its state cannot "
                "fork from an earlier checkpoint (chat threads can); update its latest state",
            )
        config = self.runtime.engine.config(thread.instance_id)
        if checkpoint is not None:
            config = self.checkpoint_config(thread, checkpoint)
            if (await graph.aget_state(config)).created_at is None:  # LangGraph's snapshot of no checkpoint
                raise JourneyNotFoundError(
                    f"thread {thread_id!r} has no checkpoint {checkpoint['checkpoint_id']!r}", thread_id=thread_id
                )
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
            # Who wrote it is on the checkpoint too (its metadata): the log's event comes after, in a
            # transaction of its own, as no transaction spans the saver and the log.
            config = {**config, "metadata": {**config.get("metadata", {}), STATE_UPDATED_BY: caller.name}}
            try:
                written = await graph.aupdate_state(config, values, as_node=as_node)
            except (ValueError, KeyError, TypeError) as exc:
                raise InvalidInputError(f"cannot apply this state update: {exc}") from exc
            checkpoint_id = written.get("configurable", {}).get("checkpoint_id")
            updated = NewEvent(
                STATE_UPDATED,
                {"by": caller.name, "fields": sorted(values or {}), "as_node": as_node, "checkpoint_id": checkpoint_id},
                as_node,
                f"{STATE_UPDATED}:{checkpoint_id}",  # once per checkpoint written
            )
            await self.runtime.store.events.append(thread.instance_id, [updated])
        # Its streams in state_update mode send the state now: here at once, elsewhere on the update's notice.
        await self.runs.state_updated(thread_id)
        self.watch.changed(state_key(thread_id))
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
            **({"held": instance.held} if instance.held is not None else {}),
        }


def system_metadata(assistant: Assistant) -> dict[str, Any]:
    """A built-in assistant's metadata: made by the system, with the schemas its runs are checked against."""
    return {
        "created_by": "system",
        "input_schema": assistant.input_schema,
        "resume_schema": assistant.resume_schema,
    }


async def services(request: Request) -> ServerServices:
    # async: FastAPI runs a plain-def dependency in its thread pool, a thread hop on every request
    found: ServerServices = request.app.state.services
    return found

"""What the process family's parts share, below the orchestrator: the deployed versions and the narrow
interfaces through which the inbox, the timer scheduler and migrations reach the orchestrator.

Imports go one way: ``process_orchestrator`` builds the inbox, the scheduler and the migrations and
hands each what it needs; none of them imports the orchestrator.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol, cast

from langgraph.graph.state import CompiledStateGraph
from langgraph.types import StateSnapshot

from agents.policy import Grants
from checkpoints.clock import Clock
from checkpoints.index import Instance
from checkpoints.process.deployments import Deployment, DeploymentStore
from graphs.errors import UnknownProcessError
from graphs.kernel.designs import DesignBook, PatternName
from graphs.kernel.engine import RunOptions
from graphs.process.spec import ProcessSpec
from graphs.process.versions import choose
from nodes.process_services import ProcessServices

Graph = CompiledStateGraph[Any, Any, Any, Any]
# Not yet a member of designs.PatternName (a shared Literal); the cast keeps this edit out of that line.
PATTERN = cast(PatternName, "process")
FINISHED = ("completed", "compensated", "failed", "cancelled", "terminated")


class DeployedVersions:
    """Deployed process versions, by (name, version) and by design id.

    The deployment rows come from :class:`DeploymentStore` and are kept in a bounded LRU (a deployment
    never changes once made); specs and compiled graphs come from :class:`DesignBook`, like every
    pattern's, so the hot path neither reads nor re-hashes a design.
    """

    def __init__(self, designs: DesignBook, store: DeploymentStore, *, cache_size: int = 512) -> None:
        self._designs = designs
        self.store = store
        self._rows: OrderedDict[tuple[str, ...], Deployment] = OrderedDict()
        self._cache_size = cache_size
        self._reading: dict[tuple[str, ...], asyncio.Future[None]] = {}  # reads under way, by key

    async def get(self, name: str, version: int) -> Deployment | None:
        return await self._cached(("version", name, str(version)), lambda: self.store.get(name, version))

    async def of_design(self, design_id: str) -> Deployment:
        """The deployment whose design ``design_id`` is (every process instance runs one)."""
        found = await self._cached(("design", design_id), lambda: self.store.by_design(design_id))
        if found is None:  # pragma: no cover - instances are only created from deployments, which stay
            raise UnknownProcessError(f"design {design_id!r} is not a deployed process version")
        return found

    async def spec_of(self, deployment: Deployment) -> ProcessSpec:
        _design, spec = await self._designs.load(deployment.design_id, (PATTERN,))
        return cast(ProcessSpec, spec)

    async def graph_of(self, deployment: Deployment) -> Graph:
        _design, _spec, graph = await self._designs.load_graph(deployment.design_id, (PATTERN,))
        return graph

    async def route(self, name: str, business_key: str) -> dict[str, Any]:
        """The rollout entry a new instance with ``business_key`` would get (sticky by key)."""
        entries = await self.store.rollout(name)
        if not entries:
            raise UnknownProcessError(f"no process named {name!r} is deployed", name=name)
        return choose(name, business_key, entries)

    async def _cached(
        self, key: tuple[str, ...], read: Callable[[], Awaitable[Deployment | None]]
    ) -> Deployment | None:
        found = self._rows.get(key)
        if found is not None:
            self._rows.move_to_end(key)
            return found
        # One read per key at a time: a burst of continuations of one version (timers that fell due together,
        # on a worker that has not seen it yet) waits for the first one's read instead of each reading it.
        while (reading := self._reading.get(key)) is not None:
            await asyncio.wait([reading])
            if (found := self._rows.get(key)) is not None:
                return found
        done = self._reading[key] = asyncio.get_running_loop().create_future()
        try:
            found = await read()
            if found is not None:  # not yet deployed is not remembered: it may be deployed next
                self._rows[key] = found
                if len(self._rows) > self._cache_size:
                    self._rows.popitem(last=False)
        finally:
            del self._reading[key]
            done.set_result(None)  # whatever came of it: the waiters look at the cache (or read themselves)
        return found


class ThreadRunner(Protocol):
    """Runs a process instance's thread and records a failure (the orchestrator)."""

    async def run(self, graph: Graph, instance_id: str, value: Any) -> bool: ...

    async def settled(self, graph: Graph, instance_id: str) -> StateSnapshot: ...


class Resumer(Protocol):
    """Delivers a resolved wait's resolution to its thread, and reports the instance (the orchestrator)."""

    async def deliver(
        self,
        instance_id: str,
        wait_id: str,
        *,
        consumed: list[str] | None = ...,
        instance: Instance | None = ...,
        run_options: RunOptions = ...,
    ) -> bool:
        """Resume the thread parked on ``wait_id`` with its stored resolution; once it is consumed, mark it
        (or add it to ``consumed``, for the caller to mark)."""
        ...

    async def deliver_answering(
        self, instance_id: str, wait_id: str, *, run_options: RunOptions = ...
    ) -> dict[str, Any]:
        """``deliver``, answering the instance's view as the delivery left it."""
        ...

    async def status(self, instance_id: str) -> dict[str, Any]: ...

    async def instance_spec(self, instance_id: str) -> ProcessSpec:
        """The spec of the version the instance runs on."""
        ...


class TimerHost(Resumer, Protocol):
    """What firing timers needs beyond resuming threads: the stores, the clock, timer starts."""

    @property
    def services(self) -> ProcessServices: ...

    @property
    def clock(self) -> Clock: ...

    async def instances_by_id(self, instance_ids: Sequence[str]) -> dict[str, Instance]: ...

    async def agents_missing(self, instance_id: str, *, instance: Instance | None = None) -> list[str]:
        """The intents the instance's process calls that no agent serves in this process."""
        ...

    async def held_back(self, instance_id: str, held: Mapping[str, Any]) -> None:
        """Store what holds the instance's continuation back, for its views to show."""
        ...

    async def went_on(self, instance: Instance | None, instance_id: str | None = None) -> None:
        """Nothing holds the instance back any more."""
        ...

    async def grants_of(self, instance_id: str) -> Grants:
        """What the instance's spec grants its agent calls (least privilege), timers' calls included."""
        ...

    async def expire(self, instance_id: str, on_expiry: str, due_at: datetime) -> bool:
        """A journey's deadline passed: end it as its spec says; False when it had ended already."""
        ...

    async def dispatch_queued(self) -> list[str]:
        """Start the journeys of any pattern queued behind a concurrency limit whose slot has freed."""
        ...

    async def routed(self, name: str, business_key: str) -> tuple[Deployment, ProcessSpec]:
        """The version a new instance with ``business_key`` goes to, and its spec."""
        ...

    async def start(
        self,
        name: str,
        business_key: str,
        variables: Mapping[str, Any],
        *,
        version: int,
        instance_id: str,
        start_event: str,
    ) -> dict[str, Any]:
        """Start an instance of ``name`` (a timer start: its id is derived from the tick)."""
        ...

    async def settle_abandoned_migrations(self, started_before: datetime) -> None:
        """Settle the migrations left open longer than a lease (their process died midway)."""
        ...

"""Forking a journey from an earlier step: one mechanism for every pattern whose steps are in its log.

A fork is a new instance (its own id and thread), owned by whoever forks it (the caller the server acts
for), of the same design and user. Its event log is a copy of the source's up to the chosen step's
completion, and its LangGraph state is a copy of the checkpoint LangGraph saved right after that step's
superstep; it then runs on from there (to the next step that waits for a person, or on through steps that
do not). Each copied event's idempotency key is re-keyed to the fork (a step's work is keyed by its instance),
so the fork's own runs, replays and compensations look up the fork's history, never the source's. A
``journey.forked_from`` event opens the fork's own history and a ``journey.forked`` event on the source links
to it; nothing else of the source changes. A fork that runs on counts against its source's concurrency limit
(it takes a slot of the same key, or is refused with :class:`ConcurrencyLimitError`: a fork is not queued)
and carries the source's whole-run deadline (the same moment, not a new window). The source's start key
stays the source's: a start with it answers the source, not a fork.

A pattern tells the kernel how (:class:`Forkable`, in its :class:`~graphs.kernel.instances.Recoverable`);
patterns whose state is more than checkpoints and the log (a process's timers, waits and tasks, a lifecycle
journey's stage table), or that have no steps in their log, are refused with :class:`ForkUnsupportedError`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.types import StateSnapshot

from checkpoints.backends.base import Statement
from checkpoints.events import Event, NewEvent
from checkpoints.forks import FORKED_FROM as FORKED_FROM  # the fork's own first event after the copies
from checkpoints.forks import copied_events
from checkpoints.index import Instance
from checkpoints.savers import copy_checkpoint
from checkpoints.store import Store
from graphs.errors import ForkPointError, ForkUnsupportedError

FORKED = "journey.forked"  # on the source: a fork was made of it


@dataclass(frozen=True, slots=True)
class Forkable:
    """What a pattern tells the kernel so that its instances can be forked at a step.

    ``step_events``: the event types that record a step's completion (their ``step`` names it).
    ``superstep``: the LangGraph superstep in which such an event's step ran (None: not known), which names
    the checkpoint saved right after it. A fork that runs on takes a slot under its source's start controls
    (``Recoverable.controls``).
    """

    step_events: frozenset[str]
    superstep: Callable[[Event], int | None]


@dataclass(frozen=True, slots=True)
class Fork:
    """A fork made: the new instance, the source's id, and the step it was forked at."""

    instance: Instance
    source_id: str
    step_id: str


@dataclass(frozen=True, slots=True)
class ForkPoint:
    """Where a fork goes on from: a step's completion event and the checkpoint saved right after it."""

    event: Event
    checkpoint: StateSnapshot


def new_fork_id() -> str:
    return f"fork_{uuid.uuid4().hex[:16]}"  # spelled as designs.new_id spells ids


def refuse(instance: Instance) -> ForkUnsupportedError:
    return ForkUnsupportedError(
        f"a {instance.pattern} journey cannot be forked: its state is not only its checkpoints and its event "
        "log; only journeys with steps in their log (structured, saga) are",
        pattern=instance.pattern,
    )


async def fork_point(
    forkable: Forkable, graph: Any, config: RunnableConfig, history: Sequence[Event], step_id: str
) -> ForkPoint:
    """The last completion of ``step_id`` in ``history`` and the checkpoint saved right after it (call under
    the source's ``exclusive``); :class:`ForkPointError`, naming the steps it can fork at, when there is none.

    A run that checkpoints only where it stops (a structured journey's, unless the runtime runs "sync") saves
    one after a step that waited, or failed, or ended the journey: only those steps can be forked at."""
    source_id = config["configurable"]["thread_id"]
    completed = [e for e in history if e.type in forkable.step_events and e.step]
    saved = await _checkpoints_after_supersteps(graph, config)
    # Steps a node ran one after another share its superstep (``nodes.services.CHAIN_FLAG``): the checkpoint
    # saved after it follows the last of them only.
    last_in = {forkable.superstep(e): e for e in completed}
    forkable_at = [e for e in completed if forkable.superstep(e) in saved and last_in[forkable.superstep(e)] is e]
    allowed = list(dict.fromkeys(e.step or "" for e in forkable_at))
    chosen = next((e for e in reversed(completed) if e.step == step_id), None)
    if chosen is None:
        raise ForkPointError(
            f"journey {source_id!r} has not completed step {step_id!r}; it can be forked at {allowed}",
            allowed=allowed,
            step_id=step_id,
        )
    after = saved.get(forkable.superstep(chosen)) if chosen in forkable_at else None
    if after is None:
        raise ForkPointError(
            f"no checkpoint of {source_id!r} was saved right after step {step_id!r}: its runs checkpoint where "
            f"they stop, so it can be forked at {allowed} (the steps after which it waited, failed or ended). "
            'A runtime opened with durability="sync" (a server run asking for durability "async") keeps a '
            "checkpoint after every step",
            allowed=allowed,
            step_id=step_id,
        )
    return ForkPoint(chosen, after)


async def register_fork(
    store: Store,
    source: Instance,
    fork_id: str,
    history: Sequence[Event],
    point: ForkPoint,
    also: Sequence[Statement] = (),
) -> Instance:
    """Write the fork (call under the source's ``exclusive``): its checkpoint first (a thread no instance
    names yet), then its index row with its copied events, ``journey.forked_from`` and ``also`` (its
    concurrency slot) in one transaction, owned by the caller acting; then the source's ``journey.forked``."""
    source_id, step_id, seq = source.instance_id, point.event.step or "", point.event.seq
    link = {"instance_id": source_id, "step_id": step_id, "seq": seq}
    after = point.checkpoint
    await copy_checkpoint(store.saver, after.config, fork_id, {"forked_from": link})
    copies = [_rekeyed(e, source_id, fork_id) for e in history if e.seq <= seq]
    status = "in_progress" if after.next else str(after.values.get("status") or "completed")
    forked_from = NewEvent(FORKED_FROM, {**link, "checkpoint_id": _checkpoint_id(after)}, step_id)
    copied = copied_events(
        fork_id, [*copies[1:], forked_from], first_seq=2, status=status, clock=store.clock, sealer=store.sealer
    )
    created = await store.index.create_instance(
        fork_id,
        source.journey_id,
        source.pattern,
        source.user_id,
        first_event=copies[0],
        status=status,
        also=[*copied, *also],
    )
    await store.events.append(
        source_id, [NewEvent(FORKED, {"fork_id": fork_id, "step_id": step_id, "seq": seq}, step_id)]
    )
    return created


async def _checkpoints_after_supersteps(graph: Any, config: RunnableConfig) -> dict[int | None, StateSnapshot]:
    """The checkpoints LangGraph saved at the end of each superstep, by superstep, on the branch the thread
    is on now (the ancestors of its latest checkpoint: a thread sent back to an earlier one has other
    branches)."""
    snapshots: dict[str, StateSnapshot] = {}
    latest: str | None = None
    async for snapshot in graph.aget_state_history(config):
        checkpoint_id = _checkpoint_id(snapshot)
        snapshots[checkpoint_id] = snapshot
        latest = latest or checkpoint_id
    saved: dict[int | None, StateSnapshot] = {}
    current = snapshots.get(latest or "")
    while current is not None:
        metadata = current.metadata or {}
        if metadata.get("source") == "loop":
            saved.setdefault(metadata.get("step"), current)  # the latest on the branch, as it is walked back
        parent = current.parent_config
        current = snapshots.get(parent["configurable"]["checkpoint_id"]) if parent else None
    return saved


def _checkpoint_id(snapshot: StateSnapshot) -> str:
    return str(snapshot.config["configurable"]["checkpoint_id"])


def _rekeyed(event: Event, source_id: str, fork_id: str) -> NewEvent:
    """A copy of ``event`` for the fork: a key that names the source is re-keyed to the fork (its steps' work
    and their undoing are then the fork's own); any other key is prefixed with the fork's id."""
    key = event.key
    if key is not None:
        key = fork_id + key[len(source_id) :] if key.startswith(source_id) else f"{fork_id}:{key}"
    return NewEvent(event.type, dict(event.payload), event.step, key)

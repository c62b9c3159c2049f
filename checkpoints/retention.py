"""Checkpoint retention: a finished journey keeps its event log (the audit trail) and only the checkpoints
needed to show its final state.

A policy (:class:`RetentionPolicy`) says what happens to the checkpoints of a journey once its instance is
finished (a status in :data:`FINISHED_STATUSES`, whatever its pattern):

- ``keep_latest`` (the default): pruned to its latest checkpoint (with that checkpoint's pending writes),
  :data:`SETTLE` seconds after it finished; its state, views and a retry of a failed journey still work;
- ``keep_all_for`` N days: every checkpoint kept N days after it finished (time travel, forks), then pruned
  to the latest;
- ``delete_after`` N days: pruned to the latest at once, and every checkpoint deleted N days after it
  finished for good (not ``failed``: a retry runs it on from its latest checkpoint, which is kept until it is
  retried or terminated). Its state is gone then: a view that needs it raises :class:`CheckpointsDeletedError`, and the
  views that can answer from the log and the index do (a structured journey's or saga's status).

The kept checkpoint of a journey that will never run again (:data:`ENDED_FOR_GOOD`: not ``failed``,
which a retry runs on) is then compacted (:func:`compact_latest`): LangGraph's bookkeeping for channels
that hold no value (their versions, and what each node has seen of them) is dropped, and the checkpoint
re-written in place through the saver's own ``aput`` (same id: the savers upsert on it). What the graph
shows from it is unchanged (values, next tasks, interrupts, metadata); on an 8-step journey it is most of
the checkpoint's bytes.

The work is the official savers' own: ``aprune(ids, strategy="keep_latest" | "delete")`` on PostgreSQL.
``AsyncSqliteSaver`` (SQLite and ``memory://``) implements neither ``aprune`` nor ``prune`` (the base class
raises NotImplementedError), so there a thread is pruned through that saver's public API: the kept
checkpoints and their writes are read (``alist``), the thread deleted (``adelete_thread``) and the kept ones
written back (``aput``/``aput_writes``), under the instance's lock; deleting is ``adelete_thread``. No SQL
touches LangGraph's tables here.

Each pass also forgets the start keys and message ids whose window has passed (``journey_start_keys``,
``process_message_ids``), a batch at a time: they only answer a repeat within their window, and without the
pass one was dropped only when the same key came again, so the tables grew with every keyed start or send.
So too the buffered messages whose time-to-live has passed (``process_messages``), taken or not: one past its
time is never delivered, and nothing else reads it.

Progress is two watermarks in ``journey_retention`` (how far pruned, how far deleted, in the instances'
``updated_at``), so a pass looks only at journeys finished since the last one and costs no row per
journey; a journey that finishes again later (a failed one retried) is newer than the mark and is pruned
again. A pass runs from :meth:`CheckpointRetention.run` (``runtime.retention.run()``, ``journeys
retention``), from the embedded server's loop (:meth:`CheckpointRetention.running`) and from a
procrastinate periodic task in distributed mode (:mod:`server.queues.procrastinate`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, get_args

import structlog
from langgraph.checkpoint.base import BaseCheckpointSaver, Checkpoint, CheckpointTuple
from sqlalchemy import ColumnElement, Executable, Table, bindparam, delete, select, update

from checkpoints.backends.base import Backend
from checkpoints.background import in_background
from checkpoints.clock import Clock
from checkpoints.errors import CheckpointsDeletedError, ConcurrentUpdateError, RetentionPolicyError
from checkpoints.index import Instance
from checkpoints.savers import put_saved
from checkpoints.schema.flow_tables import journey_start_keys
from checkpoints.schema.tables import journey_instances, journey_retention, process_message_ids, process_messages

log = structlog.get_logger("journeys.retention")

RetentionMode = Literal["keep_latest", "keep_all_for", "delete_after"]
# The statuses after which an instance never runs again on its own, of every pattern: a structured
# journey, saga or process completed, compensated, failed (a retry makes it in_progress again) or
# cancelled; a lifecycle journey completed or cancelled; a session closed; an instance terminated.
FINISHED_STATUSES = ("completed", "compensated", "failed", "cancelled", "closed", "terminated")
# Finished statuses whose journeys never run their graph again: their kept checkpoint is compacted, and deleted
# by ``delete_after``. A failed journey is left as it is (a retry runs it on from that checkpoint).
ENDED_FOR_GOOD = tuple(s for s in FINISHED_STATUSES if s != "failed")
# A journey is pruned this long after it finished, not at once: the transaction that set its final status
# may commit after a pass that read the clock before it (the watermark would pass it by).
SETTLE = timedelta(seconds=60)
BATCH = 200  # instances per saver call
LONGEST_DAYS = 36_525  # a century: past it a pass could not subtract the period from now
# The name a pass holds the store's instance lock under (a PostgreSQL advisory lock, a SQLite record lock), so
# that passes of any process (the API's loop, a worker's job, the CLI) never overlap: two ``aprune`` calls on
# the same threads at once could fail on a conflict. No instance id is it: PostgreSQL text cannot hold a NUL.
PASS_LOCK = "\x00journeys-retention-pass"

_instances, _marks = journey_instances.c, journey_retention.c
_MARKS = select(_marks.mark, _marks.upto)
_SET_MARK = update(journey_retention).where(_marks.mark == bindparam("p_mark")).values(upto=bindparam("p_upto"))
# What each sweep looks at: pruning every finished journey, deleting (``delete_after``) those ended for good.
_FINISHED = _instances.status.in_(FINISHED_STATUSES)
_ENDED = _instances.status.in_(ENDED_FOR_GOOD)
# The instances of a sweep's kind that finished at one moment (a batch's last, which the mark moves past).
_FINISHED_AT = select(_instances.instance_id).where(_FINISHED, _instances.updated_at == bindparam("p_at"))
_ENDED_AT = select(_instances.instance_id).where(_ENDED, _instances.updated_at == bindparam("p_at"))

# Rows that only count within a window, forgotten once it has passed, EXPIRED_BATCH per statement: a start key
# (journey_start_keys) and a message id (process_message_ids) answer a repeat; a buffered message
# (process_messages) waits to be taken.
EXPIRED_BATCH = 1000


def _forget_expired(table: Table, key: ColumnElement[Any]) -> Executable:
    expires_at = table.c.expires_at
    expired = expires_at <= bindparam("p_now", type_=expires_at.type)
    batch = select(key).where(expired).limit(EXPIRED_BATCH)
    # Expired again in the DELETE: a message id is unique per tenant only, and another tenant's may be live.
    return delete(table).where(key.in_(batch.scalar_subquery()), expired).returning(key)


_FORGET_EXPIRED_KEYS = (
    _forget_expired(journey_start_keys, journey_start_keys.c.start_key),
    _forget_expired(process_message_ids, process_message_ids.c.message_id),
)
_FORGET_EXPIRED_MESSAGES = (_forget_expired(process_messages, process_messages.c.message_id),)

# Holds one instance's lock for the block (the kernel's JourneyEngine.exclusive).
Exclusive = Callable[[str], AbstractAsyncContextManager[None]]


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """What to keep of a finished journey's checkpoints (its event log is always kept whole).

    ``mode``: ``keep_latest`` (default: the latest checkpoint only), ``keep_all_for`` (all of them for
    ``days`` days, then the latest) or ``delete_after`` (the latest, and none after ``days`` days).
    ``settle``: seconds after it finished before a journey is pruned."""

    mode: RetentionMode = "keep_latest"
    days: float = 0.0
    settle: float = SETTLE.total_seconds()

    def __post_init__(self) -> None:
        if self.mode not in get_args(RetentionMode):
            raise RetentionPolicyError(
                f"retention mode {self.mode!r}: choose keep_latest, keep_all_for or delete_after",
                mode=self.mode,
            )
        if self.days < 0 or self.settle < 0:
            raise RetentionPolicyError("retention days and settle seconds cannot be negative", days=self.days)
        if not (self.days <= LONGEST_DAYS and self.settle <= LONGEST_DAYS * 86_400):  # NaN is refused too
            raise RetentionPolicyError(
                f"retention days and settle seconds must be numbers of at most {LONGEST_DAYS} days (a century); "
                f"got days={self.days!r}, settle={self.settle!r}",
                days=self.days,
            )
        if self.mode != "keep_latest" and self.days <= 0:
            raise RetentionPolicyError(f"retention mode {self.mode!r} needs days > 0", mode=self.mode)


@dataclass(frozen=True, slots=True)
class RetentionReport:
    """What one pass did: finished journeys pruned to their latest checkpoint (``compacted``: how many of
    those checkpoints were compacted), journeys whose checkpoints were deleted, and ``busy`` when it stopped
    at a journey another caller held (the next pass goes on)."""

    pruned: int = 0
    deleted: int = 0
    busy: bool = False
    compacted: int = 0
    expired_keys: int = 0  # start keys and message ids forgotten, their window passed
    expired_messages: int = 0  # buffered messages forgotten, their time-to-live passed

    def as_dict(self) -> dict[str, Any]:
        return {
            "pruned": self.pruned,
            "deleted": self.deleted,
            "busy": self.busy,
            "compacted": self.compacted,
            "expired_keys": self.expired_keys,
            "expired_messages": self.expired_messages,
        }


class CheckpointRetention:
    """Applies a :class:`RetentionPolicy` to the checkpoints of finished journeys (``runtime.retention``)."""

    def __init__(
        self,
        saver: BaseCheckpointSaver[str],
        backend: Backend,
        clock: Clock,
        policy: RetentionPolicy,
        *,
        exclusive: Exclusive,
    ) -> None:
        self.saver = saver
        self.policy = policy
        self._backend = backend
        self._clock = clock
        self._exclusive = exclusive
        self._compacted = 0  # in the pass under way
        self._saver_prunes = True  # until its aprune says otherwise

    async def run(self, now: datetime | None = None) -> RetentionReport:
        """One pass of the policy over the journeys finished since the last pass; what it did. A pass holds
        :data:`PASS_LOCK`: one pass at a time across processes; one that waited out the store's lock timeout
        for another does nothing (``busy``: the next pass goes on)."""
        try:
            async with self._exclusive(PASS_LOCK):
                return await self._run(now)
        except ConcurrentUpdateError:
            return RetentionReport(busy=True)

    async def _run(self, now: datetime | None) -> RetentionReport:
        now = now or self._clock.now()
        marks = await self._marks()
        policy = self.policy
        prune_before = now - timedelta(seconds=policy.settle)
        if policy.mode == "keep_all_for":
            prune_before = min(prune_before, now - timedelta(days=policy.days))
        self._compacted = 0
        pruned, busy = await self._sweep("pruned", marks["pruned"], prune_before, self.prune_to_latest, deleting=False)
        deleted = 0
        if policy.mode == "delete_after" and not busy:
            delete_before = min(prune_before, now - timedelta(days=policy.days))
            deleted, busy = await self._sweep("deleted", marks["deleted"], delete_before, self._delete, deleting=True)
        keys = await self._forget_expired(_FORGET_EXPIRED_KEYS, now)
        messages = await self._forget_expired(_FORGET_EXPIRED_MESSAGES, now)
        report = RetentionReport(pruned, deleted, busy, self._compacted, keys, messages)
        if pruned or deleted or keys or messages:
            log.info("retention pass", mode=policy.mode, **report.as_dict())
        return report

    async def _forget_expired(self, statements: Sequence[Executable], now: datetime) -> int:
        """Forget the rows whose window passed by ``now``, a batch per statement at a time; how many."""
        forgotten = 0
        for statement in statements:
            while batch := len(await self._backend.write([statement], {"p_now": now})):
                forgotten += batch
                if batch < EXPIRED_BATCH:
                    break
        return forgotten

    async def deleted_at(self, instance: Instance) -> datetime | None:
        """When ``instance`` finished, if retention has deleted its checkpoints since; None otherwise."""
        if instance.status not in ENDED_FOR_GOOD:  # a failed journey's are kept for its retry
            return None
        upto = (await self._marks())["deleted"]
        return instance.updated_at if upto is not None and instance.updated_at <= upto else None

    async def check_state(self, instance: Instance | None) -> None:
        """Raise :class:`CheckpointsDeletedError` if retention deleted ``instance``'s checkpoints (call when
        its thread has no checkpoint: a view then says why, instead of showing an empty state)."""
        if instance is None:
            return
        finished = await self.deleted_at(instance)
        if finished is not None:
            raise CheckpointsDeletedError(
                f"journey {instance.instance_id!r} finished ({instance.status}) on {finished.isoformat()}; "
                f"retention (delete_after) deleted its checkpoints: its event log is kept (history)",
                instance_id=instance.instance_id,
                pattern=instance.pattern,
                status=instance.status,
                finished_at=finished.isoformat(),
            )

    def running(self, every: float) -> AbstractAsyncContextManager[None]:
        """Run a pass every ``every`` seconds in the background for the block (the embedded server)."""
        return periodically(every, self.run, "checkpoint-retention")

    # --- the sweep ----------------------------------------------------------------------------------

    async def _marks(self) -> dict[str, datetime | None]:
        return {row["mark"]: row["upto"] for row in await self._backend.read(_MARKS)}

    async def _sweep(
        self,
        mark: str,
        after: datetime | None,
        before: datetime,
        apply: Callable[[Sequence[str]], Any],
        *,
        deleting: bool,
    ) -> tuple[int, bool]:
        """Apply ``apply`` to the instances finished in (``after``, ``before``], oldest first, a batch at a
        time, moving ``mark`` on after each batch; (how many, whether it stopped at a busy one). ``deleting``: only
        those ended for good (:data:`ENDED_FOR_GOOD`), else every finished one."""
        kind, at = (_ENDED, _ENDED_AT) if deleting else (_FINISHED, _FINISHED_AT)
        done = 0
        while True:
            query = select(_instances.instance_id, _instances.updated_at).where(kind, _instances.updated_at <= before)
            if after is not None:
                query = query.where(_instances.updated_at > after)
            rows = await self._backend.query(query.order_by(_instances.updated_at, _instances.instance_id).limit(BATCH))
            if not rows:
                return done, False
            last: datetime = rows[-1]["updated_at"]
            ids = [row["instance_id"] for row in rows]
            if len(rows) == BATCH:  # the mark moves past ``last``: take every instance finished at it
                tied = await self._backend.read(at, {"p_at": last})
                ids = list(dict.fromkeys(ids + [row["instance_id"] for row in tied]))
            if not await apply(ids):
                return done, True
            await self._backend.write([_SET_MARK], {"p_mark": mark, "p_upto": last})
            done, after = done + len(ids), last

    async def _aprune(self, ids: Sequence[str], strategy: Literal["keep_latest", "delete"]) -> bool:
        """Apply ``strategy`` through the saver's own ``aprune``; False when the saver has none (AsyncSqliteSaver:
        the base class raises NotImplementedError). Asked, not inferred from the saver's class, so a saver
        subclass or wrapper is taken at its word."""
        if self._saver_prunes:
            try:
                await self.saver.aprune(ids, strategy=strategy)
                return True
            except NotImplementedError:
                self._saver_prunes = False
        return False

    async def prune_to_latest(self, ids: Sequence[str]) -> bool:
        """Prune the threads ``ids`` to their latest checkpoint, as a pass prunes a finished journey (through the
        saver's ``aprune``, else its public API under each thread's lock), compacting the kept one of a journey
        that will never run again; False when a thread's lock was busy (the rest is left for later). Also what
        ``threads.prune(strategy="keep_latest")`` and a thread TTL's ``keep_latest`` do."""
        if not await self._aprune(ids, "keep_latest"):
            for thread_id in ids:  # by the saver's public API, one thread at a time under its lock
                try:
                    async with self._exclusive(thread_id):
                        await keep_latest(self.saver, thread_id)
                except ConcurrentUpdateError:
                    return False
        never_again = await self._backend.query(
            select(_instances.instance_id).where(
                _instances.instance_id.in_(list(ids)), _instances.status.in_(ENDED_FOR_GOOD)
            )
        )
        for row in never_again:
            try:
                async with self._exclusive(row["instance_id"]):
                    self._compacted += await compact_latest(self.saver, row["instance_id"])
            except ConcurrentUpdateError:
                return False
        return True

    async def _delete(self, ids: Sequence[str]) -> bool:
        if not await self._aprune(ids, "delete"):
            for thread_id in ids:
                await self.saver.adelete_thread(thread_id)
        return True


@asynccontextmanager
async def periodically(every: float, work: Callable[[], Awaitable[Any]], name: str) -> AsyncIterator[None]:
    """Run ``work`` now and then every ``every`` seconds in the background for the block (an embedded server's
    passes: checkpoint retention, the thread TTL sweep); a pass that fails is logged, the next one goes on."""

    async def loop() -> None:
        while True:
            try:
                await work()
            except Exception as exc:  # a database hiccup or a busy thread: the next pass goes on
                log.warning("periodic pass failed", task=name, error=repr(exc))
            await asyncio.sleep(every)

    async with in_background(loop(), name):
        yield


async def keep_latest(saver: BaseCheckpointSaver[str], thread_id: str) -> int:
    """Prune one thread to what ``aprune(strategy="keep_latest")`` keeps, through the saver's public API (for
    a saver without ``aprune``): the latest checkpoint of the root namespace with its pending writes, and
    the latest of each subgraph namespace that this checkpoint started (a subgraph call in flight). Answers
    how many checkpoints it deleted. Call it under the instance's lock: it deletes the thread, then writes
    the kept checkpoints back."""
    found = [t async for t in saver.alist({"configurable": {"thread_id": thread_id}})]
    heads: dict[str, CheckpointTuple] = {}
    for saved in found:  # newest first
        heads.setdefault(saved.config["configurable"].get("checkpoint_ns", ""), saved)
    root = heads.get("")
    if root is None:
        return 0
    root_id = root.config["configurable"]["checkpoint_id"]
    kept = [root] + [
        head for ns, head in heads.items() if ns and (head.metadata or {}).get("parents", {}).get("") == root_id
    ]
    if len(kept) == len(found):
        return 0
    await saver.adelete_thread(thread_id)
    for saved in kept:  # as aprune leaves them: without the parents it deleted
        await put_saved(saver, thread_id, saved, None)
    return len(found) - len(kept)


def compacted(checkpoint: Checkpoint) -> Checkpoint | None:
    """``checkpoint`` without LangGraph's bookkeeping for the channels that hold no value (in
    ``channel_values``): their versions, what each node has seen of them, and their names in
    ``updated_channels``; None when there is none to drop.

    LangGraph's next tasks are unchanged by it: a node is triggered only by a channel that is available
    (holds a value) and whose version is newer than the one the node has seen (``pregel._algo._triggers``),
    a task's id is made of node and channel names, not versions, and the kept channels keep their versions
    (the PostgreSQL saver loads a value's blob by its channel's version). The values, the metadata and the
    checkpoint's id are the same."""
    values = checkpoint["channel_values"]
    versions = {c: v for c, v in checkpoint["channel_versions"].items() if c in values}
    seen = {
        node: kept
        for node, channels in checkpoint["versions_seen"].items()
        if (kept := {c: v for c, v in channels.items() if c in values})
    }
    updated = checkpoint.get("updated_channels")
    if updated is not None:
        updated = [c for c in updated if c in values]
    if (versions, seen, updated) == (
        checkpoint["channel_versions"],
        checkpoint["versions_seen"],
        checkpoint.get("updated_channels"),
    ):
        return None
    smaller = checkpoint.copy()
    smaller["channel_versions"], smaller["versions_seen"], smaller["updated_channels"] = versions, seen, updated
    return smaller


async def compact_latest(saver: BaseCheckpointSaver[str], thread_id: str) -> int:
    """Compact the latest checkpoint of ``thread_id``'s root namespace in place (:func:`compacted`), through
    the saver's own ``aput`` under the same id (the official savers upsert on thread, namespace and id);
    1 if it did, 0 if there was nothing to drop or the checkpoint has pending writes (a step stopped in it).
    Only for a journey that will never run again, under its lock."""
    latest = await saver.aget_tuple({"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}})
    if latest is None or latest.pending_writes:
        return 0
    smaller = compacted(latest.checkpoint)
    if smaller is None:
        return 0
    parent = (latest.parent_config or {}).get("configurable", {}).get("checkpoint_id")
    into: Any = {"configurable": {"thread_id": thread_id, "checkpoint_ns": "", "checkpoint_id": parent}}
    await saver.aput(into, smaller, latest.metadata, smaller["channel_versions"])
    return 1

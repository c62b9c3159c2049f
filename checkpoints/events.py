"""The append-only event log: every agent call, step, navigation and status change of a journey.

Growing history lives here, not in checkpointed graph state (which is re-stored at every step).
Rows are never updated or deleted by the runtime; views such as milestones and analytics are
derived from them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import cache
from typing import Any

import structlog
from sqlalchemy import (
    JSON,
    ColumnElement,
    Integer,
    Select,
    String,
    Table,
    any_,
    bindparam,
    case,
    column,
    exists,
    func,
    literal_column,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgres_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql import Executable

from checkpoints.backends.base import Backend, Params, Row
from checkpoints.clock import Clock
from checkpoints.encryption import Sealer
from checkpoints.rows import IgnoredRow, executable, ignored_row
from checkpoints.schema.tables import INSTANCE_NO_SEQUENCE, journey_events, journey_instances
from checkpoints.seq_race import again_if_lost


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to append. ``key`` makes the append idempotent: a second append with it is a no-op."""

    type: str
    payload: dict[str, Any] = field(default_factory=dict)
    step: str | None = None
    key: str | None = None


@dataclass(frozen=True, slots=True)
class Event:
    """One recorded event of a journey instance, in order (``seq``), keyed when it must be written once."""

    instance_id: str
    seq: int
    type: str
    step: str | None
    payload: dict[str, Any]
    key: str | None
    created_at: datetime


def _event(instance_id: str, row: Row, sealer: Sealer) -> Event:
    payload = sealer.open(row["payload"])
    if isinstance(payload, dict) and INDEX_KEYS & payload.keys():  # the index's bookkeeping: for rebuild only
        payload = {k: v for k, v in payload.items() if k not in INDEX_KEYS}
    return Event(
        instance_id=instance_id,
        seq=row["seq"],
        type=row["type"],
        step=row["step"],
        payload=payload,
        key=full_key(instance_id, row["idempotency_key"]),
        created_at=row["created_at"],
    )


# An idempotency key is stored without its instance's id when it starts with it (most do: a step's key is
# ``<instance>:<step>:<superstep>``): the row has the id already, and keys are unique per instance (migration 20).
# A stored key that starts with the separator is such a key; a key given with no instance prefix is stored as is.
KEY_SEPARATOR = ":"


def stored_key(instance_id: str, key: str | None) -> str | None:
    """``key`` as the row of ``instance_id`` stores it (see :func:`full_key`)."""
    if key is None:
        return None
    if key.startswith(KEY_SEPARATOR):
        raise ValueError(f"an event key cannot start with {KEY_SEPARATOR!r}: {key!r}")
    prefix = instance_id + KEY_SEPARATOR
    return key[len(instance_id) :] if key.startswith(prefix) else key


def full_key(instance_id: str, stored: str | None) -> str | None:
    """The key a row of ``instance_id`` stores as ``stored``, as it was given."""
    if stored is None or not stored.startswith(KEY_SEPARATOR):
        return stored
    return instance_id + stored


_columns = journey_events.c


class _NewInstanceNo(ColumnElement[int]):
    """A number for an instance's first event that no instance has: PostgreSQL's sequence; on SQLite, whose
    writers are serialised, one past the largest (the primary key's first column: one index probe)."""

    type = Integer()
    # It holds nothing, so its cache key is its class. ``inherit_cache`` alone gave none (ColumnElement has no
    # traversal to inherit), and a statement with an element that has no key is compiled on every execution.
    _traverse_internals = []  # noqa: RUF012 (declared by SQLAlchemy as an instance attribute)
    inherit_cache = True


@compiles(_NewInstanceNo, "postgresql")
def _new_instance_no_postgres(element: _NewInstanceNo, compiler: Any, **kw: Any) -> str:
    return f"nextval('{INSTANCE_NO_SEQUENCE}')"


@compiles(_NewInstanceNo)
def _new_instance_no(element: _NewInstanceNo, compiler: Any, **kw: Any) -> str:
    return "(SELECT coalesce(max(instance_no), 0) + 1 FROM journey_events)"


def is_first(seq: ColumnElement[int]) -> ColumnElement[bool]:
    """``seq`` is an instance's first event's: ``seq = 1`` written as a literal, never a bind parameter. The
    index of the first events (``WHERE seq = 1``) serves only a query whose plan can prove its predicate: a
    prepared statement's generic plan with ``seq = $2`` would read every instance's first event instead."""
    return seq == literal_column("1", Integer)


# An instance's events are keyed by its number (migration 21), which its first event gives: callers name
# instances by id, and the number is found from it in each statement (the first events' index on the id).
_first = journey_events.alias("first_event")
INSTANCE_NO = (
    select(_first.c.instance_no)
    .where(_first.c.instance_id == bindparam("p_instance_id"), is_first(_first.c.seq))
    .scalar_subquery()
)
OF_INSTANCE = _columns.instance_no == INSTANCE_NO
# The next seq of the instance is taken in the insert itself; a concurrent writer of the same instance
# makes one of the two fail on the (instance_no, seq) primary key, and that one simply goes again (two
# first events of one instance, on the first events' unique index).
_next_seq = select(func.coalesce(func.max(_columns.seq), 0) + 1).where(OF_INSTANCE).scalar_subquery()
EVENT_VALUES = {
    "instance_no": func.coalesce(INSTANCE_NO, _NewInstanceNo()),
    # Only the first event names the instance by its id.
    "instance_id": case((INSTANCE_NO.is_(None), bindparam("p_instance_id", type_=_columns.instance_id.type))),
    "type": bindparam("p_type", type_=_columns.type.type),
    "step": bindparam("p_step", type_=_columns.step.type),
    "payload": bindparam("p_payload", type_=_columns.payload.type),
    "idempotency_key": bindparam("p_key", type_=_columns.idempotency_key.type),
    "created_at": bindparam("p_created_at", type_=_columns.created_at.type),
}
SET_STATUS = (
    update(journey_instances)
    .where(journey_instances.c.instance_id == bindparam("p_instance_id"))
    .values(status=bindparam("p_status"), updated_at=bindparam("p_created_at"))
)


def _together_statement() -> Executable:
    """PostgreSQL: keyed events of many instances (each with its first event logged already) and their new
    statuses (none for a row whose status is null), from one JSON document (``p_ends``: instance_id, type,
    step, payload, key, status each), in one statement: the text is the same whatever the batch's size, and
    the driver encodes one parameter. Answers per instance whether its first event was found (``known``: else
    nothing of it was written) and whether its event was written (False: its key was logged already)."""
    given = (
        func.json_to_recordset(bindparam("p_ends", type_=JSON))
        .table_valued(
            column("instance_id", String),
            column("type", String),
            column("step", String),
            column("payload", JSON),
            column("key", String),
            column("status", String),
        )
        .render_derived(name="given", with_types=True)
    )
    first = journey_events.alias("first_of_end")
    instance_no = (
        select(first.c.instance_no)
        .where(first.c.instance_id == given.c.instance_id, is_first(first.c.seq))
        .scalar_subquery()
    )
    ends = select(given, instance_no.label("instance_no")).cte("ends")
    known = select(ends).where(ends.c.instance_no.isnot(None)).subquery("known")
    before = journey_events.alias("before_end")
    next_seq = select(func.coalesce(func.max(before.c.seq), 0) + 1).where(before.c.instance_no == known.c.instance_no)
    written = (
        postgres_insert(journey_events)
        .from_select(
            ["instance_no", "seq", "type", "step", "payload", "idempotency_key", "created_at"],
            select(
                known.c.instance_no,
                next_seq.scalar_subquery(),
                known.c.type,
                known.c.step,
                known.c.payload,
                known.c.key,
                bindparam("p_created_at", type_=_columns.created_at.type),
            ),
        )
        .on_conflict_do_nothing(index_elements=KEY_INDEX, index_where=KEYED)
        .returning(_columns.instance_no)
        .cte("written")
    )
    # The instances whose status changes, found by their key: joined with ``ends`` alone, the planner weighed
    # json_to_recordset's default estimate (100 rows) against the index and hashed the whole index, every row of
    # every instance ever started read by each batch that sets a status (each journey's last step).
    changing = ends.alias("changing")
    changed = select(changing.c.instance_id).where(changing.c.instance_no.isnot(None), changing.c.status.isnot(None))
    statuses = (
        update(journey_instances)
        .where(
            journey_instances.c.instance_id == any_(func.array(changed.scalar_subquery())),
            journey_instances.c.instance_id == ends.c.instance_id,
            ends.c.instance_no.isnot(None),
            ends.c.status.isnot(None),
        )
        .values(status=ends.c.status, updated_at=bindparam("p_created_at"))
        .cte("statuses")
    )
    return select(
        ends.c.instance_id,
        ends.c.instance_no.isnot(None).label("known"),
        exists().where(written.c.instance_no == ends.c.instance_no).label("written"),
    ).add_cte(statuses)


# The payload keys under which an event records the status (and, for a process migration, the design)
# its transaction gave the instance: the instance index is then derived from the log (checkpoints/rebuild.py).
# The first event records the instance's pattern, owner and design too: the whole row can be rebuilt.
STATUS_KEY = "instance_status"
DESIGN_KEY = "instance_design"
PATTERN_KEY = "instance_pattern"
USER_KEY = "instance_user"
INDEX_KEYS = frozenset({STATUS_KEY, DESIGN_KEY, PATTERN_KEY, USER_KEY})  # not part of what an event reads as
# A first event whose payload names the design and the user already (``journey_id``, ``user_id``: a structured
# journey's start) does not record them twice (migration 20 drops the copies from older rows too).
_SAID_AS = {DESIGN_KEY: "journey_id", USER_KEY: "user_id"}


def first_payload(payload: Mapping[str, Any], journey_id: str, pattern: str, user_id: str) -> dict[str, Any]:
    """An instance's first event payload as written: ``payload`` and what the instance's index row is."""
    row = {PATTERN_KEY: pattern, DESIGN_KEY: journey_id, USER_KEY: user_id}
    return {**payload, **{k: v for k, v in row.items() if k not in _SAID_AS or payload.get(_SAID_AS[k]) != v}}


def first_row(payload: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """(design, pattern, user) as an instance's first event payload records them; None when it predates that."""
    if PATTERN_KEY not in payload:
        return None
    design, user = (payload[k] if k in payload else payload[_SAID_AS[k]] for k in (DESIGN_KEY, USER_KEY))
    return str(design), str(payload[PATTERN_KEY]), str(user)


def stamped(events: Sequence[NewEvent], status: str | None) -> Sequence[NewEvent]:
    """``events`` with the last one recording ``status`` (unchanged when no status is set)."""
    if status is None or not events:
        return events
    last = events[-1]
    return [*events[:-1], replace(last, payload={**last.payload, STATUS_KEY: status})]


# Told (instance id, new status) after a status change committed with newly written events (metrics).
StatusListener = Callable[[str, str], Awaitable[None]]
_SELECT_BY_KEY = select(journey_events).where(OF_INSTANCE, _columns.idempotency_key == bindparam("p_key"))
# Keys are unique per instance, among the events that have one (a partial index: unkeyed events pay nothing).
KEY_INDEX = ["instance_no", "idempotency_key"]
KEYED = _columns.idempotency_key.isnot(None)


@cache
def _events_of_instance(types: int) -> Select[Any]:
    """An instance's events after a seq, of any type (``types`` 0) or of one of ``types`` given types."""
    query = select(journey_events).where(OF_INSTANCE, _columns.seq > bindparam("p_after"))
    if types:
        query = query.where(_columns.type.in_([bindparam(f"p_type_{n}") for n in range(types)]))
    return query.order_by(_columns.seq)


# Passes of the event loop the writer of completions asked together (EventLog.append_together) gives the runs that
# write behind them (EventLog.write_behind) before it takes a batch, while one of them has not asked yet: a run's next
# completion comes three passes after its last one landed (the call that asked resumes, the task that wrote it ends,
# the step that settled it goes on to its next call), a pass or two more for a step that awaits anything. After one
# pass, the runs whose writes landed together went in two or three transactions a round, not one (benchmarks/
# server.py at 20 clients: 2.3 completions per statement; 3.5 with these passes, a third fewer statements and commits).
GATHER_PASSES = 4
log = structlog.get_logger("journeys.events")


@dataclass(slots=True)
class _WriteBehind:
    make: Callable[[], Awaitable[None]]
    task: asyncio.Future[None]
    again: bool = False  # made once more after it failed


class _WritesBehind:
    """A run's writes that go on behind it: each started as its step returned, all done, in order, before
    anything that follows them (see :meth:`EventLog.write_behind`). ``started``: told of each write's task (the
    log's close waits for it)."""

    def __init__(self, started: Callable[[asyncio.Future[Any]], None]) -> None:
        self._pending: list[_WriteBehind] = []
        self._started = started

    def start(self, make: Callable[[], Awaitable[None]]) -> None:
        self._pending.append(_WriteBehind(make, self._begun(make)))

    def _begun(self, make: Callable[[], Awaitable[None]]) -> asyncio.Future[None]:
        task = asyncio.ensure_future(make())
        self._started(task)
        return task

    async def settle(self) -> None:
        """Wait until every write started before this call (but the caller's own) is durable. A write that
        failed is made once more, now (appends are keyed: one that did land is not made twice); should that
        fail too, its error is raised here and to every later caller."""
        if not self._pending:
            return
        me = asyncio.current_task()
        for write in list(self._pending):
            if write.task is me:
                return
            first = write.task
            try:
                await asyncio.shield(first)
            except Exception:
                if write.task is first:  # no other caller is making it again yet
                    if write.again:
                        raise
                    write.again = True
                    write.task = self._begun(write.make)
                await asyncio.shield(write.task)
            if write in self._pending:
                self._pending.remove(write)


class EventLog:
    """The append-only log of every journey instance: appended once per key, read in order."""

    def __init__(self, backend: Backend, clock: Clock, sealer: Sealer | None = None) -> None:
        self._backend = backend
        self._engine = backend.engine
        self._clock = clock
        self._sealer = sealer or Sealer(None)  # payloads encrypted when the store has a key
        # The statements of the hot path, built once with their values bound per call: an append or a
        # lookup then builds, hashes and compiles no new statement.
        insert_event = backend.insert(journey_events).values(seq=_next_seq, **EVENT_VALUES)
        # Whether a row was written is read from RETURNING: with the RETURNING that SQLAlchemy adds for the
        # new id, psycopg reports a rowcount of -1, which made a skipped duplicate look written on PostgreSQL.
        self._insert_event = insert_event.returning(_columns.seq)
        self._insert_keyed_event = insert_event.on_conflict_do_nothing(
            index_elements=KEY_INDEX, index_where=KEYED
        ).returning(_columns.seq)
        # Keyed events written inside someone else's transaction, many at a time (no RETURNING, so the driver
        # runs one statement per row and each row's sequence number sees the rows before it).
        self._insert_keyed_quietly = insert_event.on_conflict_do_nothing(index_elements=KEY_INDEX, index_where=KEYED)
        self._listeners: list[StatusListener] = []
        self._behind: dict[str, _WritesBehind] = {}  # instance id → its run's writes behind it
        # Events asked for while others were being written, written together by one writer task.
        self._together: list[_Together] = []
        self._together_events = _together_statement() if backend.postgres else None
        self._together_writer: asyncio.Task[None] | None = None
        # Writes going on in tasks of their own (the writer of completions, writes behind a run), which a caller
        # cancelled meanwhile leaves running: the log's close waits for them (see close).
        self._background: set[asyncio.Future[Any]] = set()
        # PostgreSQL: a keyed event with the rows written only if it is new, as one statement, per shape of rows.
        self._with_rows: dict[tuple[tuple[Table, tuple[str, ...]], ...], Executable] = {}

    @property
    def sealer(self) -> Sealer:
        """What seals the JSON our tables keep for callers when the store has a key (shared by the stores
        that write beside the log: the waits' resolutions, the inbox's results, the messages)."""
        return self._sealer

    def _in_background(self, task: asyncio.Future[Any]) -> None:
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        """Wait for the writes going on in the background (a run's writes behind it, the batched completions)
        whose callers were cancelled or left before they landed: the store closes after them, never under them
        (a write to a closed connection, or from aiosqlite's thread into a closed event loop). A write that failed
        is logged as an error: nobody is left to be told."""
        while self._background:
            running = set(self._background)
            await asyncio.wait(running)
            for task in running:
                if not task.cancelled() and (error := task.exception()) is not None:
                    log.error("a background write of the event log failed as the store closed", error=repr(error))

    def on_status(self, listener: StatusListener) -> None:
        """Tell ``listener`` of every status change this log commits along with new events, once however often it
        is registered (each of a process's run executors over one runtime registers the same one)."""
        if listener not in self._listeners:
            self._listeners.append(listener)

    async def _status_changed(self, instance_id: str, status: str | None, written: bool) -> None:
        if status is not None and written:
            for listener in self._listeners:
                await listener(instance_id, status)

    @asynccontextmanager
    async def writing_behind(self, instance_id: str, enabled: bool = True) -> AsyncIterator[None]:
        """Let the run of ``instance_id`` inside (under its lock) write its steps' completions behind it
        (:meth:`write_behind`); on the way out, however the run ended, every one of them is durable (or its
        error raised)."""
        if not enabled or instance_id in self._behind:  # a run inside the run: the outer one settles
            yield
            return
        scope = self._behind[instance_id] = _WritesBehind(self._in_background)
        try:
            yield
        finally:
            try:
                settling = asyncio.ensure_future(scope.settle())  # a failed write is made again in it
                self._in_background(settling)
                await asyncio.shield(settling)
            finally:
                del self._behind[instance_id]

    async def write_behind(self, instance_id: str, write: Callable[[], Awaitable[None]]) -> None:
        """Start ``write`` (a step's completion, keyed) and return at once when the instance's run writes
        behind it (:meth:`writing_behind`), else make it now.

        Only for a write that the run's next node settles before it does anything (:meth:`settle`): the
        step's completion is then durable before the next step starts, as when it is written in place, while
        LangGraph's bookkeeping between the two nodes overlaps the database's commit. Every append and read
        of the instance's log settles first too, and so does the run's end. The run must checkpoint only
        where its nodes stop it ("exit"): a checkpoint taken between two nodes could otherwise be durable
        before the completion it follows."""
        scope = self._behind.get(instance_id)
        if scope is None:
            await write()
        else:
            scope.start(write)

    async def settle(self, instance_id: str) -> None:
        """Wait until what the instance's run wrote behind it (:meth:`write_behind`) is durable: what
        follows (another event, a read, the next step's work) must not overtake it."""
        scope = self._behind.get(instance_id)
        if scope is not None:
            await scope.settle()

    @property
    def engine(self) -> AsyncEngine:
        """The engine of the log's database, for read-only views over tables derived from it."""
        return self._engine

    @property
    def backend(self) -> Backend:
        """The log's backend, whose prebuilt statements run on the driver's hot path."""
        return self._backend

    async def append(
        self,
        instance_id: str,
        events: Sequence[NewEvent],
        *,
        status: str | None = None,
        also: Sequence[Executable | IgnoredRow] = (),
    ) -> list[bool]:
        """Append ``events`` (and optionally set the instance's status) in one transaction.

        ``also`` are statements (or rows, :class:`~checkpoints.rows.IgnoredRow`) that maintain tables derived from
        these events; they run in the same transaction, and only when every event was newly written, so a replayed
        append never applies them twice and the derived tables never diverge from the log.

        Returns, per event, whether it was written (False: its key was already there).
        """
        await self.settle(instance_id)
        events = stamped(events, status)
        if len(events) == 1 and not also:
            return [await self._append_alone(instance_id, events[0], status)]
        if self._backend.postgres and len(events) == 1 and events[0].key is not None and status is None:
            rows = [row for row in map(ignored_row, also) if row is not None]
            if len(rows) == len(also):  # every one insert_ignore's (a wait's armed rows)
                return [await self._append_with_rows(instance_id, events[0], rows)]

        async def transaction() -> list[bool]:
            async with self._engine.begin() as conn:
                written = [await self._append_one(conn, instance_id, e) for e in events]
                if also and all(written):
                    for statement in also:
                        await conn.execute(executable(statement, self._engine))
                if status is not None:
                    await conn.execute(
                        SET_STATUS,
                        {"p_instance_id": instance_id, "p_status": status, "p_created_at": self._clock.now()},
                    )
            return written

        written = await again_if_lost(transaction)  # two writers raced for the next seq: the loser goes again
        await self._status_changed(instance_id, status, all(written))
        return written

    async def _append_with_rows(self, instance_id: str, event: NewEvent, rows: Sequence[IgnoredRow]) -> bool:
        """A keyed event and rows that derive from it (``insert_ignore``'s: a wait's row, its timers, its task),
        written only if the event is new, as :meth:`append` does, in one statement on the backend's hot path: one
        round trip, where a transaction of SQLAlchemy's took five (BEGIN, the event, two rows, COMMIT) to park a
        journey on a timer."""
        shape = tuple((row.table, tuple(row.values)) for row in rows)
        statement = self._with_rows.get(shape)
        if statement is None:
            statement = self._with_rows[shape] = _with_rows_statement(self._insert_keyed_event, shape)
        values = _values(instance_id, event, self._clock.now(), self._sealer)
        for n, row in enumerate(rows):
            values.update({f"r{n}_{i}": value for i, value in enumerate(row.values.values())})
        return bool(await again_if_lost(lambda: self._backend.write([statement], values)))

    async def _append_alone(self, instance_id: str, event: NewEvent, status: str | None) -> bool:
        """One event (and the instance's new status) through the backend's hot path."""
        written = await self._write_alone(instance_id, event, status)
        await self._status_changed(instance_id, status, written)
        return written

    async def _write_alone(self, instance_id: str, event: NewEvent, status: str | None) -> bool:
        statements, values = self._alone(instance_id, event, status)
        return bool(await again_if_lost(lambda: self._backend.write(statements, values)))

    def _alone(self, instance_id: str, event: NewEvent, status: str | None) -> tuple[list[Executable], Params]:
        """The statements that append one event (and set the instance's status) as one, and their values."""
        values = _values(instance_id, event, self._clock.now(), self._sealer)
        statements: list[Executable] = [self._insert_event if event.key is None else self._insert_keyed_event]
        if status is not None:
            statements.append(SET_STATUS)
            values["p_status"] = status
        return statements, values

    async def append_together(self, instance_id: str, event: NewEvent, status: str | None = None) -> bool:
        """Append an instance's keyed ``event`` (and give it ``status``, if given) in one transaction with the
        others asked for at about the same time: a wave of continuations reaching their ends, the steps of
        many runs completing at once (one transaction and one round trip for them all, not one each).

        Returns once the event (and the status) is durable, whether the event was written (False: its key
        was logged already; a status is set again either way), as :meth:`append` of the one event would.
        A batch that fails for any reason but a lost race (which goes again whole) is rolled back whole,
        and each of its events is then appended on its own: one caller's failure is not the others'."""
        if event.key is None:
            raise ValueError(f"append_together takes a keyed event; {event.type!r} has no key")
        await self.settle(instance_id)
        [event] = stamped([event], status)
        written: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._together.append(_Together(instance_id, event, status, written))
        if self._together_writer is None or self._together_writer.done():
            self._together_writer = asyncio.ensure_future(self._write_together_asked())
            self._in_background(self._together_writer)
        done = await written
        await self._status_changed(instance_id, status, done)
        return done

    async def _write_together_asked(self) -> None:
        """Write what :meth:`append_together` callers asked for meanwhile, batch by batch, until none is left."""
        while self._together:
            batch: list[_Together] = []
            try:
                # One more pass of the event loop first: the completions of other runs' steps that became ready in it
                # join this batch (a busy worker's steps return a pass or so apart), for a pass's latency. Then a
                # few more while a run writing behind it has not asked yet (see GATHER_PASSES).
                await asyncio.sleep(0)
                for _ in range(GATHER_PASSES - 1):
                    if self._behind.keys() <= {entry.instance_id for entry in self._together}:
                        break
                    await asyncio.sleep(0)
                batch = _one_per_instance(self._together)  # each row's next seq is read before the statement writes any
                self._together = [entry for entry in self._together if entry not in batch]
                results = await self._write_batch(batch)
            except BaseException:  # the writer itself is cancelled: so is what is left
                for entry in [*batch, *self._together]:
                    entry.written.cancel()
                self._together.clear()
                raise
            for entry, result in zip(batch, results, strict=True):
                if entry.written.done():  # its caller was cancelled meanwhile
                    continue
                if isinstance(result, Exception):
                    entry.written.set_exception(result)
                else:
                    entry.written.set_result(result)

    async def _write_batch(self, batch: Sequence[_Together]) -> list[bool | Exception]:
        """Whether each event of ``batch`` was written, or the error that kept it from being written."""
        together: dict[str, bool] = {}
        if len(batch) > 1:
            with suppress(Exception):  # rolled back whole: each goes on its own below, failing only itself
                together = await again_if_lost(lambda: self._write_together(batch))
        return [
            together[e.instance_id]
            if e.instance_id in together
            else await _outcome(self._write_alone(e.instance_id, e.event, e.status))
            for e in batch
        ]

    async def _write_together(self, batch: Sequence[_Together]) -> dict[str, bool]:
        """One transaction for ``batch``: per instance it wrote, whether its event was new. On PostgreSQL one
        statement (an instance with no first event yet is left to go on its own); elsewhere one statement
        per event, in one transaction for the events with a status and one for those without."""
        if self._together_events is None:
            found: dict[str, bool] = {}
            for shape in (True, False):  # the statements are the same for each: a keyed event, and a status or not
                alike = [e for e in batch if (e.status is not None) is shape]
                if alike:
                    appends = [self._alone(e.instance_id, e.event, e.status) for e in alike]
                    rows = await self._backend.write_each(appends[0][0], [values for _statements, values in appends])
                    found.update({e.instance_id: bool(row) for e, row in zip(alike, rows, strict=True)})
            return found
        ends = [
            {
                "instance_id": e.instance_id,
                "type": e.event.type,
                "step": e.event.step,
                "payload": event_payload(e.event, self._sealer),
                "key": stored_key(e.instance_id, e.event.key),
                "status": e.status,
            }
            for e in batch
        ]
        said = await self._backend.write([self._together_events], {"p_ends": ends, "p_created_at": self._clock.now()})
        return {row["instance_id"]: bool(row["written"]) for row in said if row["known"]}

    async def append_in(self, conn: AsyncConnection, entries: Sequence[tuple[str, NewEvent]]) -> None:
        """Append keyed events (``(instance_id, event)`` each) in the caller's transaction on ``conn``.

        The caller's statements and these events then commit or roll back together. An event whose key
        is already logged is skipped. A concurrent writer that takes the same sequence number makes this
        raise ``IntegrityError``, which rolls the caller's transaction back: it may simply go again.
        """
        if not entries:
            return
        for _instance_id, event in entries:
            if event.key is None:
                raise ValueError(f"append_in takes keyed events only; {event.type!r} has no key")
        for instance_id in {instance_id for instance_id, _event in entries}:
            await self.settle(instance_id)
        now = self._clock.now()
        rest = list(entries)
        if self._together_events is not None and len(entries) > 1:
            # PostgreSQL: the first event of each instance in one statement (a firing's batch of hundreds of
            # timers was hundreds of statements); an instance with no event yet, and a second event of one,
            # go one statement each after it, in order.
            firsts: dict[str, int] = {}  # instance id → the index of its first entry
            for n, (instance_id, _event) in enumerate(entries):
                firsts.setdefault(instance_id, n)
            ends = [
                {
                    "instance_id": instance_id,
                    "type": event.type,
                    "step": event.step,
                    "payload": event_payload(event, self._sealer),
                    "key": stored_key(instance_id, event.key),
                    "status": None,
                }
                for instance_id, event in (entries[n] for n in firsts.values())
            ]
            said = await conn.execute(self._together_events, {"p_ends": ends, "p_created_at": now})
            written = {row.instance_id for row in said if row.known}
            rest = [(i, event) for n, (i, event) in enumerate(entries) if not (i in written and firsts[i] == n)]
        if rest:
            await conn.execute(self._insert_keyed_quietly, [_values(i, event, now, self._sealer) for i, event in rest])

    async def _append_one(self, conn: AsyncConnection, instance_id: str, event: NewEvent) -> bool:
        stmt = self._insert_event if event.key is None else self._insert_keyed_event
        result = await conn.execute(stmt, _values(instance_id, event, self._clock.now(), self._sealer))
        return result.first() is not None

    async def find_by_key(self, instance_id: str, key: str) -> Event | None:
        """The event of ``instance_id`` written under ``key``, if any."""
        await self.settle(instance_id)
        found = await self._backend.read(
            _SELECT_BY_KEY, {"p_instance_id": instance_id, "p_key": stored_key(instance_id, key)}
        )
        return _event(instance_id, found[0], self._sealer) if found else None

    async def instances_with(self, event_type: str, *, pattern: str, status: str) -> list[str]:
        """The ids of the ``pattern`` instances in ``status`` whose log has an event of ``event_type`` (each
        instance's events looked at through its number: no scan of the whole log)."""
        first, logged = journey_events.alias("first_event"), journey_events.alias("logged")
        number = (
            select(first.c.instance_no)
            .where(first.c.instance_id == journey_instances.c.instance_id, is_first(first.c.seq))
            .correlate(journey_instances)
            .scalar_subquery()
        )
        query = select(journey_instances.c.instance_id).where(
            journey_instances.c.pattern == pattern,
            journey_instances.c.status == status,
            exists().where(logged.c.instance_no == number, logged.c.type == event_type),
        )
        return [row["instance_id"] for row in await self._backend.query(query)]

    async def list(self, instance_id: str, *, types: Sequence[str] | None = None, after_seq: int = 0) -> list[Event]:
        await self.settle(instance_id)
        wanted = list(dict.fromkeys(types or ()))
        params: dict[str, Any] = {"p_instance_id": instance_id, "p_after": after_seq}
        params.update({f"p_type_{n}": type_ for n, type_ in enumerate(wanted)})
        rows = await self._backend.read(_events_of_instance(len(wanted)), params)
        return [_event(instance_id, row, self._sealer) for row in rows]


@dataclass(slots=True, eq=False)
class _Together:
    """An :meth:`EventLog.append_together` call waiting for its batch: whether its event was written goes to
    ``written``."""

    instance_id: str
    event: NewEvent
    status: str | None
    written: asyncio.Future[bool]


def _one_per_instance(entries: Sequence[_Together]) -> list[_Together]:
    """The first of ``entries`` for each instance: two events of one instance in a batch would take one seq."""
    seen: set[str] = set()
    batch = []
    for entry in entries:
        if entry.instance_id not in seen:
            seen.add(entry.instance_id)
            batch.append(entry)
    return batch


async def _outcome(write: Awaitable[bool]) -> bool | Exception:
    """What ``write`` ends with: its result, or the error it raised."""
    try:
        return await write
    except Exception as exc:
        return exc


def _with_rows_statement(insert_event: Executable, shape: Sequence[tuple[Table, tuple[str, ...]]]) -> Executable:
    """PostgreSQL: ``insert_event`` (keyed, RETURNING its seq) and, only if it wrote its row, one row into each
    table of ``shape`` (its columns bound as ``r<n>_<i>``, ``ON CONFLICT DO NOTHING``), in one statement."""
    main = insert_event.cte("main")  # type: ignore[attr-defined]
    new = exists(select(main.c.seq))  # the event's key was not logged yet
    rows = [
        postgres_insert(table)
        .from_select(
            list(columns),
            select(*(bindparam(f"r{n}_{i}", type_=table.c[column].type) for i, column in enumerate(columns))).where(
                new
            ),
        )
        .on_conflict_do_nothing()
        .cte(f"row_{n}")
        for n, (table, columns) in enumerate(shape)
    ]
    return select(main.c.seq).add_cte(*rows)


def _values(instance_id: str, event: NewEvent, now: datetime, sealer: Sealer) -> dict[str, Any]:
    return {
        "p_instance_id": instance_id,
        "p_type": event.type,
        "p_step": event.step,
        "p_payload": event_payload(event, sealer),
        "p_key": stored_key(instance_id, event.key),
        "p_created_at": now,
    }


def event_payload(event: NewEvent, sealer: Sealer) -> Any:
    """An event's payload as stored: whole, as the journey's state is, since recovery replays from it (a
    start's input, a logged call's output) and a redacted copy would replay ``[REDACTED]`` into the journey;
    sealed when the store encrypts at rest. It is redacted where it is shown (every answer of the server,
    the dashboard, logs: :mod:`checkpoints.redaction`)."""
    return sealer.seal(event.payload)


class _Unclaimed(Exception):
    """The claim changed no row: roll the transaction back."""


async def claimed_with_event(
    engine: AsyncEngine,
    events: EventLog,
    claims: Sequence[Executable],
    statements: Sequence[Executable],
    instance_id: str,
    event: NewEvent,
) -> bool:
    """``claims`` (conditional updates that must each change exactly one row), ``statements`` and the keyed
    ``event`` that logs them, in one transaction: a change and its event commit together or not at all.
    False, with nothing written, when a claim changed no row; a concurrent append that took the event's
    sequence number rolls it all back, and it goes again."""

    async def transaction() -> None:
        async with engine.begin() as conn:
            for claim in claims:
                if (await conn.execute(claim)).rowcount != 1:
                    raise _Unclaimed
            for statement in statements:
                await conn.execute(statement)
            await events.append_in(conn, [(instance_id, event)])

    try:
        await again_if_lost(transaction)
    except _Unclaimed:
        return False
    return True

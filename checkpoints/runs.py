"""Threads and runs as rows: the records behind the server's Agent Server API subset.

A run is created ``pending`` and claimed by one executor at a time (an atomic UPDATE); ``multitask_strategy``
``reject`` refuses a run while the thread has one pending or running, ``enqueue`` queues it behind them.
Stream chunks of runs created for streaming are rows too, so a client can read them from any API process
while a worker in another process produces them. On PostgreSQL, finishing a run or appending a chunk also
notifies ``RUN_CHANNEL`` with the run id, in the same transaction, so waiting requests in any process wake
when the change is committed (see :mod:`server.runs.watch`); a finished run's notice carries its row too
(:func:`split_notice`), so a waiter in another process has it without reading it back. Creating a run on an
existing thread notifies the thread's :func:`thread_key`, which the thread's streams watch.

Every statement is defined once here and runs through the store's :class:`~checkpoints.backends.base.Backend`
(on PostgreSQL, the hot ones in plain psycopg).
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    CTE,
    ColumnElement,
    Executable,
    Select,
    Table,
    Text,
    TextualSelect,
    and_,
    bindparam,
    case,
    delete,
    false,
    func,
    insert,
    literal,
    not_,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.sql.dml import ReturningUpdate

from checkpoints.backends.base import Backend, Row, Statement, Transaction
from checkpoints.clock import Clock
from checkpoints.crons import DELETE_THREAD_CRONS
from checkpoints.encryption import Sealer
from checkpoints.errors import (
    RunWithdrawnError,
    ThreadBusyError,
    ThreadExistsError,
    ThreadNotFoundError,
    UnsupportedMultitaskStrategyError,
)
from checkpoints.ownership import DEFAULT_TENANT, Owner, Viewer, visible_to
from checkpoints.rows import JsonHolds, count_holding
from checkpoints.schema.tables import server_run_events, server_runs, server_threads

ACTIVE = ("pending", "running")
TERMINAL = ("success", "error", "interrupted", "timeout")
# reject: refused while the thread has an active run; the others queue behind them (interrupt and rollback
# after the server has cancelled them: see server.services.ServerServices.double_text).
STRATEGIES = ("reject", "enqueue", "interrupt", "rollback")
NO_STATE = ""  # a run's base checkpoint when its thread had no state yet (a rollback then clears the thread)
RUN_CHANNEL = "journeys_runs"  # NOTIFY channel: the id of a run that finished or streamed (see split_notice)
_THREAD_KEY = "thread:"  # before a thread's id, the notice of a run created on it (no run id starts so)
_STATE_KEY = "state:"  # before a thread's id, the notice of an update of its state (threads.update_state)
# PostgreSQL refuses a NOTIFY payload of 8,000 bytes or more: a finished run's row longer than this stays out.
NOTICE_LIMIT = 7_900
_NOTICE_SEP = "\n"  # between a finished run's id and its row, in its notice (no run id holds a newline)
LISTEN_RUNS = f"LISTEN {RUN_CHANNEL}"  # what a process that waits on runs listens with
# NOTIFY channel of the cancels recorded (RunStore.request_cancel), noticed as CANCELS_KEY: an embedded server
# listens, to stop a run another process cancelled at once. A channel of its own: the runs' (chunks, ends) is
# no business of a process that executes its runs itself, and hearing its own would wake its waiters twice.
CANCEL_CHANNEL = "journeys_cancels"
CANCELS_KEY = "cancels"
LISTEN_CANCELS = f"LISTEN {CANCEL_CHANNEL}"
# Sent by a listening connection on its own channel with PROBE_KEY and a number (server.runs.watch): heard back,
# it proves the notices committed before it were delivered. Other listeners find no waiter of the key.
PROBE = f"SELECT pg_notify('{RUN_CHANNEL}', %s)"
PROBE_KEY = "probe:"
GROUPS = "groups"  # the run option holding the groups of the caller a run acts for
_SERVER_OPTIONS = frozenset({"graph_id", GROUPS})  # options the server keeps for itself: not in a run's kwargs
_LEGACY_GROUPS = "_groups"  # where runs stored before GROUPS kept their caller's groups: in their metadata


@dataclass(frozen=True, slots=True)
class ThreadRow:
    """A server thread: the journey instance (checkpoint thread) its first run started, once bound."""

    thread_id: str
    assistant_id: str | None
    instance_id: str | None
    owner: str | None
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    tenant: str | None = None  # with owner: who may see it (checkpoints.ownership)
    shared_group: str | None = None
    runs_created: int = 0  # how many runs were ever created on it (the last one's ordinal)
    # Its time-to-live, if it has one (see ThreadTTL): the earliest it can expire is expires_at.
    ttl_strategy: str | None = None
    ttl_seconds: int | None = None
    expires_at: datetime | None = None

    @property
    def ttl(self) -> ThreadTTL | None:
        """Its time-to-live, or None: it stays until it is deleted."""
        if self.ttl_seconds is None:
            return None
        return ThreadTTL.of_seconds(self.ttl_seconds, self.ttl_strategy)


@dataclass(frozen=True, slots=True)
class ThreadTTL:
    """A thread's time-to-live, as the Agent Server's: ``minutes`` after its last activity (its creation, an
    update of it or of its state, its latest run) the TTL sweep deletes it (``strategy`` "delete": with its runs,
    crons and checkpoints) or prunes it to its latest checkpoint (``strategy`` "keep_latest": it stays)."""

    minutes: float
    strategy: str = "delete"

    @classmethod
    def of_seconds(cls, seconds: int, strategy: str | None) -> ThreadTTL:
        """The TTL a thread's row keeps (whole seconds: a float column has no result type on the raw driver)."""
        return cls(seconds // 60 if seconds % 60 == 0 else seconds / 60, strategy or "delete")

    @property
    def seconds(self) -> int:
        """As its thread's row keeps it: in whole seconds."""
        return round(self.minutes * 60)

    def expiry(self, since: datetime) -> datetime:
        """When a thread last active at ``since`` expires."""
        return since + timedelta(minutes=self.minutes)


# How often the threads whose TTL has passed are swept (server.thread_ends): the Agent Server's default
# sweep_interval_minutes; in the workers, a procrastinate cron.
TTL_SWEEP_MINUTES = 5.0
TTL_SWEEP_CRON = "*/5 * * * *"
NO_TTL = ThreadTTL(-1)  # a thread created without a TTL, not even the store's default (see RunStore.create_thread)


# The keys a thread's metadata shows from its runs where it has none of its own, as the Agent Server writes
# them into a thread's metadata on each run: the graph its first run bound it to (graph_id), the assistant its
# latest run ran, else that graph (assistant_id), and the journey instance (instance_id).
BOUND_METADATA = ("graph_id", "assistant_id", "instance_id")
BOUND_METADATA_FIELDS = {"graph_id": "assistant_id", "instance_id": "instance_id"}  # the thread row's


def shown_metadata(
    metadata: Mapping[str, Any], graph_id: str | None, instance_id: str | None, ran: str | None = None
) -> dict[str, Any]:
    """A thread's metadata as it is shown and searched: its own, with the keys of :data:`BOUND_METADATA` it
    lacks (``ran``: the assistant its latest run ran)."""
    bound = {"graph_id": graph_id, "assistant_id": ran or graph_id, "instance_id": instance_id}
    return {**{key: value for key, value in bound.items() if value}, **metadata}


def _bound_metadata(key: str, value: Any) -> ColumnElement[bool]:
    """Whether a thread's runs give its metadata ``key`` with ``value`` (:func:`shown_metadata`)."""
    if not isinstance(value, str):
        return false()
    if key == "assistant_id":
        ran = select(_runs.assistant_id).where(_runs.thread_id == _threads.thread_id)
        latest = ran.order_by(_runs.created_at.desc()).limit(1).scalar_subquery()
        return func.coalesce(latest, _threads.assistant_id) == value
    return _threads[BOUND_METADATA_FIELDS[key]] == value


@dataclass(frozen=True, slots=True)
class RunRow:
    """A run on a thread: what it was asked to do, and how far it got."""

    run_id: str
    thread_id: str
    assistant_id: str
    status: str
    kind: str
    input: Any
    command: Any
    stream_modes: list[str]
    multitask_strategy: str
    metadata: dict[str, Any]
    principal: str | None
    base_checkpoint: str | None
    attempts: int
    error: Any
    created_at: datetime
    updated_at: datetime
    output: Any = None  # the thread's values when the run finished (None until then)
    job_id: int | None = None  # distributed mode: the procrastinate job executing the run
    cancel_requested_at: datetime | None = None  # a cancel reached it while it was executing
    durability: str | None = None  # how its client asked it to checkpoint (None: the server's setting)
    tenant: str | None = None  # with principal: who owns it, and so the journey it starts
    shared_group: str | None = None
    # The Agent Server options it was created with (see RunOptions in server.runs.options): graph_id,
    # config, context, interrupt_before/after, webhook, not_before, on_completion, checkpoint_id; and the
    # groups of the caller it acts for (GROUPS).
    options: Any = None
    # Its place among the runs ever created on its thread (1, 2, …): fixed, never reused after a delete.
    ordinal: int = 0

    @property
    def owner(self) -> Owner | None:
        """Who the run acts for: the owner of what it creates."""
        return Owner(self.principal, self.tenant or DEFAULT_TENANT, self.shared_group) if self.principal else None

    @property
    def groups(self) -> tuple[str, ...]:
        """The groups of the caller the run acts for (a user task offered to a group): kept with its options,
        never in its metadata, which is the client's own."""
        return tuple((self.options or {}).get(GROUPS, ()))

    @property
    def graph_id(self) -> str:
        """The graph (pattern) the run executes: its assistant's."""
        return str((self.options or {}).get("graph_id") or self.assistant_id)

    def view(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "thread_id": self.thread_id,
            "assistant_id": self.assistant_id,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "status": self.status,
            "metadata": self.metadata,
            "multitask_strategy": self.multitask_strategy,
            "kwargs": {
                "input": self.input,
                "command": self.command,
                "stream_mode": self.stream_modes,
                "durability": self.durability,
                **{k: v for k, v in (self.options or {}).items() if k not in _SERVER_OPTIONS},
            },
            "error": self.error,
            "cancel_reason": (self.error or {}).get("cancel_reason") if self.status == "interrupted" else None,
        }


@dataclass(frozen=True, slots=True)
class Enqueue:
    """How a run's queue job is written by the statement that creates the run, so the two commit together
    (or neither does): ``defer`` is a query whose one row's ``id`` is the job it deferred (taken as a CTE
    of the run's INSERT), bound from what ``params`` gives for the run."""

    defer: Executable
    params: Callable[[RunRow], dict[str, Any]]


@dataclass(frozen=True, slots=True)
class QueueJobs:
    """How a worker's run store takes runs with their queue's jobs, one commit each where two were:
    ``fetch`` (a query answering the next job as one row, bound by its caller) claims the run of a ``task``
    job in its statement, and ``end`` (a column bound from ``p_job_id``) ends a run's job in the statement
    that finishes the run."""

    fetch: TextualSelect
    task: str
    end: ColumnElement[Any]


_runs, _threads, _chunks = server_runs.c, server_threads.c, server_run_events.c


def _row_values(table: Table, names: Sequence[str]) -> dict[str, Any]:
    """A whole row's values, each column bound from ``p_<column>``."""
    return {name: bindparam(f"p_{name}", type_=table.c[name].type) for name in names}


def _insert_row(table: Table, names: Sequence[str]) -> Any:
    """An INSERT of a whole row, each column bound from ``p_<column>``."""
    return insert(table).values(_row_values(table, names))


def _row_params(row: ThreadRow | RunRow) -> dict[str, Any]:
    return {f"p_{name}": getattr(row, name) for name in type(row).__slots__}


def _claim_statement(run_id: ColumnElement[Any]) -> ReturningUpdate[Any]:
    """Mark the run ``run_id`` ``running`` (if it is active) and answer it with the instance its thread is
    bound to.

    The thread is found through the run's id, not by correlating with the updated row: SQLite renders
    RETURNING columns without their table, subqueries included, so ``threads.thread_id =
    runs.thread_id`` became ``thread_id = thread_id`` (always true) and every run got the first thread's
    journey. Each reference here resolves to its own FROM, qualified or not."""
    thread_of_run = select(_runs.thread_id).where(_runs.run_id == run_id).correlate(None).scalar_subquery()
    bound = (
        select(_threads.instance_id)
        .where(_threads.thread_id == thread_of_run)
        .scalar_subquery()
        .label("bound_instance")
    )
    return (
        update(server_runs)
        .where(_runs.run_id == run_id, _runs.status.in_(ACTIVE))
        .values(
            status="running",
            attempts=_runs.attempts + 1,
            updated_at=bindparam("claimed_at", type_=_runs.updated_at.type),
        )
        .returning(*server_runs.c, bound)
    )


def _insert_run_with_job(defer: Executable) -> Executable:
    """A run's INSERT whose ``job_id`` is the job ``defer`` writes in the same statement; answers it."""
    job = defer.cte("job")  # type: ignore[attr-defined]
    names = [name for name in RunRow.__slots__ if name != "job_id"]
    values = _row_values(server_runs, names)
    return (
        insert(server_runs).from_select([*names, "job_id"], select(*values.values(), job.c.id)).returning(_runs.job_id)
    )


_FETCHED = "fetched_"  # the prefix of a fetched job's columns beside its claimed run's


# The claim's transaction commits without waiting for its WAL to reach the disk (``synchronous_commit`` off for
# that transaction alone, set by the statement itself: one round trip still). Nothing outside the database acts on
# a claim before the run's next durable commit (the instance's registration, a step's completion), which flushes
# the claim's WAL with its own; a PostgreSQL crash before that loses the claim, and the job is taken again as
# after a worker's crash. Spares each journey a disk sync (2.6-3.2 ms on this VM's disk) and its CPU.
_COMMIT_UNSYNCED = func.set_config("synchronous_commit", "off", true()).label("commit_unsynced")


def _claim_with_fetch(fetch: TextualSelect, task: str) -> Select[Any]:
    """``fetch`` (a queue's next job, one row) with the claim of its run when the job is ``task``'s: one
    statement, committed unsynced (:data:`_COMMIT_UNSYNCED`). The job's columns are named ``fetched_<column>``;
    the claimed run's as :data:`CLAIM` answers them (NULL when the job is another task's, or its run has ended)."""
    job = fetch.cte("job")
    run_of_job = select(job.c.args["run_id"].astext).where(job.c.task_name == task).scalar_subquery()
    claimed = _claim_statement(run_of_job).cte("claimed")
    jobs = [column.label(f"{_FETCHED}{column.name}") for column in job.c]
    return select(*jobs, *claimed.c, _COMMIT_UNSYNCED).select_from(job.outerjoin(claimed, true()))


def _run_id_notice(written: CTE) -> ColumnElement[str]:
    """A changed run's notice: its id (a waiter then reads what changed)."""
    return written.c.run_id


def _finished_notice(written: CTE) -> ColumnElement[str]:
    """A finished run's notice: its id, then its whole row as JSON (:func:`split_notice`), which spares each
    waiter in another process reading the run back; the id alone when the row would not fit a notice."""
    whole = written.c.run_id + _NOTICE_SEP + func.to_jsonb(written.table_valued()).cast(Text)
    # Built once, in a FROM of its own that OFFSET keeps PostgreSQL from inlining: written twice in the CASE, the
    # row's JSON was built twice (once to measure it), about 50 us of the database's CPU per finished run.
    built = select(whole.label("whole")).offset(0).correlate(written).subquery("notice")
    fitting = case((func.octet_length(built.c.whole) < NOTICE_LIMIT, built.c.whole), else_=written.c.run_id)
    return select(fitting).scalar_subquery()


def thread_key(thread_id: str) -> str:
    """What a run created on the thread is noticed as (and its waiters watch): a stream of the thread's runs,
    in any process, wakes to serve it (see :func:`split_notice`)."""
    return _THREAD_KEY + thread_id


def state_key(thread_id: str) -> str:
    """What an update of the thread's state (``threads.update_state``) is noticed as: the thread's streams
    in ``state_update`` mode watch it, in any process."""
    return _STATE_KEY + thread_id


def _cancels_notice(written: CTE) -> ColumnElement[str]:
    return literal(CANCELS_KEY)


def _state_notice(written: CTE) -> ColumnElement[str]:
    return literal(_STATE_KEY) + written.c.thread_id


def _thread_notice(written: CTE) -> ColumnElement[str]:
    """The notice of a run created on an existing thread: the thread's :func:`thread_key`."""
    return literal(_THREAD_KEY) + written.c.thread_id


def split_notice(payload: str) -> tuple[str, str | None]:
    """A run notice's run id, and the finished run's row it carries (None: read the run to see what changed)."""
    run_id, _, finished = payload.partition(_NOTICE_SEP)
    return run_id, finished or None


_TIMES = ("created_at", "updated_at", "cancel_requested_at")  # a run row's timestamps: ISO text in its JSON


CLAIM = _claim_statement(bindparam("claimed_run", type_=_runs.run_id.type))
# A new thread inserted by its first run's statement: bound from ``t_<column>`` (the run's are ``p_<column>``).
_INSERT_NEW_THREAD = insert(server_threads).values(
    {name: bindparam(f"t_{name}", type_=server_threads.c[name].type) for name in ThreadRow.__slots__}
)
_INSERT_RUN = _insert_row(server_runs, RunRow.__slots__)
_GET_THREAD = select(server_threads).where(_threads.thread_id == bindparam("p_thread_id"))
# A thread's metadata read under its row's lock (PostgreSQL; SQLite's transactions take turns on the saver's
# connection), so merges made at once each merge into the others'.
_THREAD_METADATA_LOCKED = (
    select(_threads.metadata, _threads.ttl_strategy, _threads.ttl_seconds)
    .where(_threads.thread_id == bindparam("p_thread_id"))
    .with_for_update()
)
# A thread bound to another instance is refused, with the statement (and the instance's registration it rides on):
# its created_at is made NULL, which its NOT NULL constraint refuses (see bound_elsewhere), on PostgreSQL after the
# other bind's commit too (an UPDATE waiting for a row evaluates its SET again on the row as committed). Two attempts
# of one start run (its job taken again while its first worker lived on) so start one journey, not two. So is the bind
# of a run's attempt (``p_by_run``) once the run has ended: an attempt going on after the other ended the run starts
# nothing, wherever it was held up since its claim.
_bound = bindparam("p_instance_id", type_=_threads.instance_id.type)
_by_run = server_runs.alias("by_run")
_RUN_ENDED = (
    select(_by_run.c.run_id)
    .where(_by_run.c.run_id == bindparam("p_by_run", type_=_runs.run_id.type), _by_run.c.status.not_in(ACTIVE))
    .exists()
)
_BIND = (
    update(server_threads)
    .where(_threads.thread_id == bindparam("p_thread_id"))
    .values(
        assistant_id=bindparam("p_assistant_id"),
        instance_id=_bound,
        updated_at=bindparam("p_now"),
        created_at=case(
            (
                and_(or_(_threads.instance_id.is_(None), _threads.instance_id == _bound), not_(_RUN_ENDED)),
                _threads.created_at,
            )
        ),
    )
)
_GET_RUN = select(server_runs).where(_runs.run_id == bindparam("p_run_id"))
_status_wanted = bindparam("p_status", type_=_runs.status.type)
_LIST_RUNS = (
    select(server_runs)
    .where(_runs.thread_id == bindparam("p_thread_id"), or_(_status_wanted.is_(None), _runs.status == _status_wanted))
    .order_by(_runs.created_at.desc())
    .limit(bindparam("p_limit"))
    .offset(bindparam("p_offset"))
)
_active = (_runs.thread_id == bindparam("p_thread_id"), _runs.status.in_(ACTIVE))
_NEXT_PENDING = select(server_runs).where(*_active).order_by(_runs.created_at, _runs.run_id).limit(1)
_UNFINISHED = select(server_runs).where(_runs.status.in_(ACTIVE))
_RUNNING_CANCELLED = select(server_runs).where(_runs.status == "running", _runs.cancel_requested_at.isnot(None))
# The active runs of the threads driving a journey instance (bound to it, or named by it), oldest first.
_ACTIVE_OF_INSTANCE = (
    select(server_runs)
    .where(
        _runs.status.in_(ACTIVE),
        or_(
            _runs.thread_id.in_(select(_threads.thread_id).where(_threads.instance_id == bindparam("p_instance_id"))),
            _runs.thread_id == bindparam("p_instance_id"),
        ),
    )
    .order_by(_runs.created_at, _runs.run_id)
)
_ACTIVE_COUNT = select(func.count().label("n")).select_from(server_runs).where(*_active)
# The thread's active runs, its row locked (PostgreSQL) for the rest of the transaction (no row: no thread):
# run creation and thread deletion are serialised per thread, so two "reject" runs cannot both find the
# thread idle, and a run is never queued on a thread being deleted nor left behind by its delete.
_ACTIVE_LOCKED = (
    select(_ACTIVE_COUNT.scalar_subquery().label("n"))
    .where(_threads.thread_id == bindparam("p_thread_id"))
    .with_for_update(of=server_threads)
)
# The next run's ordinal on a thread (no row: no thread); on PostgreSQL it also locks the thread's row, and on
# SQLite, taken first, the write lock: creations on one thread are serialised before they count its runs. A run
# created is activity on its thread: its updated_at moves, as the Agent Server's (threads.search sorts by it).
_COUNT_RUN = (
    update(server_threads)
    .where(_threads.thread_id == bindparam("p_thread_id"))
    .values(runs_created=_threads.runs_created + 1, updated_at=bindparam("p_now"))
    .returning(_threads.runs_created, _threads.thread_id)
)
_REQUEST_CANCEL = (
    update(server_runs)
    .where(_runs.run_id == bindparam("p_run_id"), _runs.status.in_(ACTIVE))
    .values(cancel_requested_at=bindparam("p_now"))
    .returning(_runs.run_id)
)
_SET_BASE_CHECKPOINT = (
    update(server_runs).where(_runs.run_id == bindparam("p_run_id")).values(base_checkpoint=bindparam("p_checkpoint"))
)
_FINISH = (
    update(server_runs)
    .where(_runs.run_id == bindparam("p_run_id"), _runs.status.in_(ACTIVE))
    .values(
        status=bindparam("p_status"),
        error=bindparam("p_error", type_=_runs.error.type),
        output=bindparam("p_output", type_=_runs.output.type),
        updated_at=bindparam("p_now"),
    )
    .returning(*server_runs.c)
)
# So is a run finished (written with its finish: on PostgreSQL one statement, see Backend.write).
_FINISH_TOUCHES_THREAD = (
    update(server_threads)
    .where(_threads.thread_id == select(_runs.thread_id).where(_runs.run_id == bindparam("p_run_id")).scalar_subquery())
    .values(updated_at=bindparam("p_now"))
)
_APPEND_CHUNK = (
    insert(server_run_events)
    .values(
        run_id=bindparam("p_run_id"),
        seq=bindparam("p_seq"),
        event=bindparam("p_event"),
        data=bindparam("p_data", type_=_chunks.data.type),
    )
    .returning(_chunks.run_id)
)
_LAST_SEQ = select(func.coalesce(func.max(_chunks.seq), 0).label("seq")).where(_chunks.run_id == bindparam("p_run_id"))
_CHUNKS_AFTER = (
    select(_chunks.seq, _chunks.event, _chunks.data)
    .where(_chunks.run_id == bindparam("p_run_id"), _chunks.seq > bindparam("p_seq"))
    .order_by(_chunks.seq)
)


def _owner(owner: Owner | str | None) -> Owner | None:
    return Owner(owner) if isinstance(owner, str) else owner


def _visible(viewer: Viewer | None) -> Any:
    return visible_to(viewer, _threads.owner, _threads.tenant, _threads.shared_group)


# What a run keeps of its caller's data: sealed (encrypted) at rest when the store has a key.
_SEALED = ("input", "command", "output")
_DELETE_CHUNKS = delete(server_run_events).where(_chunks.run_id == bindparam("p_run_id"))
_DELETE_RUN = delete(server_runs).where(_runs.run_id == bindparam("p_run_id"))
_THREADS_OF_ASSISTANT = select(_runs.thread_id).where(_runs.assistant_id == bindparam("p_assistant_id")).distinct()
_THREAD_RUN_IDS = select(_runs.run_id).where(_runs.thread_id == bindparam("p_thread_id"))
_DELETE_THREAD_CHUNKS = delete(server_run_events).where(_chunks.run_id.in_(_THREAD_RUN_IDS))
_DELETE_THREAD_RUNS = delete(server_runs).where(_runs.thread_id == bindparam("p_thread_id"))
_DELETE_THREAD = (
    delete(server_threads).where(_threads.thread_id == bindparam("p_thread_id")).returning(_threads.thread_id)
)
_STATE_UPDATED = (
    update(server_threads)
    .where(_threads.thread_id == bindparam("p_thread_id"))
    .values(updated_at=bindparam("p_now"))
    .returning(_threads.thread_id)
)
_SET_THREAD_METADATA = (
    update(server_threads)
    .where(_threads.thread_id == bindparam("p_thread_id"))
    .values(
        metadata=bindparam("p_metadata", type_=_threads.metadata.type),
        updated_at=bindparam("p_now"),
        ttl_strategy=bindparam("p_ttl_strategy", type_=_threads.ttl_strategy.type),
        ttl_seconds=bindparam("p_ttl_seconds", type_=_threads.ttl_seconds.type),
        expires_at=bindparam("p_expires_at", type_=_threads.expires_at.type),
    )
)
# The threads whose time-to-live may have passed by p_now, earliest first (ix_server_threads_expires).
_DUE_THREADS = (
    select(server_threads)
    .where(_threads.expires_at <= bindparam("p_now", type_=_threads.expires_at.type))
    .order_by(_threads.expires_at, _threads.thread_id)
    .limit(bindparam("p_limit"))
)
_POSTPONE_EXPIRY = (
    update(server_threads)
    .where(_threads.thread_id == bindparam("p_thread_id"))
    .values(expires_at=bindparam("p_expires_at", type_=_threads.expires_at.type))
)


class RunStore:
    """The threads, runs and stream chunks of the server, on the store's backend."""

    def __init__(
        self,
        backend: Backend,
        clock: Clock,
        sealer: Sealer | None = None,
        *,
        jobs: QueueJobs | None = None,
        thread_ttl: ThreadTTL | None = None,
    ) -> None:
        """``jobs``: in a worker, how runs are taken with their queue's jobs (see :meth:`take_job`).
        ``thread_ttl``: the time-to-live of a thread created without one of its own (None: none)."""
        self.default_ttl = thread_ttl
        self._backend = backend
        self._clock = clock
        self._sealer = sealer or Sealer(None)
        # Finishing a run and appending a chunk wake waiters in every process (PostgreSQL NOTIFY).
        self._finish = backend.notifying(_FINISH, RUN_CHANNEL, _finished_notice)
        self._take_job: Select[Any] | None = None
        self._finish_ending_job: Executable | None = None
        if jobs is not None:  # a queue on PostgreSQL: the finish is a SELECT (the NOTIFY), its job's end a column
            self._take_job = _claim_with_fetch(jobs.fetch, jobs.task)
            self._finish_ending_job = cast(Select[Any], self._finish).add_columns(jobs.end)
        self._append_chunk = backend.notifying(_APPEND_CHUNK, RUN_CHANNEL, _run_id_notice)
        # So does a run created on an existing thread: a stream of the thread in another process serves it at once.
        self._count_run = backend.notifying(_COUNT_RUN, RUN_CHANNEL, _thread_notice)
        # And a thread's delete: a stream of it in another process ends at once; and an update of its state.
        self._delete_thread = backend.notifying(_DELETE_THREAD, RUN_CHANNEL, _thread_notice)
        self._state_updated = backend.notifying(_STATE_UPDATED, RUN_CHANNEL, _state_notice)
        self._request_cancel = backend.notifying(_REQUEST_CANCEL, CANCEL_CHANNEL, _cancels_notice)
        self._with_job: dict[Executable, Executable] = {}  # a run's INSERT per queue's defer (built once)
        # A thread named by its caller is created by one statement that cannot fail on a duplicate id: two
        # requests naming one new id at once both learn which of them created it (no read-then-insert).
        self._insert_thread_if_absent = (
            backend.insert(server_threads)
            .values(_row_values(server_threads, ThreadRow.__slots__))
            .on_conflict_do_nothing(index_elements=[_threads.thread_id])
            .returning(_threads.thread_id)
        )

    def _run(self, row: Row) -> RunRow:
        values = {name: row[name] for name in RunRow.__slots__}
        values.update({name: self._sealer.open(values[name]) for name in _SEALED})
        if _LEGACY_GROUPS in (values["metadata"] or {}):  # stored before its groups moved to its options
            metadata = dict(values["metadata"])
            values["options"] = {**(values["options"] or {}), GROUPS: metadata.pop(_LEGACY_GROUPS)}
            values["metadata"] = metadata
        return RunRow(**values)

    # --- threads ------------------------------------------------------------------------------------

    async def create_thread(
        self,
        thread_id: str | None,
        metadata: Mapping[str, Any],
        owner: Owner | str | None,
        *,
        if_exists: str = "raise",
        ttl: ThreadTTL | None = None,
        default_ttl: bool = True,
    ) -> ThreadRow:
        """A new thread (``thread_id`` None: a new id), with ``ttl`` (None: the store's default, if any, unless
        ``default_ttl`` is False). An id that is taken: ``if_exists`` "do_nothing" answers the thread that has it
        (whoever created it, even a moment ago), "raise" refuses it."""
        if ttl is None and not default_ttl:
            ttl = NO_TTL
        thread = self._new_thread(thread_id or str(uuid.uuid4()), metadata, owner, ttl)
        while True:
            if await self._backend.write([self._insert_thread_if_absent], _row_params(thread)):
                return thread
            if if_exists != "do_nothing":
                raise ThreadExistsError(f"thread {thread.thread_id!r} already exists", thread_id=thread.thread_id)
            existing = await self.get_thread(thread.thread_id)
            if existing is not None:  # else deleted since the insert found it: insert again
                return existing

    def _new_thread(
        self, thread_id: str, metadata: Mapping[str, Any], owner: Owner | str | None, ttl: ThreadTTL | None = None
    ) -> ThreadRow:
        now = self._clock.now()
        found = _owner(owner)
        ttl = None if ttl is NO_TTL else ttl or self.default_ttl
        return ThreadRow(
            thread_id,
            None,
            None,
            found.principal if found else None,
            dict(metadata),
            now,
            now,
            found.tenant if found else None,
            found.shared_group if found else None,
            ttl_strategy=ttl.strategy if ttl else None,
            ttl_seconds=ttl.seconds if ttl else None,
            expires_at=ttl.expiry(now) if ttl else None,
        )

    async def get_thread(self, thread_id: str, *, viewer: Viewer | None = None) -> ThreadRow | None:
        """The thread, or None when there is none ``viewer`` may see (None: no owner filter)."""
        if viewer is None:
            found = await self._backend.read(_GET_THREAD, {"p_thread_id": thread_id})
        else:
            query = select(server_threads).where(_threads.thread_id == thread_id, _visible(viewer))
            found = await self._backend.query(query)
        return ThreadRow(**found[0]) if found else None

    async def search_threads(
        self,
        metadata: Mapping[str, Any] | None,
        limit: int,
        offset: int,
        ids: Sequence[str] | None = None,
        *,
        viewer: Viewer | None = None,
        sort_by: str = "created_at",
        descending: bool = True,
    ) -> list[ThreadRow]:
        """One page of the threads ``viewer`` may see whose metadata holds ``metadata`` (and among ``ids``),
        in ``sort_by`` order (thread_id, created_at or updated_at; ties by thread id), filtered and paged in
        the query."""
        holds, query = self._threads_where(metadata, ids, viewer)
        key = _threads.thread_id.collate("C") if self._backend.postgres else _threads.thread_id  # Python's order
        order = key if sort_by == "thread_id" else _threads[sort_by]
        query = query.order_by(order.desc() if descending else order.asc(), key.desc() if descending else key)
        if holds.exact:
            return [ThreadRow(**row) for row in await self._backend.query(query.limit(limit).offset(offset))]
        rows = [ThreadRow(**row) for row in await self._backend.query(query)]
        return holds.page(rows, lambda r: shown_metadata(r.metadata, r.assistant_id, r.instance_id), limit, offset)

    async def count_threads(
        self, metadata: Mapping[str, Any] | None, ids: Sequence[str] | None = None, *, viewer: Viewer | None = None
    ) -> int:
        """How many threads :meth:`search_threads` would find, counted in the query."""
        holds, query = self._threads_where(metadata, ids, viewer)
        return await count_holding(
            self._backend, holds, query, lambda r: shown_metadata(r["metadata"], r["assistant_id"], r["instance_id"])
        )

    def _threads_where(
        self, metadata: Mapping[str, Any] | None, ids: Sequence[str] | None, viewer: Viewer | None
    ) -> tuple[JsonHolds, Select[Any]]:
        """The threads whose metadata as shown (:func:`shown_metadata`) holds ``metadata``."""
        postgres = self._backend.postgres
        wanted = dict(metadata or {})
        bound = {key: wanted.pop(key) for key in list(wanted) if key in BOUND_METADATA}
        holds = JsonHolds.of(_threads.metadata, wanted, postgres=postgres)
        conditions = list(holds.conditions)
        for key, value in bound.items():  # the thread's own key, else its runs'
            own = JsonHolds.of(_threads.metadata, {key: value}, postgres=postgres)
            if not own.exact:  # an object or array on SQLite: Python decides (no binding's value is one)
                wanted[key] = value
            has = (
                func.jsonb_exists(_threads.metadata, key)
                if postgres
                else func.json_type(_threads.metadata, f'$."{key}"').is_not(None)
            )
            conditions.append(or_(and_(has, *own.conditions), and_(not_(has), _bound_metadata(key, value))))
        holds = JsonHolds(wanted, tuple(conditions), holds.exact and all(k not in wanted for k in bound), holds.name)
        query = select(server_threads).where(_visible(viewer), *holds.conditions)
        if ids:
            query = query.where(_threads.thread_id.in_(list(ids)))
        return holds, query

    async def merge_thread_metadata(
        self, thread_id: str, metadata: Mapping[str, Any], ttl: ThreadTTL | None = None
    ) -> None:
        """Merge ``metadata`` into the thread's own, read in the same transaction (nothing for a deleted thread);
        with ``ttl``, that is its time-to-live from now on. Either way an update is activity: a thread with a
        time-to-live expires that long after it."""
        async with self._backend.transaction() as tx:
            found = await tx.execute(_THREAD_METADATA_LOCKED, {"p_thread_id": thread_id})
            if not found:
                return
            row = found[0]
            now = self._clock.now()
            if ttl is None and row["ttl_seconds"] is not None:
                ttl = ThreadTTL.of_seconds(row["ttl_seconds"], row["ttl_strategy"])
            values = {
                "p_thread_id": thread_id,
                "p_metadata": {**(row["metadata"] or {}), **metadata},
                "p_now": now,
                "p_ttl_strategy": ttl.strategy if ttl else None,
                "p_ttl_seconds": ttl.seconds if ttl else None,
                "p_expires_at": ttl.expiry(now) if ttl else None,
            }
            await tx.execute(_SET_THREAD_METADATA, values)

    async def due_threads(self, now: datetime, limit: int) -> list[ThreadRow]:
        """Up to ``limit`` threads whose time-to-live may have passed by ``now``, earliest first: each expired
        unless activity since its ``expires_at`` was set (a run) makes it later (see :meth:`postpone_expiry`)."""
        return [ThreadRow(**row) for row in await self._backend.read(_DUE_THREADS, {"p_now": now, "p_limit": limit})]

    async def postpone_expiry(self, thread_id: str, expires_at: datetime) -> None:
        """The thread expires at ``expires_at`` at the earliest: it was active since its expiry was set."""
        await self._backend.write([_POSTPONE_EXPIRY], {"p_thread_id": thread_id, "p_expires_at": expires_at})

    async def delete_thread(self, thread_id: str, *, runs: bool = True) -> None:
        """The thread and its crons (their timers cancelled), with its runs and their stream chunks. A thread
        with an active run is refused (:class:`ThreadBusyError`), checked with its row locked, so a run being
        created at the same moment either comes first (and the delete is refused) or finds no thread.

        ``runs`` False (a run's ``on_completion="delete"``, from that run itself): the runs stay, unchecked."""
        params = {"p_thread_id": thread_id}
        async with self._backend.transaction() as tx:
            if runs:
                active = await tx.execute(_ACTIVE_LOCKED, params)
                if active and active[0]["n"]:
                    raise ThreadBusyError(
                        f"thread {thread_id!r} has an active run; cancel it first", thread_id=thread_id
                    )
            statements: list[Executable] = [_DELETE_THREAD_CHUNKS, _DELETE_THREAD_RUNS] if runs else []
            for statement in (*statements, *DELETE_THREAD_CRONS, self._delete_thread):
                await tx.execute(statement, params)

    async def state_updated(self, thread_id: str) -> None:
        """Note that the thread's state was just updated (``threads.update_state``): its ``updated_at`` is now,
        and its streams watching :func:`state_key` in any process are woken."""
        await self._backend.write([self._state_updated], {"p_thread_id": thread_id, "p_now": self._clock.now()})

    async def bind(self, thread_id: str, assistant_id: str, instance_id: str) -> None:
        """Bind a thread to the journey instance its first run started (once; a later bind to another instance
        is refused: see :meth:`bound_elsewhere`)."""
        await self.commit(self.binding(thread_id, assistant_id, instance_id))

    def bound_elsewhere(self, error: BaseException) -> bool:
        """Whether ``error`` is a bind (:meth:`binding`) refused because the thread is bound to another instance, or
        because the run that bound it has ended meanwhile."""
        return self._backend.null_refused(error) == ("server_threads", "created_at")

    async def commit(self, statement: Statement) -> None:
        """Commit a statement this store made (:meth:`binding`) on its own."""
        await self._backend.write([statement[0]], statement[1])

    def binding(self, thread_id: str, assistant_id: str, instance_id: str, *, by: RunRow | None = None) -> Statement:
        """:meth:`bind` as statements and values, for a caller that commits it with a write of its own (the
        instance's registration: ``RunOptions.registered_with``). ``by``: the run whose attempt binds it; the bind is
        refused (:meth:`bound_elsewhere`) if that run has ended (another attempt of it ran it to its end)."""
        values = {
            "p_thread_id": thread_id,
            "p_assistant_id": assistant_id,
            "p_instance_id": instance_id,
            "p_now": self._clock.now(),
            "p_by_run": None if by is None else by.run_id,
        }
        return _BIND, values

    # --- runs ---------------------------------------------------------------------------------------

    async def create_run(
        self,
        *,
        thread_id: str | None,
        assistant_id: str,
        kind: str,
        input: Any,
        command: Any,
        stream_modes: Sequence[str],
        multitask_strategy: str,
        metadata: Mapping[str, Any],
        principal: Owner | str | None,
        enqueue: Enqueue | None = None,
        durability: str | None = None,
        options: Mapping[str, Any] | None = None,
        run_id: str | None = None,
        guard: Statement | None = None,
    ) -> RunRow:
        """Queue a run on ``thread_id``, or (None) on a new thread owned by ``principal``, created with it.

        ``enqueue`` (distributed mode) puts the run's job on the queue in the same transaction: the run and
        its job are committed together or not at all, so no run is left pending without a job. ``run_id``:
        the new run's id, chosen by a caller that watches for the run's end before it exists (else new).
        ``guard``: a write (and its values) run first in the run's transaction, which holds what asked for the
        run until it commits; answering no row, nothing is created (:class:`RunWithdrawnError`)."""
        if multitask_strategy not in STRATEGIES:
            raise UnsupportedMultitaskStrategyError(
                f"multitask_strategy {multitask_strategy!r} is not supported; use one of {', '.join(STRATEGIES)}"
            )
        owner = _owner(principal)
        new_thread = self._new_thread(str(uuid.uuid4()), {}, owner) if thread_id is None else None
        now = self._clock.now()
        run = RunRow(
            run_id=run_id or str(uuid.uuid4()),
            thread_id=new_thread.thread_id if new_thread else str(thread_id),
            assistant_id=assistant_id,
            status="pending",
            kind=kind,
            input=input,
            command=command,
            stream_modes=list(stream_modes),
            multitask_strategy=multitask_strategy,
            metadata=dict(metadata),
            principal=owner.principal if owner else None,
            base_checkpoint=None,
            attempts=0,
            error=None,
            created_at=now,
            updated_at=now,
            durability=durability,
            tenant=owner.tenant if owner else None,
            shared_group=owner.shared_group if owner else None,
            options=dict(options) if options else None,
            ordinal=1,
        )
        params = _row_params(run)
        params.update({f"p_{name}": self._sealer.seal(getattr(run, name)) for name in _SEALED})
        insert_run = _INSERT_RUN
        if enqueue is not None:  # the run's INSERT writes its job too
            insert_run = self._insert_with_job(enqueue.defer)
            params.update(enqueue.params(run))
        if new_thread is not None:
            # Made for this run, the thread is its graph's from the start (its metadata's graph_id, as the Agent
            # Server writes it): not only once the run starts, which a delayed or queued run may not for long.
            new_thread = dataclasses.replace(new_thread, assistant_id=run.graph_id, runs_created=1)
            params.update({f"t_{name}": getattr(new_thread, name) for name in ThreadRow.__slots__})
        if new_thread is not None and guard is None:  # nothing can be queued on it yet: one statement (PostgreSQL)
            written = await self._backend.write([insert_run, _INSERT_NEW_THREAD], params)
        else:
            async with self._backend.transaction() as tx:
                if new_thread is not None:
                    await tx.execute(_INSERT_NEW_THREAD, params)
                else:  # the thread's row is locked before the guard's: a thread's delete locks them in that order
                    ordinal = await self._queueable(tx, str(thread_id), multitask_strategy, now)
                    run = dataclasses.replace(run, ordinal=ordinal)
                    params["p_ordinal"] = ordinal
                if guard is not None and not await tx.execute(*guard):
                    raise RunWithdrawnError(run_id=run.run_id)
                written = await tx.execute(insert_run, params)
        return dataclasses.replace(run, job_id=written[0]["job_id"]) if enqueue is not None else run

    async def _queueable(self, tx: Transaction, thread_id: str, multitask_strategy: str, now: datetime) -> int:
        """In the run's transaction: the thread exists (locked until the run commits) and may take the run; the
        run's ordinal among the runs ever created on it; the thread was last active ``now`` (the run's creation)."""
        counted = await tx.execute(self._count_run, {"p_thread_id": thread_id, "p_now": now})
        if not counted:  # deleted (a cron's firing racing threads.delete): no run on a thread that is gone
            raise ThreadNotFoundError(f"no thread {thread_id!r}", thread_id=thread_id)
        active = await tx.execute(_ACTIVE_LOCKED, {"p_thread_id": thread_id})
        if multitask_strategy == "reject" and active[0]["n"]:
            raise ThreadBusyError(
                f"thread {thread_id!r} already has a pending or running run; wait for it, or create the "
                "run with multitask_strategy='enqueue'",
                thread_id=thread_id,
            )
        return int(counted[0]["runs_created"])

    def _insert_with_job(self, defer: Executable) -> Executable:
        found = self._with_job.get(defer)
        if found is None:
            found = self._with_job[defer] = _insert_run_with_job(defer)
        return found

    async def get_run(self, run_id: str) -> RunRow | None:
        found = await self._backend.read(_GET_RUN, {"p_run_id": run_id})
        return self._run(found[0]) if found else None

    def noticed_run(self, finished: str) -> RunRow:
        """The finished run whose row a notice carried (see :func:`split_notice`), as :meth:`get_run` reads it."""
        row = json.loads(finished)
        for name in _TIMES:
            if row[name] is not None:
                row[name] = datetime.fromisoformat(row[name]).astimezone(UTC)
        return self._run(row)

    async def list_runs(
        self, thread_id: str, *, limit: int = 10, offset: int = 0, status: str | None = None
    ) -> list[RunRow]:
        """The thread's runs, newest first (those with ``status`` only, when given), one page."""
        params = {"p_thread_id": thread_id, "p_limit": limit, "p_offset": offset, "p_status": status}
        return [self._run(row) for row in await self._backend.read(_LIST_RUNS, params)]

    async def threads_of_assistant(self, assistant_id: str) -> list[str]:
        """The threads with a run of the assistant."""
        rows = await self._backend.read(_THREADS_OF_ASSISTANT, {"p_assistant_id": assistant_id})
        return [str(row["thread_id"]) for row in rows]

    async def delete_run(self, run_id: str) -> None:
        """A run and its stream chunks."""
        await self._backend.write([_DELETE_CHUNKS, _DELETE_RUN], {"p_run_id": run_id})

    async def next_pending(self, thread_id: str) -> RunRow | None:
        found = await self._backend.read(_NEXT_PENDING, {"p_thread_id": thread_id})
        return self._run(found[0]) if found else None

    async def unfinished(self) -> list[RunRow]:
        return [self._run(row) for row in await self._backend.read(_UNFINISHED)]

    async def running_cancelled(self) -> list[RunRow]:
        """The running runs whose cancel was recorded (:meth:`request_cancel`) and that have not ended yet."""
        return [self._run(row) for row in await self._backend.read(_RUNNING_CANCELLED)]

    async def active_of_instance(self, instance_id: str) -> list[RunRow]:
        """The pending and running runs of the threads that drive the journey ``instance_id``, oldest first."""
        return [self._run(row) for row in await self._backend.read(_ACTIVE_OF_INSTANCE, {"p_instance_id": instance_id})]

    async def active_count(self, thread_id: str) -> int:
        found = await self._backend.read(_ACTIVE_COUNT, {"p_thread_id": thread_id})
        return int(found[0]["n"])

    async def last_run(self, thread_id: str) -> RunRow | None:
        runs = await self.list_runs(thread_id, limit=1)
        return runs[0] if runs else None

    async def claim(self, run_id: str) -> tuple[RunRow, str | None] | None:
        """Take a pending run (or one whose executor died: the caller's queue or lock guarantees it is the
        only executor), with the journey instance its thread is bound to. None when the run is finished or
        cancelled."""
        found = await self._backend.write([CLAIM], {"claimed_run": run_id, "claimed_at": self._clock.now()})
        if not found:
            return None
        return self._run(found[0]), found[0]["bound_instance"]

    async def take_job(self, params: Mapping[str, Any]) -> tuple[dict[str, Any], tuple[RunRow, str | None] | None]:
        """The queue's next job, taken by its ``fetch`` bound from ``params`` (its columns; all None when no job
        is due) and, for a run's job, the run claimed in the same statement as :meth:`claim` claims it (None:
        another task's job, or a run that has ended). Only with ``jobs`` (see the constructor)."""
        assert self._take_job is not None, "a run store made without jobs takes no job"
        row = (await self._backend.write([self._take_job], {**params, "claimed_at": self._clock.now()}))[0]
        job = {name.removeprefix(_FETCHED): value for name, value in row.items() if name.startswith(_FETCHED)}
        return job, ((self._run(row), row["bound_instance"]) if row["run_id"] is not None else None)

    async def request_cancel(self, run_id: str) -> None:
        """Remember that a cancel reached an executing run: if its job is retried (its worker died before it
        stopped the run), the retry ends it interrupted instead of running it. On PostgreSQL it is noticed on
        :data:`CANCEL_CHANNEL` as it commits (an embedded server stops the run it executes)."""
        await self._backend.write([self._request_cancel], {"p_run_id": run_id, "p_now": self._clock.now()})

    async def set_base_checkpoint(self, run_id: str, checkpoint_id: str | None) -> None:
        """Note the checkpoint a run started from or resumes (``NO_STATE``: its thread had none); until it
        is noted the run has changed nothing."""
        await self._backend.write([_SET_BASE_CHECKPOINT], {"p_run_id": run_id, "p_checkpoint": checkpoint_id})

    async def finish(
        self,
        run_id: str,
        status: str,
        error: Mapping[str, Any] | None = None,
        output: Any = None,
        *,
        job_id: int | None = None,
    ) -> RunRow | None:
        """Give an active run its final status (and output); the finished run, or None when it had finished
        already. ``job_id``: the queue job executing it (taken by :meth:`take_job`), ended as succeeded in the
        same statement when the run is finished by it (not when it had finished already)."""
        values = {
            "p_run_id": run_id,
            "p_status": status,
            "p_error": dict(error) if error else None,
            "p_output": self._sealer.seal(output),
            "p_now": self._clock.now(),
        }
        statement = self._finish
        if job_id is not None:
            assert self._finish_ending_job is not None, "a run store made without jobs ends no job"
            statement, values["p_job_id"] = self._finish_ending_job, job_id
        found = await self._backend.write([statement, _FINISH_TOUCHES_THREAD], values)
        return self._run(found[0]) if found else None

    # --- stream chunks ------------------------------------------------------------------------------

    async def append_event(self, run_id: str, seq: int, event: str, data: Any) -> None:
        values = {"p_run_id": run_id, "p_seq": seq, "p_event": event, "p_data": self._sealer.seal(data)}
        await self._backend.write([self._append_chunk], values)

    async def last_seq(self, run_id: str) -> int:
        found = await self._backend.read(_LAST_SEQ, {"p_run_id": run_id})
        return int(found[0]["seq"])

    async def events_after(self, run_id: str, seq: int) -> list[tuple[int, str, Any]]:
        rows = await self._backend.read(_CHUNKS_AFTER, {"p_run_id": run_id, "p_seq": seq})
        return [(int(row["seq"]), str(row["event"]), self._sealer.open(row["data"])) for row in rows]

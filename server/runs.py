"""Threads and runs as rows: the records behind the Agent Server API subset.

A run is created ``pending`` and claimed by one executor at a time (an atomic UPDATE); ``multitask_strategy``
``reject`` refuses a run while the thread has one pending or running, ``enqueue`` queues it behind them.
Stream chunks of runs created for streaming are rows too, so a client can read them from any API process
while a worker in another process produces them. On PostgreSQL, finishing a run or appending a chunk also
notifies ``RUN_CHANNEL`` with the run id, in the same transaction, so waiting requests in any process wake
when the change is committed (see :mod:`server.watch`).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import psycopg
from psycopg_pool import AsyncConnectionPool
from sqlalchemy import Executable, bindparam, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.dml import ReturningInsert, ReturningUpdate

from checkpoints.clock import Clock
from checkpoints.tables import server_run_events, server_runs, server_threads
from server.pg_runs import PgRunStatements
from server.problems import ApiError

ACTIVE = ("pending", "running")
TERMINAL = ("success", "error", "interrupted", "timeout")
STRATEGIES = ("reject", "enqueue")
RUN_CHANNEL = "journeys_runs"  # NOTIFY channel: the payload is the id of a run that finished or streamed


@dataclass(frozen=True, slots=True)
class ThreadRow:
    """A thread of the Agent Server API as stored: its owner, metadata and bound journey instance."""

    thread_id: str
    assistant_id: str | None
    instance_id: str | None
    owner: str | None
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class RunRow:
    """A run as stored: its thread, assistant, input or command, and status."""

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
            },
            "error": self.error,
        }


def _claim_statement() -> ReturningUpdate[Any]:
    """Mark a run ``running`` (if it is active) and answer it with the instance its thread is bound to.

    The thread is found through the run's id, not by correlating with the updated row: SQLite renders
    RETURNING columns without their table, subqueries included, so ``threads.thread_id =
    runs.thread_id`` became ``thread_id = thread_id`` (always true) and every run got the first thread's
    journey. Each reference here resolves to its own FROM, qualified or not."""
    runs = server_runs.c
    run_id = bindparam("claimed_run", type_=runs.run_id.type, required=False)  # values come per call
    thread_of_run = select(runs.thread_id).where(runs.run_id == run_id).correlate(None).scalar_subquery()
    bound = (
        select(server_threads.c.instance_id)
        .where(server_threads.c.thread_id == thread_of_run)
        .scalar_subquery()
        .label("bound_instance")
    )
    return (
        update(server_runs)
        .where(runs.run_id == run_id, runs.status.in_(ACTIVE))
        .values(
            status="running",
            attempts=runs.attempts + 1,
            updated_at=bindparam("claimed_at", type_=runs.updated_at.type, required=False),
        )
        .returning(*server_runs.c, bound)
    )


CLAIM = _claim_statement()


# Puts a run's job on the queue inside the transaction that creates the run (given its psycopg
# connection); answers the job's id.
Enqueue = Callable[[psycopg.AsyncConnection[Any], RunRow], Awaitable[int | None]]


class RunStore:
    """The threads and runs of the Agent Server API: created, claimed, finished and listed."""

    def __init__(self, engine: AsyncEngine, clock: Clock, *, pg_pool: AsyncConnectionPool[Any] | None = None) -> None:
        self._engine = engine
        self._clock = clock
        self._postgres = engine.dialect.name == "postgresql"
        # PostgreSQL with the store's psycopg pool: a run's own statements skip SQLAlchemy (server.pg_runs).
        self._pg = (
            PgRunStatements(pg_pool, RUN_CHANNEL, engine.dialect) if pg_pool is not None and self._postgres else None
        )
        # A lone statement is atomic on its own: on PostgreSQL it runs in autocommit, one round trip instead
        # of three (BEGIN, the statement, COMMIT or ROLLBACK). Runs are hot: every one is written and read a
        # few times on its way through the queue.
        self._single = engine.execution_options(isolation_level="AUTOCOMMIT") if self._postgres else engine

    def _read(self) -> AsyncConnection:
        return self._single.connect()

    def _write_one(self) -> AbstractAsyncContextManager[AsyncConnection]:
        return self._single.connect() if self._postgres else self._engine.begin()

    # --- threads ------------------------------------------------------------------------------------

    async def create_thread(
        self, thread_id: str | None, metadata: Mapping[str, Any], owner: str | None, *, if_exists: str = "raise"
    ) -> ThreadRow:
        existing = await self.get_thread(thread_id) if thread_id else None
        thread_id = thread_id or str(uuid.uuid4())
        if existing is not None:
            if if_exists == "do_nothing":
                return existing
            raise ApiError(409, "ThreadExists", f"thread {thread_id!r} already exists", thread_id=thread_id)
        thread = self._new_thread(thread_id, metadata, owner)
        async with self._write_one() as conn:
            await conn.execute(insert(server_threads).values(**_thread_values(thread)))
        return thread

    def _new_thread(self, thread_id: str, metadata: Mapping[str, Any], owner: str | None) -> ThreadRow:
        now = self._clock.now()
        return ThreadRow(thread_id, None, None, owner, dict(metadata), now, now)

    async def get_thread(self, thread_id: str) -> ThreadRow | None:
        async with self._read() as conn:
            row = (await conn.execute(select(server_threads).where(server_threads.c.thread_id == thread_id))).first()
        return ThreadRow(**row._mapping) if row else None

    async def search_threads(
        self, metadata: Mapping[str, Any] | None, limit: int, offset: int, ids: Sequence[str] | None = None
    ) -> list[ThreadRow]:
        query = select(server_threads).order_by(server_threads.c.created_at.desc())
        if ids:
            query = query.where(server_threads.c.thread_id.in_(list(ids)))
        async with self._read() as conn:
            rows = [ThreadRow(**r._mapping) for r in (await conn.execute(query)).all()]
        if metadata:
            rows = [r for r in rows if all(r.metadata.get(k) == v for k, v in metadata.items())]
        return rows[offset : offset + limit]

    async def bind(self, thread_id: str, assistant_id: str, instance_id: str) -> None:
        """Bind a thread to the journey instance its first run started (once; later binds must agree)."""
        if self._pg is not None:
            await self._pg.bind(thread_id, assistant_id, instance_id, self._clock.now())
            return
        async with self._write_one() as conn:
            await conn.execute(
                update(server_threads)
                .where(server_threads.c.thread_id == thread_id)
                .values(assistant_id=assistant_id, instance_id=instance_id, updated_at=self._clock.now())
            )

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
        principal: str | None,
        enqueue: Enqueue | None = None,
        durability: str | None = None,
    ) -> RunRow:
        """Queue a run on ``thread_id``, or (None) on a new thread owned by ``principal``, created with it.

        ``enqueue`` (distributed mode) puts the run's job on the queue in the same transaction: the run and
        its job are committed together or not at all, so no run is left pending without a job."""
        if multitask_strategy not in STRATEGIES:
            raise ApiError(
                422,
                "UnsupportedMultitaskStrategy",
                f"multitask_strategy {multitask_strategy!r} is not supported; use one of {', '.join(STRATEGIES)}",
            )
        new_thread = self._new_thread(str(uuid.uuid4()), {}, principal) if thread_id is None else None
        now = self._clock.now()
        run = RunRow(
            run_id=str(uuid.uuid4()),
            thread_id=new_thread.thread_id if new_thread else str(thread_id),
            assistant_id=assistant_id,
            status="pending",
            kind=kind,
            input=input,
            command=command,
            stream_modes=list(stream_modes),
            multitask_strategy=multitask_strategy,
            metadata=dict(metadata),
            principal=principal,
            base_checkpoint=None,
            attempts=0,
            error=None,
            created_at=now,
            updated_at=now,
            durability=durability,
        )
        if new_thread is not None and self._pg is not None:
            values = {k: v for k, v in _row_values(run).items() if k != "job_id"}
            defer = None if enqueue is None else lambda conn: enqueue(conn, run)
            job_id = await self._pg.create_with_thread(_thread_values(new_thread), values, defer)
            return dataclasses.replace(run, job_id=job_id)
        async with self._engine.begin() as conn:
            if new_thread is not None:  # nothing can be queued on it yet
                await conn.execute(insert(server_threads).values(**_thread_values(new_thread)))
            elif await self._active_locked(conn, run.thread_id) and multitask_strategy == "reject":
                raise ApiError(
                    409,
                    "ThreadBusy",
                    f"thread {thread_id!r} already has a pending or running run; wait for it, or create the run "
                    "with multitask_strategy='enqueue'",
                    thread_id=thread_id,
                )
            if enqueue is not None:
                raw = await conn.get_raw_connection()  # procrastinate writes the job on this very transaction
                driver = cast(psycopg.AsyncConnection[Any], raw.driver_connection)
                run = dataclasses.replace(run, job_id=await enqueue(driver, run))
            await conn.execute(insert(server_runs).values(**_row_values(run)))
        return run

    async def _active_locked(self, conn: AsyncConnection, thread_id: str) -> int:
        """The thread's active runs, its row locked (PostgreSQL) for the rest of the transaction: run
        creation is serialised per thread, so two "reject" runs cannot both find the thread idle."""
        active = (
            select(func.count())
            .select_from(server_runs)
            .where(server_runs.c.thread_id == thread_id, server_runs.c.status.in_(ACTIVE))
            .scalar_subquery()
        )
        if not self._postgres:
            return int((await conn.execute(select(active))).scalar_one())
        locked = select(active).where(server_threads.c.thread_id == thread_id).with_for_update(of=server_threads)
        return int((await conn.execute(locked)).scalar() or 0)

    async def get_run(self, run_id: str) -> RunRow | None:
        if self._pg is not None:
            found = await self._pg.get(run_id)
            return RunRow(**found) if found else None
        async with self._read() as conn:
            row = (await conn.execute(select(server_runs).where(server_runs.c.run_id == run_id))).first()
        return RunRow(**row._mapping) if row else None

    async def list_runs(self, thread_id: str, *, limit: int = 10, offset: int = 0) -> list[RunRow]:
        query = (
            select(server_runs)
            .where(server_runs.c.thread_id == thread_id)
            .order_by(server_runs.c.created_at.desc())
            .limit(limit)
            .offset(offset)
        )
        async with self._read() as conn:
            return [RunRow(**r._mapping) for r in (await conn.execute(query)).all()]

    async def next_pending(self, thread_id: str) -> RunRow | None:
        query = (
            select(server_runs)
            .where(server_runs.c.thread_id == thread_id, server_runs.c.status.in_(ACTIVE))
            .order_by(server_runs.c.created_at, server_runs.c.run_id)
            .limit(1)
        )
        async with self._read() as conn:
            row = (await conn.execute(query)).first()
        return RunRow(**row._mapping) if row else None

    async def unfinished(self) -> list[RunRow]:
        async with self._read() as conn:
            rows = (await conn.execute(select(server_runs).where(server_runs.c.status.in_(ACTIVE)))).all()
        return [RunRow(**r._mapping) for r in rows]

    async def active_count(self, thread_id: str) -> int:
        async with self._read() as conn:
            return int(
                (
                    await conn.execute(
                        select(func.count())
                        .select_from(server_runs)
                        .where(server_runs.c.thread_id == thread_id, server_runs.c.status.in_(ACTIVE))
                    )
                ).scalar_one()
            )

    async def last_run(self, thread_id: str) -> RunRow | None:
        runs = await self.list_runs(thread_id, limit=1)
        return runs[0] if runs else None

    async def claim(self, run_id: str) -> tuple[RunRow, str | None] | None:
        """Take a pending run (or one whose executor died: the caller's queue or lock guarantees it is the
        only executor), with the journey instance its thread is bound to. None when the run is finished or
        cancelled."""
        values = {"claimed_run": run_id, "claimed_at": self._clock.now()}
        if self._pg is not None:
            found = await self._pg.one(CLAIM, values)
        else:
            async with self._write_one() as conn:
                row = (await conn.execute(CLAIM, values)).first()
            found = dict(row._mapping) if row else None
        if found is None:
            return None
        instance_id = found.pop("bound_instance")
        return RunRow(**found), instance_id

    async def request_cancel(self, run_id: str) -> None:
        """Remember that a cancel reached an executing run: if its job is retried (its worker died before it
        stopped the run), the retry ends it interrupted instead of running it."""
        async with self._write_one() as conn:
            await conn.execute(
                update(server_runs)
                .where(server_runs.c.run_id == run_id, server_runs.c.status.in_(ACTIVE))
                .values(cancel_requested_at=self._clock.now())
            )

    async def set_base_checkpoint(self, run_id: str, checkpoint_id: str | None) -> None:
        async with self._write_one() as conn:
            await conn.execute(
                update(server_runs).where(server_runs.c.run_id == run_id).values(base_checkpoint=checkpoint_id)
            )

    async def finish(
        self, run_id: str, status: str, error: Mapping[str, Any] | None = None, output: Any = None
    ) -> RunRow | None:
        """Give an active run its final status (and output); the finished run, or None when it had finished
        already."""
        if self._pg is not None:
            done = await self._pg.finish(run_id, status, dict(error) if error else None, output, self._clock.now())
            return RunRow(**done) if done else None
        finished = (
            update(server_runs)
            .where(server_runs.c.run_id == run_id, server_runs.c.status.in_(ACTIVE))
            .values(status=status, error=dict(error) if error else None, output=output, updated_at=self._clock.now())
            .returning(*server_runs.c)
        )
        async with self._write_one() as conn:
            row = (await conn.execute(self._notifying(finished))).first()
        return RunRow(**{name: row._mapping[name] for name in RunRow.__slots__}) if row else None

    def _notifying(self, statement: ReturningInsert[Any] | ReturningUpdate[Any]) -> Executable:
        """``statement`` (returning ``run_id``) and, on PostgreSQL, a notice on ``RUN_CHANNEL`` for the run
        it wrote, in one statement: it is delivered when the write commits, so a woken waiter reads it."""
        if not self._postgres:
            return statement
        written = statement.cte("written")
        return select(written, func.pg_notify(RUN_CHANNEL, written.c.run_id).label("notified"))

    # --- stream chunks ------------------------------------------------------------------------------

    async def append_event(self, run_id: str, seq: int, event: str, data: Any) -> None:
        chunk = (
            insert(server_run_events)
            .values(run_id=run_id, seq=seq, event=event, data=data)
            .returning(server_run_events.c.run_id)
        )
        async with self._write_one() as conn:
            await conn.execute(self._notifying(chunk))

    async def last_seq(self, run_id: str) -> int:
        async with self._read() as conn:
            value = (
                await conn.execute(
                    select(func.coalesce(func.max(server_run_events.c.seq), 0)).where(
                        server_run_events.c.run_id == run_id
                    )
                )
            ).scalar_one()
        return int(value)

    async def events_after(self, run_id: str, seq: int) -> list[tuple[int, str, Any]]:
        query = (
            select(server_run_events.c.seq, server_run_events.c.event, server_run_events.c.data)
            .where(server_run_events.c.run_id == run_id, server_run_events.c.seq > seq)
            .order_by(server_run_events.c.seq)
        )
        async with self._read() as conn:
            return [(int(r.seq), str(r.event), r.data) for r in (await conn.execute(query)).all()]


def _row_values(run: RunRow) -> dict[str, Any]:
    return {name: getattr(run, name) for name in RunRow.__slots__}


def _thread_values(thread: ThreadRow) -> dict[str, Any]:
    return {name: getattr(thread, name) for name in ThreadRow.__slots__}

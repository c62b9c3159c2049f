"""The official LangGraph checkpointers and stores (``BaseStore``: the long-term memory nodes reach with
``get_store()``), opened by store URL. We never write a saver or a store of our own."""

from __future__ import annotations

import asyncio
import copy
import datetime
import functools
import inspect
import json
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from contextvars import ContextVar
from typing import Any, cast

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver, CheckpointTuple
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from langgraph.store.base import BaseStore, IndexConfig, TTLConfig
from langgraph.store.base.batch import AsyncBatchedBaseStore
from langgraph.store.memory import InMemoryStore
from langgraph.store.postgres.aio import AsyncPostgresStore
from langgraph.store.sqlite.aio import AsyncSqliteStore
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from checkpoints.backends.postgres import open_pool
from checkpoints.background import stopped
from checkpoints.database import connect_sqlite, sqlite_pragmas
from checkpoints.encryption import checkpoint_serializer
from checkpoints.locks import Lease, PgAdvisoryLocks, current_lease, refuse_if_lost, setup_turn
from checkpoints.url import StoreURL, opened_target


@asynccontextmanager
async def open_saver(
    url: StoreURL,
    *,
    pool_size: int = 10,
    pool: AsyncConnectionPool[Any] | None = None,
    encryption_key: bytes | None = None,
) -> AsyncIterator[BaseCheckpointSaver[str]]:
    """Open the saver for ``url``, run its ``setup()`` (one process at a time), and close it on exit.

    ``memory://`` and ``sqlite://`` both get the official SQLite saver (``memory://`` on a throwaway
    file). On PostgreSQL the saver uses ``pool`` (the store's shared pool), or a pool of its own. With an
    ``encryption_key``, checkpoints are encrypted (:mod:`checkpoints.encryption`)."""
    serde = checkpoint_serializer(encryption_key)
    async with AsyncExitStack() as stack:
        if url.kind != "postgres":
            target = (await stack.enter_async_context(opened_target(url))).target
            conn = await connect_sqlite(target)
            stack.push_async_callback(conn.close)
            for pragma in sqlite_pragmas(url):
                await conn.execute(pragma)
            saver = AsyncSqliteSaver(conn, serde=serde)
            whole_writes(saver)
            async with setup_turn(url):
                await saver.setup()
            yield saver
            return
        if pool is None:
            pool = await stack.enter_async_context(open_pool(url, pool_size))
        async with pool.connection() as conn:
            await _set_up_in_turn(conn, AsyncPostgresSaver(conn, serde=serde).setup)
        pg_saver = AsyncPostgresSaver(pool, serde=serde)
        unlock_pooled(pg_saver, pool.max_size)
        write_together(pg_saver)
        fenced_writes(pg_saver)
        read_together(pg_saver)
        yield pg_saver


@asynccontextmanager
async def open_graph_store(
    url: StoreURL, *, pool: AsyncConnectionPool[Any] | None = None, index: IndexConfig | None = None
) -> AsyncIterator[BaseStore]:
    """Open LangGraph's official store for ``url``, set it up, and close it on exit: ``InMemoryStore`` for
    ``memory://``, ``AsyncSqliteStore`` (a connection of its own to the file) for ``sqlite://``,
    ``AsyncPostgresStore`` on ``pool`` (the store's shared psycopg pool) for PostgreSQL.

    ``index`` turns on vector search (an embeddings model and its dimensions); without it the store
    searches by namespace, filter and key only. The SQLite and PostgreSQL stores take item TTLs
    (:func:`ttl_config`) and sweep expired items while open."""
    if url.kind == "memory":
        yield InMemoryStore(index=index)  # it has no item TTLs (supports_ttl is False): a ttl is refused
        return
    if url.kind == "sqlite":
        conn = await connect_sqlite(url.target, isolation_level=None)
        try:
            for pragma in sqlite_pragmas(url):
                await conn.execute(pragma)
            sqlite_store = AsyncSqliteStore(conn, index=cast(Any, index), ttl=ttl_config())
            try:
                async with setup_turn(url):
                    await sqlite_store.setup()
                await sqlite_store.start_ttl_sweeper()
                yield sqlite_store
            finally:
                await sqlite_store.stop_ttl_sweeper()
                await _stop_batching(sqlite_store)
        finally:
            await conn.close()
        return
    assert pool is not None, "PostgreSQL: the store runs on the process's shared pool"
    async with pool.connection() as conn:
        setting_up = AsyncPostgresStore(conn, index=cast(Any, index))
        try:
            await _set_up_in_turn(conn, setting_up.setup)
        finally:
            await _stop_batching(setting_up)
    pg_store = AsyncPostgresStore(pool, index=cast(Any, index), ttl=ttl_config())
    sqlite_filters(pg_store)
    try:
        await pg_store.start_ttl_sweeper()
        yield pg_store
    finally:
        await pg_store.stop_ttl_sweeper()
        await _stop_batching(pg_store)


# A store filter's comparison operators, as SQL on jsonb (which orders numbers by value, and never fails).
_OPERATORS = {"$eq": "=", "$ne": "!=", "$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}


def sqlite_filters(store: AsyncPostgresStore) -> None:
    """Make a search filter's conditions ({"field": {"$op": value}}) select on PostgreSQL what they select on
    SQLite. PostgreSQL's store takes a field by its top-level name (value->'a.b' is no field of {"a": {"b": 1}})
    and compares a range as text (value->>'n' > '10': 9 > 10 and 100 < 9, langgraph#7684). Here a dotted field
    is a path into nested objects (value #> '{a,b}'), as the SQLite store's JSON path is, and a range on a
    number compares numbers where the field is one (an item whose field is missing or no number does not
    match); the rest is the store's own, its code unchanged. A plain value's equality the store writes itself
    (value->'field'): server.api.store gives a dotted field's as $eq."""
    condition = store._get_filter_condition

    def on_path(key: str, op: str, value: Any) -> tuple[str, list[Any]]:
        if op not in _OPERATORS:
            return condition(key, op, value)  # the store's refusal
        path, sql = key.split("."), _OPERATORS[op]
        if op in ("$eq", "$ne"):
            return f"value #> %s::text[] {sql} %s::jsonb", [path, json.dumps(value)]
        if isinstance(value, int | float) and not isinstance(value, bool):
            return (
                f"(jsonb_typeof(value #> %s::text[]) = 'number' AND value #> %s::text[] {sql} %s::jsonb)",
                [path, path, json.dumps(value)],
            )
        return f"value #>> %s::text[] {sql} %s", [path, str(value)]

    store._get_filter_condition = on_path  # type: ignore[method-assign]


# How often (minutes) each process deletes the store items whose TTL has passed (a DELETE on an index).
TTL_SWEEP_MINUTES = 1
# LangGraph's SQLite store binds its TTL expiry times as datetimes. Python 3.12 deprecated sqlite3's default
# adapter for them (a DeprecationWarning on each put with a TTL); this is that adapter's own text, registered
# explicitly as the sqlite3 documentation recommends, so what is stored does not change.
sqlite3.register_adapter(datetime.datetime, lambda value: value.isoformat(" "))


def ttl_config() -> TTLConfig:
    """Item TTLs as the Agent Server serves them: an item put with a ``ttl`` (minutes) expires that long after
    it was last written or read (a read refreshes it unless ``refresh_ttl`` is false), and the sweeper deletes
    it. PostgreSQL's store omits an expired item from reads at once; SQLite's at the next sweep."""
    return {"refresh_on_read": True, "omit_expired": True, "sweep_interval_minutes": TTL_SWEEP_MINUTES}


async def _stop_batching(store: AsyncBatchedBaseStore) -> None:
    """End the task in which a batched store gathers its operations. The store only cancels it when it is
    garbage-collected, which may be after its event loop closed ("Task was destroyed but it is pending")."""
    if store._task is not None:
        await stopped(store._task)


# Arbitrary and stable, apart from our migrations' lock: the saver's and the store's migrations hold it.
_SAVER_SETUP_LOCK = 7_310_512_002


async def _set_up_in_turn(conn: AsyncConnection[Any], setup: Callable[[], Awaitable[None]]) -> None:
    """Run an official saver's or store's ``setup()`` (on ``conn``) while no other process runs one.

    Processes starting together on a new database would race its ``CREATE TABLE IF NOT EXISTS``
    (PostgreSQL answers "type ... already exists"). The lock is taken by polling, not by waiting in
    ``pg_advisory_lock``: the holder's ``CREATE INDEX CONCURRENTLY`` waits for every older snapshot to
    end, and a waiter blocked inside a statement holds one, which PostgreSQL reports as a deadlock."""
    while True:
        row = await (await conn.execute("SELECT pg_try_advisory_lock(%s) AS ok", (_SAVER_SETUP_LOCK,))).fetchone()
        if row is not None and row["ok"]:
            break
        await asyncio.sleep(0.05)
    try:
        await setup()
    finally:
        await conn.execute("SELECT pg_advisory_unlock(%s)", (_SAVER_SETUP_LOCK,))


def unlock_pooled(saver: AsyncPostgresSaver, pool_size: int) -> None:
    """Let a pooled saver run as many operations at once as its pool has connections.

    ``AsyncPostgresSaver`` guards every operation with one ``asyncio.Lock``, which a single shared
    connection needs but a pool does not (each operation checks out a connection of its own), so on
    a pool it makes one lane of the whole process: upstream issue langchain-ai/langgraph#7259, fixed
    the same way by the open PR #7269. The workaround discussed there swaps the lock for a semaphore
    the size of the pool; the saver's code is unchanged.
    """
    saver.lock = cast(asyncio.Lock, asyncio.Semaphore(pool_size))


def fenced_writes(saver: AsyncPostgresSaver) -> None:
    """Refuse the saver's writes made under a journey lock this process has lost (see :class:`checkpoints.locks.Lease`).

    A run stopped because its lock's connection was lost (another process may hold the journey now) still
    writes: LangGraph saves the checkpoint of a cancelled run as its loop unwinds, which could fork the thread
    another process runs on. Such a write raises :class:`InstanceLockLostError` before any statement; the
    saver's code is unchanged."""
    for name in ("aput", "aput_writes"):
        write = getattr(saver, name)

        async def fenced(*args: Any, _write: Callable[..., Awaitable[Any]] = write, **kwargs: Any) -> Any:
            refuse_if_lost()
            return await _write(*args, **kwargs)

        setattr(saver, name, standing_for(write, fenced))


# At most this many threads' latest checkpoints are read by one statement (see read_together).
READS_TOGETHER = 64
# The saver's own statement, for the latest root checkpoint of each thread of a list at once.
_LATEST_OF_THREADS = (
    "WHERE thread_id = ANY(%s) AND checkpoint_ns = '' AND checkpoint_id = (SELECT max(latest.checkpoint_id) "
    "FROM checkpoints latest WHERE latest.thread_id = checkpoints.thread_id AND latest.checkpoint_ns = '')"
)


def read_together(saver: AsyncPostgresSaver) -> None:
    """Read the latest checkpoints that runs ask for at about the same time in one statement, not one each.

    A run's first call reads its thread's latest checkpoint; a wave of fired timers' continuations (or of the
    server's runs) asks for a dozen at once, each a pooled connection, a round trip and a statement of
    PostgreSQL's. Those asked for while a read is on the wire go together in the next, as the saver's own
    query for a list of threads (its rows are decoded by the saver, each in its caller), so each is still read
    after its caller asked (under the journey's lock, where the caller holds it). A read of a given checkpoint,
    a subgraph's, or a checkpoint older than the saver's format 4 (whose sends it migrates) is the saver's own.
    """
    reads = _LatestReads(saver)
    read = saver.aget_tuple

    async def aget_tuple(config: RunnableConfig) -> CheckpointTuple | None:
        asked = config["configurable"]
        if asked.get("checkpoint_id") or asked.get("checkpoint_ns"):
            return await read(config)
        row = await reads.latest(str(asked["thread_id"]))
        if row is None:
            return None
        if row["checkpoint"]["v"] < 4 and row["parent_checkpoint_id"]:
            return await read(config)
        return await saver._load_checkpoint_tuple(row)

    setattr(saver, "aget_tuple", aget_tuple)  # noqa: B010 (an instance's method, as unlock_pooled swaps its lock)


class _LatestReads:
    """The latest root checkpoint rows of the threads asked for meanwhile, read batch by batch (read_together)."""

    def __init__(self, saver: AsyncPostgresSaver) -> None:
        self._saver = saver
        self._asked: list[tuple[str, asyncio.Future[Any]]] = []
        self._reader: asyncio.Task[None] | None = None

    async def latest(self, thread_id: str) -> Any:
        """The saver's row of ``thread_id``'s latest root checkpoint, read after this call; None: it has none."""
        asked: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._asked.append((thread_id, asked))
        if self._reader is None or self._reader.done():
            self._reader = asyncio.ensure_future(self._read_asked())
        return await asked

    async def _read_asked(self) -> None:
        while self._asked:
            batch = self._asked[:READS_TOGETHER]
            del self._asked[:READS_TOGETHER]
            threads = list(dict.fromkeys(thread_id for thread_id, _asked in batch))
            try:
                async with self._saver._cursor() as cur:
                    await cur.execute(self._saver.SELECT_SQL + _LATEST_OF_THREADS, (threads,), binary=True)
                    found = {row["thread_id"]: row for row in await cur.fetchall()}
            except BaseException as exc:
                stopped = not isinstance(exc, Exception)  # the reader itself is cancelled: so is what is left
                if stopped:
                    batch += self._asked
                    self._asked.clear()
                for _thread_id, asked in batch:
                    if not asked.done():
                        asked.cancel() if stopped else asked.set_exception(exc)
                if stopped:
                    raise
                continue
            for thread_id, asked in batch:
                if not asked.done():  # its caller may have been cancelled meanwhile
                    asked.set_result(found.get(thread_id))


# At most this many writes of the saver (each a checkpoint, or a task's pending writes) go in one transaction.
WRITES_TOGETHER = 64
# Set while the saver's aput or aput_writes runs (write_together): its cursor records what it would send.
_WRITING: ContextVar[bool] = ContextVar("journeys_saver_writing", default=False)
# A statement a saver's write recorded: its SQL, its parameters, and whether they are a list for executemany.
_Recorded = tuple[str, Any, bool]
# A write asked for: its statements, the lease of the lock its caller holds (if any), and its caller's future.
_Asked = tuple[list[_Recorded], Lease | None, asyncio.Future[None]]


def write_together(saver: AsyncPostgresSaver) -> None:
    """Send the checkpoint writes runs make at about the same time in one transaction, not one each.

    A wave of fired timers' continuations (or of the server's runs) ends together: each run's ``aput`` took a
    pooled connection, a pipeline, a round trip and a commit of its own. The saver's ``aput`` and ``aput_writes``
    still run as they are, building their own statements and parameters; the cursor they write through records
    them, and the writes asked for while a transaction is on the wire go together in the next one, in the order
    asked, each sent after its caller asked and returning once committed. A write whose lock this process lost
    meanwhile (:class:`checkpoints.locks.Lease`) is refused as :func:`fenced_writes` refuses it, unsent. Should
    a transaction of several fail, each of its writes is sent again alone, so that one write's failure is its
    own. Every other use of the saver's cursor (its reads, deletes, prunes) is the saver's own."""
    writes = _TogetherWrites(saver._cursor)
    cursor = saver._cursor

    def _cursor(*, pipeline: bool = False) -> AbstractAsyncContextManager[Any]:
        return writes.recorded() if pipeline and _WRITING.get() else cursor(pipeline=pipeline)

    setattr(saver, "_cursor", _cursor)  # noqa: B010 (an instance's method, as unlock_pooled swaps its lock)
    for name in ("aput", "aput_writes"):
        write = getattr(saver, name)

        async def together(*args: Any, _write: Callable[..., Awaitable[Any]] = write, **kwargs: Any) -> Any:
            writing = _WRITING.set(True)
            try:
                return await _write(*args, **kwargs)
            finally:
                _WRITING.reset(writing)

        setattr(saver, name, standing_for(write, together))


class _Recorder:
    """Stands for the saver's cursor in a write: keeps the statements the write sends (it reads no result)."""

    def __init__(self) -> None:
        self.statements: list[_Recorded] = []

    async def execute(self, query: str, params: Any = None, **_kwargs: Any) -> None:
        self.statements.append((query, params, False))

    async def executemany(self, query: str, params_seq: Any, **_kwargs: Any) -> None:
        self.statements.append((query, list(params_seq), True))


class _TogetherWrites:
    """The saver's writes asked for meanwhile, sent transaction by transaction (write_together)."""

    def __init__(self, cursor: Callable[..., AbstractAsyncContextManager[Any]]) -> None:
        self._cursor = cursor  # the saver's own: its pooled connection, in a pipeline (one transaction)
        self._asked: list[_Asked] = []
        self._writer: asyncio.Task[None] | None = None

    @asynccontextmanager
    async def recorded(self) -> AsyncIterator[_Recorder]:
        """A cursor for one write of the saver; the write is sent when its block ends, and committed on return."""
        recorder = _Recorder()
        yield recorder
        if not recorder.statements:
            return
        sent: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._asked.append((recorder.statements, current_lease(), sent))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._write_asked())
        await sent

    async def _write_asked(self) -> None:
        while self._asked:
            batch = self._asked[:WRITES_TOGETHER]
            del self._asked[:WRITES_TOGETHER]
            try:
                sent = await self._send(batch)
            except Exception as exc:
                if len(batch) == 1:
                    _settle(batch[0][2], exc)
                    continue
                for write in batch:  # each alone: one write's failure is its own
                    try:
                        await self._send([write])
                    except Exception as alone:
                        _settle(write[2], alone)
                    else:
                        _settle(write[2], None)
                continue
            except BaseException:  # the writer itself is cancelled: so is every write not committed
                for _statements, _lease, asked in batch + self._asked:
                    if not asked.done():
                        asked.cancel()
                self._asked.clear()
                raise
            for asked in sent:
                _settle(asked, None)

    async def _send(self, writes: Sequence[_Asked]) -> list[asyncio.Future[None]]:
        """Send ``writes`` through one pipeline of the saver's cursor (one transaction, committed at its end),
        but those whose callers were cancelled meanwhile, and refuse those whose journey lock was lost by the
        time the connection is taken (as :func:`fenced_writes` refuses a write); the callers of those sent."""
        sent = []
        async with self._cursor(pipeline=True) as cur:
            # Consecutive statements of one query (a wave's exit checkpoints, one each) go as one executemany:
            # the same statements in the same order, without psycopg's set-up per execute.
            runs: list[tuple[str, list[Any]]] = []
            for statements, lease, asked in writes:
                if asked.done():  # its caller was cancelled before it was sent: it is not written
                    continue
                if lease is not None and lease.lost:
                    asked.set_exception(PgAdvisoryLocks.lost(lease.instance_id))
                    continue
                for query, params, many in statements:
                    rows = params if many else [params]
                    if runs and runs[-1][0] == query:
                        runs[-1][1].extend(rows)
                    else:
                        runs.append((query, list(rows)))
                sent.append(asked)
            for query, rows in runs:
                if len(rows) == 1:
                    await cur.execute(query, rows[0])
                elif rows:
                    await cur.executemany(query, rows)
        return sent


def _settle(sent: asyncio.Future[None], error: BaseException | None) -> None:
    if sent.done():  # its caller was cancelled meanwhile
        return
    if error is None:
        sent.set_result(None)
    else:
        sent.set_exception(error)


def standing_for(method: Callable[..., Any], wrapper: Callable[..., Any]) -> Callable[..., Any]:
    """``wrapper`` of a saver's ``method``, with the method's name and signature. LangGraph reads a saver's
    signature to learn what to pass it (``aput_writes`` is given the writing task's path only if it names
    ``task_path``): a wrapper taking ``*args`` got none, and each write was stored without it. The signature is
    set, not found through ``__wrapped__``: LangGraph reads it again at every run."""
    wrapped = functools.wraps(method)(wrapper)
    wrapped.__signature__ = inspect.signature(method)  # type: ignore[attr-defined]
    return wrapped


def whole_writes(saver: AsyncSqliteSaver) -> None:
    """Let every write of the SQLite saver end its transaction, whatever happens to its caller.

    Its writes run on one shared connection: the statements, then a commit, under its lock. LangGraph cancels a
    step's other tasks when one fails (and a run cancelled is cancelled mid-write): cancelled between the two,
    a write left the connection in its transaction, the file's write lock held with the saver's lock released,
    so every other writer of the file waited out the busy timeout and failed with "database is locked" until
    something else committed on that connection. Each write now runs to its commit (or its own failure) as a
    unit, its caller cancelled at once all the same; the saver's code is unchanged.
    """
    for name in ("aput", "aput_writes", "adelete_thread"):
        write = getattr(saver, name)

        async def whole(*args: Any, _write: Callable[..., Awaitable[Any]] = write, **kwargs: Any) -> Any:
            task = asyncio.ensure_future(_write(*args, **kwargs))
            task.add_done_callback(_retrieved)  # a caller cancelled meanwhile does not see its error
            return await asyncio.shield(task)

        setattr(saver, name, standing_for(write, whole))


def fresh_thread(saver: BaseCheckpointSaver[str], thread_id: str) -> BaseCheckpointSaver[str]:
    """``saver`` for the first run of ``thread_id`` when nothing can have been saved on that thread yet (a journey
    its caller registered a moment ago, under its lock): the run's first read of the thread's latest
    checkpoint answers None, as the saver would, without a round trip to the database; every other call,
    and any later read, is the saver's own. Lent to one run (LangGraph takes it from the run's config)."""
    view = copy.copy(saver)  # shares the saver's connections, lock and serializer
    read = saver.aget_tuple
    first = True

    async def aget_tuple(config: RunnableConfig) -> CheckpointTuple | None:
        nonlocal first
        asked = config.get("configurable") or {}
        if first and asked.get("thread_id") == thread_id and not asked.get("checkpoint_ns"):
            first = False
            if not asked.get("checkpoint_id"):
                return None
        return await read(config)

    setattr(view, "aget_tuple", aget_tuple)  # noqa: B010 (an instance's method, as unlock_pooled swaps its lock)
    return view


def _retrieved(task: asyncio.Future[Any]) -> None:
    """Mark ``task``'s error as seen: a write whose caller was cancelled logs no "exception never retrieved"."""
    if not task.cancelled():
        task.exception()


async def copy_checkpoints(saver: BaseCheckpointSaver[str], source: str, target: str) -> int:
    """Copy every checkpoint of thread ``source`` (with its pending writes) to thread ``target``, oldest
    first, through the saver's own API (the official savers do not implement ``acopy_thread``); how many."""
    found = [t async for t in saver.alist({"configurable": {"thread_id": source}})]
    for saved in reversed(found):  # alist answers newest first; each checkpoint names its parent
        parent = (saved.parent_config or {}).get("configurable", {}).get("checkpoint_id")
        await put_saved(saver, target, saved, parent)
    return len(found)


async def copy_checkpoint(
    saver: BaseCheckpointSaver[str], source: RunnableConfig, target: str, metadata: dict[str, Any]
) -> RunnableConfig:
    """Copy one checkpoint (``source``: its config) as the first checkpoint of thread ``target``, without its
    pending writes (the target runs its next tasks afresh), with ``metadata`` added to its own; the config
    of the copy. A fork's state, through the saver's own API."""
    saved = await saver.aget_tuple(source)
    if saved is None:
        raise LookupError(f"no checkpoint at {source!r}")
    merged: Any = {**saved.metadata, **metadata}
    return await put_saved(saver, target, saved._replace(metadata=merged, pending_writes=None), None)


async def put_saved(
    saver: BaseCheckpointSaver[str], thread_id: str, saved: CheckpointTuple, parent: str | None
) -> RunnableConfig:
    """Write a checkpoint read from the saver (with its pending writes) to ``thread_id``, in its namespace,
    under ``parent`` (None: a checkpoint without a parent), through the saver's own API; the copy's config."""
    ns = saved.config["configurable"].get("checkpoint_ns", "")
    into: Any = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": parent}}
    written = await saver.aput(into, saved.checkpoint, saved.metadata, saved.checkpoint["channel_versions"])
    by_task: dict[str, list[tuple[str, Any]]] = {}
    for task_id, channel, value in saved.pending_writes or ():
        by_task.setdefault(task_id, []).append((channel, value))
    for task_id, writes in by_task.items():
        await saver.aput_writes(written, writes, task_id)
    return written

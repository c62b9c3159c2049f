"""Process deployments, registered as (name, version), and the rollout that routes new instances."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError

from checkpoints.backends.base import Backend
from checkpoints.clock import Clock
from checkpoints.index import Design
from checkpoints.ownership import new_row_owner
from checkpoints.schema.tables import journey_designs, process_deployments, process_message_starts, process_rollouts


@dataclass(frozen=True, slots=True)
class Deployment:
    """One deployed version of a process: its name, version, design and content digest."""

    name: str
    version: int
    design_id: str
    digest: str
    deployed_at: datetime
    spec: dict[str, Any]
    tenant: str | None = None  # whose process name this is (see tenant_of)


# Whether the caller may deploy a version of a name: (deployed already, tenant of its first version) → allowed.
NameOwnership = Callable[[bool, str | None], bool]
Added = Literal["added", "version taken", "name taken"]


class _NameTaken(Exception):
    """Leaves :meth:`DeploymentStore.add`'s transaction: the name is another's."""


# The rollout a new instance is routed by, read at every start: prebuilt, on the backend's hot path.
_ROLLOUT = select(process_rollouts.c.entries).where(process_rollouts.c.name == bindparam("r_name"))
_ROLLOUT_LOCKED = _ROLLOUT.with_for_update()  # SQLite has no row locks: its one writer serialises the change
# A new rollout made from the current one (its entries; empty when there is none), inside the transaction.
RolloutChange = Callable[[list[dict[str, Any]]], list[dict[str, Any]]]


class _SharedReads:
    """The rollout reads of one store, each shared by the callers that asked for a name's rollout before it was
    sent, and by no later one: a caller asking while a read of the name is under way waits for the next one, sent
    as that read ends for all who asked meanwhile. Each caller so reads the rollout as committed when it asked, or
    later, whichever process changed it (nothing is kept to go stale), while a burst of starts of one process
    (each read a round trip on PostgreSQL) shares a read among those that came while one was under way."""

    def __init__(self, read: Callable[[str], Coroutine[Any, Any, list[dict[str, Any]]]]) -> None:
        self._read = read
        self._under_way: dict[str, asyncio.Task[list[dict[str, Any]]]] = {}
        self._next: dict[str, asyncio.Future[list[dict[str, Any]]]] = {}

    async def __call__(self, name: str) -> list[dict[str, Any]]:
        if name not in self._under_way:
            return _copy(await asyncio.shield(self._send(name)))
        waiting = self._next.get(name)
        if waiting is None:
            waiting = self._next[name] = asyncio.get_running_loop().create_future()
            waiting.add_done_callback(_retrieved)  # every caller of it may have been cancelled
        return _copy(await asyncio.shield(waiting))  # a cancelled caller leaves the read to the others

    def _send(self, name: str) -> asyncio.Task[list[dict[str, Any]]]:
        read = self._under_way[name] = asyncio.get_running_loop().create_task(self._read(name))
        read.add_done_callback(functools.partial(self._ended, name))
        return read

    def _ended(self, name: str, read: asyncio.Task[list[dict[str, Any]]]) -> None:
        del self._under_way[name]
        _retrieved(read)
        waiting = self._next.pop(name, None)
        if waiting is not None:
            self._send(name).add_done_callback(functools.partial(_settle, waiting))


def _copy(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [dict(entry) for entry in entries]  # each caller its own: one read answers several


def _retrieved(done: asyncio.Future[Any]) -> None:
    if not done.cancelled():
        done.exception()  # retrieved: asyncio reports none left unretrieved by callers that were cancelled


def _settle(waiting: asyncio.Future[Any], read: asyncio.Future[Any]) -> None:
    if waiting.done():
        return
    if read.cancelled():
        waiting.cancel()
    elif (error := read.exception()) is not None:
        waiting.set_exception(error)
    else:
        waiting.set_result(read.result())


class DeploymentStore:
    """Process deployments and their rollouts (which versions new instances start on)."""

    def __init__(self, backend: Backend, clock: Clock) -> None:
        self._backend = backend
        self._engine = backend.engine
        self._clock = clock
        self._rollouts = _SharedReads(self._read_rollout)

    async def add(
        self,
        name: str,
        version: int,
        design: Design,
        digest: str,
        *,
        rollout: RolloutChange | None,
        message_starts: Sequence[tuple[str, str]] = (),
        may_deploy: NameOwnership | None = None,
    ) -> Added:
        """Register a deployment, its design (stored with it: a refused deploy leaves none), its message starts
        (``(message, start id)`` pairs, indexed for :meth:`started_by`) and, when given, the new rollout
        (``rollout`` of the current one, read locked), in one transaction: ``"version taken"`` if the version is,
        ``"name taken"`` if ``may_deploy`` refuses the name's owner as the transaction finds it. An error
        ``rollout`` raises leaves nothing written.

        The rollout row is written first: it is the name's one row, so a concurrent deploy of the name (of
        another version, by another tenant) either has committed by then, and its rollout and owner are read, or
        waits for this one (PostgreSQL's row lock; SQLite's one writer) and then finds this one's."""
        now = self._clock.now().astimezone(UTC)
        d = process_deployments.c
        first = select(d.tenant).where(d.name == name).order_by(d.version).limit(1)
        try:
            async with self._engine.begin() as conn:
                if rollout is not None:
                    locked = (await conn.execute(_ROLLOUT_LOCKED, {"r_name": name})).first()
                    await self._put_rollout(conn, name, rollout(list(locked.entries or []) if locked else []), now)
                if may_deploy is not None:
                    found = (await conn.execute(first)).first()
                    if not may_deploy(found is not None, found.tenant if found is not None else None):
                        raise _NameTaken  # rolls the rollout back
                await conn.execute(
                    insert(journey_designs).values(
                        journey_id=design.journey_id,
                        pattern=design.pattern,
                        journey_type=design.journey_type,
                        spec=design.spec,
                        created_at=design.created_at,
                        tenant=design.tenant,
                    )
                )
                await conn.execute(
                    insert(process_deployments).values(
                        name=name,
                        version=version,
                        design_id=design.journey_id,
                        digest=digest,
                        deployed_at=now,
                        tenant=new_row_owner()["tenant"],
                    )
                )
                if message_starts:
                    await conn.execute(
                        insert(process_message_starts),
                        [
                            {"message_name": message, "name": name, "version": version, "start_id": start_id}
                            for message, start_id in message_starts
                        ],
                    )
        except IntegrityError:
            return "version taken"
        except _NameTaken:
            return "name taken"
        return "added"

    async def set_rollout(self, name: str, entries: list[dict[str, Any]]) -> None:
        async with self._engine.begin() as conn:
            await self._put_rollout(conn, name, entries, self._clock.now().astimezone(UTC))

    @staticmethod
    async def _put_rollout(conn: Any, name: str, entries: list[dict[str, Any]], now: datetime) -> None:
        changed = await conn.execute(
            update(process_rollouts).where(process_rollouts.c.name == name).values(entries=entries, updated_at=now)
        )
        if not changed.rowcount:
            await conn.execute(insert(process_rollouts).values(name=name, entries=entries, updated_at=now))

    async def tenant_of(self, name: str) -> tuple[bool, str | None]:
        """Whether process ``name`` is deployed, and whose it is: the tenant of the caller that deployed its
        first version, or None for a shared one (deployed outside any caller, or before tenants were kept)."""
        d = process_deployments.c
        query = select(d.tenant).where(d.name == name).order_by(d.version).limit(1)
        async with self._engine.connect() as conn:
            found = (await conn.execute(query)).first()
        return (False, None) if found is None else (True, found.tenant)

    async def started_by(self, message: str) -> list[str]:
        """The names of the processes with a deployed version that a message named ``message`` starts."""
        m = process_message_starts.c
        query = select(m.name).where(m.message_name == message).distinct().order_by(m.name)
        async with self._engine.connect() as conn:
            return [str(name) for name in (await conn.execute(query)).scalars()]

    async def rollout(self, name: str) -> list[dict[str, Any]]:
        """The rollout of ``name`` (empty: none is deployed), as committed when asked for or later. Every start reads
        it: one statement, prepared, on PostgreSQL's pool (a SQLAlchemy connection's BEGIN, SELECT and ROLLBACK were
        three round trips), shared by the starts that asked while another read of it was under way (_SharedReads)."""
        return await self._rollouts(name)

    async def _read_rollout(self, name: str) -> list[dict[str, Any]]:
        rows = await self._backend.read(_ROLLOUT, {"r_name": name})
        return list(rows[0]["entries"] or []) if rows else []

    async def find(self, name: str | None = None) -> list[Deployment]:
        d, j = process_deployments.c, journey_designs.c
        query = (
            select(d.name, d.version, d.design_id, d.digest, d.deployed_at, j.spec, d.tenant)
            .join(journey_designs, j.journey_id == d.design_id)
            .order_by(d.name, d.version)
        )
        if name is not None:
            query = query.where(d.name == name)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [Deployment(**r._mapping) for r in rows]

    async def get(self, name: str, version: int) -> Deployment | None:
        found = [d for d in await self.find(name) if d.version == version]
        return found[0] if found else None

    async def by_design(self, design_id: str) -> Deployment | None:
        d, j = process_deployments.c, journey_designs.c
        query = (
            select(d.name, d.version, d.design_id, d.digest, d.deployed_at, j.spec, d.tenant)
            .join(journey_designs, j.journey_id == d.design_id)
            .where(d.design_id == design_id)
        )
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return Deployment(**row._mapping) if row else None

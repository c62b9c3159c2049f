"""Process deployments, registered as (name, version), and the rollout that routes new instances."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from checkpoints.clock import Clock
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


class DeploymentStore:
    """Process deployments and their rollouts (which versions new instances start on)."""

    def __init__(self, engine: AsyncEngine, clock: Clock) -> None:
        self._engine = engine
        self._clock = clock

    async def add(
        self,
        name: str,
        version: int,
        design_id: str,
        digest: str,
        *,
        rollout: list[dict[str, Any]] | None,
        message_starts: Sequence[tuple[str, str]] = (),
    ) -> bool:
        """Register a deployment, its message starts (``(message, start id)`` pairs, indexed for
        :meth:`started_by`) and, when given, the new rollout, in one transaction. False if taken."""
        now = self._clock.now().astimezone(UTC)
        try:
            async with self._engine.begin() as conn:
                await conn.execute(
                    insert(process_deployments).values(
                        name=name,
                        version=version,
                        design_id=design_id,
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
                if rollout is not None:
                    await self._put_rollout(conn, name, rollout, now)
        except IntegrityError:
            return False
        return True

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
        async with self._engine.connect() as conn:
            value = (
                await conn.execute(select(process_rollouts.c.entries).where(process_rollouts.c.name == name))
            ).scalar()
        return list(value or [])

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

"""Journey designs and the instance index: what exists, which pattern, whose, and in what status."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Select, bindparam, func, insert, null, select, update

from checkpoints.backends.base import Backend, Params, Statement
from checkpoints.clock import Clock
from checkpoints.encryption import Sealer
from checkpoints.errors import DuplicateDesignError, DuplicateInstanceError
from checkpoints.events import EVENT_VALUES, NewEvent, event_payload, first_payload, is_first, stored_key
from checkpoints.ownership import DEFAULT_TENANT, Owner, Viewer, new_row_owner, visible_to
from checkpoints.process.waits import among
from checkpoints.schema.lifecycle_tables import lifecycle_journey_states
from checkpoints.schema.tables import journey_designs, journey_events, journey_instances, process_timers


@dataclass(frozen=True, slots=True)
class Design:
    """A saved journey design: its spec under an id, for one pattern."""

    journey_id: str
    pattern: str
    journey_type: str
    spec: dict[str, Any]
    created_at: datetime
    tenant: str | None = None  # the tenant whose caller saved it, the only one that starts it (None: shared)


@dataclass(frozen=True, slots=True)
class Instance:
    """A journey instance as indexed: its design, pattern, user and status."""

    instance_id: str
    journey_id: str
    pattern: str
    user_id: str
    status: str
    created_at: datetime
    updated_at: datetime
    owner: str | None = None  # the principal that started it, its tenant and shared group (ownership)
    tenant: str | None = None
    shared_group: str | None = None
    # What holds its continuation back (see JourneyIndex.hold): the missing agents, what they hold, since when.
    held: dict[str, Any] | None = None

    @property
    def owned_by(self) -> Owner | None:
        """Its owner record (None for an instance started outside any caller, or before ownership)."""
        return Owner(self.owner, self.tenant or DEFAULT_TENANT, self.shared_group) if self.owner else None


_designs, _instances = journey_designs.c, journey_instances.c
_SAVE_DESIGN = insert(journey_designs).values(
    journey_id=bindparam("p_journey_id", type_=_designs.journey_id.type),
    pattern=bindparam("p_pattern", type_=_designs.pattern.type),
    journey_type=bindparam("p_journey_type", type_=_designs.journey_type.type),
    spec=bindparam("p_spec", type_=_designs.spec.type),
    created_at=bindparam("p_created_at", type_=_designs.created_at.type),
    tenant=bindparam("p_tenant", type_=_designs.tenant.type),
)
_GET_DESIGN = select(journey_designs).where(_designs.journey_id == bindparam("p_journey_id"))
_DESIGNS_OF_TYPE = (
    select(journey_designs)
    .where(_designs.pattern == bindparam("p_pattern"), _designs.journey_type == bindparam("p_journey_type"))
    .order_by(_designs.created_at)
)
_HOLD = (
    update(journey_instances)
    .where(_instances.instance_id == bindparam("p_instance_id"))
    .values(held=bindparam("p_held", type_=_instances.held.type))
)
_RELEASE = (
    update(journey_instances)
    .where(_instances.instance_id == bindparam("p_instance_id"), _instances.held.isnot(None))
    .values(held=null())
)
# An instance and its first event (seq 1) are registered together, on the hot path of every start.
_REGISTER_INSTANCE = insert(journey_instances).values(
    instance_id=bindparam("p_instance_id", type_=_instances.instance_id.type),
    journey_id=bindparam("p_journey_id", type_=_instances.journey_id.type),
    pattern=bindparam("p_pattern", type_=_instances.pattern.type),
    user_id=bindparam("p_user_id", type_=_instances.user_id.type),
    status=bindparam("p_status", type_=_instances.status.type),
    created_at=bindparam("p_created_at", type_=_instances.created_at.type),
    updated_at=bindparam("p_created_at", type_=_instances.updated_at.type),
    owner=bindparam("p_owner", type_=_instances.owner.type),
    tenant=bindparam("p_tenant", type_=_instances.tenant.type),
    shared_group=bindparam("p_shared_group", type_=_instances.shared_group.type),
)
_FIRST_EVENT = insert(journey_events).values(seq=1, **EVENT_VALUES)
_GET_INSTANCE = select(journey_instances).where(_instances.instance_id == bindparam("p_instance_id"))
# Built once: a worker's timer pass asks once a second for the process instances left migrating (mostly none).
_IDS_IN_STATUS = (
    select(_instances.instance_id)
    .where(_instances.pattern == bindparam("p_pattern"), _instances.status == bindparam("p_status"))
    .order_by(_instances.created_at, _instances.instance_id)
)


def _merged(values: Params, joined: Sequence[Statement]) -> dict[str, Any]:
    """``values`` with those of the ``joined`` statements, which bind the names they share with them alike."""
    merged = dict(values)
    for _statement, params in joined:
        for name, value in params.items():
            if merged.setdefault(name, value) != value:
                raise ValueError(f"a statement joined to a registration binds {name!r} to another value")
    return merged


# Told (instance id, journey id, pattern) of every instance registered (metrics).
CreatedListener = Callable[[str, str, str], Awaitable[None]]


class JourneyIndex:
    """Journey designs and the index of journey instances (pattern, owner, status) across journeys."""

    def __init__(self, backend: Backend, clock: Clock, sealer: Sealer | None = None) -> None:
        self._backend = backend
        self._clock = clock
        self._sealer = sealer or Sealer(None)
        self._listeners: list[CreatedListener] = []

    def on_created(self, listener: CreatedListener) -> None:
        """Tell ``listener`` of every instance this index registers."""
        self._listeners.append(listener)

    async def save_design(
        self, journey_id: str, pattern: str, journey_type: str, spec: dict[str, Any], *, tenant: str | None = None
    ) -> Design:
        """Store a design under ``journey_id``, ``tenant``'s (None: shared); DuplicateDesignError when one is stored
        already (on every backend alike: a design stored under its content's id may be saved by two starts at
        once)."""
        now = self._clock.now()
        values = {
            "p_journey_id": journey_id,
            "p_pattern": pattern,
            "p_journey_type": journey_type,
            "p_spec": spec,
            "p_created_at": now,
            "p_tenant": tenant,
        }
        try:
            await self._backend.write([_SAVE_DESIGN], values)
        except Exception as exc:
            if not self._backend.is_unique_violation(exc):
                raise
            raise DuplicateDesignError(f"design {journey_id!r} is stored already", journey_id=journey_id) from exc
        return Design(journey_id, pattern, journey_type, spec, now, tenant)

    async def get_design(self, journey_id: str) -> Design | None:
        found = await self._backend.read(_GET_DESIGN, {"p_journey_id": journey_id})
        return Design(**found[0]) if found else None

    async def designs_of_type(self, pattern: str, journey_type: str) -> list[Design]:
        """The designs stored of ``pattern`` and ``journey_type``, oldest first."""
        found = await self._backend.read(_DESIGNS_OF_TYPE, {"p_pattern": pattern, "p_journey_type": journey_type})
        return [Design(**row) for row in found]

    async def create_instance(
        self,
        instance_id: str,
        journey_id: str,
        pattern: str,
        user_id: str,
        *,
        first_event: NewEvent,
        status: str = "in_progress",
        also: Sequence[Statement] = (),
        joined: Sequence[Statement] = (),
    ) -> Instance:
        """Register a new instance and its first event in one transaction, owned by the caller the server
        acts for (:func:`checkpoints.ownership.acting_as`), with ``also`` (prebuilt statements and their
        values: a start key, a concurrency slot) in the same transaction. ``joined``: statements that ride the
        registration's own statement (one round trip; on PostgreSQL CTEs, which see none of its rows), whose
        values are merged with its own (a name they share must have the same value: the instance's id)."""
        now = self._clock.now()
        owner = new_row_owner()
        values = {
            **{f"p_{name}": value for name, value in owner.items()},
            "p_instance_id": instance_id,
            "p_journey_id": journey_id,
            "p_pattern": pattern,
            "p_user_id": user_id,
            "p_type": first_event.type,
            "p_step": first_event.step,
            # What the instance's row is, in its first event: the index can be rebuilt from the log.
            "p_payload": event_payload(
                NewEvent(
                    first_event.type,
                    first_payload(first_event.payload, journey_id, pattern, user_id),
                    first_event.step,
                    first_event.key,
                ),
                self._sealer,
            ),
            "p_key": stored_key(instance_id, first_event.key),
            "p_created_at": now,
            "p_status": status,
        }
        try:
            if also:
                async with self._backend.transaction() as tx:
                    await tx.execute(_REGISTER_INSTANCE, values)
                    await tx.execute(_FIRST_EVENT, values)
                    for statement, params in (*also, *joined):
                        await tx.execute(statement, params)
            else:
                statements = [_REGISTER_INSTANCE, _FIRST_EVENT, *(statement for statement, _ in joined)]
                await self._backend.write(statements, _merged(values, joined))
        except Exception as exc:
            if not self._backend.is_unique_violation(exc):
                raise
            raise DuplicateInstanceError(
                f"journey {journey_id!r} is already running for user {user_id!r} (instance {instance_id!r})",
                instance_id=instance_id,
            ) from exc
        for listener in self._listeners:
            await listener(instance_id, journey_id, pattern)
        return Instance(instance_id, journey_id, pattern, user_id, status, now, now, **owner)

    async def get_instance(self, instance_id: str, *, viewer: Viewer | None = None) -> Instance | None:
        """The instance, or None when there is none that ``viewer`` may see (None: no owner filter)."""
        if viewer is None:
            found = await self._backend.read(_GET_INSTANCE, {"p_instance_id": instance_id})
        else:
            query = select(journey_instances).where(
                _instances.instance_id == instance_id,
                visible_to(viewer, _instances.owner, _instances.tenant, _instances.shared_group),
            )
            found = await self._backend.query(query)
        return Instance(**found[0]) if found else None

    async def get_instances(self, instance_ids: Sequence[str]) -> list[Instance]:
        """The instances with these ids (missing ones are left out), in one query per thousand ids (on
        PostgreSQL one statement text whatever their number: see :func:`among`)."""
        ids = list(dict.fromkeys(instance_ids))
        found: list[Instance] = []
        for start in range(0, len(ids), 1000):
            chunk = ids[start : start + 1000]
            query = select(journey_instances).where(
                among(_instances.instance_id, chunk, postgres=self._backend.postgres)
            )
            found += [Instance(**row) for row in await self._backend.query(query)]
        return found

    async def list_instances(
        self,
        *,
        pattern: str | None = None,
        status: str | None = None,
        limit: int = 1000,
        where: InstanceFilter | None = None,
        newest_first: bool = False,
        viewer: Viewer | None = None,
    ) -> list[Instance]:
        """Instances of ``pattern`` in ``status`` and kept by ``where`` (user, stage, time), oldest first
        (or the ``limit`` newest, newest first); only those ``viewer`` may see when given."""
        order = (_instances.created_at, _instances.instance_id)
        query = select(journey_instances).order_by(*(c.desc() for c in order) if newest_first else order).limit(limit)
        if viewer is not None:
            query = query.where(visible_to(viewer, _instances.owner, _instances.tenant, _instances.shared_group))
        where = where or InstanceFilter()
        where = replace(where, pattern=pattern or where.pattern, status=status or where.status)
        query = where.apply(query)
        return [Instance(**row) for row in await self._backend.query(query)]

    async def ids_in_status(self, pattern: str, status: str) -> list[str]:
        """The ids of every instance of ``pattern`` in ``status``, oldest first."""
        rows = await self._backend.read(_IDS_IN_STATUS, {"p_pattern": pattern, "p_status": status})
        return [row["instance_id"] for row in rows]

    async def hold(self, instance_id: str, held: Mapping[str, Any]) -> None:
        """Store what holds the instance's continuation back (the agents no process that found it has, and the
        timer or answer they hold), for the views to show; :meth:`release` clears it."""
        await self._backend.execute(_HOLD, {"p_instance_id": instance_id, "p_held": dict(held)})

    async def release(self, instance_id: str) -> None:
        """Nothing holds the instance back any more (it went on); a write only where something did."""
        await self._backend.execute(_RELEASE, {"p_instance_id": instance_id})

    async def incidents(self, instance_ids: Sequence[str]) -> dict[str, int]:
        """How many incidents (failed timers) each of these instances has; those with none are left out."""
        if not instance_ids:
            return {}
        t = process_timers.c
        query = (
            select(t.instance_id, func.count().label("n"))
            .where(t.status == "failed", among(t.instance_id, list(instance_ids), postgres=self._backend.postgres))
            .group_by(t.instance_id)
        )
        return {row["instance_id"]: int(row["n"]) for row in await self._backend.query(query)}

    async def last_event_at(self, instance_ids: Sequence[str]) -> dict[str, datetime]:
        """When each of these instances last logged an event: its last change of any kind (an instance's
        ``updated_at`` moves with its status only). Those not found are left out. At most 1,000 ids (an
        operator's page of instances), each read through its number: no scan of the log."""
        if not instance_ids:
            return {}
        first, last = journey_events.alias("first_event"), journey_events.alias("last_event")
        latest = (
            select(last.c.created_at)
            .where(last.c.instance_no == first.c.instance_no)
            .order_by(last.c.seq.desc())
            .limit(1)
            .correlate(first)
            .scalar_subquery()
        )
        query = select(first.c.instance_id, latest.label("at")).where(
            is_first(first.c.seq), among(first.c.instance_id, list(instance_ids), postgres=self._backend.postgres)
        )
        return {row["instance_id"]: row["at"] for row in await self._backend.query(query)}

    async def count_by_status(self, *, pattern: str | None = None) -> dict[str, int]:
        query = select(_instances.status, func.count().label("n")).group_by(_instances.status)
        if pattern is not None:
            query = query.where(_instances.pattern == pattern)
        return {row["status"]: int(row["n"]) for row in await self._backend.query(query)}

    async def count_by_pattern_and_status(self, where: InstanceFilter) -> dict[tuple[str, str], int]:
        """(pattern, status) → how many of the instances ``where`` keeps."""
        query = select(_instances.pattern, _instances.status, func.count().label("n")).group_by(
            _instances.pattern, _instances.status
        )
        query = where.apply(query)
        return {(row["pattern"], row["status"]): int(row["n"]) for row in await self._backend.query(query)}


@dataclass(frozen=True, slots=True)
class InstanceFilter:
    """Which instances a listing keeps: pattern, status, user (a lifecycle journey's client, a process
    instance's business key), a lifecycle journey's current stage, and when it was created."""

    pattern: str | None = None
    status: str | None = None
    user_id: str | None = None
    stage: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    viewer: Viewer | None = None  # only the instances it may see (None: no owner filter)
    # Only the instances of these designs (with ``user_id``, indexed: a process's instances for a business key).
    journey_ids: tuple[str, ...] | None = None
    incidents: bool = False  # only the instances with an incident (a failed timer an operator's retry re-arms)

    def apply(self, query: Select[Any]) -> Select[Any]:
        if self.journey_ids is not None:
            query = query.where(_instances.journey_id.in_(self.journey_ids))
        if self.viewer is not None:
            query = query.where(visible_to(self.viewer, _instances.owner, _instances.tenant, _instances.shared_group))
        if self.pattern is not None:
            query = query.where(_instances.pattern == self.pattern)
        if self.status is not None:
            query = query.where(_instances.status == self.status)
        if self.user_id is not None:
            query = query.where(_instances.user_id == self.user_id)
        if self.stage is not None:
            states = lifecycle_journey_states.c
            in_stage = select(states.journey_id).where(states.current_stage == self.stage)
            query = query.where(_instances.instance_id.in_(in_stage))
        if self.created_after is not None:
            query = query.where(_instances.created_at >= self.created_after)
        if self.created_before is not None:
            query = query.where(_instances.created_at < self.created_before)
        if self.incidents:
            query = query.where(_instances.instance_id.in_(_WITH_INCIDENTS))
        return query


# The instances with an incident: a timer of theirs stands failed (found through the timers' status index).
_WITH_INCIDENTS = select(process_timers.c.instance_id).where(process_timers.c.status == "failed")

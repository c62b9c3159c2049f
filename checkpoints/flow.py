"""Instance-level flow control in the database: idempotent start keys, concurrency slots, queued starts.

Every guarantee is a unique constraint (see :mod:`checkpoints.schema.flow_tables`), written in the same
transaction as the instance it is about (``JourneyIndex.create_instance(also=...)``), so it holds across
processes without a lock: two starts with one key, or two starts taking the last slot of a concurrency
key, cannot both commit. A slot is released lazily: a slot whose holder has finished (or was never
registered) is freed by the next start that needs one, so no finishing path has to remember to free it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Executable, and_, bindparam, delete, insert, select, update

from checkpoints.backends.base import Backend, Params
from checkpoints.clock import Clock
from checkpoints.ownership import owned_key
from checkpoints.schema.flow_tables import journey_concurrency_slots, journey_queued_starts, journey_start_keys
from checkpoints.schema.tables import journey_instances

# An instance ended for good where it stood (``Instances.terminate``), and the event that says so.
TERMINATED = "terminated"
TERMINATED_EVENT = "journey.terminated"
# An instance in one of these statuses has ended: it no longer holds its concurrency slot.
ENDED_STATUSES = ("completed", "compensated", "cancelled", "failed", TERMINATED)

_keys, _slots, _queued, _instances = (
    journey_start_keys.c,
    journey_concurrency_slots.c,
    journey_queued_starts.c,
    journey_instances.c,
)
_LIVE_KEY = select(_keys.instance_id).where(
    and_(
        _keys.start_key == bindparam("p_start_key"), _keys.expires_at > bindparam("p_now", type_=_keys.expires_at.type)
    )
)
_DROP_EXPIRED_KEY = delete(journey_start_keys).where(
    and_(
        _keys.start_key == bindparam("p_start_key"),
        _keys.expires_at <= bindparam("p_now", type_=_keys.expires_at.type),
    )
)
_CLAIM_KEY = insert(journey_start_keys).values(
    start_key=bindparam("p_start_key", type_=_keys.start_key.type),
    instance_id=bindparam("p_instance_id", type_=_keys.instance_id.type),
    expires_at=bindparam("p_expires_at", type_=_keys.expires_at.type),
    created_at=bindparam("p_now", type_=_keys.created_at.type),
)
_HELD_SLOTS = (
    select(_slots.slot, _slots.instance_id, _instances.status)
    .select_from(journey_concurrency_slots.outerjoin(journey_instances, _instances.instance_id == _slots.instance_id))
    .where(_slots.concurrency_key == bindparam("p_key"))
)
_FREE_SLOT = delete(journey_concurrency_slots).where(
    and_(
        _slots.concurrency_key == bindparam("p_key"),
        _slots.slot == bindparam("p_slot"),
        _slots.instance_id == bindparam("p_holder"),
    )
)
_TAKE_SLOT = insert(journey_concurrency_slots).values(
    concurrency_key=bindparam("p_key", type_=_slots.concurrency_key.type),
    slot=bindparam("p_slot", type_=_slots.slot.type),
    instance_id=bindparam("p_instance_id", type_=_slots.instance_id.type),
    taken_at=bindparam("p_now", type_=_slots.taken_at.type),
)
_QUEUE = insert(journey_queued_starts).values(
    instance_id=bindparam("p_instance_id", type_=_queued.instance_id.type),
    concurrency_key=bindparam("p_key", type_=_queued.concurrency_key.type),
    limit=bindparam("p_limit", type_=_queued.limit.type),
    queued_at=bindparam("p_now", type_=_queued.queued_at.type),
)
_QUEUED = select(journey_queued_starts).order_by(_queued.queued_at, _queued.instance_id)
_SLOT_OF = select(_slots.concurrency_key, _slots.slot).where(_slots.instance_id == bindparam("p_instance_id"))


@dataclass(frozen=True, slots=True)
class QueuedStart:
    """A start waiting for a slot of its concurrency key."""

    instance_id: str
    concurrency_key: str
    limit: int
    queued_at: datetime


class FlowControl:
    """Start keys and concurrency slots: the SQL of instance-level flow control."""

    def __init__(self, backend: Backend, clock: Clock) -> None:
        self._backend = backend
        self._clock = clock

    # --- start keys ----------------------------------------------------------------------------------

    async def started_with(self, start_key: str) -> str | None:
        """The instance a start key names while its window lasts (None: unknown or expired). Start keys are
        their caller's own (:func:`checkpoints.ownership.owned_key`), here and in the methods below."""
        found = await self._backend.read(_LIVE_KEY, {"p_start_key": owned_key(start_key), "p_now": self._clock.now()})
        return str(found[0]["instance_id"]) if found else None

    async def drop_expired(self, start_key: str) -> None:
        """Forget ``start_key`` if its window has passed, so that a new start may take it."""
        await self._backend.write(
            [_DROP_EXPIRED_KEY], {"p_start_key": owned_key(start_key), "p_now": self._clock.now()}
        )

    def claim_key(self, start_key: str, instance_id: str, expires_at: datetime) -> tuple[Executable, Params]:
        """The statement that ties ``start_key`` to ``instance_id`` (for ``create_instance(also=...)``)."""
        params = {
            "p_start_key": owned_key(start_key),
            "p_instance_id": instance_id,
            "p_expires_at": expires_at,
            "p_now": self._clock.now(),
        }
        return _CLAIM_KEY, params

    # --- concurrency slots ---------------------------------------------------------------------------

    async def free_slot(self, key: str, limit: int) -> int | None:
        """The lowest slot of ``key`` below ``limit`` that nobody holds, after freeing the slots of
        finished holders; None when all ``limit`` are held by running instances."""
        held: set[int] = set()
        for row in await self._backend.read(_HELD_SLOTS, {"p_key": key}):
            if row["status"] is None or row["status"] in ENDED_STATUSES:
                params = {"p_key": key, "p_slot": row["slot"], "p_holder": row["instance_id"]}
                await self._backend.write([_FREE_SLOT], params)
            else:
                held.add(int(row["slot"]))
        return next((slot for slot in range(limit) if slot not in held), None)

    def take_slot(self, key: str, slot: int, instance_id: str) -> tuple[Executable, Params]:
        """The statement by which ``instance_id`` holds ``slot`` of ``key``."""
        return _TAKE_SLOT, {"p_key": key, "p_slot": slot, "p_instance_id": instance_id, "p_now": self._clock.now()}

    def queue(self, instance_id: str, key: str, limit: int) -> tuple[Executable, Params]:
        """The statement that queues ``instance_id`` until ``key`` has a free slot."""
        params = {"p_instance_id": instance_id, "p_key": key, "p_limit": limit, "p_now": self._clock.now()}
        return _QUEUE, params

    async def queued(self) -> list[QueuedStart]:
        """The queued starts, oldest first."""
        return [QueuedStart(**row) for row in await self._backend.read(_QUEUED)]

    def dequeue(self, queued: QueuedStart, slot: int, *, instance_status: str) -> list[Executable]:
        """Statements (bound, for ``EventLog.append(also=...)`` with the keyed dequeue event, so they apply
        once) that move a queued start onto ``slot`` and set its instance's status: the slot's unique key
        lets only one of two dispatchers commit."""
        now = self._clock.now()
        return [
            update(journey_instances)
            .where(and_(_instances.instance_id == queued.instance_id, _instances.status == "queued"))
            .values(status=instance_status, updated_at=now),
            delete(journey_queued_starts).where(_queued.instance_id == queued.instance_id),
            self.held_slot(queued.concurrency_key, slot, queued.instance_id),
        ]

    def held_slot(self, key: str, slot: int, instance_id: str) -> Executable:
        """A bound statement (for ``EventLog.append(also=...)``) by which ``instance_id`` holds ``slot`` of ``key``."""
        return insert(journey_concurrency_slots).values(
            concurrency_key=key, slot=slot, instance_id=instance_id, taken_at=self._clock.now()
        )

    def unqueue(self, instance_id: str) -> Executable:
        """A bound statement that takes ``instance_id`` off the queue (it ended before it started)."""
        return delete(journey_queued_starts).where(_queued.instance_id == instance_id)

    async def slot_of(self, instance_id: str) -> tuple[str, int] | None:
        """The concurrency key and slot ``instance_id`` holds, if any."""
        found = await self._backend.read(_SLOT_OF, {"p_instance_id": instance_id})
        return (str(found[0]["concurrency_key"]), int(found[0]["slot"])) if found else None

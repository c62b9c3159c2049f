"""Rebuilding derived views from the event log (``journeys rebuild``).

The instance index is derived from the log: an instance's first event records its design, pattern and
owner (``DESIGN_KEY``, ``PATTERN_KEY``, ``USER_KEY``); every append that sets its status records the
status on its last event (``STATUS_KEY``); a process migration records the design it moves the instance
to. An instance's row is then: registered when its first event was written, in the status its latest
such event recorded (``in_progress``, its status when registered, if none did), on the design its latest
migration recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, insert, select, update

from checkpoints.backends.base import Backend, Row
from checkpoints.events import DESIGN_KEY, PATTERN_KEY, STATUS_KEY, USER_KEY
from checkpoints.schema.tables import journey_events, journey_instances

_events, _instances = journey_events.c, journey_instances.c
_LOGGED = select(_events.instance_id).where(_events.seq == 1).order_by(_events.instance_id)
_EVENTS_OF = (
    select(_events.payload, _events.created_at)
    .where(_events.instance_id == bindparam("p_instance_id"))
    .order_by(_events.seq)
)
_ROW = select(journey_instances).where(_instances.instance_id == bindparam("p_instance_id"))
_ROW_VALUES = {
    "journey_id": bindparam("p_journey_id", type_=_instances.journey_id.type),
    "pattern": bindparam("p_pattern", type_=_instances.pattern.type),
    "user_id": bindparam("p_user_id", type_=_instances.user_id.type),
    "status": bindparam("p_status", type_=_instances.status.type),
    "created_at": bindparam("p_created_at", type_=_instances.created_at.type),
    "updated_at": bindparam("p_updated_at", type_=_instances.updated_at.type),
}
_INSERT = insert(journey_instances).values(instance_id=bindparam("p_instance_id"), **_ROW_VALUES)
_UPDATE = update(journey_instances).where(_instances.instance_id == bindparam("p_instance_id")).values(**_ROW_VALUES)
_COMPARED = ("journey_id", "pattern", "user_id", "status")


@dataclass(frozen=True, slots=True)
class Rebuilt:
    """What a rebuild did: the instances in the log, and the ids of those whose row it wrote."""

    instances: int
    corrected: list[str]
    underivable: list[str]  # logged before their first event recorded their row: left as they are


def derived_row(events: list[Row]) -> dict[str, Any] | None:
    """The index row of an instance, from its events in order (None: the first event predates the keys)."""
    first = events[0]["payload"] or {}
    if PATTERN_KEY not in first:
        return None
    row = {
        "journey_id": str(first[DESIGN_KEY]),
        "pattern": str(first[PATTERN_KEY]),
        "user_id": str(first[USER_KEY]),
        "status": "in_progress",
        "created_at": events[0]["created_at"],
        "updated_at": events[0]["created_at"],
    }
    for event in events[1:]:
        payload = event["payload"] or {}
        if STATUS_KEY in payload:
            row["status"], row["updated_at"] = str(payload[STATUS_KEY]), event["created_at"]
        if DESIGN_KEY in payload:
            row["journey_id"] = str(payload[DESIGN_KEY])
    return row


async def rebuild_instance_index(backend: Backend) -> Rebuilt:
    """Write every instance's index row as its events say: a missing row is inserted, a differing one
    updated, one that agrees left alone (an offline repair: a few queries per instance)."""
    corrected: list[str] = []
    underivable: list[str] = []
    logged = [row["instance_id"] for row in await backend.query(_LOGGED)]
    for instance_id in logged:
        derived = derived_row(await backend.query(_EVENTS_OF, {"p_instance_id": instance_id}))
        if derived is None:
            underivable.append(instance_id)
            continue
        found = await backend.query(_ROW, {"p_instance_id": instance_id})
        if found and all(found[0][name] == derived[name] for name in _COMPARED):
            continue
        params = {"p_instance_id": instance_id, **{f"p_{name}": value for name, value in derived.items()}}
        await backend.write([_UPDATE if found else _INSERT], params)
        corrected.append(instance_id)
    return Rebuilt(len(logged), corrected, underivable)

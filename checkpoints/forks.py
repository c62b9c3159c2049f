"""The rows a fork of a journey writes: copies of the source's events, numbered after the fork's first event,
in the transaction that registers the fork (``JourneyIndex.create_instance(also=...)``), so a fork is either
registered with its whole history or not at all."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Executable, bindparam, insert

from checkpoints.backends.base import Params
from checkpoints.clock import Clock
from checkpoints.encryption import Sealer
from checkpoints.events import EVENT_VALUES, NewEvent, stamped
from checkpoints.events import _values as event_values  # an append's row values, one spelling
from checkpoints.schema.tables import journey_events

FORKED_FROM = "journey.forked_from"  # a fork's own first event, after the copies of its source's

_INSERT_AT = insert(journey_events).values(seq=bindparam("p_seq", type_=journey_events.c.seq.type), **EVENT_VALUES)


def copied_events(
    instance_id: str,
    events: Sequence[NewEvent],
    *,
    first_seq: int,
    status: str | None,
    clock: Clock,
    sealer: Sealer,
) -> list[tuple[Executable, Params]]:
    """The statements that append ``events`` to ``instance_id``'s log from ``first_seq`` on, the last one
    recording ``status`` (as :meth:`EventLog.append` would), for a transaction of the caller's."""
    now = clock.now()
    return [
        (_INSERT_AT, {**event_values(instance_id, event, now, sealer), "p_seq": first_seq + offset})
        for offset, event in enumerate(stamped(events, status))
    ]

"""Writers appending to one instance's log at once race for its next seq; the loser goes again.

One run per journey thread makes that rare (an append racing a status or inbox write), but the log
must stay gap-free and lose nothing however many writers there are.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql import Executable

if TYPE_CHECKING:  # events.py uses this module
    from checkpoints.events import EventLog, NewEvent

SEQ_ATTEMPTS = 30


async def after_lost_race(attempt: int) -> None:
    """Back off a little, more each time and with jitter, so the racing writers spread out."""
    await asyncio.sleep(random.uniform(0, 0.001 * (attempt + 1)))


class _Unclaimed(Exception):
    """The claim changed no row: roll the transaction back."""


async def claimed_with_event(
    engine: AsyncEngine,
    events: EventLog,
    claim: Executable,
    statements: Sequence[Executable],
    instance_id: str,
    event: NewEvent,
) -> bool:
    """``claim`` (a conditional update that must change exactly one row), ``statements`` and the keyed
    ``event`` that logs them, in one transaction: a change and its event commit together or not at all.
    False, with nothing written, when ``claim`` changed no row; a concurrent append that took the event's
    sequence number rolls it all back, and it goes again."""
    for attempt in range(SEQ_ATTEMPTS):
        try:
            async with engine.begin() as conn:
                if (await conn.execute(claim)).rowcount != 1:
                    raise _Unclaimed
                for statement in statements:
                    await conn.execute(statement)
                await events.append_in(conn, [(instance_id, event)])
            return True
        except _Unclaimed:
            return False
        except IntegrityError:
            if attempt == SEQ_ATTEMPTS - 1:
                raise
            await after_lost_race(attempt)
    raise AssertionError("unreachable")

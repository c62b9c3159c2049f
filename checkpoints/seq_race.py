"""Writers appending to one instance's log at once race for its next seq; the loser goes again.

One run per journey thread makes that rare (an append racing a status or inbox write), but the log
must stay gap-free and lose nothing however many writers there are. On PostgreSQL two transactions that
take the same rows in opposite orders (a cancel writing its event and then its waits, a timer batch its waits
and then their events) can also deadlock: the server rolls one back whole, and that one goes again too.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
from collections.abc import Awaitable, Callable
from typing import TypeVar

SEQ_ATTEMPTS = 30
T = TypeVar("T")
# PostgreSQL's verdicts on a transaction it rolled back whole for racing another: a unique key taken first,
# a deadlock, a serialization failure.
_RACE_STATES = frozenset({"23505", "40P01", "40001"})


def lost_race(error: BaseException) -> bool:
    """Whether ``error`` ended a transaction that lost a race and was rolled back whole, so going again is
    safe: a unique key another writer took first (the log's next seq), a deadlock or a serialization failure.
    Raised through SQLAlchemy (``orig`` holding the driver's error) or by the driver. Any other integrity
    error (a NULL, a check, a foreign key) would fail the same way again: it is the caller's at once."""
    driver_error = getattr(error, "orig", None) or error
    state = getattr(driver_error, "sqlstate", None)
    if state is not None:
        return state in _RACE_STATES
    # SQLite gives no SQLSTATE; its unique and primary keys both say so in the message.
    return isinstance(driver_error, sqlite3.IntegrityError) and str(driver_error).startswith("UNIQUE constraint")


async def after_lost_race(attempt: int) -> None:
    """Back off a little, more each time and with jitter, so the racing writers spread out."""
    await asyncio.sleep(random.uniform(0, 0.001 * (attempt + 1)))


async def again_if_lost(transaction: Callable[[], Awaitable[T]], attempts: int = SEQ_ATTEMPTS) -> T:
    """``transaction()``, run again (after :func:`after_lost_race`) each time it loses a race (:func:`lost_race`):
    it was rolled back whole, so going again is safe. Its own errors, and the last loss, reach the caller."""
    for attempt in range(attempts):
        try:
            return await transaction()
        except Exception as error:
            if not lost_race(error) or attempt == attempts - 1:
                raise
            await after_lost_race(attempt)
    raise AssertionError("unreachable")

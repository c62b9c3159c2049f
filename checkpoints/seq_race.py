"""Writers appending to one instance's log at once race for its next seq; the loser goes again.

One run per journey thread makes that rare (an append racing a status or inbox write), but the log
must stay gap-free and lose nothing however many writers there are.
"""

from __future__ import annotations

import asyncio
import random

SEQ_ATTEMPTS = 30


async def after_lost_race(attempt: int) -> None:
    """Back off a little, more each time and with jitter, so the racing writers spread out."""
    await asyncio.sleep(random.uniform(0, 0.001 * (attempt + 1)))

"""Background tasks bound to a block of code: started as it opens, cancelled (and waited for) as it ends."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from typing import Any


async def stopped(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait until it has ended, its cancellation not raised here."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@contextlib.asynccontextmanager
async def in_background(work: Coroutine[Any, Any, Any], name: str) -> AsyncIterator[asyncio.Task[Any]]:
    """``work`` runs as a task named ``name`` for the block, which ends it (:func:`stopped`) as it closes."""
    task = asyncio.create_task(work, name=name)
    try:
        yield task
    finally:
        await stopped(task)

"""The persistence seam: one object that owns the checkpointer and our tables for a store URL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from langgraph.checkpoint.base import BaseCheckpointSaver
from sqlalchemy.ext.asyncio import AsyncEngine

from checkpoints.clock import Clock, SystemClock
from checkpoints.database import create_engine_for
from checkpoints.events import EventLog
from checkpoints.index import JourneyIndex
from checkpoints.migrations import migrate
from checkpoints.savers import open_saver
from checkpoints.url import StoreURL, parse_store_url


@dataclass(frozen=True, slots=True)
class Store:
    url: StoreURL
    saver: BaseCheckpointSaver[str]
    engine: AsyncEngine
    events: EventLog
    index: JourneyIndex
    clock: Clock


@asynccontextmanager
async def open_store(url: str, *, clock: Clock | None = None, pool_size: int = 10) -> AsyncIterator[Store]:
    """Open the checkpointer and our tables on the database ``url`` names; migrate; close on exit."""
    parsed = parse_store_url(url)
    clock = clock or SystemClock()
    engine = create_engine_for(parsed, pool_size=pool_size)
    try:
        await migrate(engine)
        async with open_saver(parsed, pool_size=pool_size) as saver:
            yield Store(parsed, saver, engine, EventLog(engine, clock), JourneyIndex(engine, clock), clock)
    finally:
        await engine.dispose()

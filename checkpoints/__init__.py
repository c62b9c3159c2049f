"""Persistence: the official checkpointer by URL, our tables and migrations, and the event log."""

from checkpoints.clock import Clock, SystemClock, VirtualClock
from checkpoints.errors import (
    ConcurrentUpdateError,
    DuplicateDesignError,
    DuplicateInstanceError,
    JourneyError,
    StoreError,
    UnsupportedStoreURLError,
)
from checkpoints.events import Event, EventLog, NewEvent
from checkpoints.index import Design, Instance, JourneyIndex
from checkpoints.store import Store, open_store
from checkpoints.url import DEFAULT_STORE_URL, StoreURL, parse_store_url

__all__ = [
    "DEFAULT_STORE_URL",
    "Clock",
    "ConcurrentUpdateError",
    "Design",
    "DuplicateDesignError",
    "DuplicateInstanceError",
    "Event",
    "EventLog",
    "Instance",
    "JourneyError",
    "JourneyIndex",
    "NewEvent",
    "Store",
    "StoreError",
    "StoreURL",
    "SystemClock",
    "UnsupportedStoreURLError",
    "VirtualClock",
    "open_store",
    "parse_store_url",
]

"""Persistence: the official checkpointer by URL, our tables and migrations, and the event log.

The names below are imported on first use (PEP 562): importing one module of the package (``checkpoints.errors``
for a command's ``--help``) does not import the store, SQLAlchemy and LangGraph with it.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

_MODULES = {
    "checkpoints.clock": ("Clock", "SystemClock", "VirtualClock"),
    "checkpoints.errors": (
        "ConcurrentUpdateError",
        "DuplicateDesignError",
        "DuplicateInstanceError",
        "JourneyError",
        "StoreError",
        "UnsupportedStoreURLError",
    ),
    "checkpoints.events": ("Event", "EventLog", "NewEvent"),
    "checkpoints.index": ("Design", "Instance", "JourneyIndex"),
    "checkpoints.store": ("Store", "open_store"),
    "checkpoints.url": ("DEFAULT_STORE_URL", "StoreURL", "parse_store_url"),
}
_MODULE_OF = {name: module for module, names in _MODULES.items() for name in names}

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


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'checkpoints' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # once: later reads find it without this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

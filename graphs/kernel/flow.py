"""Instance-level flow control, for every pattern: idempotent starts and concurrency keys.

- **Start keys**: a start given ``start_key`` within ``window`` of an earlier start with the same key
  answers the journey that start began instead of beginning a second one (DBOS's workflow id, Hatchet's
  and Temporal's workflow-id reuse). The key is a unique row in the database, written with the instance,
  so this holds across processes.
- **Deadlines** (a spec's ``deadline={"after": "P3D", "on_expiry": "fail"}``): a durable timer armed
  before the instance is registered, fired by the scheduler like every timer (so it survives restarts and
  is never early); when it fires before the journey ends, the pattern fails it or a saga compensates.
- **Concurrency keys** (a spec's ``concurrency={"key": "$.tenant", "limit": 2, "on_limit": "queue"}``):
  at most ``limit`` journeys per value of ``key`` (a path into the start input) run at once. Above it,
  ``on_limit="queue"`` (the default, as DBOS queues and Hatchet's ``GROUP_ROUND_ROBIN`` do) registers the
  journey as ``queued``; it starts, oldest first, when a slot frees (:meth:`Instances.dispatch_queued`,
  run by every scheduler pass and by ``recover``). ``on_limit="reject"`` refuses the start with
  :class:`ConcurrencyLimitError` and registers nothing.
"""

from __future__ import annotations

from typing import ClassVar

from checkpoints.errors import ErrorCategory, JourneyError
from graphs.errors import InvalidMoveError
from nodes.flow import ConcurrencySpec, DeadlineSpec, StartControls

__all__ = [
    "ConcurrencyLimitError",
    "ConcurrencySpec",
    "DeadlineSpec",
    "ExistingStart",
    "JourneyQueuedError",
    "StartControls",
]

QUEUED = "queued"
DEQUEUED = "journey.dequeued"
DEADLINE_PASSED = "journey.deadline_passed"
DEADLINE_PURPOSE = "deadline"  # the purpose of a deadline's row among the durable timers


class ConcurrencyLimitError(JourneyError):
    """The journey's concurrency key has no free slot, and its spec says to refuse starts above the limit."""

    category: ClassVar[ErrorCategory] = "conflict"


class ExistingStart(Exception):  # not an error: control flow from the kernel to its patterns
    """A start whose start key names a journey started within the key's window: answer that journey."""

    def __init__(self, instance_id: str) -> None:
        super().__init__(instance_id)
        self.instance_id = instance_id


class JourneyQueuedError(InvalidMoveError):
    """The journey is queued behind its concurrency key's limit: it cannot move until it starts."""

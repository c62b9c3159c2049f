"""Instance-level flow control, for every pattern: idempotent starts and concurrency keys.

- **Start keys**: a start given ``start_key`` within ``window`` of an earlier start with the same key
  answers the journey that start began instead of beginning a second one (DBOS's workflow id, Hatchet's
  and Temporal's workflow-id reuse). The key is a unique row in the database, written with the instance,
  so this holds across processes.
- **Deadlines** (a spec's ``deadline={"after": "P3D", "on_expiry": "fail"}``): a durable timer armed
  before the instance is registered, fired by the scheduler like every timer (so it survives restarts and
  is never early); when it fires before the journey ends, the pattern fails it or a saga compensates.
- **Concurrency keys** (a spec's ``concurrency={"key": "$.tenant", "limit": 2, "on_limit": "queue"}``):
  at most ``limit`` journeys of the spec's journey type (``"scope": "shared"``: of every shared limit on the key
  path) per value of ``key`` (a path into the start input) run at once. Above it,
  ``on_limit="queue"`` (the default, as DBOS queues and Hatchet's ``GROUP_ROUND_ROBIN`` do) registers the
  journey as ``queued``; it starts, oldest first, when a slot frees (:meth:`Instances.dispatch_queued`,
  run by every scheduler pass and by ``recover``). ``on_limit="reject"`` refuses the start with
  :class:`ConcurrencyLimitError` and registers nothing.
"""

from __future__ import annotations

from graphs.errors import ConcurrencyLimitError, ExistingStart, JourneyQueuedError
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

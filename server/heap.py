"""The garbage collector in a long-lived server process (``journeys serve``, ``journeys worker``)."""

from __future__ import annotations

import gc

# Container allocations between two young-generation collections (CPython's default: 700). A run allocates
# thousands of short-lived containers that reference counting frees anyway; at 700 the worker collected
# every few runs, traversing the survivors each time (0.15 ms of CPU per 8-step journey); at 7,000 the
# same journeys take about one collection per hundred runs (0.02 ms each).
YOUNG_THRESHOLD = 7_000


def freeze_startup_heap() -> None:
    """Keep the objects alive at the end of startup (modules, compiled statements, pools) out of every later
    collection, and collect the young generation less often (:data:`YOUNG_THRESHOLD`). A full collection
    otherwise traverses all of them while every run on the event loop waits: in a worker, a pause of about
    100 ms every few hundred journeys. Call once, when startup is done."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)

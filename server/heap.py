"""The garbage collector in a long-lived server process (``journeys serve``, ``journeys worker``)."""

from __future__ import annotations

import gc


def freeze_startup_heap() -> None:
    """Keep the objects alive at the end of startup (modules, compiled statements, pools) out of every later
    collection. A full collection otherwise traverses all of them while every run on the event loop waits:
    in a worker, a pause of about 100 ms every few hundred journeys. Call once, when startup is done."""
    gc.collect()
    gc.freeze()

"""The server's run store: :class:`checkpoints.runs.RunStore`, with its refusals as HTTP problems.

The records and every statement behind them live in :mod:`checkpoints.runs`; this layer only reports a
refused thread or run the way the Agent Server API does (409 ``ThreadExists`` / ``ThreadBusy``, 422
``UnsupportedMultitaskStrategy``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from checkpoints import runs as records
from checkpoints.errors import ThreadBusyError, ThreadExistsError, UnsupportedMultitaskStrategyError
from checkpoints.ownership import Owner
from checkpoints.runs import (
    ACTIVE,
    GROUPS,
    NO_STATE,
    RUN_CHANNEL,
    STRATEGIES,
    TERMINAL,
    Enqueue,
    RunRow,
    ThreadRow,
    ThreadTTL,
)
from server.problems import ApiError

__all__ = [
    "ACTIVE",
    "GROUPS",
    "NO_STATE",
    "RUN_CHANNEL",
    "STRATEGIES",
    "TERMINAL",
    "Enqueue",
    "RunRow",
    "RunStore",
    "ThreadRow",
    "ThreadTTL",
]

_PROBLEMS: dict[type[Exception], tuple[int, str]] = {
    ThreadExistsError: (409, "ThreadExists"),
    ThreadBusyError: (409, "ThreadBusy"),
    UnsupportedMultitaskStrategyError: (422, "UnsupportedMultitaskStrategy"),
}


@contextmanager
def _as_problem() -> Iterator[None]:
    try:
        yield
    except (ThreadExistsError, ThreadBusyError, UnsupportedMultitaskStrategyError) as exc:
        status, code = _PROBLEMS[type(exc)]
        raise ApiError(status, code, exc.message, **exc.details) from exc


class RunStore(records.RunStore):
    """The run records, refusing threads and runs with the API's problem codes."""

    async def create_thread(
        self,
        thread_id: str | None,
        metadata: Mapping[str, Any],
        owner: Owner | str | None,
        *,
        if_exists: str = "raise",
        ttl: ThreadTTL | None = None,
        default_ttl: bool = True,
    ) -> ThreadRow:
        with _as_problem():
            return await super().create_thread(
                thread_id, metadata, owner, if_exists=if_exists, ttl=ttl, default_ttl=default_ttl
            )

    async def create_run(self, **options: Any) -> RunRow:
        with _as_problem():
            return await super().create_run(**options)

    async def delete_thread(self, thread_id: str, *, runs: bool = True) -> None:
        with _as_problem():
            await super().delete_thread(thread_id, runs=runs)

"""What the routers need, opened once in the app's lifespan and reached through ``request.app.state``."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from fastapi import Request

from graphs.runtime import JourneyRuntime
from server.executor import EmbeddedRunner, RunExecutor
from server.runs import RunRow, RunStore
from server.settings import Settings
from server.watch import RunWatch


@dataclass
class ServerServices:
    settings: Settings
    runtime: JourneyRuntime
    runs: RunStore
    watch: RunWatch
    executor: RunExecutor
    embedded: EmbeddedRunner | None
    queue_app: Any = None  # a procrastinate App in distributed mode

    async def submit(self, run: RunRow) -> None:
        if self.embedded is not None:
            self.embedded.submit(run)
            return
        from server.queue import defer_run

        await defer_run(self.queue_app, run.run_id, run.thread_id)

    async def cancel(self, run: RunRow) -> None:
        """A pending run is cancelled at once; a running one is stopped when it runs in this process."""
        if run.status == "pending":
            await self.runs.finish(run.run_id, "interrupted", {"error": "Cancelled", "message": "cancelled"})
            self.watch.changed(run.run_id)
            return
        if self.embedded is not None and self.embedded.cancel(run):
            await asyncio.sleep(0)


def services(request: Request) -> ServerServices:
    found: ServerServices = request.app.state.services
    return found

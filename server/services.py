"""What the routers need, opened once in the app's lifespan and reached through ``request.app.state``."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from fastapi import Request

from graphs.runtime import JourneyRuntime
from server.executor import EmbeddedRunner, RunExecutor
from server.runs import Enqueue, RunRow, RunStore
from server.settings import Settings
from server.watch import RunWatch


@dataclass
class ServerServices:
    """What the server opens at startup and the routers use: settings, runtime, runs and the executor."""

    settings: Settings
    runtime: JourneyRuntime
    runs: RunStore
    watch: RunWatch
    executor: RunExecutor
    embedded: EmbeddedRunner | None
    queue_app: Any = None  # a procrastinate App in distributed mode

    def enqueue(self) -> Enqueue | None:
        """How a new run reaches the queue in its creating transaction (distributed mode); None: embedded."""
        if self.queue_app is None:
            return None
        from server.queue import enqueuer

        return enqueuer(self.queue_app)

    def submit(self, run: RunRow) -> None:
        """After the run is committed: embedded mode starts executing it (distributed mode queued it already)."""
        if self.embedded is not None:
            self.embedded.submit(run)

    async def cancel(self, run: RunRow) -> None:
        """A queued run is cancelled at once; a running one is stopped, in this process or in a worker."""
        if self.queue_app is not None and run.job_id is not None:
            from server.queue import abort_run, cancel_queued

            # Asked of the queue, not of our copy of the status: a worker may have taken the job since.
            if not await cancel_queued(self.queue_app, run.job_id):
                await self.runs.request_cancel(run.run_id)  # holds even if its worker dies before stopping it
                await abort_run(self.queue_app, run.job_id)  # its executor marks the run interrupted
                return
        elif run.status != "pending":
            if self.embedded is not None and self.embedded.cancel(run):
                await asyncio.sleep(0)
            return
        await self.runs.finish(run.run_id, "interrupted", {"error": "Cancelled", "message": "cancelled"})
        self.watch.changed(run.run_id)


def services(request: Request) -> ServerServices:
    found: ServerServices = request.app.state.services
    return found

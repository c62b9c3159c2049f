"""The FastAPI application: the Agent Server API subset ``langgraph-sdk`` uses, and the journey endpoints.

    app = create_app(Settings(database_url="sqlite:///journeys.db"))

The lifespan opens the :class:`JourneyRuntime` (one store, one checkpointer, one pool) and the run queue
(:mod:`server.queues`): in embedded mode it runs runs and timers in this process; in distributed mode it
only queues them for workers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Annotated, Any

from fastapi import FastAPI, Query
from fastapi.middleware.cors import CORSMiddleware

from agents.guide_model import load_guide_model
from checkpoints.clock import Clock
from checkpoints.retention import periodically
from graphs.runtime import JourneyRuntime
from server.api import assistants, errors, inbox, journeys, metrics, runs, threads
from server.api import crons as crons_api
from server.api import store as store_api
from server.auth import resolve_authenticator
from server.crons import CronService
from server.info import ServerInfo, server_info
from server.openapi import install_openapi
from server.problems import RedactedJSONResponse, install_problem_handlers
from server.queues import open_queue
from server.routing import JourneysApp
from server.runs.executor import RunExecutor
from server.runs.store import RunRow, RunStore
from server.runs.watch import RunWatch
from server.services import ServerServices
from server.settings import Settings
from server.thread_ends import ThreadTTLSweep
from server.ui.pages import install_ui


def create_app(
    settings: Settings | None = None, *, clock: Clock | None = None, runtime_options: dict[str, Any] | None = None
) -> FastAPI:
    settings = settings or Settings()
    # Resolved now, so a bad guide model stops the server before it serves.
    guide_model = load_guide_model(settings.guide_model) if settings.guide_model else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            runtime = await stack.enter_async_context(
                JourneyRuntime.open(
                    settings.database_url,
                    clock=clock,
                    guide_model=guide_model,
                    **{
                        "retention": settings.retention,
                        "lock_timeout": settings.lock_timeout,
                        **(runtime_options or {}),
                    },
                )
            )
            run_store = RunStore(
                runtime.store.backend, runtime.store.clock, runtime.store.sealer, thread_ttl=settings.thread_ttl
            )
            watch = RunWatch()
            if settings.execution == "embedded" and settings.thread_ttl_sweep_every > 0:  # else: the workers'
                sweep = ThreadTTLSweep(runtime, run_store, changed=watch.changed)
                await stack.enter_async_context(periodically(settings.thread_ttl_sweep_every, sweep.run, "thread-ttl"))
            executor = RunExecutor(runtime, run_store, notify=watch, durability=settings.durability)
            crons = CronService(runtime, run_store, agents=settings.holds_agents)
            serving = asyncio.Event()  # the scheduler may fire a cron before the queue is handed over

            async def submit(run: RunRow) -> None:
                await serving.wait()
                app.state.services.submit(run)

            if settings.execution == "embedded":  # crons fire in this process's timer scheduler
                crons.serve_firings(lambda: None, submit)
            else:  # the workers hold the agents: the process work a call stores is theirs to run (startup's too)

                async def hand_off(instance_id: str) -> None:
                    await serving.wait()
                    await app.state.services.hand_off(instance_id)

                runtime.processes.hand_off = hand_off
            queue = await stack.enter_async_context(open_queue(settings, executor, watch))
            app.state.services = ServerServices(settings, runtime, run_store, watch, executor, queue, crons)
            runtime.stop_runs = app.state.services.stop_runs  # a terminate stops the journey's run first
            serving.set()
            yield

    app = JourneysApp(
        title="journeys",
        version="0.1.0",
        description="Durable journey orchestration on LangGraph: the Agent Server API subset langgraph-sdk uses, "
        "and the journey endpoints beside it. Errors are application/problem+json.",
        lifespan=lifespan,
        default_response_class=RedactedJSONResponse,  # no secrets or personal data in any answer
    )
    app.state.settings = settings
    app.state.authenticator = resolve_authenticator(settings)  # a bad --auth stops the server before it serves
    # Every route but /ok and /info is a GuardedRoute taking a require(scope) dependency: it authorizes the caller,
    # then reads and checks the body within settings.limits (server/input_guard.py), before FastAPI parses it.
    install_problem_handlers(app)
    # A request is matched against the routes in this order (FastAPI tries each in turn, twice per request):
    # the runs come first, as the path every journey takes; no route of the others matches a path of theirs.
    # Served as built at import (server/routing.py): include_router would build each again on the first request.
    for router in (
        runs.router,
        assistants.router,
        threads.router,
        journeys.router,
        inbox.router,
        metrics.router,
        store_api.router,
        crons_api.router,
    ):
        app.serve_routes(router)
    install_openapi(app)  # the document states the input guard's rules too
    if settings.cors_origins:  # off by default: only the listed origins' pages may read answers
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["*"],
            allow_headers=["*"],
            # The JS client reads a new run's id from Content-Location, and an assistant search's next page.
            expose_headers=["Content-Location", "Location", "X-Pagination-Next", "X-Pagination-Total"],
        )
    install_ui(app)  # the dashboard at /ui (HTML; not in the OpenAPI document)

    @app.get(
        "/ok",
        tags=["health"],
        summary="Liveness; with check_db=1, also whether the database answers",
        responses=errors(422, 503),
    )
    async def ok(check_db: Annotated[int, Query(ge=0, le=1)] = 0) -> dict[str, bool]:
        if check_db:  # as the Agent Server's: a readiness probe that fails (503) while the database is away
            await app.state.services.runtime.store.backend.ping()
        return {"ok": True}

    # Public like /ok: clients (agent-chat-ui, the JS SDK) probe it before sending any key.
    @app.get("/info", tags=["health"], summary="What this server is and which Agent Server features it has")
    async def info() -> ServerInfo:
        return server_info()

    return app

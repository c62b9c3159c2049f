"""Routes built once per process and served by every app :func:`server.app.create_app` makes.

FastAPI (0.165) includes a router lazily: ``include_router`` records the inclusion, and the app's first
request builds every route of it again (dependants, pydantic TypeAdapters: 0.25-0.8 CPU-s for our routes), with
what the app gives its routes (the default response class, and itself as the provider of
``dependency_overrides``). Our routers are made with both already (:func:`api_router`), so an app serves the
routes they built at import as they are (:meth:`JourneysApp.serve_routes`) and builds nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from fastapi import APIRouter, FastAPI
from starlette.types import Receive, Scope, Send

from server.problems import RedactedJSONResponse

_serving: ContextVar[FastAPI] = ContextVar("journeys_serving_app")


class _ServingAppOverrides:
    """The ``dependency_overrides`` of the app serving the current request: FastAPI reads them from the provider
    a route was built with, and our routes are built once for every app."""

    @property
    def dependency_overrides(self) -> dict[Callable[..., Any], Callable[..., Any]]:
        app = _serving.get(None)
        return app.dependency_overrides if app is not None else {}


SERVING_APP_OVERRIDES = _ServingAppOverrides()


def api_router(**options: Any) -> APIRouter:
    """An APIRouter whose routes are built as an app's own would be: answers redacted
    (:class:`RedactedJSONResponse`, no secrets or personal data in any answer) and the serving app's
    ``dependency_overrides`` applied. It has no lifespan of its own: the app's opens what the routes use."""
    if {"lifespan", "on_startup", "on_shutdown"} & options.keys():
        raise TypeError("a router served by JourneysApp.serve_routes has no lifespan: give it to the app")
    return APIRouter(
        default_response_class=RedactedJSONResponse, dependency_overrides_provider=SERVING_APP_OVERRIDES, **options
    )


class JourneysApp(FastAPI):
    """The server's FastAPI app: it serves the routes of :func:`api_router` routers without building them again."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        token = _serving.set(self)  # the routes read this app's dependency_overrides through it
        try:
            await super().__call__(scope, receive, send)
        finally:
            _serving.reset(token)

    def serve_routes(self, router: APIRouter) -> None:
        """Serve ``router``'s routes after those already served, as ``include_router`` without a prefix would."""
        if router.dependency_overrides_provider is not SERVING_APP_OVERRIDES:
            raise TypeError(f"{router!r} was not made by api_router: include it with include_router")
        self.router.routes.extend(router.routes)

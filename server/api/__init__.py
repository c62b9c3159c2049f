"""One APIRouter per resource."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from server.input_guard import GuardedRoute
from server.problems import ApiError, Problem

_PROBLEM = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the problem responses a route can give."""
    described = {
        400: "Malformed request",
        401: "No or unknown API key",
        403: "Missing scope or not allowed",
        404: "Not found",
        409: "Conflict with the current state",
        413: "Request body over the size limit",
        422: "Invalid input",
        424: "An agent or step the operation depended on failed",
        503: "The database is not reachable now: retry after the Retry-After seconds",
    }
    chosen = statuses or (400, 401, 403, 404, 409, 413, 422, 424, 503)
    return {s: {"model": Problem, "description": described[s], "content": _PROBLEM} for s in chosen}


class ViewRoute(GuardedRoute):
    """A route answering with an orchestrator's view: serialized with ``exclude_unset``, so a key the view
    leaves out (e.g. ``failed_step`` while nothing failed) stays out instead of coming back as null."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **options: Any) -> None:
        super().__init__(path, endpoint, **{**options, "response_model_exclude_unset": True})


def one_of_configurable_and_context(
    config: dict[str, Any] | None, context: dict[str, Any] | None
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """``config`` and ``context`` as the Agent Server takes them: refused (400) when both ``config.configurable``
    and ``context`` are given (context, LangGraph 0.6's, replaces configurable, and which of the two a graph reads
    would be left to chance); when only one is, the other is made a copy of it, so a graph reading either finds
    what the client gave."""
    configurable = (config or {}).get("configurable")
    if configurable and context:
        raise ApiError(
            400,
            "ConfigurableAndContext",
            "give either config.configurable or context, not both: prefer context alone (it replaces configurable "
            "since LangGraph 0.6)",
        )
    if configurable:
        return config, dict(configurable)
    if context:
        return {**(config or {}), "configurable": dict(context)}, context
    return config, context

"""Assistants: the built-in patterns (system assistants) and the ones callers create on their graphs, with
versions, config and context of their own."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Depends, Query, Response
from fastapi.responses import JSONResponse
from pydantic import Field

from checkpoints.assistants import AssistantRow
from server.api import errors, one_of_configurable_and_context
from server.auth import Principal, require
from server.input_guard import GuardedRoute
from server.models import (
    AssistantCount,
    AssistantCreate,
    AssistantOut,
    AssistantSearch,
    AssistantUpdate,
    AssistantVersionOut,
    GraphOut,
    GraphSchemaOut,
    SetLatest,
    VersionsQuery,
    kept,
    pagination_headers,
    sorted_page,
)
from server.routing import api_router
from server.services import ResolvedAssistant, ServerServices, services, system_metadata

router = api_router(prefix="/assistants", tags=["assistants"], responses=errors(), route_class=GuardedRoute)
Reader = Annotated[Principal, Depends(require("read"))]
Writer = Annotated[Principal, Depends(require("runs"))]
Services = Annotated[ServerServices, Depends(services)]
EPOCH = "2026-01-01T00:00:00+00:00"


def assistant_view(assistant: ResolvedAssistant) -> dict[str, Any]:
    if assistant.row is not None:
        return row_view(assistant.row)
    pattern = assistant.pattern
    return {
        "assistant_id": pattern.assistant_id,
        "graph_id": pattern.assistant_id,
        "config": {},
        "context": {},
        "created_at": EPOCH,
        "updated_at": EPOCH,
        "metadata": system_metadata(pattern),
        "version": 1,
        "name": pattern.assistant_id,
        "description": pattern.description,
    }


def row_view(row: AssistantRow) -> dict[str, Any]:
    return {
        "assistant_id": row.assistant_id,
        "graph_id": row.graph_id,
        "config": row.config,
        "context": row.context,
        "created_at": row.created_at.isoformat(),
        "updated_at": row.updated_at.isoformat(),
        "metadata": row.metadata,
        "version": row.version,
        "name": row.name,
        "description": row.description,
    }


@router.post("", response_model=AssistantOut, summary="Create an assistant on a graph")
async def create_assistant(body: AssistantCreate, caller: Writer, svc: Services) -> dict[str, Any]:
    config, context = one_of_configurable_and_context(body.config, body.context)
    created = await svc.create_assistant(
        caller,
        body.if_exists,
        assistant_id=body.assistant_id,
        graph_id=body.graph_id,
        name=body.name,
        description=body.description,
        config=config or {},
        context=context or {},
        metadata=body.metadata,
    )
    return assistant_view(created)


@router.post("/search", response_model=list[AssistantOut], summary="Search assistants")
async def search_assistants(
    body: AssistantSearch, caller: Reader, svc: Services, response: Response
) -> list[dict[str, Any]] | JSONResponse:
    """One page of the assistants that match: the created ones read in the query's order, no more of them
    than the page needs and one (with the few system assistants merged in, in the same order). As the Agent
    Server's, the answer says in ``X-Pagination-Next`` where the next page starts (langgraph-sdk's
    ``response_format="object"`` gives it as ``next``), or in ``X-Pagination-Total`` how many there are once
    this page is the last."""
    end = body.offset + body.limit
    found = await svc.search_assistants(
        caller,
        body.graph_id,
        body.name,
        body.metadata,
        sort_by=body.sort_by,
        descending=body.sort_order == "desc",
        limit=end + 1,  # the one past the page: whether another page follows
    )
    views = [assistant_view(a) for a in found]
    page = kept(sorted_page(views, body.sort_by, body.sort_order, body.offset, body.limit), body.select)
    headers = pagination_headers(body.offset, max(0, min(len(views), end) - body.offset), len(views) > end)
    (page if isinstance(page, JSONResponse) else response).headers.update(headers)
    return page


@router.post("/count", response_model=int, summary="Count assistants")
async def count_assistants(body: AssistantCount, caller: Reader, svc: Services) -> int:
    return await svc.count_assistants(caller, body.graph_id, body.name, body.metadata)


@router.get("/{assistant_id}", response_model=AssistantOut, summary="Get an assistant")
async def get_assistant_route(assistant_id: str, caller: Reader, svc: Services) -> dict[str, Any]:
    return assistant_view(await svc.resolve_assistant(assistant_id, caller))


@router.patch("/{assistant_id}", response_model=AssistantOut, summary="Update an assistant (a new version)")
async def update_assistant(assistant_id: str, body: AssistantUpdate, caller: Writer, svc: Services) -> dict[str, Any]:
    config, context = one_of_configurable_and_context(body.config, body.context)
    changes = body.model_dump(include={"graph_id", "metadata", "name", "description"})
    changes |= {"config": config, "context": context}
    return assistant_view(await svc.update_assistant(caller, assistant_id, **changes))


@router.delete("/{assistant_id}", status_code=204, summary="Delete an assistant (not a system one)")
async def delete_assistant(
    assistant_id: str, caller: Writer, svc: Services, delete_threads: Annotated[bool, Query()] = False
) -> Response:
    await svc.delete_assistant(caller, assistant_id, delete_threads=delete_threads)
    return Response(status_code=204)


@router.post("/{assistant_id}/versions", response_model=list[AssistantVersionOut], summary="An assistant's versions")
async def get_versions(assistant_id: str, body: VersionsQuery, caller: Reader, svc: Services) -> list[dict[str, Any]]:
    found = await svc.assistant_versions(caller, assistant_id, body.metadata, body.limit, body.offset)
    views = [row_view(v) if isinstance(v, AssistantRow) else assistant_view(v) for v in found]
    for view in views:
        view.pop("updated_at", None)
    return views


@router.post("/{assistant_id}/latest", response_model=AssistantOut, summary="Make a version the one in use")
async def set_latest(assistant_id: str, body: SetLatest, caller: Writer, svc: Services) -> dict[str, Any]:
    return assistant_view(await svc.set_latest_assistant(caller, assistant_id, body.version))


@router.get("/{assistant_id}/schemas", response_model=GraphSchemaOut, summary="The JSON schemas of its graph")
async def get_schemas(assistant_id: str, caller: Reader, svc: Services) -> dict[str, Any]:
    return await svc.assistant_schemas(await svc.resolve_assistant(assistant_id, caller))


@router.get("/{assistant_id}/subgraphs", response_model=dict[str, GraphSchemaOut], summary="Its graph's subgraphs")
async def get_subgraphs(
    assistant_id: str, caller: Reader, svc: Services, recurse: Annotated[bool, Query()] = False
) -> dict[str, Any]:
    return await svc.assistant_subgraphs(await svc.resolve_assistant(assistant_id, caller), None, recurse)


@router.get(
    "/{assistant_id}/subgraphs/{namespace}",
    response_model=dict[str, GraphSchemaOut],
    summary="Its graph's subgraphs under a namespace",
)
async def get_subgraphs_of(
    assistant_id: str, namespace: str, caller: Reader, svc: Services, recurse: Annotated[bool, Query()] = False
) -> dict[str, Any]:
    return await svc.assistant_subgraphs(await svc.resolve_assistant(assistant_id, caller), namespace, recurse)


@router.get("/{assistant_id}/graph", response_model=GraphOut, summary="The assistant's graph (nodes and edges)")
async def get_graph(
    assistant_id: str,
    caller: Reader,
    svc: Services,
    xray: Annotated[
        Literal["true", "false", "True", "False"] | Annotated[int, Field(gt=0)],
        Query(description="Expand subgraphs: true (all levels), false, or a depth (a positive integer)"),
    ] = "false",
) -> dict[str, Any]:
    # Read as the Agent Server reads it: 0 or a negative depth is refused (422), not drawn as false.
    depth = xray if isinstance(xray, int) else xray.lower() == "true"
    assistant = (await svc.resolve_assistant(assistant_id, caller)).pattern
    if assistant.sample is None:
        return {"nodes": [], "edges": []}
    drawable = (await assistant.sample(svc.runtime)).get_graph(xray=depth)
    data = drawable.to_json()
    nodes = [_drawn_node(n) for n in data["nodes"]]
    edges = [{k: v for k, v in e.items() if k in ("source", "target", "conditional", "data")} for e in data["edges"]]
    return {"nodes": nodes, "edges": edges}


def _drawn_node(node: dict[str, Any]) -> dict[str, Any]:
    """A node as LangGraph's ``to_json`` draws it, as the Agent Server answers it: its ``data`` an object (its
    ``name``), without the class path (``id``) LangGraph puts in; anything not JSON already is shown as text."""
    drawn = {k: v for k, v in node.items() if k in ("id", "type", "data", "metadata")}
    data = drawn.get("data")
    if isinstance(data, dict):
        drawn["data"] = {k: v for k, v in data.items() if k != "id"}
    elif data is not None and not isinstance(data, str | int | float | bool | list):
        drawn["data"] = str(data)
    return drawn

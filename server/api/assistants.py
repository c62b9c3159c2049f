"""Assistants: search, get, graph."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from server.api import errors
from server.assistants import Assistant, assistants, get_assistant
from server.auth import Principal, require
from server.input_guard import GuardedRoute
from server.models import AssistantOut, AssistantSearch, GraphOut
from server.services import ServerServices, services

router = APIRouter(prefix="/assistants", tags=["assistants"], responses=errors(), route_class=GuardedRoute)
Reader = Annotated[Principal, Depends(require("read"))]
Services = Annotated[ServerServices, Depends(services)]
EPOCH = "2026-01-01T00:00:00+00:00"


def assistant_view(assistant: Assistant) -> dict[str, Any]:
    return {
        "assistant_id": assistant.assistant_id,
        "graph_id": assistant.assistant_id,
        "config": {},
        "context": {},
        "created_at": EPOCH,
        "updated_at": EPOCH,
        "metadata": {"input_schema": assistant.input_schema, "resume_schema": assistant.resume_schema},
        "version": 1,
        "name": assistant.assistant_id,
        "description": assistant.description,
    }


@router.post("/search", response_model=list[AssistantOut], summary="Search assistants")
async def search_assistants(body: AssistantSearch, _caller: Reader) -> list[dict[str, Any]]:
    found = [
        a
        for a in assistants()
        if (body.graph_id is None or a.assistant_id == body.graph_id)
        and (body.name is None or body.name in a.assistant_id)
    ]
    return [assistant_view(a) for a in found[body.offset : body.offset + body.limit]]


@router.get("/{assistant_id}", response_model=AssistantOut, summary="Get an assistant")
async def get_assistant_route(assistant_id: str, _caller: Reader) -> dict[str, Any]:
    return assistant_view(get_assistant(assistant_id))


@router.get("/{assistant_id}/graph", response_model=GraphOut, summary="The assistant's graph (nodes and edges)")
async def get_graph(
    assistant_id: str, _caller: Reader, svc: Services, xray: Annotated[bool | int, Query()] = False
) -> dict[str, Any]:
    assistant = get_assistant(assistant_id)
    if assistant.sample is None:
        return {"nodes": [], "edges": []}
    drawable = (await assistant.sample(svc.runtime)).get_graph(xray=xray)
    data = drawable.to_json()
    nodes = [{"id": n["id"], "type": n.get("type"), "data": str(n.get("data", ""))} for n in data["nodes"]]
    edges = [{k: v for k, v in e.items() if k in ("source", "target", "conditional", "data")} for e in data["edges"]]
    return {"nodes": nodes, "edges": edges}

"""``/metrics``: Prometheus metrics of the server, its workers and the database's live figures.

It answers to an API key with the ``read`` scope, like the other read routes (Prometheus sends the key
with ``http_headers``), or to anyone with ``--no-auth``: label values name intents, steps and patterns.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from server.api import errors
from server.auth import Principal, require
from server.input_guard import GuardedRoute
from server.services import ServerServices, services

router = APIRouter(tags=["observability"], responses=errors(), route_class=GuardedRoute)
Reader = Annotated[Principal, Depends(require("read"))]
Services = Annotated[ServerServices, Depends(services)]


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
)
async def metrics(_caller: Reader, served: Services) -> Response:
    return Response(await served.metrics(), media_type=CONTENT_TYPE_LATEST)
